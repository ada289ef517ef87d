//! TLS to etcd (mutual, with certificates made at test time) and TLS to the backends.

use std::ffi::OsStr;
use std::net::SocketAddr;

use tonic::transport::{Certificate, ClientTlsConfig};
use tonic_etcd::{EtcdConfig, EtcdDiscover, Instance, Kratos, Registrar};

use super::support::{Etcd, ServerProcess, TestPki, TestServer};
use super::{PROMPT, SERVICE, assert_refused, first_reply, run_example};
use tokio::time::Instant;

/// A client of `etcd` that presents `pki`'s client certificate.
async fn mutual_tls_client(etcd: &Etcd, pki: &TestPki) -> etcd_client::Client {
    EtcdConfig::new([etcd.endpoint()])
        .ca_certificate(pki.ca_pem.as_bytes())
        .identity(
            pki.client.cert_pem.as_bytes(),
            pki.client.key_pem.as_bytes(),
        )
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
