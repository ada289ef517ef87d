//! Sharing one watch between discoveries, against a real etcd with authentication: a watch
//! is shared only inside one `SharedDiscovery` (one client, one set of credentials), never
//! between users.

mod support;

use std::time::Duration;

use etcd_client::Permission;
use futures_util::StreamExt;
use support::Etcd;
use tonic_etcd::{DiscoveryStatus, DiscoveryStream, EtcdConfig, EtcdDiscover, SharedDiscovery};
use tower::discover::Change;

/// How long anything that should work may take.
const DEADLINE: Duration = Duration::from_secs(15);

const ALICE: (&str, &str) = ("alice", "alice-secret");
const BOB: (&str, &str) = ("bob", "bob-secret");
const CAROL: (&str, &str) = ("carol", "carol-secret");

/// etcd with authentication on, `alpha/1` and `beta/1` registered: `alice` and `carol` may
/// read only `alpha/` (role `alpha-reader`), `bob` only `beta/` (role `beta-reader`).
async fn etcd_with_two_readers() -> Etcd {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    for (service, port) in [("alpha", 1001), ("beta", 1002)] {
        let value = format!(r#"{{"Op":0,"Addr":"127.0.0.1:{port}","Metadata":null}}"#);
        kv.put(format!("{service}/1"), value, None)
            .await
            .expect("put");
    }
    for (user, password, service) in [(ALICE.0, ALICE.1, "alpha"), (BOB.0, BOB.1, "beta")] {
        let role = format!("{service}-reader");
        let read = vec![Permission::read(format!("{service}/")).with_prefix()];
        etcd.add_role(&role, read).await;
        etcd.add_user(user, password, &[&role]).await;
    }
    etcd.add_user(CAROL.0, CAROL.1, &["alpha-reader"]).await;
    etcd.enable_auth("root-secret").await;
    etcd
}

async fn connect_as(etcd: &Etcd, (user, password): (&str, &str)) -> etcd_client::Client {
    EtcdConfig::new([etcd.endpoint()])
        .user(user, password)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
}

/// The first item of `discover`, within the deadline.
async fn first(
    discover: &mut DiscoveryStream,
) -> Result<Change<String, String>, tonic_etcd::Error> {
    let item = tokio::time::timeout(DEADLINE, discover.next())
        .await
        .unwrap_or_else(|_| panic!("no item from {} within {DEADLINE:?}", discover.service()))
        .expect("the stream yields an item before it ends");
    item.map(|change| match change {
        Change::Insert(key, endpoint) => Change::Insert(key, endpoint.uri().to_string()),
        Change::Remove(key) => Change::Remove(key),
    })
}

fn assert_sees(item: Result<Change<String, String>, tonic_etcd::Error>, key: &str, port: u16) {
    match item {
        Ok(Change::Insert(k, uri)) => {
            assert_eq!(k, key);
            assert_eq!(uri, format!("http://127.0.0.1:{port}/"));
        }
        other => panic!("expected the insert of {key}, got {other:?}"),
    }
}

fn assert_refused(
    item: Result<Change<String, String>, tonic_etcd::Error>,
    status: &DiscoveryStatus,
) {
    match item {
        Err(error) => {
            assert!(error.is_permanent(), "{error:?}");
            let chain = format!("{error:?}");
            assert!(chain.contains("permission denied"), "{chain}");
        }
        other => panic!("expected permission denied, got {other:?}"),
    }
    assert!(
        matches!(status, DiscoveryStatus::Failed { .. }),
        "{status:?}"
    );
}

/// Alice's discovery of `alpha/` runs when Bob's starts, and the other way round for
/// `beta/`: each user sees only what their own role allows, whichever started first, both
/// with a group each and with discoveries of their own.
#[tokio::test]
async fn two_users_in_one_process_each_see_what_their_role_allows() {
    let etcd = etcd_with_two_readers().await;
    let alice = connect_as(&etcd, ALICE).await;
    let bob = connect_as(&etcd, BOB).await;
    let (alice_group, bob_group) = (
        SharedDiscovery::new(alice.clone()),
        SharedDiscovery::new(bob.clone()),
    );
    check_each_user_sees_their_own(
        || alice_group.discover("alpha"),
        || alice_group.discover("beta"),
        || bob_group.discover("alpha"),
        || bob_group.discover("beta"),
    )
    .await;
    check_each_user_sees_their_own(
        || EtcdDiscover::new(alice.clone(), "alpha"),
        || EtcdDiscover::new(alice.clone(), "beta"),
        || EtcdDiscover::new(bob.clone(), "alpha"),
        || EtcdDiscover::new(bob.clone(), "beta"),
    )
    .await;
}

async fn check_each_user_sees_their_own(
    alice_alpha: impl Fn() -> EtcdDiscover,
    alice_beta: impl Fn() -> EtcdDiscover,
    bob_alpha: impl Fn() -> EtcdDiscover,
    bob_beta: impl Fn() -> EtcdDiscover,
) {
    // Alice's watch of alpha/ is running when Bob asks for it.
    let mut alice_sees = alice_alpha().into_stream();
    assert_sees(first(&mut alice_sees).await, "alpha/1", 1001);
    let mut bob_denied = bob_alpha().into_stream();
    let status = bob_denied.status();
    assert_refused(first(&mut bob_denied).await, &status.borrow());
    // And the other way round: Bob's watch of beta/ runs when Alice asks for it.
    let mut bob_sees = bob_beta().into_stream();
    assert_sees(first(&mut bob_sees).await, "beta/1", 1002);
    let mut alice_denied = alice_beta().into_stream();
    let status = alice_denied.status();
    assert_refused(first(&mut alice_denied).await, &status.borrow());
}

/// Inside one group, discoveries of one prefix with the same settings share one watch;
/// other settings get a watch of their own; every one of them sees the prefix.
#[tokio::test]
async fn discoveries_of_one_group_share_a_watch_per_prefix_and_settings() {
    let etcd = etcd_with_two_readers().await;
    let shared = SharedDiscovery::new(connect_as(&etcd, ALICE).await);
    assert_eq!(shared.watches(), 0, "no I/O before the first poll");
    let mut a = shared.discover("alpha").into_stream();
    let mut b = shared.clone().discover("alpha/").into_stream();
    assert_sees(first(&mut a).await, "alpha/1", 1001);
    assert_sees(first(&mut b).await, "alpha/1", 1001);
    assert_eq!(shared.watches(), 1, "one watch for both");
    let mut c = shared
        .discover("alpha")
        .request_timeout(Duration::from_secs(7))
        .into_stream();
    assert_sees(first(&mut c).await, "alpha/1", 1001);
    assert_eq!(shared.watches(), 2, "other settings, another watch");
    drop((a, b, c));
    support::wait_until("the watches stop with their discoveries", DEADLINE, || {
        let running = shared.watches();
        async move { running == 0 }
    })
    .await;
}

/// Carol's discovery of `alpha/` runs beside Alice's; then Carol's role is revoked. Her
/// watch, made again (an idle timeout of 1 s drops it every second), is refused, and a key
/// put after that reaches Alice but not Carol: no discovery reads through another user's
/// client.
#[tokio::test]
async fn a_revoked_user_does_not_read_through_another_users_watch() {
    let etcd = etcd_with_two_readers().await;
    let alice = SharedDiscovery::new(connect_as(&etcd, ALICE).await);
    let mut alice_alpha = alice.discover("alpha").into_stream();
    assert_sees(first(&mut alice_alpha).await, "alpha/1", 1001);
    let carol = connect_as(&etcd, CAROL).await;
    let mut carol_alpha = EtcdDiscover::new(carol, "alpha")
        .progress_interval(Duration::from_secs(60))
        .idle_timeout(Duration::from_secs(1))
        .into_stream();
    let (mut carol_status, carol_now) = (carol_alpha.status(), carol_alpha.status());
    assert_sees(first(&mut carol_alpha).await, "alpha/1", 1001);

    let mut root = etcd.client_as("root", "root-secret").await;
    root.user_revoke_role(CAROL.0, "alpha-reader")
        .await
        .expect("revoke carol's role");
    // Carol's stream is polled meanwhile, so that her discovery runs.
    let refused = async {
        carol_status
            .wait_for(|s| format!("{s:?}").contains("permission denied"))
            .await
            .map(|s| s.clone())
    };
    let (status, item) = tokio::time::timeout(DEADLINE, async {
        tokio::select! {
            status = refused => (status, None),
            item = carol_alpha.next() => (Ok(carol_now.borrow().clone()), Some(item)),
        }
    })
    .await
    .expect("carol's watch is refused once her role is revoked");
    assert!(
        !matches!(item, Some(Some(Ok(_)))),
        "nothing changed for carol to see: {item:?}"
    );
    assert!(
        format!("{status:?}").contains("permission denied"),
        "{status:?}"
    );

    root.put(
        "alpha/2",
        r#"{"Op":0,"Addr":"127.0.0.1:1003","Metadata":null}"#,
        None,
    )
    .await
    .expect("put");
    assert_sees(first(&mut alice_alpha).await, "alpha/2", 1003);
    // Alice has it: a watch shared with her would have queued it for Carol too.
    let carol_next = tokio::time::timeout(Duration::from_secs(1), carol_alpha.next()).await;
    assert!(
        !matches!(carol_next, Ok(Some(Ok(_)))),
        "carol must not see alpha/2: {carol_next:?}"
    );
}

/// Whenever a discovery reports `Synced`, its stream already holds the listing: every key
/// listed can be read without waiting. Both for the discovery that starts the shared watch
/// and for one that joins it once it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_status_comes_with_the_listing_in_the_stream() {
    use futures_util::FutureExt;
    const KEYS: u16 = 1000;
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    for i in 0..KEYS {
        let value = format!(
            r#"{{"Op":0,"Addr":"127.0.0.1:{}","Metadata":null}}"#,
            2000 + i
        );
        kv.put(format!("gamma/{i}"), value, None)
            .await
            .expect("put");
    }
    let shared = SharedDiscovery::new(etcd.client().await);
    let mut running = Vec::new();
    for round in ["the discovery that starts the watch", "one that joins it"] {
        let mut stream = shared.discover("gamma").into_stream();
        let mut status = stream.status();
        let mut seen = 0;
        let synced = tokio::time::timeout(DEADLINE, async {
            loop {
                tokio::select! {
                    // Biased: what the stream holds is read before the status is looked at.
                    biased;
                    item = stream.next() => {
                        assert!(matches!(item, Some(Ok(Change::Insert(..)))), "{item:?}");
                        seen += 1;
                    }
                    _ = status.wait_for(DiscoveryStatus::is_synced) => break,
                }
            }
        });
        synced
            .await
            .unwrap_or_else(|_| panic!("{round}: not synced"));
        while seen < KEYS {
            match stream.next().now_or_never() {
                Some(Some(Ok(Change::Insert(..)))) => seen += 1,
                other => {
                    panic!("{round}: synced with {seen} of {KEYS} keys in its stream: {other:?}")
                }
            }
        }
        running.push(stream);
    }
    assert_eq!(shared.watches(), 1);
}
