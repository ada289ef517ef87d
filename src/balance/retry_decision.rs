//! Whether a failed attempt of a sent call is retried, and after how long: gRFC A6's
//! retry logic, as a decision the balancer's call path carries out.

use std::fmt;
use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;
use tonic::Code;

use super::longest::later;
use super::retry_policy::RetryPolicy;
use super::retry_throttle::TokenBucket;

/// The response metadata in which a server says how long to wait before a retry, or not
/// to retry (A6's server pushback).
pub(crate) const PUSHBACK: &str = "grpc-retry-pushback-ms";

/// The request header that tells the server how many attempts of the call came before
/// this one (A6's exposed retry metadata); set on every retry.
pub(crate) const PREVIOUS_ATTEMPTS: &str = "grpc-previous-rpc-attempts";

/// What a server said of a retry, in `grpc-retry-pushback-ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushback {
    /// Nothing: the policy's backoff decides.
    Unsaid,
    /// Retry after this long, and start the backoff sequence again after it.
    After(Duration),
    /// Do not retry: the value was negative, not a 32-bit integer, or given twice, all
    /// of which A6 reads as a refusal.
    Refused,
}

impl Pushback {
    /// The pushback in a failed attempt's metadata: the headers of a trailers-only
    /// response (an attempt that sent response headers is committed, and never retried).
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        let mut values = headers.get_all(PUSHBACK).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return match headers.contains_key(PUSHBACK) {
                true => Pushback::Refused,
                false => Pushback::Unsaid,
            };
        };
        match value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i32>().ok())
        {
            Some(ms) if ms >= 0 => Pushback::After(Duration::from_millis(ms.unsigned_abs().into())),
            _ => Pushback::Refused,
        }
    }
}

/// How a failed attempt ended, as far as a retry depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttemptFailure {
    /// The attempt's status code.
    pub(crate) code: Code,
    /// What its server said of a retry.
    pub(crate) pushback: Pushback,
    /// Whether the call is committed (A6): response headers reached the caller, or its
    /// request outgrew the replay buffer. A committed call is never retried.
    pub(crate) committed: bool,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryDecision {
    /// Send the call again, to another endpoint where there is one, after this wait.
    Retry {
        /// The wait before the retry is sent.
        after: Duration,
    },
    /// Return the failure to the caller.
    Stop(NoRetry),
}

/// Why a failed attempt is not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoRetry {
    /// Response headers reached the caller, or the request outgrew the replay buffer.
    Committed,
    /// The code is not one the method's policy retries.
    NotRetryable(Code),
    /// The server refused a retry by pushback.
    PushbackRefused,
    /// The retry throttle's tokens are at or below half: too many calls fail.
    Throttled,
    /// The call made its policy's `max_attempts` already.
    AttemptsExhausted,
    /// The retry could not be sent before the call's deadline.
    Deadline,
}

impl fmt::Display for NoRetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoRetry::Committed => f.write_str("the call is committed"),
            NoRetry::NotRetryable(code) => {
                write!(f, "{} is not retryable", super::codes::name(*code))
            }
            NoRetry::PushbackRefused => f.write_str("the server refused a retry"),
            NoRetry::Throttled => f.write_str("retries are throttled"),
            NoRetry::AttemptsExhausted => f.write_str("no attempt left"),
            NoRetry::Deadline => f.write_str("the deadline is too close"),
        }
    }
}

/// The attempts of one call under a retry policy; decides, after each failed attempt,
/// whether to retry.
#[derive(Debug, Clone)]
pub(crate) struct Attempts {
    policy: RetryPolicy,
    deadline: Option<Instant>,
    /// Attempts sent so far, the first included.
    made: u32,
    /// Retries since the start or the last pushback: the backoff's exponent.
    since_pushback: u32,
}

impl Attempts {
    /// A call whose first attempt is being sent, under `policy`, with the call's own
    /// deadline (from `grpc-timeout`), which A6 applies across all attempts.
    pub(crate) fn new(policy: RetryPolicy, deadline: Option<Instant>) -> Self {
        Attempts {
            policy,
            deadline,
            made: 1,
            since_pushback: 0,
        }
    }

    /// The attempts sent so far, the first included.
    pub(crate) fn made(&self) -> u32 {
        self.made
    }

    /// Whether the policy allows another attempt after this one.
    pub(crate) fn left(&self) -> bool {
        self.made < self.policy.attempts()
    }

    /// The value of [`PREVIOUS_ATTEMPTS`] for the attempt being sent.
    pub(crate) fn previous(&self) -> u32 {
        self.made - 1
    }

    /// Decides after a failed attempt, and counts it in `throttle` as A6 does: a
    /// retryable code or a pushback refusal takes a token, and a retry is made only if
    /// the bucket still allows one. On [`RetryDecision::Retry`] the retry counts as sent.
    ///
    /// A6's order: committed; pushback refusal; code not retryable; throttle; attempts
    /// left; then the wait (the pushback's, else the jittered backoff), and whether it
    /// ends before the deadline.
    pub(crate) fn after_failure(
        &mut self,
        failure: AttemptFailure,
        throttle: Option<&TokenBucket>,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> RetryDecision {
        if failure.committed {
            return RetryDecision::Stop(NoRetry::Committed);
        }
        if failure.pushback == Pushback::Refused {
            if let Some(bucket) = throttle {
                bucket.record_failure();
            }
            return RetryDecision::Stop(NoRetry::PushbackRefused);
        }
        if !self.policy.retries(failure.code) {
            return RetryDecision::Stop(NoRetry::NotRetryable(failure.code));
        }
        if !throttle.is_none_or(TokenBucket::record_failure) {
            return RetryDecision::Stop(NoRetry::Throttled);
        }
        if !self.left() {
            return RetryDecision::Stop(NoRetry::AttemptsExhausted);
        }
        let (wait, since_pushback) = match failure.pushback {
            Pushback::After(wait) => (wait, 0),
            _ => {
                let n = self.since_pushback + 1;
                (self.policy.backoff(n, rng), n)
            }
        };
        if self
            .deadline
            .is_some_and(|deadline| later(now, wait) >= deadline)
        {
            return RetryDecision::Stop(NoRetry::Deadline);
        }
        self.made += 1;
        self.since_pushback = since_pushback;
        RetryDecision::Retry { after: wait }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::balance::retry_throttle::RetryThrottling;

    fn failed(code: Code) -> AttemptFailure {
        AttemptFailure {
            code,
            pushback: Pushback::Unsaid,
            committed: false,
        }
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn retries_with_a6_backoff_until_attempts_run_out() {
        let now = Instant::now();
        let policy = RetryPolicy::default();
        let mut attempts = Attempts::new(policy, None);
        let (mut rng, mut expected) = (fastrand::Rng::with_seed(3), fastrand::Rng::with_seed(3));
        for n in 1..=3 {
            let decision = attempts.after_failure(failed(Code::Unavailable), None, now, &mut rng);
            let wait = policy.backoff(n, &mut expected);
            assert_eq!(decision, RetryDecision::Retry { after: wait }, "retry {n}");
            assert!(wait < policy.backoff_bound(n));
            assert_eq!(attempts.previous(), n);
        }
        let decision = attempts.after_failure(failed(Code::Unavailable), None, now, &mut rng);
        assert_eq!(decision, RetryDecision::Stop(NoRetry::AttemptsExhausted));
        assert_eq!(attempts.made(), 4);
    }

    #[test]
    fn codes_outside_the_policy_and_committed_calls_are_not_retried_nor_counted() {
        let now = Instant::now();
        let bucket = RetryThrottling::default().max_tokens(10).bucket();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut attempts = Attempts::new(RetryPolicy::default(), None);
        let decision =
            attempts.after_failure(failed(Code::InvalidArgument), Some(&bucket), now, &mut rng);
        assert_eq!(
            decision,
            RetryDecision::Stop(NoRetry::NotRetryable(Code::InvalidArgument))
        );
        let committed = AttemptFailure {
            committed: true,
            ..failed(Code::Unavailable)
        };
        let decision = attempts.after_failure(committed, Some(&bucket), now, &mut rng);
        assert_eq!(decision, RetryDecision::Stop(NoRetry::Committed));
        assert_eq!(bucket.tokens(), 10.0, "no token taken");
        assert_eq!(attempts.made(), 1);
    }

    #[test]
    fn pushback_sets_the_wait_and_restarts_the_backoff() {
        let now = Instant::now();
        let policy = RetryPolicy::default();
        let mut attempts = Attempts::new(policy, None);
        let (mut rng, mut expected) = (fastrand::Rng::with_seed(9), fastrand::Rng::with_seed(9));
        attempts.after_failure(failed(Code::Unavailable), None, now, &mut rng);
        policy.backoff(1, &mut expected);
        let pushed = AttemptFailure {
            pushback: Pushback::After(ms(700)),
            ..failed(Code::Unavailable)
        };
        let decision = attempts.after_failure(pushed, None, now, &mut rng);
        assert_eq!(decision, RetryDecision::Retry { after: ms(700) });
        // The next retry starts from the initial backoff again, not the third bound.
        let decision = attempts.after_failure(failed(Code::Unavailable), None, now, &mut rng);
        let wait = policy.backoff(1, &mut expected);
        assert_eq!(decision, RetryDecision::Retry { after: wait });
    }

    #[test]
    fn a_pushback_refusal_stops_and_takes_a_token() {
        let bucket = RetryThrottling::default().max_tokens(10).bucket();
        let mut attempts = Attempts::new(RetryPolicy::default(), None);
        let refused = AttemptFailure {
            pushback: Pushback::Refused,
            ..failed(Code::Unavailable)
        };
        let mut rng = fastrand::Rng::with_seed(1);
        let decision = attempts.after_failure(refused, Some(&bucket), Instant::now(), &mut rng);
        assert_eq!(decision, RetryDecision::Stop(NoRetry::PushbackRefused));
        assert_eq!(bucket.tokens(), 9.0);
    }

    #[test]
    fn the_throttle_stops_retries_when_too_many_calls_fail() {
        let now = Instant::now();
        let bucket = RetryThrottling::default().max_tokens(4).bucket();
        let mut rng = fastrand::Rng::with_seed(1);
        let policy = RetryPolicy::default().max_attempts(5);
        let mut first = Attempts::new(policy, None);
        // 4 → 3: still above 2.
        let decision = first.after_failure(failed(Code::Unavailable), Some(&bucket), now, &mut rng);
        assert!(matches!(decision, RetryDecision::Retry { .. }));
        // 3 → 2: not above 2.
        let decision = first.after_failure(failed(Code::Unavailable), Some(&bucket), now, &mut rng);
        assert_eq!(decision, RetryDecision::Stop(NoRetry::Throttled));
        let mut second = Attempts::new(policy, None);
        let decision =
            second.after_failure(failed(Code::Unavailable), Some(&bucket), now, &mut rng);
        assert_eq!(decision, RetryDecision::Stop(NoRetry::Throttled));
        // The failure of this call took another token (2 → 1); thirty successes (0.1
        // each) fill the bucket again (4), and the next failure leaves 3.
        (0..30).for_each(|_| bucket.record_success());
        let decision =
            second.after_failure(failed(Code::Unavailable), Some(&bucket), now, &mut rng);
        assert!(
            matches!(decision, RetryDecision::Retry { .. }),
            "{decision:?}"
        );
    }

    #[test]
    fn a_retry_that_would_start_after_the_deadline_is_not_made() {
        let now = Instant::now();
        let mut attempts = Attempts::new(RetryPolicy::default(), Some(now + ms(500)));
        let mut rng = fastrand::Rng::with_seed(1);
        let pushed = |wait| AttemptFailure {
            pushback: Pushback::After(wait),
            ..failed(Code::Unavailable)
        };
        let decision = attempts.after_failure(pushed(ms(100)), None, now, &mut rng);
        assert_eq!(decision, RetryDecision::Retry { after: ms(100) });
        let later = now + ms(100);
        let decision = attempts.after_failure(pushed(ms(400)), None, later, &mut rng);
        assert_eq!(decision, RetryDecision::Stop(NoRetry::Deadline));
        assert_eq!(NoRetry::Deadline.to_string(), "the deadline is too close");
    }

    #[test]
    fn the_longest_waits_neither_overflow_nor_panic() {
        let now = Instant::now();
        let policy = RetryPolicy::default()
            .initial_backoff(Duration::MAX)
            .max_backoff(Duration::MAX);
        let mut attempts = Attempts::new(policy, Some(now + ms(500)));
        let mut rng = fastrand::Rng::with_seed(1);
        let huge = AttemptFailure {
            pushback: Pushback::After(Duration::MAX),
            ..failed(Code::Unavailable)
        };
        let decision = attempts.after_failure(huge, None, now, &mut rng);
        assert_eq!(decision, RetryDecision::Stop(NoRetry::Deadline));
        let mut attempts = Attempts::new(policy, None);
        let decision = attempts.after_failure(failed(Code::Unavailable), None, now, &mut rng);
        assert!(
            matches!(decision, RetryDecision::Retry { after } if after <= crate::balance::longest::LONGEST)
        );
    }

    #[test]
    fn reads_pushback_as_a6_defines_it() {
        let read = |values: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(PUSHBACK, HeaderValue::from_static(v));
            }
            Pushback::from_headers(&headers)
        };
        assert_eq!(read(&[]), Pushback::Unsaid);
        assert_eq!(read(&["250"]), Pushback::After(ms(250)));
        assert_eq!(read(&["0"]), Pushback::After(Duration::ZERO));
        assert_eq!(read(&["-1"]), Pushback::Refused);
        assert_eq!(read(&["soon"]), Pushback::Refused);
        assert_eq!(
            read(&["4294967296"]),
            Pushback::Refused,
            "not a 32-bit integer"
        );
        assert_eq!(read(&["10", "20"]), Pushback::Refused, "given twice");
        // Both names are valid header names (from_static panics otherwise).
        let _ = (
            http::HeaderName::from_static(PUSHBACK),
            http::HeaderName::from_static(PREVIOUS_ATTEMPTS),
        );
    }
}
