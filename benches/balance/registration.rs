//! Measure 5: from the put of a registration to the first call the new server serves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tonic_etcd::{EndpointState, EtcdDiscover};
use tower::discover::Change;

use crate::common::{self, Budget, Client, Config, Row};
use crate::support::greeter::greeting;
use crate::support::pb::greeter_server::{Greeter, GreeterServer};
use crate::support::pb::{HelloReply, HelloRequest};
use crate::support::{Etcd, TestServer, wait_until};

const SERVICE: &str = "bench-register";
/// Callers that keep the channel busy meanwhile.
const CALLERS: usize = 4;
/// How long a trial waits for the first call.
const TRIAL_DEADLINE: Duration = Duration::from_secs(5);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A greeter that records when it served its first call.
#[derive(Clone)]
struct FirstCall {
    addr: SocketAddr,
    first: Arc<OnceLock<Instant>>,
    served: Arc<Notify>,
}

#[tonic::async_trait]
impl Greeter for FirstCall {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        if self.first.set(Instant::now()).is_ok() {
            self.served.notify_one();
        }
        let message = greeting(&request.into_inner().name, self.addr);
        Ok(Response::new(HelloReply { message }))
    }
}

/// A [`FirstCall`] server on a free loopback port; stops when `stop` is sent or dropped.
struct Probe {
    greeter: FirstCall,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Probe {
    fn start() -> Probe {
        let incoming = TcpIncoming::bind("127.0.0.1:0".parse().expect("an address"))
            .expect("bind a loopback port");
        let greeter = FirstCall {
            addr: incoming.local_addr().expect("a bound listener's address"),
            first: Arc::default(),
            served: Arc::default(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let serve = Server::builder()
            .add_service(GreeterServer::new(greeter.clone()))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            });
        Probe {
            greeter,
            stop,
            task: tokio::spawn(serve),
        }
    }

    async fn shutdown(self) {
        let _ = self.stop.send(());
        // Graceful: waits for the clients' connections to close, which they do on GOAWAY.
        let _ = tokio::time::timeout(TRIAL_DEADLINE, self.task).await;
    }
}

/// Measure 5: with our channel under a light continuous load (4 callers) over one server,
/// put the key of a new server and time until that server serves its first call; then
/// delete the key, wait until the channel has dropped it, and start over.
pub(crate) async fn put_to_first_call(etcd: &Etcd, config: &Config) -> Vec<Row> {
    println!("\n# 5. registration put → first call served, {CALLERS} callers, our channel");
    let base = TestServer::start().await;
    let mut kv = etcd.client().await;
    common::register(&mut kv, SERVICE, base.addr()).await;
    let channel = EtcdDiscover::new(etcd.client().await, SERVICE).channel();
    let client = Client::ours(channel.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            common::load(&client, CALLERS, Budget::Until(stop), Some(TRIAL_DEADLINE)).await
        })
    };
    // A raw stream on the same prefix, to tell when discovery saw each key.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watcher = {
        let seen = seen.clone();
        let mut discover = EtcdDiscover::new(etcd.client().await, SERVICE).into_stream();
        tokio::spawn(async move {
            while let Some(Ok(change)) = discover.next().await {
                if let Change::Insert(key, _) = change {
                    let now = Instant::now();
                    seen.lock().expect("seen lock").insert(key, now);
                }
            }
        })
    };
    let mut samples = Vec::with_capacity(config.trials);
    let (mut puts, mut watched) = (Vec::new(), Vec::new());
    let mut missed = 0;
    for _ in 0..config.trials {
        let probe = Probe::start();
        let addr = probe.greeter.addr.to_string();
        let started = Instant::now();
        let key = common::register(&mut kv, SERVICE, &addr).await;
        puts.push(ms(started.elapsed()));
        let served = probe.greeter.served.clone();
        match tokio::time::timeout(TRIAL_DEADLINE, served.notified()).await {
            Ok(()) => {
                let first = *probe
                    .greeter
                    .first
                    .get()
                    .expect("set before the notification");
                samples.push(ms(first.duration_since(started)));
            }
            Err(_) => missed += 1,
        }
        if let Some(at) = seen.lock().expect("seen lock").get(&key) {
            watched.push(ms(at.duration_since(started)));
        }
        kv.delete(key, None).await.expect("delete a registration");
        wait_until("the channel drops the endpoint", TRIAL_DEADLINE, || async {
            channel.endpoints().iter().all(|e| e.addr != addr)
        })
        .await;
        probe.shutdown().await;
    }
    stop.store(true, Ordering::Relaxed);
    let load = background
        .await
        .expect("the background load does not panic");
    let up = channel
        .endpoints()
        .iter()
        .filter(|e| e.state == EndpointState::Up)
        .count();
    watcher.abort();
    samples.sort_by(f64::total_cmp);
    let spread = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        format!(
            "p50 {:.2} ms  p99 {:.2} ms",
            common::quantile(&values, 0.5),
            common::quantile(&values, 0.99)
        )
    };
    let slowest: Vec<String> = samples
        .iter()
        .rev()
        .take(5)
        .map(|v| format!("{v:.1}"))
        .collect();
    let (p50, p99) = (
        common::quantile(&samples, 0.5),
        common::quantile(&samples, 0.99),
    );
    let max = samples.last().copied().unwrap_or(f64::NAN);
    println!(
        "  {} trials: p50 {p50:.2} ms  p99 {p99:.2} ms  min {:.2}  max {max:.2}  missed {missed}; \
         background {} ok, {} failed; {up} endpoint(s) up at the end",
        samples.len(),
        samples.first().copied().unwrap_or(f64::NAN),
        load.ok,
        load.failed,
    );
    println!(
        "  slowest trials (ms): {}; the put's round trip: {}; a raw stream on the same \
         prefix saw the key: {}",
        slowest.join(", "),
        spread(puts),
        spread(watched)
    );
    let measure = format!(
        "5. registration put → first call served ({} trials, 4 callers)",
        config.trials
    );
    vec![
        Row::new(measure.clone(), "—")
            .ours(format!("p50 {p50:.2} ms"))
            .ratio("≤ 3 ms")
            .met(p50 <= 3.0 && missed == 0),
        Row::new(measure, "—")
            .ours(format!("p99 {p99:.2} ms (max {max:.2}; {missed} missed)"))
            .ratio("≤ 15 ms")
            .met(p99 <= 15.0 && missed == 0),
    ]
}
