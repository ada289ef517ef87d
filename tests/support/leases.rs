//! Keys and their leases in etcd, as the tests read them: which lease holds a key, how long a
//! lease has left, and waits for a key to come or go.

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::Client;

use super::{wait_for, wait_until};

/// The lease of `key`, or `None` if the key is absent.
pub async fn lease_of(client: &Client, key: &str) -> Result<Option<i64>, etcd_client::Error> {
    let response = client.clone().get(key, None).await?;
    Ok(response.kvs().first().map(|kv| kv.lease()))
}

/// The lease of `key`, which must be there.
pub async fn present_lease(client: &Client, key: &str) -> i64 {
    match lease_of(client, key).await {
        Ok(Some(lease)) => lease,
        Ok(None) => panic!("{key} is not in etcd"),
        Err(e) => panic!("get {key}: {e}"),
    }
}

/// The seconds `lease` has left; -1 once it has expired or been revoked.
pub async fn ttl_left(client: &Client, lease: i64) -> i64 {
    client
        .clone()
        .lease_time_to_live(lease, None)
        .await
        .unwrap_or_else(|e| panic!("time to live of lease {lease:#x}: {e}"))
        .ttl()
}

/// Every lease etcd holds.
pub async fn lease_ids(client: &Client) -> BTreeSet<i64> {
    let response = client.clone().leases().await.expect("list the leases");
    response.leases().iter().map(|l| l.id()).collect()
}

/// Waits until `key` is in etcd under a lease that `accept` takes, and returns the lease.
pub async fn wait_for_key(
    client: &Client,
    key: &str,
    deadline: Duration,
    accept: impl Fn(i64) -> bool,
) -> i64 {
    let accept = &accept;
    wait_for(&format!("{key} in etcd"), deadline, || async move {
        lease_of(client, key)
            .await
            .ok()
            .flatten()
            .filter(|l| accept(*l))
    })
    .await
}

/// Waits until `key` is not in etcd.
pub async fn wait_for_absent(client: &Client, key: &str, deadline: Duration) {
    wait_until(&format!("{key} gone from etcd"), deadline, || async {
        matches!(lease_of(client, key).await, Ok(None))
    })
    .await;
}
