//! Power of two choices: the pure part of picking an endpoint, and the latency estimate
//! the pick compares.

use std::time::Duration;

use tokio::time::Instant;

/// Draws before giving up on random sampling and scanning for live endpoints.
const DRAWS: usize = 8;

/// How much costlier one candidate must be before latency decides: below this, latencies
/// are noise, and calls in flight decide, then the draw.
const LATENCY_BAND: f64 = 2.0;

/// How many times the calls in flight of the other candidate a candidate faster by more
/// than [`LATENCY_BAND`] may carry, and still win on latency alone.
const IN_FLIGHT_BAND: f64 = 16.0;

/// How much healthier one candidate must be (the ratio of their success-rate factors)
/// before health decides the pair.
const HEALTH_BAND: f64 = 2.0;

/// What a candidate costs: its calls in flight, its recent latency, and the factor of its
/// recent success rate (1 when it fails nothing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Load {
    pub(crate) in_flight: usize,
    pub(crate) latency: f64,
    pub(crate) health: f64,
}

impl Load {
    fn cost(self) -> f64 {
        (self.in_flight as f64 + 1.0) * self.latency.max(1e-6)
    }

    /// Whether `other` should win over `self`.
    fn loses_to(self, other: Load) -> bool {
        // Health first: an endpoint that fails fast looks like the fastest one, so a
        // clearly healthier candidate wins whatever the latencies, within the same bound
        // on calls in flight.
        let (busy, their_busy) = (self.in_flight as f64 + 1.0, other.in_flight as f64 + 1.0);
        if other.health > self.health * HEALTH_BAND && their_busy <= IN_FLIGHT_BAND * busy {
            return true;
        }
        if self.health > other.health * HEALTH_BAND && busy <= IN_FLIGHT_BAND * their_busy {
            return false;
        }
        // Then latency alone: a server that answers calls concurrently is no slower for
        // having calls in flight, so in-flight x latency overrates a busy fast server against
        // an idle slow one. Calls in flight still bound it: a server whose calls never end
        // keeps a low latency estimate, but not a low count.
        let (mine, theirs) = (self.latency.max(1e-6), other.latency.max(1e-6));
        if theirs * LATENCY_BAND < mine && their_busy <= IN_FLIGHT_BAND * busy {
            return true;
        }
        if mine * LATENCY_BAND < theirs && busy <= IN_FLIGHT_BAND * their_busy {
            return false;
        }
        let (mine, theirs) = (self.cost(), other.cost());
        if theirs * LATENCY_BAND < mine {
            return true;
        }
        if mine * LATENCY_BAND < theirs {
            return false;
        }
        other.in_flight < self.in_flight
    }
}

/// A weighted set to sample from: prefix sums of the weights, so a draw is a binary search.
#[derive(Debug, Default, Clone)]
pub(crate) struct Weighted {
    /// The indexes of the members, in the backend list.
    members: Vec<usize>,
    /// `cumulative[i]` is the sum of the weights of `members[..=i]`.
    cumulative: Vec<u64>,
}

impl Weighted {
    pub(crate) fn new(members: impl IntoIterator<Item = (usize, u32)>) -> Self {
        let mut total = 0u64;
        let (members, cumulative) = members
            .into_iter()
            .map(|(index, weight)| {
                total += u64::from(weight.max(1));
                (index, total)
            })
            .unzip();
        Weighted {
            members,
            cumulative,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// One member, drawn with probability proportional to its weight.
    fn draw(&self, rng: &mut fastrand::Rng) -> Option<usize> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let point = rng.u64(0..total);
        let slot = self.cumulative.partition_point(|&c| c <= point);
        self.members.get(slot).copied()
    }

    /// Picks by power of two choices among the members that are available: two distinct
    /// members drawn by weight, each draw standing with the member's `chance` (`None`:
    /// not available; `Some(c)`: its weight scaled by `c`, in `(0, 1]`); a clearly
    /// healthier, then lower cost wins, then fewer calls in flight, then the first drawn.
    /// Falls back to a uniform scan of the available members when draws keep failing.
    pub(crate) fn pick(
        &self,
        rng: &mut fastrand::Rng,
        chance: impl Fn(usize) -> Option<f64>,
        load: impl Fn(usize) -> Load,
    ) -> Option<usize> {
        let first = self
            .draw_available(rng, &chance, None)
            .or_else(|| self.scan(rng, &chance))?;
        let second = self.draw_available(rng, &chance, Some(first));
        Some(match second {
            Some(second) if load(first).loses_to(load(second)) => second,
            _ => first,
        })
    }

    /// A member drawn by weight whose draw stands, other than `except`, in [`DRAWS`]
    /// draws at most.
    fn draw_available(
        &self,
        rng: &mut fastrand::Rng,
        chance: &impl Fn(usize) -> Option<f64>,
        except: Option<usize>,
    ) -> Option<usize> {
        for _ in 0..DRAWS {
            let index = self.draw(rng)?;
            if Some(index) == except {
                continue;
            }
            match chance(index) {
                Some(c) if c >= 1.0 || rng.f64() < c => return Some(index),
                _ => {}
            }
        }
        None
    }

    /// A uniformly random member that is available, by a full scan.
    fn scan(
        &self,
        rng: &mut fastrand::Rng,
        chance: &impl Fn(usize) -> Option<f64>,
    ) -> Option<usize> {
        let live: Vec<usize> = self
            .members
            .iter()
            .copied()
            .filter(|&i| chance(i).is_some())
            .collect();
        if live.is_empty() {
            return None;
        }
        Some(live[rng.usize(0..live.len())])
    }
}

/// How far one sample can raise the latency estimate.
pub(super) const PEAK_STEP: f64 = 4.0;

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

    fn load(latency: f64) -> Load {
        Load {
            in_flight: 0,
            latency,
            health: 1.0,
        }
    }

    fn up_if(up: impl Fn(usize) -> bool) -> impl Fn(usize) -> Option<f64> {
        move |i| up(i).then_some(1.0)
    }

    fn counts(
        set: &Weighted,
        n: usize,
        up: impl Fn(usize) -> bool,
        cost: impl Fn(usize) -> Load,
    ) -> Vec<usize> {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = vec![0; n];
        for _ in 0..10_000 {
            if let Some(i) = set.pick(&mut rng, up_if(&up), &cost) {
                counts[i] += 1;
            }
        }
        counts
    }

    #[test]
    fn empty_or_all_down_picks_nothing() {
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(
            Weighted::default().pick(&mut rng, |_| Some(1.0), |_| load(0.0)),
            None
        );
        let set = Weighted::new([(0, 1), (1, 1)]);
        assert_eq!(set.pick(&mut rng, |_| None, |_| load(0.0)), None);
    }

    #[test]
    fn never_picks_a_member_that_is_down() {
        let set = Weighted::new((0..10).map(|i| (i, 1)));
        let c = counts(&set, 10, |i| i == 3 || i == 7, |_| load(0.0));
        assert_eq!(c.iter().sum::<usize>(), 10_000);
        assert!(c[3] > 0 && c[7] > 0);
        assert_eq!(c[3] + c[7], 10_000);
    }

    #[test]
    fn lower_cost_wins_the_pair() {
        let set = Weighted::new([(0, 1), (1, 1), (2, 1)]);
        let c = counts(&set, 3, |_| true, |i| load(if i == 2 { 10.0 } else { 1.0 }));
        // Member 2 wins no pair it is in, and is picked alone never: it gets no call.
        assert_eq!(c[2], 0, "{c:?}");
    }

    #[test]
    fn close_latencies_are_noise_and_spread_evenly() {
        let set = Weighted::new([(0, 1), (1, 1)]);
        let c = counts(
            &set,
            2,
            |_| true,
            |i| load(if i == 0 { 0.0010 } else { 0.0015 }),
        );
        assert!(c[0] > 4_000 && c[1] > 4_000, "{c:?}");
    }

    #[test]
    fn fewer_calls_in_flight_win_among_close_latencies() {
        let set = Weighted::new([(0, 1), (1, 1)]);
        let busy = |i| Load {
            in_flight: if i == 0 { 5 } else { 4 },
            latency: 0.001,
            health: 1.0,
        };
        let c = counts(&set, 2, |_| true, busy);
        // Only when eight draws in a row find no second candidate (0.4%) does 0 get a call.
        assert!(c[0] < 100, "{c:?}");
    }

    #[test]
    fn a_failing_member_loses_even_when_fastest() {
        let set = Weighted::new([(0, 1), (1, 1), (2, 1)]);
        let failing = |i| Load {
            health: if i == 0 { 0.05 } else { 1.0 },
            ..load(if i == 0 { 0.0001 } else { 0.001 })
        };
        let c = counts(&set, 3, |_| true, failing);
        assert_eq!(c[0], 0, "{c:?}");
    }

    #[test]
    fn the_chance_scales_the_share() {
        let set = Weighted::new([(0, 1), (1, 1)]);
        let mut rng = fastrand::Rng::with_seed(9);
        let chance = |i| Some(if i == 0 { 0.25 } else { 1.0 });
        let mut first = 0;
        for _ in 0..10_000 {
            // Equal loads: the first drawn wins, so the share is the draw's.
            if set.pick(&mut rng, chance, |_| load(0.001)) == Some(0) {
                first += 1;
            }
        }
        // Draw odds 0.25 : 1, so about a fifth.
        assert!((1_500..2_500).contains(&first), "{first}");
    }

    #[test]
    fn weights_shift_the_share() {
        let set = Weighted::new([(0, 1), (1, 3)]);
        let mut rng = fastrand::Rng::with_seed(3);
        let mut heavy = 0;
        for _ in 0..10_000 {
            if set.draw(&mut rng) == Some(1) {
                heavy += 1;
            }
        }
        assert!((7_000..8_000).contains(&heavy), "{heavy}");
    }

    #[test]
    fn zero_weights_count_as_one() {
        let set = Weighted::new([(0, 0), (1, 0)]);
        let c = counts(&set, 2, |_| true, |_| load(0.0));
        assert!(c[0] > 3_000 && c[1] > 3_000, "{c:?}");
    }

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
