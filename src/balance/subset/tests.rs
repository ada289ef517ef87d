//! The subset's decisions, with explicit instants and seeded rngs.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::{Action, Id, REPLACEMENT_WINDOW, Subset, Traits};
use crate::balance::backend::EndpointState;

const REMOTE: Traits = Traits {
    weight: 1,
    local: false,
};
const LOCAL: Traits = Traits {
    weight: 1,
    local: true,
};

/// A subset and the states its members report.
struct Fleet {
    subset: Subset,
    states: HashMap<Id, EndpointState>,
    keys: HashMap<Id, String>,
    rng: fastrand::Rng,
    now: Instant,
}

impl Fleet {
    fn new(size: usize, seed: u64) -> Self {
        let now = Instant::now();
        Fleet {
            subset: Subset::new(size, now),
            states: HashMap::new(),
            keys: HashMap::new(),
            rng: fastrand::Rng::with_seed(seed),
            now,
        }
    }

    fn insert(&mut self, key: &str, traits: Traits) -> Id {
        let (id, _) = self.subset.insert(key, traits, &mut self.rng);
        self.keys.insert(id, key.to_owned());
        self.apply();
        id
    }

    /// Carries out the actions as the driver would: a member connects at once.
    fn apply(&mut self) -> Vec<Action> {
        let actions = self.subset.take_actions();
        for action in &actions {
            match *action {
                Action::Connect(id) => self.states.insert(id, EndpointState::Up),
                Action::Disconnect { id, .. } => self.states.insert(id, EndpointState::Idle),
            };
        }
        actions
    }

    fn rebalance(&mut self) -> Vec<Action> {
        let states = &self.states;
        let state = |id| states.get(&id).copied().unwrap_or(EndpointState::Idle);
        self.subset.rebalance(self.now, &mut self.rng, state);
        self.apply()
    }

    fn fail(&mut self, id: Id) {
        self.states.insert(id, EndpointState::Ejected);
    }

    fn members(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self
            .subset
            .members()
            .iter()
            .map(|id| self.keys[id].as_str())
            .collect();
        keys.sort();
        keys
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }
}

#[test]
fn connects_every_endpoint_while_they_fit_and_keeps_a_failed_one() {
    let mut fleet = Fleet::new(3, 1);
    let a = fleet.insert("a", REMOTE);
    fleet.insert("b", REMOTE);
    let actions = fleet.rebalance();
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(fleet.members(), ["a", "b"]);
    fleet.fail(a);
    let actions = fleet.rebalance();
    assert!(
        actions.is_empty(),
        "a failed member stays, probed: {actions:?}"
    );
    assert!(!fleet.subset.has_candidates());
}

/// With 2 endpoints and a subset of 1, the member fails, rests, and the other takes its
/// place; the member fails again; ... Returns the first member and the rest of each failure.
fn fail_in_turn(fleet: &mut Fleet, rounds: usize) -> Vec<(Id, Duration)> {
    let mut rests = Vec::new();
    for _ in 0..rounds {
        // Past the window of the last join, so that a replacement may join at once.
        fleet.advance(REPLACEMENT_WINDOW);
        let member = fleet.subset.members()[0];
        fleet.fail(member);
        let actions = fleet.rebalance();
        let Some(Action::Disconnect {
            rest_until: Some(until),
            ..
        }) = actions.first().copied()
        else {
            panic!("the failed member leaves to rest: {actions:?}");
        };
        rests.push((member, until - fleet.now));
        assert!(
            matches!(actions[1], Action::Connect(other) if other != member),
            "{actions:?}"
        );
        // Its rest over, the failed one is a candidate again.
        fleet.advance(Duration::from_secs(61));
        fleet.subset.cool_down(fleet.now);
    }
    rests
}

#[test]
fn a_failed_member_rests_twice_as_long_after_each_failure() {
    let mut fleet = Fleet::new(1, 2);
    fleet.insert("a", REMOTE);
    fleet.insert("b", REMOTE);
    fleet.rebalance();
    let rests = fail_in_turn(&mut fleet, 6);
    let bases = [2, 2, 4, 4, 8, 8].map(Duration::from_secs);
    for ((_, rest), base) in rests.iter().zip(bases) {
        assert!(
            (base / 2..=base).contains(rest),
            "rest {rest:?}, base {base:?}: {rests:?}"
        );
    }
}

#[test]
fn a_member_up_for_ten_seconds_is_forgiven() {
    let mut fleet = Fleet::new(1, 3);
    fleet.insert("a", REMOTE);
    fleet.insert("b", REMOTE);
    fleet.rebalance();
    // Each fails once; the first is a member again.
    fail_in_turn(&mut fleet, 2);
    fleet.rebalance();
    fleet.advance(Duration::from_secs(10));
    fleet.rebalance();
    // Up for 10 s: its next failure rests it as its first did.
    let rests = fail_in_turn(&mut fleet, 1);
    assert!(rests[0].1 <= Duration::from_secs(2), "{rests:?}");
}

#[test]
fn at_most_subset_many_join_per_window() {
    let mut fleet = Fleet::new(2, 4);
    for i in 0..10 {
        fleet.insert(&format!("k{i}"), REMOTE);
    }
    assert_eq!(fleet.rebalance().len(), 2);
    let start = fleet.now;
    for id in fleet.subset.members().to_vec() {
        fleet.fail(id);
    }
    fleet.advance(Duration::from_millis(1));
    let actions = fleet.rebalance();
    assert!(
        actions
            .iter()
            .all(|a| matches!(a, Action::Disconnect { .. })),
        "nobody joins again within the window: {actions:?}"
    );
    assert!(fleet.subset.members().is_empty());
    assert!(fleet.subset.has_candidates());
    assert_eq!(fleet.subset.wake_at(), Some(start + REPLACEMENT_WINDOW));
    fleet.now = start + REPLACEMENT_WINDOW;
    let joined = fleet.rebalance();
    assert_eq!(joined.len(), 2, "{joined:?}");
    assert_eq!(fleet.subset.wake_at(), None);
}

#[test]
fn the_clients_zone_takes_the_place_of_other_zones() {
    let mut fleet = Fleet::new(2, 5);
    for key in ["r1", "r2", "r3"] {
        fleet.insert(key, REMOTE);
    }
    fleet.rebalance();
    assert_eq!(fleet.subset.members().len(), 2);
    // A local endpoint joins at once, in place of a remote member.
    fleet.insert("l1", LOCAL);
    assert!(fleet.members().contains(&"l1"), "{:?}", fleet.members());
    // A second one displaces the last remote member at the next rebalance... or at once.
    fleet.insert("l2", LOCAL);
    fleet.rebalance();
    assert_eq!(fleet.members(), ["l1", "l2"]);
    // Local members failing: remote candidates fill in.
    let locals = fleet.subset.members().to_vec();
    for id in locals {
        fleet.fail(id);
    }
    fleet.rebalance();
    let members = fleet.members();
    assert!(members.iter().all(|k| k.starts_with('r')), "{members:?}");
}

#[test]
fn an_updated_member_keeps_its_place() {
    let mut fleet = Fleet::new(1, 6);
    fleet.insert("a", REMOTE);
    fleet.insert("b", REMOTE);
    fleet.rebalance();
    let member = fleet.keys[&fleet.subset.members()[0]].clone();
    let (new, old) = fleet.subset.insert(&member, REMOTE, &mut fleet.rng);
    fleet.keys.insert(new, member.clone());
    assert!(old.is_some());
    assert_eq!(fleet.subset.take_actions(), [Action::Connect(new)]);
    assert_eq!(fleet.subset.members(), [new]);
}

/// Endpoints added one by one to a subset of 2: each ends up a member with odds 2 in 10,
/// whenever it came (reservoir sampling).
#[test]
fn the_subset_stays_a_uniform_sample_as_endpoints_arrive() {
    let mut counts = [0usize; 10];
    let runs = 4_000;
    for seed in 0..runs {
        let mut fleet = Fleet::new(2, seed);
        for i in 0..10 {
            fleet.insert(&format!("k{i}"), REMOTE);
            fleet.rebalance();
        }
        for key in fleet.members() {
            counts[key[1..].parse::<usize>().expect("index")] += 1;
        }
    }
    let expected = runs as usize * 2 / 10;
    for (i, &n) in counts.iter().enumerate() {
        assert!(
            n.abs_diff(expected) < expected / 6,
            "endpoint {i} a member {n} times of {runs}, expected about {expected}: {counts:?}"
        );
    }
}

#[test]
fn a_removed_endpoint_is_never_drawn() {
    let mut fleet = Fleet::new(1, 7);
    fleet.insert("a", REMOTE);
    fleet.insert("b", REMOTE);
    fleet.rebalance();
    let member = fleet.subset.members()[0];
    let other_key = if fleet.keys[&member] == "a" { "b" } else { "a" };
    fleet.subset.remove(other_key).expect("known");
    fleet.fail(member);
    fleet.rebalance();
    assert!(fleet.subset.members().is_empty() || fleet.subset.members() == [member]);
    assert!(!fleet.subset.has_candidates());
}
