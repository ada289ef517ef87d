//! One discovered server: its connection, its load, and whether it is in rotation.
//!
//! ```text
//!  Idle ──activated──► Connecting ──connected──► Up ──transport error──► Ejected
//!   ▲                     ▲   │                                             │
//!   │                     │   └── failed ──► Ejected                        │
//!   │                     └──────────────── backoff, probe ◄────────────────┤
//!   └───────────────────── deactivated (a subset makes room) ◄──────────────┘
//! ```
//!
//! The driver activates an endpoint when it joins the connected subset (every endpoint,
//! while there are no more than the subset's size): a connection is opened at once, so
//! the first call does not pay for it, and an endpoint is only picked while it is up. A
//! transport failure ejects it at once; a probe (a fresh connection) readmits it, with
//! jittered exponential backoff between probes.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::info;

use super::conn::Conn;
use super::handles::IdleHandles;
use super::outlier::OutlierDetection;
use super::pick::{Ewma, LastPick, Load};
use super::slow_start::SlowStart;
use super::standing::{Standing, View};
use crate::format::Instance;
use crate::inflight::{Counted, InFlightCounter};
use crate::metrics::Ejection;

/// Where an endpoint stands; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndpointState {
    /// The first connection is under way.
    Connecting,
    /// Connected and in rotation.
    Up,
    /// Out of rotation after a failure: until a probe connects after a transport
    /// failure, or until its ejection time ends after outlier detection ejected it (see
    /// [`EndpointInfo::ejection`](super::EndpointInfo::ejection)).
    Ejected,
    /// Known but not connected: outside the connected subset (see
    /// [`Balancer::subset`](super::Balancer::subset)).
    Idle,
}

const CONNECTING: u8 = 0;
const UP: u8 = 1;
const EJECTED: u8 = 2;
const IDLE: u8 = 3;

impl EndpointState {
    /// The state as stored in a backend's atomic: the one encoding, which `from_u8` reads.
    const fn to_u8(self) -> u8 {
        match self {
            EndpointState::Connecting => CONNECTING,
            EndpointState::Up => UP,
            EndpointState::Ejected => EJECTED,
            EndpointState::Idle => IDLE,
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            UP => EndpointState::Up,
            EJECTED => EndpointState::Ejected,
            IDLE => EndpointState::Idle,
            _ => EndpointState::Connecting,
        }
    }
}

pub(crate) struct Backend {
    pub(crate) key: String,
    pub(crate) instance: Instance,
    state: AtomicU8,
    connection: Mutex<Connection>,
    /// The current connection's generation, read without the lock; written under it.
    generation: AtomicU64,
    /// Idle handles on the current connection, per thread.
    idle: IdleHandles,
    pub(crate) in_flight: InFlightCounter,
    latency: Mutex<Ewma>,
    /// When the pick last chose it: one left out too long is due a call.
    pub(crate) last_pick: LastPick,
    /// Outlier detection's state and the slow-start ramp.
    standing: Mutex<Standing>,
    /// Whether the current connection has served its first call, which is not timed.
    warm: AtomicBool,
    /// Wakes the connector after an ejection.
    ejected: Notify,
    /// Told when the backend comes up or goes down.
    signals: Arc<Signals>,
}

/// What a backend tells when it comes up or goes down.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    /// Wakes the calls waiting for an endpoint.
    pub(crate) changed: Notify,
    /// Wakes the driver, which may change the subset; keeps a permit, so none is lost
    /// while the driver is busy.
    pub(crate) driver: Notify,
    /// The channel's service: the `grpc.target` label of its metrics.
    pub(crate) service: Arc<str>,
}

impl Signals {
    pub(crate) fn notify(&self) {
        self.changed.notify_waiters();
        self.driver.notify_one();
    }
}

impl Backend {
    pub(crate) fn new(
        key: String,
        instance: Instance,
        signals: Arc<Signals>,
        decay: Duration,
        outlier: &OutlierDetection,
    ) -> Self {
        Backend {
            key,
            instance,
            state: AtomicU8::new(IDLE),
            connection: Mutex::default(),
            generation: AtomicU64::new(0),
            idle: IdleHandles::default(),
            in_flight: InFlightCounter::default(),
            latency: Mutex::new(Ewma::new(decay)),
            last_pick: LastPick::new(Instant::now(), decay),
            standing: Mutex::new(Standing::new(outlier, Instant::now())),
            warm: AtomicBool::new(false),
            ejected: Notify::new(),
            signals,
        }
    }

    /// The channel's service: the `grpc.target` label of its metrics.
    pub(crate) fn service(&self) -> &str {
        &self.signals.service
    }

    pub(crate) fn state(&self) -> EndpointState {
        EndpointState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn is_up(&self) -> bool {
        self.state() == EndpointState::Up
    }

    /// The state as `endpoints()` and the state gauge show it: an endpoint that is up but
    /// ejected by outlier detection at `now` is [`EndpointState::Ejected`], as one ejected
    /// after a transport failure is (it keeps its connection, but the pick skips it).
    pub(crate) fn shown_state(&self, now: Instant) -> EndpointState {
        match self.state() {
            EndpointState::Up if self.standing().outlier.ejection(now).is_some() => {
                EndpointState::Ejected
            }
            state => state,
        }
    }

    /// A handle on the connection, if up, with its generation: see
    /// [`Backend::eject_connection`]. Give it back with [`Backend::check_in`] once the call
    /// is sent.
    ///
    /// From this thread's pool of idle handles when it has one (no lock shared with other
    /// threads: see `handles`), else a clone of the connection's.
    pub(crate) fn check_out(&self) -> Option<(Conn, u64)> {
        if !self.is_up() {
            return None;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(conn) = self.idle.take(generation) {
            return Some((conn, generation));
        }
        let connection = self.lock_connection();
        connection.conn.clone().map(|c| (c, connection.generation))
    }

    /// Keeps a handle from [`Backend::check_out`] for the next call on this thread, while
    /// its connection is current: a fresh clone of tonic's `Channel` allocates on its first
    /// use.
    pub(crate) fn check_in(&self, conn: Conn, generation: u64) {
        self.idle.put(conn, generation, &self.generation);
    }

    fn lock_connection(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The load used to compare two candidates: calls in flight, recent latency, and
    /// the factor of the recent success rate.
    pub(crate) fn load(&self, now: Instant) -> Load {
        let latency = self
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(now);
        Load {
            in_flight: self.in_flight.get(),
            latency,
            health: self.standing().outlier.pick_factor(now),
        }
    }

    /// Outlier detection's state of the endpoint and its slow-start ramp, locked.
    pub(crate) fn standing(&self) -> std::sync::MutexGuard<'_, Standing> {
        self.standing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the pick sees of the endpoint's standing at `now`.
    pub(crate) fn view(&self, slow_start: Option<&SlowStart>, now: Instant) -> View {
        self.standing().view(slow_start, now)
    }

    /// Records the latency of a call; the first call on a connection pays for its warm-up
    /// and is not counted.
    ///
    /// `reference` is the channel-wide latency: no sample counts for more than
    /// [`PEAK_STEP`](super::pick::ewma::PEAK_STEP) times it, so a backend's first samples are bounded too.
    pub(crate) fn observe(&self, latency: Duration, now: Instant, reference: f64) {
        // A load first: the swap writes the shared line on every call otherwise.
        if !self.warm.load(Ordering::Acquire) && !self.warm.swap(true, Ordering::AcqRel) {
            return;
        }
        self.latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(latency, now, reference);
    }

    /// Takes the endpoint out of rotation after a transport failure; a probe readmits it.
    /// Ejects after a call failed on connection `generation`, unless that connection has
    /// been replaced already: a late failure of an old connection says nothing of the new.
    pub(crate) fn eject_connection(&self, generation: u64) {
        // Under the lock, so that a new connection cannot come up between the check and
        // the ejection.
        let connection = self.lock_connection();
        if connection.generation == generation {
            self.eject(Ejection::Transport);
        }
    }

    pub(crate) fn eject(&self, reason: Ejection) {
        if self.swap_unless_idle(EJECTED) == Some(UP) {
            info!(key = %self.key, addr = %self.instance.addr, "endpoint ejected");
            crate::metrics::ejection(&self.signals.service, reason);
            self.ejected.notify_one();
            self.signals.notify();
        }
    }

    /// Sets the state to `to` unless the endpoint is idle (its connector is being stopped);
    /// returns the state before, if it changed.
    fn swap_unless_idle(&self, to: u8) -> Option<u8> {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != IDLE && s != to).then_some(to)
            })
            .ok()
    }

    /// Waits until the current connection is ejected. A permit left by an earlier
    /// ejection must not end a healthy connection: only an ejection of this one does.
    pub(super) async fn ejected(&self) {
        loop {
            self.ejected.notified().await;
            if !self.is_up() {
                return;
            }
        }
    }

    /// Puts a new connection in rotation, unless the endpoint has left the subset.
    pub(super) fn set_up(&self, conn: Conn) {
        self.warm.store(false, Ordering::Release);
        self.standing().came_up(Instant::now());
        let mut connection = self.lock_connection();
        // Under the lock: `deactivate` cannot slip in between.
        if self.state.load(Ordering::Acquire) == IDLE {
            return;
        }
        *connection = Connection {
            conn: Some(conn),
            generation: connection.generation + 1,
        };
        self.generation
            .store(connection.generation, Ordering::Release);
        self.idle.clear();
        self.state
            .store(EndpointState::Up.to_u8(), Ordering::Release);
        drop(connection);
        self.signals.notify();
    }

    /// Marks a failed attempt, so callers stop waiting for it.
    pub(super) fn set_ejected(&self) {
        if self.swap_unless_idle(EJECTED).is_some() {
            self.signals.notify();
        }
    }

    /// Starts connecting: called by the driver as it spawns the connector.
    pub(crate) fn activate(&self) {
        self.state
            .store(EndpointState::Connecting.to_u8(), Ordering::Release);
    }

    /// Leaves the subset: the driver has stopped the connector. The connection closes once
    /// the calls on it end.
    pub(crate) fn deactivate(&self) {
        let mut connection = self.lock_connection();
        self.state
            .store(EndpointState::Idle.to_u8(), Ordering::Release);
        *connection = Connection {
            generation: connection.generation + 1,
            ..Connection::default()
        };
        self.generation
            .store(connection.generation, Ordering::Release);
        self.idle.clear();
        drop(connection);
        self.signals.notify();
    }
}

impl Counted for Backend {
    fn counter(&self) -> &InFlightCounter {
        &self.in_flight
    }
}

/// The current connection.
#[derive(Default)]
struct Connection {
    conn: Option<Conn>,
    /// Counts connections, so a failure is charged to the one it happened on.
    generation: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_as_itself_from_its_own_code() {
        let states = [
            EndpointState::Connecting,
            EndpointState::Up,
            EndpointState::Ejected,
            EndpointState::Idle,
        ];
        let codes: std::collections::BTreeSet<u8> = states.iter().map(|s| s.to_u8()).collect();
        assert_eq!(codes.len(), states.len(), "one code per state");
        for state in states {
            assert_eq!(EndpointState::from_u8(state.to_u8()), state);
        }
    }
}
