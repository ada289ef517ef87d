//! The wire formats against a real etcd: every vector of DESIGN.md §4 put as literal keys
//! and values and discovered, and a register-then-discover round trip per format.
//!
//! The round trips live in `formats/round_trip.rs`; the property tests and the fuzz-style
//! target in `formats/props.rs`.

#[path = "formats/props.rs"]
mod props;
#[path = "formats/round_trip.rs"]
mod round_trip;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use tonic::transport::Endpoint;
use tonic_etcd::etcd_client::Client;
use tonic_etcd::{Blog, EtcdDiscover, EtcdNaming, Format, GoZero, Kratos, PlainAddr};
use tower::discover::Change;

use support::Etcd;

/// How long one discovery change may take to arrive.
const CHANGE_DEADLINE: Duration = Duration::from_secs(10);

/// The next change of the raw discovery stream.
async fn next_change(discover: &mut tonic_etcd::DiscoveryStream) -> Change<String, Endpoint> {
    tokio::time::timeout(CHANGE_DEADLINE, discover.next())
        .await
        .expect("a discovery change in time")
        .expect("the discovery stream stays open")
        .expect("no discovery error")
}

/// `scheme://authority` of an endpoint.
fn target(endpoint: &Endpoint) -> String {
    let uri = endpoint.uri();
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    format!("{}://{authority}", uri.scheme_str().unwrap_or_default())
}

/// The next change as `(key, Some(target))` for an insert or `(key, None)` for a remove.
async fn next(discover: &mut tonic_etcd::DiscoveryStream) -> (String, Option<String>) {
    match next_change(discover).await {
        Change::Insert(key, endpoint) => (key, Some(target(&endpoint))),
        Change::Remove(key) => (key, None),
    }
}

async fn put_all(client: &mut Client, pairs: &[(&str, &str)]) {
    for (key, value) in pairs {
        client.put(*key, *value, None).await.expect("put a vector");
    }
}

/// Puts `vectors`, discovers `service` in `format`, and checks that exactly `expected`
/// (key → `scheme://host:port`) is inserted: each bad or foreign key is skipped. After the
/// expected inserts, `sentinel` is put, and it must be the very next change.
async fn discovers_exactly(
    format: impl Format,
    service: &str,
    vectors: &[(&str, &str)],
    expected: &[(&str, &str)],
    sentinel: (&str, &str, &str),
) {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    put_all(&mut client, vectors).await;
    let mut discover = EtcdDiscover::new(client.clone(), service)
        .format(format)
        .into_stream();
    let mut seen = BTreeMap::new();
    for _ in expected {
        let (key, target) = next(&mut discover).await;
        let target = target.expect("only inserts while listing");
        assert!(seen.insert(key.clone(), target).is_none(), "{key} twice");
    }
    let expected: BTreeMap<_, _> = expected
        .iter()
        .map(|(k, t)| (k.to_string(), t.to_string()))
        .collect();
    assert_eq!(seen, expected);
    let (key, value, sentinel_target) = sentinel;
    put_all(&mut client, &[(key, value)]).await;
    let got = next(&mut discover).await;
    assert_eq!(got, (key.to_owned(), Some(sentinel_target.to_owned())));
}

#[tokio::test]
async fn discovers_the_etcd_naming_vectors() {
    let vectors = [
        (
            "services/greeter/10.0.0.1:50051",
            r#"{"Op":0,"Addr":"10.0.0.1:50051","Metadata":null}"#,
        ),
        ("services/greeter/no-op", r#"{"Addr":"10.0.0.2:50051"}"#),
        (
            "services/greeter/op-1",
            r#"{"Op":1,"Addr":"10.0.0.3:50051"}"#,
        ),
        (
            "services/greeter/go-escapes",
            r#"{"Addr":"10.0.0.4:50051","Metadata":{"zone":"a\u003cb\u0026c"}}"#,
        ),
        (
            "services/greeter/string-meta",
            r#"{"Op":0,"Addr":"10.0.0.5:50051","Metadata":"{\"weight\":10,\"zone\":\"eu-1\"}"}"#,
        ),
        (
            "services/greeter/scalar-meta",
            r#"{"Addr":"10.0.0.6:50051","Metadata":42}"#,
        ),
        ("services/greeter/bad-json", "{"),
        ("services/greeter/no-addr", r#"{"Op":0}"#),
        ("services/greeter/no-port", r#"{"Addr":"10.0.0.9"}"#),
        (
            "services/greeter-admin/10.0.0.8:1",
            r#"{"Addr":"10.0.0.8:1"}"#,
        ),
        // A nested target's key: one segment too deep.
        (
            "services/greeter/admin/10.0.0.8:2",
            r#"{"Addr":"10.0.0.8:2"}"#,
        ),
    ];
    let expected = [
        ("services/greeter/10.0.0.1:50051", "http://10.0.0.1:50051"),
        ("services/greeter/no-op", "http://10.0.0.2:50051"),
        ("services/greeter/op-1", "http://10.0.0.3:50051"),
        ("services/greeter/go-escapes", "http://10.0.0.4:50051"),
        ("services/greeter/string-meta", "http://10.0.0.5:50051"),
        ("services/greeter/scalar-meta", "http://10.0.0.6:50051"),
    ];
    let sentinel = (
        "services/greeter/z",
        r#"{"Addr":"10.0.0.7:1"}"#,
        "http://10.0.0.7:1",
    );
    discovers_exactly(
        EtcdNaming,
        "services/greeter",
        &vectors,
        &expected,
        sentinel,
    )
    .await;
}

#[tokio::test]
async fn discovers_the_go_zero_vectors() {
    let vectors = [
        ("greeter.rpc/7587861234567", "10.0.0.5:8080"),
        ("greeter.rpc/7587861234568", "10.0.0.5:8080"),
        ("greeter.rpc/1", "10.0.0.5"),
        ("greeter.rpc/2", r#"{"Addr":"10.0.0.5:8080"}"#),
        ("greeter.rpc.admin/3", "10.0.0.6:8080"),
        ("greeter.rpc/admin/4", "10.0.0.6:8081"),
    ];
    // Two keys, one address: one endpoint, under the first key.
    let expected = [("greeter.rpc/7587861234567", "http://10.0.0.5:8080")];
    let sentinel = ("greeter.rpc/9", "10.0.0.7:8080\n", "http://10.0.0.7:8080");
    discovers_exactly(GoZero::new(), "greeter.rpc", &vectors, &expected, sentinel).await;
}

#[tokio::test]
async fn discovers_the_kratos_vectors() {
    let vectors = [
        (
            "/microservices/greeter/a",
            r#"{"id":"a","name":"greeter","version":"v1","metadata":{"weight":"10"},"endpoints":["http://10.0.0.5:8000","grpc://10.0.0.5:9000?isSecure=false"]}"#,
        ),
        (
            "/microservices/greeter/b",
            r#"{"id":"b","name":"greeter","version":"","metadata":null,"endpoints":["grpcs://10.0.0.6:9443"]}"#,
        ),
        (
            "/microservices/greeter/c",
            r#"{"id":"c","name":"greeter","version":"","metadata":null,"endpoints":["http://10.0.0.7:8000"]}"#,
        ),
        (
            "/microservices/greeter/d",
            r#"{"id":"d","name":"greeter","endpoints":[]}"#,
        ),
        (
            "/microservices/greeter-admin/e",
            r#"{"id":"e","endpoints":["grpc://10.0.0.8:9000"]}"#,
        ),
        // Kratos lists `/microservices/greeter` and keeps only the instances named
        // `greeter`: not those of `greeter/admin`, nor one with no name.
        (
            "/microservices/greeter/admin/f",
            r#"{"id":"f","name":"greeter/admin","endpoints":["grpc://10.0.0.8:9001"]}"#,
        ),
        (
            "/microservices/greeter/g",
            r#"{"id":"g","endpoints":["grpc://10.0.0.8:9002"]}"#,
        ),
    ];
    let expected = [
        ("/microservices/greeter/a", "http://10.0.0.5:9000"),
        ("/microservices/greeter/b", "https://10.0.0.6:9443"),
    ];
    let sentinel = (
        "/microservices/greeter/z",
        r#"{"id":"z","name":"greeter","endpoints":["grpc://10.0.0.9:9000"]}"#,
        "http://10.0.0.9:9000",
    );
    discovers_exactly(Kratos::new(), "greeter", &vectors, &expected, sentinel).await;
}

#[tokio::test]
async fn discovers_the_blog_vectors_but_not_its_single_key() {
    let vectors = [
        ("services/greeter/1", r#"{"ID":1,"IP":"127.0.0.1:8080"}"#),
        // The original blog's one key per service lies outside `services/greeter/`.
        ("services/greeter", r#"{"ID":1,"IP":"127.0.0.1:8081"}"#),
        ("services/greeter/2", r#"{"ID":2}"#),
        (
            "services/greeter/admin/4",
            r#"{"ID":4,"IP":"127.0.0.1:8084"}"#,
        ),
    ];
    let expected = [("services/greeter/1", "http://127.0.0.1:8080")];
    let sentinel = (
        "services/greeter/3",
        r#"{"ID":3,"IP":"127.0.0.1:8083"}"#,
        "http://127.0.0.1:8083",
    );
    discovers_exactly(Blog::new(), "greeter", &vectors, &expected, sentinel).await;
}

#[tokio::test]
async fn discovers_plain_addresses() {
    let vectors = [
        ("plain/greeter/a", "10.0.0.1:1"),
        ("plain/greeter/b", "nope"),
        ("plain/greeter/admin/c", "10.0.0.2:1"),
    ];
    let expected = [("plain/greeter/a", "http://10.0.0.1:1")];
    let sentinel = ("plain/greeter/c", "[::1]:2", "http://[::1]:2");
    discovers_exactly(PlainAddr, "plain/greeter", &vectors, &expected, sentinel).await;
}

#[tokio::test]
async fn go_zero_address_is_one_endpoint_until_its_last_key_is_deleted() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let (old, new, addr) = ("greeter.rpc/100", "greeter.rpc/200", "10.0.0.5:8080");
    let target = Some("http://10.0.0.5:8080".to_owned());
    put_all(&mut client, &[(old, addr), (new, addr)]).await;
    let mut discover = EtcdDiscover::new(client.clone(), "greeter.rpc")
        .format(GoZero::new())
        .into_stream();
    assert_eq!(next(&mut discover).await, (old.to_owned(), target.clone()));
    // The second key adds nothing: the next change is the sentinel's.
    put_all(&mut client, &[("greeter.rpc/300", "10.0.0.6:8080")]).await;
    assert_eq!(next(&mut discover).await.0, "greeter.rpc/300");

    // The key the address is announced under goes: it moves to the key left.
    client.delete(old, None).await.expect("delete the old key");
    assert_eq!(next(&mut discover).await, (old.to_owned(), None));
    assert_eq!(next(&mut discover).await, (new.to_owned(), target));

    client.delete(new, None).await.expect("delete the last key");
    assert_eq!(next(&mut discover).await, (new.to_owned(), None));
}
