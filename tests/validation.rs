//! What a new user gets wrong, refused at the door against a real etcd: an empty or
//! root-only service name, an address clients cannot dial, a misspelt etcd URL, a TTL of
//! zero. Each is a clear, permanent error before any I/O, and nothing is written to etcd.
//! The examples exit 2 on each, with one line that says why.

mod support;

use std::process::Output;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tonic_etcd::etcd_client::{Client, GetOptions};
use tonic_etcd::{
    Blog, DiscoveryStatus, Error, EtcdConfig, EtcdDiscover, EtcdNaming, Format, GoZero, Instance,
    Kratos, PlainAddr, Registrar,
};

use support::{Etcd, TestServer};

/// How long an example may take to refuse bad input: well under etcd's 5 s connect deadline.
const PROMPTLY: Duration = Duration::from_secs(3);

/// Every built-in format.
fn formats() -> Vec<Box<dyn Format>> {
    vec![
        Box::new(EtcdNaming),
        Box::new(GoZero::new()),
        Box::new(Kratos::new()),
        Box::new(Blog::new()),
        Box::new(PlainAddr),
    ]
}

/// Every key in etcd.
async fn all_keys(client: &mut Client) -> Vec<String> {
    let listing = client
        .get(
            vec![0u8],
            Some(GetOptions::new().with_from_key().with_keys_only()),
        )
        .await
        .expect("list every key");
    listing
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

/// How many leases etcd holds.
async fn leases(client: &mut Client) -> usize {
    client.leases().await.expect("list leases").leases().len()
}

#[tokio::test]
async fn register_refuses_a_root_service_and_an_undialable_address_and_writes_nothing() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let server = TestServer::start().await;
    for index in 0..formats().len() {
        let format = || formats().swap_remove(index);
        let cases = [
            ("", server.addr().to_string()),
            ("/", server.addr().to_string()),
            ("greeter\n", server.addr().to_string()),
            ("greeter", format!("0.0.0.0:{}", server.addr().port())),
            ("greeter", format!("[::]:{}", server.addr().port())),
            ("greeter", "127.0.0.1:0".to_owned()),
        ];
        for (service, addr) in cases {
            let registered = Registrar::new(client.clone())
                .format(format())
                .register(service, Instance::new(addr.as_str()))
                .await;
            let Err(error) = registered else {
                panic!("{:?}: register({service:?}, {addr}) succeeded", format());
            };
            assert!(
                matches!(
                    error,
                    Error::InvalidPrefix { .. } | Error::InvalidAddress { .. }
                ),
                "{:?}: {error}",
                format()
            );
            assert!(error.is_permanent(), "{error}");
        }
    }
    assert_eq!(
        all_keys(&mut client).await,
        Vec::<String>::new(),
        "nothing written"
    );
    assert_eq!(leases(&mut client).await, 0, "no lease granted");

    let error = Registrar::new(client.clone())
        .ttl(Duration::ZERO)
        .register("greeter", server.addr())
        .await
        .expect_err("a ttl of zero is refused");
    assert_eq!(
        error.to_string(),
        "invalid lease ttl 0 s: it must be from 2 s to 9000000000 s"
    );
}

#[tokio::test]
async fn the_unspecified_address_error_says_how_to_advertise() {
    let etcd = Etcd::start().await;
    let registered = Registrar::new(etcd.client().await)
        .register("greeter", Instance::new("0.0.0.0:50051"))
        .await;
    let message = registered.expect_err("refused").to_string();
    assert!(message.contains("0.0.0.0:50051"), "{message}");
    assert!(
        message.contains("Instance::new(\"host:port\")"),
        "{message}"
    );
}

#[tokio::test]
async fn add_refuses_the_same_and_writes_nothing_more() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let server = TestServer::start().await;
    let registration = Registrar::new(client.clone())
        .grace(Duration::ZERO)
        .register("greeter", server.addr())
        .await
        .expect("register");
    let before = all_keys(&mut client).await;
    for (service, addr) in [
        ("", server.addr().to_string()),
        ("//", server.addr().to_string()),
        ("admin", format!("0.0.0.0:{}", server.addr().port())),
    ] {
        let added = registration
            .add(service, Instance::new(addr.as_str()))
            .await;
        let error = added.expect_err("refused");
        assert!(error.is_permanent(), "{error}");
    }
    assert_eq!(all_keys(&mut client).await, before, "nothing more written");
    registration
        .add("admin", Instance::new(server.addr().to_string()))
        .await
        .expect("a valid instance is still added");
    registration.shutdown().await.expect("deregister");
}

#[tokio::test]
async fn discovery_of_a_root_service_fails_at_once() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    for index in 0..formats().len() {
        let format = || formats().swap_remove(index);
        for service in ["", "/", " "] {
            let discover = EtcdDiscover::new(client.clone(), service).format(format());
            let status = discover.status().borrow().clone();
            assert!(
                matches!(
                    status,
                    DiscoveryStatus::Failed {
                        error: Error::InvalidPrefix { .. }
                    }
                ),
                "{:?} {service:?}: failed before any poll, got {status:?}",
                format()
            );
            let mut discover = discover.into_stream();
            let first = tokio::time::timeout(PROMPTLY, discover.next()).await;
            let first = first.expect("at once");
            assert!(
                matches!(first, Some(Err(Error::InvalidPrefix { .. }))),
                "{first:?}"
            );
        }
    }
    let valid = EtcdDiscover::new(client, "greeter");
    assert!(matches!(*valid.status().borrow(), DiscoveryStatus::Syncing));
}

#[tokio::test]
async fn a_misspelt_etcd_scheme_fails_at_once() {
    let etcd = Etcd::start().await;
    let misspelt = etcd.endpoint().replacen("http://", "htp://", 1);
    let started = Instant::now();
    let connected = EtcdConfig::new([misspelt.clone()]).connect().await;
    let Err(error) = connected else {
        panic!("{misspelt} connected");
    };
    assert!(started.elapsed() < PROMPTLY, "{:?}", started.elapsed());
    assert!(matches!(error, Error::InvalidEndpoint { .. }), "{error}");
    assert!(error.to_string().contains(&misspelt), "{error}");
}

/// Runs example `name` with `args`, with no etcd settings from the environment.
async fn run_example(name: &str, args: &[&str]) -> (Output, Duration) {
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
    let started = Instant::now();
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .unwrap_or_else(|_| panic!("{name} did not exit"))
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    (output, started.elapsed())
}

/// Checks that an example exited 2 promptly, with one line on stderr holding `expected`.
fn assert_refused(name: &str, args: &[&str], (output, took): (Output, Duration), expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{name} {args:?}: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{name} {args:?}: {stderr:?}"
    );
    assert!(stderr.contains(expected), "{name} {args:?} says {stderr:?}");
    assert!(took < PROMPTLY, "{name} {args:?} took {took:?}");
}

#[tokio::test]
async fn the_examples_exit_2_with_one_line_on_each_mistake() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let endpoint = etcd.endpoint();
    let misspelt = endpoint.replacen("http://", "htp://", 1);
    let etcd_flag = ["--etcd", endpoint.as_str()];
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("greeter_server", vec!["--service", ""], "it is empty"),
        ("greeter_server", vec!["--service", "/"], "only slashes"),
        ("greeter_server", vec!["--addr", "0.0.0.0:0"], "--advertise"),
        ("greeter_server", vec!["--addr", "[::]:0"], "--advertise"),
        (
            "greeter_server",
            vec!["--advertise", "0.0.0.0:50051"],
            "--advertise",
        ),
        (
            "greeter_server",
            vec!["--advertise", "10.0.0.5:0"],
            "--advertise",
        ),
        ("greeter_server", vec!["--ttl", "0"], "--ttl"),
        ("greeter_client", vec!["--service", ""], "it is empty"),
        ("greeter_client", vec!["--service", "/"], "only slashes"),
        (
            "greeter_client",
            vec!["--balancer", "tonic", "--retry-codes", "unavailable"],
            "only to the crate's balancer",
        ),
    ];
    for (name, extra, expected) in cases {
        let args: Vec<&str> = etcd_flag.iter().copied().chain(extra).collect();
        let outcome = run_example(name, &args).await;
        assert_refused(name, &args, outcome, expected);
    }
    for name in ["greeter_server", "greeter_client"] {
        let args = ["--etcd", misspelt.as_str()];
        let outcome = run_example(name, &args).await;
        assert_refused(name, &args, outcome, "scheme");
    }
    assert_eq!(
        all_keys(&mut client).await,
        Vec::<String>::new(),
        "nothing written"
    );
}

#[tokio::test]
async fn greeter_server_registers_the_advertised_address() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let advertised = "127.0.0.1:50999";
    let extra = [
        std::ffi::OsStr::new("--advertise"),
        std::ffi::OsStr::new(advertised),
    ];
    let any = "0.0.0.0:0".parse().expect("an address");
    let server =
        support::ServerProcess::spawn_with(&etcd.endpoint(), "greeter", 10, any, &extra).await;
    let keys = all_keys(&mut client).await;
    assert_eq!(
        keys,
        [format!("greeter/{advertised}")],
        "{}",
        server.stderr_tail()
    );
}

#[tokio::test]
async fn zero_timeouts_and_a_ttl_beyond_etcds_maximum_are_refused_before_any_io() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let server = TestServer::start().await;
    let before = all_keys(&mut client).await;
    let zero_timeout = Registrar::new(client.clone())
        .request_timeout(Duration::ZERO)
        .register("greeter", server.addr())
        .await;
    assert!(
        matches!(zero_timeout, Err(Error::InvalidDuration { .. })),
        "{zero_timeout:?}"
    );
    let endless = Registrar::new(client.clone())
        .ttl(Duration::from_secs(9_000_000_001))
        .register("greeter", server.addr())
        .await;
    assert!(
        matches!(endless, Err(Error::InvalidTtl { .. })),
        "{endless:?}"
    );
    assert_eq!(all_keys(&mut client).await, before, "nothing written");
    assert_eq!(leases(&mut client).await, 0, "no lease granted");
    for discover in [
        EtcdDiscover::new(client.clone(), "greeter").request_timeout(Duration::ZERO),
        EtcdDiscover::new(client.clone(), "greeter").idle_timeout(Duration::ZERO),
    ] {
        let status = discover.status().borrow().clone();
        assert!(
            matches!(
                status,
                DiscoveryStatus::Failed {
                    error: Error::InvalidDuration { .. }
                }
            ),
            "{status:?}"
        );
        let mut discover = discover.into_stream();
        let first = tokio::time::timeout(PROMPTLY, discover.next()).await;
        assert!(
            matches!(first, Ok(Some(Err(Error::InvalidDuration { .. })))),
            "{first:?}"
        );
    }
}
