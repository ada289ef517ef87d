//! One address under two keys against a real etcd and real greeter servers: it is one
//! endpoint with one share of the calls, in both balancers, and it stays until its last key
//! is deleted.
//!
//! Two keys for one address are what a go-zero server restarted on the same port leaves
//! while its old lease has not expired (keys are named after the lease), or a Kratos server
//! restarted with a new id.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use support::pb::HelloRequest;
use support::pb::greeter_client::GreeterClient;
use support::{Etcd, TestServer, wait_until};
use tonic_etcd::etcd_client::Client;
use tonic_etcd::{BalancedChannel, EtcdDiscover, EtcdNaming, Format, GoZero, Instance, Kratos};

/// How long discovery may take to follow a change.
const DEADLINE: Duration = Duration::from_secs(10);

/// Calls per measurement: with an even split, each address gets 200 ± 10 (one standard
/// deviation); a double share would give one of them about 267.
const CALLS: usize = 400;

/// The smallest and largest share of the calls an address may get when split evenly:
/// four standard deviations either side.
const EVEN: std::ops::RangeInclusive<usize> = 160..=240;

/// Calls `n` times through `channel`; returns the calls per server. Every call must succeed.
async fn calls<C>(channel: C, n: usize) -> BTreeMap<SocketAddr, usize>
where
    C: tonic::client::GrpcService<tonic::body::Body> + Clone,
    C::Error: Into<tonic::codegen::StdError>,
    C::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <C::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut client = GreeterClient::new(channel);
    let mut backends = BTreeMap::new();
    for _ in 0..n {
        let request = HelloRequest { name: "a".into() };
        let reply = tokio::time::timeout(DEADLINE, client.say_hello(request))
            .await
            .expect("a call in time")
            .expect("a call succeeds");
        let addr = support::greeter::backend_of(&reply.into_inner().message);
        *backends.entry(addr).or_insert(0) += 1;
    }
    backends
}

/// Asserts that the calls split evenly between `a` and `b`, and reached nothing else.
fn assert_even(backends: &BTreeMap<SocketAddr, usize>, a: SocketAddr, b: SocketAddr, what: &str) {
    assert_eq!(backends.len(), 2, "{what}: {backends:?}");
    for addr in [a, b] {
        let share = backends.get(&addr).copied().unwrap_or(0);
        assert!(
            EVEN.contains(&share),
            "{what}: {addr} got {share} of {CALLS}: {backends:?}"
        );
    }
}

/// The addresses the crate's balancer knows, each once.
fn addrs(channel: &BalancedChannel) -> Vec<String> {
    let mut addrs: Vec<String> = channel.endpoints().into_iter().map(|e| e.addr).collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

async fn put(client: &mut Client, key: &str, value: Vec<u8>) {
    client
        .put(key, value, None)
        .await
        .expect("put a registration");
}

/// Established TCP connections accepted on `port`, from /proc/net/tcp.
fn accepted_on(port: u16) -> usize {
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

/// Waits until each of `servers` has accepted exactly `n` live connections.
async fn wait_for_connections(servers: &[SocketAddr], n: usize, what: &str) {
    wait_until(what, DEADLINE, || async {
        servers.iter().all(|s| accepted_on(s.port()) == n)
    })
    .await;
}

/// Puts two keys for server `a` and one for server `b` in `format`, with `key(i)` naming
/// the i-th key, and checks that `a` is one endpoint: one connection per balancer, and an
/// even split of tonic's random picks (the crate's balancer picks by latency, so its split
/// says nothing of shares). Then deletes `a`'s keys, the one it is announced under first:
/// `a` stays with one connection and its share, and goes with its last key.
async fn one_address_under_two_keys(
    format: impl Format + Clone,
    service: &str,
    key: fn(u32) -> String,
) {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let (a, b) = (TestServer::start().await, TestServer::start().await);
    let servers = [a.addr(), b.addr()];
    let value = |addr: SocketAddr| format.value(service, &Instance::from(addr));
    put(&mut client, &key(1), value(a.addr())).await;
    put(&mut client, &key(2), value(b.addr())).await;
    put(&mut client, &key(3), value(a.addr())).await;

    let discover = || EtcdDiscover::new(client.clone(), service).format(format.clone());
    let channel = discover().channel();
    let both = {
        let mut both = vec![a.addr().to_string(), b.addr().to_string()];
        both.sort();
        both
    };
    wait_until("both addresses discovered", DEADLINE, || async {
        addrs(&channel) == both
    })
    .await;
    assert_eq!(channel.endpoints().len(), 2, "one endpoint per address");
    let backends = calls(channel.clone(), 100).await;
    assert_eq!(backends.len(), 2, "both servers answer: {backends:?}");
    let (tonic_channel, handle) = discover()
        .endpoint(|e, _| e.timeout(DEADLINE))
        .balance_channel();
    let backends = calls(tonic_channel.clone(), CALLS).await;
    assert_even(&backends, a.addr(), b.addr(), "tonic's balancer");
    wait_for_connections(&servers, 2, "one connection per server and balancer").await;

    // The key `a` was first announced under goes: `a` stays, under the key left.
    let key_of_a = || {
        let a = a.addr().to_string();
        channel
            .endpoints()
            .into_iter()
            .find(|e| e.addr == a)
            .map(|e| e.key)
    };
    assert_eq!(key_of_a(), Some(key(1)), "announced under its first key");
    client.delete(key(1), None).await.expect("delete a key");
    wait_until("a announced under its other key", DEADLINE, || async {
        key_of_a() == Some(key(3))
    })
    .await;
    assert_eq!(addrs(&channel), both, "a stays while a key holds it");
    let backends = calls(tonic_channel.clone(), CALLS).await;
    assert_even(
        &backends,
        a.addr(),
        b.addr(),
        "tonic's, after the first key of a went",
    );
    calls(channel.clone(), 100).await;
    wait_for_connections(&servers, 2, "still one connection per server and balancer").await;

    client
        .delete(key(3), None)
        .await
        .expect("delete the last key");
    let only_b = vec![b.addr().to_string()];
    wait_until("a removed with its last key", DEADLINE, || async {
        addrs(&channel) == only_b
    })
    .await;
    let backends = calls(channel, 40).await;
    assert_eq!(backends, BTreeMap::from([(b.addr(), 40)]));
    // tonic's balancer applies changes only as calls flow: call until it has.
    let b_addr = b.addr();
    wait_until("tonic's balancer drops a", DEADLINE, || {
        let channel = tonic_channel.clone();
        async move { calls(channel, 20).await.keys().eq([&b_addr]) }
    })
    .await;
    handle.stop().await;
}

#[tokio::test]
async fn go_zero_restarted_server_gets_one_share() {
    one_address_under_two_keys(GoZero::new(), "greeter.rpc", |i| format!("greeter.rpc/{i}")).await;
}

#[tokio::test]
async fn kratos_server_under_two_ids_gets_one_share() {
    one_address_under_two_keys(Kratos::new(), "greeter", |i| {
        format!("/microservices/greeter/id-{i}")
    })
    .await;
}

#[tokio::test]
async fn etcd_naming_address_under_two_keys_gets_one_share() {
    one_address_under_two_keys(EtcdNaming, "services/greeter", |i| {
        format!("services/greeter/instance-{i}")
    })
    .await;
}
