//! Picking an endpoint that is up, and waiting for one when none is.

use std::sync::Arc;

use tokio::time::Instant;

use super::EndpointState;
use super::backend::Backend;
use super::longest::later;
use super::shared::{PickView, Shared};

impl PickView {
    /// An endpoint that is up, by power of two choices: from the client's zone while any
    /// of it is up, else from all; see [`PickView::pick_avoiding`].
    pub(super) fn pick(&self, panic: bool) -> Option<Arc<Backend>> {
        self.pick_avoiding(&[], panic)
    }

    /// An endpoint that is up and not in `avoid` where there is one (a retry goes to
    /// another endpoint), by power of two choices: from the client's zone while any of it
    /// is up, else from all.
    ///
    /// Outlier detection's ejections are skipped while any other endpoint is up, unless
    /// the set is in `panic` (most endpoints fail: calls spread over all); each
    /// draw stands with the endpoint's chance (its success-rate factor times its
    /// slow-start factor), so its share scales by it.
    pub(super) fn pick_avoiding(
        &self,
        avoid: &[Arc<Backend>],
        panic: bool,
    ) -> Option<Arc<Backend>> {
        let mut rng = fastrand::Rng::new();
        let index = (!panic)
            .then(|| self.pick_by(&mut rng, avoid, true))
            .flatten()
            .or_else(|| self.pick_by(&mut rng, avoid, false))
            .or_else(|| match avoid.is_empty() {
                true => None,
                false => self.pick_by(&mut rng, &[], false),
            })?;
        Some(self.backends[index].clone())
    }

    /// One pass of the pick; `skip_ejected`: skip outlier detection's ejections.
    fn pick_by(
        &self,
        rng: &mut fastrand::Rng,
        avoid: &[Arc<Backend>],
        skip_ejected: bool,
    ) -> Option<usize> {
        let now = Instant::now();
        let slow_start = self.slow_start.as_ref();
        let chance = |i: usize| {
            let backend = &self.backends[i];
            if !backend.is_up() || avoid.iter().any(|a| Arc::ptr_eq(a, backend)) {
                return None;
            }
            let view = backend.view(slow_start, now);
            (!(skip_ejected && view.ejected)).then(|| view.chance())
        };
        let load = |i: usize| self.backends[i].load(now);
        let due = |i: usize, losses: u64| self.backends[i].last_pick.claim_if_due(now, losses);
        let local = (!self.local.is_empty())
            .then(|| self.local.pick(rng, chance, load, due))
            .flatten();
        let index = local.or_else(|| self.all.pick(rng, chance, load, due))?;
        self.backends[index].last_pick.mark(now);
        Some(index)
    }
}

impl Shared {
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
            return Some(later(self.created, self.config.startup_wait));
        }
        let snapshot = self.snapshot();
        let connecting = snapshot
            .backends
            .iter()
            .any(|b| b.state() == EndpointState::Connecting);
        (connecting || snapshot.candidates).then(|| later(started, self.config.startup_wait))
    }

    /// An endpoint that is up; waits for one up to `deadline`, or while starting up (see
    /// [`Shared::startup_until`]), but never past the call's own deadline (`timeout`), which
    /// fails it as tonic's channel does when a call's time runs out.
    pub(super) async fn pick(
        &self,
        deadline: Option<Instant>,
        timeout: Option<Instant>,
        avoid: &[Arc<Backend>],
    ) -> Result<Arc<Backend>, tower::BoxError> {
        let started = Instant::now();
        // Counts the wait, once, and records its duration when the pick ends.
        let mut waiting = None;
        loop {
            if let Some(backend) = self.snapshot().pick_avoiding(avoid, self.in_panic()) {
                return Ok(backend);
            }
            let notified = self.signals.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Again, now that a change cannot slip by unnoticed.
            if let Some(backend) = self.snapshot().pick_avoiding(avoid, self.in_panic()) {
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
            waiting.get_or_insert_with(|| crate::metrics::Waiting::start(&self.service));
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }
}
