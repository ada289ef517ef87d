//! Checks the test support itself against real etcd processes and the in-process greeter.

mod support;

use std::time::Duration;

use support::pb::HelloRequest;
use support::pb::greeter_client::GreeterClient;
use support::{Etcd, EtcdCluster, TestServer, wait_for};

/// How long a put may take to succeed while the cluster elects a new leader.
const ELECTION_DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn etcd_keeps_data_across_restart_and_compacts() {
    let mut etcd = Etcd::start().await;
    assert_ne!(etcd.endpoint(), "http://127.0.0.1:2379");
    let mut client = etcd.client().await;
    client.put("smoke/a", "1", None).await.expect("put smoke/a");

    etcd.stop();
    etcd.restart().await;
    let mut client2 = etcd.client().await;
    let got = client2
        .get("smoke/a", None)
        .await
        .expect("get after restart");
    assert_eq!(got.kvs()[0].value(), b"1");

    etcd.kill();
    etcd.restart().await;
    let rev = etcd.revision().await;
    assert!(rev >= 2, "revision {rev} counts the put");
    assert_eq!(etcd.compact().await, rev);
    assert_eq!(
        etcd.compact().await,
        rev,
        "compacting twice is not an error"
    );
}

#[tokio::test]
async fn cluster_accepts_puts_after_leader_kill() {
    let mut cluster = EtcdCluster::start().await;
    assert_eq!(cluster.endpoints().len(), EtcdCluster::SIZE);
    let leader = cluster.leader_index().await;
    cluster.kill(leader);

    let client = cluster.client().await;
    wait_for(
        "a put after the leader is killed",
        ELECTION_DEADLINE,
        || {
            let mut client = client.clone();
            async move { client.put("smoke/k", "v", None).await.ok() }
        },
    )
    .await;
    let new_leader = cluster.leader_index().await;
    assert_ne!(new_leader, leader);

    cluster.restart(leader).await;
    let mut member = cluster.member_client(leader).await;
    let got = member
        .get("smoke/k", None)
        .await
        .expect("get from the restarted member");
    assert_eq!(got.kvs()[0].value(), b"v");
}

#[tokio::test]
async fn test_server_names_itself_and_stops_on_shutdown() {
    let server = TestServer::start().await;
    let addr = server.addr();
    let mut client = GreeterClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the test server");
    let reply = client
        .say_hello(HelloRequest {
            name: "smoke".into(),
        })
        .await
        .expect("say_hello")
        .into_inner();
    assert_eq!(reply.message, support::greeter::greeting("smoke", addr));
    assert_eq!(support::greeter::backend_of(&reply.message), addr);
    assert_eq!(server.calls(), 1);

    drop(client);
    server.shutdown().await;
    let restarted = TestServer::start_at(addr).await;
    assert_eq!(restarted.addr(), addr);
}
