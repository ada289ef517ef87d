//! The lease task on paused time, against the in-memory etcd behind the seam.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::{Command, LeaseState, LeaseTask};
use crate::backoff::{Backoff, Retry};
use crate::error::Error;
use crate::etcd::seam::fake::FakeEtcd;
use crate::format::{EtcdNaming, Instance};
use crate::registrar::RegistrationStatus;

const TTL: Duration = Duration::from_secs(3);

/// A registration of one key through `etcd`, its task running: the key, the status, and
/// what keeps the task alive.
struct Running {
    key: String,
    lease_id: i64,
    status: watch::Receiver<RegistrationStatus>,
    commands: mpsc::Sender<Command>,
    _stop: watch::Sender<bool>,
}

async fn register(etcd: &FakeEtcd) -> Running {
    let status = Arc::new(watch::Sender::new(RegistrationStatus::Registering));
    let mut task = LeaseTask {
        client: Arc::new(etcd.clone()),
        format: Arc::new(EtcdNaming),
        entries: Vec::new(),
        withdrawn: false,
        ttl: TTL,
        request_timeout: Duration::from_secs(5),
        retry: Retry::new(Backoff::default()),
        status: status.clone(),
        lease: Arc::new(AtomicI64::new(0)),
        expires: tokio::time::Instant::now(),
    };
    let instance = Instance::new("127.0.0.1:50051");
    let registered = task.register_first("svc".into(), instance).await;
    let (key, start) = registered.expect("registered");
    let LeaseState::KeepAlive { lease_id, .. } = start else {
        panic!("registered, so keeping alive");
    };
    let (commands, command_rx) = mpsc::channel(1);
    let (stop, stop_rx) = watch::channel(false);
    let receiver = status.subscribe();
    tokio::spawn(task.run(start, command_rx, stop_rx));
    Running {
        key,
        lease_id,
        status: receiver,
        commands,
        _stop: stop,
    }
}

/// Waits, on paused time, until the status satisfies `f`; panics after a minute.
async fn wait_status(running: &mut Running, what: &str, f: impl Fn(&RegistrationStatus) -> bool) {
    let reached = tokio::time::timeout(Duration::from_secs(60), running.status.wait_for(f));
    if !matches!(reached.await, Ok(Ok(_))) {
        panic!("{what}: last status {:?}", *running.status.borrow());
    }
}

fn denied() -> etcd_client::Error {
    etcd_client::Error::GRpcStatus(tonic::Status::permission_denied(
        "etcdserver: permission denied",
    ))
}

#[tokio::test(start_paused = true)]
async fn keeps_the_lease_alive_for_many_ttls() {
    let etcd = FakeEtcd::new();
    let running = register(&etcd).await;
    for _ in 0..10 {
        tokio::time::sleep(TTL).await;
        assert_eq!(etcd.lease_of(&running.key), Some(running.lease_id));
    }
    assert!(matches!(
        *running.status.borrow(),
        RegistrationStatus::Registered { lease_id } if lease_id == running.lease_id
    ));
}

#[tokio::test(start_paused = true)]
async fn grants_a_new_lease_and_puts_the_key_back_when_the_lease_is_gone() {
    let etcd = FakeEtcd::new();
    let mut running = register(&etcd).await;
    let old = running.lease_id;
    etcd.revoke_lease(old);
    assert_eq!(etcd.lease_of(&running.key), None);
    wait_status(
        &mut running,
        "registered under a new lease",
        |s| matches!(s, RegistrationStatus::Registered { lease_id } if *lease_id != old),
    )
    .await;
    let now = etcd.lease_of(&running.key).expect("the key is back");
    assert_ne!(now, old);
}

#[tokio::test(start_paused = true)]
async fn puts_back_a_deleted_key_under_the_same_lease() {
    let etcd = FakeEtcd::new();
    let running = register(&etcd).await;
    etcd.delete(&running.key);
    for _ in 0..100 {
        if etcd.lease_of(&running.key).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(etcd.lease_of(&running.key), Some(running.lease_id));
}

#[tokio::test(start_paused = true)]
async fn a_permission_denied_after_registering_is_retried_until_granted_again() {
    let etcd = FakeEtcd::new();
    let mut running = register(&etcd).await;
    let old = running.lease_id;
    etcd.fail_next(denied());
    etcd.fail_next(denied());
    etcd.revoke_lease(old);
    wait_status(
        &mut running,
        "retrying with the permission error",
        |s| matches!(s, RegistrationStatus::Retrying { error, .. } if error.is_permission_denied()),
    )
    .await;
    wait_status(
        &mut running,
        "registered again",
        |s| matches!(s, RegistrationStatus::Registered { lease_id } if *lease_id != old),
    )
    .await;
    assert!(etcd.lease_of(&running.key).is_some());
}

/// Waits, on paused time, until `f` holds; panics after a minute.
async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(tokio::time::Instant::now() < end, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_keepalive_is_noticed_and_the_key_comes_back_on_a_new_lease() {
    let etcd = FakeEtcd::new();
    let mut running = register(&etcd).await;
    let old = running.lease_id;
    let streams = etcd.keepalive_streams();
    let stalled_at = tokio::time::Instant::now();
    etcd.stall_keepalives(true);
    wait_until("the stream opened again", || {
        etcd.keepalive_streams() > streams
    })
    .await;
    // A keepalive is due within TTL/3, and its answer awaited for TTL/3.
    let noticed = stalled_at.elapsed();
    assert!(noticed <= TTL * 2 / 3, "noticed after {noticed:?}");
    // The lease expires unanswered: the task finds out and registers on a new lease.
    wait_status(
        &mut running,
        "registered on a new lease",
        |s| matches!(s, RegistrationStatus::Registered { lease_id } if *lease_id != old),
    )
    .await;
    let back = stalled_at.elapsed();
    assert!(
        back <= TTL + TTL / 3 + Duration::from_millis(500),
        "back after {back:?}"
    );
    let new = etcd.lease_of(&running.key).expect("the key is back");
    assert_ne!(new, old);
    etcd.stall_keepalives(false);
    for _ in 0..5 {
        tokio::time::sleep(TTL).await;
        assert_eq!(etcd.lease_of(&running.key), Some(new), "kept alive again");
    }
}

#[tokio::test(start_paused = true)]
async fn keeps_its_lease_through_a_leader_change() {
    let etcd = FakeEtcd::new();
    let running = register(&etcd).await;
    // No leader for longer than TTL/3: one keepalive waits out the election, and the new
    // leader answers it.
    etcd.change_leader(TTL / 2);
    for _ in 0..5 {
        tokio::time::sleep(TTL).await;
        assert_eq!(etcd.lease_of(&running.key), Some(running.lease_id));
    }
    assert!(matches!(
        *running.status.borrow(),
        RegistrationStatus::Registered { lease_id } if lease_id == running.lease_id
    ));
}

/// Withdraws the keys (`true`) or restores them (`false`) through the task.
async fn withdraw(running: &Running, withdraw: bool) -> Result<(), Error> {
    let (reply, answer) = oneshot::channel();
    let command = Command::Withdraw { withdraw, reply };
    running.commands.send(command).await.expect("the task runs");
    answer.await.expect("the task replies")
}

#[tokio::test(start_paused = true)]
async fn a_lease_lost_while_withdrawn_and_keepalives_stall_is_granted_again() {
    let etcd = FakeEtcd::new();
    let mut running = register(&etcd).await;
    let old = running.lease_id;
    withdraw(&running, true).await.expect("withdrawn");
    assert_eq!(etcd.lease_of(&running.key), None);
    etcd.stall_keepalives(true);
    // The lease expires unanswered; with no key to write, only asking etcd tells.
    wait_status(
        &mut running,
        "a new lease while withdrawn",
        |s| matches!(s, RegistrationStatus::Registered { lease_id } if *lease_id != old),
    )
    .await;
    assert!(!etcd.has_lease(old));
    assert_eq!(etcd.lease_of(&running.key), None, "still withdrawn");
    etcd.stall_keepalives(false);
    withdraw(&running, false).await.expect("restored");
    let new = etcd.lease_of(&running.key).expect("the key is back");
    assert_ne!(new, old);
    assert!(etcd.has_lease(new));
}

#[tokio::test(start_paused = true)]
async fn a_live_lease_under_unanswered_keepalives_is_kept_and_no_key_written() {
    let etcd = FakeEtcd::new();
    let mut running = register(&etcd).await;
    let revision = etcd.revision();
    etcd.lose_keepalive_answers(true);
    wait_status(&mut running, "retrying while unanswered", |s| {
        matches!(s, RegistrationStatus::Retrying { .. })
    })
    .await;
    for _ in 0..5 {
        tokio::time::sleep(TTL).await;
        assert_eq!(etcd.lease_of(&running.key), Some(running.lease_id));
    }
    assert_eq!(etcd.revision(), revision, "no key written");
    let asked = etcd.time_to_lives();
    assert!(asked >= 3, "etcd asked {asked} times");
    etcd.lose_keepalive_answers(false);
    let old = running.lease_id;
    wait_status(
        &mut running,
        "registered again on the same lease",
        |s| matches!(s, RegistrationStatus::Registered { lease_id } if *lease_id == old),
    )
    .await;
    assert_eq!(etcd.revision(), revision, "no key written");
}
