//! Without the `metrics` feature: every call is empty, and compiled away.

#![allow(dead_code)]

use super::*;

#[inline(always)]
pub(crate) fn endpoints(_: &str, _: impl IntoIterator<Item = EndpointState>) {}
#[inline(always)]
pub(crate) fn ejection(_: &str, _: Ejection) {}
#[inline(always)]
pub(crate) fn readmission(_: &str) {}
#[inline(always)]
pub(crate) fn connection_attempt(_: &str, _: bool) {}
#[inline(always)]
pub(crate) fn retry(_: &str, _: Retry) {}
#[inline(always)]
pub(crate) fn retry_throttled(_: &str) {}
#[inline(always)]
pub(crate) fn fail_fast(_: &str) {}
/// A call waiting for an endpoint: nothing without the feature.
#[derive(Debug)]
pub(crate) struct Waiting;

impl Waiting {
    #[inline(always)]
    pub(crate) fn start(_: &str) -> Self {
        Waiting
    }
}
#[inline(always)]
pub(crate) fn discovery_status(_: &str, _: &DiscoveryStatus) {}
#[inline(always)]
pub(crate) fn discovery_listed(_: &str) {}
#[inline(always)]
pub(crate) fn discovery_watch_opened(_: &str) {}
#[inline(always)]
pub(crate) fn registrar_status(_: &RegistrationStatus) {}
#[inline(always)]
pub(crate) fn keepalive_failure(_: KeepAlive) {}
#[inline(always)]
pub(crate) fn lease_granted() {}
