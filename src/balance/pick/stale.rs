//! When a member was last picked, and how many pairs it has lost since it became due, so
//! that one left out of the pick for too long, while other members took the calls, is
//! picked once and its latency estimate refreshed: go-zero's p2c `forcePick`, bounded by
//! traffic.
//!
//! A power-of-two-choices pick on latency never picks the member whose estimate is high,
//! and an estimate only changes when a call is timed: unpicked, it is refreshed only by
//! its decay. One slow sample (a scheduler stall on a busy machine) can so keep a healthy
//! member out for seconds, and at one call in flight, where calls in flight do not tell
//! members apart, all calls go to one member meanwhile.
//!
//! Peers force a pick by time alone. go-zero's p2c balancer
//! (`zrpc/internal/balancer/p2c/p2c.go`) lets the loser of a pair win it when it has not
//! been picked for 1 s (its latency decay is 10 s), claimed per member by a
//! compare-and-swap on the loser's pick stamp. Kratos's p2c selector
//! (`selector/p2c/p2c.go`) does so after 3 s, and only for the call that takes a
//! balancer-wide compare-and-swap flag, released as soon as the node is chosen. By time
//! alone, a member is due at every pair it loses once calls are further apart than the
//! due time, so at low call rates the loser wins most pairs and the pick turns upside
//! down: with this crate's 250 ms and one call in flight every 200 ms, an endpoint ten
//! times slower than two others got two calls in three, where the pick alone gives it
//! one in three; of weights 1 and 4 at equal latency, called every 500 ms, 85% of the
//! picks were forced and the member of weight 1 got no call.
//!
//! Here a member is due when both hold:
//!
//! - it has gone unpicked for a quarter of the estimate's decay ([`DUE_FRACTION`]; 250 ms
//!   with the default 1 s), so a member refreshed this way loses about a fifth of its
//!   estimate by decay between two refreshes;
//! - since then it has lost the number of pairs the pick asks for (see
//!   [`Weighted::pick`](super::Weighted::pick): [`LOSSES_PER_SHARE`](super::LOSSES_PER_SHARE)
//!   times the member's draws in the set, `total weight / its weight`), so other members
//!   took calls while it waited, and the pairs it wins so are at most one in that many plus
//!   one of those it is in.
//!
//! At back-to-back calls the time decides: a member left out is picked about four times a
//! second. At low rates the losses decide, and forced picks are a small bounded share.
//! The stamp and the loss count share one atomic word: a pick whose loser is not due by
//! time reads it once; counting a loss or claiming the pick is one compare-and-swap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How much of the latency estimate's decay a member may go unpicked before it is due.
pub(crate) const DUE_FRACTION: u32 = 4;

/// The low bits of the word count the pairs lost since the member became due; the high
/// bits are the stamp, in microseconds after `base`.
const COUNT_BITS: u32 = 12;

/// The most losses a member can be asked for.
pub(crate) const MAX_LOSSES: u64 = (1 << COUNT_BITS) - 1;

/// The latest stamp the word holds (142 years in microseconds); later ones saturate.
const MAX_STAMP: u64 = u64::MAX >> COUNT_BITS;

/// Writes closer together than this are skipped: the stamp is read by every pick and
/// written only when it moved, so a busy member does not write a shared line per call.
const RESOLUTION: Duration = Duration::from_millis(1);

/// When a member was last picked and the pairs it lost since it became due, packed in one
/// word.
#[derive(Debug)]
pub(crate) struct LastPick {
    base: Instant,
    /// `stamp << COUNT_BITS | losses`.
    word: AtomicU64,
    /// How long a member may go unpicked before it may be due, in microseconds.
    due_after: u64,
}

impl LastPick {
    /// A member counted as picked at `now` (a new member is drawn like any other at first),
    /// due again after a [`DUE_FRACTION`] of `decay` and the losses the pick asks for.
    pub(crate) fn new(now: Instant, decay: Duration) -> Self {
        let due_after = (decay / DUE_FRACTION).as_micros();
        LastPick {
            base: now,
            word: AtomicU64::new(0),
            due_after: u64::try_from(due_after).unwrap_or(MAX_STAMP),
        }
    }

    /// `now` as a stamp: microseconds after `base`.
    fn stamp(&self, now: Instant) -> u64 {
        let micros = now.saturating_duration_since(self.base).as_micros();
        u64::try_from(micros).unwrap_or(MAX_STAMP).min(MAX_STAMP)
    }

    /// Records that the member was picked at `now`, which clears its losses.
    pub(crate) fn mark(&self, now: Instant) {
        let now = self.stamp(now);
        let last = self.word.load(Ordering::Relaxed) >> COUNT_BITS;
        if now.saturating_sub(last) >= RESOLUTION.as_micros() as u64 {
            self.word.fetch_max(now << COUNT_BITS, Ordering::Relaxed);
        }
    }

    /// Called for the loser of a pair at `now`: whether it is due (unpicked for its due
    /// time, and since then `losses` pairs lost, at most [`MAX_LOSSES`]), and so wins this
    /// pair; if so, marks it picked, so that of the calls that find it due at once only one
    /// is sent to it. Otherwise, once it is due by time, counts this pair as lost.
    pub(crate) fn claim_if_due(&self, now: Instant, losses: u64) -> bool {
        let now = self.stamp(now);
        let word = self.word.load(Ordering::Relaxed);
        if now.saturating_sub(word >> COUNT_BITS) <= self.due_after {
            return false;
        }
        let due = word & MAX_LOSSES >= losses.min(MAX_LOSSES);
        // A lost race (another call counted or claimed it first) counts nothing: no retry.
        let next = if due { now << COUNT_BITS } else { word + 1 };
        let swapped = self
            .word
            .compare_exchange(word, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        due && swapped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_due_after_a_quarter_of_the_decay_and_claimed_once() {
        let start = Instant::now();
        let last = LastPick::new(start, Duration::from_secs(1));
        assert!(!last.claim_if_due(start + Duration::from_millis(250), 0));
        let due = start + Duration::from_millis(251);
        assert!(last.claim_if_due(due, 0), "unpicked for over 250 ms");
        assert!(!last.claim_if_due(due, 0), "a second call the same instant");
        assert!(!last.claim_if_due(due + Duration::from_millis(250), 0));
        assert!(last.claim_if_due(due + Duration::from_millis(251), 0));
    }

    #[test]
    fn a_pick_resets_the_due_time() {
        let start = Instant::now();
        let last = LastPick::new(start, Duration::from_secs(1));
        last.mark(start + Duration::from_millis(90));
        assert!(!last.claim_if_due(start + Duration::from_millis(340), 0));
        assert!(last.claim_if_due(start + Duration::from_millis(341), 0));
    }

    #[test]
    fn a_member_due_by_time_wins_only_after_losing_the_pairs_asked_for() {
        let start = Instant::now();
        let last = LastPick::new(start, Duration::from_secs(1));
        let early = start + Duration::from_millis(200);
        for _ in 0..10 {
            assert!(
                !last.claim_if_due(early, 3),
                "not due by time: no loss counted"
            );
        }
        let due = start + Duration::from_millis(300);
        for lost in 0..3 {
            assert!(!last.claim_if_due(due, 3), "{lost} pairs lost of 3");
        }
        assert!(last.claim_if_due(due, 3), "the fourth pair");
        let later = due + Duration::from_millis(251);
        for _ in 0..2 {
            assert!(!last.claim_if_due(later, 3));
        }
        last.mark(later + Duration::from_millis(1));
        let after = later + Duration::from_millis(253);
        for lost in 0..3 {
            assert!(
                !last.claim_if_due(after, 3),
                "a pick clears the losses: {lost}"
            );
        }
        assert!(last.claim_if_due(after, 3));
    }
}
