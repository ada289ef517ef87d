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

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{Instrument, debug, info};

use super::Balancer;
use super::conn::{Conn, Target};
use super::direct::KeepAlive;
use super::health::{self, HealthCheck};
use super::pick::Load;
use crate::backoff::{Backoff, Retry};
use crate::format::Instance;
use crate::inflight::{Counted, InFlightCounter};

/// Where an endpoint stands; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndpointState {
    /// The first connection is under way.
    Connecting,
    /// Connected and in rotation.
    Up,
    /// Out of rotation after a failure, until a probe connects.
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
    pub(crate) in_flight: InFlightCounter,
    latency: Mutex<Ewma>,
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
    ) -> Self {
        Backend {
            key,
            instance,
            state: AtomicU8::new(IDLE),
            connection: Mutex::default(),
            in_flight: InFlightCounter::default(),
            latency: Mutex::new(Ewma::new(decay)),
            warm: AtomicBool::new(false),
            ejected: Notify::new(),
            signals,
        }
    }

    pub(crate) fn state(&self) -> EndpointState {
        EndpointState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn is_up(&self) -> bool {
        self.state() == EndpointState::Up
    }

    /// A handle on the connection, if up, with its generation: see
    /// [`Backend::eject_connection`]. Give it back with [`Backend::check_in`] once the call
    /// is sent.
    pub(crate) fn check_out(&self) -> Option<(Conn, u64)> {
        if !self.is_up() {
            return None;
        }
        let mut connection = self.lock_connection();
        let generation = connection.generation;
        if let Some(conn) = connection.idle.pop() {
            return Some((conn, generation));
        }
        connection.conn.clone().map(|c| (c, generation))
    }

    /// Keeps a handle from [`Backend::check_out`] for the next call, while its connection is
    /// current: a fresh clone of tonic's `Channel` allocates on its first use.
    pub(crate) fn check_in(&self, conn: Conn, generation: u64) {
        let mut connection = self.lock_connection();
        if connection.generation == generation && connection.idle.len() < MAX_IDLE_HANDLES {
            connection.idle.push(conn);
        }
    }

    fn lock_connection(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The load used to compare two candidates: calls in flight and recent latency.
    pub(crate) fn load(&self, now: Instant) -> Load {
        let latency = self
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(now);
        Load {
            in_flight: self.in_flight.get(),
            latency,
        }
    }

    /// Records the latency of a call; the first call on a connection pays for its warm-up
    /// and is not counted.
    ///
    /// `reference` is the channel-wide latency: no sample counts for more than
    /// [`PEAK_STEP`] times it, so a backend's first samples are bounded too.
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
            self.eject();
        }
    }

    pub(crate) fn eject(&self) {
        if self.swap_unless_idle(EJECTED) == Some(UP) {
            info!(key = %self.key, addr = %self.instance.addr, "endpoint ejected");
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

    fn set_up(&self, conn: Conn) {
        self.warm.store(false, Ordering::Release);
        let mut connection = self.lock_connection();
        // Under the lock: `deactivate` cannot slip in between.
        if self.state.load(Ordering::Acquire) == IDLE {
            return;
        }
        *connection = Connection {
            conn: Some(conn),
            generation: connection.generation + 1,
            idle: Vec::new(),
        };
        self.state.store(UP, Ordering::Release);
        drop(connection);
        self.signals.notify();
    }

    /// Marks a failed attempt, so callers stop waiting for it.
    fn set_ejected(&self) {
        if self.swap_unless_idle(EJECTED).is_some() {
            self.signals.notify();
        }
    }

    /// Starts connecting: called by the driver as it spawns the connector.
    pub(crate) fn activate(&self) {
        self.state.store(CONNECTING, Ordering::Release);
    }

    /// Leaves the subset: the driver has stopped the connector. The connection closes once
    /// the calls on it end.
    pub(crate) fn deactivate(&self) {
        let mut connection = self.lock_connection();
        self.state.store(IDLE, Ordering::Release);
        *connection = Connection {
            generation: connection.generation + 1,
            ..Connection::default()
        };
        drop(connection);
        self.signals.notify();
    }
}

impl Counted for Backend {
    fn counter(&self) -> &InFlightCounter {
        &self.in_flight
    }
}

/// The current connection, and idle clones of its handle.
#[derive(Default)]
struct Connection {
    conn: Option<Conn>,
    /// Counts connections, so a failure is charged to the one it happened on.
    generation: u64,
    idle: Vec<Conn>,
}

/// The most idle channel handles kept per endpoint: about the calls sent at once.
const MAX_IDLE_HANDLES: usize = 1024;

/// Connects, and reconnects after every ejection, for as long as the backend is discovered.
/// With a health check, an endpoint must also report `SERVING` to come up, and is ejected
/// when a later check fails. The returned handle's owner aborts it on removal.
pub(crate) fn spawn_connector(
    backend: Arc<Backend>,
    target: Target,
    config: &Balancer,
) -> tokio::task::JoinHandle<()> {
    let span = tracing::debug_span!("tonic_etcd::connect", key = %backend.key);
    let (backoff, check, keep_alive) = (
        config.probe_backoff,
        config.health_check.clone(),
        config.keep_alive,
    );
    tokio::spawn(connect_loop(backend, target, backoff, check, keep_alive).instrument(span))
}

async fn connect_loop(
    backend: Arc<Backend>,
    target: Target,
    backoff: Backoff,
    check: Option<HealthCheck>,
    keep_alive: Option<KeepAlive>,
) {
    let mut retry = Retry::new(backoff);
    // An endpoint that never answered is most likely a stale registration: probe it more
    // and more rarely, so thousands of them do not keep a core busy.
    let mut stale = Retry::new(backoff.max(NEVER_CONNECTED_MAX));
    let mut ever_connected = false;
    loop {
        match target.connect(&backend.instance.addr, keep_alive).await {
            Ok((conn, closed)) if healthy(&conn, check.as_ref()).await => {
                ever_connected = true;
                if retry.attempt() > 0 {
                    info!(key = %backend.key, addr = %backend.instance.addr, "endpoint readmitted");
                }
                backend.set_up(conn.clone());
                let connected = Instant::now();
                let closed = async {
                    match closed {
                        Some(closed) => {
                            let _ = closed.await;
                        }
                        None => std::future::pending().await,
                    }
                };
                // A permit left by an earlier ejection (this task's own, below) must not end
                // a healthy connection: only an ejection of this one does.
                let ejected = async {
                    loop {
                        backend.ejected.notified().await;
                        if !backend.is_up() {
                            break;
                        }
                    }
                };
                tokio::select! {
                    () = ejected => {}
                    _ = health::until_unhealthy(&conn, check.as_ref()) => backend.eject(),
                    // Our own connection tells when it closes, before any call fails on it.
                    () = closed => {
                        debug!(key = %backend.key, "connection closed");
                        backend.eject();
                    }
                }
                // A connection that stayed up for a while resets the probe backoff.
                if connected.elapsed() >= Duration::from_secs(10) {
                    retry.reset();
                }
            }
            Ok(_) => {
                ever_connected = true;
                debug!(key = %backend.key, "endpoint is not serving");
                backend.set_ejected();
            }
            Err(error) => {
                debug!(key = %backend.key, error = %crate::error::Chain(&*error), "connect failed");
                backend.set_ejected();
            }
        }
        let delay = match ever_connected {
            true => retry.next_delay(),
            false => stale.next_delay(),
        };
        tokio::time::sleep(delay).await;
    }
}

async fn healthy(conn: &Conn, check: Option<&HealthCheck>) -> bool {
    match check {
        Some(check) => health::passes(conn, check).await,
        None => true,
    }
}

/// The longest wait between probes of an endpoint that has never been reached.
const NEVER_CONNECTED_MAX: Duration = Duration::from_secs(60);

/// How far one sample can raise the latency estimate.
const PEAK_STEP: f64 = 4.0;

/// The weight of a new sample.
const SMOOTHING: f64 = 0.3;

/// An exponentially weighted moving average of latency, in seconds. Each sample moves it by
/// [`SMOOTHING`], and counts for at most [`PEAK_STEP`] times the estimate, so one outlier
/// cannot bench a backend while a lasting slowdown shows within a few calls. The estimate
/// decays toward zero while no sample arrives, so a backend that was avoided is tried again.
#[derive(Debug)]
pub(crate) struct Ewma {
    value: f64,
    stamp: Instant,
    decay: f64,
}

impl Ewma {
    pub(crate) fn new(decay: Duration) -> Self {
        Ewma {
            value: 0.0,
            stamp: Instant::now(),
            decay: decay.as_secs_f64().max(1e-3),
        }
    }

    pub(crate) fn get(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        self.value * (-elapsed / self.decay).exp()
    }

    /// Adds a sample, bounded by [`PEAK_STEP`] times the larger of this estimate and
    /// `reference` (when there is one); returns the estimate before the sample.
    pub(crate) fn observe(&mut self, sample: Duration, now: Instant, reference: f64) -> f64 {
        let current = self.get(now);
        let bound = current.max(reference) * PEAK_STEP;
        let mut sample = sample.as_secs_f64();
        if bound > 0.0 {
            sample = sample.min(bound);
        }
        self.value = if current > 0.0 {
            current + SMOOTHING * (sample - current)
        } else {
            sample
        };
        self.stamp = now;
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_follows_samples_bounds_outliers_and_decays() {
        let start = Instant::now();
        let mut e = Ewma::new(Duration::from_secs(1));
        e.observe(Duration::from_millis(10), start, 0.0);
        assert!(
            (e.get(start) - 0.010).abs() < 1e-9,
            "the first sample sets it"
        );
        e.observe(Duration::from_secs(5), start, 0.0);
        let after_outlier = e.get(start);
        assert!(
            after_outlier < 0.020,
            "one outlier moves it little: {after_outlier}"
        );
        for _ in 0..5 {
            e.observe(Duration::from_millis(100), start, 0.0);
        }
        assert!(
            e.get(start) > 0.040,
            "a lasting slowdown shows within a few calls"
        );
        let later = start + Duration::from_secs(3);
        assert!(e.get(later) < e.get(start) * 0.06, "decays while idle");
    }

    #[test]
    fn a_first_sample_is_bounded_by_the_reference() {
        let start = Instant::now();
        let mut e = Ewma::new(Duration::from_secs(1));
        e.observe(Duration::from_millis(40), start, 0.001);
        assert!((e.get(start) - 0.004).abs() < 1e-9, "{}", e.get(start));
    }

    #[test]
    fn states_round_trip() {
        for s in [
            EndpointState::Connecting,
            EndpointState::Up,
            EndpointState::Ejected,
            EndpointState::Idle,
        ] {
            let n = match s {
                EndpointState::Connecting => CONNECTING,
                EndpointState::Up => UP,
                EndpointState::Ejected => EJECTED,
                EndpointState::Idle => IDLE,
            };
            assert_eq!(EndpointState::from_u8(n), s);
        }
    }
}
