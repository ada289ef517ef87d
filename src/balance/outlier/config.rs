//! The settings of outlier detection, and which call outcomes count against an endpoint.

use std::time::Duration;

use tonic::Code;

use super::rules::{FailurePercentageEjection, SuccessRateEjection};
use crate::balance::codes::CodeSet;
use crate::balance::longest::at_most_longest;
use crate::balance::status_observer::Observed;

/// How a finished call counts for its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The endpoint served the call: `OK`, or a code that is the caller's business
    /// (`NOT_FOUND`, `INVALID_ARGUMENT`, ...).
    Success,
    /// The endpoint failed the call: a failure code, a response without status, a broken
    /// stream, or a transport error once the call was sent.
    Failure,
    /// Says nothing of the endpoint: the caller cancelled, or the call's own deadline
    /// passed (`CANCELLED`, `DEADLINE_EXCEEDED`, a dropped response, a local timeout).
    Ignored,
}

/// Ejects endpoints that fail by gRPC status, after gRFC A50 (gRPC's outlier detection)
/// and Envoy's outlier detection, in the crate's own terms; set it with
/// [`Balancer::outlier_detection`](crate::Balancer::outlier_detection). On by default.
///
/// - Each call that ends counts for its endpoint: a status in
///   [`failure_codes`](Self::failure_codes), a response without status, a broken stream or
///   a transport error once sent is a failure; any other status a success; a call
///   cancelled by its caller or ended by its own deadline counts for nothing.
/// - **Before any ejection**, failures lower the endpoint's share at once: its recent
///   success rate (an EWMA that forgets with [`success_decay`](Self::success_decay)),
///   squared, scales its chance in the pick, and an endpoint whose rate is far below the
///   other candidate's loses the pick (go-zero's and Kratos's success-rate factor).
/// - **Ejection** takes the endpoint out of the pick for the base ejection time times the
///   times it was ejected recently, capped (A50); it comes back by itself. It follows
///   [`consecutive_failures`](Self::consecutive_failures) at once, and the
///   [`success_rate`](Self::success_rate) and
///   [`failure_percentage`](Self::failure_percentage) checks every
///   [`interval`](Self::interval).
/// - **Limits**: never more than [`max_ejection_percent`](Self::max_ejection_percent) of
///   the connected endpoints (but one may always be, while another stays; A50 counts
///   every address), and none while
///   fewer than [`panic_threshold`](Self::panic_threshold) of the others are healthy:
///   when every endpoint fails alike, calls spread instead (Envoy's panic threshold).
///
/// Defaults, and where they come from:
///
/// | setting | default | source |
/// |---|---|---|
/// | [`failure_codes`](Self::failure_codes) | `UNAVAILABLE`, `INTERNAL`, `UNKNOWN`, `DATA_LOSS` | codes that mean the server failed, not the caller |
/// | [`consecutive_failures`](Self::consecutive_failures) | 5 | Envoy's `consecutive_5xx` |
/// | [`success_rate`](Self::success_rate) | on, [`SuccessRateEjection::default`] | A50 / Envoy |
/// | [`failure_percentage`](Self::failure_percentage) | off | A50 / Envoy (`enforcing_failure_percentage` 0) |
/// | [`interval`](Self::interval) | 10 s | A50 |
/// | [`base_ejection_time`](Self::base_ejection_time) | 30 s | A50 |
/// | [`max_ejection_time`](Self::max_ejection_time) | 300 s | A50 |
/// | [`max_ejection_percent`](Self::max_ejection_percent) | 10 %, but at least one endpoint | A50 |
/// | [`panic_threshold`](Self::panic_threshold) | 50 % | Envoy's `healthy_panic_threshold` |
/// | [`success_decay`](Self::success_decay) | 10 s | go-zero's success-rate decay |
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct OutlierDetection {
    pub(super) failure_codes: CodeSet,
    pub(super) consecutive_failures: Option<u32>,
    pub(super) success_rate: Option<SuccessRateEjection>,
    pub(super) failure_percentage: Option<FailurePercentageEjection>,
    pub(super) interval: Duration,
    pub(super) base_ejection_time: Duration,
    pub(super) max_ejection_time: Duration,
    pub(super) max_ejection_percent: u32,
    pub(super) panic_threshold: u32,
    pub(super) success_decay: Duration,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            failure_codes: [
                Code::Unavailable,
                Code::Internal,
                Code::Unknown,
                Code::DataLoss,
            ]
            .into_iter()
            .collect(),
            consecutive_failures: Some(5),
            success_rate: Some(SuccessRateEjection::default()),
            failure_percentage: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            panic_threshold: 50,
            success_decay: Duration::from_secs(10),
        }
    }
}

impl OutlierDetection {
    /// The codes that count as the endpoint's failure. Default: `UNAVAILABLE`,
    /// `INTERNAL`, `UNKNOWN`, `DATA_LOSS`. Other codes count as successes (the endpoint
    /// answered; `NOT_FOUND` or `INVALID_ARGUMENT` are the caller's business), except
    /// `CANCELLED` and `DEADLINE_EXCEEDED`, which count for nothing unless in this set.
    /// `OK` is never a failure.
    pub fn failure_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.failure_codes = codes.into_iter().collect::<CodeSet>().without(Code::Ok);
        self
    }

    /// Ejects an endpoint at once after this many failures in a row (Envoy's
    /// `consecutive_5xx`; A50 has no such rule). Default: 5. 0 turns it off.
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.consecutive_failures = (failures > 0).then_some(failures);
        self
    }

    /// Success-rate ejection, checked every [`interval`](Self::interval); `None` turns it
    /// off. Default: on, with [`SuccessRateEjection::default`].
    pub fn success_rate(mut self, ejection: Option<SuccessRateEjection>) -> Self {
        self.success_rate = ejection;
        self
    }

    /// Failure-percentage ejection, checked every [`interval`](Self::interval); `None`
    /// turns it off. Default: off (Envoy enforces it at 0 % by default).
    pub fn failure_percentage(mut self, ejection: Option<FailurePercentageEjection>) -> Self {
        self.failure_percentage = ejection;
        self
    }

    /// How often the success-rate and failure-percentage checks run, over the calls of
    /// the interval before. Default: 10 s (A50). Taken into 1 ms to a year.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = at_most_longest(interval).max(Duration::from_millis(1));
        self
    }

    /// The ejection time, multiplied by the times the endpoint was ejected recently (one
    /// less each interval it stays in rotation). Default: 30 s (A50). At most a year.
    pub fn base_ejection_time(mut self, time: Duration) -> Self {
        self.base_ejection_time = at_most_longest(time);
        self
    }

    /// The longest ejection; the base ejection time if that is longer. Default: 300 s
    /// (A50). At most a year.
    pub fn max_ejection_time(mut self, time: Duration) -> Self {
        self.max_ejection_time = at_most_longest(time);
        self
    }

    /// The largest share of the endpoints in rotation that may be ejected at once, in
    /// percent. Default: 10 (A50, Envoy). One endpoint may be ejected whatever the share,
    /// as A50 says, as long as another stays in rotation; 0 turns ejection off (the pick
    /// factor still applies). Taken into 0 to 100.
    ///
    /// The share is of the endpoints in rotation: those with a connection up, outlier
    /// ejections included. A50 counts every address, connected or not; here an endpoint
    /// that is down, connecting or outside the subset does not count, so while some are
    /// down the limit is of the ones left, and ejects no more than they can spare.
    pub fn max_ejection_percent(mut self, percent: u32) -> Self {
        self.max_ejection_percent = percent.min(100);
        self
    }

    /// When fewer than this share (in percent) of the other endpoints in rotation are
    /// healthy (not ejected, recent success rate at least 50 %), failure is shared, not
    /// the endpoint's own: no endpoint is ejected, and calls spread by the pick factor
    /// (Envoy's panic threshold). Default: 50 (Envoy's). 0 turns it off. Taken into 0
    /// to 100.
    pub fn panic_threshold(mut self, percent: u32) -> Self {
        self.panic_threshold = percent.min(100);
        self
    }

    /// The time constant with which an endpoint's past failures are forgotten while no
    /// call ends on it, for the pick factor. Default: 10 s (go-zero's). At most a year.
    pub fn success_decay(mut self, decay: Duration) -> Self {
        self.success_decay = at_most_longest(decay);
        self
    }

    /// The sweep interval: call the sweep this often.
    pub(crate) fn sweep_interval(&self) -> Duration {
        self.interval
    }

    /// How a call that ended as `observed` counts for its endpoint.
    pub(crate) fn outcome(&self, observed: Observed) -> Outcome {
        match observed {
            Observed::Status(code) if self.failure_codes.contains(code) => Outcome::Failure,
            Observed::Status(Code::Cancelled | Code::DeadlineExceeded) => Outcome::Ignored,
            Observed::Status(_) => Outcome::Success,
            Observed::NoStatus | Observed::BodyError => Outcome::Failure,
            Observed::Dropped => Outcome::Ignored,
        }
    }

    /// The ejection time for the `multiplier`-th recent ejection: `min(base × multiplier,
    /// max(base, max))` (A50).
    pub(super) fn ejection_time(&self, multiplier: u32) -> Duration {
        let cap = self.base_ejection_time.max(self.max_ejection_time);
        self.base_ejection_time.saturating_mul(multiplier).min(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::longest::LONGEST;

    #[test]
    fn classifies_outcomes_by_whose_fault_they_are() {
        let config = OutlierDetection::default();
        let status = |code| config.outcome(Observed::Status(code));
        for code in [
            Code::Unavailable,
            Code::Internal,
            Code::Unknown,
            Code::DataLoss,
        ] {
            assert_eq!(status(code), Outcome::Failure, "{code:?}");
        }
        for code in [
            Code::Ok,
            Code::NotFound,
            Code::InvalidArgument,
            Code::PermissionDenied,
        ] {
            assert_eq!(status(code), Outcome::Success, "{code:?}");
        }
        assert_eq!(status(Code::Cancelled), Outcome::Ignored);
        assert_eq!(status(Code::DeadlineExceeded), Outcome::Ignored);
        assert_eq!(config.outcome(Observed::Dropped), Outcome::Ignored);
        assert_eq!(config.outcome(Observed::NoStatus), Outcome::Failure);
        assert_eq!(config.outcome(Observed::BodyError), Outcome::Failure);
    }

    #[test]
    fn failure_codes_are_configurable_but_never_ok() {
        let codes = CodeSet::EMPTY.with(Code::Ok).with(Code::ResourceExhausted);
        let config = OutlierDetection::default().failure_codes(codes.iter());
        let status = |code| config.outcome(Observed::Status(code));
        assert_eq!(status(Code::ResourceExhausted), Outcome::Failure);
        assert_eq!(status(Code::Unavailable), Outcome::Success);
        assert_eq!(status(Code::Ok), Outcome::Success);
        let config = config.failure_codes([Code::DeadlineExceeded]);
        assert_eq!(
            config.outcome(Observed::Status(Code::DeadlineExceeded)),
            Outcome::Failure,
            "a server-side deadline counts when asked"
        );
    }

    #[test]
    fn durations_are_taken_as_a_year_at_most() {
        let config = OutlierDetection::default()
            .interval(Duration::MAX)
            .base_ejection_time(Duration::MAX)
            .max_ejection_time(Duration::MAX)
            .success_decay(Duration::MAX);
        assert_eq!(config.sweep_interval(), LONGEST);
        assert_eq!(config.ejection_time(u32::MAX), LONGEST);
        // What the driver's sweep timer and an ejection compute from them.
        let now = tokio::time::Instant::now();
        let _ = now + config.sweep_interval() + config.ejection_time(u32::MAX);
    }

    #[test]
    fn ejection_time_grows_with_the_multiplier_and_caps() {
        let config = OutlierDetection::default();
        let secs = Duration::from_secs;
        assert_eq!(config.ejection_time(1), secs(30));
        assert_eq!(config.ejection_time(3), secs(90));
        assert_eq!(config.ejection_time(10), secs(300));
        assert_eq!(config.ejection_time(u32::MAX), secs(300));
        // A max below the base is taken as the base (A50).
        let config = config
            .base_ejection_time(secs(60))
            .max_ejection_time(secs(10));
        assert_eq!(config.ejection_time(4), secs(60));
    }

    #[test]
    fn settings_are_taken_into_their_ranges() {
        let config = OutlierDetection::default()
            .consecutive_failures(0)
            .max_ejection_percent(250)
            .panic_threshold(101)
            .interval(Duration::ZERO)
            .success_decay(Duration::from_secs(1));
        assert_eq!(config.consecutive_failures, None);
        assert_eq!(
            (config.max_ejection_percent, config.panic_threshold),
            (100, 100)
        );
        assert_eq!(config.sweep_interval(), Duration::from_millis(1));
        let sr = SuccessRateEjection::default()
            .stdev_factor(f64::NAN)
            .enforcement_percentage(400)
            .minimum_hosts(0)
            .request_volume(0);
        assert_eq!((sr.stdev_factor, sr.enforcement_percentage), (1.9, 100));
        assert_eq!((sr.minimum_hosts, sr.request_volume), (2, 1));
        let fp = FailurePercentageEjection::default()
            .threshold(120)
            .enforcement_percentage(120)
            .minimum_hosts(1)
            .request_volume(0);
        assert_eq!((fp.threshold, fp.enforcement_percentage), (100, 100));
        assert_eq!((fp.minimum_hosts, fp.request_volume), (2, 1));
    }
}
