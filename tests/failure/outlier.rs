//! Outlier detection by gRPC status: a failing endpoint loses its calls; when every
//! endpoint fails, none is ejected wholesale and calls spread.

use std::time::Duration;

use tonic::Code;
use tonic_etcd::{Balancer, EndpointState};

use crate::support::greeter::Failing;
use crate::support::{Etcd, TestServer};
use crate::{call_for, setup};

/// How long the callers run.
const RUN: Duration = Duration::from_secs(3);

/// One of three servers fails every call at once with `code`: at 8 in flight, at most 1 %
/// of the calls fail.
async fn one_failing_server_of_three(code: Code) {
    let etcd = Etcd::start().await;
    let healthy = [TestServer::start().await, TestServer::start().await];
    let failing = TestServer::start_failing(Failing::always(code)).await;
    let servers = [&healthy[0], &healthy[1], &failing];
    let channel = setup(&etcd, "failing", &servers, Balancer::new()).await;
    let tally = call_for(&channel, 8, RUN).await;
    let (ok, failed) = (tally.ok(), tally.failed());
    eprintln!(
        "{code:?}: {ok} ok, {failed} failed, the failing server got {} calls; {:?}",
        failing.calls(),
        channel.endpoints()
    );
    assert!(ok >= 500, "too few calls to judge: {ok}");
    assert!(
        tally.failed_share() <= 0.01,
        "{failed} of {} calls failed: {:?}",
        ok + failed,
        crate::lock(&tally.errors)
    );
    let endpoint = channel
        .endpoints()
        .into_iter()
        .find(|e| e.addr == failing.addr().to_string())
        .expect("the failing endpoint is known");
    assert!(
        endpoint.success_rate < 0.9 || endpoint.ejection.is_some(),
        "{endpoint:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failing_every_call_with_unavailable_gets_almost_no_calls() {
    one_failing_server_of_three(Code::Unavailable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failing_every_call_with_internal_gets_almost_no_calls() {
    one_failing_server_of_three(Code::Internal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failing_half_its_calls_gets_well_below_a_third() {
    let etcd = Etcd::start().await;
    let healthy = [TestServer::start().await, TestServer::start().await];
    let half = Failing {
        code: Code::Unavailable,
        every: 2,
    };
    let flaky = TestServer::start_failing(half).await;
    let servers = [&healthy[0], &healthy[1], &flaky];
    let channel = setup(&etcd, "flaky", &servers, Balancer::new()).await;
    let tally = call_for(&channel, 8, RUN).await;
    let received: usize = servers.iter().map(|s| s.calls()).sum();
    let share = flaky.calls() as f64 / received.max(1) as f64;
    eprintln!(
        "{} of {received} calls reached the flaky server; {} failed",
        flaky.calls(),
        tally.failed()
    );
    assert!(received >= 500, "too few calls to judge: {received}");
    assert!(share < 0.15, "the flaky server got {:.1} %", share * 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_server_fails_none_is_ejected_and_calls_spread() {
    let etcd = Etcd::start().await;
    let servers = [
        TestServer::start_failing(Failing::always(Code::Unavailable)).await,
        TestServer::start_failing(Failing::always(Code::Unavailable)).await,
        TestServer::start_failing(Failing::always(Code::Unavailable)).await,
    ];
    let refs: Vec<&TestServer> = servers.iter().collect();
    let channel = setup(&etcd, "down", &refs, Balancer::new()).await;
    let calls = call_for(&channel, 8, RUN);
    tokio::pin!(calls);
    let mut most_ejected = 0;
    let tally = loop {
        tokio::select! {
            tally = &mut calls => break tally,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                let ejected = channel
                    .endpoints()
                    .iter()
                    .filter(|e| e.state == EndpointState::Ejected)
                    .count();
                most_ejected = most_ejected.max(ejected);
            }
        }
    };
    let received: Vec<usize> = servers.iter().map(|s| s.calls()).collect();
    let total: usize = received.iter().sum();
    eprintln!("calls received {received:?}, {} failed", tally.failed());
    assert!(tally.failed() >= 500, "too few calls to judge");
    assert!(
        most_ejected <= 1,
        "{most_ejected} of 3 ejected at once: an ejection storm"
    );
    for (i, &n) in received.iter().enumerate() {
        assert!(
            n * 10 >= total,
            "server {i} got {n} of {total}: calls do not spread"
        );
    }
}
