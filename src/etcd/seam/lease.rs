//! The seam for the registrar: grant a lease, keep it alive, ask for its TTL left, put and
//! delete keys under it, watch them, and revoke the lease at shutdown.

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper, PutOptions, WatchOptions};

use super::{BoxFuture, Watch};

/// What the registrar (its lease task, and its shutdown) asks of etcd.
pub(crate) trait Leases: Send + Sync {
    /// Grants a lease of `ttl_secs`; returns its id.
    fn grant(&self, ttl_secs: i64) -> BoxFuture<'_, Result<i64, etcd_client::Error>>;

    /// The TTL left of `lease_id`, in seconds (etcd's LeaseTimeToLive, which asks the
    /// leader); -1 if etcd does not hold the lease. Writes nothing.
    fn time_to_live(&self, lease_id: i64) -> BoxFuture<'_, Result<i64, etcd_client::Error>>;

    /// Puts `key = value` under `lease_id`; returns the revision of the put.
    fn put(
        &self,
        key: String,
        value: Vec<u8>,
        lease_id: i64,
    ) -> BoxFuture<'_, Result<i64, etcd_client::Error>>;

    /// Deletes `key`.
    fn delete(&self, key: String) -> BoxFuture<'_, Result<(), etcd_client::Error>>;

    /// Opens a keepalive stream for `lease_id`.
    fn keep_alive(
        &self,
        lease_id: i64,
    ) -> BoxFuture<'_, Result<Box<dyn KeepAlive>, etcd_client::Error>>;

    /// Watches each of `keys` from revision `from`, on one stream.
    fn watch_keys(
        &self,
        keys: Vec<String>,
        from: i64,
    ) -> BoxFuture<'_, Result<Box<dyn Watch>, etcd_client::Error>>;

    /// Revokes `lease_id`, which deletes its keys at once.
    fn revoke(&self, lease_id: i64) -> BoxFuture<'_, Result<(), etcd_client::Error>>;
}

/// An open keepalive stream.
pub(crate) trait KeepAlive: Send {
    /// Sends one keepalive.
    fn send(&mut self) -> BoxFuture<'_, Result<(), etcd_client::Error>>;

    /// The next answer: the lease's TTL left in seconds, 0 once it is gone; `None` once the
    /// stream has ended.
    fn receive(&mut self) -> BoxFuture<'_, Result<Option<i64>, etcd_client::Error>>;
}

impl Leases for etcd_client::Client {
    fn grant(&self, ttl_secs: i64) -> BoxFuture<'_, Result<i64, etcd_client::Error>> {
        Box::pin(async move {
            let response = self.lease_client().grant(ttl_secs, None).await?;
            Ok(response.id())
        })
    }

    fn time_to_live(&self, lease_id: i64) -> BoxFuture<'_, Result<i64, etcd_client::Error>> {
        Box::pin(async move {
            let response = self.lease_client().time_to_live(lease_id, None).await?;
            Ok(response.ttl())
        })
    }

    fn put(
        &self,
        key: String,
        value: Vec<u8>,
        lease_id: i64,
    ) -> BoxFuture<'_, Result<i64, etcd_client::Error>> {
        Box::pin(async move {
            let options = PutOptions::new().with_lease(lease_id);
            let response = self.kv_client().put(key, value, Some(options)).await?;
            Ok(response.header().map_or(0, |h| h.revision()))
        })
    }

    fn delete(&self, key: String) -> BoxFuture<'_, Result<(), etcd_client::Error>> {
        Box::pin(async move {
            self.kv_client().delete(key, None).await?;
            Ok(())
        })
    }

    fn keep_alive(
        &self,
        lease_id: i64,
    ) -> BoxFuture<'_, Result<Box<dyn KeepAlive>, etcd_client::Error>> {
        Box::pin(async move {
            let stream = self.lease_client().keep_alive(lease_id).await?;
            Ok(Box::new(stream) as Box<dyn KeepAlive>)
        })
    }

    fn watch_keys(
        &self,
        keys: Vec<String>,
        from: i64,
    ) -> BoxFuture<'_, Result<Box<dyn Watch>, etcd_client::Error>> {
        Box::pin(async move {
            let options = || Some(WatchOptions::new().with_start_revision(from.max(1)));
            let mut keys = keys.into_iter();
            let first = keys.next().unwrap_or_default();
            let mut stream = self.watch_client().watch(first, options()).await?;
            for key in keys {
                stream.watch(key, options()).await?;
            }
            Ok(Box::new(stream) as Box<dyn Watch>)
        })
    }

    fn revoke(&self, lease_id: i64) -> BoxFuture<'_, Result<(), etcd_client::Error>> {
        Box::pin(async move {
            self.lease_client().revoke(lease_id).await?;
            Ok(())
        })
    }
}

impl KeepAlive for (LeaseKeeper, LeaseKeepAliveStream) {
    fn send(&mut self) -> BoxFuture<'_, Result<(), etcd_client::Error>> {
        Box::pin(self.0.keep_alive())
    }

    fn receive(&mut self) -> BoxFuture<'_, Result<Option<i64>, etcd_client::Error>> {
        Box::pin(async move { Ok(self.1.message().await?.map(|r| r.ttl())) })
    }
}
