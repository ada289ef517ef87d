//! etcd's own faults, as the fake plays them: events held back from a watcher that is still
//! catching up, events sent twice, progress answers out of step with the events, leader
//! changes, and keepalives that go unanswered.

use tokio::time::{Duration, Instant};

use super::FakeEtcd;

/// How the fake answers a progress request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// With its current revision, once the events before it are sent, except those held back
    /// ([`FakeEtcd::hold_events`]): etcd 3.4 answers a progress request at once with its
    /// current revision, even for a watcher it has not sent every event up to it yet (fixed
    /// in 3.4.25 and 3.5.8 by etcd-io/etcd#15237), so the answer runs ahead of those events.
    Current,
    /// With a revision this far below the current one: etcd 3.4 notifies the watchers of
    /// revision N before it makes N its current revision, so an answer read in between says
    /// N - 1 after event N was sent ("a manually requested progress notification can return
    /// a lower revision than the preceding watch event", etcd-io/etcd#15220).
    Behind(i64),
}

impl FakeEtcd {
    /// Holds back from every watch the events written from now on, as etcd does for a
    /// watcher it is still catching up (it sends those every 100 ms), until
    /// [`release_events`](FakeEtcd::release_events).
    pub(crate) fn hold_events(&self) {
        let mut state = self.state();
        state.held_above = state.revision;
    }

    /// Sends the events held back.
    pub(crate) fn release_events(&self) {
        self.state().held_above = 0;
        self.changed();
    }

    /// Makes every open watch send again the events from `revision` on, those it has sent
    /// already included: etcd 3.4 can repeat events (DESIGN §3), and a watch resumed from an
    /// older revision does.
    pub(crate) fn redeliver_from(&self, revision: i64) {
        {
            let mut state = self.state();
            state.redeliveries += 1;
            state.redeliver_from = revision;
        }
        self.changed();
    }

    /// Sets how progress requests are answered.
    pub(crate) fn answer_progress(&self, progress: Progress) {
        self.state().progress = progress;
    }

    /// A leader change: no leader for `election`, then a new raft term. Keepalives wait for
    /// the new leader, which answers them; as etcd's new leader does, it extends every lease
    /// by its TTL from the end of the election. Responses carry the new term.
    pub(crate) fn change_leader(&self, election: Duration) {
        {
            let mut state = self.state();
            state.expire();
            state.raft_term += 1;
            let until = Instant::now() + election;
            state.election_until = Some(until);
            for (ttl, at) in state.leases.values_mut() {
                *at = (*at).max(until + Duration::from_secs(ttl.unsigned_abs()));
            }
        }
        self.changed();
    }

    /// Keepalives go unanswered (`true`), and renew nothing, until called with `false`:
    /// the stream's member is cut off, or frozen.
    pub(crate) fn stall_keepalives(&self, stalled: bool) {
        self.state().keepalives_stalled = stalled;
        self.changed();
    }

    /// Keepalives renew the lease but their answers never come back (`true`), until called
    /// with `false`: the leader has them, the stream's member does not pass the answers on.
    pub(crate) fn lose_keepalive_answers(&self, lost: bool) {
        self.state().answers_lost = lost;
        self.changed();
    }

    /// How many LeaseTimeToLive requests have been served.
    pub(crate) fn time_to_lives(&self) -> usize {
        self.state().time_to_lives
    }

    /// The current revision: it moves with every write.
    pub(crate) fn revision(&self) -> i64 {
        self.state().revision
    }

    /// How many keepalive streams have been opened.
    pub(crate) fn keepalive_streams(&self) -> usize {
        self.state().keepalive_streams
    }

    /// Watches are served from now on by a member `behind` revisions behind the leader:
    /// their headers say its revision, and it sends no event above it, until
    /// [`catch_up`](FakeEtcd::catch_up). Linearizable reads still see the cluster's revision.
    pub(crate) fn lag_watches(&self, behind: i64) {
        let mut state = self.state();
        state.follower_at = Some(state.revision - behind);
    }

    /// The member that serves watches catches up with the leader.
    pub(crate) fn catch_up(&self) {
        self.state().follower_at = None;
        self.changed();
    }

    /// How many count-only reads have been served.
    pub(crate) fn counts(&self) -> usize {
        self.state().counts
    }

    /// How many range requests (pages of a listing) have been served.
    pub(crate) fn ranges(&self) -> usize {
        self.state().ranges
    }
}
