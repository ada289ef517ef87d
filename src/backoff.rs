//! Jittered, capped exponential backoff, and the one retry path that uses it.

mod retry;

use std::time::Duration;

pub(crate) use retry::{Failure, Retry, within};

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
    denied_max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            denied_max: Duration::from_secs(30),
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

    /// The largest delay, before jitter, while etcd denies a permission that discovery or
    /// the registrar has already used with the same credentials: a role revoked for a while
    /// (etcd's RBAC). Such retries start at [`max`](Backoff::max) and grow to this, so that
    /// discovery or the registration comes back on its own once the role is granted again.
    /// A permission denied the first time is an error at once. Default: 30 s.
    pub fn denied_max(mut self, max: Duration) -> Self {
        self.denied_max = max;
        self
    }

    /// The backoff while a permission used before is denied: from [`max`](Backoff::max)
    /// to [`denied_max`](Backoff::denied_max).
    pub(crate) fn denied(&self) -> Backoff {
        Backoff {
            initial: self.max,
            max: self.denied_max,
            ..*self
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_denied_permission_backs_off_from_max_to_denied_max() {
        let b = Backoff::default()
            .max(Duration::from_secs(10))
            .denied_max(Duration::from_secs(30))
            .denied();
        assert_eq!(b.base_delay(1), Duration::from_secs(10));
        assert_eq!(b.base_delay(2), Duration::from_secs(20));
        assert_eq!(b.base_delay(3), Duration::from_secs(30));
        assert_eq!(b.base_delay(9), Duration::from_secs(30));
    }

    #[test]
    fn bad_multiplier_is_tamed() {
        let b = Backoff::default().multiplier(f64::NAN);
        assert_eq!(b.base_delay(2), Duration::from_millis(200));
        let b = Backoff::default().multiplier(0.1);
        assert_eq!(b.base_delay(10), Duration::from_millis(100));
    }
}
