//! When a member was last picked, so that one left out of the pick for too long is picked
//! once and its latency estimate refreshed: go-zero's p2c `forcePick`.
//!
//! A power-of-two-choices pick on latency never picks the member whose estimate is high,
//! and an estimate only changes when a call is timed: unpicked, it is refreshed only by
//! its decay. One slow sample (a scheduler stall on a busy machine) can so keep a healthy
//! member out for seconds, and at one call in flight, where calls in flight do not tell
//! members apart, all calls go to one member meanwhile. go-zero's p2c balancer
//! (`zrpc/internal/balancer/p2c`, `forcePick`, 1 s against a 10 s decay) lets the loser
//! of a pair win it once when it has not been picked for a while, which refreshes its
//! estimate with a real call; Kratos's p2c selector does the same. Here the while is a
//! quarter of the estimate's decay (250 ms with the default 1 s; go-zero's tenth of its
//! 10 s decay would be 100 ms): an estimate left out loses a fifth of itself by decay
//! between two refreshes, and a slow endpoint that is right to be left out gets four
//! calls a second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How much of the latency estimate's decay a member may go unpicked before it is due.
pub(crate) const DUE_FRACTION: u32 = 4;

/// Writes closer together than this are skipped: the stamp is read by every pick and
/// written only when it moved, so a busy member does not write a shared line per call.
const RESOLUTION: Duration = Duration::from_millis(1);

/// When a member was last picked, in nanoseconds after `base`.
#[derive(Debug)]
pub(crate) struct LastPick {
    base: Instant,
    nanos: AtomicU64,
    /// How long a member may go unpicked before the next pair it is in picks it.
    due_after: Duration,
}

impl LastPick {
    /// A member counted as picked at `now` (a new member is drawn like any other at first),
    /// due again after a [`DUE_FRACTION`] of `decay`.
    pub(crate) fn new(now: Instant, decay: Duration) -> Self {
        LastPick {
            base: now,
            nanos: AtomicU64::new(0),
            due_after: decay / DUE_FRACTION,
        }
    }

    fn since_base(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.base).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }

    /// Records that the member was picked at `now`.
    pub(crate) fn mark(&self, now: Instant) {
        let now = self.since_base(now);
        let last = self.nanos.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= RESOLUTION.as_nanos() as u64 {
            self.nanos.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Whether the member has gone unpicked for its due time at `now`; if so, marks it
    /// picked, so that of the calls that find it due at once only one is sent to it.
    pub(crate) fn claim_if_due(&self, now: Instant) -> bool {
        let now = self.since_base(now);
        let last = self.nanos.load(Ordering::Relaxed);
        now.saturating_sub(last) > self.due_after.as_nanos() as u64
            && self
                .nanos
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_due_after_a_quarter_of_the_decay_and_claimed_once() {
        let start = Instant::now();
        let last = LastPick::new(start, Duration::from_secs(1));
        assert!(!last.claim_if_due(start + Duration::from_millis(250)));
        let due = start + Duration::from_millis(251);
        assert!(last.claim_if_due(due), "unpicked for over 250 ms");
        assert!(!last.claim_if_due(due), "a second call the same instant");
        assert!(!last.claim_if_due(due + Duration::from_millis(250)));
        assert!(last.claim_if_due(due + Duration::from_millis(251)));
    }

    #[test]
    fn a_pick_resets_the_due_time() {
        let start = Instant::now();
        let last = LastPick::new(start, Duration::from_secs(1));
        last.mark(start + Duration::from_millis(90));
        assert!(!last.claim_if_due(start + Duration::from_millis(340)));
        assert!(last.claim_if_due(start + Duration::from_millis(341)));
    }
}
