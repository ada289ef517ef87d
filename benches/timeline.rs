//! The README's plot: calls per backend per 100 ms through a rolling restart and a `kill -9`,
//! for the crate's balancer and tonic's `balance_channel` side by side, recorded from a real
//! run (real etcd, three `greeter_server` processes) to CSV. `make plot` runs it and draws
//! `docs/timeline.png` with `scripts/plot_timeline.py`.
//!
//! ```text
//! cargo bench --bench timeline                       # writes target/timeline/*.csv
//! TIMELINE_OUT=docs cargo bench --bench timeline     # elsewhere
//! ```
//!
//! Both balancers call at the same paced rate at once, over the same servers:
//!
//! 1. three servers run (lease TTL 10 s) and the calls spread over them;
//! 2. **rolling restart**: each server in turn gets SIGTERM (it deregisters, waits 1 s,
//!    drains, exits 0), and a new one starts on the same port;
//! 3. **kill -9** of one server: no deregistration, so its key stays until its lease
//!    expires, 10 s later.
//!
//! Output: `timeline.csv` (`balancer,t_ms,backend,calls`: calls answered by `backend` in
//! the 100 ms from `t_ms`, or failed when `backend` is `failed`) and `events.csv`
//! (`t_ms,event`). Run directly, the binary needs `--bench`, as `cargo bench` passes it.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tonic::transport::Channel;
use tonic_etcd::{BalancedChannel, EtcdDiscover};

use support::greeter::backend_of;
use support::pb::HelloRequest;
use support::pb::greeter_client::GreeterClient;
use support::{Etcd, ServerProcess, wait_until};

const SERVICE: &str = "timeline";
/// The servers' lease TTL: how long a killed server's key outlives it.
const TTL_SECS: u64 = 10;
/// Width of one bucket of the series.
const BUCKET: Duration = Duration::from_millis(100);
/// Callers per balancer, each calling once per [`PACE`]: 800 calls/s, 80 per bucket.
const CALLERS: usize = 8;
const PACE: Duration = Duration::from_millis(10);
/// A call that takes longer fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Quiet time before, between and after the faults.
const SETTLE: Duration = Duration::from_secs(3);
/// How long a server may take to exit after SIGTERM, or calls to reach it.
const DEADLINE: Duration = Duration::from_secs(30);

/// Calls per (bucket, backend) of one balancer; `failed` for failed calls.
type Series = Arc<Mutex<BTreeMap<(u64, String), u64>>>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("timeline: run with `cargo bench --bench timeline` (or pass --bench)");
        return;
    }
    let out = std::env::var_os("TIMELINE_OUT").map_or_else(default_out, PathBuf::from);
    let etcd = Etcd::start().await;
    let endpoint = etcd.endpoint();
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(ServerProcess::spawn(&endpoint, SERVICE, TTL_SECS).await);
    }
    let ours = EtcdDiscover::new(etcd.client().await, SERVICE).channel();
    let (tonic, _discovery) = EtcdDiscover::new(etcd.client().await, SERVICE).balance_channel();
    let start = Instant::now();
    let (stop, stopped) = watch::channel(false);
    let series: [Series; 2] = Default::default();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let client = Client::Ours(GreeterClient::new(ours.clone()));
        callers.spawn(call(client, start, series[0].clone(), stopped.clone()));
        let client = Client::Tonic(GreeterClient::new(tonic.clone()));
        callers.spawn(call(client, start, series[1].clone(), stopped.clone()));
    }
    let mut events = Vec::new();
    let mut event = |what: String| {
        println!("{:>6.1} s  {what}", start.elapsed().as_secs_f64());
        events.push((start.elapsed().as_millis(), what));
    };
    for server in &servers {
        reached(&series, server.addr()).await;
    }
    tokio::time::sleep(SETTLE).await;
    event("rolling restart begins".into());
    for server in &mut servers {
        let addr = server.addr();
        event(format!("SIGTERM {addr}"));
        server.terminate();
        let status = server.wait_exit(DEADLINE).await;
        assert!(status.success(), "{addr} exited with {status}");
        *server = ServerProcess::spawn_at(&endpoint, SERVICE, TTL_SECS, addr).await;
        event(format!("{addr} restarted"));
        reached(&series, addr).await;
    }
    tokio::time::sleep(SETTLE).await;
    let victim = servers[0].addr();
    event(format!("kill -9 {victim}"));
    servers[0].kill9();
    tokio::time::sleep(Duration::from_secs(TTL_SECS) + SETTLE).await;
    event("end".into());
    let _ = stop.send(true);
    while callers.join_next().await.is_some() {}
    write(&out, &series, &events);
}

/// `target/timeline`, beside the build's other output.
fn default_out() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| "target".into(), PathBuf::from);
    target.join("timeline")
}

enum Client {
    Ours(GreeterClient<BalancedChannel>),
    Tonic(GreeterClient<Channel>),
}

impl Client {
    async fn hello(&mut self) -> Result<String, tonic::Status> {
        let request = || HelloRequest {
            name: "timeline".into(),
        };
        let reply = match self {
            Client::Ours(client) => client.say_hello(request()).await,
            Client::Tonic(client) => client.say_hello(request()).await,
        };
        reply.map(|r| r.into_inner().message)
    }
}

/// Calls once per [`PACE`] until stopped, counting each call in its bucket.
async fn call(mut client: Client, start: Instant, series: Series, mut stop: watch::Receiver<bool>) {
    let mut pace = tokio::time::interval(PACE);
    pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = pace.tick() => {}
        }
        let sent = start.elapsed();
        let backend = match tokio::time::timeout(CALL_TIMEOUT, client.hello()).await {
            Ok(Ok(message)) => backend_of(&message).to_string(),
            _ => "failed".to_owned(),
        };
        let bucket = (sent.as_millis() / BUCKET.as_millis()) as u64;
        *support::lock(&series).entry((bucket, backend)).or_default() += 1;
    }
}

/// Waits until both balancers have had a call answered by `addr`.
async fn reached(series: &[Series; 2], addr: SocketAddr) {
    let addr = addr.to_string();
    for s in series {
        let what = format!("calls reach {addr}");
        wait_until(&what, DEADLINE, || async {
            support::lock(s).keys().any(|(_, backend)| *backend == addr)
        })
        .await;
    }
}

fn write(out: &PathBuf, series: &[Series; 2], events: &[(u128, String)]) {
    std::fs::create_dir_all(out).expect("create the output directory");
    let mut csv = String::from("balancer,t_ms,backend,calls\n");
    for (name, s) in ["tonic-etcd", "tonic balance_channel"].iter().zip(series) {
        for ((bucket, backend), calls) in support::lock(s).iter() {
            let t = bucket * BUCKET.as_millis() as u64;
            csv.push_str(&format!("{name},{t},{backend},{calls}\n"));
        }
    }
    let mut lines = String::from("t_ms,event\n");
    for (t, what) in events {
        lines.push_str(&format!("{t},{what}\n"));
    }
    std::fs::write(out.join("timeline.csv"), csv).expect("write timeline.csv");
    std::fs::write(out.join("events.csv"), lines).expect("write events.csv");
    for (name, s) in ["tonic-etcd", "tonic balance_channel"].iter().zip(series) {
        let failed: u64 = support::lock(s)
            .iter()
            .filter(|((_, backend), _)| backend == "failed")
            .map(|(_, calls)| calls)
            .sum();
        let all: u64 = support::lock(s).values().sum();
        println!("{name}: {all} calls, {failed} failed");
    }
    println!("wrote {}", out.display());
}
