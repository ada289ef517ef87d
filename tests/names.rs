//! Service names against a real etcd: a nested service (`greeter/admin` under `greeter`)
//! whose keys lie under its parent's prefix gets none of the parent's calls, and the parent
//! none of its, in every format.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use support::pb::HelloRequest;
use support::pb::greeter_client::GreeterClient;
use support::{Etcd, TestServer, wait_until};
use tonic_etcd::{Blog, EtcdDiscover, EtcdNaming, Format, GoZero, Kratos, PlainAddr, Registrar};

/// How long discovery may take to find the servers.
const DEADLINE: Duration = Duration::from_secs(10);

/// Calls through each channel, and the servers that answered.
const CALLS: usize = 40;

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
        let request = HelloRequest { name: "n".into() };
        let reply = tokio::time::timeout(DEADLINE, client.say_hello(request))
            .await
            .expect("a call in time")
            .expect("a call succeeds");
        let addr = support::greeter::backend_of(&reply.into_inner().message);
        *backends.entry(addr).or_insert(0) += 1;
    }
    backends
}

/// Registers one server as `service` and another as `<service>/admin` in `format`, then
/// checks, with the crate's balancer and with tonic's, that each service's calls reach its
/// own server only.
async fn nested_service_gets_none_of_the_calls(format: impl Format + Clone, service: &str) {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let (parent, nested) = (TestServer::start().await, TestServer::start().await);
    let nested_service = format!("{service}/admin");
    let registrar = || {
        Registrar::new(client.clone())
            .format(format.clone())
            .grace(Duration::ZERO)
    };
    let parent_registration = registrar()
        .register(service, parent.addr())
        .await
        .expect("register the parent");
    let nested_registration = registrar()
        .register(nested_service.as_str(), nested.addr())
        .await
        .expect("register the nested service");
    let nested_key = nested_registration.key().to_owned();
    assert!(
        nested_key.starts_with(&format.prefix(service)),
        "{nested_key} lies under the parent's prefix, else this tests nothing"
    );

    for (name, server) in [(service, &parent), (nested_service.as_str(), &nested)] {
        let discover = EtcdDiscover::new(client.clone(), name).format(format.clone());
        let channel = discover.channel();
        let what = format!("{name} discovered");
        wait_until(&what, DEADLINE, || async {
            !channel.endpoints().is_empty()
        })
        .await;
        let endpoints: Vec<String> = channel.endpoints().into_iter().map(|e| e.addr).collect();
        assert_eq!(
            endpoints,
            [server.addr().to_string()],
            "{name}: {endpoints:?}"
        );
        let backends = calls(channel, CALLS).await;
        assert_eq!(
            backends,
            BTreeMap::from([(server.addr(), CALLS)]),
            "{name}: calls reach its own server only"
        );

        let (channel, handle) = EtcdDiscover::new(client.clone(), name)
            .format(format.clone())
            .endpoint(|e, _| e.timeout(DEADLINE))
            .balance_channel();
        let backends = calls(channel, CALLS).await;
        assert_eq!(
            backends,
            BTreeMap::from([(server.addr(), CALLS)]),
            "{name} through tonic's balancer: calls reach its own server only"
        );
        handle.stop().await;
    }
    parent_registration.shutdown().await.expect("deregister");
    nested_registration.shutdown().await.expect("deregister");
}

#[tokio::test]
async fn etcd_naming_tells_a_nested_target_apart() {
    nested_service_gets_none_of_the_calls(EtcdNaming, "services/greeter").await;
}

#[tokio::test]
async fn go_zero_tells_a_nested_key_apart() {
    nested_service_gets_none_of_the_calls(GoZero::new(), "greeter.rpc").await;
}

#[tokio::test]
async fn kratos_tells_a_nested_name_apart() {
    nested_service_gets_none_of_the_calls(Kratos::new(), "greeter").await;
}

#[tokio::test]
async fn blog_tells_a_nested_name_apart() {
    nested_service_gets_none_of_the_calls(Blog::new(), "greeter").await;
}

#[tokio::test]
async fn plain_addr_tells_a_nested_prefix_apart() {
    nested_service_gets_none_of_the_calls(PlainAddr, "plain/greeter").await;
}
