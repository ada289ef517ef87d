//! How the subset changes over time: failed members rest, the client's zone comes first,
//! the subset is topped up at a bounded pace.

use std::time::Duration;

use tokio::time::Instant;

use super::{Action, Id, REPLACEMENT_WINDOW, Slot, Subset, is_candidate};
use crate::backoff::Backoff;
use crate::balance::backend::EndpointState;

/// How long a member must stay up before its failures are forgiven.
const FORGIVE_AFTER: Duration = Duration::from_secs(10);

/// How long an endpoint that failed in a subset rests before it may join again: 2 s,
/// doubling with each failure in a row to 60 s, with jitter.
fn cooldown() -> Backoff {
    Backoff::default()
        .initial(Duration::from_secs(2))
        .max(Duration::from_secs(60))
}

impl Subset {
    /// Endpoints whose rest is over become candidates again; all of them while there is
    /// room for every endpoint.
    pub(in crate::balance) fn cool_down(&mut self, now: Instant) {
        let everyone = self.slots.len() <= self.size;
        let (done, resting) = std::mem::take(&mut self.cooling)
            .into_iter()
            .partition::<Vec<_>, _>(|(until, _)| everyone || *until <= now);
        self.cooling = resting;
        for (_, id) in done {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.resting = false;
                self.candidate(id);
            }
        }
    }

    /// Takes failed members out of a subset, prefers the client's zone, and tops the
    /// subset up, given each member's `state`; returns whether its membership changed.
    pub(in crate::balance) fn rebalance(
        &mut self,
        now: Instant,
        rng: &mut fastrand::Rng,
        state: impl Fn(Id) -> EndpointState,
    ) -> bool {
        self.wake_at = None;
        if self.slots.len() <= self.size && !self.cooling.is_empty() {
            self.cool_down(now);
        }
        let mut changed = self.drop_failed(now, rng, &state);
        changed |= self.prefer_local(rng);
        let healthy = self.observe(now, &state);
        for _ in healthy..self.size.min(self.slots.len()) {
            if !self.may_join(now) {
                break;
            }
            let Some(id) = self
                .draw_from(true, rng)
                .or_else(|| self.draw_from(false, rng))
            else {
                break;
            };
            self.join(id);
            changed = true;
        }
        changed
    }

    /// With more endpoints than the subset's size, failed members leave to rest.
    fn drop_failed(
        &mut self,
        now: Instant,
        rng: &mut fastrand::Rng,
        state: &impl Fn(Id) -> EndpointState,
    ) -> bool {
        if self.slots.len() <= self.size {
            return false;
        }
        let mut changed = false;
        let mut i = 0;
        while i < self.members.len() {
            if state(self.members[i]) == EndpointState::Ejected {
                let id = self.members.swap_remove(i);
                self.leave(id, Some((now, rng.f64())));
                changed = true;
            } else {
                i += 1;
            }
        }
        changed
    }

    /// Members from another zone make room for candidates from the client's.
    fn prefer_local(&mut self, rng: &mut fastrand::Rng) -> bool {
        let mut changed = false;
        while let Some(i) = self.members.iter().position(|&m| !self.is_local(m)) {
            if self.candidates.no_local() {
                break;
            }
            let Some(local) = self.draw_from(true, rng) else {
                break;
            };
            let remote = self.members.swap_remove(i);
            self.leave(remote, None);
            self.join(local);
            changed = true;
        }
        changed
    }

    /// Counts the members that are up or connecting, and forgives the failures of those up
    /// for [`FORGIVE_AFTER`].
    fn observe(&mut self, now: Instant, state: &impl Fn(Id) -> EndpointState) -> usize {
        let mut healthy = 0;
        for id in &self.members {
            let Some(slot) = self.slots.get_mut(id) else {
                continue;
            };
            match state(*id) {
                EndpointState::Up => {
                    healthy += 1;
                    let since = *slot.up_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= FORGIVE_AFTER {
                        slot.failures = 0;
                    }
                }
                EndpointState::Connecting => {
                    healthy += 1;
                    slot.up_since = None;
                }
                _ => slot.up_since = None,
            }
        }
        healthy
    }

    /// Whether one more endpoint may join now: at most `size` per [`REPLACEMENT_WINDOW`].
    /// Otherwise, sets when to try again.
    fn may_join(&mut self, now: Instant) -> bool {
        if now >= self.window_start + REPLACEMENT_WINDOW {
            self.window_start = now;
            self.joined = 0;
        }
        if self.joined < self.size {
            self.joined += 1;
            return true;
        }
        self.wake_at = Some(self.window_start + REPLACEMENT_WINDOW);
        false
    }

    /// A candidate from the client's zone (`local`) or from elsewhere, drawn by weight.
    fn draw_from(&mut self, local: bool, rng: &mut fastrand::Rng) -> Option<Id> {
        let slots = &self.slots;
        let weight = |id| slots.get(&id).map_or(1, |s: &Slot| s.traits.weight.max(1));
        self.candidates.draw(
            local,
            rng,
            |id| is_candidate(slots, id),
            weight,
            self.max_weight,
        )
    }

    pub(super) fn join(&mut self, id: Id) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.member = true;
            slot.up_since = None;
            self.members.push(id);
            self.actions.push(Action::Connect(id));
        }
    }

    /// Takes a member (already out of `members`) out of the subset: after a failure at
    /// `failed = (now, jitter)`, to rest; otherwise back among the candidates at once.
    pub(super) fn leave(&mut self, id: Id, failed: Option<(Instant, f64)>) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        slot.member = false;
        slot.up_since = None;
        let Some((now, jitter)) = failed else {
            self.actions.push(Action::Disconnect {
                id,
                rest_until: None,
            });
            self.candidate(id);
            return;
        };
        slot.failures = slot.failures.saturating_add(1);
        slot.resting = true;
        let base = cooldown().base_delay(slot.failures);
        let until = now + base / 2 + (base / 2).mul_f64(jitter);
        self.cooling.push((until, id));
        self.actions.push(Action::Disconnect {
            id,
            rest_until: Some(until),
        });
    }
}
