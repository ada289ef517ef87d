//! The owned task that keeps a registration's lease alive, and re-registers when it is lost.
//!
//! ```text
//!  Grant ──ok──► Put{lease} ──ok──► KeepAlive{lease} ──stream broke──► backoff ─┐
//!    ▲  │            │  ▲                  │   ▲                               │
//!    └──┘ backoff    │  └── backoff        │   └───────── same lease ──────────┘
//!    ▲               │ lease not found     │ ttl 0 / lease not found
//!    └───────────────┴─────────────────────┘
//! ```
//!
//! After an etcd restart or a leader change the lease usually survives, because etcd extends
//! leases on recovery, so a broken keepalive stream is retried on the same lease first: a new
//! lease would put a duplicate key. Only when etcd says the lease is gone does the task grant
//! a new one and put the key again. It never gives up.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::RegistrationStatus;
use crate::Error;
use crate::backoff::Retry;
use crate::error::Chain;

pub(super) enum State {
    Grant,
    Put { lease_id: i64 },
    KeepAlive { lease_id: i64 },
}

pub(super) struct LeaseTask {
    pub(super) client: Client,
    pub(super) key: String,
    pub(super) value: Vec<u8>,
    pub(super) ttl: Duration,
    pub(super) request_timeout: Duration,
    pub(super) retry: Retry,
    pub(super) status: Arc<watch::Sender<RegistrationStatus>>,
}

impl LeaseTask {
    /// Runs until `stop` resolves: the sender is used or dropped.
    pub(super) async fn run(mut self, start: State, mut stop: tokio::sync::oneshot::Receiver<()>) {
        let mut state = start;
        loop {
            tokio::select! {
                // Biased: once asked to stop, no further request is started.
                biased;
                _ = &mut stop => return,
                next = self.step(state) => state = next,
            }
        }
    }

    async fn step(&mut self, state: State) -> State {
        match state {
            State::Grant => match self.grant().await {
                Ok(lease_id) => State::Put { lease_id },
                Err(error) => self.fail(error, State::Grant).await,
            },
            State::Put { lease_id } => match self.put(lease_id).await {
                Ok(()) => {
                    info!(key = %self.key, lease_id, "registered");
                    self.status
                        .send_replace(RegistrationStatus::Registered { lease_id });
                    State::KeepAlive { lease_id }
                }
                Err(error) if error.is_lease_not_found() => self.fail(error, State::Grant).await,
                Err(error) => self.fail(error, State::Put { lease_id }).await,
            },
            State::KeepAlive { lease_id } => match self.keep_alive(lease_id).await {
                Err(error) if error.is_lease_not_found() => {
                    warn!(key = %self.key, lease_id, "lease lost, registering again");
                    self.fail(error, State::Grant).await
                }
                Err(error) => self.fail(error, State::KeepAlive { lease_id }).await,
                Ok(never) => match never {},
            },
        }
    }

    pub(super) async fn grant(&mut self) -> Result<i64, Error> {
        let ttl_secs = ttl_secs(self.ttl);
        let mut lease = self.client.lease_client();
        let response = self
            .timed("granting a lease", lease.grant(ttl_secs, None))
            .await?
            .map_err(|source| Error::LeaseGrant {
                ttl_secs,
                source: Arc::new(source),
            })?;
        Ok(response.id())
    }

    pub(super) async fn put(&mut self, lease_id: i64) -> Result<(), Error> {
        let mut kv = self.client.kv_client();
        let options = PutOptions::new().with_lease(lease_id);
        let put = kv.put(self.key.as_str(), self.value.clone(), Some(options));
        self.timed("putting the key", put)
            .await?
            .map_err(|source| Error::Put {
                key: self.key.clone(),
                lease_id,
                source: Arc::new(source),
            })?;
        Ok(())
    }

    /// Keeps `lease_id` alive every TTL/3 until something breaks; returns why.
    async fn keep_alive(&mut self, lease_id: i64) -> Result<std::convert::Infallible, Error> {
        let wrap = |source| Error::KeepAlive {
            lease_id,
            source: Arc::new(source),
        };
        let mut lease = self.client.lease_client();
        let (mut keeper, mut responses) = self
            .timed("opening a keepalive stream", lease.keep_alive(lease_id))
            .await?
            .map_err(wrap)?;
        let interval = self.ttl / 3;
        let opened = Instant::now();
        loop {
            keeper.keep_alive().await.map_err(wrap)?;
            let response = self
                .timed("keeping the lease alive", responses.message())
                .await?
                .map_err(wrap)?
                .ok_or_else(|| {
                    wrap(etcd_client::Error::LeaseKeepAliveError(
                        "stream ended".into(),
                    ))
                })?;
            if response.ttl() <= 0 {
                return Err(Error::LeaseLost { lease_id });
            }
            if opened.elapsed() >= self.ttl {
                self.retry.reset();
            }
            self.status.send_if_modified(|status| {
                let registered = RegistrationStatus::Registered { lease_id };
                let changed = !matches!(status, RegistrationStatus::Registered { lease_id: l } if *l == lease_id);
                if changed {
                    *status = registered;
                }
                changed
            });
            tokio::time::sleep(interval).await;
        }
    }

    async fn fail(&mut self, error: Error, next: State) -> State {
        let delay = self.retry.next_delay();
        let attempt = self.retry.attempt();
        debug!(key = %self.key, attempt, ?delay, error = %Chain(&error), "retrying");
        self.status
            .send_replace(RegistrationStatus::Retrying { attempt, error });
        tokio::time::sleep(delay).await;
        next
    }

    async fn timed<F: Future>(&self, operation: &'static str, f: F) -> Result<F::Output, Error> {
        let after = self.request_timeout;
        tokio::time::timeout(after, f)
            .await
            .map_err(|_| Error::Timeout { operation, after })
    }
}

/// The TTL in whole seconds, rounded up.
pub(super) fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}
