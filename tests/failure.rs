//! The crate's own balancer when endpoints fail above the transport (issue 11): outlier
//! detection by gRPC status, retries under a policy and a budget, slow start. Real etcd,
//! real greeter servers, some of which fail calls on purpose.

mod support;

#[path = "failure/outlier.rs"]
mod outlier;
#[path = "failure/retry.rs"]
mod retry;
#[path = "failure/slow_start.rs"]
mod slow_start;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;

use support::pb::HelloRequest;
use support::pb::greeter_client::GreeterClient;
use support::{Etcd, TestServer, lock};
use tonic_etcd::etcd_client::Client;
use tonic_etcd::{BalancedChannel, Balancer, EtcdDiscover, Format, Instance};

const DEADLINE: Duration = Duration::from_secs(10);

/// Registers `addr` under `service`.
async fn register(etcd: &mut Client, service: &str, addr: SocketAddr) {
    let instance = Instance::new(addr.to_string());
    let format = tonic_etcd::EtcdNaming;
    let key = format.key(service, &instance, 0);
    etcd.put(key, format.value(service, &instance), None)
        .await
        .expect("put a registration");
}

/// etcd, `servers` registered under `service`, and a channel over them, built by
/// `balancer`, once every server is up in it.
async fn setup(
    etcd: &Etcd,
    service: &str,
    servers: &[&TestServer],
    balancer: Balancer,
) -> BalancedChannel {
    let mut client = etcd.client().await;
    for server in servers {
        register(&mut client, service, server.addr()).await;
    }
    let channel = balancer.channel(EtcdDiscover::new(etcd.client().await, service));
    support::wait_until("every server is up in the channel", DEADLINE, || async {
        let endpoints = channel.endpoints();
        endpoints.len() == servers.len()
            && endpoints
                .iter()
                .all(|e| e.state == tonic_etcd::EndpointState::Up)
    })
    .await;
    channel
}

/// What callers counted.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    backends: Mutex<BTreeMap<SocketAddr, usize>>,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }

    fn failed_share(&self) -> f64 {
        self.failed() as f64 / (self.ok() + self.failed()).max(1) as f64
    }
}

/// `callers` tasks calling back to back through `channel` for `duration`.
async fn call_for(channel: &BalancedChannel, callers: usize, duration: Duration) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let until = tokio::time::Instant::now() + duration;
    let mut tasks = JoinSet::new();
    for i in 0..callers {
        let mut client = GreeterClient::new(channel.clone());
        let tally = tally.clone();
        tasks.spawn(async move {
            while tokio::time::Instant::now() < until {
                let request = HelloRequest {
                    name: format!("caller-{i}"),
                };
                match client.say_hello(request).await {
                    Ok(reply) => {
                        let addr = support::greeter::backend_of(&reply.into_inner().message);
                        *lock(&tally.backends).entry(addr).or_default() += 1;
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        let mut errors = lock(&tally.errors);
                        if errors.len() < 10 {
                            errors.push(format!("{:?}: {}", status.code(), status.message()));
                        }
                    }
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a caller does not panic");
    }
    tally
}
