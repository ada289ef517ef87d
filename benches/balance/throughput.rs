//! Measures 1 and 2: unary throughput over one backend, and tail latency with one backend
//! slowed ten times.

use std::cell::Cell;
use std::time::Duration;

use tonic::transport::Endpoint;
use tonic_etcd::EtcdDiscover;

use crate::common::{self, Budget, Client, Config, Load, Row};
use crate::paired::{self, Estimate};
use crate::support::{Etcd, TestServer};

/// Calls in flight in measure 1.
pub(crate) const THROUGHPUT_IN_FLIGHT: usize = 64;
/// Calls in flight in measure 2.
const LATENCY_IN_FLIGHT: usize = 16;
/// The base delay of every server in measure 2; the slow one waits ten times as long. Not
/// 1 ms: tokio's timer rounds a sleep up to the next millisecond tick, so 1 ms vs 10 ms
/// comes out as about 2.5 ms vs 11.5 ms at the client, a 4.5× slowdown rather than 10×.
const BASE_DELAY: Duration = Duration::from_millis(5);
/// An untimed run before the timed ones, per peer: connections, discovery, caches.
const WARM_UP: Duration = Duration::from_millis(500);

/// Measure 1: calls per second at 64 in flight over one backend, for a direct `Channel`,
/// tonic's `balance_channel` and ours.
pub(crate) async fn unary(etcd: &Etcd, config: &Config) -> Vec<Row> {
    const SERVICE: &str = "bench-throughput";
    println!("\n# 1. unary throughput, {THROUGHPUT_IN_FLIGHT} in flight, 1 backend");
    let server = TestServer::start().await;
    common::register(&mut etcd.client().await, SERVICE, server.addr()).await;
    let direct = Endpoint::from_shared(format!("http://{}", server.addr()))
        .expect("a valid uri")
        .connect()
        .await
        .expect("connect to the greeter");
    let (tonic, _feeder) = EtcdDiscover::new(etcd.client().await, SERVICE).balance_channel();
    let ours = EtcdDiscover::new(etcd.client().await, SERVICE).channel();
    // The same balancer through tonic's `Channel`, as for endpoints with a hook or tonic's
    // `ClientTlsConfig`.
    let hooked = EtcdDiscover::new(etcd.client().await, SERVICE)
        .endpoint(|endpoint, _| endpoint)
        .channel();
    let peers = [
        ("direct", Client::plain(direct)),
        ("tonic", Client::plain(tonic)),
        ("ours", Client::ours(ours)),
        ("hooked", Client::ours(hooked)),
    ];
    let loads = interleave(
        &peers,
        config,
        THROUGHPUT_IN_FLIGHT,
        || {},
        |name, load| {
            format!(
                "{name:>6}: {:>8.0} calls/s  p50 {:.2} ms  p99 {:.2} ms  failed {}  \
                 {:.1} µs CPU/call  {:.1} allocations/call",
                load.rate(),
                load.quantile_ms(0.5),
                load.quantile_ms(0.99),
                load.failed,
                load.cpu_per_call(),
                load.allocations_per_call()
            )
        },
    )
    .await;
    let rates: Vec<Vec<f64>> = loads
        .iter()
        .map(|runs| runs.iter().map(Load::rate).collect())
        .collect();
    let total = |i: usize| {
        let ok: u64 = loads[i].iter().map(|l| l.ok).sum();
        let secs: f64 = loads[i].iter().map(|l| l.elapsed.as_secs_f64()).sum();
        ok as f64 / secs
    };
    let (direct, tonic, ours) = (total(0), total(1), total(2));
    // The CPU the whole process spends per call: the two cores are saturated, so
    // throughput is about their time over this, and it is far less sensitive to what else
    // runs on the machine.
    let cpu = |i: usize| {
        let cpu: f64 = loads[i].iter().map(|l| l.cpu.as_secs_f64()).sum();
        let calls: u64 = loads[i].iter().map(|l| l.ok + l.failed).sum();
        cpu * 1e6 / calls.max(1) as f64
    };
    let (direct_cpu, tonic_cpu, ours_cpu) = (cpu(0), cpu(1), cpu(2));
    let allocations = |i: usize| {
        let n: usize = loads[i].iter().map(|l| l.allocations).sum();
        let calls: u64 = loads[i].iter().map(|l| l.ok + l.failed).sum();
        n as f64 / calls.max(1) as f64
    };
    // Each round runs the peers back to back: the ratio within a round cancels the noise
    // that drifts slowly, and the median over rounds the bursts.
    let ratios = |num: usize, den: usize| -> Vec<f64> {
        rates[num]
            .iter()
            .zip(&rates[den])
            .map(|(n, d)| n / d)
            .collect()
    };
    let summary = |ratios: Vec<f64>| {
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(0.0, f64::max);
        (common::median(&ratios), format!("rounds {lo:.2}–{hi:.2}"))
    };
    let (vs_direct, direct_spread) = summary(ratios(2, 0));
    let (vs_tonic, tonic_spread) = summary(ratios(2, 1));
    let (tonic_direct, _) = summary(ratios(1, 0));
    let (hooked_direct, hooked_spread) = summary(ratios(3, 0));
    println!(
        "  median of the rounds' ratios: ours/direct {vs_direct:.3} ({direct_spread}), \
         ours/tonic {vs_tonic:.3} ({tonic_spread}), tonic/direct {tonic_direct:.3}, \
         hooked/direct {hooked_direct:.3} ({hooked_spread})"
    );
    println!(
        "  CPU per call: direct {direct_cpu:.1} µs, tonic {tonic_cpu:.1} µs, ours {ours_cpu:.1} µs \
         (direct/ours {:.3}); allocations per call: direct {:.1}, tonic {:.1}, ours {:.1}, hooked {:.1}",
        direct_cpu / ours_cpu,
        allocations(0),
        allocations(1),
        allocations(2),
        allocations(3)
    );
    // The goal's figure: direct and ours alone, in short runs paired A B B A.
    let (tp, cpu_ratio) = paired_with_direct(&peers[0].1, &peers[2].1, config).await;
    // The same for ours through tonic's `Channel`, whose ratio must not fall either.
    let (hooked_tp, _) = paired_with_direct(&peers[0].1, &peers[3].1, config).await;
    let measure = "1. unary throughput, 64 in flight, 1 backend";
    vec![
        Row::new(measure, "direct `Channel`")
            .value(format!("{direct:.0} calls/s"))
            .ours(format!("{ours:.0} calls/s"))
            .ratio(format!(
                "ours/direct = {tp} (paired runs); rounds' median {vs_direct:.3} \
                 ({direct_spread}); CPU per call direct/ours = {:.3} (paired; {direct_cpu:.1} \
                 vs {ours_cpu:.1} µs over the rounds) / ≥ 1.0",
                cpu_ratio.median
            ))
            .met(tp.median >= 1.0),
        Row::new(measure, "tonic `balance_channel`")
            .value(format!("{tonic:.0} calls/s"))
            .ours(format!("{ours:.0} calls/s"))
            .ratio(format!(
                "ours/tonic = {vs_tonic:.3} (median; {tonic_spread}); CPU per call \
                 tonic/ours = {:.3}",
                tonic_cpu / ours_cpu
            )),
        Row::new(
            measure,
            "direct `Channel`, ours through tonic's `Channel` (a hook, or tonic's TLS)",
        )
        .value(format!("{direct:.0} calls/s"))
        .ours(format!("{:.0} calls/s", total(3)))
        .ratio(format!(
            "hooked/direct = {hooked_tp} (paired runs); rounds' median {hooked_direct:.3} \
                 ({hooked_spread}); CPU per call direct/hooked = {:.3}",
            direct_cpu / cpu(3)
        )),
    ]
}

/// Compares `direct` and `ours` (or another peer in its place) alone in paired runs
/// ([`paired::paired`]); prints and returns the throughput ratio ours/direct and the
/// CPU-per-call ratio direct/ours.
pub(crate) async fn paired_with_direct(
    direct: &Client,
    ours: &Client,
    config: &Config,
) -> (Estimate, Estimate) {
    let paired = paired::paired(
        direct,
        ours,
        THROUGHPUT_IN_FLIGHT,
        config.slice,
        config.blocks,
    )
    .await;
    let (tp, cpu) = (paired.throughput(), paired.cpu());
    println!(
        "  paired runs ({} blocks of direct, ours, ours, direct; {:?} each): \
         {:.0} vs {:.0} calls/s, {} failed\n    ours/direct {tp}\n    CPU per call direct/ours {cpu}",
        config.blocks, config.slice, paired.rates.0, paired.rates.1, paired.failed
    );
    (tp, cpu)
}

/// Measure 2: p99 latency at 16 in flight over three backends, one of them ten times
/// slower, for tonic's `balance_channel` and ours.
pub(crate) async fn slow_backend(etcd: &Etcd, config: &Config) -> Vec<Row> {
    const SERVICE: &str = "bench-slow";
    println!(
        "\n# 2. latency, {LATENCY_IN_FLIGHT} in flight, 3 backends at {BASE_DELAY:?}, one at 10×"
    );
    let fast = [
        TestServer::start_with_delay(BASE_DELAY).await,
        TestServer::start_with_delay(BASE_DELAY).await,
    ];
    let slow = TestServer::start_with_delay(BASE_DELAY * 10).await;
    let mut kv = etcd.client().await;
    for addr in [fast[0].addr(), fast[1].addr(), slow.addr()] {
        common::register(&mut kv, SERVICE, addr).await;
    }
    let (tonic, _feeder) = EtcdDiscover::new(etcd.client().await, SERVICE).balance_channel();
    let ours = EtcdDiscover::new(etcd.client().await, SERVICE).channel();
    let peers = [
        ("tonic", Client::plain(tonic)),
        ("ours", Client::ours(ours)),
    ];
    // Calls the slow server got: when the run started, and in all timed runs per peer.
    let before = Cell::new(0);
    let slow_share = Cell::new([0usize; 2]);
    let start = || before.set(slow.calls());
    let loads = interleave(&peers, config, LATENCY_IN_FLIGHT, start, |name, load| {
        let on_slow = slow.calls() - before.get();
        let mut share = slow_share.get();
        share[usize::from(name == "ours")] += on_slow;
        slow_share.set(share);
        format!(
            "{name:>6}: p50 {:.2} ms  p99 {:.2} ms  {:>7.0} calls/s  on the slow one {:.1}%  failed {}",
            load.quantile_ms(0.5),
            load.quantile_ms(0.99),
            load.rate(),
            100.0 * on_slow as f64 / (load.ok + load.failed).max(1) as f64,
            load.failed
        )
    })
    .await;
    let mut merged: Vec<Load> = loads
        .into_iter()
        .map(|runs| {
            let mut all = Load::default();
            runs.into_iter().for_each(|run| all.merge(run));
            all
        })
        .collect();
    let share = slow_share.get();
    let pct = |i: usize, load: &Load| 100.0 * share[i] as f64 / load.ok.max(1) as f64;
    let (tonic_p99, ours_p99) = (merged[0].quantile_ms(0.99), merged[1].quantile_ms(0.99));
    let (tonic_p50, ours_p50) = (merged[0].quantile_ms(0.5), merged[1].quantile_ms(0.5));
    println!(
        "  all rounds: tonic p50 {tonic_p50:.2} p99 {tonic_p99:.2} ms ({:.1}% on slow), \
         ours p50 {ours_p50:.2} p99 {ours_p99:.2} ms ({:.1}% on slow); ours/tonic p99 {:.3}",
        pct(0, &merged[0]),
        pct(1, &merged[1]),
        ours_p99 / tonic_p99
    );
    let ratio = ours_p99 / tonic_p99;
    vec![
        Row::new(
            "2. p99 latency, 16 in flight, 1 of 3 backends slowed 10× (5 ms → 50 ms)",
            "tonic `balance_channel`",
        )
        .value(format!(
            "p99 {tonic_p99:.2} ms (p50 {tonic_p50:.2}; {:.0}% of calls on the slow one)",
            pct(0, &merged[0])
        ))
        .ours(format!(
            "p99 {ours_p99:.2} ms (p50 {ours_p50:.2}; {:.1}% on the slow one)",
            pct(1, &merged[1])
        ))
        .ratio(format!("ours/tonic = {ratio:.3} / ≤ 0.33"))
        .met(ratio <= 0.33),
    ]
}

/// Warms each peer up, then runs `config.rounds` rounds of every peer in a rotating order
/// (A B C, B C A, C A B, ...). Returns each peer's runs, in peer order. `start` is called
/// before each timed run, and `report` after it, to make its log line.
pub(crate) async fn interleave<const N: usize>(
    peers: &[(&str, Client); N],
    config: &Config,
    in_flight: usize,
    mut start: impl FnMut(),
    mut report: impl FnMut(&str, &mut Load) -> String,
) -> Vec<Vec<Load>> {
    for (name, client) in peers {
        let warm = common::load(client, in_flight, Budget::For(WARM_UP), None).await;
        assert_eq!(warm.failed, 0, "{name} failed calls while warming up");
    }
    let mut runs: Vec<Vec<Load>> = (0..N).map(|_| Vec::new()).collect();
    for round in 0..config.rounds {
        println!("  round {}", round + 1);
        for k in 0..N {
            let i = (round + k) % N;
            let (name, client) = &peers[i];
            start();
            let mut load = common::load(client, in_flight, Budget::For(config.run), None).await;
            println!("    {}", report(name, &mut load));
            runs[i].push(load);
        }
    }
    runs
}
