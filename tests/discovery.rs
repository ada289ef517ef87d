//! Discovery against a real etcd and real tonic servers: calls follow the keys under a
//! service's prefix as servers come and go.
//!
//! Each test owns its etcd, so every test uses the service name `greeter`.

mod support;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

use etcd_client::{Client, Txn, TxnOp};
use futures_util::StreamExt;
use tokio::sync::watch;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};
use tonic_etcd::{
    DiscoveryHandle, DiscoveryStatus, DiscoveryStream, EtcdConfig, EtcdDiscover, Registrar,
};
use tower::discover::Change;

use support::etcd::{EtcdCluster, MemberFault};
use support::greeter::backend_of;
use support::observe::{CONVERGE_DEADLINE, StatusLog};
use support::pb::HelloRequest;
use support::pb::greeter_client::GreeterClient;
use support::{Etcd, Load, ServerProcess, TestServer, wait_until};

/// The service every test discovers.
const SERVICE: &str = "greeter";

/// How long discovery may take to reflect a change in etcd.
const DEADLINE: Duration = Duration::from_secs(10);

/// How long one call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times the tests with a faulty member repeat what must succeed every time.
const FAULT_ROUNDS: usize = 12;

/// How long a `greeter_client` run may take.
const CLIENT_DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn finds_servers_registered_before_it_starts() {
    let etcd = Etcd::start().await;
    let servers = [
        TestServer::start().await,
        TestServer::start().await,
        TestServer::start().await,
    ];
    let mut kv = etcd.client().await;
    for server in &servers {
        put_server(&mut kv, server.addr()).await;
    }

    let (client, _discovery) = balanced_client(&etcd).await;
    let expected: BTreeSet<SocketAddr> = servers.iter().map(TestServer::addr).collect();
    wait_for_backends(&client, "all three servers answer", &expected).await;
    for server in &servers {
        assert!(server.calls() > 0, "{} got no call", server.addr());
    }
}

#[tokio::test]
async fn new_server_starts_receiving_calls() {
    let etcd = Etcd::start().await;
    let first = TestServer::start().await;
    let mut kv = etcd.client().await;
    put_server(&mut kv, first.addr()).await;
    let (client, _discovery) = balanced_client(&etcd).await;
    let client = &client;
    for _ in 0..10 {
        assert_eq!(call(client).await, first.addr());
    }

    let second = TestServer::start().await;
    put_server(&mut kv, second.addr()).await;
    let second_addr = second.addr();
    wait_until("calls reach the new server", DEADLINE, || async move {
        call(client).await == second_addr
    })
    .await;
    assert!(second.calls() > 0);
}

#[tokio::test]
async fn deleted_key_gets_no_more_calls() {
    let etcd = Etcd::start().await;
    let (kept, deleted) = (TestServer::start().await, TestServer::start().await);
    let mut kv = etcd.client().await;
    put_server(&mut kv, kept.addr()).await;
    let deleted_key = put_server(&mut kv, deleted.addr()).await;
    let (client, discovery) = balanced_client(&etcd).await;
    let both = BTreeSet::from([kept.addr(), deleted.addr()]);
    wait_for_backends(&client, "both servers answer", &both).await;
    let client = &client;

    kv.delete(deleted_key.as_str(), None)
        .await
        .expect("delete the key");
    // tonic applies the removal only while calls flow, so the wait keeps calling. A run of
    // calls that all reach the kept server, after discovery reports one endpoint, shows the
    // removal has reached the balancer (a run of 10 happens by chance 1 time in 1024).
    let status = discovery.status();
    let status = &status;
    let kept_addr = kept.addr();
    let run = &Cell::new(0);
    wait_until(
        "discovery reports the deletion and calls avoid the server",
        DEADLINE,
        || async move {
            let one_left = matches!(
                *status.borrow(),
                DiscoveryStatus::Synced { endpoints: 1, .. }
            );
            let backend = call(client).await;
            run.set(if one_left && backend == kept_addr {
                run.get() + 1
            } else {
                0
            });
            run.get() >= 10
        },
    )
    .await;

    let before = deleted.calls();
    for i in 0..100 {
        let backend = call(client).await;
        assert_eq!(
            backend, kept_addr,
            "call {i} after the deletion reached the deleted server"
        );
    }
    assert_eq!(deleted.calls(), before);
}

#[tokio::test]
async fn two_instances_of_one_service_both_get_calls() {
    let etcd = Etcd::start().await;
    let (client, discovery) = balanced_client(&etcd).await;
    wait_for_status(
        &discovery.status(),
        "discovery lists an empty service",
        |s| matches!(s, DiscoveryStatus::Synced { endpoints: 0, .. }),
    )
    .await;

    let (a, b) = (TestServer::start().await, TestServer::start().await);
    let _registrations = [
        register(&etcd, a.addr()).await,
        register(&etcd, b.addr()).await,
    ];
    let both = BTreeSet::from([a.addr(), b.addr()]);
    wait_for_backends(&client, "both instances answer", &both).await;

    // Both stay in rotation: p2c over two idle endpoints is a fair coin, so each gets about
    // half, and fewer than a quarter of 200 happens by chance about 1 time in 10^12.
    let tally = calls(&client, 200).await;
    assert_eq!(tally.failed, 0, "failed calls: {tally:?}");
    for addr in [a.addr(), b.addr()] {
        let got = tally.backends.get(&addr).copied().unwrap_or(0);
        assert!(got >= 50, "{addr} got {got} of 200 calls: {tally:?}");
    }
}

#[tokio::test]
async fn ignores_a_sibling_prefix() {
    let etcd = Etcd::start().await;
    let (own, sibling) = (TestServer::start().await, TestServer::start().await);
    let mut kv = etcd.client().await;
    let own_key = put_server(&mut kv, own.addr()).await;
    let sibling_key = format!("{SERVICE}-admin/{}", sibling.addr());
    kv.put(sibling_key.as_str(), naming_value(sibling.addr()), None)
        .await
        .expect("put the sibling key");

    let (client, discovery) = balanced_client(&etcd).await;
    let status = discovery.status();
    wait_for_status(
        &status,
        "discovery lists the prefix",
        DiscoveryStatus::is_synced,
    )
    .await;
    let tally = calls(&client, 100).await;
    assert_eq!(tally.failed, 0, "failed calls: {tally:?}");
    assert_eq!(tally.backends.get(&own.addr()), Some(&100), "{tally:?}");
    assert_eq!(sibling.calls(), 0, "the sibling server was called");
    assert!(
        matches!(
            *status.borrow(),
            DiscoveryStatus::Synced { endpoints: 1, .. }
        ),
        "one endpoint: {:?}",
        *status.borrow()
    );

    // The raw stream: nothing for the sibling, neither listed nor watched. Keys sort with
    // `greeter-admin/` before `greeter/`, so a listed sibling would come first.
    let mut discover = EtcdDiscover::new(etcd.client().await, SERVICE).into_stream();
    assert_eq!(
        next_change(&mut discover).await,
        Seen::insert(&own_key, own.addr())
    );
    let watched_sibling = format!("{SERVICE}-admin/127.0.0.1:7");
    kv.put(watched_sibling.as_str(), naming_value("127.0.0.1:7"), None)
        .await
        .expect("put a second sibling key");
    let marker = put_marker(&mut kv, 8).await;
    assert_eq!(next_change(&mut discover).await, marker);
}

#[tokio::test]
async fn garbage_values_are_skipped_and_fail_no_call() {
    let etcd = Etcd::start().await;
    let (a, b) = (TestServer::start().await, TestServer::start().await);
    let mut kv = etcd.client().await;
    let key_a = put_server(&mut kv, a.addr()).await;
    put_server(&mut kv, b.addr()).await;
    put_garbage(&mut kv, "listed").await;

    let (client, discovery) = balanced_client(&etcd).await;
    let status = discovery.status();
    wait_for_status(
        &status,
        "discovery lists the prefix",
        DiscoveryStatus::is_synced,
    )
    .await;
    let revision = put_garbage(&mut kv, "watched").await;
    wait_for_status(
        &status,
        "discovery reads the watched garbage",
        |s| matches!(s, DiscoveryStatus::Synced { revision: r, .. } if *r >= revision),
    )
    .await;
    let tally = calls(&client, 200).await;
    assert_eq!(tally.failed, 0, "failed calls: {tally:?}");
    assert_eq!(
        tally.backends.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([a.addr(), b.addr()]),
        "{tally:?}"
    );
    assert!(
        matches!(
            *status.borrow(),
            DiscoveryStatus::Synced { endpoints: 2, .. }
        ),
        "only the two good servers are endpoints: {:?}",
        *status.borrow()
    );

    // A good key turned bad keeps the endpoint it had.
    let revision = kv
        .put(
            key_a.as_str(),
            r#"{"Op":0,"Addr":"nope","Metadata":null}"#,
            None,
        )
        .await
        .expect("put garbage over a good key")
        .header()
        .expect("a put response has a header")
        .revision();
    wait_for_status(
        &status,
        "discovery reads the bad update",
        |s| matches!(s, DiscoveryStatus::Synced { revision: r, .. } if *r >= revision),
    )
    .await;
    let before = a.calls();
    let tally = calls(&client, 100).await;
    assert_eq!(tally.failed, 0, "failed calls: {tally:?}");
    assert!(
        a.calls() > before,
        "the server whose value turned bad got no more calls: {tally:?}"
    );
}

#[tokio::test]
async fn changed_value_is_an_insert_with_the_same_key() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let key = format!("{SERVICE}/instance-1");
    put_value(&mut kv, &key, "127.0.0.1:1111").await;
    let mut discover = EtcdDiscover::new(etcd.client().await, SERVICE).into_stream();
    assert_eq!(
        next_change(&mut discover).await,
        Seen::insert(&key, "127.0.0.1:1111")
    );

    put_value(&mut kv, &key, "127.0.0.1:2222").await;
    assert_eq!(
        next_change(&mut discover).await,
        Seen::insert(&key, "127.0.0.1:2222")
    );
    // Nothing else follows the insert, a remove least of all.
    let marker = put_marker(&mut kv, 3333).await;
    assert_eq!(next_change(&mut discover).await, marker);
}

#[tokio::test]
async fn unchanged_value_yields_nothing() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let key = format!("{SERVICE}/instance-1");
    put_value(&mut kv, &key, "127.0.0.1:1111").await;
    let mut discover = EtcdDiscover::new(etcd.client().await, SERVICE).into_stream();
    assert_eq!(
        next_change(&mut discover).await,
        Seen::insert(&key, "127.0.0.1:1111")
    );

    // etcd records the same value as a new revision and sends the event all the same.
    put_value(&mut kv, &key, "127.0.0.1:1111").await;
    let marker = put_marker(&mut kv, 3333).await;
    assert_eq!(next_change(&mut discover).await, marker);
}

#[tokio::test]
async fn applies_every_change_of_a_transaction() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let [a, b, c] = ["a", "b", "c"].map(|id| format!("{SERVICE}/{id}"));
    put_value(&mut kv, &a, "127.0.0.1:1001").await;
    put_value(&mut kv, &b, "127.0.0.1:1002").await;
    let mut discover = EtcdDiscover::new(etcd.client().await, SERVICE).into_stream();
    let listed = [
        next_change(&mut discover).await,
        next_change(&mut discover).await,
    ];
    assert_eq!(
        BTreeSet::from(listed),
        BTreeSet::from([
            Seen::insert(&a, "127.0.0.1:1001"),
            Seen::insert(&b, "127.0.0.1:1002")
        ])
    );

    let txn = Txn::new().and_then([
        TxnOp::delete(a.as_str(), None),
        TxnOp::delete(b.as_str(), None),
        TxnOp::put(c.as_str(), naming_value("127.0.0.1:1003"), None),
    ]);
    let before = etcd.revision().await;
    let response = kv.txn(txn).await.expect("run the transaction");
    let after = response.header().expect("a txn has a header").revision();
    assert_eq!(after, before + 1, "the transaction is one revision");

    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        seen.insert(next_change(&mut discover).await);
    }
    assert_eq!(
        seen,
        BTreeSet::from([
            Seen::Remove(a),
            Seen::Remove(b),
            Seen::insert(&c, "127.0.0.1:1003")
        ])
    );
    let marker = put_marker(&mut kv, 1004).await;
    assert_eq!(next_change(&mut discover).await, marker);
}

#[tokio::test]
async fn greeter_client_exits_2_when_etcd_is_unreachable() {
    let port = support::process::free_ports(1)[0];
    let unreachable = format!("http://127.0.0.1:{port}");
    let output = run_greeter_client(&["--etcd", &unreachable, "--requests", "1"]).await;

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "exit status {}, stderr: {stderr}",
        output.status
    );
    assert!(
        output.stdout.is_empty(),
        "no summary without etcd, got {:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line of reason, got {stderr:?}");
    assert!(
        lines[0].starts_with("greeter_client: ") && lines[0].contains("etcd"),
        "the reason names etcd: {stderr:?}"
    );
}

#[tokio::test]
async fn greeter_client_spreads_calls_over_three_server_processes() {
    let etcd = Etcd::start().await;
    let endpoint = etcd.endpoint();
    let servers = [
        ServerProcess::spawn(&endpoint, SERVICE, 10).await,
        ServerProcess::spawn(&endpoint, SERVICE, 10).await,
        ServerProcess::spawn(&endpoint, SERVICE, 10).await,
    ];
    let args = [
        "--etcd",
        &endpoint,
        "--service",
        SERVICE,
        "--requests",
        "300",
        "--concurrency",
        "4",
    ];
    let output = run_greeter_client(&args).await;

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit status {}\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    let summary: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the last line {last:?} is not the JSON summary: {e}"));
    assert_eq!(summary["ok"], 300, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(summary["p50_ms"].is_number(), "{summary}");
    assert!(summary["p99_ms"].is_number(), "{summary}");
    let backends = summary["backends"]
        .as_object()
        .unwrap_or_else(|| panic!("backends is an object: {summary}"));
    let expected: BTreeSet<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    assert_eq!(
        backends.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "{summary}"
    );
    // The crate's balancer picks latency-first, so on a busy machine one server can take
    // far more than a third: what it guarantees is that every live server gets calls.
    for (addr, count) in backends {
        let count = count.as_u64().unwrap_or_default();
        assert!(count > 0, "{addr} got none of the 300 calls: {summary}");
    }
}

/// What the discovery stream announced, in a form tests can compare.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    /// A key and the `host:port` of its endpoint.
    Insert(String, String),
    Remove(String),
}

impl Seen {
    fn insert(key: &str, addr: impl Display) -> Seen {
        Seen::Insert(key.to_owned(), addr.to_string())
    }
}

impl From<Change<String, Endpoint>> for Seen {
    fn from(change: Change<String, Endpoint>) -> Seen {
        match change {
            Change::Insert(key, endpoint) => {
                let authority = endpoint
                    .uri()
                    .authority()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                Seen::Insert(key, authority)
            }
            Change::Remove(key) => Seen::Remove(key),
        }
    }
}

/// The next change from `discover`, within [`DEADLINE`].
async fn next_change(discover: &mut DiscoveryStream) -> Seen {
    match tokio::time::timeout(DEADLINE, discover.next()).await {
        Ok(Some(Ok(change))) => change.into(),
        Ok(Some(Err(e))) => panic!("discovery failed: {e}"),
        Ok(None) => panic!("discovery ended"),
        Err(_) => panic!("no change from discovery within {DEADLINE:?}"),
    }
}

/// The value etcd's Go naming package writes for `addr`.
fn naming_value(addr: impl Display) -> String {
    format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":null}}"#)
}

/// Registers `addr` as Go's naming package does: `greeter/<addr>`, no lease. Returns the key.
async fn put_server(kv: &mut Client, addr: SocketAddr) -> String {
    let key = format!("{SERVICE}/{addr}");
    put_value(kv, &key, addr).await;
    key
}

/// Puts an etcd naming value for `addr` at `key`.
async fn put_value(kv: &mut Client, key: &str, addr: impl Display) {
    kv.put(key, naming_value(addr), None)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

/// Puts a marker key for the address `127.0.0.1:<port>` and returns what it announces.
async fn put_marker(kv: &mut Client, port: u16) -> Seen {
    let key = format!("{SERVICE}/marker-{port}");
    let addr = format!("127.0.0.1:{port}");
    put_value(kv, &key, &addr).await;
    Seen::insert(&key, addr)
}

/// Puts one value of each kind of garbage under the prefix, with keys named `<tag>-...`, and
/// returns the revision of the last put.
async fn put_garbage(kv: &mut Client, tag: &str) -> i64 {
    let garbage: [(&str, &[u8]); 5] = [
        ("not-json", b"127.0.0.1:1"),
        ("no-addr", br#"{"Op":0,"Metadata":null}"#),
        ("bad-addr", br#"{"Op":0,"Addr":"nope","Metadata":null}"#),
        ("not-utf8", &[0xff, 0xfe, 0xfd]),
        (
            "port-0",
            br#"{"Op":0,"Addr":"127.0.0.1:0","Metadata":null}"#,
        ),
    ];
    let mut revision = 0;
    for (name, value) in garbage {
        let key = format!("{SERVICE}/{tag}-{name}");
        let response = kv
            .put(key.as_str(), value, None)
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
        revision = response.header().expect("a put has a header").revision();
    }
    revision
}

/// etcd loses its data (stopped, data directory removed, started again on the same address)
/// while a client calls, three times over, each time with a history well ahead of the wiped
/// one: a server registered afterwards receives calls, and so do the ones registered
/// before, once their registrars have registered them again (issue 12.3).
#[tokio::test]
async fn calls_a_server_registered_after_etcd_lost_its_data() {
    const ROUNDS: usize = 3;
    let mut etcd = Etcd::start().await;
    let mut servers = vec![TestServer::start().await];
    let mut registrations = vec![register(&etcd, servers[0].addr()).await];
    let (channel, discovery) = EtcdDiscover::new(etcd.client().await, SERVICE).balance_channel();
    let load = Load::start(channel, 2, CALL_TIMEOUT);
    wait_until("calls reach the first server", DEADLINE, || async {
        servers[0].calls() > 0
    })
    .await;
    for round in 0..ROUNDS {
        let mut kv = etcd.client().await;
        for i in 0..30 {
            kv.put("elsewhere/counter", i.to_string(), None)
                .await
                .expect("put");
        }
        etcd.restart_wiped().await;
        servers.push(TestServer::start().await);
        let added = servers.last().map(TestServer::addr).expect("a server");
        registrations.push(register(&etcd, added).await);
        let before: Vec<usize> = servers.iter().map(TestServer::calls).collect();
        let what = format!("round {round}: calls reach the new server and every earlier one");
        wait_until(&what, CONVERGE_DEADLINE, || async {
            servers.iter().zip(&before).all(|(s, b)| s.calls() > *b)
        })
        .await;
    }
    drop(load.stop().await);
    drop(registrations);
    discovery.stop().await;
}

/// Registers `addr` with the crate's registrar, in the default format.
async fn register(etcd: &Etcd, addr: SocketAddr) -> tonic_etcd::Registration {
    Registrar::new(etcd.client().await)
        .ttl(Duration::from_secs(5))
        .register(SERVICE, addr)
        .await
        .unwrap_or_else(|e| panic!("register {addr}: {e}"))
}

/// A greeter client over a balanced channel that discovers [`SERVICE`] in `etcd`.
async fn balanced_client(etcd: &Etcd) -> (GreeterClient<Channel>, DiscoveryHandle) {
    let (channel, discovery) = EtcdDiscover::new(etcd.client().await, SERVICE).balance_channel();
    (GreeterClient::new(channel), discovery)
}

/// Keeps calling until every server in `expected`, and no other, has answered.
async fn wait_for_backends(
    client: &GreeterClient<Channel>,
    what: &str,
    expected: &BTreeSet<SocketAddr>,
) {
    let answered = &RefCell::new(BTreeSet::new());
    wait_until(what, DEADLINE, || async move {
        let backend = call(client).await;
        assert!(
            expected.contains(&backend),
            "unexpected server {backend} answered"
        );
        answered.borrow_mut().insert(backend);
        *answered.borrow() == *expected
    })
    .await;
}

/// Waits until the discovery status satisfies `f`; on timeout, panics with the last status.
async fn wait_for_status(
    status: &watch::Receiver<DiscoveryStatus>,
    what: &str,
    f: impl Fn(&DiscoveryStatus) -> bool,
) {
    let mut status = status.clone();
    let reached = tokio::time::timeout(DEADLINE, status.wait_for(|s| f(s)))
        .await
        .is_ok_and(|r| r.is_ok());
    if !reached {
        panic!(
            "timed out after {DEADLINE:?} waiting for {what}; last status: {:?}",
            *status.borrow()
        );
    }
}

/// Makes one call and returns the server that answered.
async fn try_call(client: &GreeterClient<Channel>) -> Result<SocketAddr, Status> {
    let mut client = client.clone();
    let request = HelloRequest {
        name: "discovery".into(),
    };
    match tokio::time::timeout(CALL_TIMEOUT, client.say_hello(request)).await {
        Ok(reply) => Ok(backend_of(&reply?.into_inner().message)),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no reply within {CALL_TIMEOUT:?}"
        ))),
    }
}

/// Makes one call that must succeed, and returns the server that answered.
async fn call(client: &GreeterClient<Channel>) -> SocketAddr {
    try_call(client)
        .await
        .unwrap_or_else(|status| panic!("call failed: {status}"))
}

/// The outcome of a series of calls.
#[derive(Debug, Default)]
struct Tally {
    backends: BTreeMap<SocketAddr, usize>,
    failed: usize,
}

/// Makes `n` calls one after another and counts where they went.
async fn calls(client: &GreeterClient<Channel>, n: usize) -> Tally {
    let mut tally = Tally::default();
    for _ in 0..n {
        match try_call(client).await {
            Ok(addr) => *tally.backends.entry(addr).or_default() += 1,
            Err(_) => tally.failed += 1,
        }
    }
    tally
}

/// One dead member of three: every first listing succeeds, with no retry.
#[tokio::test]
async fn first_listing_succeeds_every_time_with_one_member_dead() {
    list_through(MemberFault::Dead).await;
}

/// One frozen member of three: every first listing succeeds, with no retry.
#[tokio::test]
async fn first_listing_succeeds_every_time_with_one_member_frozen() {
    list_through(MemberFault::Frozen).await;
}

/// Starts a discovery [`FAULT_ROUNDS`] times, each on a new client given all three members
/// while one has `fault`: its first item is the registered endpoint, and it never reports
/// `Retrying` on the way.
async fn list_through(fault: MemberFault) {
    let (cluster, faulty) = EtcdCluster::start_with_fault(fault).await;
    let mut kv = cluster.client_without(faulty).await;
    let key = format!("{SERVICE}/127.0.0.1:50051");
    kv.put(key.as_str(), r#"{"Addr":"127.0.0.1:50051"}"#, None)
        .await
        .expect("put");
    for round in 0..FAULT_ROUNDS {
        let etcd = EtcdConfig::new(cluster.endpoints())
            .connect()
            .await
            .unwrap_or_else(|e| panic!("round {round}: connect: {e:?}"));
        let mut discover = EtcdDiscover::new(etcd, SERVICE).into_stream();
        let log = StatusLog::start(discover.status());
        let first = tokio::time::timeout(DEADLINE, discover.next()).await;
        assert!(
            matches!(&first, Ok(Some(Ok(Change::Insert(k, _)))) if *k == key),
            "round {round}: {first:?}"
        );
        assert_eq!(log.retrying(), 0, "round {round}: {}", log.summary());
    }
}

/// One dead member of three: two `greeter_server`s start, and every `greeter_client` run
/// serves all its calls.
#[tokio::test]
async fn greeter_client_serves_every_run_with_one_member_dead() {
    serve_through(MemberFault::Dead).await;
}

/// One frozen member of three: the same.
#[tokio::test]
async fn greeter_client_serves_every_run_with_one_member_frozen() {
    serve_through(MemberFault::Frozen).await;
}

/// Runs two `greeter_server`s and [`FAULT_ROUNDS`] `greeter_client`s of 50 calls, all
/// given the three members while one has `fault`: no call fails.
async fn serve_through(fault: MemberFault) {
    let (cluster, _) = EtcdCluster::start_with_fault(fault).await;
    let endpoints = cluster.endpoints_arg();
    let _servers = [
        ServerProcess::spawn(&endpoints, SERVICE, 10).await,
        ServerProcess::spawn(&endpoints, SERVICE, 10).await,
    ];
    let args = [
        "--etcd",
        &endpoints,
        "--service",
        SERVICE,
        "--requests",
        "50",
    ];
    for round in 0..FAULT_ROUNDS {
        let output = run_greeter_client(&args).await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "round {round}: exit status {}\nstdout: {stdout}\nstderr: {stderr}",
            output.status
        );
        let summary: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap_or_default())
                .unwrap_or_else(|e| panic!("round {round}: no JSON summary: {e}: {stdout}"));
        assert_eq!(summary["ok"], 50, "round {round}: {summary}");
    }
}

/// 100,000 keys (about 7 MB of values, over the client's 4 MiB decode limit in one response)
/// sync: discovery lists them in pages and announces every one.
#[tokio::test]
async fn syncs_a_prefix_of_100000_keys() {
    let etcd = Etcd::start().await;
    fill(&etcd.client().await, 100_000).await;
    let mut discover = EtcdDiscover::new(etcd.client().await, SERVICE).into_stream();
    let inserts = count_inserts(&mut discover, 100_000, Duration::from_secs(300)).await;
    assert_eq!(inserts, 100_000);
    assert!(discover.status().borrow().is_synced());
}

/// Sync time and memory for 10,000 and 100,000 keys: from the first poll to the last insert,
/// and the growth of the process's resident set (the discovery and its balancer-less
/// stream consumer only).
///
/// ```text
/// cargo test --all-features --test discovery -- --ignored --nocapture measures_sync
/// ```
#[tokio::test]
#[ignore = "a measurement; takes about a minute"]
async fn measures_sync_of_large_prefixes() {
    for n in [10_000, 100_000] {
        let etcd = Etcd::start().await;
        fill(&etcd.client().await, n).await;
        let client = etcd.client().await;
        let before = resident_kib();
        let started = tokio::time::Instant::now();
        let mut discover = EtcdDiscover::new(client, SERVICE).into_stream();
        let inserts = count_inserts(&mut discover, n, Duration::from_secs(600)).await;
        let elapsed = started.elapsed();
        let grown = resident_kib().saturating_sub(before);
        eprintln!(
            "{n} keys: synced in {elapsed:?}; resident set grew {} KiB ({} bytes per key)",
            grown,
            grown * 1024 / n
        );
        assert_eq!(inserts, n);
        drop(discover);
    }
}

/// Puts `n` etcd naming keys under [`SERVICE`], 128 to a transaction (etcd's limit).
async fn fill(client: &Client, n: usize) {
    let mut kv = client.clone();
    let metadata = "m".repeat(40);
    for chunk in (0..n).collect::<Vec<_>>().chunks(128) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| {
                let addr = format!(
                    "127.{}.{}.{}:{}",
                    i >> 16 & 255,
                    i >> 8 & 255,
                    i & 255,
                    1000 + i % 50000
                );
                let value = format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":"{metadata}"}}"#);
                TxnOp::put(format!("{SERVICE}/{addr}"), value, None)
            })
            .collect();
        kv.txn(Txn::new().and_then(ops)).await.expect("txn");
    }
}

/// Counts inserts from `discover` until `n` have come, failing after `deadline`.
async fn count_inserts(discover: &mut DiscoveryStream, n: usize, deadline: Duration) -> usize {
    let mut inserts = 0;
    let count = async {
        while inserts < n {
            match discover.next().await {
                Some(Ok(Change::Insert(..))) => inserts += 1,
                other => panic!("after {inserts} inserts: {other:?}"),
            }
        }
    };
    if tokio::time::timeout(deadline, count).await.is_err() {
        panic!("only {inserts} of {n} inserts within {deadline:?}");
    }
    inserts
}

/// The process's resident set, in KiB, from /proc/self/status.
fn resident_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs the `greeter_client` example with `args` and the default log filter, and returns
/// its output once it exits.
async fn run_greeter_client(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(greeter_client_binary())
        .args(args)
        .env_remove("ETCD_ENDPOINTS")
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(CLIENT_DEADLINE, run).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("run greeter_client: {e}")),
        Err(_) => panic!("greeter_client did not exit within {CLIENT_DEADLINE:?}"),
    }
}

/// The `greeter_client` example, built once per test binary with this binary's features.
fn greeter_client_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| support::greeter::example_binary("greeter_client"))
}

#[tokio::test]
async fn a_shared_watch_outlives_the_runtime_that_started_it() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let value = |port: u16| format!(r#"{{"Addr":"127.0.0.1:{port}"}}"#);
    kv.put(format!("{SERVICE}/a"), value(1), None)
        .await
        .expect("put");
    let shared = tonic_etcd::SharedDiscovery::new(etcd.client().await);
    let shared_a = shared.clone();
    let (joined, b_joined) = std::sync::mpsc::channel::<()>();
    // Runtime A starts the shared watch, outlives B's joining, then shuts down while its
    // discovery is still alive (leaked), as a runtime of its own in a bigger program might.
    let a = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime A");
        runtime.block_on(async {
            let mut discover = shared_a.discover(SERVICE).into_stream();
            assert!(matches!(discover.next().await, Some(Ok(_))));
            std::mem::forget(discover);
        });
        b_joined.recv().expect("B joins");
        drop(runtime);
    });
    let mut b = shared.discover(SERVICE).into_stream();
    assert!(matches!(b.next().await, Some(Ok(Change::Insert(..)))));
    assert_eq!(shared.watches(), 1, "B shares A's watch");
    joined.send(()).expect("A waits");
    tokio::task::spawn_blocking(move || a.join().expect("runtime A ends"))
        .await
        .expect("join");
    kv.put(format!("{SERVICE}/b"), value(2), None)
        .await
        .expect("put");
    let next = tokio::time::timeout(Duration::from_secs(10), b.next())
        .await
        .expect("B still follows the prefix after A's runtime is gone");
    assert!(
        matches!(&next, Some(Ok(Change::Insert(key, _))) if key == &format!("{SERVICE}/b")),
        "{next:?}"
    );
}
