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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::Client;
use tokio::time::Instant;
use tonic_etcd::Registrar;
use tonic_health::ServingStatus;
use tonic_health::server::health_reporter;

use support::leases::ttl_left;
use support::{Etcd, POLL_INTERVAL, holds_until, wait_until};

/// The service every test registers.
const SERVICE: &str = "greeter";

/// The name tonic-health knows the greeter by.
const HEALTH_NAME: &str = "helloworld.Greeter";

/// How long the registrar may take to follow a health change: generous, since a busy
/// machine delays it and only the change itself is the point.
const DEADLINE: Duration = Duration::from_secs(20);

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

/// Log lines written while a [`Logs::capture`] guard lives, on this thread (the test's
/// current-thread runtime runs the registration's tasks on it too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Captures INFO and above, without colour, until the guard is dropped.
    fn capture(&self) -> impl Drop {
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
            .set_default()
    }

    /// The lines written so far.
    fn lines(&self) -> Vec<String> {
        let bytes = support::lock(&self.0).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        support::lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// A misspelt health name is not silent: a warning names it, and only once.
#[tokio::test]
async fn warns_when_the_reporter_never_heard_of_the_service() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let (reporter, _health_server) = health_reporter();
    reporter
        .set_service_status(HEALTH_NAME, ServingStatus::Serving)
        .await;
    let mut registration = register(&client).await;
    let misspelt = "helloworld.Greter";
    registration.follow_health(&reporter, misspelt);
    let warned = |logs: &Logs| {
        logs.lines()
            .into_iter()
            .filter(|l| l.contains("WARN") && l.contains(misspelt))
            .count()
    };
    wait_until("a warning naming the service", DEADLINE, || async {
        warned(&logs) > 0
    })
    .await;
    let key = registration.key().to_owned();
    assert!(
        lease_is(&client, &key, registration.lease_id()).await,
        "the key stays"
    );
    // Several retries later, still one warning.
    let until = Instant::now() + Duration::from_secs(2);
    holds_until("one warning", until, || async { warned(&logs) == 1 }).await;
    registration.shutdown().await.expect("shutdown");

    // The right name, reported from the start, gives no warning.
    let logs = Logs::default();
    let _capture = logs.capture();
    let mut registration = register(&client).await;
    registration.follow_health(&reporter, HEALTH_NAME);
    let until = Instant::now() + Duration::from_secs(4);
    holds_until("no warning", until, || async {
        logs.lines().iter().all(|l| !l.contains("WARN"))
    })
    .await;
}

/// After a withdrawal, the log says what holds: the lease, with no key in etcd.
#[tokio::test]
async fn a_withdrawal_is_logged_as_such_not_as_registered() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let (reporter, _health_server) = health_reporter();
    reporter
        .set_service_status(HEALTH_NAME, ServingStatus::Serving)
        .await;
    let mut registration = register(&client).await;
    registration.follow_health(&reporter, HEALTH_NAME);
    let key = registration.key().to_owned();

    let logs = Logs::default();
    let _capture = logs.capture();
    reporter
        .set_service_status(HEALTH_NAME, ServingStatus::NotServing)
        .await;
    wait_until(&format!("{key} gone"), DEADLINE, || {
        lease_is(&client, &key, None)
    })
    .await;
    let registered = |logs: &Logs| logs.lines().iter().any(|l| l.contains(" registered "));
    let withdrawn = |logs: &Logs| logs.lines().iter().any(|l| l.contains("keys withdrawn"));
    wait_until("the lease task logs what holds", DEADLINE, || async {
        registered(&logs) || withdrawn(&logs)
    })
    .await;
    assert!(
        !registered(&logs),
        "logged as registered: {:#?}",
        logs.lines()
    );

    reporter
        .set_service_status(HEALTH_NAME, ServingStatus::Serving)
        .await;
    wait_until("registered again once restored", DEADLINE, || async {
        registered(&logs)
    })
    .await;
    assert!(lease_is(&client, &key, registration.lease_id()).await);
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
