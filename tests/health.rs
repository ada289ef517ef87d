#![cfg(feature = "health")]
//! `Registration::follow_health` against a real etcd: a service that tonic-health reports
//! NOT_SERVING is taken out of the registry, keeping its lease, and put back when it is
//! SERVING again.
//!
//! ```text
//! cargo test --features health --test health
//! ```

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use etcd_client::Client;
use tokio::time::Instant;
use tonic_etcd::Registrar;
use tonic_health::ServingStatus;
use tonic_health::server::health_reporter;

use support::leases::ttl_left;
use support::{Etcd, POLL_INTERVAL, wait_until};

/// The service every test registers.
const SERVICE: &str = "greeter";

/// The name tonic-health knows the greeter by.
const HEALTH_NAME: &str = "helloworld.Greeter";

/// How long the registrar may take to follow a health change.
const DEADLINE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn not_serving_removes_the_key_and_serving_puts_it_back() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let (reporter, _health_server) = health_reporter();
    reporter
        .set_service_status(HEALTH_NAME, ServingStatus::Serving)
        .await;
    let mut registration = register(&client).await;
    registration.follow_health(&reporter, HEALTH_NAME);
    let key = registration.key().to_owned();
    let lease = registration.lease_id().expect("registered");

    for round in 1..=2 {
        let changed = Instant::now();
        reporter
            .set_service_status(HEALTH_NAME, ServingStatus::NotServing)
            .await;
        wait_until(&format!("{key} gone (round {round})"), DEADLINE, || {
            lease_is(&client, &key, None)
        })
        .await;
        eprintln!(
            "round {round}: NOT_SERVING, key gone in {:?}",
            changed.elapsed()
        );
        assert!(ttl_left(&client, lease).await > 0, "the lease stays alive");

        let changed = Instant::now();
        reporter
            .set_service_status(HEALTH_NAME, ServingStatus::Serving)
            .await;
        wait_until(&format!("{key} back (round {round})"), DEADLINE, || {
            lease_is(&client, &key, Some(lease))
        })
        .await;
        eprintln!(
            "round {round}: SERVING, key back in {:?}",
            changed.elapsed()
        );
    }
    registration.shutdown().await.expect("shutdown");
    assert!(
        lease_is(&client, &key, None).await,
        "shutdown removes the key"
    );
}

/// The reporter may learn of the service after the registration follows it: the key stays
/// until the service is reported, then follows it.
#[tokio::test]
async fn follows_a_service_the_reporter_learns_of_later() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let (reporter, _health_server) = health_reporter();
    let mut registration = register(&client).await;
    registration.follow_health(&reporter, HEALTH_NAME);
    let key = registration.key().to_owned();
    let lease = registration.lease_id().expect("registered");

    // Not reported yet: nothing changes for a while (several of its retries).
    let until = Instant::now() + Duration::from_secs(2);
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    while Instant::now() < until {
        interval.tick().await;
        assert!(
            lease_is(&client, &key, Some(lease)).await,
            "{key} stays while the service is unknown to the reporter"
        );
    }

    reporter
        .set_service_status(HEALTH_NAME, ServingStatus::NotServing)
        .await;
    wait_until(&format!("{key} gone"), DEADLINE, || {
        lease_is(&client, &key, None)
    })
    .await;
    reporter
        .set_service_status(HEALTH_NAME, ServingStatus::Serving)
        .await;
    wait_until(&format!("{key} back"), DEADLINE, || {
        lease_is(&client, &key, Some(lease))
    })
    .await;
}

async fn register(client: &Client) -> tonic_etcd::Registration {
    let addr = SocketAddr::from(([127, 0, 0, 1], 20_001));
    Registrar::new(client.clone())
        .ttl(Duration::from_secs(10))
        .grace(Duration::ZERO)
        .register(SERVICE, addr)
        .await
        .expect("register")
}

/// Whether `key` is in etcd under `lease` (`None`: absent). `false` if etcd fails.
async fn lease_is(client: &Client, key: &str, lease: Option<i64>) -> bool {
    match client.clone().get(key, None).await {
        Ok(response) => response.kvs().first().map(|kv| kv.lease()) == lease,
        Err(_) => false,
    }
}
