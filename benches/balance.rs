//! The benchmarks of issue 5: the crate's own balancer against tonic's `balance_channel` and
//! a direct `Channel`, on a real etcd and real greeter servers on loopback.
//!
//! ```text
//! cargo bench --bench balance
//! BENCH_SECS=5 BENCH_ROUNDS=5 cargo bench --bench balance     # longer, steadier runs
//! BENCH_ONLY=1,2 cargo bench --bench balance                  # some measures only
//! BENCH_ONLY=7 cargo bench --bench balance --features tls     # throughput over tls
//! BENCH_ONLY=8,9,10 cargo bench --bench balance               # failure handling (issue 11)
//! ```
//!
//! Each measure runs its peers in this one process, against the same etcd and the same
//! servers, and interleaves them (A B C, B C A, C A B, ...) so that machine noise falls on
//! every peer alike. Absolute numbers on a shared machine are noise; the ratios are the
//! result. The last table holds one row per goal of the issue.
//!
//! Environment (defaults in brackets):
//!
//! - `BENCH_SECS` [1]: seconds per timed run of measures 1, 2 and 7.
//! - `BENCH_ROUNDS` [8]: interleaved rounds of measures 1, 2, 3, 6, 7 and 8, trials of 10.
//! - `BENCH_KILL_ROUNDS` [2]: rounds of measures 4 and 9 (each spawns three server
//!   processes per peer).
//! - `BENCH_BLOCKS` [40] and `BENCH_SLICE_MS` [250]: the paired comparison of measures 1
//!   and 7 with a direct `Channel` (the goal's figure), in blocks of four short runs
//!   (direct, ours, ours, direct), so the machine's drift falls on both alike.
//! - `BENCH_TRIALS` [100]: registrations timed by measure 5.
//! - `BENCH_INSTANCES` [10000]: instances under one prefix in measure 6.
//! - `BENCH_ONLY` [all]: a comma-separated list of measures to run, e.g. `1,4`. Measure 7
//!   (throughput over TLS) needs `--features tls`.
//! - `RUST_LOG` [unset]: logs to stderr, e.g. `RUST_LOG=tonic_etcd=debug`.
//!
//! Run directly, the binary needs `--bench`, as `cargo bench` passes it; without it (as under
//! `cargo test --all-targets`) it does nothing.
//!
//! A counting global allocator measures memory: bytes allocated minus bytes freed, by the
//! whole process, read when nothing else runs.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "balance/common.rs"]
mod common;
#[path = "balance/failing.rs"]
mod failing;
#[path = "balance/failures.rs"]
mod failures;
#[path = "balance/paired.rs"]
mod paired;
#[path = "balance/registration.rs"]
mod registration;
#[path = "balance/scale.rs"]
mod scale;
#[path = "balance/throughput.rs"]
mod throughput;
#[cfg(feature = "tls")]
#[path = "balance/tls.rs"]
mod tls;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

use common::{Config, Row};
use support::Etcd;

/// The system allocator, counting the bytes live on the heap.
///
/// The count is sharded by thread, each shard on its own cache line, so that counting does
/// not make threads contend on every allocation: that would tax the peers that allocate
/// more, and skew the throughput ratios.
struct Counting;

/// Shards of the counts, by the threads that hash to each.
static LIVE: [Shard; SHARDS] = [const {
    Shard {
        bytes: AtomicIsize::new(0),
        allocations: AtomicUsize::new(0),
    }
}; SHARDS];
const SHARDS: usize = 64;

#[repr(align(128))]
struct Shard {
    /// Bytes allocated minus bytes freed.
    bytes: AtomicIsize,
    /// Allocations made, reallocations included.
    allocations: AtomicUsize,
}

thread_local! {
    /// A per-thread address; const-initialized and without `Drop`, so reading it never
    /// allocates.
    static MARK: u8 = const { 0 };
}

fn allocated(bytes: usize) {
    let shard = shard();
    shard.bytes.fetch_add(bytes as isize, Ordering::Relaxed);
    shard.allocations.fetch_add(1, Ordering::Relaxed);
}

fn freed(bytes: usize) {
    shard().bytes.fetch_sub(bytes as isize, Ordering::Relaxed);
}

fn shard() -> &'static Shard {
    let slot = MARK
        // Fibonacci hashing: threads' addresses differ in their high bits only.
        .try_with(|mark| (std::ptr::from_ref(mark) as usize).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .map(|hash| hash >> (usize::BITS - SHARDS.trailing_zeros()))
        .unwrap_or(0);
    &LIVE[slot]
}

// SAFETY: every method forwards to `System` with the caller's arguments, unchanged, and
// only adds a counter update.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            allocated(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            allocated(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        freed(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            freed(layout.size());
            allocated(new_size);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes live on the heap now.
fn heap() -> isize {
    LIVE.iter().map(|s| s.bytes.load(Ordering::Relaxed)).sum()
}

/// Allocations (and reallocations) made so far.
fn allocations() -> usize {
    LIVE.iter()
        .map(|s| s.allocations.load(Ordering::Relaxed))
        .sum()
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // and must not spend minutes here.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("balance: run with `cargo bench --bench balance` (or pass --bench)");
        return;
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let config = Config::from_env();
    println!("tonic-etcd balance benchmarks: {config}");
    let etcd = Etcd::start().await;
    let mut rows: Vec<Row> = Vec::new();
    if config.runs(1) {
        rows.extend(throughput::unary(&etcd, &config).await);
    }
    if config.runs(2) {
        rows.extend(throughput::slow_backend(&etcd, &config).await);
    }
    if config.runs(3) {
        rows.extend(failures::dead_endpoint(&etcd, &config).await);
    }
    if config.runs(4) {
        rows.extend(failures::kill9(&etcd, &config).await);
    }
    if config.runs(5) {
        rows.extend(registration::put_to_first_call(&etcd, &config).await);
    }
    if config.runs(6) {
        rows.extend(scale::ten_thousand(&etcd, &config).await);
    }
    #[cfg(feature = "tls")]
    if config.runs(7) {
        rows.extend(tls::unary(&etcd, &config).await);
    }
    if config.runs(8) {
        rows.extend(failing::fast_failing(&etcd, &config).await);
    }
    if config.runs(9) {
        rows.extend(failing::kill9_retry(&etcd, &config).await);
    }
    if config.runs(10) {
        rows.extend(failing::put_while_spinning(&etcd, &config).await);
    }
    println!("\n## Results ({config})\n");
    println!("{}", common::table(&rows));
}
