//! What a channel tells of itself: the discovery status and its endpoints.

use tokio::sync::watch;
use tokio::time::Instant;

use super::backend::Backend;
use super::outlier::EjectionReason;
use super::slow_start::SlowStart;
use super::{BalancedChannel, EndpointState};
use crate::discovery::DiscoveryStatus;

/// One endpoint as the balancer sees it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EndpointInfo {
    /// The etcd key.
    pub key: String,
    /// The address.
    pub addr: String,
    /// Whether it is in rotation: [`EndpointState::Ejected`] after a transport failure
    /// and while outlier detection has ejected it (see [`ejection`](Self::ejection)).
    pub state: EndpointState,
    /// Calls in flight on it.
    pub in_flight: usize,
    /// Its weight, from its metadata (1 when it has none).
    pub weight: u32,
    /// Why it is out of rotation, while it is ejected.
    pub ejection: Option<EjectionReason>,
    /// How many times outlier detection has ejected it since it was discovered.
    pub times_ejected: u64,
    /// Its recent success rate, in `[0, 1]`, as outlier detection counts calls: an
    /// average that weighs each call ending by 0.2 and forgets failures with
    /// [`OutlierDetection::success_decay`](crate::OutlierDetection::success_decay). 1 with
    /// outlier detection off.
    pub success_rate: f64,
    /// Its slow-start factor, in `(0, 1]`: the share of its weight it has while its ramp
    /// runs (see [`Balancer::slow_start`](crate::Balancer::slow_start)); 1 once the ramp
    /// has ended or with slow start off.
    pub slow_start: f64,
}

impl EndpointInfo {
    fn new(backend: &Backend, slow_start: Option<&SlowStart>, now: Instant) -> Self {
        let standing = backend.standing();
        let view = standing.view(slow_start, now);
        let state = backend.state();
        let outlier = standing.outlier.ejection(now).map(|e| e.reason);
        let (state, ejection) = match (state, outlier) {
            (EndpointState::Ejected, _) => (state, Some(EjectionReason::Connection)),
            (EndpointState::Up, Some(reason)) => (EndpointState::Ejected, Some(reason)),
            (state, _) => (state, None),
        };
        EndpointInfo {
            key: backend.key.clone(),
            addr: backend.instance.addr.clone(),
            state,
            in_flight: backend.in_flight.get(),
            weight: backend.instance.metadata.weight.unwrap_or(1).max(1),
            ejection,
            times_ejected: standing.outlier.times_ejected(),
            success_rate: standing.outlier.success_rate(now),
            slow_start: match state {
                EndpointState::Up => view.ramp,
                _ => 1.0,
            },
        }
    }
}

impl BalancedChannel {
    /// A receiver of the discovery status.
    pub fn status(&self) -> watch::Receiver<DiscoveryStatus> {
        self.status.clone()
    }

    /// The endpoints the balancer knows now, sorted by key.
    pub fn endpoints(&self) -> Vec<EndpointInfo> {
        let now = Instant::now();
        let slow_start = self.state.config.slow_start.as_ref();
        self.state
            .snapshot()
            .known
            .iter()
            .map(|b| EndpointInfo::new(b, slow_start, now))
            .collect()
    }
}
