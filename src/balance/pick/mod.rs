//! Power of two choices: the pure part of picking an endpoint, the latency estimate the
//! pick compares (`ewma`), and when a member left out is due a call (`stale`).

pub(super) mod ewma;
mod stale;
#[cfg(test)]
mod tests;

pub(crate) use ewma::Ewma;
pub(crate) use stale::LastPick;

/// Draws before giving up on random sampling and scanning for live endpoints.
const DRAWS: usize = 8;

/// How much costlier one candidate must be before latency decides: below this, latencies
/// are noise, and calls in flight decide, then the draw.
const LATENCY_BAND: f64 = 2.0;

/// How many times the calls in flight of the other candidate a candidate faster by more
/// than [`LATENCY_BAND`] may carry, and still win on latency alone.
const IN_FLIGHT_BAND: f64 = 16.0;

/// How many pairs a member due by time must lose, per draw of the set it takes to draw it
/// once (`total weight / its weight`), before the next pair it loses picks it: a member
/// of weight `w` in a set of total weight `W` naturally loses about `W / w` pairs between
/// two picks at equal loads, so a forced pick needs four times that many lost, and is at
/// most one pick in `4 W / w + 1` (one in 13 with three equal members).
pub(crate) const LOSSES_PER_SHARE: u64 = 4;

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

    /// Whether `self`, which lost the pair to `winner`, may still be sent a call to refresh
    /// its estimate when it is due ([`LastPick`]): not when it lost on health (a failing
    /// endpoint would fail the call), nor while it has more calls in flight than the
    /// winner (those calls will time it, and a server whose calls never end must not
    /// collect more).
    fn may_refresh(self, winner: Load) -> bool {
        self.health * HEALTH_BAND >= winner.health && self.in_flight <= winner.in_flight
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

    /// One slot, drawn with probability proportional to its member's weight.
    fn draw(&self, rng: &mut fastrand::Rng) -> Option<usize> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let point = rng.u64(0..total);
        let slot = self.cumulative.partition_point(|&c| c <= point);
        (slot < self.members.len()).then_some(slot)
    }

    /// How many pairs the member in `slot` must lose while due by time before it wins
    /// one: [`LOSSES_PER_SHARE`] times `total weight / its weight`, rounded up.
    fn losses_before_forced(&self, slot: usize) -> u64 {
        let below = slot.checked_sub(1).map_or(0, |s| self.cumulative[s]);
        let weight = (self.cumulative[slot] - below).max(1);
        LOSSES_PER_SHARE.saturating_mul(self.total().div_ceil(weight))
    }

    /// Picks by power of two choices among the members that are available: two distinct
    /// members drawn by weight, each draw standing with the member's `chance` (`None`:
    /// not available; `Some(c)`: its weight scaled by `c`, in `(0, 1]`); a clearly
    /// healthier, then lower cost wins, then fewer calls in flight, then the first drawn.
    /// Falls back to a uniform scan of the available members when draws keep failing.
    ///
    /// The loser of the pair wins it instead when `due(loser, losses)` says it is due
    /// (and claims it, see [`LastPick::claim_if_due`]: unpicked for a while, and since then
    /// `losses` pairs lost, see [`LOSSES_PER_SHARE`]), unless it lost on health or has
    /// more calls in flight: go-zero's `forcePick` bounded by traffic, so that an estimate
    /// raised by one slow sample is refreshed by a real call rather than only by its
    /// decay, and forced picks stay a bounded share at any call rate.
    pub(crate) fn pick(
        &self,
        rng: &mut fastrand::Rng,
        chance: impl Fn(usize) -> Option<f64>,
        load: impl Fn(usize) -> Load,
        due: impl Fn(usize, u64) -> bool,
    ) -> Option<usize> {
        let first = self
            .draw_available(rng, &chance, None)
            .or_else(|| self.scan(rng, &chance))?;
        let Some(second) = self.draw_available(rng, &chance, Some(first)) else {
            return Some(self.members[first]);
        };
        let (a, b) = (load(self.members[first]), load(self.members[second]));
        let (winner, loser, won, lost) = match a.loses_to(b) {
            true => (second, first, b, a),
            false => (first, second, a, b),
        };
        let refresh =
            lost.may_refresh(won) && due(self.members[loser], self.losses_before_forced(loser));
        Some(self.members[if refresh { loser } else { winner }])
    }

    /// A slot drawn by weight whose draw stands, other than `except`, in [`DRAWS`]
    /// draws at most.
    fn draw_available(
        &self,
        rng: &mut fastrand::Rng,
        chance: &impl Fn(usize) -> Option<f64>,
        except: Option<usize>,
    ) -> Option<usize> {
        for _ in 0..DRAWS {
            let slot = self.draw(rng)?;
            if Some(slot) == except {
                continue;
            }
            match chance(self.members[slot]) {
                Some(c) if c >= 1.0 || rng.f64() < c => return Some(slot),
                _ => {}
            }
        }
        None
    }

    /// The slot of a uniformly random member that is available, by a full scan.
    fn scan(
        &self,
        rng: &mut fastrand::Rng,
        chance: &impl Fn(usize) -> Option<f64>,
    ) -> Option<usize> {
        let live: Vec<usize> = (0..self.members.len())
            .filter(|&slot| chance(self.members[slot]).is_some())
            .collect();
        if live.is_empty() {
            return None;
        }
        Some(live[rng.usize(0..live.len())])
    }
}
