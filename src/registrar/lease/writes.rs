//! The lease task's one-shot requests: grant the lease, ask for its TTL left, put and delete
//! the keys, each through the crate's one-shot [`request`] path.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{LeaseTask, RegisteredInstance, ttl_secs};
use crate::error::Error;
use crate::etcd::request::request;

impl LeaseTask {
    pub(in crate::registrar) async fn grant(&mut self) -> Result<i64, Error> {
        let ttl_secs = ttl_secs(self.ttl);
        let asked = tokio::time::Instant::now();
        let lease_id = request("granting a lease", self.request_timeout, || async {
            let grant = self.client.grant(ttl_secs);
            grant.await.map_err(|source| Error::LeaseGrant {
                ttl_secs,
                source: Arc::new(source),
            })
        })
        .await?;
        self.lease.store(lease_id, Ordering::Release);
        self.expires = asked + self.ttl;
        crate::metrics::lease_granted();
        Ok(lease_id)
    }

    /// The TTL left of `lease_id` in seconds, -1 if etcd does not hold it.
    pub(in crate::registrar) async fn time_to_live(&self, lease_id: i64) -> Result<i64, Error> {
        request("asking for a lease's ttl", self.request_timeout, || async {
            let asked = self.client.time_to_live(lease_id);
            asked.await.map_err(|source| Error::KeepAlive {
                lease_id,
                source: Arc::new(source),
            })
        })
        .await
    }

    /// Puts every key under `lease_id` (unless withdrawn); returns the revision of the first
    /// put, from which the keys are watched: a key deleted while the later ones were being
    /// put is then seen, and put back.
    pub(in crate::registrar) async fn put_all(&mut self, lease_id: i64) -> Result<i64, Error> {
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

    pub(super) async fn put(
        &self,
        entry: &RegisteredInstance,
        lease_id: i64,
    ) -> Result<i64, Error> {
        let value = self.format.value(&entry.service, &entry.instance);
        request("putting a key", self.request_timeout, || async {
            let put = self.client.put(entry.key.clone(), value.clone(), lease_id);
            put.await.map_err(|source| Error::Put {
                key: entry.key.clone(),
                lease_id,
                source: Arc::new(source),
            })
        })
        .await
    }

    pub(super) async fn delete_all(&self) -> Result<(), Error> {
        for entry in &self.entries {
            request("deleting a key", self.request_timeout, || async {
                let delete = self.client.delete(entry.key.clone());
                delete.await.map_err(|source| Error::Delete {
                    key: entry.key.clone(),
                    source: Arc::new(source),
                })
            })
            .await?;
        }
        Ok(())
    }
}
