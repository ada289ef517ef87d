//! Retry throttling: the token bucket of gRFC A6, which stops retries while most calls
//! fail, so that retries add a bounded share of load instead of a multiple of it.

use std::sync::atomic::{AtomicU32, Ordering};

/// Tokens are kept in thousandths: A6 gives `token_ratio` three decimal places.
const MILLI: u32 = 1000;

/// The largest `max_tokens` A6 accepts.
const MAX_TOKENS: u32 = 1000;

/// How retries are throttled, per channel: gRFC A6's `retryThrottling`.
///
/// The channel keeps a token count, `max_tokens` at first, between 0 and `max_tokens`.
/// A call that fails with a retryable code (or whose server refused a retry by pushback)
/// takes 1 token; a call that succeeds gives back `token_ratio`. Retries are made only
/// while the count is above `max_tokens / 2`. So while every endpoint fails, at most
/// about `max_tokens / 2` retries are made before they stop, and from then on about
/// `token_ratio` retries per successful call: calls sent stay below
/// `(1 + token_ratio) × calls made + max_tokens / 2`.
///
/// Defaults: `max_tokens` 100, `token_ratio` 0.1 (A6 has no default; its example uses
/// 10 tokens). A channel of this crate carries many calls at once: when one endpoint of
/// three dies under 64 calls in flight, some 20 of them fail together, and a bucket of 10
/// would stop retrying after the fifth; 100 tokens absorb that, and still bound the
/// retries of a whole outage to 50, then a tenth of the successful calls. Without
/// throttling, a retry policy of 4 attempts can quadruple the load of an outage.
///
/// Set it with [`Balancer::retry_throttling`](crate::Balancer::retry_throttling):
///
/// ```
/// # use tonic_etcd::RetryThrottling;
/// let throttling = RetryThrottling::default().max_tokens(100).token_ratio(0.2);
/// # drop(throttling);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct RetryThrottling {
    /// In thousandths of a token.
    max_tokens: u32,
    /// In thousandths of a token.
    token_ratio: u32,
}

impl Default for RetryThrottling {
    fn default() -> Self {
        RetryThrottling {
            max_tokens: 100 * MILLI,
            token_ratio: 100,
        }
    }
}

impl RetryThrottling {
    /// The size of the bucket, in tokens (failed calls). Default: 100. Taken into 1 to
    /// 1000, the range A6 accepts.
    pub fn max_tokens(mut self, tokens: u32) -> Self {
        self.max_tokens = tokens.clamp(1, MAX_TOKENS) * MILLI;
        self
    }

    /// The tokens a successful call gives back. Default: 0.1. Rounded to three decimal
    /// places, as A6 reads it, and taken into 0.001 to 1 (A6 requires it above 0; above 1
    /// a retry would pay for itself before it is made). Not a number is taken as 0.1.
    pub fn token_ratio(mut self, ratio: f64) -> Self {
        let ratio = if ratio.is_nan() { 0.1 } else { ratio };
        self.token_ratio = (ratio.clamp(0.001, 1.0) * f64::from(MILLI)).round() as u32;
        self
    }

    /// A full bucket for one channel.
    pub(crate) fn bucket(self) -> TokenBucket {
        TokenBucket {
            tokens: AtomicU32::new(self.max_tokens),
            config: self,
        }
    }
}

/// The token count of one channel under a [`RetryThrottling`]; shared by all its calls
/// (`&self` methods, lock-free).
#[derive(Debug)]
pub(crate) struct TokenBucket {
    config: RetryThrottling,
    /// In thousandths of a token, at most `config.max_tokens`.
    tokens: AtomicU32,
}

impl TokenBucket {
    /// Counts a call that succeeded: gives back `token_ratio`, up to `max_tokens`.
    pub(crate) fn record_success(&self) {
        let (max, ratio) = (self.config.max_tokens, self.config.token_ratio);
        self.update(|t| t.saturating_add(ratio).min(max));
    }

    /// Counts a failed attempt that A6 counts: one that ended with a retryable code, or
    /// whose server refused a retry by pushback. Takes 1 token, and returns whether a
    /// retry may follow it (the count is still above `max_tokens / 2`), in one step, so
    /// concurrent failures cannot all pass the threshold.
    pub(crate) fn record_failure(&self) -> bool {
        let after = self.update(|t| t.saturating_sub(MILLI));
        self.above_threshold(after)
    }

    /// Whether a retry may be made now, without counting anything.
    pub(crate) fn allows_retry(&self) -> bool {
        self.above_threshold(self.tokens.load(Ordering::Acquire))
    }

    /// The current count, in tokens.
    pub(crate) fn tokens(&self) -> f64 {
        f64::from(self.tokens.load(Ordering::Acquire)) / f64::from(MILLI)
    }

    fn above_threshold(&self, tokens: u32) -> bool {
        // tokens > max / 2, without losing the odd thousandth.
        u64::from(tokens) * 2 > u64::from(self.config.max_tokens)
    }

    /// Applies `f` atomically; returns the new count.
    fn update(&self, f: impl Fn(u32) -> u32) -> u32 {
        let before = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(f(t)))
            .unwrap_or_else(|t| t);
        f(before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_full_and_allows_retries() {
        let bucket = RetryThrottling::default().max_tokens(10).bucket();
        assert_eq!(bucket.tokens(), 10.0);
        assert!(bucket.allows_retry());
    }

    #[test]
    fn stops_retries_at_half_and_no_sooner() {
        let bucket = RetryThrottling::default().max_tokens(10).bucket();
        // 10 → 9, 8, 7, 6: still above 5.
        for n in 1..=4 {
            assert!(bucket.record_failure(), "failure {n}");
        }
        // 5 is not above 5.
        assert!(!bucket.record_failure());
        assert_eq!(bucket.tokens(), 5.0);
        assert!(!bucket.allows_retry());
        // One success (0.1) lifts it over the threshold again.
        bucket.record_success();
        assert!(bucket.allows_retry());
        assert!((bucket.tokens() - 5.1).abs() < 1e-9);
    }

    #[test]
    fn stays_within_zero_and_max() {
        let bucket = RetryThrottling::default().max_tokens(3).bucket();
        for _ in 0..10 {
            bucket.record_failure();
        }
        assert_eq!(bucket.tokens(), 0.0);
        for _ in 0..100 {
            bucket.record_success();
        }
        assert_eq!(bucket.tokens(), 3.0);
    }

    #[test]
    fn bounds_retries_while_everything_fails() {
        // Every call fails and would be retried: the retries made stop at max_tokens / 2.
        let bucket = RetryThrottling::default().max_tokens(100).bucket();
        let mut retries = 0;
        for _call in 0..10_000 {
            // The first attempt fails; retry while the bucket allows.
            while bucket.record_failure() {
                retries += 1;
            }
        }
        assert_eq!(retries, 49, "tokens 100 → 51 allow retries, 50 does not");
    }

    #[test]
    fn retries_follow_the_success_ratio_under_partial_failure() {
        // Half the calls fail (each retried at most once): the ratio 0.1 bounds the retries
        // to about a tenth of the successes once the initial half bucket is spent.
        let bucket = RetryThrottling::default()
            .max_tokens(10)
            .token_ratio(0.1)
            .bucket();
        let (mut calls, mut retries, mut successes) = (0u32, 0u32, 0u32);
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..10_000 {
            calls += 1;
            if rng.bool() {
                successes += 1;
                bucket.record_success();
            } else if bucket.record_failure() {
                retries += 1;
                // The retry fails as well, and counts too.
                bucket.record_failure();
            }
        }
        let bound = f64::from(successes) * 0.1 + 5.0;
        assert!(
            f64::from(retries) <= bound,
            "{retries} retries, bound {bound}"
        );
        assert!(retries > 0 && calls == 10_000);
    }

    #[test]
    fn settings_are_taken_into_a6_ranges() {
        let t = RetryThrottling::default().max_tokens(0).token_ratio(0.0);
        assert_eq!((t.max_tokens, t.token_ratio), (1000, 1));
        let t = RetryThrottling::default()
            .max_tokens(5000)
            .token_ratio(0.12345);
        assert_eq!((t.max_tokens, t.token_ratio), (1_000_000, 123));
        let t = RetryThrottling::default().token_ratio(f64::NAN);
        assert_eq!(t.token_ratio, 100);
        // A bucket of 1 allows retries while full (1 > 0.5), not after one failure.
        let bucket = RetryThrottling::default().max_tokens(1).bucket();
        assert!(bucket.allows_retry());
        assert!(!bucket.record_failure());
    }
}
