//! The metrics the examples serve with `--metrics-addr`, scraped over HTTP while real
//! servers run and one of them is killed with SIGKILL; and, in this process, the ejections
//! of outlier detection and the retries of a policy (issue 13.4).

#![cfg(feature = "metrics")]

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::Code;
use tonic_etcd::{Balancer, EtcdDiscover, EtcdNaming, Format, Instance, RetryPolicy};

use support::greeter::Failing;
use support::pb::HelloRequest;
use support::pb::greeter_client::GreeterClient;
use support::process::free_ports;
use support::{Etcd, POLL_INTERVAL, ServerProcess, TestServer};

/// A TTL longer than the test: the killed server's key stays, so only the balancer's
/// ejection can keep calls off it.
const TTL_SECS: u64 = 60;

/// How long the client and the servers have to come up, and the ejection to show.
const DEADLINE: Duration = Duration::from_secs(30);

/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// The text a `GET /metrics` returns, or `None` while nothing listens.
async fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Waits until the scrape at `addr` has `series` with a value `pass` accepts; fails
/// showing the last scrape.
async fn wait_for_sample(addr: SocketAddr, series: &str, pass: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    loop {
        interval.tick().await;
        let scraped = tokio::time::timeout(SCRAPE_TIMEOUT, scrape(addr)).await;
        let text = scraped.ok().flatten().unwrap_or_default();
        if sample(&text, series).is_some_and(&pass) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {series} at http://{addr}/metrics; \
             the last scrape:\n{text}"
        );
    }
}

#[tokio::test]
async fn the_client_scrape_shows_the_ejection_of_a_killed_server() {
    const SERVICE: &str = "metrics-kill";
    let etcd = Etcd::start().await;
    let ports = free_ports(2);
    let client_metrics: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    let server_metrics: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    let flag = std::ffi::OsString::from("--metrics-addr");
    let value = std::ffi::OsString::from(server_metrics.to_string());
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut doomed = ServerProcess::spawn_with(
        &etcd.endpoint(),
        SERVICE,
        TTL_SECS,
        loopback,
        &[&flag, &value],
    )
    .await;
    let _survivor = ServerProcess::spawn(&etcd.endpoint(), SERVICE, TTL_SECS).await;

    // The server's own scrape: registered, on one lease.
    wait_for_sample(
        server_metrics,
        r#"tonic_etcd_registrar_status{status="registered"}"#,
        |v| v == 1.0,
    )
    .await;
    let text = scrape(server_metrics)
        .await
        .expect("the server serves its metrics");
    assert_eq!(
        sample(&text, "tonic_etcd_registrar_leases"),
        Some(1.0),
        "{text}"
    );

    let _client = tokio::process::Command::new(support::greeter::example_binary("greeter_client"))
        .args(["--etcd", &etcd.endpoint(), "--service", SERVICE])
        .args(["--duration", "120", "--concurrency", "4"])
        .args(["--metrics-addr", &client_metrics.to_string()])
        .env_remove("ETCD_ENDPOINTS")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn greeter_client");

    let target = format!(r#"grpc_target="{SERVICE}""#);
    let up = format!(r#"tonic_etcd_lb_endpoints{{{target},state="up"}}"#);
    wait_for_sample(client_metrics, &up, |v| v == 2.0).await;
    let synced = format!(r#"tonic_etcd_discovery_status{{prefix="{SERVICE}/",status="synced"}}"#);
    wait_for_sample(client_metrics, &synced, |v| v == 1.0).await;

    doomed.kill9();

    let ejections = format!(r#"tonic_etcd_lb_ejections{{{target},reason="transport"}}"#);
    wait_for_sample(client_metrics, &ejections, |v| v >= 1.0).await;
    wait_for_sample(client_metrics, &up, |v| v == 1.0).await;
    let ejected = format!(r#"tonic_etcd_lb_endpoints{{{target},state="ejected"}}"#);
    wait_for_sample(client_metrics, &ejected, |v| v == 1.0).await;
    // The key is still in etcd: discovery still announces both.
    let keys = format!(r#"tonic_etcd_discovery_keys{{prefix="{SERVICE}/"}}"#);
    let text = scrape(client_metrics)
        .await
        .expect("the client serves its metrics");
    assert_eq!(sample(&text, &keys), Some(2.0), "{text}");
    let failed = format!(r#"grpc_subchannel_connection_attempts_failed{{{target}}}"#);
    wait_for_sample(client_metrics, &failed, |v| v >= 1.0).await;
}

/// The Prometheus recorder of this test binary, installed by the first test that asks.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder of this test binary")
    })
}

/// Calls through `channel` from 4 callers until `stop` is set.
async fn call_until(
    channel: tonic_etcd::BalancedChannel,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let mut client = GreeterClient::new(channel.clone());
        let mut stop = stop.clone();
        callers.spawn(async move {
            while !*stop.borrow_and_update() {
                let request = HelloRequest {
                    name: "metrics".into(),
                };
                let _ = client.say_hello(request).await;
                tokio::task::yield_now().await;
            }
        });
    }
    while callers.join_next().await.is_some() {}
}

/// Waits until `render()` has `series` at `at_least` or more; fails showing the last text.
async fn wait_for_rendered(render: impl Fn() -> String, series: &str, at_least: f64) {
    let deadline = Instant::now() + DEADLINE;
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    loop {
        interval.tick().await;
        let text = render();
        if sample(&text, series).is_some_and(|v| v >= at_least) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {series} >= {at_least}; the last \
             rendering:\n{text}"
        );
    }
}

/// In this process, with a Prometheus recorder installed: one server of three fails every
/// call with `UNAVAILABLE`; outlier detection ejects it, and the retry policy sends its
/// calls again elsewhere, both counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_ejections_and_policy_retries_are_counted() {
    const SERVICE: &str = "metrics-outlier";
    let handle = recorder();
    let etcd = Etcd::start().await;
    let healthy = [TestServer::start().await, TestServer::start().await];
    let failing = TestServer::start_failing(Failing::always(Code::Unavailable)).await;
    let mut kv = etcd.client().await;
    for server in [&healthy[0], &healthy[1], &failing] {
        let instance = Instance::new(server.addr().to_string());
        let (key, value) = (
            EtcdNaming.key(SERVICE, &instance, 0),
            EtcdNaming.value(SERVICE, &instance),
        );
        kv.put(key, value, None).await.expect("put a registration");
    }
    let balancer = Balancer::new().retry_policy("/", RetryPolicy::default());
    let channel = balancer.channel(EtcdDiscover::new(etcd.client().await, SERVICE));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let callers = tokio::spawn(call_until(channel, stopped));

    let target = format!(r#"grpc_target="{SERVICE}""#);
    let ejections = format!(r#"tonic_etcd_lb_ejections{{{target},reason="consecutive_failures"}}"#);
    wait_for_rendered(|| handle.render(), &ejections, 1.0).await;
    let retries = format!(r#"tonic_etcd_lb_retries{{{target},kind="policy"}}"#);
    wait_for_rendered(|| handle.render(), &retries, 1.0).await;
    let _ = stop.send(true);
    callers.await.expect("the callers end");
}

/// In this process: etcd is killed and started again under a running discovery, which
/// counts the failed requests, reports retrying, opens its watch again and is synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_counts_errors_and_a_watch_restart_across_an_etcd_restart() {
    const SERVICE: &str = "metrics-restart";
    let handle = recorder();
    let mut etcd = Etcd::start().await;
    let instance = Instance::new("127.0.0.1:1");
    let mut kv = etcd.client().await;
    let (key, value) = (
        EtcdNaming.key(SERVICE, &instance, 0),
        EtcdNaming.value(SERVICE, &instance),
    );
    kv.put(key, value, None).await.expect("put a registration");
    let channel = EtcdDiscover::new(etcd.client().await, SERVICE).channel();

    let prefix = format!(r#"prefix="{SERVICE}/""#);
    let status = |s: &str| format!(r#"tonic_etcd_discovery_status{{{prefix},status="{s}"}}"#);
    let watches = format!("tonic_etcd_discovery_watches{{{prefix}}}");
    wait_for_rendered(|| handle.render(), &status("synced"), 1.0).await;
    wait_for_rendered(|| handle.render(), &watches, 1.0).await;
    let keys = format!("tonic_etcd_discovery_keys{{{prefix}}}");
    assert_eq!(sample(&handle.render(), &keys), Some(1.0));

    etcd.kill();
    let errors = format!("tonic_etcd_discovery_errors{{{prefix}}}");
    wait_for_rendered(|| handle.render(), &errors, 1.0).await;
    wait_for_rendered(|| handle.render(), &status("retrying"), 1.0).await;
    etcd.restart().await;
    wait_for_rendered(|| handle.render(), &watches, 2.0).await;
    wait_for_rendered(|| handle.render(), &status("synced"), 1.0).await;
    drop(channel);
}
