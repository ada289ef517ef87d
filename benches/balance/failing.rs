//! Measures 8 to 10 (issue 11): failed calls with a server that fails fast by status
//! (ours, with outlier detection, against tonic's `balance_channel`); failed calls during
//! a kill -9 with and without a retry policy (ours); and the time from a put to the first
//! call served while callers spin on an empty service.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;
use tonic_etcd::{BalancedChannel, Balancer, EndpointState, EtcdDiscover, RetryPolicy};

use crate::common::{self, Budget, Client, Config, Row};
use crate::support::greeter::Failing;
use crate::support::{Etcd, ServerProcess, TestServer, wait_until};

/// Calls per run of measure 8, and how many are in flight.
const FAILING_CALLS: usize = 2000;
const FAILING_IN_FLIGHT: usize = 8;
/// Calls in flight in measure 9, and when the victim is killed and the run ends.
const KILL_IN_FLIGHT: usize = 64;
const KILL_AT: Duration = Duration::from_secs(1);
const KILL_RUN: Duration = Duration::from_secs(3);
/// Callers spinning in measure 10.
const SPINNERS: [usize; 2] = [4, 64];
const DEADLINE: Duration = Duration::from_secs(20);

/// Waits until `channel` has `n` endpoints up.
async fn up(channel: &BalancedChannel, n: usize) {
    wait_until("the endpoints are up", DEADLINE, || async {
        let endpoints = channel.endpoints();
        endpoints
            .iter()
            .filter(|e| e.state == EndpointState::Up)
            .count()
            >= n
    })
    .await;
}

fn share(failed: u64, calls: u64) -> f64 {
    failed as f64 / calls.max(1) as f64
}

/// Measure 8: the share of failed calls, 2000 calls at 8 in flight, with 2 healthy
/// servers and one that answers every call at once with `UNAVAILABLE`.
pub(crate) async fn fast_failing(etcd: &Etcd, config: &Config) -> Vec<Row> {
    const SERVICE: &str = "bench-failing";
    println!(
        "\n# 8. failed share, {FAILING_CALLS} calls at {FAILING_IN_FLIGHT} in flight, 1 of 3 fails fast"
    );
    let healthy = [TestServer::start().await, TestServer::start().await];
    let failing = TestServer::start_failing(Failing::always(Code::Unavailable)).await;
    let mut kv = etcd.client().await;
    for addr in [healthy[0].addr(), healthy[1].addr(), failing.addr()] {
        common::register(&mut kv, SERVICE, addr).await;
    }
    let (mut ours, mut tonic) = ((0, 0), (0, 0));
    for round in 0..config.rounds {
        for first in [round % 2 == 0, round % 2 == 1] {
            let discover = EtcdDiscover::new(etcd.client().await, SERVICE);
            let (client, _feeder, tally) = if first {
                let channel = discover.channel();
                up(&channel, 3).await;
                (Client::ours(channel), None, &mut ours)
            } else {
                let (channel, feeder) = discover.balance_channel();
                (Client::plain(channel), Some(feeder), &mut tonic)
            };
            let budget = Budget::Calls(FAILING_CALLS);
            let load = common::load(&client, FAILING_IN_FLIGHT, budget, None).await;
            let name = if first { "ours" } else { "tonic" };
            println!(
                "  round {} {name:>5}: failed {:>4} of {}",
                round + 1,
                load.failed,
                load.ok + load.failed
            );
            tally.0 += load.failed;
            tally.1 += load.ok + load.failed;
        }
    }
    let (ours, tonic) = (share(ours.0, ours.1), share(tonic.0, tonic.1));
    vec![
        Row::new(
            "8. failed share, 1 of 3 servers answers UNAVAILABLE at once (8 in flight)",
            "tonic `balance_channel`",
        )
        .value(format!("{:.2} %", tonic * 100.0))
        .ours(format!("{:.2} %", ours * 100.0))
        .ratio(format!("ours ÷ tonic = {:.3}", ours / tonic.max(1e-9)))
        .met(ours <= 0.01),
    ]
}

/// Measure 9: failed calls at 64 in flight when one of three server processes is killed
/// with SIGKILL, ours without and with a retry policy on `UNAVAILABLE`.
pub(crate) async fn kill9_retry(etcd: &Etcd, config: &Config) -> Vec<Row> {
    println!(
        "\n# 9. kill -9 of 1 of 3 at {KILL_IN_FLIGHT} in flight: ours without / with a retry policy"
    );
    let mut failed = [0u64, 0u64];
    let mut runs = [Vec::new(), Vec::new()];
    for round in 0..config.kill_rounds {
        for retry in [round % 2 == 1, round % 2 == 0] {
            let service = format!("bench-kill-retry-{round}-{retry}");
            let mut servers = Vec::new();
            for _ in 0..3 {
                servers.push(ServerProcess::spawn(&etcd.endpoint(), &service, 3).await);
            }
            let balancer = match retry {
                true => Balancer::new().retry_policy("/", RetryPolicy::default()),
                false => Balancer::new(),
            };
            let channel = balancer.channel(EtcdDiscover::new(etcd.client().await, &service));
            up(&channel, 3).await;
            let client = Client::ours(channel);
            let load = tokio::spawn(async move {
                let budget = Budget::For(KILL_RUN);
                common::load(&client, KILL_IN_FLIGHT, budget, Some(DEADLINE)).await
            });
            tokio::time::sleep(KILL_AT).await;
            servers[0].kill9();
            let load = load.await.expect("the load does not panic");
            let name = if retry { "with" } else { "without" };
            println!(
                "  round {} {name:>7}: failed {:>3} of {}  {}",
                round + 1,
                load.failed,
                load.ok + load.failed,
                load.error_summary()
            );
            failed[usize::from(retry)] += load.failed;
            runs[usize::from(retry)].push(load.failed.to_string());
        }
    }
    vec![
        Row::new(
            "9. failed calls, kill -9 of 1 of 3 servers at 64 in flight",
            "ours without a retry policy",
        )
        .value(format!("{} (runs: {})", failed[0], runs[0].join(", ")))
        .ours(format!(
            "{} with `retry_policy(\"/\", RetryPolicy::default())` (runs: {})",
            failed[1],
            runs[1].join(", ")
        ))
        .ratio("with = 0")
        .met(failed[1] == 0),
    ]
}

/// Measure 10: from the put of a server's key to the first call it serves, while callers
/// spin on the empty service (each call fails at once and is made again).
pub(crate) async fn put_while_spinning(etcd: &Etcd, config: &Config) -> Vec<Row> {
    println!("\n# 10. put -> first call served, callers spinning on an empty service");
    let mut rows = Vec::new();
    for callers in SPINNERS {
        let mut times = Vec::new();
        for trial in 0..config.rounds {
            let service = format!("bench-spin-{callers}-{trial}");
            let channel = EtcdDiscover::new(etcd.client().await, &service).channel();
            let stop = Arc::new(AtomicBool::new(false));
            let client = Client::ours(channel);
            let spinning = tokio::spawn({
                let stop = stop.clone();
                async move { common::load(&client, callers, Budget::Until(stop), None).await }
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            let server = TestServer::start().await;
            let mut kv = etcd.client().await;
            let put = std::time::Instant::now();
            common::register(&mut kv, &service, server.addr()).await;
            let deadline = Instant::now() + DEADLINE;
            while server.first_call_at().is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let load = spinning.await.expect("the callers do not panic");
            let took = server
                .first_call_at()
                .map(|at| at.saturating_duration_since(put));
            let ms = took.map_or(f64::INFINITY, |t| t.as_secs_f64() * 1000.0);
            println!(
                "  {callers:>2} callers, trial {}: {ms:.1} ms ({} calls failed while spinning)",
                trial + 1,
                load.failed
            );
            times.push(ms);
        }
        let median = common::median(&times);
        let worst = times.iter().copied().fold(0.0, f64::max);
        rows.push(
            Row::new(
                format!(
                    "10. put -> first call served, {callers} callers spinning on an empty service"
                ),
                "tonic `balance_channel` (calls hang, no spin)",
            )
            .value("n/a")
            .ours(format!("median {median:.1} ms, worst {worst:.1} ms"))
            .ratio("goal ≤ 100 ms")
            .met(worst <= 100.0),
        );
    }
    rows
}
