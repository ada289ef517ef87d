//! What outlier detection knows of one endpoint: its call counts, failures in a row,
//! recent success rate, and ejection.

use std::time::Duration;

use tokio::time::Instant;

use super::config::{Outcome, OutlierDetection};
use super::success::SuccessEwma;
use crate::balance::longest::later;

/// A success rate from which an endpoint counts as healthy, for the panic threshold.
pub(super) const HEALTHY_SUCCESS_RATE: f64 = 0.5;

/// Why an endpoint is out of rotation, in [`EndpointInfo`](crate::EndpointInfo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EjectionReason {
    /// A transport failure (refused, reset, GOAWAY, a failed health check): out until a
    /// probe connects again.
    Connection,
    /// It failed [`consecutive_failures`](OutlierDetection::consecutive_failures) calls
    /// in a row (outlier detection).
    ConsecutiveFailures,
    /// Its success rate in an interval was far below the others' (outlier detection).
    SuccessRate,
    /// Its failure share in an interval reached the threshold (outlier detection).
    FailurePercentage,
}

/// One ejection: why, and from when to when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ejection {
    /// Why it was ejected.
    pub(crate) reason: EjectionReason,
    /// When it was ejected.
    pub(crate) since: Instant,
    /// When it comes back into rotation: `since` plus the base ejection time times the
    /// ejection multiplier, capped at the max ejection time.
    pub(crate) until: Instant,
}

/// Calls counted in one interval (A50's call counter bucket).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Calls that counted as successes.
    pub(crate) successes: u64,
    /// Calls that counted as failures.
    pub(crate) failures: u64,
}

impl Counts {
    /// The calls that counted.
    pub(crate) fn total(&self) -> u64 {
        self.successes + self.failures
    }

    /// The share of successes, in `[0, 1]`; 1 without calls.
    pub(crate) fn success_rate(&self) -> f64 {
        match self.total() {
            0 => 1.0,
            total => self.successes as f64 / total as f64,
        }
    }
}

/// Outlier detection's state of one endpoint. The shell keeps one per endpoint (behind
/// the endpoint's own lock, so calls on different endpoints do not contend), records each
/// finished call, and reads the ejection and the pick factor; set-wide decisions are in
/// the `sweep` module. An ejection ends by itself at its `until`: there is no unejection
/// step to run, only [`OutlierState::is_ejected`] to ask.
#[derive(Debug, Clone)]
pub(crate) struct OutlierState {
    /// The calls of the current interval.
    current: Counts,
    /// The calls of the interval before, which the sweep judges.
    last: Counts,
    failures_in_a_row: u32,
    success: SuccessEwma,
    /// The latest ejection, past or current.
    ejection: Option<Ejection>,
    /// A50's ejection time multiplier: one more per ejection, one less per interval
    /// spent in rotation.
    multiplier: u32,
    times_ejected: u64,
}

impl OutlierState {
    /// A healthy endpoint that just joined.
    pub(crate) fn new(config: &OutlierDetection, now: Instant) -> Self {
        OutlierState {
            current: Counts::default(),
            last: Counts::default(),
            failures_in_a_row: 0,
            success: SuccessEwma::new(config.success_decay, now),
            ejection: None,
            multiplier: 0,
            times_ejected: 0,
        }
    }

    /// Records a finished call. Returns `true` when this call brings the failures in a
    /// row to [`consecutive_failures`](OutlierDetection::consecutive_failures), or to a
    /// multiple of it, on an endpoint in rotation: the shell then asks
    /// `sweep::try_eject`, which locks the set, whether it allows the ejection. Asking at
    /// the limit alone is Envoy's way; asking again each `consecutive_failures` more
    /// failures lets an ejection refused by the set's limits come later, while a failing
    /// endpoint locks the set once per that many calls, not on each.
    /// [`Outcome::Ignored`] changes nothing.
    pub(crate) fn record(
        &mut self,
        outcome: Outcome,
        config: &OutlierDetection,
        now: Instant,
    ) -> bool {
        match outcome {
            Outcome::Ignored => false,
            Outcome::Success => {
                self.current.successes += 1;
                self.failures_in_a_row = 0;
                self.success.observe(true, now);
                false
            }
            Outcome::Failure => {
                self.current.failures += 1;
                self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
                self.success.observe(false, now);
                config
                    .consecutive_failures
                    .is_some_and(|limit| self.failures_in_a_row.is_multiple_of(limit))
                    && !self.is_ejected(now)
            }
        }
    }

    /// A new connection to the endpoint came up (a restarted server, say): what its calls
    /// said of the old one is forgotten (the failures in a row, the interval counts, the
    /// success rate), so it is judged afresh; the ejection multiplier stays, as A50 keeps
    /// it per address until it relaxes, and so does an ejection still running.
    pub(crate) fn came_up(&mut self, now: Instant) {
        self.current = Counts::default();
        self.last = Counts::default();
        self.failures_in_a_row = 0;
        self.success.reset(now);
    }

    /// Whether the endpoint is out of rotation at `now`.
    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        self.ejection.is_some_and(|e| now < e.until)
    }

    /// The current ejection, if the endpoint is out of rotation at `now`.
    pub(crate) fn ejection(&self, now: Instant) -> Option<Ejection> {
        self.ejection.filter(|e| now < e.until)
    }

    /// When the endpoint came back from its latest ejection, if it has: the start of a
    /// slow-start ramp.
    pub(crate) fn readmitted_at(&self, now: Instant) -> Option<Instant> {
        self.ejection.map(|e| e.until).filter(|&until| until <= now)
    }

    /// How many times the endpoint has been ejected since it joined.
    pub(crate) fn times_ejected(&self) -> u64 {
        self.times_ejected
    }

    /// The recent success rate, in `[0, 1]`, for `endpoints()`.
    pub(crate) fn success_rate(&self, now: Instant) -> f64 {
        self.success.success_rate(now)
    }

    /// The factor, in `(0, 1]`, to multiply into the endpoint's weight (or divide its
    /// load by) in the pick: about the success rate squared, at least
    /// `MIN_PICK_FACTOR`.
    pub(crate) fn pick_factor(&self, now: Instant) -> f64 {
        self.success.pick_factor(now)
    }

    /// The calls the last sweep closed, which it judged.
    pub(crate) fn last_interval(&self) -> Counts {
        self.last
    }

    /// In rotation, and succeeding at least half its recent calls.
    pub(super) fn is_healthy(&self, now: Instant) -> bool {
        !self.is_ejected(now) && self.success_rate(now) >= HEALTHY_SUCCESS_RATE
    }

    /// Ejects the endpoint from `now` (A50: one more to the multiplier, the ejection time
    /// from it); the failures in a row start again from 0.
    pub(super) fn eject(
        &mut self,
        reason: EjectionReason,
        config: &OutlierDetection,
        now: Instant,
    ) {
        self.multiplier = self.multiplier.saturating_add(1);
        self.times_ejected += 1;
        self.failures_in_a_row = 0;
        self.ejection = Some(Ejection {
            reason,
            since: now,
            until: later(now, config.ejection_time(self.multiplier)),
        });
    }

    /// Closes the current interval: its counts become the ones judged.
    pub(super) fn close_interval(&mut self) {
        self.last = std::mem::take(&mut self.current);
    }

    /// A50's last step of a sweep: an endpoint that spent the whole closed interval in
    /// rotation has one less to its multiplier. (A50 skips the endpoint its sweep
    /// readmits; here ejections end by themselves, so the interval since the end counts.)
    pub(super) fn relax_multiplier(&mut self, interval: Duration, now: Instant) {
        let in_rotation_since = self.ejection.map(|e| e.until);
        if in_rotation_since.is_none_or(|since| later(since, interval) <= now) {
            self.multiplier = self.multiplier.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_longest_ejection_and_interval_do_not_overflow() {
        let now = Instant::now();
        let config = OutlierDetection::default()
            .base_ejection_time(Duration::MAX)
            .max_ejection_time(Duration::MAX);
        let mut state = OutlierState::new(&config, now);
        state.eject(EjectionReason::ConsecutiveFailures, &config, now);
        assert!(state.is_ejected(now + secs(1_000_000)));
        state.relax_multiplier(Duration::MAX, now);
        assert_eq!(state.multiplier, 1, "not a whole interval in rotation");
    }

    #[test]
    fn the_fifth_failure_in_a_row_asks_for_an_ejection() {
        let now = Instant::now();
        let config = OutlierDetection::default();
        let mut state = OutlierState::new(&config, now);
        for _ in 0..4 {
            assert!(!state.record(Outcome::Failure, &config, now));
        }
        assert!(
            !state.record(Outcome::Success, &config, now),
            "a success resets the row"
        );
        for _ in 0..4 {
            assert!(!state.record(Outcome::Failure, &config, now));
            assert!(
                !state.record(Outcome::Ignored, &config, now),
                "ignored keeps the row"
            );
        }
        assert!(state.record(Outcome::Failure, &config, now));
        assert_eq!(
            state.current,
            Counts {
                successes: 1,
                failures: 9
            }
        );
    }

    #[test]
    fn an_ejection_ends_by_itself_and_the_next_lasts_longer() {
        let now = Instant::now();
        let config = OutlierDetection::default();
        let mut state = OutlierState::new(&config, now);
        state.eject(EjectionReason::ConsecutiveFailures, &config, now);
        assert!(state.is_ejected(now + secs(29)));
        assert!(!state.is_ejected(now + secs(30)));
        assert_eq!(state.readmitted_at(now + secs(29)), None);
        assert_eq!(state.readmitted_at(now + secs(31)), Some(now + secs(30)));
        let again = now + secs(31);
        state.eject(EjectionReason::SuccessRate, &config, again);
        let ejection = state.ejection(again).expect("ejected");
        assert_eq!(ejection.until, again + secs(60), "base × 2");
        assert_eq!(ejection.reason, EjectionReason::SuccessRate);
        assert_eq!(state.times_ejected(), 2);
    }

    #[test]
    fn a_readmitted_endpoint_starts_a_new_row_of_failures() {
        let now = Instant::now();
        let config = OutlierDetection::default();
        let mut state = OutlierState::new(&config, now);
        while !state.record(Outcome::Failure, &config, now) {}
        state.eject(EjectionReason::ConsecutiveFailures, &config, now);
        let back = now + secs(30);
        for n in 1..5 {
            assert!(
                !state.record(Outcome::Failure, &config, back),
                "failure {n}"
            );
        }
        assert!(state.record(Outcome::Failure, &config, back));
    }

    #[test]
    fn the_multiplier_relaxes_only_after_a_whole_interval_in_rotation() {
        let now = Instant::now();
        let config = OutlierDetection::default();
        let interval = config.sweep_interval();
        let mut state = OutlierState::new(&config, now);
        state.eject(EjectionReason::ConsecutiveFailures, &config, now);
        state.relax_multiplier(interval, now + secs(10));
        assert_eq!(state.multiplier, 1, "still ejected");
        state.relax_multiplier(interval, now + secs(35));
        assert_eq!(state.multiplier, 1, "back for 5 s only");
        state.relax_multiplier(interval, now + secs(40));
        assert_eq!(state.multiplier, 0);
        state.relax_multiplier(interval, now + secs(50));
        assert_eq!(state.multiplier, 0);
        let later = now + secs(60);
        state.eject(EjectionReason::ConsecutiveFailures, &config, later);
        assert_eq!(
            state.ejection(later).map(|e| e.until),
            Some(later + secs(30))
        );
    }

    #[test]
    fn no_ejection_is_asked_while_ejected_or_when_off() {
        let now = Instant::now();
        let config = OutlierDetection::default().consecutive_failures(2);
        let mut state = OutlierState::new(&config, now);
        state.eject(EjectionReason::SuccessRate, &config, now);
        for _ in 0..5 {
            assert!(
                !state.record(Outcome::Failure, &config, now),
                "calls still in flight"
            );
        }
        let off = OutlierDetection::default().consecutive_failures(0);
        let mut state = OutlierState::new(&off, now);
        assert!((0..50).all(|_| !state.record(Outcome::Failure, &off, now)));
    }

    #[test]
    fn health_and_the_pick_factor_follow_the_calls() {
        let now = Instant::now();
        let config = OutlierDetection::default().consecutive_failures(0);
        let mut state = OutlierState::new(&config, now);
        assert!(state.is_healthy(now) && state.pick_factor(now) == 1.0);
        for _ in 0..4 {
            state.record(Outcome::Failure, &config, now);
        }
        assert!(!state.is_healthy(now));
        assert!(state.pick_factor(now) < 0.2);
        state.close_interval();
        assert_eq!(
            state.last_interval(),
            Counts {
                successes: 0,
                failures: 4
            }
        );
        assert_eq!(state.last_interval().success_rate(), 0.0);
        assert_eq!(Counts::default().success_rate(), 1.0);
    }
}
