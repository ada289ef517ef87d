//! Shared support for the integration tests.
//!
//! Each test binary declares `mod support;` and uses the part it needs.
//!
//! # Layout
//!
//! - [`binaries`]: the examples and the `tonic-etcd` command, built as the suite builds them.
//! - [`etcd`]: a real etcd process ([`etcd::Etcd`]) or a three-member cluster
//!   ([`etcd::EtcdCluster`]) on free loopback ports, with a private data directory.
//! - [`greeter`]: an in-process greeter server ([`greeter::TestServer`]) and the
//!   `greeter_server` example run as a child process ([`greeter::ServerProcess`]).
//! - [`leases`]: which lease holds a key, a lease's time to live, waits for a key.
//! - [`load`]: greeter calls kept flowing through a channel, counted ([`load::Load`]).
//! - [`observe`]: discovery watched from outside, its statuses ([`observe::StatusLog`]) and
//!   its raw stream ([`observe::Feed`]).
//! - [`process`]: free ports, signals, log tails and blocking waits for child processes.
//! - [`relay`]: a TCP relay that cuts the network in front of etcd ([`relay::Relay`]).
//! - [`tls`]: a private PKI made at test time ([`tls::TestPki`]) for TLS etcd and servers.
//! - [`pb`]: the generated `helloworld` Greeter protobuf code.
//! - [`wait_until`] and [`wait_for`]: poll a condition until a deadline, never a bare sleep;
//!   [`wait_until_quietly`] lets the caller fail with its own message; [`holds_until`]
//!   checks that a condition stays true.
//!
//! Nothing here mocks etcd, and nothing touches the default ports 2379 and 2380.

// Each test binary uses a subset of this module, re-exports included.
#![allow(dead_code, unused_imports)]

pub mod binaries;
pub mod etcd;
pub mod greeter;
pub mod leases;
pub mod load;
pub mod observe;
pub mod process;
pub mod relay;
pub mod tls;

use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

pub use etcd::{Etcd, EtcdCluster};
pub use greeter::{ServerProcess, TestServer};
pub use load::{Load, Tally};
pub use relay::Relay;
pub use tls::TestPki;

/// The generated `helloworld` protobuf code (crates/greeter): `greeter_server::{Greeter,
/// GreeterServer}`, `greeter_client::GreeterClient`, `HelloRequest` and `HelloReply`.
pub use hello_world as pb;

/// How often [`wait_until`] and [`wait_for`] evaluate their condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Polls the async condition `f` every [`POLL_INTERVAL`] until it returns `true`.
///
/// The `deadline` bounds the whole wait, including a call to `f` that hangs.
///
/// # Panics
///
/// Panics with a message naming `what` when the deadline passes first.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, deadline, move || {
        let check = f();
        async move { check.await.then_some(()) }
    })
    .await
}

/// Polls the async function `f` every [`POLL_INTERVAL`] until it returns `Some`, and returns
/// that value.
///
/// Handy for an operation that must eventually succeed, such as a put during a leader
/// election: `wait_for("put", d, || { let mut c = c.clone(); async move { c.put(..).await.ok() } })`.
///
/// # Panics
///
/// Panics with a message naming `what` when `deadline` passes first.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let poll = async {
        let mut interval = tokio::time::interval(POLL_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Some(value) = f().await {
                return value;
            }
        }
    };
    match tokio::time::timeout(deadline, poll).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {deadline:?} waiting for {what}"),
    }
}

/// Polls `check` every [`POLL_INTERVAL`] until it holds or `deadline` passes; returns
/// whether it held, so the caller can fail with its own message.
pub async fn wait_until_quietly(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Checks `f` every [`POLL_INTERVAL`] until `until`, and panics the first time it is false.
pub async fn holds_until<F, Fut>(what: &str, until: Instant, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    while Instant::now() < until {
        interval.tick().await;
        assert!(f().await, "{what}: false after {:?}", started.elapsed());
    }
}

/// Locks `mutex`, which only a panicking test task can poison.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .expect("a test task panicked while holding a lock")
}

/// Blocking twin of [`wait_until`] for synchronous code such as `Drop` or a child process
/// wait: polls `f` every [`POLL_INTERVAL`] on the current thread.
///
/// Returns `false` when `deadline` passes first, so the caller decides how to fail.
pub fn wait_until_blocking(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + deadline;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}
