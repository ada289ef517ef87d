//! The longest duration a setting of the balancer takes, so that an instant that far
//! from now never overflows `Instant + Duration` (which panics), whatever is given.

use std::time::Duration;

use tokio::time::Instant;

/// A year (365 days): the most any duration setting is taken as.
pub(crate) const LONGEST: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// `duration`, at most [`LONGEST`].
pub(crate) fn at_most_longest(duration: Duration) -> Duration {
    duration.min(LONGEST)
}

/// `now + duration`, or, should that overflow, `now` + [`LONGEST`].
pub(crate) fn later(now: Instant, duration: Duration) -> Instant {
    now.checked_add(duration).unwrap_or(now + LONGEST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_overflows() {
        let now = Instant::now();
        assert_eq!(at_most_longest(Duration::MAX), LONGEST);
        assert_eq!(later(now, Duration::MAX), now + LONGEST);
        assert_eq!(
            later(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }
}
