//! The lease task's steady state: a keepalive every TTL/3, a watch on its own keys, and the
//! commands of its registration, until something needs another state.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use tracing::{info, warn};

use super::{Command, LeaseTask};
use crate::error::Error;
use crate::etcd::request::request;
use crate::etcd::seam::lease::KeepAlive;
use crate::etcd::seam::{Message, Watch};

/// Why keeping alive stopped.
pub(super) enum Interrupt {
    Failed(Error),
    /// A key is missing, or must be written again.
    Rewrite,
    /// A keepalive went unanswered for a third of the TTL: its member may be frozen, so the
    /// stream is opened again at once, most likely on another member.
    Stalled,
    /// etcd refused, for good, the key of an instance being added: the registration fails.
    Refused(Error),
}

impl LeaseTask {
    /// Keeps `lease_id` alive every TTL/3, watches the keys from revision `from`, and serves
    /// commands, until something needs another state.
    pub(super) async fn keep_alive(
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
        let open = || async {
            let open = self.client.keep_alive(lease_id);
            open.await.map_err(wrap(lease_id))
        };
        let mut keeper = request("opening a keepalive stream", self.request_timeout, open).await?;
        let open = || async { self.watch_keys(from).await.map_err(wrap(lease_id)) };
        let mut keys = request("watching the keys", self.request_timeout, open).await?;
        let opened = Instant::now();
        let mut next_keepalive = Instant::now();
        loop {
            tokio::select! {
                // Biased: the keepalive is due before anything else is looked at.
                biased;
                _ = tokio::time::sleep_until(next_keepalive) => {
                    let renewed = self.renew(lease_id, &mut *keeper, opened);
                    if let Some(interrupt) = renewed.await? {
                        return Ok(interrupt);
                    }
                    next_keepalive = Instant::now() + self.ttl / 3;
                }
                message = next_message(&mut keys) => {
                    if let Some(interrupt) = on_keys(lease_id, message, &mut keys)? {
                        return Ok(interrupt);
                    }
                }
                Some(command) = commands.recv() => return self.serve(command, lease_id).await,
            }
        }
    }

    /// Sends one keepalive and reads its answer: `Stalled` if none comes within TTL/3 (one
    /// more such wait on another member still comes before the lease expires), an error if
    /// the stream broke or the lease is gone.
    async fn renew(
        &mut self,
        lease_id: i64,
        keeper: &mut dyn KeepAlive,
        opened: Instant,
    ) -> Result<Option<Interrupt>, Error> {
        let sent = Instant::now();
        keeper.send().await.map_err(wrap(lease_id))?;
        let after = (self.ttl / 3).min(self.request_timeout);
        let Ok(response) = tokio::time::timeout(after, keeper.receive()).await else {
            return Ok(Some(Interrupt::Stalled));
        };
        let ended = || etcd_client::Error::LeaseKeepAliveError("stream ended".into());
        let ttl = response
            .map_err(wrap(lease_id))?
            .ok_or_else(|| wrap(lease_id)(ended()))?;
        if ttl <= 0 {
            return Err(Error::LeaseLost { lease_id });
        }
        self.expires = sent + Duration::from_secs(ttl.unsigned_abs());
        if opened.elapsed() >= self.ttl {
            self.retry.reset();
        }
        self.mark_registered(lease_id);
        Ok(None)
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
                match result {
                    Ok(_) => Ok(Interrupt::Rewrite),
                    // A key these credentials never wrote: no revoke to wait out.
                    Err(error) if error.is_permanent() => Ok(Interrupt::Refused(error)),
                    Err(error) => Err(error),
                }
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
    async fn watch_keys(&self, from: i64) -> Result<Option<Box<dyn Watch>>, etcd_client::Error> {
        if self.entries.is_empty() || self.withdrawn {
            return Ok(None);
        }
        let keys = self.entries.iter().map(|e| e.key.clone()).collect();
        Ok(Some(self.client.watch_keys(keys, from).await?))
    }
}

/// Looks at a message of the key watch: `Rewrite` if a key was deleted or the watch fell
/// behind a compaction; the watch is dropped if the role may not read the keys.
fn on_keys(
    lease_id: i64,
    message: Result<Option<Message>, etcd_client::Error>,
    keys: &mut Option<Box<dyn Watch>>,
) -> Result<Option<Interrupt>, Error> {
    let ended = || etcd_client::Error::WatchError("key watch ended".into());
    let response = message
        .map_err(wrap(lease_id))?
        .ok_or_else(|| wrap(lease_id)(ended()))?;
    if response.canceled {
        if response.compact_revision > 0 {
            return Ok(Some(Interrupt::Rewrite));
        }
        // Registering needs write access only: without read access to its own keys, the
        // task stops watching them rather than loop.
        warn!(
            lease_id,
            reason = response.cancel_reason,
            "cannot watch the registered keys"
        );
        *keys = None;
        return Ok(None);
    }
    if response.events.iter().any(|e| !e.put) {
        warn!(lease_id, "a registered key was deleted, putting it back");
        return Ok(Some(Interrupt::Rewrite));
    }
    Ok(None)
}

/// Wraps an error of the keepalive stream or the key watch of `lease_id`.
fn wrap(lease_id: i64) -> impl Fn(etcd_client::Error) -> Error {
    move |source| Error::KeepAlive {
        lease_id,
        source: Arc::new(source),
    }
}

/// The next message of the key watch; never, if there is none.
async fn next_message(
    stream: &mut Option<Box<dyn Watch>>,
) -> Result<Option<Message>, etcd_client::Error> {
    match stream {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}
