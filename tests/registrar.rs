//! Registration against a real etcd: the key lives under a lease that is kept alive, and it
//! goes away at once on a graceful stop, or with its lease after a crash.
//!
//! Each test owns its etcd, so every test uses the service name `greeter`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{Client, GetOptions, KeyValue};
use tokio::time::Instant;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tonic_etcd::{Backoff, Error, EtcdConfig, MIN_TTL, Registrar, RegistrationStatus};

use support::etcd::{EtcdCluster, MemberFault};
use support::greeter::{backend_of, greeting};
use support::pb::greeter_client::GreeterClient;
use support::pb::greeter_server::{Greeter, GreeterServer};
use support::pb::{HelloReply, HelloRequest};
use support::{Etcd, ServerProcess, wait_until};

/// The service every test registers.
const SERVICE: &str = "greeter";

/// How long a condition that should hold soon may take.
const DEADLINE: Duration = Duration::from_secs(10);

/// How soon a key must be gone after a shutdown was started elsewhere (a spawned
/// `shutdown()`, SIGTERM): half the 10 s lease TTL those tests use, so a revoke is told
/// apart from an expiry however slow a busy machine is.
const REVOKED_NOT_EXPIRED: Duration = Duration::from_secs(5);

/// How many times the tests with a faulty member repeat what must succeed every time.
const FAULT_ROUNDS: usize = 12;

/// etcd checks for expired leases every 500 ms, later when it is busy: the margin past the
/// TTL within which a killed server's key must be gone. How promptly etcd expires a lease
/// is etcd's speed, not the registrar's; what the test shows is that the key outlives the
/// process and goes with its lease.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);

#[tokio::test]
async fn keeps_the_lease_alive_beyond_three_ttls() {
    let etcd = Etcd::start().await;
    let ttl = MIN_TTL;
    let addr = loopback(50051);
    let registration = Registrar::new(etcd.client().await)
        .ttl(ttl)
        .register(SERVICE, addr)
        .await
        .expect("register");
    let lease_id = registration.lease_id().expect("registered under a lease");

    // Waiting on time itself is the point here: without keepalives the key would be gone
    // after one TTL.
    tokio::time::sleep(ttl * 3 + Duration::from_secs(1)).await;

    let mut kv = etcd.client().await;
    let kv_entry = get(&mut kv, registration.key())
        .await
        .expect("the key outlives three TTLs");
    assert_eq!(kv_entry.lease(), lease_id, "still under the same lease");
    assert_eq!(registration.lease_id(), Some(lease_id));
    let lease = kv
        .lease_time_to_live(lease_id, None)
        .await
        .expect("lease time to live");
    // etcd reports whole seconds, rounded down: a live lease whose keep-alive a busy
    // machine delayed may show 0; a gone one shows -1.
    assert!(lease.ttl() >= 0, "the lease is alive: {lease:?}");
}

#[tokio::test]
async fn registers_its_key_under_its_lease() {
    let etcd = Etcd::start().await;
    let addr = loopback(50051);
    let registration = Registrar::new(etcd.client().await)
        .ttl(MIN_TTL)
        .register(SERVICE, addr)
        .await
        .expect("register");
    let lease_id = registration.lease_id().expect("registered under a lease");
    assert_eq!(registration.key(), format!("{SERVICE}/{addr}"));

    let mut kv = etcd.client().await;
    let kv_entry = get(&mut kv, registration.key())
        .await
        .expect("the key is in etcd");
    assert_eq!(
        kv_entry.value_str().expect("utf-8 value"),
        format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":null}}"#),
        "the value is in etcd's Go naming format"
    );
    assert_eq!(kv_entry.lease(), lease_id);
    let lease = kv
        .lease_time_to_live(lease_id, None)
        .await
        .expect("lease time to live");
    assert_eq!(lease.granted_ttl(), 2, "{lease:?}");
}

#[tokio::test]
async fn rejects_a_ttl_below_two_seconds() {
    let etcd = Etcd::start().await;
    for ttl in [
        Duration::ZERO,
        Duration::from_secs(1),
        Duration::from_millis(1999),
    ] {
        let result = Registrar::new(etcd.client().await)
            .ttl(ttl)
            .register(SERVICE, loopback(50051))
            .await;
        match result {
            Err(Error::InvalidTtl { ttl: got, min, .. }) => {
                assert_eq!(got, ttl);
                assert_eq!(min, MIN_TTL);
            }
            other => panic!("ttl {ttl:?} gave {other:?}, not InvalidTtl"),
        }
    }
    let mut kv = etcd.client().await;
    let leases = kv.leases().await.expect("list leases");
    assert!(leases.leases().is_empty(), "no lease was granted");
    let keys = kv
        .get(format!("{SERVICE}/"), Some(GetOptions::new().with_prefix()))
        .await
        .expect("list the prefix");
    assert!(keys.kvs().is_empty(), "no key was written");
}

#[tokio::test]
async fn shutdown_deregisters_then_stops_then_drains() {
    const SLOW_CALL: Duration = Duration::from_secs(2);
    let etcd = Etcd::start().await;
    let incoming = TcpIncoming::bind(loopback(0)).expect("bind a listener");
    let addr = incoming
        .local_addr()
        .expect("local address of the listener");
    let registration = Registrar::new(etcd.client().await)
        .ttl(Duration::from_secs(10))
        .grace(Duration::from_millis(200))
        .register(SERVICE, addr)
        .await
        .expect("register");
    let key = registration.key().to_owned();
    let finished = Arc::new(AtomicBool::new(false));
    let greeter = SlowGreeter {
        addr,
        delay: SLOW_CALL,
        finished: finished.clone(),
    };
    let server = tokio::spawn(
        Server::builder()
            .layer(registration.layer())
            .add_service(GreeterServer::new(greeter))
            .serve_with_incoming_shutdown(incoming, registration.stop_signal()),
    );
    let stopped = tokio::spawn(registration.stop_signal());

    let mut client = GreeterClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the server");
    let call = tokio::spawn(async move {
        let request = HelloRequest {
            name: "drain".into(),
        };
        client.say_hello(request).await
    });
    let registration_ref = &registration;
    wait_until("the call reaches the server", DEADLINE, || async move {
        registration_ref.in_flight() == 1
    })
    .await;
    assert!(!stopped.is_finished(), "the stop signal waits for shutdown");

    let shutdown = tokio::spawn(registration.shutdown());
    let kv = etcd.client().await;
    wait_for_key_gone(&kv, &key, SLOW_CALL).await;
    assert!(
        !finished.load(Ordering::SeqCst),
        "the key goes before the in-flight call ends"
    );
    let stopped = &stopped;
    wait_until("the stop signal fires", DEADLINE, || async move {
        stopped.is_finished()
    })
    .await;
    assert!(
        !finished.load(Ordering::SeqCst),
        "the server stops accepting before the in-flight call ends"
    );

    let shut_down = tokio::time::timeout(DEADLINE, shutdown)
        .await
        .expect("shutdown ends once the call has drained")
        .expect("the shutdown task does not panic");
    assert!(
        finished.load(Ordering::SeqCst),
        "shutdown returns only after the in-flight call has ended"
    );
    shut_down.expect("shutdown succeeds");
    let reply = call
        .await
        .expect("the call task does not panic")
        .expect("the in-flight call succeeds");
    assert_eq!(backend_of(&reply.into_inner().message), addr);
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("the server stops after the drain")
        .expect("the server task does not panic")
        .expect("the server stops cleanly");
}

#[tokio::test]
async fn shutdown_removes_the_key_while_keepalive_is_retrying() {
    let mut etcd = Etcd::start().await;
    // A long first backoff keeps the lease task in `Retrying` well after etcd is back: 8 to
    // 16 s, under the cap of a third of the TTL (20 s).
    let backoff = Backoff::default()
        .initial(Duration::from_secs(16))
        .max(Duration::from_secs(16));
    let registration = Registrar::new(etcd.client().await)
        .ttl(Duration::from_secs(60))
        .grace(Duration::ZERO)
        .backoff(backoff)
        .register(SERVICE, loopback(50051))
        .await
        .expect("register");
    let key = registration.key().to_owned();

    etcd.stop();
    let mut status = registration.status();
    tokio::time::timeout(
        Duration::from_secs(15),
        status.wait_for(|s| matches!(s, RegistrationStatus::Retrying { .. })),
    )
    .await
    .expect("the lease task notices that etcd is gone")
    .expect("the registration status is live");
    etcd.restart().await;
    let mut kv = etcd.client().await;
    assert!(
        get(&mut kv, &key).await.is_some(),
        "the key survives the etcd restart"
    );
    assert!(
        matches!(*status.borrow(), RegistrationStatus::Retrying { .. }),
        "still backing off when shutdown starts: {:?}",
        *status.borrow()
    );

    tokio::time::timeout(DEADLINE, registration.shutdown())
        .await
        .expect("shutdown ends")
        .expect("shutdown succeeds once etcd is back");
    assert!(
        get(&mut kv.clone(), &key).await.is_none(),
        "the key is gone when shutdown returns"
    );
}

#[tokio::test]
async fn graceful_stop_removes_the_key_at_once() {
    let etcd = Etcd::start().await;
    let mut server = ServerProcess::spawn(&etcd.endpoint(), SERVICE, 10).await;
    let key = format!("{SERVICE}/{}", server.addr());
    // The ready line reaches `stdout_lines` just after `spawn` has seen it.
    let (ready, printed) = (&format!("registered as {key} lease "), &server);
    wait_until("the ready line names the key", DEADLINE, || async move {
        printed
            .stdout_lines()
            .iter()
            .any(|line| line.contains(ready))
    })
    .await;
    let mut kv = etcd.client().await;
    let kv_entry = get(&mut kv, &key).await.expect("the server is registered");
    assert_ne!(kv_entry.lease(), 0, "the key has a lease");

    server.terminate();
    wait_for_key_gone(&kv, &key, REVOKED_NOT_EXPIRED).await;
    let status = server.wait_exit(DEADLINE).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}, stderr:\n{}",
        server.stderr_tail()
    );
}

#[tokio::test]
async fn killed_server_key_expires_within_its_ttl() {
    const TTL: Duration = Duration::from_secs(3);
    let etcd = Etcd::start().await;
    let mut server = ServerProcess::spawn(&etcd.endpoint(), SERVICE, TTL.as_secs()).await;
    let key = format!("{SERVICE}/{}", server.addr());
    let mut kv = etcd.client().await;
    let kv_entry = get(&mut kv, &key).await.expect("the server is registered");
    let lease = kv
        .lease_time_to_live(kv_entry.lease(), None)
        .await
        .expect("lease time to live");
    assert_eq!(lease.granted_ttl(), 3, "{lease:?}");

    server.kill9();
    let killed = Instant::now();
    assert!(
        get(&mut kv, &key).await.is_some(),
        "a killed server cannot deregister: its key outlives it until the lease expires"
    );
    wait_for_key_gone(&kv, &key, TTL + EXPIRY_MARGIN).await;
    let gone_after = killed.elapsed();
    assert!(
        gone_after <= TTL + EXPIRY_MARGIN,
        "gone after {gone_after:?}"
    );
}

/// etcd loses its data (stopped, data directory removed, started again on the same
/// address, back at revision 1): the lease is gone with it, and the registrar grants a new
/// one and puts the key back (issue 12.3).
#[tokio::test]
async fn reregisters_after_etcd_lost_its_data() {
    let mut etcd = Etcd::start().await;
    let registration = Registrar::new(etcd.client().await)
        .ttl(Duration::from_secs(3))
        .register(SERVICE, loopback(50001))
        .await
        .expect("register");
    let key = registration.key().to_owned();
    let old_lease = registration.lease_id().expect("registered");
    let mut kv = etcd.client().await;
    for i in 0..30 {
        kv.put("elsewhere/counter", i.to_string(), None)
            .await
            .expect("put");
    }
    etcd.restart_wiped().await;
    let kv = etcd.client().await;
    let lease = support::leases::wait_for_key(&kv, &key, DEADLINE, |_| true).await;
    assert_ne!(lease, old_lease, "a new lease holds {key}");
    let mut status = registration.status();
    tokio::time::timeout(
        DEADLINE,
        status.wait_for(
            |s| matches!(s, RegistrationStatus::Registered { lease_id } if *lease_id == lease),
        ),
    )
    .await
    .expect("the status names the new lease")
    .expect("the registration runs");
    registration.shutdown().await.expect("revoke");
    assert!(
        matches!(support::leases::lease_of(&kv, &key).await, Ok(None)),
        "the key is gone when shutdown returns"
    );
}

/// One dead member of three: every registration and every revoke succeeds.
#[tokio::test]
async fn registers_and_revokes_every_time_with_one_member_dead() {
    register_and_revoke_through(MemberFault::Dead).await;
}

/// One frozen member of three: every registration and every revoke succeeds.
#[tokio::test]
async fn registers_and_revokes_every_time_with_one_member_frozen() {
    register_and_revoke_through(MemberFault::Frozen).await;
}

/// Registers and shuts down [`FAULT_ROUNDS`] times, each on a new client given all three
/// members, while one has `fault`; the key is in etcd after each registration and gone
/// after each shutdown.
async fn register_and_revoke_through(fault: MemberFault) {
    let (cluster, faulty) = EtcdCluster::start_with_fault(fault).await;
    let mut kv = cluster.client_without(faulty).await;
    for round in 0..FAULT_ROUNDS {
        let etcd = EtcdConfig::new(cluster.endpoints())
            .connect()
            .await
            .unwrap_or_else(|e| panic!("round {round}: connect: {e:?}"));
        let registration = Registrar::new(etcd)
            .grace(Duration::ZERO)
            .register(SERVICE, loopback(50000 + round as u16))
            .await
            .unwrap_or_else(|e| panic!("round {round}: register: {e:?}"));
        let key = registration.key().to_owned();
        assert!(get(&mut kv, &key).await.is_some(), "round {round}: {key}");
        registration
            .shutdown()
            .await
            .unwrap_or_else(|e| panic!("round {round}: revoke: {e:?}"));
        assert!(get(&mut kv, &key).await.is_none(), "round {round}: {key}");
    }
}

/// A greeter that takes `delay` to answer and records that it has answered.
#[derive(Debug)]
struct SlowGreeter {
    addr: SocketAddr,
    delay: Duration,
    finished: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl Greeter for SlowGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        tokio::time::sleep(self.delay).await;
        self.finished.store(true, Ordering::SeqCst);
        let message = greeting(&request.into_inner().name, self.addr);
        Ok(Response::new(HelloReply { message }))
    }
}

/// `127.0.0.1:<port>`.
fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The entry at `key`, if there is one.
async fn get(kv: &mut Client, key: &str) -> Option<KeyValue> {
    let response = kv
        .get(key, None)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"));
    response.kvs().first().cloned()
}

/// Waits until `key` is no longer in etcd.
async fn wait_for_key_gone(kv: &Client, key: &str, deadline: Duration) {
    wait_until(
        &format!("{key} to be deleted within {deadline:?}"),
        deadline,
        || async move { get(&mut kv.clone(), key).await.is_none() },
    )
    .await;
}
