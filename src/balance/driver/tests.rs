//! The driver on paused time, with changes fed by hand and a fake connector.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::transport::Endpoint;
use tower::discover::Change;

use super::{Item, Source, drive};
use crate::balance::backend::Backend;
use crate::balance::conn::{Conn, Target};
use crate::balance::connect::{Connector, Task};
use crate::balance::shared::Shared;
use crate::balance::status_observer::Observed;
use crate::balance::{Balancer, EndpointState};
use crate::discovery::{Discovered, DiscoveryStatus, Route};
use crate::format::Instance;

/// Changes sent by the test.
struct Fed(mpsc::UnboundedReceiver<Item>);

impl Source for Fed {
    fn poll_change(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.0.poll_recv(cx)
    }
}

/// Connects in 10 ms to any address but the dead ones, which refuse in 10 ms; logs when
/// each connection starts, and counts the tasks alive.
#[derive(Clone, Default)]
struct Fake {
    dead: Arc<HashSet<String>>,
    started: Arc<Mutex<Vec<(Instant, String)>>>,
    alive: Arc<()>,
}

impl Connector for Fake {
    fn connect(&self, backend: Arc<Backend>, _target: Target) -> Task {
        let addr = backend.instance.addr.clone();
        let dead = self.dead.contains(&addr);
        self.started
            .lock()
            .expect("not poisoned")
            .push((Instant::now(), addr));
        let alive = self.alive.clone();
        Task::spawn(async move {
            let _alive = alive;
            tokio::time::sleep(Duration::from_millis(10)).await;
            match dead {
                true => backend.set_ejected(),
                false => {
                    let lazy = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
                    backend.set_up(Conn::Tonic(lazy));
                }
            }
            std::future::pending::<()>().await;
        })
    }
}

/// A running driver and what feeds it.
struct Harness {
    state: Arc<Shared>,
    changes: mpsc::UnboundedSender<Item>,
    status: watch::Sender<DiscoveryStatus>,
    fake: Fake,
    _stop: oneshot::Sender<()>,
}

impl Harness {
    fn start(balancer: Balancer, dead: &[&str]) -> Harness {
        let (changes, fed) = mpsc::unbounded_channel();
        let (status, watched) = watch::channel(DiscoveryStatus::Syncing);
        let fake = Fake {
            dead: Arc::new(dead.iter().map(|a| a.to_string()).collect()),
            ..Fake::default()
        };
        let state = Arc::new(Shared::new("svc".into(), watched.clone(), balancer));
        let (stop, stopped) = oneshot::channel();
        let driver = drive(state.clone(), Fed(fed), watched, fake.clone(), stopped);
        tokio::spawn(driver);
        Harness {
            state,
            changes,
            status,
            fake,
            _stop: stop,
        }
    }

    fn insert(&self, addr: &str) {
        let discovered = Discovered {
            endpoint: Endpoint::from_shared(format!("http://{addr}")).expect("a uri"),
            instance: Instance::new(addr),
            route: Route::Plain,
        };
        let change = Change::Insert(format!("svc/{addr}"), discovered);
        self.changes.send(Ok(change)).expect("the driver runs");
    }

    fn remove(&self, addr: &str) {
        let change = Change::Remove(format!("svc/{addr}"));
        self.changes.send(Ok(change)).expect("the driver runs");
    }

    fn synced(&self) {
        self.status.send_replace(DiscoveryStatus::Synced {
            revision: 1,
            endpoints: 0,
            prefix: "svc/".into(),
            skipped: 0,
            skip_reason: None,
        });
    }

    fn states(&self) -> Vec<(String, EndpointState)> {
        let snapshot = self.state.snapshot();
        let known = snapshot.known.iter();
        known
            .map(|b| (b.instance.addr.clone(), b.state()))
            .collect()
    }

    fn up(&self) -> Vec<String> {
        let states = self.states().into_iter();
        let up = states.filter(|(_, s)| *s == EndpointState::Up);
        up.map(|(addr, _)| addr).collect()
    }

    /// Lets the driver and the connectors run for `time`, in 1 ms steps.
    async fn run_for(&self, time: Duration) {
        let end = Instant::now() + time;
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn connects_every_endpoint_that_fits_and_disconnects_a_removed_one() {
    let h = Harness::start(Balancer::new(), &[]);
    h.insert("10.0.0.1:1");
    h.insert("10.0.0.2:1");
    h.run_for(Duration::from_millis(5)).await;
    assert!(
        h.states()
            .iter()
            .all(|(_, s)| *s == EndpointState::Connecting)
    );
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.up().len(), 2, "{:?}", h.states());
    // The harness's and the driver's connectors, and two tasks.
    assert_eq!(Arc::strong_count(&h.fake.alive), 4, "two connector tasks");
    h.remove("10.0.0.1:1");
    h.run_for(Duration::from_millis(1)).await;
    assert_eq!(h.up(), ["10.0.0.2:1"]);
    assert_eq!(Arc::strong_count(&h.fake.alive), 3, "its task stopped");
}

#[tokio::test(start_paused = true)]
async fn a_subset_moves_past_dead_members_at_a_bounded_pace() {
    let dead: Vec<String> = (1..=8).map(|i| format!("10.0.0.{i}:1")).collect();
    let dead_refs: Vec<&str> = dead.iter().map(String::as_str).collect();
    let h = Harness::start(Balancer::new().subset(2), &dead_refs);
    for addr in &dead {
        h.insert(addr);
    }
    h.insert("10.0.1.1:1");
    h.synced();
    let start = Instant::now();
    let mut found = None;
    for _ in 0..2_000 {
        h.run_for(Duration::from_millis(1)).await;
        if h.up() == ["10.0.1.1:1"] {
            found = Some(start.elapsed());
            break;
        }
    }
    let found = found.expect("the live endpoint is found");
    let started = h.fake.started.lock().expect("not poisoned").clone();
    let windows = found.as_millis() / 100 + 1;
    assert!(
        started.len() as u128 <= 2 * windows,
        "{} connections in {found:?}: {started:?}",
        started.len()
    );
    let states = h.states();
    let connected = states.iter().filter(|(_, s)| *s != EndpointState::Idle);
    assert!(connected.count() <= 2, "{states:?}");
}

#[tokio::test(start_paused = true)]
async fn only_a_successful_listing_ends_the_startup_wait() {
    let h = Harness::start(Balancer::new(), &[]);
    let error = crate::error::Error::Timeout {
        operation: "listing the prefix",
        after: Duration::from_secs(5),
    };
    h.status.send_replace(DiscoveryStatus::Retrying {
        attempt: 1,
        error,
        endpoints: 0,
    });
    h.run_for(Duration::from_millis(10)).await;
    assert!(!h.state.is_synced(), "a failed listing is no sync");
    h.insert("10.0.0.1:1");
    h.synced();
    h.run_for(Duration::from_millis(1)).await;
    assert!(h.state.is_synced());
    assert_eq!(h.states().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_large_fleet_connects_a_subset_of_its_size() {
    let addrs: Vec<String> = (0..1_000)
        .map(|i| format!("10.1.{}.{}:1", i / 250, i % 250))
        .collect();
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let h = Harness::start(Balancer::new(), &refs);
    for addr in &addrs {
        h.insert(addr);
    }
    h.synced();
    h.run_for(Duration::from_millis(5)).await;
    let states = h.states();
    let connecting = states
        .iter()
        .filter(|(_, s)| *s == EndpointState::Connecting);
    assert_eq!(connecting.count(), 32);
    // They all fail: 32 others take their place in the next window, and no more. (While
    // the listing arrives, new endpoints also join in place of members, reservoir
    // sampling.)
    let listed = h.fake.started.lock().expect("not poisoned").len();
    h.run_for(Duration::from_millis(100)).await;
    let states = h.states();
    let connecting = states
        .iter()
        .filter(|(_, s)| *s == EndpointState::Connecting);
    assert_eq!(connecting.count(), 32);
    let started = h.fake.started.lock().expect("not poisoned").len();
    assert_eq!(started - listed, 32);
}

#[tokio::test(start_paused = true)]
async fn the_longest_waits_neither_overflow_nor_panic() {
    let outlier = crate::balance::outlier::OutlierDetection::default().interval(Duration::MAX);
    let balancer = Balancer::new()
        .startup_wait(Duration::MAX)
        .wait_for_ready(Duration::MAX)
        .outlier_detection(Some(outlier));
    let h = Harness::start(balancer, &[]);
    h.run_for(Duration::from_millis(10)).await;
    // Not synced: the pick waits `startup_wait` from the channel's start.
    let pick = h.state.pick(None, None, &[]);
    let waited = tokio::time::timeout(Duration::from_secs(60), pick).await;
    assert!(waited.is_err(), "still waiting, a year at most");
}

/// An endpoint ejected by outlier detection keeps its place in the subset, as in gRPC's
/// random subsetting (gRFC A68) and Envoy, where subsetting is a layer apart from the
/// per-host ejection: it stays connected, the pick skips it, and it shows as ejected.
#[tokio::test(start_paused = true)]
async fn an_endpoint_ejected_by_outlier_detection_keeps_its_place_in_the_subset() {
    let h = Harness::start(Balancer::new().subset(2), &[]);
    for i in 1..=4 {
        h.insert(&format!("10.0.0.{i}:1"));
    }
    h.synced();
    h.run_for(Duration::from_millis(20)).await;
    let members = h.up();
    assert_eq!(members.len(), 2, "{:?}", h.states());
    let view = h.state.snapshot();
    let failing = view
        .backends
        .iter()
        .find(|b| b.instance.addr == members[0])
        .expect("a member")
        .clone();
    for _ in 0..5 {
        let unavailable = Observed::Status(tonic::Code::Unavailable);
        h.state.observed(&failing, unavailable);
    }
    assert_eq!(failing.shown_state(Instant::now()), EndpointState::Ejected);
    h.run_for(Duration::from_secs(5)).await;
    assert_eq!(h.up(), members, "the same two members, both connected");
    for _ in 0..100 {
        let picked = h.state.snapshot().pick(false).expect("one is up");
        assert_eq!(
            picked.instance.addr, members[1],
            "the pick skips the ejected"
        );
    }
    assert_eq!(failing.shown_state(Instant::now()), EndpointState::Ejected);
}
