//! One-shot requests on paused time: retries, hedges, the cap on attempts and the deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

fn unavailable() -> Error {
    Error::Connect {
        endpoints: "http://127.0.0.1:1".into(),
        source: Arc::new(etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
            "tcp connect error",
        ))),
    }
}

fn denied() -> Error {
    Error::List {
        prefix: "p/".into(),
        source: Arc::new(etcd_client::Error::GRpcStatus(
            tonic::Status::permission_denied("etcdserver: permission denied"),
        )),
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_attempt_is_retried_at_once() {
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let result = request("test", Duration::from_secs(5), || async {
        match calls.fetch_add(1, Ordering::SeqCst) {
            0 => Err(unavailable()),
            n => Ok(n),
        }
    })
    .await;
    assert_eq!(result.expect("the second attempt succeeds"), 1);
    assert_eq!(start.elapsed(), Duration::ZERO, "no wait before the retry");
}

#[tokio::test(start_paused = true)]
async fn a_hung_attempt_gets_a_hedge() {
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let result = request("test", Duration::from_secs(5), || async {
        match calls.fetch_add(1, Ordering::SeqCst) {
            0 => std::future::pending().await,
            n => Ok(n),
        }
    })
    .await;
    assert_eq!(result.expect("the hedge succeeds"), 1);
    assert_eq!(start.elapsed(), HEDGE_AFTER);
}

#[tokio::test(start_paused = true)]
async fn an_answer_every_member_would_give_is_final() {
    let calls = AtomicU32::new(0);
    let result: Result<(), _> = request("test", Duration::from_secs(5), || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Err(denied())
    })
    .await;
    assert!(result.expect_err("denied").is_permanent());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// An answer etcd gives to an invalid request, on every member: not sent again.
#[tokio::test(start_paused = true)]
async fn a_request_etcd_calls_invalid_is_not_sent_again() {
    let calls = AtomicU32::new(0);
    let result: Result<(), _> = request("test", Duration::from_secs(5), || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Err(Error::Put {
            key: "p/a".into(),
            lease_id: 1,
            source: Arc::new(etcd_client::Error::GRpcStatus(
                tonic::Status::invalid_argument("etcdserver: request is too large"),
            )),
        })
    })
    .await;
    assert!(matches!(result, Err(Error::Put { .. })), "{result:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn an_etcd_that_refuses_everywhere_gets_the_last_error_within_a_second() {
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let result: Result<(), _> = request("test", Duration::from_secs(5), || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Err(unavailable())
    })
    .await;
    assert!(matches!(result, Err(Error::Connect { .. })), "{result:?}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(calls.load(Ordering::SeqCst), MAX_FAILURES);
}

#[tokio::test(start_paused = true)]
async fn a_slow_failure_ends_at_the_deadline() {
    let start = Instant::now();
    let result: Result<(), _> = request("test", Duration::from_secs(2), || async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Err(unavailable())
    })
    .await;
    assert!(matches!(result, Err(Error::Connect { .. })), "{result:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

/// Counts the attempts running (started, not yet ended or dropped) and the most at once.
#[derive(Default)]
struct Gauge {
    now: AtomicU32,
    most: AtomicU32,
}

impl Gauge {
    /// Asserts that [`MAX_IN_FLIGHT`] attempts, no more, ran at once, and that none runs
    /// now that the request has returned.
    fn assert_capped_and_dropped(&self) {
        assert_eq!(self.most.load(Ordering::SeqCst), MAX_IN_FLIGHT as u32);
        assert_eq!(self.now.load(Ordering::SeqCst), 0, "every attempt dropped");
    }
}

struct Running<'a>(&'a Gauge);

impl<'a> Running<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        let now = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
        gauge.most.fetch_max(now, Ordering::SeqCst);
        Running(gauge)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn an_etcd_that_never_answers_times_out() {
    let calls = AtomicU32::new(0);
    let gauge = Gauge::default();
    let result: Result<(), _> = request("listing", Duration::from_secs(5), || async {
        calls.fetch_add(1, Ordering::SeqCst);
        let _running = Running::new(&gauge);
        std::future::pending().await
    })
    .await;
    assert!(
        matches!(
            result,
            Err(Error::Timeout {
                operation: "listing",
                ..
            })
        ),
        "{result:?}"
    );
    // One at once, then one every HEDGE_AFTER until the deadline.
    assert_eq!(calls.load(Ordering::SeqCst), 17);
    gauge.assert_capped_and_dropped();
}

/// A deadline that falls on a hedge: the request ends, no attempt starts then.
#[tokio::test(start_paused = true)]
async fn no_attempt_starts_at_the_deadline() {
    let calls = AtomicU32::new(0);
    let result: Result<(), _> = request("test", HEDGE_AFTER * 10, || async {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    })
    .await;
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 10, "at 0, 0.3 s, ..., 2.7 s");
}

/// Every member answers, each after 3 s (a loaded disk): the first attempt is kept past
/// the eighth hedge and answers within the 5 s deadline.
#[tokio::test(start_paused = true)]
async fn an_etcd_slow_everywhere_answers_the_first_attempt() {
    let calls = AtomicU32::new(0);
    let gauge = Gauge::default();
    let start = Instant::now();
    let result = request("test", Duration::from_secs(5), || async {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let _running = Running::new(&gauge);
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok(n)
    })
    .await;
    assert_eq!(result.expect("the first answers"), 0);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    gauge.assert_capped_and_dropped();
}

/// The first eight attempts land on a frozen member, the ninth on a live one: the second
/// gave way (the oldest but the first), so the request does not wait for its deadline with
/// all eight stuck.
#[tokio::test(start_paused = true)]
async fn attempts_go_on_past_eight_stuck_on_a_frozen_member() {
    let calls = AtomicU32::new(0);
    let gauge = Gauge::default();
    let start = Instant::now();
    let result = request("test", Duration::from_secs(5), || async {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let _running = Running::new(&gauge);
        match n {
            0..8 => std::future::pending().await,
            n => Ok(n),
        }
    })
    .await;
    assert_eq!(result.expect("the ninth answers"), 8);
    assert_eq!(start.elapsed(), HEDGE_AFTER * 8);
    gauge.assert_capped_and_dropped();
}
