//! The list-then-watch machine on paused time, against the in-memory etcd behind the seam.

use std::time::Duration;

use super::*;
use crate::etcd::seam::fake::{FakeEtcd, Progress};

const PREFIX: &str = "svc/";

/// An engine over `etcd`, and its status.
async fn engine(etcd: &FakeEtcd) -> (Engine, watch::Receiver<DiscoveryStatus>) {
    // Connecting does no I/O without a user; the engine reaches `etcd` instead.
    let client = etcd_client::Client::connect(["http://127.0.0.1:9"], None)
        .await
        .expect("a lazy client");
    let (status, receiver) = watch::channel(DiscoveryStatus::Syncing);
    let config = EngineConfig {
        client,
        backoff: Backoff::default(),
        request_timeout: Duration::from_secs(5),
        progress_interval: Duration::from_secs(600),
        idle_timeout: Duration::from_secs(900),
        healthy_after: Duration::from_secs(10),
        status,
    };
    let engine = Engine::with_etcd(config, PREFIX.into(), Arc::new(etcd.clone()));
    (engine, receiver)
}

/// What a series of changes leaves: `+key=value` for a put, `-key` for a delete, sorted.
fn summary(changes: &[RawChange]) -> Vec<String> {
    let mut lines: Vec<String> = (changes.iter())
        .map(|change| match change {
            RawChange::Put(kv) => format!("+{}={}", kv.key(), String::from_utf8_lossy(kv.value())),
            RawChange::Delete(key) => format!("-{key}"),
        })
        .collect();
    lines.sort();
    lines
}

/// Steps until a step announces changes; returns them and the state after.
async fn next_changes(engine: &mut Engine, mut state: WatchState) -> (Vec<String>, WatchState) {
    for _ in 0..20 {
        let (output, next) = engine.step(state).await;
        let changes = output.expect("no permanent error");
        state = next;
        if !changes.is_empty() {
            return (summary(&changes), state);
        }
    }
    panic!("no change announced in 20 steps");
}

/// Steps until the watch is open and has sent its first message.
async fn streaming(engine: &mut Engine, mut state: WatchState) -> WatchState {
    for _ in 0..20 {
        if let WatchState::Streaming(s) = &state
            && s.revision >= 0
            && s.last_message > s.opened_at
        {
            return state;
        }
        state = engine.step(state).await.1;
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    panic!("no open watch in 20 steps");
}

fn denied() -> etcd_client::Error {
    etcd_client::Error::GRpcStatus(tonic::Status::permission_denied(
        "etcdserver: permission denied",
    ))
}

#[tokio::test(start_paused = true)]
async fn lists_then_announces_what_the_watch_sees() {
    let etcd = FakeEtcd::new();
    etcd.put("svc/a", "1");
    etcd.put("other/x", "1");
    let (mut engine, status) = engine(&etcd).await;
    let (listed, state) = next_changes(&mut engine, WatchState::List).await;
    assert_eq!(listed, ["+svc/a=1"]);
    let state = streaming(&mut engine, state).await;
    etcd.put("svc/b", "2");
    etcd.put("svc/a", "1");
    etcd.delete("svc/a");
    let (changes, _) = next_changes(&mut engine, state).await;
    assert_eq!(changes, ["+svc/b=2", "-svc/a"]);
    assert!(matches!(
        *status.borrow(),
        DiscoveryStatus::Synced { endpoints: 1, .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn relists_and_diffs_after_a_compaction_while_away() {
    let etcd = FakeEtcd::new();
    etcd.put("svc/a", "1");
    etcd.put("svc/b", "1");
    let (mut engine, status) = engine(&etcd).await;
    let (_, state) = next_changes(&mut engine, WatchState::List).await;
    let state = streaming(&mut engine, state).await;
    etcd.break_watches();
    // Retried once etcd answers: by then the history it resumes from is compacted.
    etcd.fail_next(etcd_client::Error::WatchError("unavailable".into()));
    etcd.delete("svc/a");
    etcd.put("svc/c", "3");
    etcd.put("svc/b", "1");
    etcd.compact();
    let (changes, _) = next_changes(&mut engine, state).await;
    assert_eq!(
        changes,
        ["+svc/c=3", "-svc/a"],
        "the net changes, nothing for b"
    );
    assert!(matches!(
        *status.borrow(),
        DiscoveryStatus::Synced { endpoints: 2, .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn relists_when_etcd_went_back_in_time() {
    let etcd = FakeEtcd::new();
    etcd.put("svc/a", "1");
    etcd.put("svc/b", "1");
    for i in 0..20 {
        etcd.put("other/counter", &i.to_string());
    }
    let (mut engine, _status) = engine(&etcd).await;
    let (_, state) = next_changes(&mut engine, WatchState::List).await;
    let state = streaming(&mut engine, state).await;
    etcd.wipe();
    etcd.put("svc/a", "1");
    etcd.put("svc/c", "3");
    let (changes, _) = next_changes(&mut engine, state).await;
    assert_eq!(
        changes,
        ["+svc/c=3", "-svc/b"],
        "the new history, nothing for a"
    );
}

#[tokio::test(start_paused = true)]
async fn a_permission_denied_after_a_listing_is_retried_until_granted_again() {
    let etcd = FakeEtcd::new();
    etcd.put("svc/a", "1");
    let (mut engine, status) = engine(&etcd).await;
    let (_, state) = next_changes(&mut engine, WatchState::List).await;
    let state = streaming(&mut engine, state).await;
    etcd.break_watches();
    for _ in 0..4 {
        etcd.fail_next(denied());
    }
    etcd.put("svc/b", "2");
    let mut state = state;
    let mut denied_seen = 0;
    for _ in 0..20 {
        let (output, next) = engine.step(state).await;
        state = next;
        if let DiscoveryStatus::Retrying { error, .. } = &*status.borrow()
            && error.is_permission_denied()
        {
            denied_seen += 1;
        }
        if !output.expect("never final").is_empty() {
            break;
        }
    }
    assert!(
        denied_seen > 0,
        "reported Retrying with the permission error"
    );
    assert!(matches!(
        *status.borrow(),
        DiscoveryStatus::Synced { endpoints: 2, .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_permission_denied_at_the_first_listing_is_final() {
    let etcd = FakeEtcd::new();
    etcd.fail_next(denied());
    let (mut engine, status) = engine(&etcd).await;
    let (output, state) = engine.step(WatchState::List).await;
    assert!(output.expect_err("final").is_permission_denied());
    assert!(matches!(state, WatchState::Done));
    assert!(matches!(*status.borrow(), DiscoveryStatus::Failed { .. }));
}

#[tokio::test(start_paused = true)]
async fn redelivered_events_add_nothing_twice_and_lose_no_delete() {
    let etcd = FakeEtcd::new();
    let (mut engine, status) = engine(&etcd).await;
    let state = streaming(&mut engine, WatchState::List).await;
    let first = etcd.put("svc/a", "1");
    etcd.put("svc/b", "2");
    etcd.delete("svc/a");
    let (changes, state) = next_changes(&mut engine, state).await;
    assert_eq!(changes, ["+svc/a=1", "+svc/b=2", "-svc/a"]);
    let lists = etcd.ranges();
    // etcd 3.4 sends the three events again, with a new one after them.
    etcd.redeliver_from(first);
    etcd.delete("svc/b");
    let (changes, _) = next_changes(&mut engine, state).await;
    assert_eq!(changes, ["-svc/b"], "only the new event");
    assert_eq!(etcd.ranges(), lists, "no listing again");
    assert!(matches!(
        *status.borrow(),
        DiscoveryStatus::Synced { endpoints: 0, .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_progress_notification_ahead_of_the_events_loses_none() {
    let etcd = FakeEtcd::new();
    let (mut engine, status) = engine(&etcd).await;
    let state = streaming(&mut engine, WatchState::List).await;
    // The watcher is still catching up when the progress request comes (etcd 3.4): the
    // answer names the put's revision before the put is sent.
    etcd.hold_events();
    let revision = etcd.put("svc/b", "2");
    let (_, state) = engine.step(state).await;
    let (output, state) = engine.step(state).await;
    assert_eq!(output.expect("no error"), [], "the progress answer");
    assert!(matches!(state, WatchState::Streaming(_)));
    etcd.release_events();
    let (changes, _) = next_changes(&mut engine, state).await;
    assert_eq!(changes, ["+svc/b=2"], "the event the answer ran ahead of");
    assert!(matches!(
        *status.borrow(),
        DiscoveryStatus::Synced { revision: r, endpoints: 1, .. } if r == revision
    ));
}

#[tokio::test(start_paused = true)]
async fn a_progress_notification_one_revision_behind_is_not_etcd_going_back() {
    let etcd = FakeEtcd::new();
    let (mut engine, _status) = engine(&etcd).await;
    let state = streaming(&mut engine, WatchState::List).await;
    etcd.put("svc/a", "1");
    let (_, state) = next_changes(&mut engine, state).await;
    let lists = etcd.ranges();
    // etcd 3.4 sent the put before making its revision current, and answers with the one
    // before.
    etcd.answer_progress(Progress::Behind(1));
    let (_, state) = engine.step(state).await;
    let (_, state) = engine.step(state).await;
    assert!(matches!(state, WatchState::Streaming(_)), "still watching");
    etcd.put("svc/b", "2");
    let (changes, _) = next_changes(&mut engine, state).await;
    assert_eq!(changes, ["+svc/b=2"]);
    assert_eq!(etcd.ranges(), lists, "no listing again");
}

#[tokio::test(start_paused = true)]
async fn a_leader_change_is_not_etcd_going_back() {
    let etcd = FakeEtcd::new();
    etcd.put("svc/a", "1");
    let (mut engine, _status) = engine(&etcd).await;
    let (_, state) = next_changes(&mut engine, WatchState::List).await;
    let state = streaming(&mut engine, state).await;
    let lists = etcd.ranges();
    etcd.change_leader(Duration::from_secs(1));
    etcd.put("svc/b", "2");
    let (changes, state) = next_changes(&mut engine, state).await;
    assert_eq!(changes, ["+svc/b=2"], "in the new term");
    etcd.delete("svc/a");
    let (changes, _) = next_changes(&mut engine, state).await;
    assert_eq!(changes, ["-svc/a"]);
    assert_eq!(etcd.ranges(), lists, "no listing again");
}

#[tokio::test(start_paused = true)]
async fn a_watch_on_a_lagging_member_is_not_etcd_going_back() {
    let etcd = FakeEtcd::new();
    etcd.put("svc/a", "1");
    etcd.put("other/x", "1");
    etcd.put("other/x", "2");
    let (mut engine, _status) = engine(&etcd).await;
    let (_, state) = next_changes(&mut engine, WatchState::List).await;
    let state = streaming(&mut engine, state).await;
    let lists = etcd.ranges();
    // The watch is resumed on a member two revisions behind the listing.
    etcd.lag_watches(2);
    etcd.break_watches();
    let mut state = state;
    while etcd.counts() == 0 {
        state = engine.step(state).await.1;
    }
    assert!(matches!(state, WatchState::Streaming(_)), "still watching");
    etcd.catch_up();
    etcd.put("svc/b", "2");
    let (changes, _) = next_changes(&mut engine, state).await;
    assert_eq!(changes, ["+svc/b=2"]);
    assert_eq!(etcd.ranges(), lists, "no listing again");
}
