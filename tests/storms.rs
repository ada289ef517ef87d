//! Callers that retry at once on an error never starve the channel (issue 11, "never
//! starve"): a server that registers while they spin serves calls while they spin, soon
//! after its put. A starved channel serves it only once the callers stop (10 s here). The
//! speed target, 100 ms from the put, is measured where a busy machine cannot fail it
//! spuriously: `BENCH_ONLY=10 cargo bench --bench balance` (docs/benchmarks.md, row 10).
//!
//! The callers run on a multi-thread runtime with 2 workers, as a user's would; the new
//! server and the put run on a runtime of their own, as another process would. A binary of
//! its own: the spinning callers keep the cores busy, which other tests' timing would feel.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::task::JoinSet;

use support::pb::HelloRequest;
use support::pb::greeter_client::GreeterClient;
use support::{Etcd, TestServer, wait_until};
use tonic_etcd::etcd_client::Client;
use tonic_etcd::{BalancedChannel, EndpointState, EtcdDiscover, Format, Instance};

const DEADLINE: Duration = Duration::from_secs(10);

async fn register(etcd: &mut Client, service: &str, instance: &Instance) {
    let format = tonic_etcd::EtcdNaming;
    let key = format.key(service, instance, 0);
    etcd.put(key, format.value(service, instance), None)
        .await
        .expect("put a registration");
}

/// An address where nothing listens.
fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

fn ejected(channel: &BalancedChannel) -> usize {
    let endpoints = channel.endpoints();
    endpoints
        .iter()
        .filter(|e| e.state == EndpointState::Ejected)
        .count()
}

/// From the put of a new server's key to the first call it serves, at most: a tenth of
/// the time the callers spin, so that a starved channel fails the test however busy the
/// machine, and ten times the benchmark's target (measured there: 2 ms median, 8 ms worst,
/// idle), so that a machine whose other builds delay etcd and every task by a few time
/// slices does not.
const FOUND_WITHIN: Duration = Duration::from_secs(1);

/// The tests here measure time under load: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A runtime of its own, on its own thread, as another process would have.
struct Elsewhere(Option<Runtime>);

impl Elsewhere {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        Elsewhere(Some(runtime))
    }

    async fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self.0.as_ref().expect("the runtime runs");
        runtime
            .spawn(future)
            .await
            .expect("the task does not panic")
    }
}

impl Drop for Elsewhere {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Callers that call back to back, and retry at once on an error, for [`DEADLINE`] at most:
/// so that a channel that starves the runtime (then no timer fires) fails the test instead
/// of hanging it.
struct Spinning {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
    tasks: JoinSet<()>,
}

impl Spinning {
    fn start(channel: &BalancedChannel, callers: usize) -> Spinning {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        let until = std::time::Instant::now() + DEADLINE;
        for _ in 0..callers {
            let mut client = GreeterClient::new(channel.clone());
            let (stop, failed) = (stop.clone(), failed.clone());
            tasks.spawn(async move {
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                    let request = HelloRequest { name: "s".into() };
                    if client.say_hello(request).await.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        Spinning {
            stop,
            failed,
            tasks,
        }
    }

    async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(joined) = self.tasks.join_next().await {
            joined.expect("a caller does not panic");
        }
    }
}

/// Starts `callers` spinning on `service`, which fails every call; registers a new server
/// from elsewhere; returns the time from the put to the first call that server served.
async fn put_to_first_call(
    etcd: &Etcd,
    channel: &BalancedChannel,
    service: &str,
    callers: usize,
) -> Duration {
    let spinning = Spinning::start(channel, callers);
    wait_until("the callers spin on errors", DEADLINE, || async {
        spinning.failed.load(Ordering::Relaxed) >= 100 * callers
    })
    .await;
    let elsewhere = Elsewhere::new();
    let server = elsewhere.run(TestServer::start()).await;
    let (endpoint, service_owned, addr) = (etcd.endpoint(), service.to_owned(), server.addr());
    let put = elsewhere
        .run(async move {
            let mut kv = Client::connect([endpoint], None)
                .await
                .expect("connect to etcd");
            let started = std::time::Instant::now();
            register(&mut kv, &service_owned, &Instance::from(addr)).await;
            started
        })
        .await;
    wait_until("the new server serves a call", DEADLINE, || async {
        server.first_call_at().is_some()
    })
    .await;
    let took = server.first_call_at().expect("a first call") - put;
    let failed = spinning.failed.load(Ordering::Relaxed);
    spinning.stop().await;
    eprintln!("{callers} callers, {failed} failed calls: first call {took:?} after the put");
    elsewhere.run(server.shutdown()).await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_spinning_on_an_empty_service_let_a_new_server_serve_at_once() {
    let _serial = SERIAL.lock().await;
    let etcd = Etcd::start().await;
    for callers in [4, 8, 64] {
        let service = format!("empty-{callers}");
        let channel = EtcdDiscover::new(etcd.client().await, service.as_str()).channel();
        wait_until("discovery synced", DEADLINE, || async {
            channel.status().borrow().is_synced()
        })
        .await;
        let took = put_to_first_call(&etcd, &channel, &service, callers).await;
        assert!(
            took <= FOUND_WITHIN,
            "{callers} callers: the new server's first call came {took:?} after its put"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_spinning_on_refusing_endpoints_let_a_new_server_serve_at_once() {
    let _serial = SERIAL.lock().await;
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let refusing: Vec<SocketAddr> = (0..3).map(|_| dead_addr()).collect();
    for addr in &refusing {
        register(&mut kv, "refusing", &Instance::from(*addr)).await;
    }
    let channel = EtcdDiscover::new(etcd.client().await, "refusing").channel();
    wait_until("every endpoint ejected", DEADLINE, || async {
        ejected(&channel) == refusing.len()
    })
    .await;
    let took = put_to_first_call(&etcd, &channel, "refusing", 64).await;
    assert!(
        took <= FOUND_WITHIN,
        "the new server's first call came {took:?} after its put"
    );
}
