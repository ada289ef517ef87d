//! When a held response stops waiting for its next frame.
//!
//! Not by the clock alone: a server descheduled between its response headers and its
//! message, or a client whose connection task has not run yet on a busy machine, outlasts
//! any fixed wait, and a response given on just before its server dies fails a call that
//! could have been retried. So a wait ends when the connection has read anything since it
//! began, at least one [`WINDOW`] ago, and still no frame came for this call: the connection
//! is moving and the call's stream is quiet. On a connection that reads nothing at all the
//! wait goes on, up to [`LONGEST`]; on a connection whose reads are not counted (tonic's
//! `Channel`) it ends after one window.

use std::time::Duration;

use tokio::time::Instant;

/// How often a wait looks at the connection's reads.
pub(crate) const WINDOW: Duration = Duration::from_millis(20);

/// The longest a held response waits for one frame on a connection that reads nothing: a
/// stream whose server sends its headers, then nothing, on an otherwise idle connection,
/// reaches its caller this much later (twice this at most, for the two frames held). Long
/// enough for a process descheduled on a busy machine to run again.
pub(crate) const LONGEST: Duration = Duration::from_millis(500);

/// One wait for a frame; see the [module](self) docs.
#[derive(Debug)]
pub(super) struct Patience {
    since: Instant,
    /// The connection's read count when the wait began, if it is counted.
    at_start: Option<u64>,
    /// Whether the connection had read something by the last look.
    moved: bool,
}

impl Patience {
    /// A wait that begins at `now`, on a connection with `reads` so far.
    pub(super) fn new(reads: Option<u64>, now: Instant) -> Self {
        Patience {
            since: now,
            at_start: reads,
            moved: false,
        }
    }

    /// After a [`WINDOW`] with no frame, with the connection's read count now: whether to
    /// stop waiting.
    pub(super) fn gives_up(&mut self, reads: Option<u64>, now: Instant) -> bool {
        let (Some(at_start), Some(reads)) = (self.at_start, reads) else {
            return true;
        };
        if self.moved || now.saturating_duration_since(self.since) >= LONGEST {
            return true;
        }
        self.moved = reads != at_start;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Looks after each window, with the read counts given, until the wait gives up;
    /// returns how long it waited.
    fn waited(reads: impl Fn(u32) -> Option<u64>) -> Duration {
        let start = Instant::now();
        let mut patience = Patience::new(reads(0), start);
        let mut looks = 1;
        while !patience.gives_up(reads(looks), start + WINDOW * looks) {
            looks += 1;
        }
        WINDOW * looks
    }

    #[tokio::test(start_paused = true)]
    async fn an_uncounted_connection_waits_one_window() {
        assert_eq!(waited(|_| None), WINDOW);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_reads_nothing_waits_the_longest() {
        assert_eq!(waited(|_| Some(7)), LONGEST);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_reads_gives_up_a_window_after_its_first_read() {
        assert_eq!(waited(|look| Some(u64::from(look))), 2 * WINDOW);
        // Stalled for 200 ms (a busy machine), then reading again.
        let stalled = |look: u32| Some(u64::from(look.saturating_sub(9)));
        assert_eq!(waited(stalled), 11 * WINDOW);
    }
}
