//! Unit tests of the shared decoding helpers and the `Format` impls for boxes and arcs.

use super::*;

#[test]
fn accepts_ip_and_host_addresses() {
    for addr in ["10.0.0.1:50051", "[::1]:8080", "greeter-0.svc.local:443"] {
        assert!(validate_addr(addr).is_ok(), "{addr}");
    }
}

#[test]
fn rejects_bad_addresses() {
    for addr in [
        "",
        "10.0.0.1",
        ":80",
        "host:0",
        "10.0.0.1:0",
        "[::1]:0",
        "host:65536",
        "host:+80",
        "host:http",
        "a b:80",
        "user@host:80",
        "http://host:80",
        "::1:80",
        "[fe80::1%2]:80",
    ] {
        assert!(validate_addr(addr).is_err(), "{addr:?} accepted");
    }
}

#[test]
fn boxed_and_shared_formats_delegate() {
    let boxed: Box<dyn Format> = Box::new(PlainAddr);
    let shared: Arc<dyn Format> = Arc::new(PlainAddr);
    let instance = Instance::new("10.0.0.1:1");
    for format in [&boxed as &dyn Format, &shared as &dyn Format] {
        assert_eq!(format.prefix("s/"), "s/");
        assert_eq!(format.key("s", &instance, 7), "s/10.0.0.1:1");
        assert_eq!(format.value("s", &instance), b"10.0.0.1:1");
        assert_eq!(
            format.decode("s/x", b"10.0.0.1:1").ok(),
            Some(instance.clone())
        );
        assert!(format.decode_for("s", "s/x/y", b"10.0.0.1:1").is_err());
    }
}

#[test]
fn a_value_of_another_format_says_what_was_expected() {
    let go_zero = b"127.0.0.1:8080";
    for (format, expected) in [
        (&EtcdNaming as &dyn Format, "not an etcd-naming JSON value"),
        (&Kratos::new(), "not a Kratos JSON instance"),
        (&Blog::new(), "not a blog-format JSON value"),
    ] {
        let error = format.decode("s/1", go_zero).expect_err("not json");
        let chain = crate::error::Chain(&error).to_string();
        assert!(chain.starts_with(expected), "{format:?}: {chain}");
        assert!(
            chain.contains("127.0"),
            "{format:?}: the parser's reason too: {chain}"
        );
    }
}

#[test]
fn every_error_names_what_is_wrong_and_where() {
    let json = serde_json::from_str::<serde_json::Value>("{").expect_err("not json");
    let cases = [
        (DecodeError::NotUtf8, vec!["not utf-8"]),
        (
            DecodeError::Json {
                expected: "an etcd-naming JSON value",
                source: json,
            },
            vec!["not an etcd-naming JSON value"],
        ),
        (DecodeError::MissingAddress, vec!["no address"]),
        (DecodeError::NoGrpcEndpoint, vec!["grpc://", "grpcs://"]),
        (
            validate_addr("nope").expect_err("no port"),
            vec!["invalid address \"nope\": "],
        ),
        (
            DecodeError::NestedKey {
                prefix: "greeter/".into(),
            },
            vec!["\"greeter/\"", "nested service"],
        ),
        (
            DecodeError::OtherService {
                name: "greeter/admin".into(),
                service: "greeter".into(),
            },
            vec!["\"greeter/admin\"", "not \"greeter\""],
        ),
    ];
    for (error, parts) in cases {
        let message = error.to_string();
        for part in parts {
            assert!(
                message.contains(part),
                "{error:?}: {message:?} lacks {part:?}"
            );
        }
    }
    // The address's reason follows its colon: it is never empty.
    let reason = validate_addr("nope").expect_err("no port").to_string();
    assert!(
        reason.len() > "invalid address \"nope\": ".len(),
        "{reason}"
    );
}
