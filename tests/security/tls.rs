//! TLS to etcd (mutual, with certificates made at test time) and TLS to the backends, on
//! the balancer's own connection (`TlsConfig`) and through tonic's (`ClientTlsConfig`).

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tonic::transport::{Certificate, ClientTlsConfig};
use tonic_etcd::{
    BalancedChannel, EndpointState, EtcdConfig, EtcdDiscover, Instance, Kratos, Registrar,
    TlsConfig,
};

use super::support::pb::HelloRequest;
use super::support::pb::greeter_client::GreeterClient;
use super::support::{Etcd, ServerProcess, TestPki, TestServer, wait_for};
use super::{DEADLINE, PROMPT, SERVICE, assert_refused, first_reply, run_example};
use tokio::time::Instant;

/// A configuration for `endpoints` that trusts `pki`'s CA and presents its client certificate.
pub(super) fn mutual_tls_config(endpoints: Vec<String>, pki: &TestPki) -> EtcdConfig {
    EtcdConfig::new(endpoints)
        .ca_certificate(pki.ca_pem.as_bytes())
        .identity(
            pki.client.cert_pem.as_bytes(),
            pki.client.key_pem.as_bytes(),
        )
}

/// A client of `etcd` that presents `pki`'s client certificate.
async fn mutual_tls_client(etcd: &Etcd, pki: &TestPki) -> etcd_client::Client {
    mutual_tls_config(vec![etcd.endpoint()], pki)
        .connect()
        .await
        .expect("connect with the client certificate")
}

fn backend_tls(pki: &TestPki) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca_pem))
}

#[tokio::test]
async fn registers_and_calls_through_an_etcd_with_mutual_tls() {
    let pki = TestPki::new();
    let etcd = Etcd::start_tls(&pki).await;
    assert!(etcd.endpoint().starts_with("https://"));
    let server = TestServer::start().await;
    let registration = Registrar::new(mutual_tls_client(&etcd, &pki).await)
        .register(SERVICE, server.addr())
        .await
        .expect("register over mutual tls");
    let channel = EtcdDiscover::new(mutual_tls_client(&etcd, &pki).await, SERVICE).channel();
    let reply = first_reply(channel).await;
    assert_eq!(
        reply,
        super::support::greeter::greeting("sec", server.addr())
    );
    registration.shutdown().await.expect("deregister");
}

#[tokio::test]
async fn a_missing_or_untrusted_certificate_fails_at_once_and_for_good() {
    let pki = TestPki::new();
    let etcd = Etcd::start_tls(&pki).await;

    let started = Instant::now();
    let error = EtcdConfig::new([etcd.endpoint()])
        .ca_certificate(pki.ca_pem.as_bytes())
        .connect()
        .await
        .err()
        .expect("etcd requires a client certificate");
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    assert!(error.is_permanent(), "{error:?}");
    assert!(
        error.to_string().contains("requires a client certificate"),
        "{error}"
    );

    let stranger = TestPki::new();
    let error = EtcdConfig::new([etcd.endpoint()])
        .ca_certificate(pki.ca_pem.as_bytes())
        .identity(
            stranger.client.cert_pem.as_bytes(),
            stranger.client.key_pem.as_bytes(),
        )
        .connect()
        .await
        .err()
        .expect("a certificate from another CA is rejected");
    assert!(error.is_permanent(), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("rejected the client certificate"),
        "{error}"
    );

    let error = EtcdConfig::new([etcd.endpoint()])
        .ca_certificate(stranger.ca_pem.as_bytes())
        .identity(
            pki.client.cert_pem.as_bytes(),
            pki.client.key_pem.as_bytes(),
        )
        .connect()
        .await
        .err()
        .expect("etcd's certificate is not signed by the CA given");
    assert!(error.is_permanent(), "{error:?}");
    assert!(
        error.to_string().contains("certificate is not trusted"),
        "{error}"
    );

    let error = EtcdConfig::new([etcd.endpoint()])
        .ca_certificate(pki.client.key_pem.as_bytes())
        .connect()
        .await
        .err()
        .expect("a key is not a certificate");
    assert!(
        matches!(error, tonic_etcd::Error::InvalidTlsConfig { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn the_examples_exit_2_when_etcd_requires_a_client_certificate() {
    let pki = TestPki::new();
    let etcd = Etcd::start_tls(&pki).await;
    let endpoint = etcd.endpoint();
    let ca = pki.ca_file.to_str().expect("utf-8 path");
    let args = ["--etcd", &endpoint, "--etcd-ca", ca, "--requests", "1"];
    let client = run_example("greeter_client", &args, &[]).await;
    assert_refused("greeter_client", client, "requires a client certificate");
    let server = run_example("greeter_server", &args[..4], &[]).await;
    assert_refused("greeter_server", server, "requires a client certificate");
}

#[tokio::test]
async fn a_tls_greeter_is_reached_through_discovery_with_both_balancers() {
    let pki = TestPki::new();
    let etcd = Etcd::start().await;
    let server = TestServer::start_tls(&pki).await;
    // etcd naming cannot say that the server speaks TLS: the client's configuration does.
    let registration = Registrar::new(etcd.client().await)
        .register(SERVICE, server.addr())
        .await
        .expect("register");
    let expected = super::support::greeter::greeting("sec", server.addr());

    let discover = EtcdDiscover::new(etcd.client().await, SERVICE).tls(backend_tls(&pki));
    assert_eq!(first_reply(discover.channel()).await, expected);
    let discover = EtcdDiscover::new(etcd.client().await, SERVICE).tls(backend_tls(&pki));
    let (channel, _handle) = discover.balance_channel();
    assert_eq!(first_reply(channel).await, expected);

    // Kratos marks the instance `grpcs://`; the same configuration serves it.
    let kratos = Registrar::new(etcd.client().await)
        .format(Kratos::new())
        .register("greeter", Instance::from(server.addr()).tls(true))
        .await
        .expect("register in kratos format");
    let discover = EtcdDiscover::new(etcd.client().await, "greeter")
        .format(Kratos::new())
        .tls(backend_tls(&pki));
    assert_eq!(first_reply(discover.channel()).await, expected);

    kratos.shutdown().await.expect("deregister");
    registration.shutdown().await.expect("deregister");
}

#[tokio::test]
async fn the_example_pair_works_over_tls_everywhere() {
    let pki = TestPki::new();
    let etcd = Etcd::start_tls(&pki).await;
    let endpoint = etcd.endpoint();
    let path = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_owned();
    let etcd_tls = [
        "--etcd-ca".to_owned(),
        path(&pki.ca_file),
        "--etcd-cert".to_owned(),
        path(&pki.client.cert_file),
        "--etcd-key".to_owned(),
        path(&pki.client.key_file),
    ];
    let serve_tls = [
        "--tls-cert".to_owned(),
        path(&pki.server.cert_file),
        "--tls-key".to_owned(),
        path(&pki.server.key_file),
    ];
    let server_args: Vec<&OsStr> = etcd_tls.iter().chain(&serve_tls).map(OsStr::new).collect();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = ServerProcess::spawn_with(&endpoint, "greeter", 10, loopback, &server_args).await;

    let ca = path(&pki.ca_file);
    let mut args = vec!["--etcd", &endpoint, "--tls-ca", &ca, "--requests", "20"];
    args.extend(etcd_tls.iter().map(String::as_str));
    let (output, _) = run_example("greeter_client", &args, &[]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains(r#""ok":20,"failed":0"#), "{stdout}");
    assert!(stdout.contains(&server.addr().to_string()), "{stdout}");
}

fn own_tls(pki: &TestPki) -> TlsConfig {
    TlsConfig::new().ca_certificate(pki.ca_pem.as_bytes())
}

/// The warnings logged on this thread, which runs the test's runtime and so every task of
/// the balancer, while the guard lives.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<u8>>>);

impl Warnings {
    fn capture() -> (Warnings, tracing::subscriber::DefaultGuard) {
        let warnings = Warnings::default();
        let writer = warnings.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (warnings, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for Warnings {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Makes `calls` calls one after the other; returns how many each server answered.
async fn call_many(channel: &BalancedChannel, calls: usize) -> Vec<SocketAddr> {
    let mut client = GreeterClient::new(channel.clone());
    let mut answered = Vec::new();
    for i in 0..calls {
        let request = HelloRequest {
            name: format!("call {i}"),
        };
        let reply = client
            .say_hello(request)
            .await
            .unwrap_or_else(|status| panic!("call {i} failed: {status}"));
        answered.push(super::support::greeter::backend_of(
            &reply.into_inner().message,
        ));
    }
    answered
}

/// Waits until `addr` is ejected from `channel`, and until the warnings say `why`.
async fn wait_for_refusal(
    channel: &BalancedChannel,
    addr: SocketAddr,
    warnings: &Warnings,
    why: &str,
) {
    let addr = addr.to_string();
    wait_for("the endpoint ejected", DEADLINE, || async {
        channel
            .endpoints()
            .iter()
            .any(|e| e.addr == addr && e.state == EndpointState::Ejected)
            .then_some(())
    })
    .await;
    wait_for("a warning that says why", DEADLINE, || async {
        let text = warnings.text();
        (text.contains(&addr) && text.contains(why)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn calls_over_tls_take_the_balancers_own_connection() {
    let pki = TestPki::new();
    let etcd = Etcd::start().await;
    let servers = [
        TestServer::start_tls(&pki).await,
        TestServer::start_tls(&pki).await,
    ];
    let registrar = Registrar::new(etcd.client().await);
    let registration = registrar
        .register(SERVICE, servers[0].addr())
        .await
        .expect("register");
    registration
        .add(SERVICE, servers[1].addr())
        .await
        .expect("register the second");
    let discover = EtcdDiscover::new(etcd.client().await, SERVICE).tls_config(own_tls(&pki));
    let channel = discover.channel();
    first_reply(channel.clone()).await;
    wait_for("both endpoints up", DEADLINE, || async {
        let up = channel
            .endpoints()
            .iter()
            .filter(|e| e.state == EndpointState::Up)
            .count();
        (up == 2).then_some(())
    })
    .await;
    let answered = call_many(&channel, 40).await;
    for server in &servers {
        assert!(answered.contains(&server.addr()), "{answered:?}");
    }

    // tonic's balancer takes the same configuration, and so does tonic's `Channel` behind a
    // hook.
    let discover = EtcdDiscover::new(etcd.client().await, SERVICE).tls_config(own_tls(&pki));
    let (channel, _handle) = discover.balance_channel();
    first_reply(channel).await;
    let hooked = EtcdDiscover::new(etcd.client().await, SERVICE)
        .tls_config(own_tls(&pki))
        .endpoint(|endpoint, _| endpoint)
        .channel();
    first_reply(hooked).await;
    registration.shutdown().await.expect("deregister");
}

#[tokio::test]
async fn mutual_tls_presents_the_client_identity_and_a_refusal_ejects_with_a_reason() {
    let pki = TestPki::new();
    let etcd = Etcd::start().await;
    let mutual = TestServer::start_mutual_tls(&pki).await;
    let registration = Registrar::new(etcd.client().await)
        .register(SERVICE, mutual.addr())
        .await
        .expect("register");

    let identity = own_tls(&pki).identity(
        pki.client.cert_pem.as_bytes(),
        pki.client.key_pem.as_bytes(),
    );
    let channel = EtcdDiscover::new(etcd.client().await, SERVICE)
        .tls_config(identity)
        .channel();
    first_reply(channel.clone()).await;
    assert!(
        call_many(&channel, 10)
            .await
            .iter()
            .all(|a| *a == mutual.addr())
    );

    // Without a client certificate, or with one from another CA, the server refuses:
    // the endpoint is ejected, a warning says why, and calls go to a server that accepts.
    let (warnings, _guard) = Warnings::capture();
    let open = TestServer::start_tls(&pki).await;
    registration
        .add(SERVICE, open.addr())
        .await
        .expect("register");
    let channel = EtcdDiscover::new(etcd.client().await, SERVICE)
        .tls_config(own_tls(&pki))
        .channel();
    wait_for_refusal(
        &channel,
        mutual.addr(),
        &warnings,
        "requires a client certificate",
    )
    .await;
    assert!(
        call_many(&channel, 10)
            .await
            .iter()
            .all(|a| *a == open.addr())
    );

    let stranger = TestPki::new();
    let foreign = own_tls(&pki).identity(
        stranger.client.cert_pem.as_bytes(),
        stranger.client.key_pem.as_bytes(),
    );
    let channel = EtcdDiscover::new(etcd.client().await, SERVICE)
        .tls_config(foreign)
        .channel();
    wait_for_refusal(
        &channel,
        mutual.addr(),
        &warnings,
        "rejected the client certificate",
    )
    .await;
    assert!(
        call_many(&channel, 10)
            .await
            .iter()
            .all(|a| *a == open.addr())
    );
    registration.shutdown().await.expect("deregister");
}

#[tokio::test]
async fn a_server_signed_by_another_ca_is_ejected_with_a_reason() {
    let pki = TestPki::new();
    let stranger = TestPki::new();
    let etcd = Etcd::start().await;
    let trusted = TestServer::start_tls(&pki).await;
    let untrusted = TestServer::start_tls(&stranger).await;
    let registration = Registrar::new(etcd.client().await)
        .register(SERVICE, trusted.addr())
        .await
        .expect("register");
    registration
        .add(SERVICE, untrusted.addr())
        .await
        .expect("register");
    let (warnings, _guard) = Warnings::capture();
    let channel = EtcdDiscover::new(etcd.client().await, SERVICE)
        .tls_config(own_tls(&pki))
        .channel();
    wait_for_refusal(
        &channel,
        untrusted.addr(),
        &warnings,
        "certificate is not trusted",
    )
    .await;
    assert!(
        call_many(&channel, 20)
            .await
            .iter()
            .all(|a| *a == trusted.addr())
    );
    assert_eq!(untrusted.calls(), 0);

    // With only the untrusted server, a call fails with a status, and nothing panics.
    const ALONE: &str = "services/untrusted";
    registration
        .add(ALONE, untrusted.addr())
        .await
        .expect("register");
    let channel = EtcdDiscover::new(etcd.client().await, ALONE)
        .tls_config(own_tls(&pki))
        .channel();
    wait_for_refusal(
        &channel,
        untrusted.addr(),
        &warnings,
        "certificate is not trusted",
    )
    .await;
    let status = GreeterClient::new(channel)
        .say_hello(HelloRequest { name: "x".into() })
        .await
        .expect_err("no server is trusted");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(untrusted.calls(), 0);
    registration.shutdown().await.expect("deregister");
}

/// The retry of calls that never left works on the balancer's own TLS connection as on a
/// plain one: a stopped server whose key stays (as after a crash, before its lease expires)
/// and an address where nothing listens cost no failed call.
#[tokio::test]
async fn a_stopped_tls_server_costs_no_failed_call() {
    let pki = TestPki::new();
    let etcd = Etcd::start().await;
    let (a, b) = (
        TestServer::start_tls(&pki).await,
        TestServer::start_tls(&pki).await,
    );
    let b_addr = b.addr();
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("an address")
    };
    let registration = Registrar::new(etcd.client().await)
        .register(SERVICE, a.addr())
        .await
        .expect("register");
    for addr in [b_addr, dead] {
        registration.add(SERVICE, addr).await.expect("register");
    }
    let channel = EtcdDiscover::new(etcd.client().await, SERVICE)
        .tls_config(own_tls(&pki))
        .channel();
    wait_for("both servers up", DEADLINE, || async {
        let up = channel
            .endpoints()
            .iter()
            .filter(|e| e.state == EndpointState::Up)
            .count();
        (up == 2).then_some(())
    })
    .await;
    // Callers keep calling while the server stops: calls that meet its closing connection
    // before they left go to the other server.
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (channel, stop) = (channel.clone(), stop.clone());
            tokio::spawn(async move {
                let mut calls = 0;
                while !stop.load(Ordering::Relaxed) {
                    call_many(&channel, 1).await;
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    wait_for("calls on the server to stop", DEADLINE, || async {
        (b.calls() > 50).then_some(())
    })
    .await;
    b.shutdown().await;
    let before = a.calls();
    wait_for("calls on the other server", DEADLINE, || async {
        (a.calls() > before + 200).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        // A failed call panics its caller.
        assert!(caller.await.expect("no call failed") > 0);
    }
    let answered = call_many(&channel, 20).await;
    assert!(
        answered.iter().all(|addr| *addr == a.addr()),
        "{answered:?}"
    );
    registration.shutdown().await.expect("deregister");
}
