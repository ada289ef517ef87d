//! Which endpoints the channel keeps connected: the subset, as a pure state machine.
//!
//! [`Subset`] is told of the endpoints discovery finds and loses, of the time, and of how
//! its members fare; it answers with [`Action`]s (connect this endpoint, disconnect that
//! one) for the driver to carry out. It spawns nothing, reads no clock and draws from the
//! rng it is given, so every decision is tested with explicit instants and a seeded rng.
//!
//! While there are no more endpoints than the subset's size, every one is a member, and a
//! failed one stays a member (its connector probes it with backoff). With more, a random
//! subset of that size is, with the client's zone first:
//!
//! - a member that fails leaves at once for a candidate, and rests (2 s, doubling with each
//!   failure in a row, to 60 s) before it may be drawn again;
//! - a new endpoint joins at once, in place of a random member of its zone class, with the
//!   odds that keep the subset a uniform sample (reservoir sampling), so that servers added
//!   later get their share of a fleet of clients;
//! - a member from another zone makes room for a candidate from the client's zone.
//!
//! At most `size` endpoints join per [`REPLACEMENT_WINDOW`], so a prefix of dead endpoints,
//! each refused at once, is not tried at the pace of its refusals.
//!
//! "Fails" means the connection: a member ejected by outlier detection (it answers, but
//! fails calls by status) keeps its place, connected, while the pick skips it. Subsetting
//! and ejection are separate layers in gRPC (random subsetting, gRFC A68, chooses members
//! from the addresses alone and leaves ejection to outlier detection, gRFC A50) and in
//! Envoy (ejection is per host); here too: an ejection is short (30 s at first) and ends
//! with the connection ready, the max ejection percent bounds how many members are out at
//! once, and a replacement would open a cold connection to a server the ejected one's
//! failures say nothing about, then close it again when the ejection ends.

mod candidates;
mod rebalance;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use candidates::Candidates;

/// An endpoint as the subset knows it: a new one for every insert, even of the same key,
/// so that a stale candidate is told from the endpoint that replaced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Id(u64);

/// What the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// The endpoint joins the subset: connect to it.
    Connect(Id),
    /// The endpoint leaves the subset: close its connection once its calls end. After a
    /// failure it rests until `rest_until` before it may be drawn again.
    Disconnect { id: Id, rest_until: Option<Instant> },
}

/// What the subset needs to know of an endpoint.
#[derive(Debug, Clone, Copy)]
pub(super) struct Traits {
    /// Its weight, at least 1.
    pub(super) weight: u32,
    /// Whether it is in the client's zone.
    pub(super) local: bool,
}

/// The window over which at most `size` endpoints join the subset.
pub(super) const REPLACEMENT_WINDOW: Duration = Duration::from_millis(100);

/// One endpoint and where it stands.
#[derive(Debug)]
struct Slot {
    traits: Traits,
    member: bool,
    /// Resting after a failure: not a candidate until its rest is over.
    resting: bool,
    /// Failures in a row in the subset; each lengthens its rest.
    failures: u32,
    /// Since when it has been up in the subset, as last seen.
    up_since: Option<Instant>,
}

/// Every known endpoint, and the subset of them that is connected; see the module docs.
#[derive(Debug)]
pub(super) struct Subset {
    size: usize,
    slots: HashMap<Id, Slot>,
    keys: HashMap<String, Id>,
    next_id: u64,
    /// The members, in the order they joined (then swapped out).
    members: Vec<Id>,
    candidates: Candidates,
    /// Endpoints resting after a failure, until the instant.
    cooling: Vec<(Instant, Id)>,
    /// The highest weight seen, for weighted draws.
    max_weight: u32,
    /// How many endpoints are in the client's zone.
    local_count: usize,
    /// Endpoints that joined since `window_start`; see [`Subset::may_join`].
    joined: usize,
    window_start: Instant,
    /// When the subset may take more endpoints again, if it wants them.
    wake_at: Option<Instant>,
    actions: Vec<Action>,
}

impl Subset {
    /// A subset of at most `size` members (at least 1).
    pub(super) fn new(size: usize, now: Instant) -> Self {
        Subset {
            size: size.max(1),
            slots: HashMap::new(),
            keys: HashMap::new(),
            next_id: 0,
            members: Vec::new(),
            candidates: Candidates::default(),
            cooling: Vec::new(),
            max_weight: 0,
            local_count: 0,
            joined: 0,
            window_start: now,
            wake_at: None,
            actions: Vec::new(),
        }
    }

    /// A new endpoint under `key`, or a new value of a known key, which replaces the old
    /// endpoint (returned, for the driver to drop) and keeps its place in the subset.
    pub(super) fn insert(
        &mut self,
        key: &str,
        traits: Traits,
        rng: &mut fastrand::Rng,
    ) -> (Id, Option<Id>) {
        let id = Id(self.next_id);
        self.next_id += 1;
        self.max_weight = self.max_weight.max(traits.weight);
        let old = self.keys.insert(key.to_owned(), id);
        let was_member = old.and_then(|old| self.drop_slot(old)).unwrap_or(false);
        let slot = Slot {
            traits,
            member: false,
            resting: false,
            failures: 0,
            up_since: None,
        };
        self.local_count += usize::from(traits.local);
        self.slots.insert(id, slot);
        match (old, was_member) {
            (Some(_), true) => self.join(id),
            (Some(_), false) => self.candidate(id),
            (None, _) => self.admit(id, rng),
        }
        self.sweep_candidates();
        (id, old)
    }

    /// The endpoint under `key` is gone; returns it, for the driver to drop.
    pub(super) fn remove(&mut self, key: &str) -> Option<Id> {
        let id = self.keys.remove(key)?;
        self.drop_slot(id);
        Some(id)
    }

    /// Forgets `id`; returns whether it was a member.
    fn drop_slot(&mut self, id: Id) -> Option<bool> {
        let slot = self.slots.remove(&id)?;
        self.local_count -= usize::from(slot.traits.local);
        if slot.member {
            self.members.retain(|&m| m != id);
        }
        Some(slot.member)
    }

    /// A new endpoint: a candidate, or a member at once in place of another, so that the
    /// subset stays a uniform sample of each zone class (reservoir sampling).
    fn admit(&mut self, id: Id, rng: &mut fastrand::Rng) {
        if self.slots.len() <= self.size || self.members.len() < self.size {
            // Room for every endpoint, or the next rebalance draws from the candidates.
            self.candidate(id);
            return;
        }
        let local = self.is_local(id);
        let remote_member = self.members.iter().position(|&m| !self.is_local(m));
        let replace = match remote_member {
            // The client's zone first: a remote member makes room.
            Some(i) if local => Some(i),
            _ => self.reservoir_pick(local, rng),
        };
        match replace {
            Some(i) => {
                let member = self.members.swap_remove(i);
                self.leave(member, None);
                self.join(id);
            }
            None => self.candidate(id),
        }
    }

    /// The member of the zone class `local` that a new endpoint replaces, if any: with the
    /// odds of members of the class over endpoints of the class, a random one.
    fn reservoir_pick(&self, local: bool, rng: &mut fastrand::Rng) -> Option<usize> {
        let same_class: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.is_local(self.members[i]) == local)
            .collect();
        let class_size = match local {
            true => self.local_count,
            false => self.slots.len() - self.local_count,
        };
        let odds = same_class.len() as f64 / class_size.max(1) as f64;
        (!same_class.is_empty() && rng.f64() < odds)
            .then(|| same_class[rng.usize(..same_class.len())])
    }

    fn is_local(&self, id: Id) -> bool {
        self.slots.get(&id).is_some_and(|s| s.traits.local)
    }

    /// Makes `id` a candidate for the subset.
    fn candidate(&mut self, id: Id) {
        self.candidates.push(id, self.is_local(id));
    }

    /// Whether `id` is a current candidate: still known, not a member, not resting.
    fn is_candidate(&self, id: Id) -> bool {
        is_candidate(&self.slots, id)
    }

    fn sweep_candidates(&mut self) {
        let slots = &self.slots;
        self.candidates
            .sweep(slots.len(), |id| is_candidate(slots, id));
    }

    /// Whether there is a candidate to try in place of a failed member (only with more
    /// endpoints than the subset's size).
    pub(super) fn has_candidates(&self) -> bool {
        self.slots.len() > self.size && self.candidates.any(|id| self.is_candidate(id))
    }

    /// The members, to pick from.
    pub(super) fn members(&self) -> &[Id] {
        &self.members
    }

    /// When [`Subset::rebalance`] has more to do, if it has.
    pub(super) fn wake_at(&self) -> Option<Instant> {
        self.wake_at
    }

    /// What the driver must do since the last call.
    pub(super) fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }
}

fn is_candidate(slots: &HashMap<Id, Slot>, id: Id) -> bool {
    slots.get(&id).is_some_and(|s| !s.member && !s.resting)
}
