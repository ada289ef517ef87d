//! Instructions per call, for one peer at a time, under `valgrind --tool=callgrind`: the
//! cost of a call is counted, not timed, so the result barely moves however busy the machine
//! (only timer-driven work, such as the channel's progress requests and outlier sweeps, grows
//! with the wall time a run takes; it is far below 1 % of a call's count).
//!
//! ```text
//! scripts/callgrind.sh                   # instructions per call, direct Channel vs ours
//! CALLGRIND_PEER=ours CALLGRIND_CALLS=20000 \
//!   valgrind --tool=callgrind target/release/deps/callgrind-* --bench
//! ```
//!
//! The binary starts a real etcd and an in-process greeter server, warms the peer up, then
//! makes `CALLGRIND_CALLS` [2000] unary calls with 64 in flight (as measure 1 of the balance
//! bench) through `CALLGRIND_PEER` [ours]: `direct` (a tonic `Channel` to the server) or
//! `ours` (the crate's balanced channel with its defaults, outlier detection on). The
//! process's total counts everything, setup included: two runs with different call counts,
//! subtracted, give the cost of one call (client and server side together, the same server
//! for both peers). `scripts/callgrind.sh` does that.

#[path = "../tests/support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "balance/common.rs"]
mod common;

use tonic::transport::Endpoint;
use tonic_etcd::EtcdDiscover;

use common::{Budget, Client};
use support::{Etcd, TestServer};

/// Calls in flight, as in the balance bench's throughput measure.
const IN_FLIGHT: usize = 64;
/// Calls before the counted ones: connections, discovery, caches.
const WARM_UP: usize = 500;

/// `common` counts allocations with the balance bench's allocator; this bench does not.
pub(crate) fn allocations() -> usize {
    0
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("callgrind: run with scripts/callgrind.sh");
        return;
    }
    let calls: usize = std::env::var("CALLGRIND_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let peer = std::env::var("CALLGRIND_PEER").unwrap_or_else(|_| "ours".into());
    const SERVICE: &str = "bench-callgrind";
    let etcd = Etcd::start().await;
    let server = TestServer::start().await;
    let client = match peer.as_str() {
        "direct" => {
            let channel = Endpoint::from_shared(format!("http://{}", server.addr()))
                .expect("a valid uri")
                .connect()
                .await
                .expect("connect to the greeter");
            Client::plain(channel)
        }
        "ours" => {
            common::register(&mut etcd.client().await, SERVICE, server.addr()).await;
            Client::ours(EtcdDiscover::new(etcd.client().await, SERVICE).channel())
        }
        other => panic!("CALLGRIND_PEER is `direct` or `ours`, not {other:?}"),
    };
    let warm = common::load(&client, IN_FLIGHT, Budget::Calls(WARM_UP), None).await;
    assert_eq!(warm.failed, 0, "calls failed while warming up");
    let load = common::load(&client, IN_FLIGHT, Budget::Calls(calls), None).await;
    assert_eq!(load.failed, 0, "calls failed: {}", load.error_summary());
    println!("{peer}: {} calls", load.ok);
}
