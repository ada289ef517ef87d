//! Configuration from one target string, against a real etcd: a server registers and a
//! client discovers it, each from `etcd://HOSTS/SERVICE?format=F` alone.

mod support;

use std::time::Duration;

use support::pb::HelloRequest;
use support::pb::greeter_client::GreeterClient;
use support::{Etcd, TestServer, wait_for};
use tonic_etcd::{Error, EtcdDiscover, Registrar};

/// How long anything that should work may take.
const DEADLINE: Duration = Duration::from_secs(15);

/// For each format a target can name, a server registered through a target is called
/// through a channel discovered through the same target; the target lists the one etcd
/// twice, under two names, as a configuration file lists a cluster's members.
#[tokio::test]
async fn registers_and_discovers_through_a_target() {
    let etcd = Etcd::start().await;
    let endpoint = etcd.endpoint();
    let port = endpoint.rsplit(':').next().expect("a port");
    for format in ["etcd-naming", "go-zero", "kratos", "blog", "plain"] {
        let target =
            format!("etcd://127.0.0.1:{port},localhost:{port}/greeter-{format}?format={format}");
        let server = TestServer::start().await;
        let (registrar, service) = Registrar::from_target(&target)
            .await
            .unwrap_or_else(|e| panic!("{target}: {}", e.report()));
        assert_eq!(service, format!("greeter-{format}"));
        let registration = registrar
            .register(&service, server.addr())
            .await
            .unwrap_or_else(|e| panic!("{target}: register: {}", e.report()));
        let discover = EtcdDiscover::from_target(&target)
            .await
            .unwrap_or_else(|e| panic!("{target}: {}", e.report()));
        assert_eq!(discover.service(), service);
        let channel = discover.channel();
        let reply = wait_for(&format!("a call through {target}"), DEADLINE, || {
            let mut client = GreeterClient::new(channel.clone());
            async move {
                let request = HelloRequest {
                    name: "target".into(),
                };
                client.say_hello(request).await.ok()
            }
        })
        .await;
        let message = reply.into_inner().message;
        assert_eq!(
            support::greeter::backend_of(&message),
            server.addr(),
            "{target}"
        );
        registration
            .shutdown()
            .await
            .unwrap_or_else(|e| panic!("{target}: shutdown: {}", e.report()));
    }
}

/// A bad target fails at once, before any I/O, with an error that names the bad part.
#[tokio::test]
async fn a_bad_target_names_the_bad_part() {
    let cases = [
        ("http://127.0.0.1:2379/greeter", "must start with etcd://"),
        ("etcd://127.0.0.1:0/greeter", "\"127.0.0.1:0\""),
        ("etcd://127.0.0.1:2379", "names no service"),
        ("etcd://127.0.0.1:2379/greeter?format=consul", "\"consul\""),
    ];
    for (target, part) in cases {
        let discover =
            tokio::time::timeout(Duration::from_secs(1), EtcdDiscover::from_target(target))
                .await
                .expect("no I/O");
        let registrar =
            tokio::time::timeout(Duration::from_secs(1), Registrar::from_target(target))
                .await
                .expect("no I/O");
        for error in [discover.err(), registrar.err()] {
            let error = error.unwrap_or_else(|| panic!("{target} is refused"));
            assert!(matches!(error, Error::InvalidTarget { .. }), "{error:?}");
            assert!(error.is_permanent());
            let message = error.to_string();
            assert!(message.contains(part), "{target}: {message}");
        }
    }
}
