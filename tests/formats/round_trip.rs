//! A register-then-discover round trip per format, checking the key layout in etcd.

use std::time::Duration;

use tonic_etcd::Instance;
use tonic_etcd::etcd_client::GetOptions;
use tonic_etcd::{Blog, EtcdDiscover, EtcdNaming, Format, GoZero, Kratos, PlainAddr, Registrar};

use super::next;
use crate::support::Etcd;

/// Registers `instance` in `format`, checks its key and value in etcd, discovers it with
/// the same format, then shuts the registration down and sees the key removed.
async fn round_trip<F: Format + Clone>(
    format: F,
    service: &str,
    instance: Instance,
    key_for: impl Fn(i64) -> String,
) {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let registration = Registrar::new(client.clone())
        .format(format.clone())
        .grace(Duration::ZERO)
        .register(service, instance.clone())
        .await
        .expect("register");
    let lease_id = registration.lease_id().expect("registered under a lease");
    let key = key_for(lease_id);
    assert_eq!(registration.key(), key);

    let prefix = format.prefix(service);
    let listing = client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .expect("list the prefix");
    let [kv] = listing.kvs() else {
        panic!("one key under {prefix}, got {}", listing.kvs().len());
    };
    assert_eq!(kv.key_str().expect("utf-8 key"), key);
    assert_eq!(kv.lease(), lease_id);
    assert_eq!(format.decode(&key, kv.value()).expect("decodes"), instance);

    let mut discover = EtcdDiscover::new(client.clone(), service)
        .format(format)
        .into_stream();
    let scheme = if instance.tls { "https" } else { "http" };
    let expected = format!("{scheme}://{}", instance.addr);
    assert_eq!(next(&mut discover).await, (key.clone(), Some(expected)));
    registration.shutdown().await.expect("deregister");
    assert_eq!(next(&mut discover).await, (key, None));
}

#[tokio::test]
async fn etcd_naming_round_trips() {
    let instance = Instance::new("127.0.0.1:50051").weight(10).zone("eu-1");
    let key = |_| "services/greeter/127.0.0.1:50051".to_owned();
    round_trip(EtcdNaming, "services/greeter", instance, key).await;
}

#[tokio::test]
async fn go_zero_round_trips_under_the_lease_id() {
    let instance = Instance::new("127.0.0.1:8080");
    let key = |lease: i64| format!("greeter.rpc/{lease}");
    round_trip(GoZero::new(), "greeter.rpc", instance, key).await;
}

#[tokio::test]
async fn kratos_round_trips_with_metadata_and_tls() {
    let instance = Instance::new("127.0.0.1:9000")
        .version("v1.2.0")
        .weight(5)
        .zone("eu-1")
        .tls(true);
    let key = |_| "/microservices/greeter/127.0.0.1:9000".to_owned();
    round_trip(Kratos::new(), "greeter", instance, key).await;
}

#[tokio::test]
async fn blog_round_trips_one_key_per_instance() {
    let instance = Instance::new("127.0.0.1:8080");
    let key = |_| "services/greeter/127.0.0.1:8080".to_owned();
    round_trip(Blog::new(), "greeter", instance, key).await;
}

#[tokio::test]
async fn plain_addr_round_trips() {
    let instance = Instance::new("127.0.0.1:7000");
    let key = |_| "plain/greeter/127.0.0.1:7000".to_owned();
    round_trip(PlainAddr, "plain/greeter", instance, key).await;
}

#[tokio::test]
async fn a_format_chosen_at_run_time_round_trips() {
    let format: std::sync::Arc<dyn Format> = std::sync::Arc::new(GoZero::new().id(42));
    let instance = Instance::new("127.0.0.1:8081");
    round_trip(format, "greeter.rpc", instance, |_| {
        "greeter.rpc/42".to_owned()
    })
    .await;
}
