//! The cost of the `metrics` feature (issue 13.4): unary throughput of the crate's balancer
//! with a Prometheus recorder installed and scraped once a second, over the same channel
//! with recording switched off, on a real etcd and an in-process greeter server.
//!
//! ```text
//! cargo bench --bench metrics --features metrics
//! BENCH_SECS=3 BENCH_ROUNDS=10 cargo bench --bench metrics --features metrics
//! ```
//!
//! One recorder is installed for the whole process (the `metrics` facade allows one): a
//! switch in front of it hands out the real counters and gauges while on, and no-op ones
//! while off. Runs alternate (off on, on off, ...) so that machine noise falls on both
//! alike; the result is the median of the rounds' ratios, with the goal ≥ 0.98, beside the
//! CPU the whole process spends per call, off and on (steadier on a busy machine). Environment:
//! `BENCH_SECS` [1] seconds per run, `BENCH_ROUNDS` [8].

#[path = "../tests/support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "balance/common.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tonic_etcd::EtcdDiscover;

use common::{Budget, Client, Config, Load, Row};
use support::{Etcd, TestServer};

/// Calls in flight, as in the balance bench's throughput measure.
const IN_FLIGHT: usize = 64;
/// How often the recorder is scraped while on (Prometheus's default is every 15 s).
const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// `common` counts allocations with the balance bench's allocator; this bench does not.
pub(crate) fn allocations() -> usize {
    0
}

/// A recorder that records through `inner` while `on`, and hands out no-ops otherwise.
/// The crate registers its metrics at each recording, so switching takes effect at once.
struct Switch {
    on: Arc<AtomicBool>,
    inner: PrometheusRecorder,
}

impl Recorder for Switch {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        match self.on.load(Ordering::Relaxed) {
            true => self.inner.register_counter(key, metadata),
            false => Counter::noop(),
        }
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        match self.on.load(Ordering::Relaxed) {
            true => self.inner.register_gauge(key, metadata),
            false => Gauge::noop(),
        }
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        match self.on.load(Ordering::Relaxed) {
            true => self.inner.register_histogram(key, metadata),
            false => Histogram::noop(),
        }
    }
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("metrics: run with `cargo bench --bench metrics --features metrics`");
        return;
    }
    let config = Config::from_env();
    println!("tonic-etcd metrics benchmark: {config}");
    let on = Arc::new(AtomicBool::new(false));
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(Switch {
        on: on.clone(),
        inner: recorder,
    })
    .expect("the only recorder");
    tonic_etcd::metrics::describe();

    const SERVICE: &str = "bench-metrics";
    let etcd = Etcd::start().await;
    let server = TestServer::start().await;
    common::register(&mut etcd.client().await, SERVICE, server.addr()).await;
    let client = Client::ours(EtcdDiscover::new(etcd.client().await, SERVICE).channel());
    let warm = common::load(
        &client,
        IN_FLIGHT,
        Budget::For(Duration::from_millis(500)),
        None,
    )
    .await;
    assert_eq!(warm.failed, 0, "calls failed while warming up");

    let mut ratios = Vec::new();
    let (mut calls_on, mut calls_off, mut secs_on, mut secs_off) = (0, 0, 0.0, 0.0);
    // CPU time of the whole process, off and on: far less sensitive than throughput to
    // what else runs on the machine.
    let (mut cpu_on, mut cpu_off) = (0.0, 0.0);
    for round in 0..config.rounds {
        let mut rates = [0.0; 2];
        // Alternate which goes first, so that drift falls on both.
        for k in 0..2 {
            let metrics_on = (round + k) % 2 == 1;
            on.store(metrics_on, Ordering::Relaxed);
            let load = run(&client, &config, metrics_on.then_some(&handle)).await;
            assert_eq!(load.failed, 0, "calls failed: {}", load.error_summary());
            rates[usize::from(metrics_on)] = load.rate();
            let secs = load.elapsed.as_secs_f64();
            let cpu = load.cpu.as_secs_f64();
            match metrics_on {
                true => {
                    (calls_on, secs_on, cpu_on) = (calls_on + load.ok, secs_on + secs, cpu_on + cpu)
                }
                false => {
                    (calls_off, secs_off, cpu_off) =
                        (calls_off + load.ok, secs_off + secs, cpu_off + cpu)
                }
            }
        }
        let ratio = rates[1] / rates[0];
        println!(
            "  round {}: off {:>8.0} calls/s, on {:>8.0} calls/s, on/off {ratio:.3}",
            round + 1,
            rates[0],
            rates[1]
        );
        ratios.push(ratio);
    }
    let median = common::median(&ratios);
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(0.0, f64::max);
    let scrape = handle.render();
    let series = scrape
        .lines()
        .filter(|l| l.starts_with("tonic_etcd") || l.starts_with("grpc"))
        .count();
    println!("  the last scrape holds {series} series");
    let per_call = |cpu: f64, calls: u64| cpu * 1e6 / calls.max(1) as f64;
    let (cpu_off, cpu_on) = (per_call(cpu_off, calls_off), per_call(cpu_on, calls_on));
    let row = Row::new("unary throughput, 64 in flight, 1 backend", "metrics off")
        .value(format!("{:.0} calls/s", calls_off as f64 / secs_off))
        .ours(format!(
            "{:.0} calls/s with metrics on",
            calls_on as f64 / secs_on
        ))
        .ratio(format!(
            "on/off = {median:.3} (median; rounds {lo:.2}–{hi:.2}); CPU per call off/on = \
             {:.3} ({cpu_off:.1} vs {cpu_on:.1} µs) / ≥ 0.98",
            cpu_off / cpu_on
        ))
        .met(median >= 0.98);
    println!("\n{}", common::table(&[row]));
}

/// One timed run; while `handle` is given (metrics on), a scrape every [`SCRAPE_EVERY`].
async fn run(client: &Client, config: &Config, handle: Option<&PrometheusHandle>) -> Load {
    let scraper = handle.cloned().map(|handle| {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SCRAPE_EVERY);
            loop {
                every.tick().await;
                std::hint::black_box(handle.render());
            }
        })
    });
    let load = common::load(client, IN_FLIGHT, Budget::For(config.run), None).await;
    if let Some(scraper) = scraper {
        scraper.abort();
    }
    load
}
