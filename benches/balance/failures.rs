//! Measures 3 and 4: failed calls with a registered server dead, and during a kill -9
//! under load.

use std::time::Duration;

use tokio::time::Instant;
use tonic_etcd::{BalancedChannel, DiscoveryHandle, EndpointState, EtcdDiscover};

use crate::common::{self, Budget, Client, Config, Load, Row};
use crate::support::{Etcd, ServerProcess, TestServer, wait_until};

/// Calls per run of measure 3, and how many are in flight.
const DEAD_CALLS: usize = 1000;
const DEAD_IN_FLIGHT: usize = 4;
/// Calls in flight in measure 4.
const KILL_IN_FLIGHT: usize = 64;
/// The lease TTL of the server processes in measure 4, in seconds.
const KILL_TTL: u64 = 3;
/// When, in a run of measure 4, one server is killed.
const KILL_AT: Duration = Duration::from_secs(1);
/// How long before the kill the victim's calls in flight are sampled.
const SAMPLE_WINDOW: Duration = Duration::from_millis(200);
/// How long a run of measure 4 goes on after the TTL has passed since the kill.
const KILL_AFTER_TTL: Duration = Duration::from_secs(2);
/// A call slower than this counts as failed: no peer may hang a call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for channels to come up.
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Peer {
    Tonic,
    Ours,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Tonic => "tonic",
            Peer::Ours => "ours",
        }
    }

    /// The peers of a round, alternating which goes first.
    fn order(round: usize) -> [Peer; 2] {
        if round.is_multiple_of(2) {
            [Peer::Tonic, Peer::Ours]
        } else {
            [Peer::Ours, Peer::Tonic]
        }
    }
}

/// A fresh client of one peer, and what must live as long as it.
struct Connected {
    client: Client,
    /// Ours, to read its endpoints.
    ours: Option<BalancedChannel>,
    /// tonic's feeder. Held, because dropping it stops the feeding task (see the report).
    _feeder: Option<DiscoveryHandle>,
}

async fn connect(etcd: &Etcd, service: &str, peer: Peer) -> Connected {
    let discover = EtcdDiscover::new(etcd.client().await, service);
    match peer {
        Peer::Tonic => {
            let (channel, feeder) = discover.balance_channel();
            Connected {
                client: Client::plain(channel),
                ours: None,
                _feeder: Some(feeder),
            }
        }
        Peer::Ours => {
            let channel = discover.channel();
            Connected {
                client: Client::ours(channel.clone()),
                ours: Some(channel),
                _feeder: None,
            }
        }
    }
}

/// Measure 3: failed calls out of 1000, 4 in flight, with 2 live servers and one registered
/// address where nothing listens. Every run starts a fresh channel.
pub(crate) async fn dead_endpoint(etcd: &Etcd, config: &Config) -> Vec<Row> {
    const SERVICE: &str = "bench-dead";
    println!("\n# 3. failed calls, {DEAD_CALLS} calls at {DEAD_IN_FLIGHT} in flight, 1 of 3 dead");
    let live = [TestServer::start().await, TestServer::start().await];
    let mut kv = etcd.client().await;
    for addr in [live[0].addr(), live[1].addr(), common::dead_addr()] {
        common::register(&mut kv, SERVICE, addr).await;
    }
    let mut failed = [Vec::new(), Vec::new()];
    for round in 0..config.rounds {
        for peer in Peer::order(round) {
            let connected = connect(etcd, SERVICE, peer).await;
            let budget = Budget::Calls(DEAD_CALLS);
            let load = common::load(
                &connected.client,
                DEAD_IN_FLIGHT,
                budget,
                Some(CALL_TIMEOUT),
            )
            .await;
            println!(
                "  round {} {:>5}: failed {:>4} of {}  {}",
                round + 1,
                peer.name(),
                load.failed,
                load.ok + load.failed,
                load.error_summary()
            );
            failed[usize::from(peer == Peer::Ours)].push(load.failed);
        }
    }
    let total = |i: usize| failed[i].iter().sum::<u64>();
    let runs = |i: usize| {
        failed[i]
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let calls = DEAD_CALLS * config.rounds;
    vec![
        Row::new(
            format!("3. failed calls, 1 of 3 registered servers dead ({calls} calls, 4 in flight)"),
            "tonic `balance_channel`",
        )
        .value(format!("{} failed (runs: {})", total(0), runs(0)))
        .ours(format!("{} failed (runs: {})", total(1), runs(1)))
        .ratio("ours = 0")
        .met(total(1) == 0),
    ]
}

/// Calls in flight on the victim, sampled every millisecond over [`SAMPLE_WINDOW`] before
/// the kill, when the peer can tell (ours can).
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// The last sample, just before the kill.
    last: usize,
    mean: f64,
    max: usize,
}

/// What one run of measure 4 saw.
struct KillRun {
    load: Load,
    in_flight: Option<InFlight>,
    /// Just before SIGKILL was sent.
    killed_at: Instant,
}

impl KillRun {
    /// Failed calls that had started before the kill, and after it.
    fn failed_split(&self) -> (usize, usize) {
        let before = self
            .load
            .failed_started
            .iter()
            .filter(|&&t| t < self.killed_at)
            .count();
        (before, self.load.failed_started.len() - before)
    }
}

/// Measure 4: failed calls at 64 in flight over three `greeter_server` processes
/// registered with a TTL of 3 s, one of them killed with SIGKILL a second into the run; the
/// run lasts until 2 s after its lease can have expired.
pub(crate) async fn kill9(etcd: &Etcd, config: &Config) -> Vec<Row> {
    println!(
        "\n# 4. failed calls, kill -9 of 1 of 3 at {KILL_IN_FLIGHT} in flight, TTL {KILL_TTL} s"
    );
    let mut runs: [Vec<KillRun>; 2] = [Vec::new(), Vec::new()];
    for round in 0..config.kill_rounds {
        for peer in Peer::order(round) {
            let run = kill_run(etcd, &format!("bench-kill-{round}-{}", peer.name()), peer).await;
            let load = &run.load;
            let window = match (load.first_failure, load.last_failure) {
                (Some(first), Some(last)) => format!(
                    "failures from {:+.2} s to {:+.2} s after the kill",
                    first.duration_since(run.killed_at).as_secs_f64(),
                    last.duration_since(run.killed_at).as_secs_f64()
                ),
                _ => "no failure".into(),
            };
            let (before, after) = run.failed_split();
            println!(
                "  round {} {:>5}: failed {:>5} of {:>6} ({before} started before the kill, \
                 {after} after); in flight on the victim {}; {window}; {}",
                round + 1,
                peer.name(),
                load.failed,
                load.ok + load.failed,
                run.in_flight.map_or("?".into(), |n| format!(
                    "{} just before (mean {:.1}, max {} over the last {SAMPLE_WINDOW:?})",
                    n.last, n.mean, n.max
                )),
                load.error_summary()
            );
            runs[usize::from(peer == Peer::Ours)].push(run);
        }
    }
    let failed = |i: usize| runs[i].iter().map(|r| r.load.failed).sum::<u64>();
    let calls = |i: usize| {
        runs[i]
            .iter()
            .map(|r| r.load.ok + r.load.failed)
            .sum::<u64>()
    };
    let late = |i: usize| runs[i].iter().map(|r| r.failed_split().1).sum::<usize>();
    // What was on the victim when it died is not observable: calls still reach it between
    // SIGKILL and its exit. The bound is the most it held in the last moments before.
    let bound = |r: &KillRun| r.in_flight.map_or(0, |n| n.max) as u64;
    let met = runs[1].iter().all(|r| r.load.failed <= bound(r));
    let per_run = runs[1]
        .iter()
        .map(|r| match r.in_flight {
            Some(n) => format!("{} vs {} (max {})", r.load.failed, n.last, n.max),
            None => format!("{} vs ?", r.load.failed),
        })
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        Row::new(
            format!(
                "4. failed calls, kill -9 of 1 of 3 under load (64 in flight, TTL 3 s, {} runs)",
                config.kill_rounds
            ),
            "tonic `balance_channel`",
        )
        .value(format!(
            "{} failed of {} ({} started after the kill)",
            failed(0),
            calls(0),
            late(0)
        ))
        .ours(format!(
            "{} failed of {} ({} started after the kill); per run, failed vs in flight on the \
             victim just before the kill: {per_run}",
            failed(1),
            calls(1),
            late(1)
        ))
        .ratio(format!(
            "ours ≤ in flight on it (max over the last {} ms), each run",
            SAMPLE_WINDOW.as_millis()
        ))
        .met(met),
    ]
}

async fn kill_run(etcd: &Etcd, service: &str, peer: Peer) -> KillRun {
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(ServerProcess::spawn(&etcd.endpoint(), service, KILL_TTL).await);
    }
    let Connected {
        client,
        ours,
        _feeder,
    } = connect(etcd, service, peer).await;
    if let Some(channel) = &ours {
        wait_until("three endpoints up", DEADLINE, || async {
            let endpoints = channel.endpoints();
            endpoints.len() == 3 && endpoints.iter().all(|e| e.state == EndpointState::Up)
        })
        .await;
    }
    // Every peer sees the three servers before the timed run.
    let warm = common::load(
        &client,
        KILL_IN_FLIGHT,
        Budget::For(Duration::from_millis(300)),
        Some(CALL_TIMEOUT),
    )
    .await;
    assert_eq!(warm.failed, 0, "{} failed calls warming up", peer.name());
    let victim = servers[0].addr().to_string();
    let duration = KILL_AT + Duration::from_secs(KILL_TTL) + KILL_AFTER_TTL;
    let budget = Budget::For(duration);
    let timed = common::load(&client, KILL_IN_FLIGHT, budget, Some(CALL_TIMEOUT));
    let kill = async {
        tokio::time::sleep(KILL_AT - SAMPLE_WINDOW).await;
        // The victim's calls in flight, every millisecond until the kill.
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let until = Instant::now() + SAMPLE_WINDOW;
        while Instant::now() < until {
            tick.tick().await;
            if let Some(channel) = ours.as_ref() {
                let endpoints = channel.endpoints();
                let victim = endpoints.iter().filter(|e| e.addr == victim);
                samples.extend(victim.map(|e| e.in_flight));
            }
        }
        let killed_at = Instant::now();
        servers[0].kill9();
        let in_flight = samples.last().map(|&last| InFlight {
            last,
            mean: samples.iter().sum::<usize>() as f64 / samples.len() as f64,
            max: samples.iter().copied().max().unwrap_or(last),
        });
        (in_flight, killed_at)
    };
    let (load, (in_flight, killed_at)) = tokio::join!(timed, kill);
    KillRun {
        load,
        in_flight,
        killed_at,
    }
}
