//! Picking an endpoint that is up, and waiting for one when none is.

use std::sync::Arc;

use tokio::time::Instant;

use super::EndpointState;
use super::backend::Backend;
use super::state::{Snapshot, State};

impl Snapshot {
    /// An endpoint that is up, by power of two choices: from the client's zone while any
    /// of it is up, else from all.
    pub(super) fn pick(&self) -> Option<Arc<Backend>> {
        let now = Instant::now();
        let up = |i: usize| self.backends[i].is_up();
        let load = |i: usize| self.backends[i].load(now);
        let mut rng = fastrand::Rng::new();
        let local = (!self.local.is_empty())
            .then(|| self.local.pick(&mut rng, up, load))
            .flatten();
        let index = local.or_else(|| self.all.pick(&mut rng, up, load))?;
        Some(self.backends[index].clone())
    }
}

impl State {
    /// Until when a call that started at `started` and finds no endpoint up waits for one,
    /// without [`Balancer::wait_for_ready`](super::Balancer::wait_for_ready):
    ///
    /// - while discovery has not listed etcd successfully, until `startup_wait` after the
    ///   channel was made;
    /// - while an endpoint is connecting, or the subset has endpoints left to try in place
    ///   of failed members, until `startup_wait` after the call started;
    /// - otherwise not at all.
    fn startup_until(&self, started: Instant) -> Option<Instant> {
        if !self.is_synced() {
            return Some(self.created + self.config.startup_wait);
        }
        let snapshot = self.snapshot();
        let connecting = snapshot
            .backends
            .iter()
            .any(|b| b.state() == EndpointState::Connecting);
        (connecting || snapshot.candidates).then(|| started + self.config.startup_wait)
    }

    /// An endpoint that is up; waits for one up to `deadline`, or while starting up (see
    /// [`State::startup_until`]), but never past the call's own deadline (`timeout`), which
    /// fails it as tonic's channel does when a call's time runs out.
    pub(super) async fn pick(
        &self,
        deadline: Option<Instant>,
        timeout: Option<Instant>,
    ) -> Result<Arc<Backend>, tower::BoxError> {
        let started = Instant::now();
        let mut waited = false;
        loop {
            if let Some(backend) = self.snapshot().pick() {
                return Ok(backend);
            }
            let notified = self.signals.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Again, now that a change cannot slip by unnoticed.
            if let Some(backend) = self.snapshot().pick() {
                return Ok(backend);
            }
            let until = match (deadline, self.startup_until(started)) {
                (Some(d), Some(s)) => d.max(s),
                (Some(d), None) | (None, Some(d)) => d,
                (None, None) => return Err(self.unavailable().into()),
            };
            let now = Instant::now();
            match timeout {
                Some(timeout) if timeout <= until && now >= timeout => {
                    return Err(tonic::TimeoutExpired(()).into());
                }
                _ if now >= until => return Err(self.unavailable().into()),
                _ => {}
            }
            let until = timeout.map_or(until, |timeout| until.min(timeout));
            if !std::mem::replace(&mut waited, true) {
                crate::metrics::wait(&self.service);
            }
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }
}
