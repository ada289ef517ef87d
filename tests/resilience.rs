//! Discovery that survives etcd, against real etcd processes (issue 3):
//!
//! - `kill -9` and restart of etcd while 4 callers use a balanced channel over 3 servers;
//! - changes and a compaction made while the watcher is cut off, then a reconnect;
//! - the leader of a three-member cluster killed under load;
//! - random histories of puts, deletes, transactions, compactions and restarts.
//!
//! No `Err` may reach a consumer in any of them. Run with
//! `cargo test --test resilience -- --nocapture` to see the measurements; set
//! `RESILIENCE_SEEDS=7,42` to replay chosen seeds of the random test.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic_etcd::etcd_client::{
    self, Client, ConnectOptions, GetOptions, Permission, RoleRevokePermissionOptions, Txn, TxnOp,
};
use tonic_etcd::{
    Backoff, DiscoveryStatus, EtcdConfig, EtcdDiscover, Registrar, RegistrationStatus,
};

use support::leases::wait_for_key;
use support::observe::{CONVERGE_DEADLINE, Event, Feed, StatusLog};
use support::{
    Etcd, EtcdCluster, Load, Relay, Tally, TestServer, wait_for, wait_until, wait_until_quietly,
};

/// Concurrent callers on the balanced channel.
const CALLERS: usize = 4;

/// How long one greeter call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an etcd operation is retried while etcd reconnects or elects a leader.
const OP_DEADLINE: Duration = Duration::from_secs(20);

/// How long one attempt of an etcd operation may take.
const OP_ATTEMPT: Duration = Duration::from_secs(2);

/// How long a resumed watch (1 s backoff) may take to announce a fresh put: generous, as the
/// test is about what is announced, not how soon (a lost change never arrives).
const SENTINEL_DEADLINE: Duration = CONVERGE_DEADLINE;

/// Calls in one observation window of [`wait_reaching`].
const WINDOW_CALLS: usize = 200;

/// The backoff of the disconnected-changes tests: the watcher stays away 1.5 to 3 s.
const LONG_BACKOFF: Duration = Duration::from_secs(3);

/// Kill and restart rounds in the balanced-channel test, one measurement each.
const RESTART_ROUNDS: usize = 3;

// ---------------------------------------------------------------------------------------
// etcd helpers
// ---------------------------------------------------------------------------------------

/// An etcd naming value, as Go's `endpoints.Manager` writes it.
fn naming_value(addr: &str) -> String {
    format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":null}}"#)
}

/// The key of a server: `<service>/<addr>`.
fn server_key(service: &str, addr: SocketAddr) -> String {
    format!("{service}/{addr}")
}

/// The options a real client would use: short connect timeout, request timeout,
/// HTTP/2 keep-alive (as in `examples/common`).
fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true)
}

/// A client of `endpoints`. Connecting does no I/O, so this fails only on a bad URL.
async fn connect(endpoints: &[String]) -> Client {
    Client::connect(endpoints, Some(connect_options()))
        .await
        .unwrap_or_else(|e| panic!("connect an etcd client to {endpoints:?}: {e}"))
}

/// Runs `op` until etcd accepts it (it may be reconnecting or electing a leader), each
/// attempt bounded by [`OP_ATTEMPT`]. Every operation used here is idempotent.
async fn etcd_op<T, F, Fut>(what: &str, client: &Client, op: F) -> T
where
    F: Fn(Client) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    wait_for(what, OP_DEADLINE, || {
        let attempt = op(client.clone());
        async move { tokio::time::timeout(OP_ATTEMPT, attempt).await.ok()?.ok() }
    })
    .await
}

/// Puts `key = value` and returns the revision of the put.
async fn put(client: &Client, key: &str, value: &str) -> i64 {
    let response = etcd_op(&format!("put {key}"), client, |mut c| async move {
        c.put(key, value, None).await
    })
    .await;
    response.header().map_or(0, |h| h.revision())
}

/// Deletes `key` and returns the revision of the delete.
async fn delete(client: &Client, key: &str) -> i64 {
    let response = etcd_op(&format!("delete {key}"), client, |mut c| async move {
        c.delete(key, None).await
    })
    .await;
    response.header().map_or(0, |h| h.revision())
}

/// Applies `ops` in one transaction (one revision) and returns its revision.
async fn txn(client: &Client, ops: &[TxnOp]) -> i64 {
    let response = etcd_op("a transaction", client, |mut c| async move {
        c.txn(Txn::new().and_then(ops.to_vec())).await
    })
    .await;
    response.header().map_or(0, |h| h.revision())
}

/// What etcd holds under `<service>/`: key to the `Addr` of its value.
async fn listing(client: &Client, service: &str) -> BTreeMap<String, String> {
    let prefix = format!("{service}/");
    let response = etcd_op("get --prefix", client, |mut c| {
        let prefix = prefix.clone();
        async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
    })
    .await;
    response
        .kvs()
        .iter()
        .map(|kv| {
            let key = kv.key_str().expect("utf-8 key").to_owned();
            let value: serde_json::Value =
                serde_json::from_slice(kv.value()).expect("an etcd naming value");
            let addr = value["Addr"].as_str().expect("an Addr").to_owned();
            (key, addr)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Servers behind a balanced channel
// ---------------------------------------------------------------------------------------

/// Waits until, within one window of [`WINDOW_CALLS`] calls, exactly the servers at
/// `expected` receive calls: the balancer's endpoint set is `expected`.
async fn wait_reaching(what: &str, servers: &[TestServer], expected: &[SocketAddr]) {
    let expected: BTreeSet<SocketAddr> = expected.iter().copied().collect();
    let total = || servers.iter().map(TestServer::calls).sum::<usize>();
    let end = Instant::now() + CONVERGE_DEADLINE;
    let mut reached = BTreeSet::new();
    while Instant::now() < end {
        let before: Vec<usize> = servers.iter().map(TestServer::calls).collect();
        let goal = before.iter().sum::<usize>() + WINDOW_CALLS;
        // The window waits as long as the whole deadline allows: on a busy machine 200
        // calls can take seconds. One that never fills fails below, naming the servers.
        let left = end.saturating_duration_since(Instant::now());
        if !wait_until_quietly(left, || total() >= goal).await {
            break;
        }
        reached = servers
            .iter()
            .zip(&before)
            .filter(|(server, before)| server.calls() > **before)
            .map(|(server, _)| server.addr())
            .collect();
        if reached == expected {
            return;
        }
    }
    panic!(
        "{what}: calls still reach {reached:?}, expected {expected:?} within {CONVERGE_DEADLINE:?}"
    );
}

/// Registers `server` under `service` without a lease, as a static registration.
async fn register(client: &Client, service: &str, server: &TestServer) -> i64 {
    let addr = server.addr();
    put(
        client,
        &server_key(service, addr),
        &naming_value(&addr.to_string()),
    )
    .await
}

fn addrs(servers: &[TestServer]) -> Vec<SocketAddr> {
    servers.iter().map(TestServer::addr).collect()
}

// ---------------------------------------------------------------------------------------
// 1. kill -9 and restart under load
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_calling_through_etcd_kill_and_restart() {
    let service = "services/restart";
    let mut etcd = Etcd::start().await;
    let admin = connect(&[etcd.endpoint()]).await;
    let mut servers = Vec::new();
    for _ in 0..3 + RESTART_ROUNDS {
        servers.push(TestServer::start().await);
    }
    for server in &servers[..3] {
        register(&admin, service, server).await;
    }

    let discover = EtcdDiscover::new(connect(&[etcd.endpoint()]).await, service);
    let (channel, handle) = discover.balance_channel();
    let status = StatusLog::start(handle.status());
    let load = Load::start(channel, CALLERS, CALL_TIMEOUT);
    let all = addrs(&servers);
    wait_reaching("before the outage", &servers, &all[..3]).await;

    let mut applied_after = Vec::new();
    for round in 0..RESTART_ROUNDS {
        let live = &all[..3 + round];
        let retrying = status.retrying();
        let killed = Instant::now();
        etcd.kill();
        // Longer outages each round: etcd stays down until discovery has failed
        // `round + 1` times, so its backoff has grown.
        status
            .wait_retrying_after(retrying + round, "discovery reports the outage")
            .await;
        // Fail static: every known server keeps receiving calls while etcd is down.
        wait_reaching("while etcd is down", &servers, live).await;
        let outage = killed.elapsed();
        let failures = status.retrying() - retrying;

        etcd.restart().await;
        let back = Instant::now();
        let added = &servers[3 + round];
        register(&admin, service, added).await;
        let put_took = back.elapsed();
        wait_until(
            "calls reach the server registered after the restart",
            CONVERGE_DEADLINE,
            || async { added.calls() > 0 },
        )
        .await;
        let applied = back.elapsed();
        applied_after.push(applied);
        eprintln!(
            "restart round {round}: outage {} ms ({} failures), put {} ms after etcd came back, \
             first call to the new server {} ms after etcd came back, failed calls so far {}",
            outage.as_millis(),
            failures,
            put_took.as_millis(),
            applied.as_millis(),
            load.failed(),
        );
        wait_reaching("after the restart", &servers, &all[..4 + round]).await;
    }

    // The endpoint set still follows etcd: a deleted key stops receiving calls.
    delete(&admin, &server_key(service, all[0])).await;
    wait_reaching("after a delete", &servers, &all[1..]).await;

    let Tally {
        ok, failed, errors, ..
    } = load.stop().await;
    let ms: Vec<u128> = applied_after.iter().map(Duration::as_millis).collect();
    eprintln!(
        "etcd kill/restart x{RESTART_ROUNDS} with 3+ servers and {CALLERS} callers: \
         {ok} ok, {failed} failed; first applied change after restart (ms): {ms:?}; \
         statuses: {}",
        status.summary()
    );
    assert_eq!(failed, 0, "calls failed across etcd restarts: {errors:#?}");
    assert!(
        status.retrying() >= RESTART_ROUNDS,
        "Retrying reported for each outage: {}",
        status.summary()
    );
    status.assert_never_failed("restart under load");
    handle.stop().await;
}

// ---------------------------------------------------------------------------------------
// 2. changes and a compaction while the watcher is disconnected
// ---------------------------------------------------------------------------------------

/// How the watcher is kept away from etcd while the test changes it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outage {
    /// The relay drops the watcher's connection; etcd keeps running.
    Cut,
    /// The relay drops the connection, etcd is killed with SIGKILL and restarted.
    KillAndRestart,
}

/// The expected announcement of `addr` at `key`.
fn insert(key: &str, addr: &str) -> Event {
    Event::Insert(key.to_owned(), addr.to_owned())
}

/// The reconnect scenario: five keys announced; while the watcher is away, two are
/// deleted, one is updated, two are added, one is added and deleted again, the other two
/// are rewritten with their own values or changed and changed back; then the history is
/// compacted. On reconnect exactly the net changes must be announced.
async fn changes_while_disconnected(outage: Outage) {
    let service = "services/resync";
    let key = |name: &str| format!("{service}/{name}");
    let mut etcd = Etcd::start().await;
    let admin = connect(&[etcd.endpoint()]).await;
    let relay = Relay::start(&etcd.endpoint()).await;
    let initial = [
        ("a", "127.0.0.1:10001"),
        ("b", "127.0.0.1:10002"),
        ("c", "127.0.0.1:10003"),
        ("d", "127.0.0.1:10004"),
        ("e", "127.0.0.1:10005"),
    ];
    for (name, addr) in initial {
        put(&admin, &key(name), &naming_value(addr)).await;
    }

    let discover = EtcdDiscover::new(connect(&[relay.url()]).await, service)
        .backoff(Backoff::default().initial(LONG_BACKOFF).max(LONG_BACKOFF));
    let mut feed = Feed::start(discover);
    let mut first = Vec::new();
    for _ in initial {
        first.push(feed.next("the initial listing", CONVERGE_DEADLINE).await);
    }
    first.sort();
    let expected: Vec<Event> = initial.iter().map(|(n, a)| insert(&key(n), a)).collect();
    assert_eq!(first, expected, "the initial listing");
    // A barrier: the insert of `ready` proves that the watch is open and streaming, so
    // the cut breaks a running watch, which must resume from its last revision.
    put(&admin, &key("ready"), &naming_value("127.0.0.1:10000")).await;
    let ready = feed.next("the watch is open", CONVERGE_DEADLINE).await;
    assert_eq!(ready, insert(&key("ready"), "127.0.0.1:10000"));

    // Cut the watcher off, and see it notice: it now waits 1.5 to 3 s per attempt.
    let retrying = feed.status.retrying();
    relay.close();
    feed.status
        .wait_retrying_after(retrying, "discovery reports the cut")
        .await;
    if outage == Outage::KillAndRestart {
        etcd.kill();
        etcd.restart().await;
    }
    let started = Instant::now();

    delete(&admin, &key("a")).await;
    delete(&admin, &key("b")).await;
    put(&admin, &key("e"), &naming_value("127.0.0.1:20005")).await;
    put(&admin, &key("f"), &naming_value("127.0.0.1:10006")).await;
    put(&admin, &key("g"), &naming_value("127.0.0.1:10007")).await;
    put(&admin, &key("h"), &naming_value("127.0.0.1:10008")).await;
    delete(&admin, &key("h")).await;
    for _ in 0..3 {
        put(&admin, &key("d"), &naming_value("127.0.0.1:10004")).await;
    }
    put(&admin, &key("c"), &naming_value("127.0.0.1:20003")).await;
    let after = put(&admin, &key("c"), &naming_value("127.0.0.1:10003")).await;
    assert_eq!(etcd.compact().await, after, "compacted at the last change");
    // Nothing can have been announced: the watcher cannot reach etcd.
    feed.assert_quiet("while the watcher is cut off");
    eprintln!(
        "{outage:?}: changes and compaction made in {} ms while the watcher was away; \
         statuses: {}",
        started.elapsed().as_millis(),
        feed.status.summary()
    );

    relay.open();
    feed.status
        .wait_synced_at(after, "after the reconnect")
        .await;
    // A barrier: the sentinel's insert comes after everything the reconnect announced.
    let sentinel = insert(&key("sentinel"), "127.0.0.1:10009");
    put(&admin, &key("sentinel"), &naming_value("127.0.0.1:10009")).await;
    let mut changes = feed.until("the reconnect's changes", &sentinel).await;
    changes.sort();
    let expected = vec![
        insert(&key("e"), "127.0.0.1:20005"),
        insert(&key("f"), "127.0.0.1:10006"),
        insert(&key("g"), "127.0.0.1:10007"),
        Event::Remove(key("a")),
        Event::Remove(key("b")),
    ];
    assert_eq!(
        changes,
        expected,
        "exactly the net changes, nothing for c, d and h; statuses: {}",
        feed.status.summary()
    );

    // An identical put announces nothing; an update is a single insert, never a remove.
    put(&admin, &key("f"), &naming_value("127.0.0.1:10006")).await;
    put(&admin, &key("g"), &naming_value("127.0.0.1:20007")).await;
    let sentinel = insert(&key("sentinel"), "127.0.0.1:20009");
    put(&admin, &key("sentinel"), &naming_value("127.0.0.1:20009")).await;
    let changes = feed
        .until("an identical put and an update", &sentinel)
        .await;
    assert_eq!(changes, vec![insert(&key("g"), "127.0.0.1:20007")]);

    assert_eq!(feed.endpoints(), listing(&admin, service).await);
    assert!(
        feed.status.retrying() > retrying,
        "Retrying reported: {}",
        feed.status.summary()
    );
    feed.assert_clean("changes while disconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relists_and_diffs_after_a_compaction_while_cut_off() {
    changes_while_disconnected(Outage::Cut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_after_restart_with_changes_and_compaction_while_away() {
    changes_while_disconnected(Outage::KillAndRestart).await;
}

/// etcd loses its data while the watcher is cut off: stopped, its data directory removed,
/// started again on the same address (revision 1, the same cluster id). Before the watcher
/// is back, one server registers again with its old value and a new one registers, in far
/// fewer revisions than the watcher had applied, so a resumed watch would wait for a
/// revision the new history has not reached. The watcher notices, lists again and announces
/// the net changes: the new server and the removals, nothing for the key that came back
/// unchanged (issue 12.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relists_when_etcd_comes_back_with_an_older_history() {
    let service = "services/wiped";
    let key = |name: &str| format!("{service}/{name}");
    let mut etcd = Etcd::start().await;
    let admin = connect(&[etcd.endpoint()]).await;
    let relay = Relay::start(&etcd.endpoint()).await;
    put(&admin, &key("a"), &naming_value("127.0.0.1:10001")).await;
    put(&admin, &key("b"), &naming_value("127.0.0.1:10002")).await;
    for i in 0..20 {
        put(&admin, "elsewhere/counter", &i.to_string()).await;
    }
    let discover = EtcdDiscover::new(connect(&[relay.url()]).await, service)
        .backoff(Backoff::default().initial(LONG_BACKOFF).max(LONG_BACKOFF));
    let mut feed = Feed::start(discover);
    let mut first = vec![
        feed.next("the initial listing", CONVERGE_DEADLINE).await,
        feed.next("the initial listing", CONVERGE_DEADLINE).await,
    ];
    first.sort();
    let expected = vec![
        insert(&key("a"), "127.0.0.1:10001"),
        insert(&key("b"), "127.0.0.1:10002"),
    ];
    assert_eq!(first, expected, "the initial listing");
    // A barrier: the watch is open and streaming, at the applied revision.
    let applied = put(&admin, &key("ready"), &naming_value("127.0.0.1:10000")).await;
    let ready = feed.next("the watch is open", CONVERGE_DEADLINE).await;
    assert_eq!(ready, insert(&key("ready"), "127.0.0.1:10000"));

    let retrying = feed.status.retrying();
    relay.close();
    feed.status
        .wait_retrying_after(retrying, "discovery reports the cut")
        .await;
    etcd.restart_wiped().await;
    put(&admin, &key("a"), &naming_value("127.0.0.1:10001")).await;
    let behind = put(&admin, &key("c"), &naming_value("127.0.0.1:10003")).await;
    assert!(
        behind < applied,
        "the new history ({behind}) is behind {applied}"
    );
    feed.assert_quiet("while the watcher is cut off");

    relay.open();
    let sentinel = insert(&key("sentinel"), "127.0.0.1:10009");
    put(&admin, &key("sentinel"), &naming_value("127.0.0.1:10009")).await;
    let mut changes = feed
        .until("the changes of the new history", &sentinel)
        .await;
    changes.sort();
    let expected = vec![
        insert(&key("c"), "127.0.0.1:10003"),
        Event::Remove(key("b")),
        Event::Remove(key("ready")),
    ];
    assert_eq!(
        changes,
        expected,
        "exactly the net changes, nothing for a; statuses: {}",
        feed.status.summary()
    );
    assert_eq!(feed.endpoints(), listing(&admin, service).await);
    feed.assert_clean("etcd back with an older history");
}

/// Without a compaction the watch resumes from the last applied revision and etcd replays
/// the history. etcd 3.4 answers a progress request at once with its current revision,
/// even while a resumed watcher has not yet been sent the events up to it (it catches up
/// every 100 ms), and even while the event of a fresh put is still queued. Progress
/// requests every 10 ms make such an answer overtake the events; they must not be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_without_losing_changes_under_frequent_progress_requests() {
    const ROUNDS: u16 = 5;
    let service = "services/progress";
    let key = |name: String| format!("{service}/{name}");
    let etcd = Etcd::start().await;
    let admin = connect(&[etcd.endpoint()]).await;
    let relay = Relay::start(&etcd.endpoint()).await;
    for i in 0..3 {
        put(
            &admin,
            &key(format!("k{i}")),
            &naming_value(&format!("127.0.0.1:{}", 10000 + i)),
        )
        .await;
    }
    for round in 0..ROUNDS {
        // A fresh discovery each round: a resume after its first failure, never a re-list.
        let discover = EtcdDiscover::new(connect(&[relay.url()]).await, service)
            .backoff(Backoff::default().initial(Duration::from_secs(1)))
            .progress_interval(Duration::from_millis(10));
        let feed = Feed::start(discover);
        let truth = listing(&admin, service).await;
        let listed = wait_until_quietly(CONVERGE_DEADLINE, || feed.endpoints() == truth).await;
        assert!(listed, "round {round}: the initial listing");
        // A barrier: a put after the listing is announced only by the watch, so once it
        // is, the watch is streaming, and the cut must make it resume from its revision.
        let ready = format!("127.0.0.1:{}", 14000 + round);
        let ready_key = key("ready".into());
        put(&admin, &ready_key, &naming_value(&ready)).await;
        let open = wait_until_quietly(SENTINEL_DEADLINE, || {
            feed.endpoints().get(&ready_key) == Some(&ready)
        })
        .await;
        assert!(
            open,
            "round {round}: a put on the open watch was never announced; statuses: {}",
            feed.status.summary()
        );

        relay.close();
        feed.status
            .wait_retrying_after(0, "discovery reports the cut")
            .await;
        put(
            &admin,
            &key(format!("n{round}")),
            &naming_value(&format!("127.0.0.1:{}", 11000 + round)),
        )
        .await;
        let gone = if round == 0 {
            key("k0".into())
        } else {
            key(format!("n{}", round - 1))
        };
        delete(&admin, &gone).await;
        put(
            &admin,
            &key("k1".into()),
            &naming_value(&format!("127.0.0.1:{}", 12000 + round)),
        )
        .await;
        relay.open();

        // A barrier: once the sentinel's new address is announced, so is all before it.
        let sentinel = format!("127.0.0.1:{}", 13000 + round);
        put(&admin, &key("sentinel".into()), &naming_value(&sentinel)).await;
        let sentinel_key = key("sentinel".into());
        let arrived = wait_until_quietly(SENTINEL_DEADLINE, || {
            feed.endpoints().get(&sentinel_key) == Some(&sentinel)
        })
        .await;
        let truth = listing(&admin, service).await;
        let announced = feed.endpoints();
        assert!(
            arrived && announced == truth,
            "round {round}: the announced set lost changes (sentinel arrived: {arrived})\n \
             announced: {announced:?}\n etcd:      {truth:?}\n statuses: {}",
            feed.status.summary()
        );
        feed.assert_clean(&format!("round {round}"));
        feed.stop().await;
    }
}

// ---------------------------------------------------------------------------------------
// 3. a three-member cluster loses its leader under load
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_leader_loss_in_a_three_member_cluster() {
    let service = "services/cluster";
    let mut cluster = EtcdCluster::start().await;
    let admin = connect(&cluster.endpoints()).await;
    let mut servers = Vec::new();
    for _ in 0..5 {
        servers.push(TestServer::start().await);
    }
    for server in &servers[..3] {
        register(&admin, service, server).await;
    }
    let all = addrs(&servers);

    let discover = EtcdDiscover::new(connect(&cluster.endpoints()).await, service);
    let (channel, handle) = discover.balance_channel();
    let status = StatusLog::start(handle.status());
    let load = Load::start(channel, CALLERS, CALL_TIMEOUT);
    wait_reaching("before the leader is killed", &servers, &all[..3]).await;

    // The leader dies under load: no endpoint is lost, later changes are seen.
    let leader = cluster.leader_index().await;
    let killed = Instant::now();
    cluster.kill(leader);
    wait_reaching("after the leader is killed", &servers, &all[..3]).await;
    register(&admin, service, &servers[3]).await;
    wait_reaching("after a server is added", &servers, &all[..4]).await;
    eprintln!(
        "leader n{leader} killed: a server registered afterwards got calls {} ms later",
        killed.elapsed().as_millis()
    );
    delete(&admin, &server_key(service, all[0])).await;
    wait_reaching("after a server is deleted", &servers, &all[1..4]).await;
    assert_ne!(cluster.leader_index().await, leader, "a new leader");

    // The watch may have run on a follower all along. Bring the old leader back, then
    // kill whichever member serves the watch, so that the watch itself must move.
    cluster.restart(leader).await;
    let watched = wait_for(
        "the member serving the watch",
        CONVERGE_DEADLINE,
        || async {
            let mut serving = Vec::new();
            for i in 0..EtcdCluster::SIZE {
                if watchers(&cluster.endpoint(i)).await? > 0 {
                    serving.push(i);
                }
            }
            (serving.len() == 1).then(|| serving[0])
        },
    )
    .await;
    let retrying = status.retrying();
    cluster.kill(watched);
    status
        .wait_retrying_after(retrying, "discovery reports the loss of its member")
        .await;
    wait_reaching("after the watched member is killed", &servers, &all[1..4]).await;
    register(&admin, service, &servers[4]).await;
    delete(&admin, &server_key(service, all[1])).await;
    wait_reaching("after changes on the other members", &servers, &all[2..]).await;

    let Tally {
        ok, failed, errors, ..
    } = load.stop().await;
    eprintln!(
        "leader n{leader} then watched member n{watched} killed, {CALLERS} callers: \
         {ok} ok, {failed} failed; statuses: {}",
        status.summary()
    );
    assert_eq!(
        failed, 0,
        "calls failed across the member losses: {errors:#?}"
    );
    status.assert_never_failed("member losses");
    handle.stop().await;
}

/// How many watchers the etcd member at `endpoint` serves, read from its `/metrics`.
async fn watchers(endpoint: &str) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = endpoint.trim_start_matches("http://");
    let fetch = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        // HTTP/1.0: the body comes unchunked and the connection closes after it.
        let request = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await.ok()?;
        let value = body
            .lines()
            .find_map(|line| line.strip_prefix("etcd_debugging_mvcc_watcher_total "))?;
        value.trim().parse::<f64>().ok().map(|v| v as u64)
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()?
}

// ---------------------------------------------------------------------------------------
// 4. random histories
// ---------------------------------------------------------------------------------------

/// Seeds of the random test, unless `RESILIENCE_SEEDS` names others.
const SEEDS: std::ops::RangeInclusive<u64> = 1..=16;

/// Operations per seed.
const OPS_PER_SEED: usize = 40;

/// Keys per seed, `k0` to `k11`: few enough that updates and deletes are frequent.
const KEY_SPACE: u32 = 12;

/// At most this many etcd kill/restarts per seed.
const MAX_RESTARTS_PER_SEED: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_to_etcd_under_random_histories() {
    let seeds: Vec<u64> = match std::env::var("RESILIENCE_SEEDS") {
        Ok(list) => list
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .expect("RESILIENCE_SEEDS: comma-separated u64")
            })
            .collect(),
        Err(_) => SEEDS.collect(),
    };
    let mut etcd = Etcd::start().await;
    let admin = connect(&[etcd.endpoint()]).await;
    let relay = Relay::start(&etcd.endpoint()).await;
    let started = Instant::now();
    let (mut restarts, mut cuts) = (0, 0);
    for &seed in &seeds {
        let mut history = History::new(seed, &mut etcd, &admin, &relay);
        history.run().await;
        restarts += history.restarts;
        cuts += history.cuts;
    }
    eprintln!(
        "random histories: {} seeds, {restarts} etcd restarts, {cuts} cuts, {} ms",
        seeds.len(),
        started.elapsed().as_millis()
    );
}

/// One random history against a fresh discovery on its own prefix. The discovery goes
/// through `relay`, so the history can cut it off for several operations in a row.
struct History<'a> {
    seed: u64,
    rng: fastrand::Rng,
    etcd: &'a mut Etcd,
    admin: &'a Client,
    relay: &'a Relay,
    service: String,
    /// What the test has written: key to address.
    model: BTreeMap<String, String>,
    /// The revision of the last write.
    revision: i64,
    is_cut: bool,
    restarts: usize,
    cuts: usize,
    trace: Vec<String>,
}

impl<'a> History<'a> {
    fn new(seed: u64, etcd: &'a mut Etcd, admin: &'a Client, relay: &'a Relay) -> Self {
        History {
            seed,
            rng: fastrand::Rng::with_seed(seed),
            etcd,
            admin,
            relay,
            service: format!("services/random-{seed}"),
            model: BTreeMap::new(),
            revision: 0,
            is_cut: false,
            restarts: 0,
            cuts: 0,
            trace: Vec::new(),
        }
    }

    /// A few keys before discovery starts, random operations, then the check: the
    /// announced set converges to `get --prefix`, with nothing redundant on the way.
    async fn run(&mut self) {
        for _ in 0..self.rng.usize(0..4) {
            self.put_random().await;
        }
        let backoff = Backoff::default()
            .initial(Duration::from_millis(self.rng.u64(20..=200)))
            .max(Duration::from_millis(self.rng.u64(200..=1500)));
        // The default progress interval (5 s): frequent progress requests lose events on
        // etcd 3.4, which `resumes_without_losing_changes_under_frequent_progress_requests`
        // covers on its own.
        let client = connect(&[self.relay.url()]).await;
        let feed = Feed::start(EtcdDiscover::new(client, self.service.as_str()).backoff(backoff));
        for _ in 0..OPS_PER_SEED {
            self.step(&feed).await;
        }
        if self.is_cut {
            self.relay.open();
        }
        self.check(&feed).await;
    }

    async fn step(&mut self, feed: &Feed) {
        let any = !self.model.is_empty();
        match self.rng.u32(0..100) {
            0..40 => self.put_random().await,
            40..46 if any => {
                // The same value again: announces nothing.
                let k = self.existing();
                self.revision = put(self.admin, &k, &naming_value(&self.model[&k])).await;
                self.trace.push(format!("re-put {k}"));
            }
            46..64 if any => {
                let k = self.existing();
                self.revision = delete(self.admin, &k).await;
                self.trace.push(format!("delete {k}"));
                self.model.remove(&k);
            }
            64..73 => self.transaction().await,
            73..81 => {
                let at = self.etcd.compact().await;
                self.trace.push(format!("compact @{at}"));
            }
            81..85 if self.restarts < MAX_RESTARTS_PER_SEED => {
                // Down until discovery reports it: see `toggle_cut`.
                let before = feed.status.retrying();
                self.etcd.kill();
                let what = format!("seed {}: Retrying reported while etcd is down", self.seed);
                feed.status.wait_retrying_after(before, &what).await;
                self.etcd.restart().await;
                self.restarts += 1;
                self.trace.push("kill -9 and restart".to_owned());
            }
            85..91 => self.toggle_cut(feed).await,
            // A pause until discovery has caught up, so that some changes land on a live
            // watch and others on a resumed or re-listed one.
            _ if !self.is_cut && self.revision > 0 => {
                let what = format!("seed {}: a pause", self.seed);
                feed.status.wait_synced_at(self.revision, &what).await;
                self.trace.push(format!("caught up @{}", self.revision));
            }
            _ => {}
        }
    }

    fn key(&mut self) -> String {
        format!("{}/k{}", self.service, self.rng.u32(0..KEY_SPACE))
    }

    fn addr(&mut self) -> String {
        format!("127.0.0.1:{}", self.rng.u16(10000..60000))
    }

    fn existing(&mut self) -> String {
        let i = self.rng.usize(0..self.model.len());
        self.model.keys().nth(i).expect("a key in range").clone()
    }

    /// A put of a random key: new, or an update.
    async fn put_random(&mut self) {
        let (k, a) = (self.key(), self.addr());
        self.revision = put(self.admin, &k, &naming_value(&a)).await;
        self.trace.push(format!("put {k} {a}"));
        self.model.insert(k, a);
    }

    /// Several changes in one revision.
    async fn transaction(&mut self) {
        let mut ops = Vec::new();
        let mut touched = BTreeSet::new();
        for _ in 0..self.rng.usize(2..=4) {
            let k = self.key();
            if !touched.insert(k.clone()) {
                continue; // etcd rejects a transaction that writes a key twice
            }
            if self.rng.bool() && self.model.contains_key(&k) {
                ops.push(TxnOp::delete(k.as_str(), None));
                self.trace.push(format!("txn delete {k}"));
                self.model.remove(&k);
            } else {
                let a = self.addr();
                ops.push(TxnOp::put(k.as_str(), naming_value(&a), None));
                self.trace.push(format!("txn put {k} {a}"));
                self.model.insert(k, a);
            }
        }
        self.revision = txn(self.admin, &ops).await;
    }

    /// Cuts the watcher off etcd until discovery reports it, or lets it back. (A cut shorter
    /// than that may go unseen: a one-shot request, such as the first listing, retries a
    /// refused attempt at once for up to about a second, as it would on another member.)
    async fn toggle_cut(&mut self, feed: &Feed) {
        if self.is_cut {
            self.relay.open();
            self.trace.push("reconnect".to_owned());
        } else {
            let before = feed.status.retrying();
            self.relay.close();
            self.cuts += 1;
            self.trace.push("cut".to_owned());
            let what = format!("seed {}: Retrying reported after a cut", self.seed);
            feed.status.wait_retrying_after(before, &what).await;
        }
        self.is_cut = !self.is_cut;
    }

    async fn check(&self, feed: &Feed) {
        let seed = self.seed;
        let truth = listing(self.admin, &self.service).await;
        assert_eq!(
            truth, self.model,
            "seed {seed}: the test's own model of etcd"
        );
        let converged = wait_until_quietly(CONVERGE_DEADLINE, || feed.endpoints() == truth).await;
        let announced = feed.endpoints();
        let trace = &self.trace;
        assert!(
            converged,
            "seed {seed}: the announced set never matched etcd\n announced: {announced:?}\n \
             etcd:      {truth:?}\n statuses: {}\n history: {trace:?}",
            feed.status.summary()
        );
        let violations = feed.violations();
        assert!(
            violations.is_empty(),
            "seed {seed}: {violations:#?}\n history: {trace:?}"
        );
        feed.status.assert_never_failed(&format!("seed {seed}"));
        if self.restarts + self.cuts > 0 {
            assert!(
                feed.status.retrying() > 0,
                "seed {seed}: Retrying reported across outages: {}",
                feed.status.summary()
            );
        }
        eprintln!(
            "seed {seed}: {} keys, {} restarts, {} cuts; statuses: {}",
            truth.len(),
            self.restarts,
            self.cuts,
            feed.status.summary()
        );
    }
}

// ---------------------------------------------------------------------------------------
// A role revoked for a while (etcd's RBAC)
// ---------------------------------------------------------------------------------------

/// The backoff of the RBAC tests: short, and 1 s at most while a permission is denied.
fn denied_backoff() -> Backoff {
    Backoff::default()
        .initial(Duration::from_millis(50))
        .max(Duration::from_millis(200))
        .denied_max(Duration::from_secs(1))
}

/// An error with its causes, `outer: inner`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// etcd with authentication on, `role` granted `permission` on `<service>/`, and `user`
/// (password `secret`) holding it; returns etcd and a root client.
async fn etcd_with_role(role: &str, user: &str, permission: Permission) -> (Etcd, Client) {
    let etcd = Etcd::start().await;
    etcd.add_role(role, vec![permission]).await;
    etcd.add_user(user, "secret", &[role]).await;
    etcd.enable_auth("root-secret").await;
    let root = etcd.client_as("root", "root-secret").await;
    (etcd, root)
}

/// Revokes `role`'s permission on the keys under `prefix`, or grants `permission` again.
async fn set_permission(root: &Client, role: &str, prefix: &str, permission: Option<Permission>) {
    let mut root = root.clone();
    match permission {
        None => {
            let options = RoleRevokePermissionOptions::new().with_prefix();
            root.role_revoke_permission(role, prefix, Some(options))
                .await
                .unwrap_or_else(|e| panic!("revoke {role}'s permission on {prefix}: {e}"));
        }
        Some(permission) => {
            root.role_grant_permission(role, permission)
                .await
                .unwrap_or_else(|e| panic!("grant {role} a permission on {prefix}: {e}"));
        }
    }
}

/// A client's role loses read access to the prefix while its watch is made again (the
/// connection cut, as by an etcd restart): discovery reports `Retrying` with the
/// permission error, never `Failed`, keeps calling the server it knows, and once the role
/// is granted again calls a server registered meanwhile (issue 12.5). Prints the time from
/// the grant to the first call that server serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_comes_back_once_a_revoked_role_is_granted_again() {
    let service = "services/rbac";
    let prefix = format!("{service}/");
    let read = || Permission::read(prefix.as_str()).with_prefix();
    let (etcd, root) = etcd_with_role("reader", "client", read()).await;
    let relay = Relay::start(&etcd.endpoint()).await;
    let servers = [TestServer::start().await, TestServer::start().await];
    register(&root, service, &servers[0]).await;
    let client = EtcdConfig::new([relay.url()])
        .user("client", "secret")
        .connect()
        .await
        .expect("connect as client");
    let discover = EtcdDiscover::new(client, service).backoff(denied_backoff());
    let (channel, handle) = discover.balance_channel();
    let status = StatusLog::start(handle.status());
    let load = Load::start(channel, CALLERS, CALL_TIMEOUT);
    wait_until(
        "calls reach the first server",
        CONVERGE_DEADLINE,
        || async { servers[0].calls() > 0 },
    )
    .await;

    set_permission(&root, "reader", &prefix, None).await;
    let retrying = status.retrying();
    relay.close();
    status
        .wait_retrying_after(retrying, "discovery reports the cut")
        .await;
    relay.open();
    let mut receiver = handle.status();
    let denied = receiver.wait_for(|s| {
        matches!(s, DiscoveryStatus::Retrying { error, .. } if chain(error).contains("permission denied"))
    });
    tokio::time::timeout(CONVERGE_DEADLINE, denied)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no Retrying with the permission error: {}",
                status.summary()
            )
        })
        .expect("discovery runs");
    drop(receiver);

    register(&root, service, &servers[1]).await;
    let granted = Instant::now();
    set_permission(&root, "reader", &prefix, Some(read())).await;
    wait_until(
        "calls reach the server registered meanwhile",
        CONVERGE_DEADLINE,
        || async { servers[1].calls() > 0 },
    )
    .await;
    let Tally { failed, .. } = load.stop().await;
    eprintln!(
        "role granted again: first call served by the new server {} ms later \
         (denied backoff 0.2 s to 1 s); {failed} calls failed; statuses: {}",
        granted.elapsed().as_millis(),
        status.summary()
    );
    status.assert_never_failed("a role revoked for a while");
    handle.stop().await;
}

/// A server's role loses write access while the registrar must put its key again (an
/// operator revoked its lease): the registration reports `Retrying` with the permission
/// error, never `Failed`, and puts the key back once the role is granted again (issue
/// 12.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registration_comes_back_once_a_revoked_role_is_granted_again() {
    let service = "services/rbac";
    let prefix = format!("{service}/");
    let write = || Permission::read_write(prefix.as_str()).with_prefix();
    let (etcd, root) = etcd_with_role("writer", "server", write()).await;
    let client = EtcdConfig::new([etcd.endpoint()])
        .user("server", "secret")
        .connect()
        .await
        .expect("connect as server");
    let registration = Registrar::new(client)
        .ttl(Duration::from_secs(3))
        .backoff(denied_backoff())
        .register(service, SocketAddr::from(([127, 0, 0, 1], 50051)))
        .await
        .expect("register");
    let key = registration.key().to_owned();
    let lease = registration.lease_id().expect("registered");

    set_permission(&root, "writer", &prefix, None).await;
    root.clone()
        .lease_revoke(lease)
        .await
        .unwrap_or_else(|e| panic!("revoke lease {lease:#x}: {e}"));
    let (mut status, last) = (registration.status(), registration.status());
    let denied = status.wait_for(|s| {
        matches!(s, RegistrationStatus::Retrying { error, .. } if chain(error).contains("permission denied"))
    });
    tokio::time::timeout(CONVERGE_DEADLINE, denied)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no Retrying with the permission error: {:?}",
                *last.borrow()
            )
        })
        .expect("the registration runs");

    set_permission(&root, "writer", &prefix, Some(write())).await;
    let back = wait_for_key(&root, &key, CONVERGE_DEADLINE, |l| l != lease).await;
    let registered = status.wait_for(
        |s| matches!(s, RegistrationStatus::Registered { lease_id } if *lease_id == back),
    );
    tokio::time::timeout(CONVERGE_DEADLINE, registered)
        .await
        .unwrap_or_else(|_| panic!("not registered again: {:?}", *last.borrow()))
        .expect("the registration runs");
    registration.shutdown().await.expect("deregister");
}
