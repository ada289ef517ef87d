//! Slow start: a server that joins a set already serving gets a share of calls that ramps
//! up over the window, measured per 100 ms.

use std::time::Duration;

use tonic_etcd::{Balancer, EndpointState, SlowStart};

use crate::support::{Etcd, TestServer, wait_until};
use crate::{DEADLINE, call_for, register, setup};

const WINDOW: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_server_ramps_up_over_the_window() {
    let etcd = Etcd::start().await;
    let old = [TestServer::start().await, TestServer::start().await];
    let balancer = Balancer::new().slow_start(SlowStart::new(WINDOW));
    let channel = setup(&etcd, "ramp", &[&old[0], &old[1]], balancer).await;
    wait_until("the first servers' ramps end", DEADLINE, || async {
        channel.endpoints().iter().all(|e| e.slow_start == 1.0)
    })
    .await;
    let load = tokio::spawn({
        let channel = channel.clone();
        async move { call_for(&channel, 8, WINDOW + Duration::from_secs(3)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let new = TestServer::start().await;
    register(&mut etcd.client().await, "ramp", new.addr()).await;
    let addr = new.addr().to_string();
    wait_until("the new server is up", DEADLINE, || async {
        let endpoints = channel.endpoints();
        endpoints
            .iter()
            .any(|e| e.addr == addr && e.state == EndpointState::Up)
    })
    .await;
    let joined = tokio::time::Instant::now();
    let factor = channel
        .endpoints()
        .into_iter()
        .find(|e| e.addr == addr)
        .map(|e| e.slow_start);
    let all = || old.iter().map(|s| s.calls()).sum::<usize>() + new.calls();
    // The share of the new server in each 100 ms from its start, for a window and a half.
    let mut shares = Vec::new();
    let (mut last_new, mut last_all) = (new.calls(), all());
    let mut tick = tokio::time::interval_at(
        joined + Duration::from_millis(100),
        Duration::from_millis(100),
    );
    while joined.elapsed() < WINDOW + WINDOW / 2 {
        tick.tick().await;
        let (now_new, now_all) = (new.calls(), all());
        let share = (now_new - last_new) as f64 / (now_all - last_all).max(1) as f64;
        shares.push(share);
        (last_new, last_all) = (now_new, now_all);
    }
    let tally = load.await.expect("the callers do not panic");
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
    let early = mean(&shares[..5]);
    let late = mean(&shares[20..30]);
    let after = mean(&shares[30..]);
    let shown: Vec<String> = shares.iter().map(|s| format!("{:.2}", s)).collect();
    eprintln!(
        "factor at join {factor:?}; shares per 100 ms: {}",
        shown.join(" ")
    );
    eprintln!(
        "early {early:.3}, late {late:.3}, after {after:.3}; {} failed",
        tally.failed()
    );
    assert!(factor.is_some_and(|f| f < 0.5), "factor at join {factor:?}");
    assert!(early < 0.2, "the first 500 ms got {early:.3}");
    assert!(
        late > early + 0.05,
        "no ramp: early {early:.3}, late {late:.3}"
    );
    assert!(after > 0.2, "after the window {after:.3}");
    assert_eq!(tally.failed(), 0);
}
