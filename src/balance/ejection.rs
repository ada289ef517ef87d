//! Carrying out outlier detection: records how each call ended on its endpoint, ejects
//! under the set's limits, and runs the periodic sweep. The decisions are in `outlier`;
//! this is the shell that locks the endpoints and logs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info};

use super::backend::Backend;
use super::outlier::{self, EjectionReason, Outcome, OutlierDetection};
use super::shared::Shared;
use super::standing::OutlierGuard;
use super::status_observer::Observed;

impl Shared {
    /// Counts a call on `backend` that ended as `observed` (outlier detection off:
    /// nothing).
    pub(super) fn observed(&self, backend: &Arc<Backend>, observed: Observed) {
        if let Some(config) = &self.config.outlier {
            self.record(backend, config.outcome(observed), config);
        }
    }

    /// Counts a call on `backend` that failed by transport once sent.
    pub(super) fn transport_failure(&self, backend: &Arc<Backend>) {
        if let Some(config) = &self.config.outlier {
            self.record(backend, Outcome::Failure, config);
        }
    }

    fn record(&self, backend: &Arc<Backend>, outcome: Outcome, config: &OutlierDetection) {
        let now = Instant::now();
        let ask = backend.standing().outlier.record(outcome, config, now);
        if ask {
            self.eject_by_outliers(backend, EjectionReason::ConsecutiveFailures, config, now);
        } else if (outcome == Outcome::Failure || self.panic.get()) && self.panic.due(now) {
            // Only failures can start a panic, and only calls during one end it: a healthy
            // channel writes no shared state here.
            let _set = self
                .outlier_set
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let members = self.in_rotation();
            let guards: Vec<OutlierGuard<'_>> =
                members.iter().map(|b| OutlierGuard(b.standing())).collect();
            self.panic.set(outlier::in_panic(&guards, config, now), now);
        }
    }

    /// Whether the set was in panic when last checked: most endpoints fail, so the pick
    /// spreads calls over every endpoint, ejected or not (Envoy's panic threshold).
    pub(super) fn in_panic(&self) -> bool {
        self.panic.get()
    }

    /// Ejects `backend` for `reason` if the set allows it (`outlier::try_eject`).
    fn eject_by_outliers(
        &self,
        backend: &Arc<Backend>,
        reason: EjectionReason,
        config: &OutlierDetection,
        now: Instant,
    ) {
        let _set = self
            .outlier_set
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let members = self.in_rotation();
        let Some(index) = members.iter().position(|b| Arc::ptr_eq(b, backend)) else {
            return;
        };
        let mut guards: Vec<OutlierGuard<'_>> =
            members.iter().map(|b| OutlierGuard(b.standing())).collect();
        let ejected = outlier::try_eject(&mut guards, index, reason, config, now);
        self.panic.set(outlier::in_panic(&guards, config, now), now);
        if ejected {
            let times = guards[index].times_ejected();
            drop(guards);
            log_ejection(backend, reason, times);
        }
    }

    /// The periodic step of outlier detection (`outlier::sweep`), with the ejections
    /// logged; called by the driver every `interval`.
    pub(super) fn sweep_outliers(&self, rng: &mut fastrand::Rng) {
        let Some(config) = &self.config.outlier else {
            return;
        };
        let now = Instant::now();
        let _set = self
            .outlier_set
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let members = self.in_rotation();
        let mut guards: Vec<OutlierGuard<'_>> =
            members.iter().map(|b| OutlierGuard(b.standing())).collect();
        let ejected = outlier::sweep(&mut guards, config, now, rng);
        let panic = outlier::in_panic(&guards, config, now);
        self.panic.set(panic, now);
        if panic {
            debug!(
                endpoints = guards.len(),
                "most endpoints fail: outlier detection ejects none, calls spread"
            );
        }
        let times: Vec<u64> = ejected
            .iter()
            .map(|&(i, _)| guards[i].times_ejected())
            .collect();
        drop(guards);
        for (&(index, reason), times) in ejected.iter().zip(times) {
            log_ejection(&members[index], reason, times);
        }
    }

    /// The connected endpoints that are up: outlier detection's set (its own ejections
    /// included).
    fn in_rotation(&self) -> Vec<Arc<Backend>> {
        let snapshot = self.snapshot();
        snapshot
            .backends
            .iter()
            .filter(|b| b.is_up())
            .cloned()
            .collect()
    }
}

/// Whether the set is in panic, checked at most every [`PANIC_CHECK`] as calls end.
#[derive(Debug)]
pub(super) struct Panic {
    panic: AtomicBool,
    checked: Mutex<Option<Instant>>,
}

/// How often the calls that end check whether the set is in panic.
const PANIC_CHECK: Duration = Duration::from_millis(100);

impl Panic {
    pub(super) fn new() -> Self {
        Panic {
            panic: AtomicBool::new(false),
            checked: Mutex::new(None),
        }
    }

    fn get(&self) -> bool {
        self.panic.load(Ordering::Relaxed)
    }

    /// Whether a check is due; if so, the next one is not before [`PANIC_CHECK`].
    fn due(&self, now: Instant) -> bool {
        let Ok(mut checked) = self.checked.try_lock() else {
            return false;
        };
        if checked.is_some_and(|at| now < at + PANIC_CHECK) {
            return false;
        }
        *checked = Some(now);
        true
    }

    fn set(&self, panic: bool, now: Instant) {
        self.panic.store(panic, Ordering::Relaxed);
        if let Ok(mut checked) = self.checked.try_lock() {
            *checked = Some(now);
        }
    }
}

fn log_ejection(backend: &Backend, reason: EjectionReason, times: u64) {
    info!(
        key = %backend.key,
        addr = %backend.instance.addr,
        ?reason,
        times,
        "endpoint ejected by outlier detection"
    );
    crate::metrics::ejection(backend.service(), metric_reason(reason));
}

/// The `reason` label of the ejection metric.
fn metric_reason(reason: EjectionReason) -> crate::metrics::Ejection {
    use crate::metrics::Ejection;
    match reason {
        EjectionReason::Connection => Ejection::Transport,
        EjectionReason::ConsecutiveFailures => Ejection::ConsecutiveFailures,
        EjectionReason::SuccessRate => Ejection::SuccessRate,
        EjectionReason::FailurePercentage => Ejection::FailurePercentage,
    }
}
