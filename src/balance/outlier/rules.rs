//! The settings of the two checks the sweep runs over each interval's calls (gRFC A50,
//! from Envoy): success rate and failure percentage.

/// Ejects an endpoint whose success rate is far below the others': below `mean − stdev ×
/// stdev_factor` over the endpoints with enough calls in the interval (A50's success rate
/// algorithm, from Envoy).
///
/// Defaults (A50): `stdev_factor` 1.9, `enforcement_percentage` 100, `minimum_hosts` 5,
/// `request_volume` 100. With fewer than about 5 endpoints, one failing endpoint cannot
/// fall below the threshold (mean − 1.9 stdev is then below 0): consecutive failures and
/// the pick factor cover small sets.
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct SuccessRateEjection {
    pub(super) stdev_factor: f64,
    pub(super) enforcement_percentage: u32,
    pub(super) minimum_hosts: usize,
    pub(super) request_volume: u64,
}

impl Default for SuccessRateEjection {
    fn default() -> Self {
        SuccessRateEjection {
            stdev_factor: 1.9,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 100,
        }
    }
}

impl SuccessRateEjection {
    /// How many standard deviations below the mean an endpoint's rate must be. Default:
    /// 1.9 (A50 writes 1900, in thousandths). Below 0 or not a number is taken as 1.9.
    pub fn stdev_factor(mut self, factor: f64) -> Self {
        self.stdev_factor = if factor >= 0.0 && factor.is_finite() {
            factor
        } else {
            1.9
        };
        self
    }

    /// The chance, in percent, that a detected outlier is ejected. Default: 100. At most
    /// 100.
    pub fn enforcement_percentage(mut self, percent: u32) -> Self {
        self.enforcement_percentage = percent.min(100);
        self
    }

    /// The fewest endpoints with enough calls for the check to run. Default: 5. At
    /// least 2.
    pub fn minimum_hosts(mut self, hosts: usize) -> Self {
        self.minimum_hosts = hosts.max(2);
        self
    }

    /// The fewest calls in the interval for an endpoint to take part. Default: 100. At
    /// least 1.
    pub fn request_volume(mut self, calls: u64) -> Self {
        self.request_volume = calls.max(1);
        self
    }
}

/// Ejects an endpoint whose share of failed calls in the interval is at least
/// `threshold` percent, whatever the others do (A50's failure percentage algorithm).
///
/// Defaults (A50): `threshold` 85, `enforcement_percentage` 100, `minimum_hosts` 5,
/// `request_volume` 50.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct FailurePercentageEjection {
    pub(super) threshold: u32,
    pub(super) enforcement_percentage: u32,
    pub(super) minimum_hosts: usize,
    pub(super) request_volume: u64,
}

impl Default for FailurePercentageEjection {
    fn default() -> Self {
        FailurePercentageEjection {
            threshold: 85,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 50,
        }
    }
}

impl FailurePercentageEjection {
    /// The failure share, in percent, from which an endpoint is ejected. Default: 85.
    /// At most 100.
    pub fn threshold(mut self, percent: u32) -> Self {
        self.threshold = percent.min(100);
        self
    }

    /// The chance, in percent, that a detected outlier is ejected. Default: 100. At most
    /// 100.
    pub fn enforcement_percentage(mut self, percent: u32) -> Self {
        self.enforcement_percentage = percent.min(100);
        self
    }

    /// The fewest endpoints in rotation for the check to run. Default: 5. At least 2.
    pub fn minimum_hosts(mut self, hosts: usize) -> Self {
        self.minimum_hosts = hosts.max(2);
        self
    }

    /// The fewest calls in the interval for an endpoint to take part. Default: 50. At
    /// least 1.
    pub fn request_volume(mut self, calls: u64) -> Self {
        self.request_volume = calls.max(1);
        self
    }
}
