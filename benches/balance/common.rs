//! What every measure shares: the configuration, a client over any peer, a load generator,
//! statistics and the result table.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;
use tonic::transport::Channel;
use tonic_etcd::etcd_client::Client as EtcdClient;
use tonic_etcd::{BalancedChannel, EtcdNaming, Format, Instance};

use crate::support::pb::HelloRequest;
use crate::support::pb::greeter_client::GreeterClient;

/// The knobs, read from the environment; see the crate docs.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Seconds per timed run of measures 1 and 2.
    pub(crate) run: Duration,
    pub(crate) rounds: usize,
    pub(crate) kill_rounds: usize,
    pub(crate) trials: usize,
    pub(crate) instances: usize,
    /// Blocks (A B B A) of the paired throughput comparisons.
    pub(crate) blocks: usize,
    /// How long each run of a paired comparison lasts.
    pub(crate) slice: Duration,
    only: Option<Vec<u32>>,
}

impl Config {
    pub(crate) fn from_env() -> Self {
        let secs: f64 = env("BENCH_SECS", 1.0);
        Config {
            run: Duration::from_secs_f64(secs.max(0.1)),
            rounds: env("BENCH_ROUNDS", 8usize).max(1),
            kill_rounds: env("BENCH_KILL_ROUNDS", 2usize).max(1),
            trials: env("BENCH_TRIALS", 100usize).max(1),
            instances: env("BENCH_INSTANCES", 10_000usize).max(1),
            blocks: env("BENCH_BLOCKS", 40usize).max(1),
            slice: Duration::from_millis(env("BENCH_SLICE_MS", 250u64).max(20)),
            only: std::env::var("BENCH_ONLY").ok().map(|list| {
                list.split(',')
                    .filter_map(|n| n.trim().parse().ok())
                    .collect()
            }),
        }
    }

    /// Whether measure `n` is selected.
    pub(crate) fn runs(&self, n: u32) -> bool {
        self.only.as_ref().is_none_or(|only| only.contains(&n))
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BENCH_SECS={} BENCH_ROUNDS={} BENCH_KILL_ROUNDS={} BENCH_TRIALS={} BENCH_INSTANCES={} \
             BENCH_BLOCKS={} BENCH_SLICE_MS={}",
            self.run.as_secs_f64(),
            self.rounds,
            self.kill_rounds,
            self.trials,
            self.instances,
            self.blocks,
            self.slice.as_millis()
        )
    }
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a valid value")),
        Err(_) => default,
    }
}

/// A greeter client over one of the peers.
#[derive(Clone)]
pub(crate) enum Client {
    /// A tonic `Channel`: direct, or tonic's `balance_channel`.
    Plain(GreeterClient<Channel>),
    /// The crate's own balanced channel.
    Ours(GreeterClient<BalancedChannel>),
}

impl Client {
    pub(crate) fn plain(channel: Channel) -> Self {
        Client::Plain(GreeterClient::new(channel))
    }

    pub(crate) fn ours(channel: BalancedChannel) -> Self {
        Client::Ours(GreeterClient::new(channel))
    }

    /// One unary call; the reply names the server that answered.
    pub(crate) async fn hello(&mut self) -> Result<String, Status> {
        let request = HelloRequest {
            name: "bench".into(),
        };
        let reply = match self {
            Client::Plain(client) => client.say_hello(request).await?,
            Client::Ours(client) => client.say_hello(request).await?,
        };
        Ok(reply.into_inner().message)
    }
}

/// When a load stops.
#[derive(Debug, Clone)]
pub(crate) enum Budget {
    /// After this long.
    For(Duration),
    /// After this many calls in all.
    Calls(usize),
    /// When the flag is set.
    Until(Arc<AtomicBool>),
}

/// What a load did.
#[derive(Debug, Default)]
pub(crate) struct Load {
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    /// Latencies of the calls that succeeded, in microseconds.
    pub(crate) latencies: Vec<u32>,
    pub(crate) elapsed: Duration,
    /// Failures by code and message.
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) first_failure: Option<Instant>,
    pub(crate) last_failure: Option<Instant>,
    /// When each failed call started.
    pub(crate) failed_started: Vec<Instant>,
    /// Heap allocations made by the whole process meanwhile.
    pub(crate) allocations: usize,
    /// CPU time used by the whole process meanwhile (clients, servers, etcd client).
    pub(crate) cpu: Duration,
}

impl Load {
    pub(crate) fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU time per call, in microseconds, of the whole process (client and servers).
    pub(crate) fn cpu_per_call(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / (self.ok + self.failed).max(1) as f64
    }

    /// Heap allocations per call, by the whole process (client and servers).
    pub(crate) fn allocations_per_call(&self) -> f64 {
        self.allocations as f64 / (self.ok + self.failed).max(1) as f64
    }

    pub(crate) fn merge(&mut self, other: Load) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.latencies.extend(other.latencies);
        self.elapsed += other.elapsed;
        for (error, n) in other.errors {
            *self.errors.entry(error).or_default() += n;
        }
        self.first_failure = min_some(self.first_failure, other.first_failure);
        self.last_failure = self.last_failure.max(other.last_failure);
        self.failed_started.extend(other.failed_started);
        self.allocations += other.allocations;
        self.cpu += other.cpu;
    }

    /// The latency at quantile `q` of the calls that succeeded, in milliseconds.
    pub(crate) fn quantile_ms(&mut self, q: f64) -> f64 {
        self.latencies.sort_unstable();
        quantile(&self.latencies, q) / 1000.0
    }

    /// The failures, most frequent first, for the log.
    pub(crate) fn error_summary(&self) -> String {
        let mut errors: Vec<_> = self.errors.iter().collect();
        errors.sort_by(|a, b| b.1.cmp(a.1));
        errors
            .iter()
            .take(3)
            .map(|(e, n)| format!("{n}× {e}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn min_some(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The value at quantile `q` (0..=1) of `sorted`, by the nearest-rank method.
pub(crate) fn quantile<T: Copy + Into<f64>>(sorted: &[T], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].into()
}

/// The median of `values`.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    quantile(&sorted, 0.5)
}

/// Stops a load by time, by a count of calls, or by a flag.
#[derive(Clone)]
struct Limits {
    deadline: Option<Instant>,
    tickets: Option<(Arc<AtomicUsize>, usize)>,
    stop: Option<Arc<AtomicBool>>,
}

impl Limits {
    fn new(budget: Budget) -> Self {
        let mut limits = Limits {
            deadline: None,
            tickets: None,
            stop: None,
        };
        match budget {
            Budget::For(d) => limits.deadline = Some(Instant::now() + d),
            Budget::Calls(n) => limits.tickets = Some((Arc::default(), n)),
            Budget::Until(flag) => limits.stop = Some(flag),
        }
        limits
    }

    /// Whether one more call may start.
    fn take(&self) -> bool {
        self.deadline.is_none_or(|d| Instant::now() < d)
            && self
                .tickets
                .as_ref()
                .is_none_or(|(taken, n)| taken.fetch_add(1, Ordering::Relaxed) < *n)
            && self
                .stop
                .as_ref()
                .is_none_or(|s| !s.load(Ordering::Relaxed))
    }
}

/// Calls with `in_flight` callers in a loop until the budget is spent. A call that takes
/// longer than `timeout`, if given, counts as failed.
pub(crate) async fn load(
    client: &Client,
    in_flight: usize,
    budget: Budget,
    timeout: Option<Duration>,
) -> Load {
    let started = Instant::now();
    let allocations = crate::allocations();
    let cpu = cpu_time();
    let limits = Limits::new(budget);
    let workers: Vec<_> = (0..in_flight)
        .map(|_| tokio::spawn(caller(client.clone(), limits.clone(), timeout)))
        .collect();
    let mut total = Load::default();
    for worker in workers {
        total.merge(worker.await.expect("a load caller does not panic"));
    }
    total.elapsed = started.elapsed();
    total.allocations = crate::allocations() - allocations;
    total.cpu = cpu_time().saturating_sub(cpu);
    total
}

async fn caller(mut client: Client, limits: Limits, timeout: Option<Duration>) -> Load {
    let mut load = Load::default();
    while limits.take() {
        let started = Instant::now();
        let result = match timeout {
            Some(t) => tokio::time::timeout(t, client.hello())
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("bench timeout"))),
            None => client.hello().await,
        };
        let now = Instant::now();
        match result {
            Ok(_) => {
                load.ok += 1;
                let micros = (now - started).as_micros();
                load.latencies
                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
            }
            Err(status) => {
                load.failed += 1;
                let mut error = format!("{:?}: {}", status.code(), status.message());
                error.truncate(120);
                *load.errors.entry(error).or_default() += 1;
                load.first_failure.get_or_insert(now);
                load.last_failure = Some(now);
                load.failed_started.push(started);
            }
        }
    }
    load
}

/// Puts `addr`'s registration under `service`, in etcd naming; returns the key.
pub(crate) async fn register(kv: &mut EtcdClient, service: &str, addr: impl ToString) -> String {
    let instance = Instance::new(addr.to_string());
    let key = EtcdNaming.key(service, &instance, 0);
    kv.put(key.as_str(), EtcdNaming.value(service, &instance), None)
        .await
        .expect("put a registration");
    key
}

/// An address on loopback where nothing listens: connecting is refused.
pub(crate) fn dead_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address of a listener")
}

/// One line of the result table.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) measure: String,
    pub(crate) peer: String,
    pub(crate) value: String,
    pub(crate) ours: String,
    pub(crate) ratio: String,
    pub(crate) met: Option<bool>,
}

impl Row {
    pub(crate) fn new(measure: impl Into<String>, peer: impl Into<String>) -> Self {
        Row {
            measure: measure.into(),
            peer: peer.into(),
            value: "—".into(),
            ours: "—".into(),
            ratio: "—".into(),
            met: None,
        }
    }

    pub(crate) fn value(mut self, value: impl Into<String>) -> Self {
        self.value = value.into();
        self
    }

    pub(crate) fn ours(mut self, ours: impl Into<String>) -> Self {
        self.ours = ours.into();
        self
    }

    pub(crate) fn ratio(mut self, ratio: impl Into<String>) -> Self {
        self.ratio = ratio.into();
        self
    }

    pub(crate) fn met(mut self, met: bool) -> Self {
        self.met = Some(met);
        self
    }
}

/// The rows as a Markdown table.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| measure | peer | value | ours | ratio / goal | met? |\n|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            row.measure, row.peer, row.value, row.ours, row.ratio, met
        ));
    }
    out
}

/// Process CPU time (user + system) so far, from `/proc/self/stat`.
pub(crate) fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the command name in parentheses: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // Linux reports in clock ticks of 1/100 s (`CLK_TCK`).
    Duration::from_millis(ticks * 10)
}

/// Formats a count of bytes per instance.
pub(crate) fn per_instance(bytes: isize, instances: usize) -> String {
    let per = bytes as f64 / instances as f64;
    if per.abs() >= 1024.0 {
        format!("{:.2} KiB", per / 1024.0)
    } else {
        format!("{per:.0} B")
    }
}
