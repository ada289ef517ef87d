//! Slow start: the share of an endpoint that has just come into rotation ramps up over a
//! window, after Envoy's slow start mode.

use std::time::Duration;

use tokio::time::Instant;

/// Ramps up the share of calls of an endpoint that has just come into rotation, so a
/// server with cold caches, connection pools or JIT is not handed its full share at once.
///
/// Follows Envoy's slow start mode (`slow_start_config` of the round robin and least
/// request balancers): for `t` since the endpoint came into rotation, its weight is
/// multiplied by
///
/// ```text
/// factor(t) = max(min_weight_percent / 100, (t / window) ^ (1 / aggression))   while t < window
/// factor(t) = 1                                                                  from then on
/// ```
///
/// One deviation: Envoy counts `t` as at least one second, which would flatten windows
/// of a few seconds; here `t` is exact, and `min_weight_percent` alone bounds the start.
///
/// Set it with [`Balancer::slow_start`](crate::Balancer::slow_start); the factor of each
/// endpoint shows in [`EndpointInfo::slow_start`](crate::EndpointInfo::slow_start).
///
/// Off by default, as in Envoy and every gRPC peer: it takes share away from a server
/// that is ready at once, which is the common case, and it only matters when endpoints
/// join a set that is already serving (scale-out, a restart, a readmission); a set whose
/// endpoints all start together gets equal factors and is unchanged.
///
/// ```
/// # use std::time::Duration;
/// # use tonic_etcd::SlowStart;
/// let ramp = SlowStart::new(Duration::from_secs(30)) // window: 30 s
///     .aggression(1.0)                               // linear ramp (the default)
///     .min_weight_percent(10.0);                     // start at 10 % of the weight (the default)
/// # drop(ramp);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct SlowStart {
    window: Duration,
    aggression: f64,
    min_weight: f64,
}

/// Envoy's default `aggression`: a linear ramp.
const DEFAULT_AGGRESSION: f64 = 1.0;

/// Envoy's default `min_weight_percent`.
const DEFAULT_MIN_WEIGHT_PERCENT: f64 = 10.0;

/// The lowest `min_weight_percent`: an endpoint with no weight would get no call, so it
/// would never warm up.
const LOWEST_MIN_WEIGHT_PERCENT: f64 = 1.0;

impl SlowStart {
    /// Ramps over `window`, linearly from 10 % of the weight. A zero window turns the ramp
    /// off (every factor is 1).
    pub fn new(window: Duration) -> Self {
        SlowStart {
            window,
            aggression: DEFAULT_AGGRESSION,
            min_weight: DEFAULT_MIN_WEIGHT_PERCENT / 100.0,
        }
    }

    /// How the ramp bends: the exponent is `1 / aggression`, so above 1 the weight rises
    /// fast at first and then slowly, below 1 slowly at first. Default: 1.0, a straight
    /// line (Envoy's default). A value that is not finite and above 0 is taken as 1.
    pub fn aggression(mut self, aggression: f64) -> Self {
        self.aggression = if aggression.is_finite() && aggression > 0.0 {
            aggression
        } else {
            DEFAULT_AGGRESSION
        };
        self
    }

    /// The share of its weight an endpoint has at least while it ramps, in percent.
    /// Default: 10 (Envoy's default). Taken into 1 to 100: an endpoint with no weight would
    /// get no call, and so would never warm up.
    pub fn min_weight_percent(mut self, percent: f64) -> Self {
        let percent = if percent.is_nan() {
            DEFAULT_MIN_WEIGHT_PERCENT
        } else {
            percent.clamp(LOWEST_MIN_WEIGHT_PERCENT, 100.0)
        };
        self.min_weight = percent / 100.0;
        self
    }

    /// The length of the ramp.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The factor, in `[min_weight_percent / 100, 1]`, to multiply into the weight of an
    /// endpoint that came into rotation at `since` (it connected, or was readmitted after
    /// an ejection). An instant after `now` counts as `now`.
    pub(crate) fn factor(&self, since: Instant, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= self.window {
            return 1.0;
        }
        let time = elapsed.as_secs_f64() / self.window.as_secs_f64();
        time.powf(self.aggression.recip())
            .clamp(self.min_weight, 1.0)
    }

    /// When the ramp of an endpoint that came into rotation at `since` ends: from then on
    /// its factor is 1.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn ends(&self, since: Instant) -> Instant {
        since + self.window
    }
}

/// The slow-start factor of an endpoint under an optional configuration: 1 when slow
/// start is off.
pub(crate) fn factor(slow_start: Option<&SlowStart>, since: Instant, now: Instant) -> f64 {
    slow_start.map_or(1.0, |s| s.factor(since, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn ramps_linearly_from_the_minimum_to_one() {
        let start = Instant::now();
        let ramp = SlowStart::new(secs(10.0));
        assert!(close(ramp.factor(start, start), 0.10), "starts at 10 %");
        assert!(close(ramp.factor(start, start + secs(0.5)), 0.10));
        assert!(close(ramp.factor(start, start + secs(2.5)), 0.25));
        assert!(close(ramp.factor(start, start + secs(7.5)), 0.75));
        assert!(close(ramp.factor(start, start + secs(10.0)), 1.0));
        assert!(close(ramp.factor(start, start + secs(100.0)), 1.0));
        assert_eq!(ramp.ends(start), start + ramp.window());
    }

    #[test]
    fn never_falls_as_time_passes() {
        let start = Instant::now();
        for aggression in [0.5, 1.0, 2.0, 4.0] {
            let ramp = SlowStart::new(secs(3.0)).aggression(aggression);
            let mut last = 0.0;
            for step in 0..=40 {
                let f = ramp.factor(start, start + secs(step as f64 * 0.1));
                assert!(
                    f >= last && f > 0.0 && f <= 1.0,
                    "{aggression}: {f} after {last}"
                );
                last = f;
            }
            assert!(close(last, 1.0));
        }
    }

    #[test]
    fn aggression_bends_the_ramp() {
        let start = Instant::now();
        let at = start + secs(2.5);
        let ramp = SlowStart::new(secs(10.0));
        // (1/4)^(1/2) = 1/2: a faster start; (1/4)^2 = 1/16, held up by the 10 % floor.
        assert!(close(ramp.aggression(2.0).factor(start, at), 0.5));
        assert!(close(ramp.aggression(0.5).factor(start, at), 0.10));
        let low_floor = ramp.aggression(0.5).min_weight_percent(1.0);
        assert!(close(low_floor.factor(start, at), 0.0625));
    }

    #[test]
    fn bad_settings_fall_back_to_safe_values() {
        let start = Instant::now();
        let ramp = SlowStart::new(secs(10.0))
            .aggression(0.0)
            .min_weight_percent(0.0);
        assert!(
            close(ramp.factor(start, start), 0.01),
            "weight never reaches 0"
        );
        assert!(close(ramp.factor(start, start + secs(5.0)), 0.5), "linear");
        let ramp = SlowStart::new(secs(10.0))
            .aggression(f64::NAN)
            .min_weight_percent(250.0);
        assert!(close(ramp.factor(start, start), 1.0), "100 % at most");
    }

    #[test]
    fn zero_window_or_no_config_means_full_weight() {
        let start = Instant::now();
        assert!(close(
            SlowStart::new(Duration::ZERO).factor(start, start),
            1.0
        ));
        assert!(close(factor(None, start, start), 1.0));
        let ramp = SlowStart::new(secs(4.0));
        assert!(close(factor(Some(&ramp), start, start + secs(2.0)), 0.5));
        // A start in the future (a clock read late) counts as now.
        assert!(close(ramp.factor(start + secs(1.0), start), 0.10));
    }
}
