//! Measure 7 (with the `tls` feature): unary throughput over TLS, through the balancer's own
//! connection and through tonic's `Channel`, against a direct TLS `Channel`.

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic_etcd::{EtcdDiscover, TlsConfig};

use crate::common::{self, Client, Config, Load, Row};
use crate::support::{Etcd, TestPki, TestServer};
use crate::throughput::{THROUGHPUT_IN_FLIGHT, interleave, paired_with_direct};

/// Measure 7: calls per second at 64 in flight over one TLS backend, for a direct TLS
/// `Channel`, ours with the crate's `TlsConfig` (its own connection), and ours with tonic's
/// `ClientTlsConfig` (through tonic's `Channel`).
pub(crate) async fn unary(etcd: &Etcd, config: &Config) -> Vec<Row> {
    const SERVICE: &str = "bench-tls";
    println!("\n# 7. unary throughput over tls, {THROUGHPUT_IN_FLIGHT} in flight, 1 backend");
    let pki = TestPki::new();
    let server = TestServer::start_tls(&pki).await;
    common::register(&mut etcd.client().await, SERVICE, server.addr()).await;
    let tonic_tls = || ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca_pem));
    let direct = Endpoint::from_shared(format!("https://{}", server.addr()))
        .expect("a valid uri")
        .tls_config(tonic_tls())
        .expect("a valid tls configuration")
        .connect()
        .await
        .expect("connect to the greeter over tls");
    let ours = EtcdDiscover::new(etcd.client().await, SERVICE)
        .tls_config(TlsConfig::new().ca_certificate(pki.ca_pem.as_bytes()))
        .channel();
    let tonic_path = EtcdDiscover::new(etcd.client().await, SERVICE)
        .tls(tonic_tls())
        .channel();
    let peers = [
        ("direct", Client::plain(direct)),
        ("ours", Client::ours(ours)),
        ("via-tonic", Client::ours(tonic_path)),
    ];
    let loads = interleave(
        &peers,
        config,
        THROUGHPUT_IN_FLIGHT,
        || {},
        |name, load| {
            format!(
                "{name:>9}: {:>8.0} calls/s  p50 {:.2} ms  p99 {:.2} ms  failed {}  \
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
    let total = |i: usize| {
        let ok: u64 = loads[i].iter().map(|l| l.ok).sum();
        let secs: f64 = loads[i].iter().map(|l| l.elapsed.as_secs_f64()).sum();
        ok as f64 / secs
    };
    let cpu = |i: usize| {
        let cpu: f64 = loads[i].iter().map(|l| l.cpu.as_secs_f64()).sum();
        let calls: u64 = loads[i].iter().map(|l| l.ok + l.failed).sum();
        cpu * 1e6 / calls.max(1) as f64
    };
    // The ratio within each round cancels slow drift; the median over rounds the bursts.
    let ratio = |num: usize| {
        let ratios: Vec<f64> = loads[num]
            .iter()
            .zip(&loads[0])
            .map(|(n, d)| Load::rate(n) / d.rate())
            .collect();
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(0.0, f64::max);
        (common::median(&ratios), format!("rounds {lo:.2}–{hi:.2}"))
    };
    let (ours, ours_spread) = ratio(1);
    let (via_tonic, via_tonic_spread) = ratio(2);
    println!(
        "  median of the rounds' ratios: ours/direct {ours:.3} ({ours_spread}), \
         via-tonic/direct {via_tonic:.3} ({via_tonic_spread}); CPU per call: direct {:.1} µs, \
         ours {:.1} µs, via-tonic {:.1} µs",
        cpu(0),
        cpu(1),
        cpu(2)
    );
    let (tp, cpu_ratio) = paired_with_direct(&peers[0].1, &peers[1].1, config).await;
    let measure = "7. unary throughput over tls, 64 in flight, 1 backend";
    vec![
        Row::new(measure, "direct tls `Channel`")
            .value(format!("{:.0} calls/s", total(0)))
            .ours(format!("{:.0} calls/s", total(1)))
            .ratio(format!(
                "ours/direct = {tp} (paired runs); rounds' median {ours:.3} ({ours_spread}); \
                 CPU per call direct/ours = {:.3} (paired) / ≥ 1.0",
                cpu_ratio.median
            ))
            .met(tp.median >= 1.0),
        Row::new(
            measure,
            "direct tls `Channel`, ours through tonic's `Channel` (`EtcdDiscover::tls`)",
        )
        .value(format!("{:.0} calls/s", total(0)))
        .ours(format!("{:.0} calls/s", total(2)))
        .ratio(format!(
            "via-tonic/direct = {via_tonic:.3} (median; {via_tonic_spread})"
        )),
    ]
}
