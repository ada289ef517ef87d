//! The recent success rate of an endpoint, as an exponentially weighted moving average:
//! the go-zero and Kratos way to take traffic off a failing endpoint before any ejection.

use std::time::Duration;

use tokio::time::Instant;

/// The weight of each new call in the average: after three failures in a row a healthy
/// endpoint's rate is about 0.5, after five about 0.33.
const SAMPLE_WEIGHT: f64 = 0.2;

/// The lowest pick factor: an endpoint that fails every call, and is not ejected (the
/// max ejection percent holds, or every endpoint fails), still gets a trickle of calls,
/// so that its recovery shows.
pub(crate) const MIN_PICK_FACTOR: f64 = 0.05;

/// The failure share of recent calls, decaying toward 0 (healthy) while no call ends, so
/// an endpoint that was avoided is tried again: the same shape as the latency estimate.
#[derive(Debug, Clone)]
pub(crate) struct SuccessEwma {
    /// The failure share at `stamp`, in `[0, 1]`.
    failure: f64,
    stamp: Instant,
    /// The time constant of the decay, in seconds.
    decay: f64,
}

impl SuccessEwma {
    /// A healthy endpoint (rate 1) whose failures are forgotten with time constant
    /// `decay`.
    pub(crate) fn new(decay: Duration, now: Instant) -> Self {
        SuccessEwma {
            failure: 0.0,
            stamp: now,
            decay: decay.as_secs_f64().max(1e-3),
        }
    }

    /// Forgets every call: healthy again from `now`, with the same decay.
    pub(crate) fn reset(&mut self, now: Instant) {
        self.failure = 0.0;
        self.stamp = now;
    }

    fn failure(&self, now: Instant) -> f64 {
        if self.failure == 0.0 {
            // A healthy endpoint's, on every call: no exponential to compute.
            return 0.0;
        }
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        self.failure * (-elapsed / self.decay).exp()
    }

    /// Adds a call that counts: `success` or not.
    pub(crate) fn observe(&mut self, success: bool, now: Instant) {
        let current = self.failure(now);
        let sample = if success { 0.0 } else { 1.0 };
        self.failure = (current + SAMPLE_WEIGHT * (sample - current)).clamp(0.0, 1.0);
        self.stamp = now.max(self.stamp);
    }

    /// The recent success rate, in `[0, 1]`.
    pub(crate) fn success_rate(&self, now: Instant) -> f64 {
        1.0 - self.failure(now)
    }

    /// The factor for the pick, in `[MIN_PICK_FACTOR, 1]`: the success rate squared, so
    /// an endpoint that fails half its calls gets about a quarter of its share (go-zero
    /// and Kratos use the rate itself; squared, a p2c pick that compares costs within a
    /// factor of 2 sees it at once).
    pub(crate) fn pick_factor(&self, now: Instant) -> f64 {
        let rate = self.success_rate(now);
        (rate * rate).max(MIN_PICK_FACTOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn failures_lower_the_rate_at_once_and_successes_restore_it() {
        let now = Instant::now();
        let mut e = SuccessEwma::new(secs(10.0), now);
        assert_eq!(e.success_rate(now), 1.0);
        assert_eq!(e.pick_factor(now), 1.0);
        e.observe(false, now);
        assert!((e.success_rate(now) - 0.8).abs() < 1e-9);
        for _ in 0..2 {
            e.observe(false, now);
        }
        assert!((e.success_rate(now) - 0.512).abs() < 1e-9);
        assert!(e.pick_factor(now) < 0.27);
        for _ in 0..20 {
            e.observe(true, now);
        }
        assert!(e.success_rate(now) > 0.99);
    }

    #[test]
    fn a_half_failing_endpoint_settles_near_a_quarter_of_its_share() {
        let now = Instant::now();
        let mut e = SuccessEwma::new(secs(10.0), now);
        let mut rng = fastrand::Rng::with_seed(4);
        let mut factors = 0.0;
        for i in 0..2000 {
            e.observe(rng.bool(), now);
            if i >= 1000 {
                factors += e.pick_factor(now);
            }
        }
        let mean = factors / 1000.0;
        assert!((0.2..0.35).contains(&mean), "{mean}");
    }

    #[test]
    fn never_drops_below_the_floor_and_forgives_with_time() {
        let now = Instant::now();
        let mut e = SuccessEwma::new(secs(10.0), now);
        for _ in 0..100 {
            e.observe(false, now);
        }
        assert!(e.success_rate(now) < 1e-6);
        assert_eq!(e.pick_factor(now), MIN_PICK_FACTOR);
        // One time constant forgives about 63 % of the failure share.
        let later = now + secs(10.0);
        assert!((e.success_rate(later) - (1.0 - (-1.0f64).exp())).abs() < 1e-6);
        assert!(e.success_rate(now + secs(60.0)) > 0.99);
    }
}
