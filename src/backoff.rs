//! Jittered, capped exponential backoff.

use std::time::Duration;

/// How long to wait between retries of a failing etcd operation.
///
/// Delays grow exponentially from [`initial`](Backoff::initial) up to
/// [`max`](Backoff::max), and each one is drawn at random from its upper half ("equal
/// jitter"), so that many clients do not retry in step. Discovery and the registrar reset the
/// sequence once an operation has been healthy again for a while.
///
/// ```
/// use std::time::Duration;
/// use tonic_etcd::Backoff;
///
/// let backoff = Backoff::default()
///     .initial(Duration::from_millis(50))
///     .max(Duration::from_secs(5));
/// # let _ = backoff;
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// The delay before the first retry, before jitter. Default: 100 ms.
    pub fn initial(mut self, initial: Duration) -> Self {
        self.initial = initial;
        self
    }

    /// The largest delay, before jitter. Default: 10 s.
    pub fn max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// The factor each delay grows by. Values below 1 are taken as 1. Default: 2.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            2.0
        };
        self
    }

    /// The un-jittered delay before retry number `attempt` (1-based).
    pub(crate) fn base_delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        let max = self.max.max(self.initial);
        if secs.is_finite() && secs < max.as_secs_f64() {
            Duration::from_secs_f64(secs)
        } else {
            max
        }
    }

    /// The delay before retry number `attempt`, drawn from `[base/2, base]`.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        let half = base / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// The retry count of one failing operation, and what it has waited so far.
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    policy: Backoff,
    attempt: u32,
    /// The current run of failures, for the logs.
    outage: Outage,
}

impl Retry {
    pub(crate) fn new(policy: Backoff) -> Self {
        Retry {
            policy,
            attempt: 0,
            outage: Outage::default(),
        }
    }

    /// Whether a failure now should be logged at WARN; see [`Outage::failed`].
    pub(crate) fn warn_now(&mut self) -> bool {
        self.outage.failed(tokio::time::Instant::now())
    }

    /// How long the failures that a success now ends lasted, if any: see
    /// [`Outage::succeeded`].
    pub(crate) fn recovered_now(&mut self) -> Option<Duration> {
        self.outage.succeeded(tokio::time::Instant::now())
    }

    /// Counts one more failure and returns how long to wait before the next try.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.policy.delay(self.attempt)
    }

    /// The number of failures since the last reset.
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Forgets past failures after a healthy period.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// How often a failure of an outage that goes on is logged at WARN again.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// One run of failures of an operation, for its logs: the first failure is worth a WARN,
/// then one every [`WARN_EVERY`] while it lasts; its end is worth an INFO.
#[derive(Debug, Default, Clone)]
pub(crate) struct Outage {
    /// When the current run of failures began, if one is under way.
    since: Option<tokio::time::Instant>,
    last_warned: Option<tokio::time::Instant>,
}

impl Outage {
    /// Counts a failure at `now`; returns whether to log it at WARN (else at DEBUG).
    pub(crate) fn failed(&mut self, now: tokio::time::Instant) -> bool {
        self.since.get_or_insert(now);
        let due = self
            .last_warned
            .is_none_or(|at| now.saturating_duration_since(at) >= WARN_EVERY);
        if due {
            self.last_warned = Some(now);
        }
        due
    }

    /// Counts a success at `now`; returns how long the failures lasted, if this ends a run
    /// of them (log it at INFO).
    pub(crate) fn succeeded(&mut self, now: tokio::time::Instant) -> Option<Duration> {
        self.last_warned = None;
        self.since
            .take()
            .map(|since| now.saturating_duration_since(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_warns_first_then_every_30_s_and_reports_its_end() {
        let t0 = tokio::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut outage = Outage::default();
        assert_eq!(
            outage.succeeded(at(0)),
            None,
            "no outage, nothing to report"
        );
        assert!(outage.failed(at(1)));
        assert!(!outage.failed(at(2)));
        assert!(!outage.failed(at(30)));
        assert!(outage.failed(at(31)));
        assert_eq!(outage.succeeded(at(41)), Some(Duration::from_secs(40)));
        assert!(outage.failed(at(42)), "a new outage warns at once");
    }

    #[test]
    fn base_delay_grows_then_caps() {
        let b = Backoff::default()
            .initial(Duration::from_millis(100))
            .max(Duration::from_secs(1));
        assert_eq!(b.base_delay(1), Duration::from_millis(100));
        assert_eq!(b.base_delay(2), Duration::from_millis(200));
        assert_eq!(b.base_delay(4), Duration::from_millis(800));
        assert_eq!(b.base_delay(5), Duration::from_secs(1));
        assert_eq!(b.base_delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_in_upper_half() {
        let b = Backoff::default();
        for attempt in 1..20 {
            let base = b.base_delay(attempt);
            for _ in 0..50 {
                let d = b.delay(attempt);
                assert!(
                    d >= base / 2 && d <= base,
                    "{d:?} outside [{:?}, {base:?}]",
                    base / 2
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let b = Backoff::default().initial(Duration::from_secs(1));
        let delays: std::collections::BTreeSet<_> = (0..100).map(|_| b.delay(1)).collect();
        assert!(delays.len() > 50, "only {} distinct delays", delays.len());
    }

    #[test]
    fn bad_multiplier_is_tamed() {
        let b = Backoff::default().multiplier(f64::NAN);
        assert_eq!(b.base_delay(2), Duration::from_millis(200));
        let b = Backoff::default().multiplier(0.1);
        assert_eq!(b.base_delay(10), Duration::from_millis(100));
    }

    #[test]
    fn retry_counts_and_resets() {
        let mut r = Retry::new(Backoff::default());
        r.next_delay();
        r.next_delay();
        assert_eq!(r.attempt(), 2);
        r.reset();
        assert_eq!(r.attempt(), 0);
    }
}
