//! A call under a retry policy (gRFC A6): each attempt goes through `call::call`, whose
//! transparent retry of unsent calls stays inside it and outside the budget; after a
//! failed attempt, `retry_decision` says whether to send the call again, and when.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;
use tracing::debug;

use super::backend::Backend;
use super::call::Tried;
use super::direct::grpc_timeout;
use super::hold::{self, BodyFailed};
use super::replay::Recording;
use super::retry_decision::{
    AttemptFailure, Attempts, NoRetry, PREVIOUS_ATTEMPTS, Pushback, RetryDecision,
};
use super::retry_policy::RetryPolicy;
use super::retry_throttle::TokenBucket;
use super::shared::Shared;
use super::status_observer::{self, Observed, grpc_status};

type Response = http::Response<Body>;
type Outcome = Result<Response, tower::BoxError>;

/// Sends `request` under `policy`: on `picked` first if given, again on other endpoints
/// while the policy, the call's deadline and the retry throttle allow.
pub(super) async fn call(
    state: Arc<Shared>,
    policy: RetryPolicy,
    mut picked: Option<Arc<Backend>>,
    request: http::Request<Body>,
) -> Outcome {
    let timeout = grpc_timeout(request.headers()).map(|t| Instant::now() + t);
    let mut attempts = Attempts::new(policy, timeout);
    let recording = Recording::new(state.config.retry_buffer);
    let (parts, body) = request.into_parts();
    let mut body = recording.record(body);
    let mut tried = Tried::default();
    let mut rng = fastrand::Rng::new();
    loop {
        let request = attempt_request(&parts, body, attempts.previous(), timeout);
        let result = super::call::call(state.clone(), picked.take(), request, Some(&mut tried));
        let throttle = state.throttle.as_ref();
        let result = match may_retry(&recording, &attempts, throttle) {
            true => {
                let limit = state.config.retry_buffer;
                hold::first_frames(result.await, limit, tried.reads.as_ref(), timeout).await
            }
            false => result.await,
        };
        let Some(failure) = failure(&result, recording.overflowed()) else {
            return result.map(|response| counted(response, &state, &policy));
        };
        match attempts.after_failure(failure, throttle, Instant::now(), &mut rng) {
            RetryDecision::Retry { after } => {
                crate::metrics::retry(&state.service, crate::metrics::Retry::Policy);
                debug!(code = ?failure.code, attempt = attempts.made(), ?after, "retrying a failed call");
                if !after.is_zero() {
                    tokio::time::sleep(after).await;
                }
                match recording.replay(Instant::now() + BODY_BACK).await {
                    Some(replay) => body = replay,
                    None => {
                        debug!("failed call not retried: its request body did not come back");
                        return result;
                    }
                }
            }
            RetryDecision::Stop(why) => {
                not_retried(&state, failure.code, &why);
                return result;
            }
        }
    }
}

/// Reports a failed call that is not retried, and why.
fn not_retried(state: &Shared, code: Code, why: &NoRetry) {
    if matches!(why, NoRetry::Throttled) {
        crate::metrics::retry_throttled(&state.service);
    }
    let tokens = state.throttle.as_ref().map(TokenBucket::tokens);
    debug!(?code, %why, ?tokens, "failed call not retried");
}

/// Whether a failure of the attempt being sent could still be retried, so that its
/// response is worth holding ([`hold::first_frames`]): the whole request was sent and
/// recorded (a call still sending, a client or bidi stream, must have its response
/// headers at once, or a server that waits for the client's first message never gets
/// it), an attempt is left, and the throttle allows a retry.
fn may_retry(recording: &Recording, attempts: &Attempts, throttle: Option<&TokenBucket>) -> bool {
    recording.is_complete() && attempts.left() && throttle.is_none_or(TokenBucket::allows_retry)
}

/// How long a retry waits, after its backoff, for the transport to give back the part of
/// the request body it had not sent.
const BODY_BACK: Duration = Duration::from_millis(100);

/// How an attempt failed, if it did in a way a retry may follow: a trailers-only
/// response with an error status (the caller has seen nothing yet), or a failure once
/// sent ([`error_code`]). `None` for a response whose headers go to the
/// caller (it commits the call), and for the errors of the call itself: no endpoint, its
/// own deadline. A request that `overflowed` the retry buffer commits the call.
fn failure(result: &Outcome, overflowed: bool) -> Option<AttemptFailure> {
    let (code, pushback) = match result {
        Ok(response) => match grpc_status(response.headers()) {
            Some(Code::Ok) | None => return None,
            Some(code) => (code, Pushback::from_headers(response.headers())),
        },
        Err(error) if is_the_calls_own(&**error) => return None,
        Err(error) => (error_code(&**error), Pushback::Unsaid),
    };
    Some(AttemptFailure {
        code,
        pushback,
        committed: overflowed,
    })
}

/// The code of an attempt that failed once sent: `UNAVAILABLE` for a lost connection (an
/// I/O error, a closed connection, a `GOAWAY`) or a stream the server refused
/// (`REFUSED_STREAM`), as the gRPC HTTP/2 mapping says; otherwise the status a response
/// body failed with ([`BodyFailed`]), or the code of the server's `RST_STREAM`. An
/// attempt that failed before any response, for a reason not told, counts as a lost
/// connection.
fn error_code(error: &(dyn std::error::Error + 'static)) -> Code {
    let mut reset = None;
    let mut source = Some(error);
    while let Some(e) = source {
        if e.is::<std::io::Error>() {
            return Code::Unavailable;
        }
        if let Some(e) = e.downcast_ref::<hyper::Error>()
            && (e.is_closed() || e.is_incomplete_message() || e.is_timeout())
        {
            return Code::Unavailable;
        }
        if let Some(e) = e.downcast_ref::<h2::Error>() {
            if e.is_io() || e.is_go_away() {
                return Code::Unavailable;
            }
            reset = reset.or(e.reason());
        }
        source = e.source();
    }
    if let Some(BodyFailed(status)) = error.downcast_ref::<BodyFailed>() {
        return status.code();
    }
    match reset {
        Some(h2::Reason::REFUSED_STREAM) | None => Code::Unavailable,
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
        Some(_) => Code::Internal,
    }
}

/// Whether an error is the call's own, not an endpoint's: no endpoint was found
/// (`Unavailable` from the pick), or its deadline passed.
fn is_the_calls_own(error: &(dyn std::error::Error + 'static)) -> bool {
    error.is::<tonic::Status>() || error.is::<tonic::TimeoutExpired>()
}

/// The request of one attempt: the call's head with `body`; a retry tells the server how
/// many attempts came before it, and how much of the call's deadline is left.
fn attempt_request(
    parts: &http::request::Parts,
    body: Body,
    previous: u32,
    timeout: Option<Instant>,
) -> http::Request<Body> {
    let mut request = http::Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    if previous > 0 {
        let headers = request.headers_mut();
        headers.insert(PREVIOUS_ATTEMPTS, HeaderValue::from(previous));
        if let Some(at) = timeout {
            let left = at.saturating_duration_since(Instant::now());
            headers.insert("grpc-timeout", grpc_timeout_value(left));
        }
    }
    request
}

/// `left` as a `grpc-timeout` value, in milliseconds (at most 8 digits, by the spec).
fn grpc_timeout_value(left: Duration) -> HeaderValue {
    let millis = left.as_millis().clamp(1, 99_999_999);
    HeaderValue::from_str(&format!("{millis}m")).expect("digits and a unit are a valid value")
}

/// The response that goes to the caller; how the call ends feeds the retry throttle: `OK`
/// gives back a share of a token, a retryable code takes one (A6).
fn counted(response: Response, state: &Arc<Shared>, policy: &RetryPolicy) -> Response {
    if state.throttle.is_none() {
        return response;
    }
    let (state, policy) = (state.clone(), *policy);
    let report = move |observed| {
        let Some(bucket) = state.throttle.as_ref() else {
            return;
        };
        match observed {
            Observed::Status(Code::Ok) => bucket.record_success(),
            Observed::Status(code) if policy.retries(code) => {
                bucket.record_failure();
            }
            _ => {}
        }
    };
    status_observer::observe(response, report).map(Body::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: Option<&'static str>, pushback: Option<&'static str>) -> Outcome {
        let mut response = http::Response::new(Body::empty());
        if let Some(status) = status {
            let value = HeaderValue::from_static(status);
            response.headers_mut().insert("grpc-status", value);
        }
        if let Some(ms) = pushback {
            let value = HeaderValue::from_static(ms);
            response
                .headers_mut()
                .insert("grpc-retry-pushback-ms", value);
        }
        Ok(response)
    }

    #[test]
    fn only_trailers_only_errors_and_sent_transport_failures_may_be_retried() {
        assert_eq!(
            failure(&response(None, None), false),
            None,
            "headers commit"
        );
        assert_eq!(failure(&response(Some("0"), None), false), None);
        let failed = failure(&response(Some("14"), Some("20")), false).expect("a failure");
        assert_eq!(failed.code, Code::Unavailable);
        assert_eq!(failed.pushback, Pushback::After(Duration::from_millis(20)));
        assert!(!failed.committed);
        let unreplayable = failure(&response(Some("13"), None), true).expect("a failure");
        assert!(unreplayable.committed, "a request that outgrew the buffer");
        let reset: tower::BoxError = "connection reset".into();
        assert_eq!(
            failure(&Err(reset), false).map(|f| f.code),
            Some(Code::Unavailable)
        );
        let lost = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let lost = tonic::Status::from_error(Box::new(lost));
        let lost: tower::BoxError = Box::new(BodyFailed(lost));
        let code = failure(&Err(lost), false).map(|f| f.code);
        assert_eq!(code, Some(Code::Unavailable), "a lost connection");
        let internal = BodyFailed(tonic::Status::internal("decode failed"));
        let code = failure(&Err(Box::new(internal)), false).map(|f| f.code);
        assert_eq!(
            code,
            Some(Code::Internal),
            "a body's own status, not UNAVAILABLE"
        );
        let cancelled: tower::BoxError = h2::Error::from(h2::Reason::CANCEL).into();
        let code = failure(&Err(cancelled), false).map(|f| f.code);
        assert_eq!(code, Some(Code::Cancelled), "a stream the server reset");
        let none: tower::BoxError = tonic::Status::unavailable("no endpoint").into();
        assert_eq!(failure(&Err(none), false), None, "no endpoint: not retried");
        let late: tower::BoxError = tonic::TimeoutExpired(()).into();
        assert_eq!(failure(&Err(late), false), None);
    }

    #[test]
    fn a_response_is_held_only_while_a_retry_could_follow() {
        use std::task::{Context, Waker};

        use http_body::Body as _;

        let recording = Recording::new(1024);
        let mut body = recording.record(Body::new(String::from("hello")));
        let policy = RetryPolicy::default().max_attempts(2);
        let attempts = Attempts::new(policy, None);
        assert!(
            !may_retry(&recording, &attempts, None),
            "a request still being sent (a bidi call) gets its headers at once"
        );
        let mut cx = Context::from_waker(Waker::noop());
        while let std::task::Poll::Ready(Some(_)) =
            std::pin::Pin::new(&mut body).poll_frame(&mut cx)
        {}
        assert!(may_retry(&recording, &attempts, None));
        let mut last = attempts.clone();
        let failed = AttemptFailure {
            code: Code::Unavailable,
            pushback: Pushback::Unsaid,
            committed: false,
        };
        let mut rng = fastrand::Rng::with_seed(1);
        let retried = last.after_failure(failed, None, Instant::now(), &mut rng);
        assert!(matches!(retried, RetryDecision::Retry { .. }));
        assert!(!may_retry(&recording, &last, None), "no attempt left");
        let bucket = crate::balance::retry_throttle::RetryThrottling::default()
            .max_tokens(1)
            .bucket();
        bucket.record_failure();
        assert!(
            !may_retry(&recording, &attempts, Some(&bucket)),
            "throttled"
        );
    }

    #[test]
    fn a_retry_carries_the_attempts_before_it_and_the_time_left() {
        let (parts, ()) = http::Request::builder()
            .uri("http://x/a.B/C")
            .header("grpc-timeout", "5S")
            .body(())
            .expect("a request")
            .into_parts();
        let first = attempt_request(&parts, Body::empty(), 0, None);
        assert!(first.headers().get(PREVIOUS_ATTEMPTS).is_none());
        assert_eq!(first.headers()["grpc-timeout"], "5S");
        let at = Instant::now() + Duration::from_secs(2);
        let retry = attempt_request(&parts, Body::empty(), 2, Some(at));
        assert_eq!(retry.headers()[PREVIOUS_ATTEMPTS], "2");
        let left = grpc_timeout(retry.headers()).expect("a timeout");
        assert!(left <= Duration::from_secs(2) && left > Duration::from_secs(1));
        assert_eq!(retry.uri().path(), "/a.B/C");
    }
}
