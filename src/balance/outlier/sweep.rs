//! Decisions over the whole set of endpoints in rotation: whether the set allows an
//! ejection (max ejection percent, panic threshold), and the periodic sweep that runs
//! A50's success-rate and failure-percentage algorithms.
//!
//! Each function takes the states of the endpoints in rotation (connected, ejected ones
//! included) as a slice of anything that derefs to [`OutlierState`]: plain `&mut`
//! references in tests, the endpoints' lock guards in the balancer.

use std::ops::{Deref, DerefMut};

use tokio::time::Instant;

use super::config::OutlierDetection;
use super::rules::{FailurePercentageEjection, SuccessRateEjection};
use super::state::{EjectionReason, OutlierState};

/// Whether the set allows ejecting endpoint `index` now:
///
/// - there are at least 2 endpoints, ejection is on (`max_ejection_percent` > 0), and
///   the endpoint is not ejected already;
/// - another endpoint stays in rotation: ejection never empties the set;
/// - the ejected share stays within `max_ejection_percent`, except that one endpoint may
///   always be ejected (A50: "will eject at least one address regardless of the value");
/// - not in panic: at least `panic_threshold` percent of the *other* endpoints in
///   rotation are healthy. When most of them fail too, the failure is shared (a common
///   dependency, an overload), ejecting would only shrink the set and keep servers out
///   for minutes after it recovers, so calls spread instead, weighted by the pick factor.
pub(crate) fn allows_ejection<E: Deref<Target = OutlierState>>(
    endpoints: &[E],
    index: usize,
    config: &OutlierDetection,
    now: Instant,
) -> bool {
    let total = endpoints.len();
    let Some(candidate) = endpoints.get(index) else {
        return false;
    };
    if total < 2 || config.max_ejection_percent == 0 || candidate.is_ejected(now) {
        return false;
    }
    let ejected = endpoints.iter().filter(|e| e.is_ejected(now)).count();
    if ejected + 1 >= total {
        return false;
    }
    let max_percent = config.max_ejection_percent as usize;
    if ejected > 0 && (ejected + 1) * 100 > max_percent * total {
        return false;
    }
    let others = total - ejected - 1;
    let healthy = endpoints
        .iter()
        .enumerate()
        .filter(|&(i, e)| i != index && e.is_healthy(now))
        .count();
    healthy * 100 >= config.panic_threshold as usize * others
}

/// Ejects endpoint `index` for `reason` if the set allows it (see [`allows_ejection`]);
/// returns whether it did. Called by the shell when [`OutlierState::record`] asks for
/// an ejection, and by the sweep.
pub(crate) fn try_eject<E: DerefMut<Target = OutlierState>>(
    endpoints: &mut [E],
    index: usize,
    reason: EjectionReason,
    config: &OutlierDetection,
    now: Instant,
) -> bool {
    if !allows_ejection(endpoints, index, config, now) {
        return false;
    }
    endpoints[index].eject(reason, config, now);
    true
}

/// Whether the set is in panic: fewer than `panic_threshold` percent of the endpoints in
/// rotation are healthy (recent success rate at least 50 %). While it is, no endpoint is
/// ejected; for `endpoints()` and tracing.
pub(crate) fn in_panic<E: Deref<Target = OutlierState>>(
    endpoints: &[E],
    config: &OutlierDetection,
    now: Instant,
) -> bool {
    let in_rotation = endpoints.iter().filter(|e| !e.is_ejected(now)).count();
    let healthy = endpoints.iter().filter(|e| e.is_healthy(now)).count();
    healthy * 100 < config.panic_threshold as usize * in_rotation
}

/// The periodic step, to run every [`sweep_interval`](OutlierDetection::sweep_interval)
/// (A50's timer): closes every endpoint's interval, ejects success-rate and
/// failure-percentage outliers over the interval's calls (worst first, each subject to
/// [`allows_ejection`] and drawn against its enforcement percentage with `rng`), then
/// relaxes the ejection multiplier of every endpoint that spent the whole interval in
/// rotation. Returns the endpoints
/// it ejected, by index, with the reason. Endpoints come back by themselves when their
/// ejection ends; the sweep does not need to run for that.
pub(crate) fn sweep<E: DerefMut<Target = OutlierState>>(
    endpoints: &mut [E],
    config: &OutlierDetection,
    now: Instant,
    rng: &mut fastrand::Rng,
) -> Vec<(usize, EjectionReason)> {
    endpoints.iter_mut().for_each(|e| e.close_interval());
    let mut ejected = Vec::new();
    if let Some(rule) = config.success_rate {
        let outliers = success_rate_outliers(endpoints, &rule);
        let reason = EjectionReason::SuccessRate;
        ejected.extend(eject_each(
            endpoints,
            outliers,
            rule.enforcement_percentage,
            reason,
            config,
            now,
            rng,
        ));
    }
    if let Some(rule) = config.failure_percentage {
        let outliers = failure_percentage_outliers(endpoints, &rule);
        let reason = EjectionReason::FailurePercentage;
        ejected.extend(eject_each(
            endpoints,
            outliers,
            rule.enforcement_percentage,
            reason,
            config,
            now,
            rng,
        ));
    }
    endpoints
        .iter_mut()
        .for_each(|e| e.relax_multiplier(config.interval, now));
    ejected
}

/// Ejects each outlier the set allows, with a draw against the enforcement percentage
/// (made only for an ejection the set allows).
fn eject_each<E: DerefMut<Target = OutlierState>>(
    endpoints: &mut [E],
    outliers: Vec<usize>,
    enforcement_percentage: u32,
    reason: EjectionReason,
    config: &OutlierDetection,
    now: Instant,
    rng: &mut fastrand::Rng,
) -> Vec<(usize, EjectionReason)> {
    let mut ejected = Vec::new();
    for index in outliers {
        if allows_ejection(endpoints, index, config, now)
            && rng.u32(0..100) < enforcement_percentage
            && try_eject(endpoints, index, reason, config, now)
        {
            ejected.push((index, reason));
        }
    }
    ejected
}

/// The endpoints whose success rate in the closed interval is below `mean − stdev ×
/// stdev_factor` over those with enough calls, worst first (A50's success rate
/// algorithm); none when fewer than `minimum_hosts` have enough calls.
fn success_rate_outliers<E: Deref<Target = OutlierState>>(
    endpoints: &[E],
    rule: &SuccessRateEjection,
) -> Vec<usize> {
    let rated: Vec<(usize, f64)> = endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| e.last_interval().total() >= rule.request_volume)
        .map(|(i, e)| (i, e.last_interval().success_rate()))
        .collect();
    if rated.len() < rule.minimum_hosts {
        return Vec::new();
    }
    let n = rated.len() as f64;
    let mean = rated.iter().map(|&(_, r)| r).sum::<f64>() / n;
    let variance = rated.iter().map(|&(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
    let threshold = mean - variance.max(0.0).sqrt() * rule.stdev_factor;
    worst_first(rated.into_iter().filter(|&(_, r)| r < threshold))
}

/// The endpoints whose failure share in the closed interval is at least `threshold`
/// percent, among those with enough calls, worst first (A50's failure percentage
/// algorithm); none when the set has fewer than `minimum_hosts` endpoints.
fn failure_percentage_outliers<E: Deref<Target = OutlierState>>(
    endpoints: &[E],
    rule: &FailurePercentageEjection,
) -> Vec<usize> {
    if endpoints.len() < rule.minimum_hosts {
        return Vec::new();
    }
    let failing = endpoints.iter().enumerate().filter_map(|(i, e)| {
        let counts = e.last_interval();
        let enough = counts.total() >= rule.request_volume;
        let share = counts.failures * 100 >= u64::from(rule.threshold) * counts.total();
        (enough && share).then(|| (i, counts.success_rate()))
    });
    worst_first(failing)
}

/// The indexes, lowest success rate first.
fn worst_first(rated: impl Iterator<Item = (usize, f64)>) -> Vec<usize> {
    let mut rated: Vec<(usize, f64)> = rated.collect();
    rated.sort_by(|a, b| a.1.total_cmp(&b.1));
    rated.into_iter().map(|(i, _)| i).collect()
}
