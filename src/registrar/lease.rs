//! The owned task that keeps a process's lease alive, and its keys in etcd.
//!
//! ```text
//!  Grant ──ok──► Put{lease} ──ok──► KeepAlive{lease, from}
//!   ▲  │          ▲                       │
//!   └──┘ backoff  ├─ at once ◄────────────┤ a key was deleted, a command was served
//!   ▲             └─ backoff, same lease ◄┤ the keepalive stream broke
//!   └─────────── backoff ◄────────────────┘ etcd says the lease is gone (also from Put)
//!   └─────────── backoff ◄─ gone ─ Probe{lease, from} ◄─ KeepAlive: none answered for the TTL
//!                          (alive: back to KeepAlive, nothing written)
//! ```
//!
//! A keepalive unanswered for TTL/3 opens the stream again on the same lease. Once none has
//! been answered for the lease's whole TTL, the task asks etcd for the lease's TTL left
//! (LeaseTimeToLive, which writes nothing), withdrawn or not: if the lease lives, the task
//! keeps it and goes on keeping it alive; if it is gone, it grants a new one; if etcd does not
//! answer, it asks again after a backoff of at most TTL/3. The status says `Retrying` until a
//! keepalive is answered or the keys are registered again.
//!
//! One lease holds every key the process registers. After an etcd restart or a leader change
//! the lease usually survives, because etcd extends leases on recovery, so a broken keepalive
//! stream is retried on the same lease first: a new lease would put a duplicate key. Only
//! when etcd says the lease is gone does the task grant a new one and put the keys again. It
//! watches its own keys and puts back one that someone deletes. It never gives up.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::RegistrationStatus;
use crate::backoff::{Failure, Retry};
use crate::error::Chain;
use crate::error::Error;
use crate::etcd::seam::lease::Leases;
use crate::format::{Format, Instance};
use crate::metrics::KeepAlive;
use keepalive::Interrupt;

mod keepalive;
mod writes;

/// What the registration asks of its lease task.
pub(super) enum Command {
    /// Register one more instance under the same lease; replies with its key.
    Add {
        service: String,
        instance: Instance,
        reply: oneshot::Sender<Result<String, Error>>,
    },
    /// Take the keys out of etcd (`true`), or put them back (`false`), keeping the lease;
    /// replies once done.
    Withdraw {
        withdraw: bool,
        reply: oneshot::Sender<Result<(), Error>>,
    },
}

/// Where the lease task is: one state per step of the diagram above.
pub(super) enum LeaseState {
    /// A permanent error (permission denied, bad credentials): retrying cannot help.
    Failed,
    Grant,
    Put {
        lease_id: i64,
    },
    KeepAlive {
        lease_id: i64,
        from: i64,
    },
    /// No keepalive answered for the TTL: ask etcd whether it still holds the lease.
    Probe {
        lease_id: i64,
        from: i64,
    },
}

/// An instance the lease holds, with its key (which may change with the lease).
pub(super) struct RegisteredInstance {
    service: String,
    instance: Instance,
    pub(super) key: String,
}

pub(super) struct LeaseTask {
    /// etcd, through the crate's seam: the registrar's client, or a fake in unit tests.
    pub(super) client: Arc<dyn Leases>,
    pub(super) format: Arc<dyn Format>,
    pub(super) entries: Vec<RegisteredInstance>,
    pub(super) withdrawn: bool,
    pub(super) ttl: Duration,
    pub(super) request_timeout: Duration,
    pub(super) retry: Retry,
    pub(super) status: Arc<watch::Sender<RegistrationStatus>>,
    /// The last lease granted (0: none yet), which shutdown revokes whatever the status.
    pub(super) lease: Arc<AtomicI64>,
    /// When the lease expires unless a keepalive is answered: its TTL from the grant, or
    /// the TTL left in the last answer from when that keepalive was sent.
    pub(super) expires: Instant,
}

impl LeaseTask {
    pub(super) fn entry(
        &self,
        service: String,
        instance: Instance,
        lease_id: i64,
    ) -> RegisteredInstance {
        let key = self.format.key(&service, &instance, lease_id);
        RegisteredInstance {
            service,
            instance,
            key,
        }
    }

    /// The first registration, before the task runs: grants the lease and puts the key of
    /// `instance`. Returns the key and the state the task starts in.
    pub(super) async fn register_first(
        &mut self,
        service: String,
        instance: Instance,
    ) -> Result<(String, LeaseState), Error> {
        let lease_id = self.grant().await?;
        let entry = self.entry(service, instance, lease_id);
        let key = entry.key.clone();
        self.entries.push(entry);
        let from = self.put_all(lease_id).await?;
        info!(key = %key, lease_id, "registered");
        (self.status).send_replace(RegistrationStatus::Registered { lease_id });
        crate::metrics::registrar_status(&self.status.borrow());
        Ok((key, LeaseState::KeepAlive { lease_id, from }))
    }

    /// Runs until `stop` fires or its sender is dropped.
    pub(super) async fn run(
        mut self,
        start: LeaseState,
        mut commands: mpsc::Receiver<Command>,
        mut stop: watch::Receiver<bool>,
    ) {
        // The first registration succeeded before the task starts: a permission denied from
        // now on is a role revoked for a while.
        self.retry.succeeded();
        let mut state = start;
        loop {
            tokio::select! {
                // Biased: once asked to stop, no further request is started.
                biased;
                _ = stop.wait_for(|stop| *stop) => return,
                next = self.step(state, &mut commands) => state = next,
            }
        }
    }

    async fn step(
        &mut self,
        state: LeaseState,
        commands: &mut mpsc::Receiver<Command>,
    ) -> LeaseState {
        match state {
            LeaseState::Failed => std::future::pending().await,
            LeaseState::Grant => match self.grant().await {
                Ok(lease_id) => LeaseState::Put { lease_id },
                Err(error) => self.fail(error, LeaseState::Grant).await,
            },
            LeaseState::Put { lease_id } => {
                let put = self.put_all(lease_id).await;
                self.after_put(lease_id, put).await
            }
            LeaseState::KeepAlive { lease_id, from } => {
                let interrupt = self.keep_alive(lease_id, from, commands).await;
                self.after_keep_alive(lease_id, from, interrupt).await
            }
            LeaseState::Probe { lease_id, from } => self.probe(lease_id, from).await,
        }
    }

    /// The state after putting the keys under `lease_id`.
    async fn after_put(&mut self, lease_id: i64, put: Result<i64, Error>) -> LeaseState {
        match put {
            Ok(from) => {
                if self.withdrawn {
                    info!(
                        lease_id,
                        keys = self.entries.len(),
                        "lease held, keys withdrawn: none in etcd until restored"
                    );
                } else {
                    info!(lease_id, keys = self.entries.len(), "registered");
                }
                self.retry.succeeded();
                (self.status).send_replace(RegistrationStatus::Registered { lease_id });
                crate::metrics::registrar_status(&self.status.borrow());
                LeaseState::KeepAlive { lease_id, from }
            }
            Err(error) if error.is_lease_not_found() => self.fail(error, LeaseState::Grant).await,
            Err(error) => self.fail(error, LeaseState::Put { lease_id }).await,
        }
    }

    /// The state after keeping `lease_id` alive was interrupted.
    async fn after_keep_alive(
        &mut self,
        lease_id: i64,
        from: i64,
        interrupt: Interrupt,
    ) -> LeaseState {
        match interrupt {
            Interrupt::Rewrite => LeaseState::Put { lease_id },
            // No answer since the lease's TTL ran out: etcd has most likely expired it, and
            // whatever holds the keepalives may never say so. Ask etcd.
            Interrupt::Stalled if Instant::now() >= self.expires => {
                self.unanswered_for_ttl(lease_id, from)
            }
            Interrupt::Stalled => {
                crate::metrics::keepalive_failure(KeepAlive::Stalled);
                debug!(lease_id, "keepalive unanswered, opening the stream again");
                LeaseState::KeepAlive { lease_id, from }
            }
            Interrupt::Refused(error) => self.failed_for_good(error),
            Interrupt::Failed(error) if error.is_lease_not_found() => {
                warn!(lease_id, "lease lost, registering again");
                crate::metrics::keepalive_failure(KeepAlive::LeaseLost);
                self.fail(error, LeaseState::Grant).await
            }
            Interrupt::Failed(error) => {
                crate::metrics::keepalive_failure(KeepAlive::Error);
                self.fail(error, LeaseState::Put { lease_id }).await
            }
        }
    }

    /// No keepalive answered for the lease's TTL: reports `Retrying`, and goes to ask etcd.
    fn unanswered_for_ttl(&mut self, lease_id: i64, from: i64) -> LeaseState {
        warn!(
            lease_id,
            "keepalives unanswered for the lease's ttl, asking etcd for the lease"
        );
        crate::metrics::keepalive_failure(KeepAlive::Stalled);
        let unanswered = etcd_client::Error::LeaseKeepAliveError(
            "no keepalive answered for the lease's ttl".into(),
        );
        let error = Error::KeepAlive {
            lease_id,
            source: Arc::new(unanswered),
        };
        let attempt = self.retry.attempt().saturating_add(1);
        (self.status).send_replace(RegistrationStatus::Retrying { attempt, error });
        crate::metrics::registrar_status(&self.status.borrow());
        LeaseState::Probe { lease_id, from }
    }

    /// Asks etcd whether it holds `lease_id`: kept if it does (the status stays `Retrying`
    /// until a keepalive is answered), a new lease granted if not.
    async fn probe(&mut self, lease_id: i64, from: i64) -> LeaseState {
        let asked = Instant::now();
        let lost = match self.time_to_live(lease_id).await {
            Ok(ttl) if ttl > 0 => {
                debug!(lease_id, ttl, "etcd holds the lease, keeping it");
                self.expires = asked + Duration::from_secs(ttl.unsigned_abs());
                return LeaseState::KeepAlive { lease_id, from };
            }
            Ok(_) => Error::LeaseLost { lease_id },
            Err(error) if error.is_lease_not_found() => error,
            Err(error) => return self.fail(error, LeaseState::Probe { lease_id, from }).await,
        };
        warn!(lease_id, "lease lost, registering again");
        crate::metrics::keepalive_failure(KeepAlive::LeaseLost);
        self.fail(lost, LeaseState::Grant).await
    }

    fn mark_registered(&mut self, lease_id: i64) {
        if let Some(after) = self.retry.succeeded() {
            info!(
                lease_id,
                ?after,
                "etcd answers again, the registration holds"
            );
        }
        self.status.send_if_modified(|status| {
            let same =
                matches!(status, RegistrationStatus::Registered { lease_id: l } if *l == lease_id);
            if !same {
                *status = RegistrationStatus::Registered { lease_id };
            }
            !same
        });
        crate::metrics::registrar_status(&self.status.borrow());
    }

    /// Reports a failure that retrying cannot fix; the task then waits to be stopped.
    fn failed_for_good(&mut self, error: Error) -> LeaseState {
        warn!(error = %Chain(&error), "registration failed for good");
        self.status
            .send_replace(RegistrationStatus::Failed { error });
        crate::metrics::registrar_status(&self.status.borrow());
        LeaseState::Failed
    }

    async fn fail(&mut self, error: Error, next: LeaseState) -> LeaseState {
        if error.is_lease_not_found() {
            // etcd answered, so it is up; only the lease is gone. Grant again after a short
            // jittered pause, not after the backoff that the outage built up.
            self.retry.reset();
        }
        // While the lease may be alive (etcd extends leases by their TTL when it recovers),
        // retry at least every TTL/3, jittered, to reach etcd before the lease expires. That
        // is the keepalive rate: no more load on etcd than when all is well.
        let alive = matches!(next, LeaseState::Put { .. } | LeaseState::Probe { .. });
        let cap = alive.then_some(self.ttl / 3);
        const RETRYING: &str = "etcd request failed, the registration retries";
        match self.retry.failed(error, cap, RETRYING) {
            Failure::Permanent(error) => self.failed_for_good(error),
            Failure::Transient {
                error,
                attempt,
                delay,
            } => {
                self.status
                    .send_replace(RegistrationStatus::Retrying { attempt, error });
                crate::metrics::registrar_status(&self.status.borrow());
                tokio::time::sleep(delay).await;
                next
            }
        }
    }
}

/// The TTL in whole seconds, rounded up.
pub(super) fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
