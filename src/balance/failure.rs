//! The [`Balancer`]'s settings for endpoints that fail above the transport: outlier
//! detection, slow start, and retries of sent calls.

use super::Balancer;
use super::outlier::OutlierDetection;
use super::retry_policy::RetryPolicy;
use super::retry_throttle::RetryThrottling;
use super::slow_start::SlowStart;

impl Balancer {
    /// Outlier detection: endpoints that fail calls by gRPC status (`UNAVAILABLE`,
    /// `INTERNAL`, ...) lose their share of calls at once and are ejected for a while
    /// (gRFC A50, Envoy's outlier detection); `None` turns it off. See
    /// [`OutlierDetection`] for the rules and their defaults.
    ///
    /// Default: on, with [`OutlierDetection::default`]. gRPC makes it opt-in, because its
    /// service config comes from the operator; here the endpoints come from etcd with no
    /// config, and a server that answers every call at once with `UNAVAILABLE` would
    /// otherwise look like the fastest one and attract calls. The max ejection percent
    /// (10 %, at least one endpoint) and the panic threshold (50 %) keep it from ejecting
    /// much of a set; to keep only the share factor, set
    /// [`max_ejection_percent`](OutlierDetection::max_ejection_percent) to 0.
    pub fn outlier_detection(mut self, detection: Option<OutlierDetection>) -> Self {
        self.outlier = detection;
        self
    }

    /// Slow start: an endpoint that comes into rotation (it joined, reconnected, or its
    /// outlier ejection ended) gets a share of calls that ramps up over a window, after
    /// Envoy's slow start mode; see [`SlowStart`]. Its factor shows in
    /// [`EndpointInfo::slow_start`](crate::EndpointInfo::slow_start).
    ///
    /// Default: off, as in Envoy and every gRPC peer: most servers are ready at once, and
    /// the ramp takes share from them.
    pub fn slow_start(mut self, ramp: SlowStart) -> Self {
        self.slow_start = Some(ramp);
        self
    }
}

/// The default [`Balancer::retry_buffer`]: 256 KiB.
pub(super) const DEFAULT_RETRY_BUFFER: usize = 256 * 1024;

impl Balancer {
    /// Retries the calls of `path` that were sent and failed, under `policy` (gRFC A6's
    /// `retryPolicy`). `path` names a method (`"/helloworld.Greeter/SayHello"`), a
    /// service (`"/helloworld.Greeter/"`, or `"helloworld.Greeter"`) or every method
    /// (`"/"`); the most specific wins, and a later call for the same path replaces an
    /// earlier one.
    ///
    /// Default: none; retry only methods that are safe to run twice. Calls that never
    /// left (the connection failed before the request was taken) are retried anyway, at
    /// once, on another endpoint, outside any policy and budget.
    ///
    /// A failed attempt is retried when its status is one of the policy's codes (a lost
    /// connection or a `GOAWAY` once sent counts as `UNAVAILABLE`; a response body that
    /// failed, or a stream the server reset, counts with its own code), attempts are left, the call
    /// is not committed (no response headers reached the caller: a trailers-only error
    /// response is retried, a stream that sent messages is not; the whole request fit
    /// the [`retry_buffer`](Balancer::retry_buffer)), the server did not refuse by
    /// `grpc-retry-pushback-ms`, the [`retry_throttling`](Balancer::retry_throttling)
    /// allows it, and the wait ends before the call's deadline (`grpc-timeout`, which
    /// covers all attempts). A retry goes to another endpoint where one is up, after
    /// the policy's jittered backoff, and carries `grpc-previous-rpc-attempts`.
    ///
    /// Unlike gRFC A6, which commits a call when its response headers arrive, the channel
    /// holds a response while a retry could still follow (the whole request was sent and
    /// fit the buffer, an attempt is left, the throttle allows one): until its first
    /// message and its trailers, holding two frames and at most `retry_buffer` bytes. A
    /// unary call whose server is killed between headers and trailers, or that gets a
    /// trailers-only `UNAVAILABLE` after its headers, is then still retried; a stream is
    /// handed over with its second frame, and a call still sending its request (a client
    /// or bidi stream) gets its headers at once.
    ///
    /// A frame that does not come is waited for while the connection reads nothing (a
    /// server stalled between its headers and its message, or a busy client machine), up
    /// to 500 ms per frame, so 1 s in all, and never past the call's own deadline
    /// (`grpc-timeout`); once the connection has read anything at least
    /// 20 ms before and the call's frame is still not in, the call's stream is taken to be
    /// quiet, and the response is handed over. A server stream that sends its headers and
    /// then waits, on an otherwise idle connection, so reaches its caller up to 500 ms
    /// late (1 s if its first message comes just before): put a policy on unary and
    /// client-streaming methods. On tonic's `Channel` (an endpoint hook), whose reads are
    /// not counted, each wait is 20 ms.
    pub fn retry_policy(mut self, path: &str, policy: RetryPolicy) -> Self {
        self.retry = std::mem::take(&mut self.retry).method(path, policy);
        self
    }

    /// Retry throttling (gRFC A6's `retryThrottling`, a token bucket per channel): while
    /// too many calls fail, retries stop, so that they add a bounded share of load, not a
    /// multiple of it. `None` turns it off. Default: on, with
    /// [`RetryThrottling::default`] (100 tokens, ratio 0.1). Only calls under a
    /// [`retry_policy`](Balancer::retry_policy) count.
    pub fn retry_throttling(mut self, throttling: Option<RetryThrottling>) -> Self {
        self.retry_throttling = throttling;
        self
    }

    /// The most bytes of a request body kept to send it again on a retry; a request
    /// larger than this is sent, but not retried once sent. Default: 256 KiB. Only calls
    /// under a [`retry_policy`](Balancer::retry_policy) are kept.
    pub fn retry_buffer(mut self, bytes: usize) -> Self {
        self.retry_buffer = bytes;
        self
    }
}
