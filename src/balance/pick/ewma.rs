//! The latency estimate the pick compares.

use std::time::Duration;

use tokio::time::Instant;

/// How far one sample can raise the latency estimate.
pub(crate) const PEAK_STEP: f64 = 4.0;

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
}
