//! The retry path of the crate's long-running tasks: how long to wait after a failure,
//! whether a failure is final, and how it is logged. Discovery's engine and the registrar's
//! lease task (and the balancer's connect loop, for the delays) share it; each only reports
//! the outcome through its own status.

use std::time::Duration;

use super::Backoff;
use crate::error::Chain;
use crate::error::Error;

/// Runs `future` for at most `after`; past that, fails with [`Error::Timeout`] naming
/// `operation`.
pub(crate) async fn within<T>(
    operation: &'static str,
    after: Duration,
    future: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(after, future)
        .await
        .map_err(|_| Error::Timeout { operation, after })?
}

/// The retry count of one failing operation, and what it has waited so far.
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    policy: Backoff,
    attempt: u32,
    /// The current run of failures, for the logs.
    outage: Outage,
    /// Whether the operation has succeeded before, with the same credentials: a permission
    /// denied after that is a role revoked for a while.
    worked: bool,
}

/// What to do about a failure: see [`Retry::failed`].
#[derive(Debug)]
pub(crate) enum Failure {
    /// Retrying cannot help: report the error and stop.
    Permanent(Error),
    /// Report that the operation retries (attempt number `attempt`, 1-based), wait `delay`,
    /// and try again.
    Transient {
        error: Error,
        attempt: u32,
        delay: Duration,
    },
}

impl Retry {
    pub(crate) fn new(policy: Backoff) -> Self {
        Retry {
            policy,
            attempt: 0,
            outage: Outage::default(),
            worked: false,
        }
    }

    /// Decides about a failure of a long-running task's operation, and logs a transient one
    /// (a permanent one is the caller's to report): the first failure of an outage at WARN
    /// with `message`, then every 30 s, the others at DEBUG (the task's span names what
    /// failed). The policy, written once for discovery and the
    /// registrar (linkerd's `Recover` is the model):
    ///
    /// - a [permanent](Error::is_permanent) error is final, except a permission denied
    ///   after the operation has succeeded before: a role revoked for a while, retried with
    ///   the [long backoff](Backoff::denied_max) until it is granted again;
    /// - any other error is retried with the backoff, the delay capped at `cap` if given
    ///   (jittered in its upper half).
    pub(crate) fn failed(
        &mut self,
        error: Error,
        cap: Option<Duration>,
        message: &'static str,
    ) -> Failure {
        let denied = self.worked && error.is_permission_denied();
        if error.is_permanent() && !denied {
            return Failure::Permanent(error);
        }
        self.attempt = self.attempt.saturating_add(1);
        let mut delay = match denied {
            true => self.policy.denied().delay(self.attempt),
            false => self.policy.delay(self.attempt),
        };
        if let Some(cap) = cap.filter(|cap| delay > *cap) {
            delay = cap / 2 + (cap / 2).mul_f64(fastrand::f64());
        }
        let attempt = self.attempt;
        if self.warn_now() {
            tracing::warn!(attempt, ?delay, error = %Chain(&error), "{message}");
        } else {
            tracing::debug!(attempt, ?delay, error = %Chain(&error), "retrying");
        }
        Failure::Transient {
            error,
            attempt,
            delay,
        }
    }

    /// Counts a success: a permission denied from now on is taken as revoked, not as never
    /// granted. Returns how long the failures it ends lasted, if any, to log at INFO.
    pub(crate) fn succeeded(&mut self) -> Option<Duration> {
        self.worked = true;
        self.recovered_now()
    }

    /// Whether a failure now should be logged at WARN; see [`Outage::failed`].
    pub(crate) fn warn_now(&mut self) -> bool {
        self.outage.failed(tokio::time::Instant::now())
    }

    /// How long the failures that a success now ends lasted, if any: see
    /// [`Outage::succeeded`].
    pub(crate) fn recovered_now(&mut self) -> Option<Duration> {
        self.outage.succeeded(tokio::time::Instant::now())
    }

    /// Counts one more failure and returns how long to wait before the next try.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.policy.delay(self.attempt)
    }

    /// The number of failures since the last reset.
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Forgets past failures after a healthy period.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// How often a failure of an outage that goes on is logged at WARN again.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// One run of failures of an operation, for its logs: the first failure is worth a WARN,
/// then one every [`WARN_EVERY`] while it lasts; its end is worth an INFO.
#[derive(Debug, Default, Clone)]
pub(crate) struct Outage {
    /// When the current run of failures began, if one is under way.
    since: Option<tokio::time::Instant>,
    last_warned: Option<tokio::time::Instant>,
}

impl Outage {
    /// Counts a failure at `now`; returns whether to log it at WARN (else at DEBUG).
    pub(crate) fn failed(&mut self, now: tokio::time::Instant) -> bool {
        self.since.get_or_insert(now);
        let due = self
            .last_warned
            .is_none_or(|at| now.saturating_duration_since(at) >= WARN_EVERY);
        if due {
            self.last_warned = Some(now);
        }
        due
    }

    /// Counts a success at `now`; returns how long the failures lasted, if this ends a run
    /// of them (log it at INFO).
    pub(crate) fn succeeded(&mut self, now: tokio::time::Instant) -> Option<Duration> {
        self.last_warned = None;
        self.since
            .take()
            .map(|since| now.saturating_duration_since(since))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn denied() -> Error {
        Error::Watch {
            prefix: "p/".into(),
            source: Arc::new(etcd_client::Error::GRpcStatus(
                tonic::Status::permission_denied("etcdserver: permission denied"),
            )),
        }
    }

    fn unavailable() -> Error {
        Error::Timeout {
            operation: "test",
            after: Duration::from_secs(1),
        }
    }

    #[test]
    fn an_outage_warns_first_then_every_30_s_and_reports_its_end() {
        let t0 = tokio::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut outage = Outage::default();
        assert_eq!(
            outage.succeeded(at(0)),
            None,
            "no outage, nothing to report"
        );
        assert!(outage.failed(at(1)));
        assert!(!outage.failed(at(2)));
        assert!(!outage.failed(at(30)));
        assert!(outage.failed(at(31)));
        assert_eq!(outage.succeeded(at(41)), Some(Duration::from_secs(40)));
        assert!(outage.failed(at(42)), "a new outage warns at once");
    }

    #[test]
    fn retry_counts_and_resets() {
        let mut r = Retry::new(Backoff::default());
        r.next_delay();
        r.next_delay();
        assert_eq!(r.attempt(), 2);
        r.reset();
        assert_eq!(r.attempt(), 0);
    }

    #[test]
    fn a_transient_error_is_retried_with_the_backoff_and_capped() {
        let backoff = Backoff::default()
            .initial(Duration::from_secs(1))
            .max(Duration::from_secs(8));
        let mut retry = Retry::new(backoff);
        for attempt in 1..=5 {
            let Failure::Transient {
                delay, attempt: a, ..
            } = retry.failed(unavailable(), None, "test")
            else {
                panic!("transient");
            };
            assert_eq!(a, attempt);
            assert!(delay <= backoff.base_delay(attempt), "{delay:?}");
        }
        let cap = Duration::from_millis(500);
        let Failure::Transient { delay, .. } = retry.failed(unavailable(), Some(cap), "test")
        else {
            panic!("transient");
        };
        assert!(delay >= cap / 2 && delay <= cap, "{delay:?}");
    }

    #[test]
    fn a_permission_denied_is_final_until_the_operation_has_worked() {
        let backoff = Backoff::default()
            .max(Duration::from_secs(10))
            .denied_max(Duration::from_secs(30));
        let mut retry = Retry::new(backoff);
        assert!(matches!(
            retry.failed(denied(), None, "test"),
            Failure::Permanent(_)
        ));
        assert_eq!(retry.succeeded(), None);
        for attempt in 1..=4 {
            let Failure::Transient { error, delay, .. } = retry.failed(denied(), None, "test")
            else {
                panic!("a revoked permission is retried");
            };
            assert!(error.is_permission_denied());
            let base = backoff.denied().base_delay(attempt);
            assert!(delay >= base / 2 && delay <= base, "{delay:?}");
            assert!(delay >= Duration::from_secs(5), "a long backoff: {delay:?}");
        }
        let invalid = Error::InvalidDuration {
            setting: "x",
            value: Duration::ZERO,
            reason: "y",
        };
        assert!(
            matches!(retry.failed(invalid, None, "test"), Failure::Permanent(_)),
            "only a permission denied is retried"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn within_names_the_operation_that_timed_out() {
        let never = std::future::pending::<Result<(), Error>>();
        let result = within("listing", Duration::from_secs(2), never).await;
        assert!(
            matches!(result, Err(Error::Timeout { operation: "listing", after }) if after == Duration::from_secs(2)),
            "{result:?}"
        );
        assert_eq!(
            within("x", Duration::from_secs(1), async { Ok(3) })
                .await
                .ok(),
            Some(3)
        );
    }
}
