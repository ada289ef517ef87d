use super::*;

fn status(code: tonic::Code, msg: &str) -> EtcdError {
    Arc::new(etcd_client::Error::GRpcStatus(tonic::Status::new(
        code, msg,
    )))
}

#[test]
fn unavailable_is_transient() {
    let e = Error::Watch {
        prefix: "p/".into(),
        source: status(tonic::Code::Unavailable, "etcdserver: no leader"),
    };
    assert!(!e.is_permanent());
}

#[test]
fn permission_denied_is_permanent() {
    let e = Error::List {
        prefix: "p/".into(),
        source: status(
            tonic::Code::PermissionDenied,
            "etcdserver: permission denied",
        ),
    };
    assert!(e.is_permanent());
    let e = Error::WatchCancelled {
        prefix: "p/".into(),
        reason: "etcdserver: permission denied".into(),
    };
    assert!(e.is_permanent());
}

#[test]
fn bad_credentials_are_permanent_but_expired_tokens_are_not() {
    let e = Error::LeaseGrant {
        ttl_secs: 10,
        source: status(
            tonic::Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password",
        ),
    };
    assert!(e.is_permanent());
    let e = Error::LeaseGrant {
        ttl_secs: 10,
        source: status(
            tonic::Code::Unauthenticated,
            "etcdserver: invalid auth token",
        ),
    };
    assert!(!e.is_permanent());
}

#[test]
fn connecting_is_permanent_only_when_etcd_refuses_us() {
    let connect = |source| Error::Connect {
        endpoints: "https://127.0.0.1:2379".into(),
        source,
    };
    assert!(!connect(status(tonic::Code::Unavailable, "tcp connect error")).is_permanent());
    let untrusted = status(
        tonic::Code::Unavailable,
        "invalid peer certificate: UnknownIssuer",
    );
    assert!(connect(untrusted).is_permanent());
    let refused = status(
        tonic::Code::InvalidArgument,
        "etcdserver: authentication failed, invalid user ID or password",
    );
    let e = Error::Authenticate {
        user: "alice".into(),
        source: refused,
    };
    assert!(e.is_permanent());
    assert!(e.to_string().contains("authentication failed"));
}

#[test]
fn durations_are_printed_in_seconds() {
    let ttl = |ttl| {
        Error::InvalidTtl {
            ttl,
            min: Duration::from_secs(2),
            max: Duration::from_secs(9_000_000_000),
        }
        .to_string()
    };
    assert_eq!(
        ttl(Duration::ZERO),
        "invalid lease ttl 0 s: it must be from 2 s to 9000000000 s"
    );
    assert_eq!(
        ttl(Duration::from_millis(1500)),
        "invalid lease ttl 1.5 s: it must be from 2 s to 9000000000 s"
    );
    assert_eq!(Secs(Duration::from_millis(20)).to_string(), "0.02 s");
    assert_eq!(Secs(Duration::from_micros(500)).to_string(), "0.0005 s");
    let timeout = Error::Timeout {
        operation: "granting a lease",
        after: Duration::from_secs(5),
    };
    assert_eq!(timeout.to_string(), "granting a lease timed out after 5 s");
}

#[test]
fn lease_not_found_is_recognised() {
    let e = Error::Put {
        key: "k".into(),
        lease_id: 7,
        source: status(
            tonic::Code::NotFound,
            "etcdserver: requested lease not found",
        ),
    };
    assert!(e.is_lease_not_found());
    assert!(!e.is_permanent());
}
