//! The crate's own balancer against real etcd and real greeter servers.

mod support;

#[path = "balancer/first_hour.rs"]
mod first_hour;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use support::pb::HelloRequest;
use support::pb::greeter_client::GreeterClient;
use support::{Etcd, TestServer, wait_until};
use tokio::time::Instant;
use tonic_etcd::etcd_client::Client;
use tonic_etcd::{
    BalancedChannel, Balancer, EndpointInfo, EndpointState, EtcdDiscover, Format, Instance,
};

const DEADLINE: Duration = Duration::from_secs(10);

async fn register(etcd: &mut Client, service: &str, instance: &Instance) {
    let format = tonic_etcd::EtcdNaming;
    let key = format.key(service, instance, 0);
    etcd.put(key, format.value(service, instance), None)
        .await
        .expect("put a registration");
}

async fn deregister(etcd: &mut Client, service: &str, addr: SocketAddr) {
    etcd.delete(format!("{service}/{addr}"), None)
        .await
        .expect("delete a registration");
}

/// Calls `n` times, in sequence; returns the calls per backend and the failures.
async fn calls(channel: &BalancedChannel, n: usize) -> (HashMap<SocketAddr, usize>, usize) {
    let mut client = GreeterClient::new(channel.clone());
    let mut backends = HashMap::new();
    let mut failed = 0;
    for _ in 0..n {
        let request = HelloRequest { name: "b".into() };
        match client.say_hello(request).await {
            Ok(reply) => {
                let addr = support::greeter::backend_of(&reply.into_inner().message);
                *backends.entry(addr).or_insert(0) += 1;
            }
            Err(status) => {
                eprintln!("call failed: {status:?}");
                failed += 1;
            }
        }
    }
    (backends, failed)
}

/// At least `n` calls one at a time, then more until `enough` holds of the calls per
/// backend or [`DEADLINE`] passes. The pick is latency-first: on a busy machine a slow
/// sample can leave a member out for a while (until it is due a refreshing call), so a
/// share is asserted over as many calls as it takes to show, not over a fixed count.
async fn calls_until(
    channel: &BalancedChannel,
    n: usize,
    enough: impl Fn(&HashMap<SocketAddr, usize>) -> bool,
) -> (HashMap<SocketAddr, usize>, usize) {
    let (mut backends, mut failed) = calls(channel, n).await;
    let deadline = Instant::now() + DEADLINE;
    while !enough(&backends) && Instant::now() < deadline {
        let (more, more_failed) = calls(channel, 50).await;
        for (addr, count) in more {
            *backends.entry(addr).or_insert(0) += count;
        }
        failed += more_failed;
    }
    (backends, failed)
}

/// At least `n` calls one at a time, then more until `want` backends have each answered
/// or [`DEADLINE`] passes.
async fn calls_until_served_by(
    channel: &BalancedChannel,
    n: usize,
    want: usize,
) -> (HashMap<SocketAddr, usize>, usize) {
    calls_until(channel, n, |backends| backends.len() >= want).await
}

/// What the balancer knows of the endpoint at `addr`.
fn endpoint_at(channel: &BalancedChannel, addr: SocketAddr) -> Option<EndpointInfo> {
    let addr = addr.to_string();
    channel.endpoints().into_iter().find(|e| e.addr == addr)
}

async fn up_count(channel: &BalancedChannel) -> usize {
    channel
        .endpoints()
        .iter()
        .filter(|e| e.state == EndpointState::Up)
        .count()
}

/// Asserts that `server` gave `reply`.
fn assert_answered_by(reply: tonic::Response<support::pb::HelloReply>, server: SocketAddr) {
    let message = reply.into_inner().message;
    assert_eq!(support::greeter::backend_of(&message), server, "{message}");
}

/// An address where nothing listens.
fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// Established TCP connections whose local port is `port`, from /proc/net/tcp.
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && fields.get(3) == Some(&"01")
        })
        .count()
}

#[tokio::test]
async fn a_dead_endpoint_costs_no_failed_call() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let (a, b) = (TestServer::start().await, TestServer::start().await);
    let dead = dead_addr();
    for addr in [a.addr(), b.addr(), dead] {
        register(&mut kv, "svc", &Instance::from(addr)).await;
    }
    let channel = EtcdDiscover::new(etcd.client().await, "svc").channel();
    // Each live server serves a sixth of the calls at least, over 300 calls or more.
    let spread = |backends: &HashMap<SocketAddr, usize>| {
        let total: usize = backends.values().sum();
        [a.addr(), b.addr()]
            .iter()
            .all(|s| backends.get(s).is_some_and(|&n| n > 50 && n * 6 > total))
    };
    let (backends, failed) = calls_until(&channel, 300, spread).await;
    assert_eq!(failed, 0, "calls failed with one registered endpoint dead");
    assert!(!backends.contains_key(&dead));
    assert!(spread(&backends), "{backends:?}");
}

#[tokio::test]
async fn a_killed_server_is_ejected_and_readmitted_when_it_returns() {
    killed_server_is_ejected_and_readmitted(false).await;
}

/// The same through tonic's `Channel`, which the balancer uses for endpoints with TLS or an
/// endpoint hook: a call that never left is retried from the copy the balancer kept.
#[tokio::test]
async fn a_killed_server_is_ejected_and_readmitted_with_an_endpoint_hook() {
    killed_server_is_ejected_and_readmitted(true).await;
}

async fn killed_server_is_ejected_and_readmitted(hooked: bool) {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let (a, b) = (TestServer::start().await, TestServer::start().await);
    let b_addr = b.addr();
    for addr in [a.addr(), b_addr] {
        register(&mut kv, "svc", &Instance::from(addr)).await;
    }
    let discover = EtcdDiscover::new(etcd.client().await, "svc");
    let channel = Balancer::new()
        .probe_backoff(
            tonic_etcd::Backoff::default()
                .initial(Duration::from_millis(20))
                .max(Duration::from_millis(200)),
        )
        .channel(match hooked {
            true => discover.endpoint(|endpoint, _| endpoint.timeout(DEADLINE)),
            false => discover,
        });
    wait_until("both endpoints up", DEADLINE, || async {
        up_count(&channel).await == 2
    })
    .await;
    // The server goes away but its key stays, as after a crash before the lease expires.
    b.shutdown().await;
    let (backends, failed) = calls(&channel, 100).await;
    assert_eq!(failed, 0, "the stopped server cost failed calls");
    assert_eq!(backends.get(&b_addr), None);
    let b = TestServer::start_at(b_addr).await;
    wait_until(
        "the returning server gets calls again",
        DEADLINE,
        || async { calls(&channel, 10).await.0.contains_key(&b_addr) },
    )
    .await;
    assert!(b.calls() > 0);
}

#[tokio::test]
async fn a_slow_endpoint_gets_fewer_calls() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let fast = [TestServer::start().await, TestServer::start().await];
    // Slow by far more than a busy client's own stalls add to the fast ones' latency.
    let slow = TestServer::start_with_delay(Duration::from_millis(100)).await;
    for addr in [fast[0].addr(), fast[1].addr(), slow.addr()] {
        register(&mut kv, "svc", &Instance::from(addr)).await;
    }
    let channel = EtcdDiscover::new(etcd.client().await, "svc").channel();
    wait_until("all endpoints up", DEADLINE, || async {
        up_count(&channel).await == 3
    })
    .await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let channel = channel.clone();
        tasks.push(tokio::spawn(async move { calls(&channel, 60).await }));
    }
    let mut total: HashMap<SocketAddr, usize> = HashMap::new();
    for task in tasks {
        let (backends, failed) = task.await.expect("caller");
        assert_eq!(failed, 0);
        for (addr, n) in backends {
            *total.entry(addr).or_default() += n;
        }
    }
    let slow_calls = total.get(&slow.addr()).copied().unwrap_or(0);
    let fast_min = fast
        .iter()
        .map(|s| total.get(&s.addr()).copied().unwrap_or(0))
        .min();
    eprintln!("calls per backend: {total:?}");
    assert!(
        slow_calls * 5 < fast_min.unwrap_or(0),
        "slow got {slow_calls}, fast {fast_min:?}"
    );
}

#[tokio::test]
async fn an_empty_service_fails_fast_and_waits_when_asked() {
    let etcd = Etcd::start().await;
    let channel = EtcdDiscover::new(etcd.client().await, "nothing").channel();
    let mut client = GreeterClient::new(channel.clone());
    wait_until("discovery synced", DEADLINE, || async {
        channel.status().borrow().is_synced()
    })
    .await;
    let started = Instant::now();
    let status = client
        .say_hello(HelloRequest { name: "x".into() })
        .await
        .expect_err("no endpoint");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("nothing"), "{}", status.message());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );

    let waiting = Balancer::new()
        .wait_for_ready(Duration::from_secs(10))
        .channel(EtcdDiscover::new(etcd.client().await, "later"));
    let mut client = GreeterClient::new(waiting);
    let call =
        tokio::spawn(async move { client.say_hello(HelloRequest { name: "x".into() }).await });
    let server = TestServer::start().await;
    let mut kv = etcd.client().await;
    register(&mut kv, "later", &Instance::from(server.addr())).await;
    let reply = tokio::time::timeout(DEADLINE, call)
        .await
        .expect("the waiting call returns")
        .expect("task")
        .expect("the call waits for the endpoint and succeeds");
    assert_answered_by(reply, server.addr());
}

/// Waiting for an endpoint never outlasts the call's own deadline.
#[tokio::test]
async fn a_call_waits_for_an_endpoint_no_longer_than_its_own_deadline() {
    let etcd = Etcd::start().await;
    let channel = Balancer::new()
        .wait_for_ready(Duration::from_secs(10))
        .channel(EtcdDiscover::new(etcd.client().await, "nothing"));
    let mut client = GreeterClient::new(channel);
    let mut request = tonic::Request::new(HelloRequest { name: "x".into() });
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = tokio::time::timeout(DEADLINE, client.say_hello(request))
        .await
        .expect("the call returns")
        .expect_err("no endpoint came");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "took {took:?}: {status:?}"
    );
    assert!(status.message().contains("Timeout expired"), "{status:?}");
}

#[tokio::test]
async fn weights_shift_the_share_of_calls() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    // Servers that take 5 ms, so that a busy client's own stalls stay small beside their
    // latency and the latency-first pick leaves the choice to the weights.
    let delay = Duration::from_millis(5);
    let light = TestServer::start_with_delay(delay).await;
    let heavy = TestServer::start_with_delay(delay).await;
    register(&mut kv, "svc", &Instance::from(light.addr()).weight(1)).await;
    register(&mut kv, "svc", &Instance::from(heavy.addr()).weight(4)).await;
    let channel = EtcdDiscover::new(etcd.client().await, "svc").channel();
    wait_until("both up", DEADLINE, || async {
        up_count(&channel).await == 2
    })
    .await;
    // Over 400 calls or more: latency can outweigh a weight for a while.
    let count = |backends: &HashMap<SocketAddr, usize>, addr| backends.get(&addr).copied();
    let shifted = |b: &HashMap<SocketAddr, usize>| {
        count(b, heavy.addr()).unwrap_or(0) > 2 * count(b, light.addr()).unwrap_or(0)
    };
    let (backends, failed) = calls_until(&channel, 400, shifted).await;
    assert_eq!(failed, 0);
    let (l, h) = (
        count(&backends, light.addr()).unwrap_or(0),
        count(&backends, heavy.addr()).unwrap_or(0),
    );
    eprintln!("weight 1: {l} calls, weight 4: {h} calls");
    assert!(h > 2 * l, "weight 4 got {h}, weight 1 got {l}");
}

#[tokio::test]
async fn the_local_zone_is_preferred() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let (near, far) = (TestServer::start().await, TestServer::start().await);
    register(&mut kv, "svc", &Instance::from(near.addr()).zone("eu-1")).await;
    register(&mut kv, "svc", &Instance::from(far.addr()).zone("us-1")).await;
    let channel = Balancer::new()
        .zone("eu-1")
        .channel(EtcdDiscover::new(etcd.client().await, "svc"));
    wait_until("both up", DEADLINE, || async {
        up_count(&channel).await == 2
    })
    .await;
    let (backends, failed) = calls(&channel, 100).await;
    assert_eq!(failed, 0);
    assert_eq!(backends.get(&near.addr()), Some(&100), "{backends:?}");
}

#[tokio::test]
async fn an_idle_client_drops_a_removed_endpoints_connection() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let server = TestServer::start().await;
    register(&mut kv, "svc", &Instance::from(server.addr())).await;
    let channel = EtcdDiscover::new(etcd.client().await, "svc").channel();
    let port = server.addr().port();
    wait_until("connected without any call", DEADLINE, || async {
        established_to(port) == 1
    })
    .await;
    deregister(&mut kv, "svc", server.addr()).await;
    wait_until(
        "the connection is closed with no call made",
        DEADLINE,
        || async { established_to(port) == 0 && channel.endpoints().is_empty() },
    )
    .await;
}

/// A client that made calls holds the endpoints it last saw; a removed one's connection
/// still closes, and a call made later goes to the endpoints that are left.
#[tokio::test]
async fn a_removed_endpoints_connection_closes_though_a_client_saw_it() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let (stays, goes) = (TestServer::start().await, TestServer::start().await);
    for addr in [stays.addr(), goes.addr()] {
        register(&mut kv, "svc", &Instance::from(addr)).await;
    }
    let channel = EtcdDiscover::new(etcd.client().await, "svc").channel();
    let mut client = GreeterClient::new(channel.clone());
    wait_until("both up", DEADLINE, || async {
        up_count(&channel).await == 2
    })
    .await;
    for _ in 0..20 {
        let request = HelloRequest { name: "b".into() };
        client.say_hello(request).await.expect("a call");
    }
    deregister(&mut kv, "svc", goes.addr()).await;
    wait_until(
        "the removed endpoint's connection closed",
        DEADLINE,
        || async { established_to(goes.addr().port()) == 0 },
    )
    .await;
    let calls_before = goes.calls();
    for _ in 0..20 {
        let request = HelloRequest { name: "b".into() };
        client.say_hello(request).await.expect("a call");
    }
    assert_eq!(goes.calls(), calls_before, "a removed endpoint got calls");
}

#[tokio::test]
async fn servers_added_later_join_the_subsets_of_a_fleet_of_clients() {
    const CLIENTS: usize = 20;
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let first = [TestServer::start().await, TestServer::start().await];
    for server in &first {
        register(&mut kv, "svc", &Instance::from(server.addr())).await;
    }
    let channels: Vec<BalancedChannel> = (0..CLIENTS)
        .map(|_| {
            Balancer::new()
                .subset(2)
                .channel(EtcdDiscover::new(kv.clone(), "svc"))
        })
        .collect();
    wait_until("every client has both", DEADLINE, || async {
        for channel in &channels {
            if up_count(channel).await != 2 {
                return false;
            }
        }
        true
    })
    .await;
    let mut later = Vec::new();
    for _ in 0..8 {
        let server = TestServer::start().await;
        register(&mut kv, "svc", &Instance::from(server.addr())).await;
        later.push(server);
    }
    let later_addrs: Vec<String> = later.iter().map(|s| s.addr().to_string()).collect();
    let mut members_on_later = 0;
    wait_until("every client knows ten, two of them up", DEADLINE, || {
        let mut ready = true;
        members_on_later = 0;
        for channel in &channels {
            let endpoints = channel.endpoints();
            let up: Vec<_> = endpoints
                .iter()
                .filter(|e| e.state == EndpointState::Up)
                .collect();
            ready &= endpoints.len() == 10 && up.len() == 2;
            members_on_later += up.iter().filter(|e| later_addrs.contains(&e.addr)).count();
        }
        async move { ready }
    })
    .await;
    // A uniform subset of 2 of 10 holds 1.6 of the 8 new servers on average: 32 over 20
    // clients. Without reservoir sampling the subsets would stay on the first two: 0.
    assert!(
        members_on_later >= 16,
        "the servers added later are in {members_on_later} subsets of {CLIENTS} clients"
    );
}

#[tokio::test]
async fn the_local_zone_wins_its_place_in_the_subset_back() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let near = TestServer::start().await;
    let near_addr = near.addr();
    let far = [TestServer::start().await, TestServer::start().await];
    register(&mut kv, "svc", &Instance::from(near_addr).zone("eu-1")).await;
    for server in &far {
        register(&mut kv, "svc", &Instance::from(server.addr()).zone("us-1")).await;
    }
    let channel = Balancer::new()
        .zone("eu-1")
        .subset(1)
        .channel(EtcdDiscover::new(etcd.client().await, "svc"));
    wait_until("the local endpoint up", DEADLINE, || async {
        calls(&channel, 5).await.0.get(&near_addr) == Some(&5)
    })
    .await;
    // The local server goes away, its key staying: a remote one takes its place.
    near.shutdown().await;
    wait_until("a remote endpoint serves", DEADLINE, || async {
        let (backends, _) = calls(&channel, 5).await;
        backends.keys().any(|addr| *addr != near_addr)
    })
    .await;
    // Back: after its rest, it takes its place back from the remote member.
    let near = TestServer::start_at(near_addr).await;
    wait_until("the local endpoint serves again", DEADLINE, || async {
        calls(&channel, 5).await.0.get(&near_addr) == Some(&5)
    })
    .await;
    assert!(near.calls() > 0);
}

#[tokio::test]
async fn a_new_server_is_called_within_milliseconds_of_its_registration() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let first = TestServer::start().await;
    register(&mut kv, "svc", &Instance::from(first.addr())).await;
    let channel = EtcdDiscover::new(etcd.client().await, "svc").channel();
    wait_until("first up", DEADLINE, || async {
        up_count(&channel).await == 1
    })
    .await;
    let second = TestServer::start().await;
    register(&mut kv, "svc", &Instance::from(second.addr())).await;
    wait_until("the new server serves a call", DEADLINE, || async {
        calls(&channel, 4).await;
        second.calls() > 0
    })
    .await;
}

#[cfg(feature = "health")]
mod health {
    use super::*;
    use support::pb::greeter_server::{Greeter, GreeterServer};
    use support::pb::{HelloReply, HelloRequest as Request};
    use tonic_health::ServingStatus;
    use tonic_health::server::HealthReporter;

    struct Reply(SocketAddr);

    #[tonic::async_trait]
    impl Greeter for Reply {
        async fn say_hello(
            &self,
            request: tonic::Request<Request>,
        ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
            let message = support::greeter::greeting(&request.into_inner().name, self.0);
            Ok(tonic::Response::new(HelloReply { message }))
        }
    }

    /// A greeter that also serves grpc.health.v1, until the returned sender is dropped.
    async fn start() -> (SocketAddr, HealthReporter, tokio::sync::oneshot::Sender<()>) {
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().expect("addr"))
                .expect("bind")
                .with_nodelay(Some(true));
        let addr = incoming.local_addr().expect("local addr");
        let (reporter, health) = tonic_health::server::health_reporter();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(GreeterServer::new(Reply(addr)))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            });
        tokio::spawn(server);
        (addr, reporter, stop)
    }

    fn state_of(channel: &BalancedChannel, addr: SocketAddr) -> Option<EndpointState> {
        endpoint_at(channel, addr).map(|e| e.state)
    }

    #[tokio::test]
    async fn active_health_checks_eject_and_readmit() {
        let etcd = Etcd::start().await;
        let mut kv = etcd.client().await;
        // With active checks, every endpoint must serve grpc.health.v1.
        let (steady, _steady_reporter, _steady_stop) = start().await;
        let (checked, reporter, _stop) = start().await;
        for addr in [steady, checked] {
            register(&mut kv, "svc", &Instance::from(addr)).await;
        }
        let channel = Balancer::new()
            .health_check("", Duration::from_millis(50))
            .probe_backoff(
                tonic_etcd::Backoff::default()
                    .initial(Duration::from_millis(20))
                    .max(Duration::from_millis(100)),
            )
            .channel(EtcdDiscover::new(etcd.client().await, "svc"));
        wait_until("both up", DEADLINE, || async {
            up_count(&channel).await == 2
        })
        .await;

        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        wait_until("the not-serving endpoint is ejected", DEADLINE, || async {
            state_of(&channel, checked) == Some(EndpointState::Ejected)
        })
        .await;
        let (backends, failed) = calls(&channel, 50).await;
        assert_eq!(failed, 0);
        assert_eq!(backends.get(&checked), None, "{backends:?}");

        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        wait_until(
            "the serving endpoint is readmitted and called",
            DEADLINE,
            || async { calls(&channel, 10).await.0.contains_key(&checked) },
        )
        .await;
    }

    fn in_flight(channel: &BalancedChannel, addr: SocketAddr) -> Option<usize> {
        endpoint_at(channel, addr).map(|e| e.in_flight)
    }

    /// A streaming call counts as load until its response stream ends: grpc.health.v1's
    /// Watch is a server stream that stays open.
    #[tokio::test]
    async fn a_stream_counts_as_load_until_it_ends() {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;

        let etcd = Etcd::start().await;
        let mut kv = etcd.client().await;
        let (addr, _reporter, _stop) = start().await;
        register(&mut kv, "svc", &Instance::from(addr)).await;
        let channel = EtcdDiscover::new(etcd.client().await, "svc").channel();
        wait_until("up", DEADLINE, || async { up_count(&channel).await == 1 }).await;
        let mut client = HealthClient::new(channel.clone());
        let request = HealthCheckRequest {
            service: String::new(),
        };
        let mut stream = client.watch(request).await.expect("a watch").into_inner();
        let first = stream.message().await.expect("a status");
        assert!(first.is_some(), "the stream sends the current status");
        assert_eq!(
            in_flight(&channel, addr),
            Some(1),
            "the open stream is load"
        );
        // A unary call alongside ends, and leaves the stream counted.
        let (_, failed) = calls(&channel, 5).await;
        assert_eq!(failed, 0);
        assert_eq!(in_flight(&channel, addr), Some(1));
        drop(stream);
        wait_until("the ended stream is no longer load", DEADLINE, || async {
            in_flight(&channel, addr) == Some(0)
        })
        .await;
    }
}

/// CPU time this thread has used, in clock ticks (user + system). A `#[tokio::test]` runs
/// its runtime, and so every task it spawns, on its own thread.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("read the thread's stat");
    let after_name = stat.rsplit_once(')').expect("stat has a name").1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |i: usize| fields[i].parse::<u64>().expect("a tick count");
    field(11) + field(12)
}

#[tokio::test]
async fn tonics_balance_channel_keeps_discovering_after_its_handle_is_dropped() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let server = TestServer::start().await;
    register(&mut kv, "svc", &Instance::from(server.addr())).await;
    // The handle dropped at once, as `let (channel, _) = ...` does.
    let (channel, _) = EtcdDiscover::new(etcd.client().await, "svc").balance_channel();
    let mut client = GreeterClient::new(channel);
    let call = client.say_hello(HelloRequest { name: "x".into() });
    let reply = tokio::time::timeout(DEADLINE, call)
        .await
        .expect("the call is answered, not left waiting for an endpoint")
        .expect("the call succeeds");
    assert_answered_by(reply, server.addr());
}

#[tokio::test]
async fn a_call_past_its_deadline_leaves_the_endpoint_in_rotation() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let slow = TestServer::start_with_delay(Duration::from_millis(300)).await;
    register(&mut kv, "svc", &Instance::from(slow.addr())).await;
    let channel = EtcdDiscover::new(etcd.client().await, "svc").channel();
    wait_until("up", DEADLINE, || async { up_count(&channel).await == 1 }).await;
    let mut client = GreeterClient::new(channel.clone());
    let mut request = tonic::Request::new(HelloRequest { name: "x".into() });
    request.set_timeout(Duration::from_millis(50));
    let status = client
        .say_hello(request)
        .await
        .expect_err("the deadline passes");
    assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
    assert_eq!(
        up_count(&channel).await,
        1,
        "a slow answer is no transport failure"
    );
    client
        .say_hello(HelloRequest { name: "y".into() })
        .await
        .expect("the endpoint still takes calls");
}

#[tokio::test]
async fn a_discovery_that_failed_for_good_costs_no_cpu() {
    let etcd = Etcd::start().await;
    let channel = EtcdDiscover::new(etcd.client().await, "/").channel();
    let mut status = channel.status();
    tokio::time::timeout(
        DEADLINE,
        status.wait_for(|s| matches!(s, tonic_etcd::DiscoveryStatus::Failed { .. })),
    )
    .await
    .expect("an empty prefix fails")
    .expect("status");
    // The measured window is the point of this test: a spinning task would use a whole core
    // (about 100 ticks a second).
    let before = cpu_ticks();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks() - before;
    assert!(used < 30, "{used} clock ticks in one idle second");
    drop(channel);
}

/// How many endpoints are in each state.
fn states(channel: &BalancedChannel) -> HashMap<EndpointState, usize> {
    let mut states = HashMap::new();
    for endpoint in channel.endpoints() {
        *states.entry(endpoint.state).or_insert(0) += 1;
    }
    states
}

#[tokio::test]
async fn a_subset_connects_that_many_endpoints_and_replaces_a_failed_one() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let mut servers = HashMap::new();
    for _ in 0..5 {
        let server = TestServer::start().await;
        register(&mut kv, "svc", &Instance::from(server.addr())).await;
        servers.insert(server.addr(), server);
    }
    let channel = Balancer::new()
        .subset(2)
        .channel(EtcdDiscover::new(etcd.client().await, "svc"));
    wait_until("two up, three idle", DEADLINE, || async {
        let states = states(&channel);
        states.get(&EndpointState::Up) == Some(&2) && states.get(&EndpointState::Idle) == Some(&3)
    })
    .await;
    let (backends, failed) = calls_until_served_by(&channel, 100, 2).await;
    assert_eq!(failed, 0);
    assert_eq!(
        backends.len(),
        2,
        "calls go to both members of the subset and no other: {backends:?}"
    );
    let connected: usize = servers.keys().map(|addr| established_to(addr.port())).sum();
    assert_eq!(connected, 2, "only the subset is connected");

    // One member goes away, its key staying: another endpoint takes its place.
    let gone = *backends.keys().next().expect("a backend");
    servers.remove(&gone).expect("a server").shutdown().await;
    let (backends, failed) = calls(&channel, 100).await;
    assert_eq!(failed, 0, "the member that went away cost failed calls");
    assert!(!backends.contains_key(&gone));
    wait_until("two up again", DEADLINE, || async {
        up_count(&channel).await == 2
    })
    .await;
    let (backends, _) = calls_until_served_by(&channel, 100, 2).await;
    assert_eq!(backends.len(), 2, "{backends:?}");
    let left = endpoint_at(&channel, gone).expect("still registered");
    assert_eq!(
        left.state,
        EndpointState::Idle,
        "it rests outside the subset"
    );
}

#[tokio::test]
async fn a_subset_moves_past_dead_endpoints_a_few_at_a_time() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    for _ in 0..8 {
        register(&mut kv, "svc", &Instance::from(dead_addr())).await;
    }
    let live = TestServer::start().await;
    register(&mut kv, "svc", &Instance::from(live.addr())).await;
    let channel = Balancer::new()
        .subset(2)
        .channel(EtcdDiscover::new(etcd.client().await, "svc"));
    let mut most_tried = 0;
    wait_until("the live endpoint found", DEADLINE, || {
        let states = states(&channel);
        let tried = channel.endpoints().len() - states.get(&EndpointState::Idle).unwrap_or(&0);
        most_tried = most_tried.max(tried);
        async move { states.get(&EndpointState::Up) == Some(&1) }
    })
    .await;
    assert!(
        most_tried <= 2,
        "{most_tried} endpoints tried at once, subset 2"
    );
    let (backends, failed) = calls(&channel, 50).await;
    assert_eq!(failed, 0);
    assert_eq!(backends.get(&live.addr()), Some(&50));
}

#[tokio::test]
async fn an_updated_member_keeps_its_place_in_the_subset() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let mut servers = Vec::new();
    for _ in 0..5 {
        let server = TestServer::start().await;
        register(&mut kv, "svc", &Instance::from(server.addr()).weight(4)).await;
        servers.push(server);
    }
    let channel = Balancer::new()
        .subset(2)
        .channel(EtcdDiscover::new(etcd.client().await, "svc"));
    let members = || {
        let mut up: Vec<String> = channel
            .endpoints()
            .into_iter()
            .filter(|e| e.state == EndpointState::Up)
            .map(|e| e.addr)
            .collect();
        up.sort();
        up
    };
    wait_until("two up", DEADLINE, || async { members().len() == 2 }).await;
    let before = members();
    // A new value for a member's key, as when a server lowers its weight: drawn again
    // among the candidates, it would most likely lose its place.
    let updated = before[0].clone();
    let addr: SocketAddr = updated.parse().expect("an address");
    register(&mut kv, "svc", &Instance::from(addr).weight(1)).await;
    wait_until("the update applied, the same two up", DEADLINE, || async {
        let weighted = channel
            .endpoints()
            .iter()
            .any(|e| e.addr == updated && e.weight == 1);
        weighted && members() == before
    })
    .await;
}

/// Calls with a deadline, `n` of them, from `callers` tasks at once; returns the calls per
/// backend and the failures.
async fn calls_at_once(
    channel: &BalancedChannel,
    callers: usize,
    n: usize,
    timeout: Duration,
) -> (HashMap<SocketAddr, usize>, usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let mut client = GreeterClient::new(channel.clone());
        tasks.spawn(async move {
            let mut backends = HashMap::new();
            let mut failed = 0;
            for _ in 0..n / callers {
                let mut request = tonic::Request::new(HelloRequest { name: "b".into() });
                request.set_timeout(timeout);
                match client.say_hello(request).await {
                    Ok(reply) => {
                        let addr = support::greeter::backend_of(&reply.into_inner().message);
                        *backends.entry(addr).or_insert(0) += 1;
                    }
                    Err(_) => failed += 1,
                }
            }
            (backends, failed)
        });
    }
    let mut backends = HashMap::new();
    let mut failed = 0;
    while let Some(result) = tasks.join_next().await {
        let (some, more_failed) = result.expect("a caller");
        for (addr, n) in some {
            *backends.entry(addr).or_insert(0) += n;
        }
        failed += more_failed;
    }
    (backends, failed)
}

/// A server that vanishes without closing its connections (a partition) is found by HTTP/2
/// keepalive, not left in rotation for every call to time out on.
#[tokio::test]
async fn keepalive_ejects_an_endpoint_behind_a_partition() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let (cut_off, steady) = (TestServer::start().await, TestServer::start().await);
    let relay = support::Relay::start(&cut_off.addr().to_string()).await;
    for addr in [relay.addr(), steady.addr()] {
        register(&mut kv, "svc", &Instance::from(addr)).await;
    }
    let channel = Balancer::new()
        .keep_alive(Duration::from_millis(100), Duration::from_millis(300))
        .channel(EtcdDiscover::new(etcd.client().await, "svc"));
    wait_until("both up", DEADLINE, || async {
        up_count(&channel).await == 2
    })
    .await;
    let (backends, failed) = calls_at_once(&channel, 4, 40, Duration::from_secs(5)).await;
    assert_eq!(failed, 0);
    assert_eq!(backends.len(), 2, "{backends:?}");

    relay.freeze();
    // Calls keep flowing, so that some reach the frozen connection (its latency estimate
    // decays while it gets none) and it has calls in flight to ping for.
    let load = async {
        loop {
            calls_at_once(&channel, 4, 40, Duration::from_secs(5)).await;
        }
    };
    let ejected = wait_until("the frozen endpoint ejected", DEADLINE, || async {
        endpoint_at(&channel, relay.addr()).is_some_and(|e| e.state != EndpointState::Up)
    });
    tokio::select! {
        () = load => {}
        () = ejected => {}
    }
    let (backends, failed) = calls_at_once(&channel, 4, 40, Duration::from_secs(5)).await;
    assert_eq!(
        failed, 0,
        "calls failed after the frozen endpoint was ejected"
    );
    assert_eq!(backends.get(&steady.addr()), Some(&40));
}
