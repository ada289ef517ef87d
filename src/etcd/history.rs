//! Telling that etcd went back in time.
//!
//! An etcd whose data directory was lost and which was started again on the same address,
//! or one restored from an older snapshot, serves a history older than the one a client has
//! applied. A watch resumed "from" the client's next revision then waits for a revision the
//! new history reaches only later, if ever, and misses every change made before it. Every
//! response header names the cluster, the member's current revision and its raft term, so
//! each one is checked against what the client has seen; on a [`Regression`] the caller lists
//! again and diffs the listing against what it announced (kube-runtime's reflector does the
//! same when its resource version is no longer valid).
//!
//! A regression of the revision may also be reported for a member that lags behind the one
//! a listing came from; discovery asks the cluster with a linearizable read before it lists
//! again.

use std::fmt;

/// What a response header tells about the history it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Header {
    /// The cluster's id; 0 if not given.
    pub(crate) cluster_id: u64,
    /// The member's current revision; 0 if not given.
    pub(crate) revision: i64,
    /// The member's raft term; 0 if not given.
    pub(crate) raft_term: u64,
}

impl Header {
    /// The header of an etcd-client response; all zero without one.
    pub(crate) fn of(header: Option<&etcd_client::ResponseHeader>) -> Header {
        header.map_or_else(Header::default, |h| Header {
            cluster_id: h.cluster_id(),
            revision: h.revision(),
            raft_term: h.raft_term(),
        })
    }
}

/// The history a client follows: the cluster and the highest raft term seen since its last
/// listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct History {
    cluster_id: u64,
    raft_term: u64,
}

/// Why a response comes from another history than the one applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Regression {
    /// The member's current revision is below one already applied.
    Revision { applied: i64, current: i64 },
    /// Another cluster answers.
    Cluster { was: u64, now: u64 },
    /// The raft term went down, which it never does in one cluster's life.
    Term { was: u64, now: u64 },
}

impl fmt::Display for Regression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Regression::Revision { applied, current } => write!(
                f,
                "etcd is at revision {current}, below revision {applied} already applied"
            ),
            Regression::Cluster { was, now } => {
                write!(f, "cluster id {now:x} answers instead of {was:x}")
            }
            Regression::Term { was, now } => write!(f, "raft term {now} is below term {was}"),
        }
    }
}

impl History {
    /// The history a listing with `header` starts.
    pub(crate) fn listed(header: Header) -> History {
        History {
            cluster_id: header.cluster_id,
            raft_term: header.raft_term,
        }
    }

    /// Checks `header` against this history and everything up to revision `applied`; if it
    /// belongs to the same history, takes its raft term into account. A field that is 0 (not
    /// given) is not checked.
    pub(crate) fn check(&mut self, header: Header, applied: i64) -> Result<(), Regression> {
        if header.revision > 0 && header.revision < applied {
            return Err(Regression::Revision {
                applied,
                current: header.revision,
            });
        }
        if self.cluster_id != 0 && header.cluster_id != 0 && header.cluster_id != self.cluster_id {
            return Err(Regression::Cluster {
                was: self.cluster_id,
                now: header.cluster_id,
            });
        }
        if header.raft_term != 0 && header.raft_term < self.raft_term {
            return Err(Regression::Term {
                was: self.raft_term,
                now: header.raft_term,
            });
        }
        self.cluster_id = self.cluster_id.max(header.cluster_id);
        self.raft_term = self.raft_term.max(header.raft_term);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(cluster_id: u64, revision: i64, raft_term: u64) -> Header {
        Header {
            cluster_id,
            revision,
            raft_term,
        }
    }

    #[test]
    fn the_same_history_going_forward_is_no_regression() {
        let mut history = History::listed(header(7, 40, 2));
        assert_eq!(history.check(header(7, 40, 2), 40), Ok(()));
        assert_eq!(history.check(header(7, 55, 3), 41), Ok(()), "a new term");
        assert_eq!(history.check(header(7, 56, 3), 55), Ok(()));
    }

    #[test]
    fn a_revision_below_the_applied_one_is_a_regression() {
        // A wiped etcd: same cluster id (it derives from the same flags), revision 3.
        let mut history = History::listed(header(7, 40, 2));
        assert_eq!(
            history.check(header(7, 3, 2), 40),
            Err(Regression::Revision {
                applied: 40,
                current: 3
            })
        );
        // One below the resume point (`from` - 1 = applied) is fine: nothing new yet.
        assert_eq!(history.check(header(7, 40, 2), 40), Ok(()));
    }

    #[test]
    fn another_cluster_is_a_regression() {
        let mut history = History::listed(header(7, 40, 2));
        assert_eq!(
            history.check(header(9, 80, 2), 40),
            Err(Regression::Cluster { was: 7, now: 9 })
        );
    }

    #[test]
    fn a_lower_raft_term_is_a_regression() {
        let mut history = History::listed(header(7, 40, 2));
        history.check(header(7, 41, 5), 40).expect("a new term");
        assert_eq!(
            history.check(header(7, 90, 2), 41),
            Err(Regression::Term { was: 5, now: 2 }),
            "restored from a snapshot, then written past the applied revision"
        );
    }

    #[test]
    fn missing_fields_are_not_checked() {
        let mut history = History::default();
        assert_eq!(history.check(Header::default(), 40), Ok(()));
        assert_eq!(history.check(header(7, 41, 2), 40), Ok(()));
        assert_eq!(history.check(header(0, 0, 0), 41), Ok(()));
        assert_eq!(history, History::listed(header(7, 41, 2)));
    }

    #[test]
    fn a_regression_says_what_went_back() {
        let text = Regression::Revision {
            applied: 40,
            current: 3,
        }
        .to_string();
        assert!(text.contains("revision 3") && text.contains("40"), "{text}");
    }
}
