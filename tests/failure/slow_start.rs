//! Slow start: a server that joins a set already serving gets a share of calls that ramps
//! up over the window, measured per 100 ms.

use std::time::Duration;

use tonic_etcd::{Balancer, EndpointState, SlowStart};

use crate::support::{Etcd, TestServer, wait_until};
use crate::{DEADLINE, call_for, register, setup};

const WINDOW: Duration = Duration::from_secs(3);

/// A low slow-start factor: the new server's first 0.9 s of the window.
const LOW: f64 = 0.3;

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
    let factor_of_new = || {
        let endpoints = channel.endpoints();
        let new = endpoints.into_iter().find(|e| e.addr == addr);
        new.map_or(0.0, |e| e.slow_start)
    };
    let factor = factor_of_new();
    let all = || old.iter().map(|s| s.calls()).sum::<usize>() + new.calls();
    // Per 100 ms from its start, for a window and a half: the new server's share of the
    // calls, and its slow-start factor at the end of those 100 ms. The shares are grouped
    // by the factor, not by the time since `joined`: on a busy machine this test may see
    // the server up some hundreds of milliseconds after it came into rotation.
    let mut ticks = Vec::new();
    let (mut last_new, mut last_all) = (new.calls(), all());
    let mut tick = tokio::time::interval_at(
        joined + Duration::from_millis(100),
        Duration::from_millis(100),
    );
    while joined.elapsed() < WINDOW + WINDOW / 2 {
        tick.tick().await;
        let (now_new, now_all) = (new.calls(), all());
        let share = (now_new - last_new) as f64 / (now_all - last_all).max(1) as f64;
        ticks.push((factor_of_new(), share));
        (last_new, last_all) = (now_new, now_all);
    }
    let tally = load.await.expect("the callers do not panic");
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
    let shares = |keep: &dyn Fn(f64) -> bool| -> Vec<f64> {
        ticks
            .iter()
            .filter(|(f, _)| keep(*f))
            .map(|(_, s)| *s)
            .collect()
    };
    // How far each share at a low factor went past what the factor allows.
    let excess: Vec<f64> = ticks
        .iter()
        .filter(|(f, _)| *f < LOW)
        .map(|(f, s)| s - in_pair(*f))
        .collect();
    let excess_ticks = excess.len();
    let (early, late, excess) = (
        mean(&shares(&|f| f < LOW)),
        mean(&shares(&|f| f >= 1.0)),
        mean(&excess),
    );
    let shown: Vec<String> = ticks
        .iter()
        .map(|(f, s)| format!("{f:.2}:{s:.2}"))
        .collect();
    eprintln!(
        "factor at join {factor:.2}; factor:share per 100 ms: {}",
        shown.join(" ")
    );
    eprintln!(
        "share at a factor below {LOW} {early:.3}, at 1 {late:.3}; past the factor's bound {excess:.3}; {} failed",
        tally.failed()
    );
    assert!(factor < 0.2, "factor when the test saw it up: {factor}");
    assert!(
        excess_ticks >= 3,
        "{excess_ticks} ticks at a factor below {LOW}"
    );
    assert!(
        excess < 0.05,
        "at factors below {LOW} the share went {excess:.3} past what the factor allows"
    );
    assert!(
        late > early + 0.05,
        "no ramp: {early:.3} at a factor below {LOW}, {late:.3} at 1"
    );
    assert!(late > 0.2, "after the window {late:.3}");
    assert_eq!(tally.failed(), 0);
}

/// The most share of calls a member drawn with chance `f` can get among three whose other
/// two are drawn with chance 1: the chance that it is one of the pair at all, if it then
/// wins every pair (with no calls in flight it wins most). Each draw stands with the
/// member's chance; the second draw is from the two the first did not take. Without slow
/// start, a server that has just joined gets up to two thirds of the calls this way.
fn in_pair(f: f64) -> f64 {
    f / (2.0 + f) + 2.0 / (2.0 + f) * f / (1.0 + f)
}
