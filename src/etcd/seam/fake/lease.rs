//! The lease side of the in-memory etcd: leases that expire unless kept alive, keys under
//! them, keepalive streams.

use tokio::time::{Duration, Instant};

use super::{FakeEtcd, FakeWatch, Filter, State};
use crate::etcd::seam::lease::{KeepAlive, Leases};
use crate::etcd::seam::{BoxFuture, Event, Watch};
use tokio::time::sleep_until;

impl FakeEtcd {
    /// The lease of `key`, if it is there: 0 for none.
    pub(crate) fn lease_of(&self, key: &str) -> Option<i64> {
        let mut state = self.state();
        state.expire();
        let key = key.as_bytes();
        let present = state.kvs.contains_key(key);
        present.then(|| state.key_leases.get(key).copied().unwrap_or(0))
    }

    /// Revokes `lease_id`, deleting its keys, as another client may.
    pub(crate) fn revoke_lease(&self, lease_id: i64) {
        self.state().drop_lease(lease_id);
        self.changed();
    }
}

impl State {
    /// Renews `lease_id` to its full TTL, if it is alive; returns that TTL, 0 if it is gone.
    fn renew(&mut self, lease_id: i64) -> i64 {
        self.expire();
        match self.leases.get_mut(&lease_id) {
            Some((ttl, at)) => {
                *at = Instant::now() + Duration::from_secs(ttl.unsigned_abs());
                *ttl
            }
            None => 0,
        }
    }

    /// Expires the leases whose time is up, with their keys.
    pub(super) fn expire(&mut self) {
        let now = Instant::now();
        let expired: Vec<i64> = (self.leases.iter())
            .filter(|(_, (_, at))| *at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.drop_lease(id);
        }
    }

    /// Removes `lease_id` and deletes its keys, each a delete event.
    fn drop_lease(&mut self, lease_id: i64) {
        self.leases.remove(&lease_id);
        let keys: Vec<Vec<u8>> = (self.key_leases.iter())
            .filter(|(_, l)| **l == lease_id)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.key_leases.remove(&key);
            self.kvs.remove(&key);
            self.revision += 1;
            let mod_revision = self.revision;
            let value = Vec::new();
            self.events.push(Event {
                put: false,
                key,
                value,
                mod_revision,
            });
        }
    }
}

/// etcd's error for a lease it does not hold.
fn lease_not_found() -> etcd_client::Error {
    let status = tonic::Status::not_found("etcdserver: requested lease not found");
    etcd_client::Error::GRpcStatus(status)
}

impl Leases for FakeEtcd {
    fn grant(&self, ttl_secs: i64) -> BoxFuture<'_, Result<i64, etcd_client::Error>> {
        let granted = match self.injected() {
            Some(error) => Err(error),
            None => {
                let mut state = self.state();
                state.next_lease += 1;
                let id = state.next_lease;
                let ttl = Duration::from_secs(ttl_secs.unsigned_abs());
                state.leases.insert(id, (ttl_secs, Instant::now() + ttl));
                Ok(id)
            }
        };
        Box::pin(std::future::ready(granted))
    }

    fn time_to_live(&self, lease_id: i64) -> BoxFuture<'_, Result<i64, etcd_client::Error>> {
        let answer = match self.injected() {
            Some(error) => Err(error),
            None => {
                let mut state = self.state();
                state.time_to_lives += 1;
                state.expire();
                // As etcd: the whole seconds left (it expires in under TTL+1 s), -1 if gone.
                let left = state
                    .leases
                    .get(&lease_id)
                    .map(|(_, at)| *at - Instant::now());
                Ok(left.map_or(-1, |left| i64::try_from(left.as_secs()).unwrap_or(i64::MAX)))
            }
        };
        Box::pin(std::future::ready(answer))
    }

    fn put(
        &self,
        key: String,
        value: Vec<u8>,
        lease_id: i64,
    ) -> BoxFuture<'_, Result<i64, etcd_client::Error>> {
        let put = match self.injected() {
            Some(error) => Err(error),
            None if lease_id != 0 && !self.has_lease(lease_id) => Err(lease_not_found()),
            None => {
                let value = String::from_utf8_lossy(&value).into_owned();
                let revision = self.put(&key, &value);
                self.state().key_leases.insert(key.into_bytes(), lease_id);
                Ok(revision)
            }
        };
        Box::pin(std::future::ready(put))
    }

    fn delete(&self, key: String) -> BoxFuture<'_, Result<(), etcd_client::Error>> {
        let deleted = match self.injected() {
            Some(error) => Err(error),
            None => {
                FakeEtcd::delete(self, &key);
                Ok(())
            }
        };
        Box::pin(std::future::ready(deleted))
    }

    fn keep_alive(
        &self,
        lease_id: i64,
    ) -> BoxFuture<'_, Result<Box<dyn KeepAlive>, etcd_client::Error>> {
        let opened = match self.injected() {
            Some(error) => Err(error),
            None => {
                self.state().keepalive_streams += 1;
                Ok(Box::new(FakeKeepAlive {
                    etcd: self.clone(),
                    lease_id,
                    sent: 0,
                }) as Box<dyn KeepAlive>)
            }
        };
        Box::pin(std::future::ready(opened))
    }

    fn watch_keys(
        &self,
        keys: Vec<String>,
        from: i64,
    ) -> BoxFuture<'_, Result<Box<dyn Watch>, etcd_client::Error>> {
        let state = self.state();
        let filter = Filter::Keys(keys.into_iter().map(String::into_bytes).collect());
        let watch = Box::new(FakeWatch::new(self, &state, filter, from.max(1))) as Box<dyn Watch>;
        Box::pin(std::future::ready(Ok(watch)))
    }

    fn revoke(&self, lease_id: i64) -> BoxFuture<'_, Result<(), etcd_client::Error>> {
        let revoked = match self.injected() {
            Some(error) => Err(error),
            None if !self.has_lease(lease_id) => Err(lease_not_found()),
            None => {
                self.revoke_lease(lease_id);
                Ok(())
            }
        };
        Box::pin(std::future::ready(revoked))
    }
}

impl FakeEtcd {
    /// Whether `lease_id` is alive.
    pub(crate) fn has_lease(&self, lease_id: i64) -> bool {
        let mut state = self.state();
        state.expire();
        state.leases.contains_key(&lease_id)
    }
}

/// A keepalive stream: each keepalive sent is answered with the TTL, 0 once the lease is
/// gone; a lease kept alive has its full TTL again.
struct FakeKeepAlive {
    etcd: FakeEtcd,
    lease_id: i64,
    /// Keepalives sent and not yet answered.
    sent: usize,
}

impl KeepAlive for FakeKeepAlive {
    fn send(&mut self) -> BoxFuture<'_, Result<(), etcd_client::Error>> {
        self.sent += 1;
        Box::pin(std::future::ready(Ok(())))
    }

    fn receive(&mut self) -> BoxFuture<'_, Result<Option<i64>, etcd_client::Error>> {
        if self.sent == 0 {
            return Box::pin(std::future::pending());
        }
        if self.etcd.state().answers_lost {
            // The leader renews the lease; its answer never comes back.
            self.sent -= 1;
            self.etcd.state().renew(self.lease_id);
            return Box::pin(std::future::pending());
        }
        Box::pin(async move {
            if !self.answerable().await {
                return Ok(None);
            }
            self.sent -= 1;
            Ok(Some(self.etcd.state().renew(self.lease_id)))
        })
    }
}

impl FakeKeepAlive {
    /// Waits while keepalives are stalled, or while no leader is elected; `false` if the
    /// etcd is gone.
    async fn answerable(&self) -> bool {
        let mut changed = self.etcd.changed.subscribe();
        loop {
            let (stalled, election) = {
                let state = self.etcd.state();
                (state.keepalives_stalled, state.election_until)
            };
            match election {
                _ if stalled => {
                    if changed.changed().await.is_err() {
                        return false;
                    }
                }
                Some(until) if until > Instant::now() => sleep_until(until).await,
                _ => return true,
            }
        }
    }
}
