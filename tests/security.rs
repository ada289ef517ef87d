//! Security against real etcd: authentication and RBAC here, TLS in `security/tls.rs` (with
//! the `tls` feature).
//!
//! Every etcd with authentication is set up the way the README's RBAC recipe says: a role per
//! service that may write only its own prefix, and a read-only role for its clients.

#[cfg(feature = "tls")]
#[path = "security/members.rs"]
mod members;
mod support;
#[cfg(feature = "tls")]
#[path = "security/tls.rs"]
mod tls;

use std::process::Output;
use std::time::Duration;

use etcd_client::Permission;
use support::pb::HelloRequest;
use support::pb::greeter_client::GreeterClient;
use support::{Etcd, TestServer, wait_for};
use tokio::time::Instant;
use tonic_etcd::{Error, EtcdConfig, EtcdDiscover, Registrar, RegistrationStatus};

/// How long anything that should work may take.
const DEADLINE: Duration = Duration::from_secs(15);

/// How long a refusal may take to be reported: "prompt".
const PROMPT: Duration = Duration::from_secs(3);

const SERVICE: &str = "services/greeter";
const SERVER_USER: (&str, &str) = ("greeter-server", "server-secret");
const CLIENT_USER: (&str, &str) = ("greeter-client", "client-secret");

/// etcd with authentication on: `greeter-server` may read and write `services/greeter/`,
/// `greeter-client` may only read it.
async fn etcd_with_rbac() -> Etcd {
    let etcd = Etcd::start().await;
    let prefix = format!("{SERVICE}/");
    let writer = vec![Permission::read_write(prefix.as_str()).with_prefix()];
    etcd.add_role("greeter-server", writer).await;
    let reader = vec![Permission::read(prefix.as_str()).with_prefix()];
    etcd.add_role("greeter-client", reader).await;
    etcd.add_user(SERVER_USER.0, SERVER_USER.1, &["greeter-server"])
        .await;
    etcd.add_user(CLIENT_USER.0, CLIENT_USER.1, &["greeter-client"])
        .await;
    etcd.enable_auth("root-secret").await;
    etcd
}

async fn connect_as(etcd: &Etcd, (user, password): (&str, &str)) -> etcd_client::Client {
    EtcdConfig::new([etcd.endpoint()])
        .user(user, password)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
}

/// Calls through `channel` until a call succeeds; returns the reply.
async fn first_reply<T>(channel: T) -> String
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
    T::Future: Send,
{
    wait_for("a call through discovery", DEADLINE, || {
        let mut client = GreeterClient::new(channel.clone());
        async move {
            let request = HelloRequest { name: "sec".into() };
            let reply = client.say_hello(request).await.ok()?;
            Some(reply.into_inner().message)
        }
    })
    .await
}

/// Runs example `name` with `args` and the environment `env`, and how long it took.
async fn run_example(name: &str, args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let binary = support::greeter::example_binary(name);
    let mut command = tokio::process::Command::new(binary);
    command.args(args).kill_on_drop(true);
    for var in [
        "ETCD_ENDPOINTS",
        "ETCD_USERNAME",
        "ETCD_PASSWORD",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let started = Instant::now();
    match tokio::time::timeout(DEADLINE, command.output()).await {
        Ok(output) => (
            output.unwrap_or_else(|e| panic!("run {name}: {e}")),
            started.elapsed(),
        ),
        Err(_) => panic!("{name} did not exit within {DEADLINE:?}"),
    }
}

/// Checks that an example exited 2, promptly, with `expected` in its message.
fn assert_refused(name: &str, (output, took): (Output, Duration), expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
    assert!(stderr.contains(expected), "{name} says {stderr:?}");
    assert!(took < Duration::from_secs(5), "{name} took {took:?}");
}

#[tokio::test]
async fn least_privilege_users_register_and_discover() {
    let etcd = etcd_with_rbac().await;
    let server = TestServer::start().await;
    let registration = Registrar::new(connect_as(&etcd, SERVER_USER).await)
        .register(SERVICE, server.addr())
        .await
        .expect("the service's own user may write its prefix");

    let client = connect_as(&etcd, CLIENT_USER).await;
    let channel = EtcdDiscover::new(client.clone(), SERVICE).channel();
    let reply = first_reply(channel).await;
    assert_eq!(reply, support::greeter::greeting("sec", server.addr()));
    let (channel, _handle) = EtcdDiscover::new(client, SERVICE).balance_channel();
    assert_eq!(first_reply(channel).await, reply);

    registration.shutdown().await.expect("deregister");
}

#[tokio::test]
async fn a_wrong_password_fails_at_once_and_for_good() {
    let etcd = etcd_with_rbac().await;
    let started = Instant::now();
    let error = EtcdConfig::new([etcd.endpoint()])
        .user(CLIENT_USER.0, "not-the-password")
        .connect()
        .await
        .err()
        .expect("a wrong password is refused");
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    assert!(matches!(error, Error::Authenticate { .. }), "{error:?}");
    assert!(error.is_permanent());
    assert!(
        error.to_string().contains("authentication failed"),
        "{error}"
    );

    let error = EtcdConfig::new([etcd.endpoint()])
        .connect()
        .await
        .err()
        .expect("no user is refused");
    assert!(matches!(error, Error::AuthRequired { .. }), "{error:?}");
    assert!(error.is_permanent());
}

#[tokio::test]
async fn the_examples_exit_2_saying_authentication_failed() {
    let etcd = etcd_with_rbac().await;
    let endpoint = etcd.endpoint();
    let flags = [
        "--etcd",
        &endpoint,
        "--etcd-user",
        CLIENT_USER.0,
        "--etcd-password",
        "wrong",
    ];
    let client_args = [&flags[..], &["--requests", "1"]].concat();
    let client = run_example("greeter_client", &client_args, &[]).await;
    assert_refused("greeter_client", client, "authentication failed");
    // The same through $ETCD_USERNAME and $ETCD_PASSWORD.
    let env = [("ETCD_USERNAME", SERVER_USER.0), ("ETCD_PASSWORD", "wrong")];
    let server = run_example("greeter_server", &["--etcd", &endpoint], &env).await;
    assert_refused("greeter_server", server, "authentication failed");
    let server = run_example("greeter_server", &["--etcd", &endpoint], &[]).await;
    assert_refused("greeter_server", server, "requires authentication");
}

#[tokio::test]
async fn a_role_that_cannot_write_the_prefix_fails_the_registration_for_good() {
    let etcd = etcd_with_rbac().await;
    let addr: std::net::SocketAddr = "127.0.0.1:50051".parse().expect("an address");

    // The clients' read-only role cannot register at all.
    let error = Registrar::new(connect_as(&etcd, CLIENT_USER).await)
        .register(SERVICE, addr)
        .await
        .expect_err("a read-only user cannot register");
    assert!(error.is_permanent(), "{error:?}");
    assert!(
        std::error::Error::source(&error)
            .is_some_and(|s| s.to_string().contains("permission denied")),
        "{error:?}"
    );

    // The server's role may write its own prefix only: a key outside it stops the registrar.
    let registration = Registrar::new(connect_as(&etcd, SERVER_USER).await)
        .register(SERVICE, addr)
        .await
        .expect("the service's own prefix");
    let error = registration
        .add("services/billing", addr)
        .await
        .expect_err("another service's prefix is not writable");
    assert!(error.is_permanent(), "{error:?}");
    let mut status = registration.status();
    let failed = status.wait_for(|s| matches!(s, RegistrationStatus::Failed { .. }));
    let failed = tokio::time::timeout(PROMPT, failed)
        .await
        .expect("the registrar gives up at once")
        .expect("the registration is alive");
    match &*failed {
        RegistrationStatus::Failed { error } => assert!(error.is_permanent(), "{error:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_write_only_role_registers_without_looping() {
    let etcd = Etcd::start().await;
    let prefix = format!("{SERVICE}/");
    let write_only = vec![Permission::write(prefix.as_str()).with_prefix()];
    etcd.add_role("greeter-writer", write_only).await;
    etcd.add_user("writer", "writer-secret", &["greeter-writer"])
        .await;
    etcd.enable_auth("root-secret").await;
    let root = etcd.client_as("root", "root-secret").await;
    let server = TestServer::start().await;
    let registration = Registrar::new(connect_as(&etcd, ("writer", "writer-secret")).await)
        .register(SERVICE, server.addr())
        .await
        .expect("writing the key is all a registration needs");
    let revision = |mut client: etcd_client::Client| async move {
        let response = client.get("any", None).await.expect("get as root");
        response.header().expect("a header").revision()
    };
    // The window is the measurement: the lease task may not rewrite its key in a loop
    // because it cannot watch it (it did: about 350 puts a second).
    let before = revision(root.clone()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = revision(root).await - before;
    assert!(writes <= 2, "{writes} revisions in 2 s");
    assert!(matches!(
        *registration.status().borrow(),
        RegistrationStatus::Registered { .. }
    ));
}

#[tokio::test]
async fn a_role_that_cannot_read_the_prefix_ends_discovery_with_a_permanent_error() {
    use futures_util::StreamExt;
    let etcd = Etcd::start().await;
    let elsewhere = vec![Permission::read("other/").with_prefix()];
    etcd.add_role("other-reader", elsewhere).await;
    etcd.add_user("outsider", "outsider-secret", &["other-reader"])
        .await;
    etcd.enable_auth("root-secret").await;
    let client = connect_as(&etcd, ("outsider", "outsider-secret")).await;
    let mut discover = EtcdDiscover::new(client, SERVICE).into_stream();
    let status = discover.status();
    let first = tokio::time::timeout(PROMPT, discover.next())
        .await
        .expect("a refusal is reported promptly, not retried");
    let error = match first {
        Some(Err(error)) => error,
        other => panic!("expected a permanent error, got {other:?}"),
    };
    assert!(error.is_permanent(), "{error}");
    assert!(
        matches!(*status.borrow(), tonic_etcd::DiscoveryStatus::Failed { .. }),
        "{:?}",
        *status.borrow()
    );
    assert!(discover.next().await.is_none(), "the stream ends after it");
}
