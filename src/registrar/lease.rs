//! The owned task that keeps a process's lease alive, and its keys in etcd.
//!
//! ```text
//!  Grant ──ok──► Put{lease} ──ok──► KeepAlive{lease, from}
//!   ▲  │          ▲                       │
//!   └──┘ backoff  ├─ at once ◄────────────┤ a key was deleted, a command was served
//!   ▲             └─ backoff, same lease ◄┤ the keepalive stream broke
//!   └─────────── backoff ◄────────────────┘ etcd says the lease is gone (also from Put)
//! ```
//!
//! One lease holds every key the process registers. After an etcd restart or a leader change
//! the lease usually survives, because etcd extends leases on recovery, so a broken keepalive
//! stream is retried on the same lease first: a new lease would put a duplicate key. Only
//! when etcd says the lease is gone does the task grant a new one and put the keys again. It
//! watches its own keys and puts back one that someone deletes. It never gives up.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{Client, EventType, PutOptions, WatchOptions, WatchStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::RegistrationStatus;
use crate::Error;
use crate::backoff::{Failure, Retry};
use crate::error::Chain;
use crate::etcd::request::request;
use crate::format::{Format, Instance};
use crate::metrics::KeepAlive;

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

pub(super) enum State {
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
}

/// Why keeping alive stopped.
enum Interrupt {
    Failed(Error),
    /// A key is missing, or must be written again.
    Rewrite,
    /// A keepalive went unanswered for a third of the TTL: its member may be frozen, so the
    /// stream is opened again at once, most likely on another member.
    Stalled,
}

pub(super) struct Entry {
    service: String,
    instance: Instance,
    pub(super) key: String,
}

pub(super) struct LeaseTask {
    pub(super) client: Client,
    pub(super) format: Arc<dyn Format>,
    pub(super) entries: Vec<Entry>,
    pub(super) withdrawn: bool,
    pub(super) ttl: Duration,
    pub(super) request_timeout: Duration,
    pub(super) retry: Retry,
    pub(super) status: Arc<watch::Sender<RegistrationStatus>>,
    /// The last lease granted (0: none yet), which shutdown revokes whatever the status.
    pub(super) lease: Arc<AtomicI64>,
}

impl LeaseTask {
    pub(super) fn entry(&self, service: String, instance: Instance, lease_id: i64) -> Entry {
        let key = self.format.key(&service, &instance, lease_id);
        Entry {
            service,
            instance,
            key,
        }
    }

    /// Runs until `stop` fires or its sender is dropped.
    pub(super) async fn run(
        mut self,
        start: State,
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

    async fn step(&mut self, state: State, commands: &mut mpsc::Receiver<Command>) -> State {
        match state {
            State::Failed => std::future::pending().await,
            State::Grant => match self.grant().await {
                Ok(lease_id) => State::Put { lease_id },
                Err(error) => self.fail(error, State::Grant).await,
            },
            State::Put { lease_id } => match self.put_all(lease_id).await {
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
                    self.status
                        .send_replace(RegistrationStatus::Registered { lease_id });
                    crate::metrics::registrar_status(&self.status.borrow());
                    State::KeepAlive { lease_id, from }
                }
                Err(error) if error.is_lease_not_found() => self.fail(error, State::Grant).await,
                Err(error) => self.fail(error, State::Put { lease_id }).await,
            },
            State::KeepAlive { lease_id, from } => {
                match self.keep_alive(lease_id, from, commands).await {
                    Interrupt::Rewrite => State::Put { lease_id },
                    Interrupt::Stalled => {
                        crate::metrics::keepalive_failure(KeepAlive::Stalled);
                        debug!(lease_id, "keepalive unanswered, opening the stream again");
                        State::KeepAlive { lease_id, from }
                    }
                    Interrupt::Failed(error) if error.is_lease_not_found() => {
                        warn!(lease_id, "lease lost, registering again");
                        crate::metrics::keepalive_failure(KeepAlive::LeaseLost);
                        self.fail(error, State::Grant).await
                    }
                    Interrupt::Failed(error) => {
                        crate::metrics::keepalive_failure(KeepAlive::Error);
                        self.fail(error, State::Put { lease_id }).await
                    }
                }
            }
        }
    }

    pub(super) async fn grant(&mut self) -> Result<i64, Error> {
        let ttl_secs = ttl_secs(self.ttl);
        let response = request("granting a lease", self.request_timeout, || async {
            let mut lease = self.client.lease_client();
            lease
                .grant(ttl_secs, None)
                .await
                .map_err(|source| Error::LeaseGrant {
                    ttl_secs,
                    source: Arc::new(source),
                })
        })
        .await?;
        self.lease.store(response.id(), Ordering::Release);
        crate::metrics::lease_granted();
        Ok(response.id())
    }

    /// Puts every key under `lease_id` (unless withdrawn); returns the revision of the first
    /// put, from which the keys are watched: a key deleted while the later ones were being
    /// put is then seen, and put back.
    pub(super) async fn put_all(&mut self, lease_id: i64) -> Result<i64, Error> {
        for entry in &mut self.entries {
            // Formats that name the key after the lease get the new key.
            entry.key = self.format.key(&entry.service, &entry.instance, lease_id);
        }
        if self.withdrawn {
            // Make sure they are out: a withdraw may have been cut short.
            self.delete_all().await?;
            return Ok(0);
        }
        let mut first = None;
        for entry in &self.entries {
            let revision = self.put(entry, lease_id).await?;
            first.get_or_insert(revision);
        }
        Ok(first.unwrap_or(0))
    }

    async fn put(&self, entry: &Entry, lease_id: i64) -> Result<i64, Error> {
        let value = self.format.value(&entry.service, &entry.instance);
        let response = request("putting a key", self.request_timeout, || async {
            let mut kv = self.client.kv_client();
            let options = PutOptions::new().with_lease(lease_id);
            kv.put(entry.key.as_str(), value.clone(), Some(options))
                .await
                .map_err(|source| Error::Put {
                    key: entry.key.clone(),
                    lease_id,
                    source: Arc::new(source),
                })
        })
        .await?;
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    async fn delete_all(&self) -> Result<(), Error> {
        for entry in &self.entries {
            request("deleting a key", self.request_timeout, || async {
                let mut kv = self.client.kv_client();
                kv.delete(entry.key.as_str(), None)
                    .await
                    .map_err(|source| Error::Delete {
                        key: entry.key.clone(),
                        source: Arc::new(source),
                    })
            })
            .await?;
        }
        Ok(())
    }

    /// Keeps `lease_id` alive every TTL/3, watches the keys from revision `from`, and serves
    /// commands, until something needs another state.
    async fn keep_alive(
        &mut self,
        lease_id: i64,
        from: i64,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Interrupt {
        match self.keep_alive_inner(lease_id, from, commands).await {
            Ok(interrupt) => interrupt,
            Err(error) => Interrupt::Failed(error),
        }
    }

    async fn keep_alive_inner(
        &mut self,
        lease_id: i64,
        from: i64,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Result<Interrupt, Error> {
        let wrap = |source| Error::KeepAlive {
            lease_id,
            source: Arc::new(source),
        };
        let open = || async {
            let mut lease = self.client.lease_client();
            lease.keep_alive(lease_id).await.map_err(wrap)
        };
        let (mut keeper, mut responses) =
            request("opening a keepalive stream", self.request_timeout, open).await?;
        let open = || async { self.watch_keys(from).await.map_err(wrap) };
        let mut keys = request("watching the keys", self.request_timeout, open).await?;
        let interval = self.ttl / 3;
        let opened = Instant::now();
        let mut next_keepalive = Instant::now();
        loop {
            tokio::select! {
                // Biased: the keepalive is due before anything else is looked at.
                biased;
                _ = tokio::time::sleep_until(next_keepalive) => {
                    keeper.keep_alive().await.map_err(wrap)?;
                    // Unanswered for a third of the TTL: one more such wait on another member
                    // still comes before the lease expires.
                    let after = interval.min(self.request_timeout);
                    let Ok(response) = tokio::time::timeout(after, responses.message()).await else {
                        return Ok(Interrupt::Stalled);
                    };
                    let response = response
                        .map_err(wrap)?
                        .ok_or_else(|| wrap(etcd_client::Error::LeaseKeepAliveError("stream ended".into())))?;
                    if response.ttl() <= 0 {
                        return Err(Error::LeaseLost { lease_id });
                    }
                    if opened.elapsed() >= self.ttl {
                        self.retry.reset();
                    }
                    self.mark_registered(lease_id);
                    next_keepalive = Instant::now() + interval;
                }
                message = next_message(&mut keys) => {
                    let response = message.map_err(wrap)?.ok_or_else(|| {
                        wrap(etcd_client::Error::WatchError("key watch ended".into()))
                    })?;
                    if response.canceled() {
                        if response.compact_revision() > 0 {
                            return Ok(Interrupt::Rewrite);
                        }
                        // Registering needs write access only: without read access to its
                        // own keys, the task stops watching them rather than loop.
                        warn!(lease_id, reason = response.cancel_reason(), "cannot watch the registered keys");
                        keys = None;
                        continue;
                    }
                    if response.events().iter().any(|e| e.event_type() == EventType::Delete) {
                        warn!(lease_id, "a registered key was deleted, putting it back");
                        return Ok(Interrupt::Rewrite);
                    }
                }
                Some(command) = commands.recv() => return self.serve(command, lease_id).await,
            }
        }
    }

    /// Carries out a command; then the keys are written and watched again.
    async fn serve(&mut self, command: Command, lease_id: i64) -> Result<Interrupt, Error> {
        match command {
            Command::Add {
                service,
                instance,
                reply,
            } => {
                let entry = self.entry(service, instance, lease_id);
                let result = match self.withdrawn {
                    true => Ok(0),
                    false => self.put(&entry, lease_id).await,
                };
                let key = entry.key.clone();
                if result.is_ok() {
                    self.entries.push(entry);
                }
                let _ = reply.send(result.clone().map(|_| key));
                result.map(|_| Interrupt::Rewrite)
            }
            Command::Withdraw { withdraw, reply } => {
                let changed = withdraw != self.withdrawn;
                // The wanted state: if acting on it fails, the Put state reconciles to it.
                self.withdrawn = withdraw;
                let result = match (changed, withdraw) {
                    (false, _) => Ok(()),
                    (true, true) => {
                        info!(lease_id, "withdrawing the keys");
                        self.delete_all().await
                    }
                    (true, false) => {
                        info!(lease_id, "restoring the keys");
                        self.put_all(lease_id).await.map(|_| ())
                    }
                };
                let _ = reply.send(result.clone());
                result.map(|_| Interrupt::Rewrite)
            }
        }
    }

    /// Watches every key from revision `from`, on one stream; none while withdrawn.
    async fn watch_keys(&self, from: i64) -> Result<Option<WatchStream>, etcd_client::Error> {
        let (Some(first), false) = (self.entries.first(), self.withdrawn) else {
            return Ok(None);
        };
        let options = || Some(WatchOptions::new().with_start_revision(from.max(1)));
        let mut client = self.client.watch_client();
        let mut stream = client.watch(first.key.as_str(), options()).await?;
        for entry in &self.entries[1..] {
            stream.watch(entry.key.as_str(), options()).await?;
        }
        Ok(Some(stream))
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

    async fn fail(&mut self, error: Error, next: State) -> State {
        if error.is_lease_not_found() {
            // etcd answered, so it is up; only the lease is gone. Grant again after a short
            // jittered pause, not after the backoff that the outage built up.
            self.retry.reset();
        }
        // While the lease may be alive (etcd extends leases by their TTL when it recovers),
        // retry at least every TTL/3, jittered, to reach etcd before the lease expires. That
        // is the keepalive rate: no more load on etcd than when all is well.
        let cap = matches!(next, State::Put { .. }).then_some(self.ttl / 3);
        const RETRYING: &str = "etcd request failed, the registration retries";
        match self.retry.failed(error, cap, RETRYING) {
            Failure::Permanent(error) => {
                warn!(error = %Chain(&error), "registration failed for good");
                self.status
                    .send_replace(RegistrationStatus::Failed { error });
                crate::metrics::registrar_status(&self.status.borrow());
                State::Failed
            }
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

/// The next message of the key watch; never, if there is none.
async fn next_message(
    stream: &mut Option<WatchStream>,
) -> Result<Option<etcd_client::WatchResponse>, etcd_client::Error> {
    match stream {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}

/// The TTL in whole seconds, rounded up.
pub(super) fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}
