//! Measure 6: 10,000 instances under one prefix: initial sync, memory per instance, and a
//! burst of 1,000 changes.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tonic::transport::Endpoint;
use tonic_etcd::etcd_client::{Client as EtcdClient, GetOptions, Txn, TxnOp};
use tonic_etcd::{
    DiscoveryStatus, DiscoveryStream, EndpointState, EtcdDiscover, EtcdNaming, Format, Instance,
};
use tower::discover::Change;

use crate::common::{self, Client, Config, Row};
use crate::heap;
use crate::support::{Etcd, wait_until};

const SERVICE: &str = "bench-scale";
/// etcd's default `--max-txn-ops`.
const TXN_OPS: usize = 128;
/// Changes in a burst.
const BURST: usize = 1000;
/// How long a sync, a burst or a channel may take before the bench gives up.
const DEADLINE: Duration = Duration::from_secs(60);
/// A pause that lets background tasks finish what they were doing before the heap is read.
const SETTLE: Duration = Duration::from_millis(500);
/// How long the CPU use of an idle channel is sampled.
const IDLE_WINDOW: Duration = Duration::from_secs(2);
/// The first address group of the bursts; the initial instances are group 10.
const BURST_GROUP: usize = 20;

/// The address of instance `i` of `group`: on loopback, where nothing listens on port 9,
/// so a connection is refused at once.
fn addr(group: usize, i: usize) -> String {
    format!("127.{group}.{}.{}:9", i / 250, i % 250 + 1)
}

/// Transactions of at most [`TXN_OPS`] puts that register `count` instances of `group`.
fn txns(group: usize, count: usize) -> Vec<Txn> {
    let ops: Vec<TxnOp> = (0..count)
        .map(|i| {
            let instance = Instance::new(addr(group, i));
            let key = EtcdNaming.key(SERVICE, &instance, 0);
            TxnOp::put(key, EtcdNaming.value(SERVICE, &instance), None)
        })
        .collect();
    ops.chunks(TXN_OPS)
        .map(|chunk| Txn::new().and_then(chunk.to_vec()))
        .collect()
}

async fn send(kv: &mut EtcdClient, txns: Vec<Txn>) {
    for txn in txns {
        kv.txn(txn).await.expect("a registration transaction");
    }
}

/// Reads `discover` until it has yielded `n` inserts; returns them.
async fn inserts(discover: &mut DiscoveryStream, n: usize) -> Vec<(String, Endpoint)> {
    let mut items = Vec::with_capacity(n);
    let read = async {
        while items.len() < n {
            match discover.next().await {
                Some(Ok(Change::Insert(key, endpoint))) => items.push((key, endpoint)),
                Some(Ok(Change::Remove(_))) => {}
                Some(Err(e)) => panic!("discovery failed: {e}"),
                None => panic!("discovery ended"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .unwrap_or_else(|_| panic!("no {n} inserts within {DEADLINE:?}"));
    items
}

/// Polls `discover` once more without waiting, as any consumer does while it waits for the
/// next change; nothing is expected. (The stream frees the buffer of a step's changes only
/// once it is polled past the last of them.)
fn poll_once(discover: &mut DiscoveryStream) {
    use futures_util::FutureExt;
    if let Some(item) = discover.next().now_or_never() {
        panic!("an unexpected change: {item:?}");
    }
}

/// Open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// Measure 6.
pub(crate) async fn ten_thousand(etcd: &Etcd, config: &Config) -> Vec<Row> {
    let n = config.instances;
    println!("\n# 6. {n} instances under one prefix");
    let mut kv = etcd.client().await;
    let started = Instant::now();
    send(&mut kv, txns(10, n)).await;
    println!("  put {n} keys in {:.2?}", started.elapsed());
    // Grows the client's buffers to the listing's size before any heap is read.
    let options = GetOptions::new().with_prefix();
    kv.get(format!("{SERVICE}/"), Some(options))
        .await
        .expect("list the prefix");

    let (sync, stream_bytes, endpoint_bytes, mut discover) = initial_sync(etcd, config).await;
    let burst = burst(&mut kv, &mut discover, config).await;
    drop(discover);
    let (tonic_bytes, tonic_cpu) = tonic_memory(etcd, n).await;
    let (ours_bytes, ours_cpu, most_active) = ours_memory(etcd, n).await;

    let measure = format!("6. {n} instances under one prefix");
    let per = |bytes| common::per_instance(bytes, n);
    vec![
        Row::new(format!("{measure}: initial sync"), "—")
            .ours(format!("{:.3} s (median of {})", sync, config.rounds))
            .ratio("≤ 0.5 s")
            .met(sync <= 0.5),
        Row::new(
            format!("{measure}: memory per instance, whole channel (lazy, unconnected)"),
            "tonic `balance_channel`",
        )
        .value(format!("{}; idle CPU {tonic_cpu:.0}%", per(tonic_bytes)))
        .ours(format!(
            "{}; idle CPU {ours_cpu:.0}%; at most {most_active} endpoints connecting or \
             connected when sampled every 50 ms (subset 32; all dead)",
            per(ours_bytes)
        ))
        .ratio(format!(
            "≤ 2 KiB; ours/tonic = {:.2}",
            ours_bytes as f64 / tonic_bytes as f64
        ))
        .met(ours_bytes as f64 / n as f64 <= 2048.0),
        Row::new(
            format!("{measure}: memory per instance, discovery stream alone"),
            "—",
        )
        .ours(format!(
            "{} ({} state + {} yielded endpoints)",
            per(stream_bytes + endpoint_bytes),
            per(stream_bytes),
            per(endpoint_bytes)
        )),
        Row::new(format!("{measure}: burst of {BURST} puts applied"), "—")
            .ours(format!("{:.1} ms (median of {})", burst, config.rounds))
            .ratio("≤ 200 ms")
            .met(burst <= 200.0),
    ]
}

/// 6a and the first part of 6b: rounds of a fresh raw discovery stream reading the whole
/// prefix. Returns the median time in seconds, the heap held by the stream's own state and
/// by the endpoints it yielded (last round), and the last stream.
async fn initial_sync(etcd: &Etcd, config: &Config) -> (f64, isize, isize, DiscoveryStream) {
    let n = config.instances;
    let client = etcd.client().await;
    let mut times = Vec::new();
    let mut last = None;
    let mut bytes = (0, 0);
    for round in 0..config.rounds {
        drop(last.take());
        tokio::time::sleep(SETTLE).await;
        let before = heap();
        let started = Instant::now();
        let mut discover = EtcdDiscover::new(client.clone(), SERVICE).into_stream();
        let items = inserts(&mut discover, n).await;
        let took = started.elapsed();
        let at_last_insert = heap();
        poll_once(&mut discover);
        let with_items = heap();
        drop(items);
        let state = heap();
        bytes = (state - before, with_items - state);
        println!(
            "  sync round {}: {n} inserts in {:.3} s; heap per instance: stream state {} \
             ({} until polled past the last insert), yielded endpoints {}",
            round + 1,
            took.as_secs_f64(),
            common::per_instance(bytes.0, n),
            common::per_instance(at_last_insert - with_items + bytes.0, n),
            common::per_instance(bytes.1, n)
        );
        times.push(took.as_secs_f64());
        last = Some(discover);
    }
    let discover = last.expect("at least one round");
    (common::median(&times), bytes.0, bytes.1, discover)
}

/// 6c: rounds of a burst of [`BURST`] new keys, put in transactions of [`TXN_OPS`], timed
/// from the first transaction sent to the last insert the stream yields. Returns the median
/// in milliseconds.
async fn burst(kv: &mut EtcdClient, discover: &mut DiscoveryStream, config: &Config) -> f64 {
    let mut times = Vec::new();
    for round in 0..config.rounds {
        // A sentinel first, so the stream's watch is open before the clock starts.
        let group = BURST_GROUP + round;
        send(kv, txns(group + 100, 1)).await;
        inserts(discover, 1).await;
        let batch = txns(group, BURST);
        let started = Instant::now();
        let read = async {
            let items = inserts(&mut *discover, BURST).await;
            (items, Instant::now())
        };
        let (_, (items, done)) = tokio::join!(send(kv, batch), read);
        let took = done.duration_since(started).as_secs_f64() * 1000.0;
        assert_eq!(items.len(), BURST);
        println!(
            "  burst round {}: {BURST} inserts in {took:.1} ms",
            round + 1
        );
        times.push(took);
    }
    common::median(&times)
}

/// The CPU the process uses over [`IDLE_WINDOW`], in percent of one core.
async fn idle_cpu() -> f64 {
    let before = common::cpu_time();
    tokio::time::sleep(IDLE_WINDOW).await;
    100.0 * (common::cpu_time() - before).as_secs_f64() / IDLE_WINDOW.as_secs_f64()
}

/// 6b for tonic's `balance_channel`: the heap it holds once every endpoint has reached
/// tonic's balancer, which takes changes only while calls flow; so calls flow (and fail,
/// every endpoint being dead) for a while first. Returns the bytes and the idle CPU.
async fn tonic_memory(etcd: &Etcd, n: usize) -> (isize, f64) {
    tokio::time::sleep(SETTLE).await;
    let before = heap();
    let (channel, handle) = EtcdDiscover::new(etcd.client().await, SERVICE).balance_channel();
    let status = handle.status();
    wait_until("tonic's feeder synced", DEADLINE, || async {
        matches!(*status.borrow(), DiscoveryStatus::Synced { endpoints, .. } if endpoints >= n)
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    let fed = heap() - before;
    let mut client = Client::plain(channel.clone());
    let (mut calls, mut failed) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let call = tokio::time::timeout(Duration::from_millis(500), client.hello()).await;
        calls += 1;
        failed += usize::from(!matches!(call, Ok(Ok(_))));
    }
    drop(client);
    tokio::time::sleep(SETTLE).await;
    let applied = heap() - before;
    let cpu = idle_cpu().await;
    drop(channel);
    handle.stop().await;
    tokio::time::sleep(SETTLE).await;
    println!(
        "  tonic balance_channel: heap {} per instance fed to the queue, {} after {calls} calls \
         ({failed} failed) pulled them into the balancer; idle CPU {cpu:.0}%; {} retained after drop",
        common::per_instance(fed, n),
        common::per_instance(applied, n),
        common::per_instance(heap() - before, n)
    );
    (applied, cpu)
}

/// 6b for our channel: the heap it holds with every endpoint known, every one dead, and a
/// subset of the default size (32) tried, failing and replaced, while the rest stay idle:
/// no connection, task or timer. Returns the bytes, the idle CPU, and how many endpoints
/// were not idle at most.
async fn ours_memory(etcd: &Etcd, n: usize) -> (isize, f64, usize) {
    tokio::time::sleep(SETTLE).await;
    let before = heap();
    let started = Instant::now();
    let channel = EtcdDiscover::new(etcd.client().await, SERVICE).channel();
    wait_until("our channel knows every endpoint", DEADLINE, || async {
        channel.endpoints().len() >= n
    })
    .await;
    let known = started.elapsed();
    // While it settles, the subset moves through the dead endpoints: count the ones it holds.
    let mut most_active = 0;
    let mut fds = open_fds();
    let settle_until = Instant::now() + SETTLE;
    while Instant::now() < settle_until {
        let active = channel
            .endpoints()
            .iter()
            .filter(|e| e.state != EndpointState::Idle)
            .count();
        most_active = most_active.max(active);
        fds = fds.max(open_fds());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = heap() - before;
    let cpu = idle_cpu().await;
    let up = channel
        .endpoints()
        .iter()
        .filter(|e| e.state == EndpointState::Up)
        .count();
    drop(channel);
    tokio::time::sleep(SETTLE).await;
    println!(
        "  ours: every endpoint known after {known:.2?}; at most {most_active} not idle at \
         once ({up} up; up to {fds} open file descriptors); heap {} per instance; idle CPU \
         {cpu:.0}%; {} retained after drop",
        common::per_instance(held, n),
        common::per_instance(heap() - before, n)
    );
    (held, cpu, most_active)
}
