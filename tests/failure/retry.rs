//! Retries of sent calls under a policy (gRFC A6): a failing or killed server costs no
//! failed call, and when every server fails, retry throttling bounds the load.

use std::time::Duration;

use tonic::Code;
use tonic_etcd::{Balancer, RetryPolicy};

use crate::support::greeter::Failing;
use crate::support::{Etcd, ServerProcess, TestServer};
use crate::{DEADLINE, call_for, setup};

/// Retries every method on `UNAVAILABLE`, with A6's example backoff.
fn retrying() -> Balancer {
    Balancer::new().retry_policy("/", RetryPolicy::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_failed_by_one_server_is_retried_on_another() {
    let etcd = Etcd::start().await;
    let healthy = [TestServer::start().await, TestServer::start().await];
    let failing = TestServer::start_failing(Failing::always(Code::Unavailable)).await;
    let servers = [&healthy[0], &healthy[1], &failing];
    let channel = setup(&etcd, "retried", &servers, retrying()).await;
    let tally = call_for(&channel, 8, Duration::from_secs(2)).await;
    eprintln!(
        "{} ok, {} failed; the failing server got {}",
        tally.ok(),
        tally.failed(),
        failing.calls()
    );
    assert!(tally.ok() >= 200, "too few calls to judge");
    assert!(failing.calls() > 0, "the failing server was never tried");
    assert_eq!(tally.failed(), 0, "{:?}", crate::lock(&tally.errors));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_server_fails_retries_stay_within_the_budget() {
    let etcd = Etcd::start().await;
    let servers = [
        TestServer::start_failing(Failing::always(Code::Unavailable)).await,
        TestServer::start_failing(Failing::always(Code::Unavailable)).await,
        TestServer::start_failing(Failing::always(Code::Unavailable)).await,
    ];
    let refs: Vec<&TestServer> = servers.iter().collect();
    let channel = setup(&etcd, "outage", &refs, retrying()).await;
    let tally = call_for(&channel, 8, Duration::from_secs(3)).await;
    let made = tally.ok() + tally.failed();
    let sent: usize = servers.iter().map(|s| s.calls()).sum();
    // A6's bound with the default throttle (100 tokens, ratio 0.1): retries stop once
    // half the bucket is spent, and no call succeeds to refill it.
    let bound = made as f64 * 1.1 + 50.0;
    eprintln!("{made} calls made, {sent} sent, bound {bound}");
    assert!(made >= 500, "too few calls to judge: {made}");
    assert!(sent as f64 <= bound, "{sent} calls sent for {made} made");
    assert!(sent > made, "no call was retried");
}

/// Three greeter processes under `service`, and a channel over them that retries.
async fn kill_one_of_three_under_load(etcd: &Etcd, service: &str) {
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(ServerProcess::spawn(&etcd.endpoint(), service, 2).await);
    }
    let channel = retrying().channel(tonic_etcd::EtcdDiscover::new(etcd.client().await, service));
    crate::support::wait_until("the three servers are up", DEADLINE, || async {
        let endpoints = channel.endpoints();
        endpoints.len() == 3
            && endpoints
                .iter()
                .all(|e| e.state == tonic_etcd::EndpointState::Up)
    })
    .await;
    let load = tokio::spawn({
        let channel = channel.clone();
        async move { call_for(&channel, 64, Duration::from_secs(3)).await }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    servers[0].kill9();
    let tally = load.await.expect("the callers do not panic");
    eprintln!("{service}: {} ok, {} failed", tally.ok(), tally.failed());
    assert!(tally.ok() >= 500, "too few calls to judge: {}", tally.ok());
    assert_eq!(
        tally.failed(),
        0,
        "{service}: {:?}",
        crate::lock(&tally.errors)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_retry_policy_a_kill_9_under_load_fails_no_call_three_runs_in_a_row() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let etcd = Etcd::start().await;
    for run in 0..3 {
        kill_one_of_three_under_load(&etcd, &format!("killed-{run}")).await;
    }
}
