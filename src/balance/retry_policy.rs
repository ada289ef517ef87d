//! Retry policies for calls that were sent: which methods, which codes, how many attempts
//! and how far apart, after gRFC A6's `retryPolicy`.

use std::collections::HashMap;
use std::time::Duration;

use tonic::Code;

use super::codes::CodeSet;
use super::longest::at_most_longest;

/// A6's client-side cap on `maxAttempts`: a larger value is taken as this.
pub(crate) const MAX_ATTEMPTS_CAP: u32 = 5;

/// How the calls of a method are retried when they fail with a retryable code: gRFC A6's
/// `retryPolicy`.
///
/// A failed attempt is retried only while the call is not committed (no response headers
/// reached the caller, its request fits the replay buffer), fewer than `max_attempts`
/// attempts were made, the retry throttle allows it, and the server did not refuse by
/// pushback. The `n`-th retry waits a random time in `[0, min(initial_backoff ×
/// backoff_multiplier^(n-1), max_backoff))` ("full jitter", A6's formula); a server's
/// `grpc-retry-pushback-ms` replaces that wait and restarts the sequence.
///
/// Defaults, from the example policy of A6: 4 attempts, 100 ms initial backoff, 1 s
/// max backoff, multiplier 2, retryable codes `UNAVAILABLE` (the one code that says the
/// server did not process the call; add others only for idempotent methods).
///
/// Set it per method with [`Balancer::retry_policy`](crate::Balancer::retry_policy):
///
/// ```
/// # use tonic::Code;
/// # use tonic_etcd::RetryPolicy;
/// let policy = RetryPolicy::default()
///     .max_attempts(3)
///     .retryable_codes([Code::Unavailable, Code::ResourceExhausted]);
/// # drop(policy);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    backoff_multiplier: f64,
    retryable_codes: CodeSet,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            backoff_multiplier: 2.0,
            retryable_codes: CodeSet::EMPTY.with(Code::Unavailable),
        }
    }
}

impl RetryPolicy {
    /// The most attempts of one call, the first included. Default: 4. Taken into 1 to 5:
    /// A6 caps it at 5 on the client; 1 turns retries off for the method (A6 rejects a
    /// policy of 1 attempt; here it simply means no retry).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.clamp(1, MAX_ATTEMPTS_CAP);
        self
    }

    /// The upper bound of the first retry's random wait. Default: 100 ms. At most a year.
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = at_most_longest(backoff);
        self
    }

    /// The largest upper bound of a retry's random wait. Default: 1 s. At most a year.
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = at_most_longest(backoff);
        self
    }

    /// The factor the upper bound grows by with each retry. Default: 2. A value that is
    /// not finite and above 0 is taken as 2 (A6 requires it above 0).
    pub fn backoff_multiplier(mut self, multiplier: f64) -> Self {
        self.backoff_multiplier = if multiplier.is_finite() && multiplier > 0.0 {
            multiplier
        } else {
            2.0
        };
        self
    }

    /// The codes after which an attempt is retried. Default: `UNAVAILABLE`. `OK` is never
    /// retried, whatever the set says.
    pub fn retryable_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.retryable_codes = codes.into_iter().collect::<CodeSet>().without(Code::Ok);
        self
    }

    /// The most attempts of one call, the first included, in 1 to 5.
    pub(crate) fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether an attempt that ended with `code` may be retried.
    pub(crate) fn retries(&self, code: Code) -> bool {
        self.retryable_codes.contains(code)
    }

    /// The upper bound of the wait before retry number `n` (1-based) since the last
    /// pushback: `min(initial × multiplier^(n-1), max)`.
    pub(crate) fn backoff_bound(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(1024) as i32;
        let secs = self.initial_backoff.as_secs_f64() * self.backoff_multiplier.powi(exp);
        let max = self.max_backoff;
        if secs.is_finite() && secs < max.as_secs_f64() {
            Duration::from_secs_f64(secs)
        } else {
            max
        }
    }

    /// The wait before retry number `n` (1-based) since the last pushback: uniform in
    /// `[0, backoff_bound(n))`.
    pub(crate) fn backoff(&self, n: u32, rng: &mut fastrand::Rng) -> Duration {
        self.backoff_bound(n).mul_f64(rng.f64())
    }
}

/// The retry policies of a channel, by method: gRPC's method config `name`s, written as
/// paths.
///
/// - `"/helloworld.Greeter/SayHello"`: that method;
/// - `"/helloworld.Greeter/"`: every method of the service;
/// - `"/"`: every method.
///
/// The most specific path wins. A missing leading `/` is added, and a path with no `/`
/// after the service name is read as the whole service (`"helloworld.Greeter"` is
/// `"/helloworld.Greeter/"`), so a name copied from a service config works. No policy
/// by default: nothing is retried once sent (calls that never left are still retried,
/// transparently, as A6 allows).
#[derive(Debug, Clone, Default)]
#[must_use]
pub(crate) struct RetryPolicies {
    by_path: HashMap<String, RetryPolicy>,
}

impl RetryPolicies {
    /// No policy: no call is retried once sent.
    pub(crate) fn new() -> Self {
        RetryPolicies::default()
    }

    /// Retries the calls of `path` (a method, a service or all; see the type's docs)
    /// under `policy`; replaces an earlier policy of the same path.
    pub(crate) fn method(mut self, path: &str, policy: RetryPolicy) -> Self {
        self.by_path.insert(normalize(path), policy);
        self
    }

    /// Whether no method has a policy.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// The policy of a call to `path` (the request URI's path, `/package.Service/Method`):
    /// the method's own, else its service's, else the one for every method.
    pub(crate) fn policy_for(&self, path: &str) -> Option<&RetryPolicy> {
        if self.by_path.is_empty() {
            return None;
        }
        let service = path.rfind('/').map(|end| &path[..=end]);
        self.by_path
            .get(path)
            .or_else(|| service.and_then(|s| self.by_path.get(s)))
            .or_else(|| self.by_path.get("/"))
    }
}

/// A path as [`RetryPolicies::policy_for`] looks it up; see [`RetryPolicies`].
fn normalize(path: &str) -> String {
    let path = path.trim();
    let mut normal = String::with_capacity(path.len() + 2);
    if !path.starts_with('/') {
        normal.push('/');
    }
    normal.push_str(path);
    if normal.len() > 1 && !normal[1..].contains('/') {
        normal.push('/');
    }
    normal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn backoff_bounds_grow_then_cap() {
        let policy = RetryPolicy::default();
        let bounds: Vec<_> = (1..=6).map(|n| policy.backoff_bound(n)).collect();
        assert_eq!(
            bounds,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        let flat = policy.backoff_multiplier(1.0);
        assert_eq!(flat.backoff_bound(5), ms(100));
        assert_eq!(policy.backoff_bound(u32::MAX), ms(1000), "no overflow");
        let slow = policy.initial_backoff(ms(300)).max_backoff(ms(500));
        assert_eq!(slow.backoff_bound(1), ms(300));
        assert_eq!(slow.backoff_bound(2), ms(500));
        let inverted = policy.initial_backoff(ms(300)).max_backoff(ms(50));
        assert_eq!(
            inverted.backoff_bound(1),
            ms(50),
            "max bounds even the first"
        );
    }

    #[test]
    fn backoff_is_full_jitter_under_the_bound() {
        let policy = RetryPolicy::default();
        let mut rng = fastrand::Rng::with_seed(5);
        let waits: Vec<_> = (0..2000).map(|_| policy.backoff(3, &mut rng)).collect();
        assert!(waits.iter().all(|&w| w < ms(400)));
        let (low, high) = (
            waits.iter().filter(|&&w| w < ms(100)).count(),
            waits.iter().filter(|&&w| w >= ms(300)).count(),
        );
        // Uniform on [0, 400 ms): about a quarter in each end.
        assert!(
            (400..600).contains(&low) && (400..600).contains(&high),
            "{low} {high}"
        );
    }

    #[test]
    fn settings_are_taken_into_a6_ranges() {
        let policy = RetryPolicy::default().max_attempts(9);
        assert_eq!(policy.attempts(), 5, "A6 caps attempts at 5");
        assert_eq!(policy.max_attempts(0).attempts(), 1);
        let policy = policy.backoff_multiplier(-1.0);
        assert_eq!(policy.backoff_bound(2), ms(200), "taken as 2");
        let policy = policy.retryable_codes([Code::Ok, Code::Aborted]);
        assert!(policy.retries(Code::Aborted));
        assert!(!policy.retries(Code::Ok) && !policy.retries(Code::Unavailable));
    }

    #[test]
    fn the_most_specific_path_wins() {
        let method = RetryPolicy::default().max_attempts(2);
        let service = RetryPolicy::default().max_attempts(3);
        let all = RetryPolicy::default().max_attempts(5);
        let policies = RetryPolicies::new()
            .method("/helloworld.Greeter/SayHello", method)
            .method("/helloworld.Greeter/", service);
        let attempts = |p: &RetryPolicies, path| p.policy_for(path).map(|p| p.attempts());
        assert_eq!(attempts(&policies, "/helloworld.Greeter/SayHello"), Some(2));
        assert_eq!(
            attempts(&policies, "/helloworld.Greeter/SayGoodbye"),
            Some(3)
        );
        assert_eq!(attempts(&policies, "/other.Service/SayHello"), None);
        let policies = policies.method("/", all);
        assert_eq!(attempts(&policies, "/other.Service/SayHello"), Some(5));
        assert!(RetryPolicies::new().policy_for("/a.B/C").is_none());
    }

    #[test]
    fn paths_are_read_leniently() {
        assert_eq!(
            normalize("helloworld.Greeter/SayHello"),
            "/helloworld.Greeter/SayHello"
        );
        assert_eq!(normalize("helloworld.Greeter"), "/helloworld.Greeter/");
        assert_eq!(normalize("/helloworld.Greeter"), "/helloworld.Greeter/");
        assert_eq!(normalize("/helloworld.Greeter/"), "/helloworld.Greeter/");
        assert_eq!(normalize(""), "/");
        assert_eq!(normalize("/"), "/");
        let policies = RetryPolicies::new().method("helloworld.Greeter", RetryPolicy::default());
        assert!(
            policies
                .policy_for("/helloworld.Greeter/SayHello")
                .is_some()
        );
        assert!(!policies.is_empty());
    }
}
