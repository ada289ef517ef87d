//! Outlier detection: taking endpoints that fail by gRPC status out of rotation, after
//! gRFC A50 (gRPC's outlier detection), Envoy's outlier detection and panic threshold,
//! and the success-rate EWMA that go-zero and Kratos fold into the pick.
//!
//! A transport failure already ejects an endpoint until a probe reconnects. This covers
//! the endpoint that is up but fails: it answers at once with `UNAVAILABLE` or
//! `INTERNAL`, so a latency-aware pick would take it for the best one.
//!
//! # The parts
//!
//! - [`OutlierDetection`]: the settings, and which call outcomes count
//!   ([`OutlierDetection::outcome`]).
//! - [`OutlierState`]: one per endpoint. It counts the calls of the current interval and
//!   the failures in a row, keeps a recent success rate whose square is the **pick
//!   factor**, and holds the ejection, which ends by itself at its `until`.
//! - `sweep`: what depends on the whole set: [`try_eject`] under the max ejection
//!   percent and the panic threshold, and the periodic [`sweep()`] (success rate and
//!   failure percentage over the closed interval, then the multipliers relax).
//!
//! # How the balancer drives it
//!
//! 1. Give each endpoint in rotation (connected) an [`OutlierState`] when it comes up;
//!    drop it when the endpoint leaves.
//! 2. When a call ends, classify it: `outcome(observed)` for what the response body
//!    observer saw; [`Outcome::Failure`] for a transport error once the call was sent;
//!    [`Outcome::Ignored`] for the call's own deadline passing locally. Then
//!    [`OutlierState::record`]; if it returns `true`, lock the set and [`try_eject`] the
//!    endpoint for [`EjectionReason::ConsecutiveFailures`].
//! 3. Every [`sweep_interval`](OutlierDetection::sweep_interval), lock the set and run
//!    [`sweep()`]; log what it ejected.
//! 4. In the pick, skip an endpoint for which [`OutlierState::is_ejected`] holds, and
//!    weigh the others by [`OutlierState::pick_factor`] (multiply it into the weight, or
//!    divide the load by it). Start the slow-start ramp at
//!    [`OutlierState::readmitted_at`].
//!
//! The set never loses its last endpoint in rotation, and never more than the max
//! ejection percent (but always one, if another stays); when most endpoints fail alike,
//! none is ejected and the pick factor spreads the calls (see [`allows_ejection`]).

mod config;
mod rules;
mod state;
mod success;
mod sweep;
#[cfg(test)]
mod tests;

pub(crate) use config::Outcome;
pub use config::OutlierDetection;
pub use rules::{FailurePercentageEjection, SuccessRateEjection};
pub use state::EjectionReason;
pub(crate) use state::OutlierState;
pub(crate) use sweep::{in_panic, sweep, try_eject};
#[cfg(test)]
pub(crate) use {
    state::{Counts, Ejection},
    success::MIN_PICK_FACTOR,
    sweep::allows_ejection,
};
