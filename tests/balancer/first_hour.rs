//! What a new user meets first (issue 15): a call that finds no endpoint says why, and
//! `startup_wait` covers an etcd that comes up after the client.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::support::pb::HelloRequest;
use super::support::pb::greeter_client::GreeterClient;
use super::support::{Etcd, TestServer};
use super::{DEADLINE, dead_addr, register};
use tonic_etcd::etcd_client::Client;
use tonic_etcd::{Balancer, DiscoveryStatus, EtcdDiscover, Instance};

#[tokio::test]
async fn a_call_names_the_unreachable_etcd_port() {
    let port = dead_addr().port();
    let etcd = Client::connect([format!("http://127.0.0.1:{port}")], None)
        .await
        .expect("etcd-client connects lazily");
    let channel = Balancer::new()
        .startup_wait(Duration::from_millis(200))
        .channel(EtcdDiscover::new(etcd, "echo"));
    let mut status = channel.status();
    tokio::time::timeout(
        DEADLINE,
        status.wait_for(|s| matches!(s, DiscoveryStatus::Retrying { .. })),
    )
    .await
    .expect("discovery retries")
    .expect("status");
    let mut client = GreeterClient::new(channel);
    let status = client
        .say_hello(HelloRequest { name: "x".into() })
        .await
        .expect_err("etcd is unreachable");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let message = status.message();
    assert!(message.contains("\"echo\""), "{message}");
    assert!(message.contains(&format!(":{port}")), "{message}");
    assert!(message.contains("unreachable"), "{message}");
    assert!(message.contains("retrying (attempt "), "{message}");
}

/// The client starts while etcd is down; etcd comes up about 2 s later. Every call made
/// meanwhile waits for the first successful listing (a failed one does not end the wait)
/// and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_started_before_etcd_loses_no_call() {
    let mut etcd = Etcd::start().await;
    let server = TestServer::start().await;
    let mut kv = etcd.client().await;
    register(&mut kv, "early", &Instance::from(server.addr())).await;
    drop(kv);
    etcd.stop();

    let client = Client::connect([etcd.endpoint()], None)
        .await
        .expect("etcd-client connects lazily");
    let discover = EtcdDiscover::new(client, "early").backoff(
        tonic_etcd::Backoff::default()
            .initial(Duration::from_millis(100))
            .max(Duration::from_millis(500)),
    );
    let channel = Balancer::new()
        .startup_wait(Duration::from_secs(5))
        .channel(discover);
    let started = Instant::now();
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut callers = JoinSet::new();
    for _ in 0..4 {
        let mut client = GreeterClient::new(channel.clone());
        let (ok, failed) = (ok.clone(), failed.clone());
        callers.spawn(async move {
            // Calls until a second after the first success, or 8 s.
            let mut until = started + Duration::from_secs(8);
            while Instant::now() < until {
                match client.say_hello(HelloRequest { name: "e".into() }).await {
                    Ok(_) => {
                        if ok.fetch_add(1, Ordering::Relaxed) == 0 {
                            until = until.min(Instant::now() + Duration::from_secs(1));
                        }
                    }
                    Err(status) => {
                        eprintln!("{:?}: {status:?}", started.elapsed());
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    tokio::time::sleep_until(started + Duration::from_secs(2)).await;
    etcd.restart().await;
    eprintln!("etcd up after {:?}", started.elapsed());
    while let Some(joined) = callers.join_next().await {
        joined.expect("a caller does not panic");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} calls failed, {ok} succeeded");
    assert!(ok > 0, "no call succeeded");
}

/// Two go-zero values (a bare address) under `echo/`, read in the default etcd naming
/// format: the call's status names the prefix watched, and says that its keys were skipped
/// and why, rather than only "none registered".
#[tokio::test]
async fn a_call_says_which_keys_under_the_prefix_were_skipped() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    for id in ["1", "2"] {
        client
            .put(format!("echo/{id}"), "127.0.0.1:8080", None)
            .await
            .expect("put a go-zero value");
    }
    let channel = Balancer::new()
        .startup_wait(Duration::from_millis(200))
        .channel(EtcdDiscover::new(client, "echo"));
    let mut status = channel.status();
    tokio::time::timeout(
        DEADLINE,
        status.wait_for(|s| matches!(s, DiscoveryStatus::Synced { skipped: 2, .. })),
    )
    .await
    .expect("discovery syncs and counts both keys as skipped")
    .expect("status");
    let status = GreeterClient::new(channel)
        .say_hello(HelloRequest { name: "x".into() })
        .await
        .expect_err("no endpoint decodes");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let message = status.message();
    assert!(
        message.contains("none registered under etcd prefix \"echo/\" (2 keys skipped, last echo/"),
        "{message}"
    );
    assert!(
        message.contains("not an etcd-naming JSON value"),
        "{message}"
    );
}
