use super::*;
use crate::discovery::recipe::EndpointHook;
use crate::format::{EtcdNaming, GoZero, Instance, Kratos};
use tonic::transport::Endpoint;

fn put(key: &str, value: &str) -> RawChange {
    RawChange::Put(crate::discovery::entries::entry(key, value))
}

/// Applies a change that makes at most one endpoint change.
fn apply1(d: &mut Decoder, change: RawChange) -> Option<Change<String, Discovered>> {
    let mut changes = d.apply(change);
    assert!(changes.len() <= 1, "{changes:?}");
    changes.pop()
}

const GOOD: &str = r#"{"Addr":"127.0.0.1:1"}"#;
const OTHER: &str = r#"{"Addr":"127.0.0.1:2"}"#;

#[test]
fn a_bad_value_keeps_the_previous_endpoint() {
    let mut d = Decoder::new(Arc::new(EtcdNaming), "s".into(), EndpointRecipe::default());
    assert!(matches!(
        apply1(&mut d, put("s/a", GOOD)),
        Some(Change::Insert(..))
    ));
    assert!(apply1(&mut d, put("s/a", "garbage")).is_none());
    // Back to the value already announced: nothing to do.
    assert!(apply1(&mut d, put("s/a", GOOD)).is_none());
    assert!(matches!(apply1(&mut d, put("s/a", OTHER)), Some(Change::Insert(k, _)) if k == "s/a"));
    assert!(matches!(
        apply1(&mut d, RawChange::Delete("s/a".into())),
        Some(Change::Remove(_))
    ));
}

#[test]
fn a_bad_key_is_never_announced_or_removed() {
    let mut d = Decoder::new(Arc::new(EtcdNaming), "s".into(), EndpointRecipe::default());
    assert!(apply1(&mut d, put("s/bad", "{}")).is_none());
    assert!(apply1(&mut d, RawChange::Delete("s/bad".into())).is_none());
}

#[test]
fn skipped_keys_are_counted_until_they_decode_or_go() {
    let mut d = Decoder::new(Arc::new(EtcdNaming), "s".into(), EndpointRecipe::default());
    assert_eq!(d.skipped(), Skipped::default());
    d.apply(put("s/a", "127.0.0.1:1"));
    d.apply(put("s/admin/127.0.0.1:2", GOOD));
    d.apply(put("s/b", GOOD));
    let skipped = d.skipped();
    assert_eq!(skipped.keys, 2, "{skipped:?}");
    let reason = skipped.reason.expect("a reason");
    assert!(
        reason.starts_with("s/admin/127.0.0.1:2: key is not one segment"),
        "{reason}"
    );
    // Fixed in place: no longer skipped.
    d.apply(put("s/a", OTHER));
    assert_eq!(d.skipped().keys, 1);
    d.apply(RawChange::Delete("s/admin/127.0.0.1:2".into()));
    assert_eq!(
        d.skipped(),
        Skipped::default(),
        "no reason once none is skipped"
    );
    d.apply(put("s/c", "127.0.0.1:8080"));
    let reason = d.skipped().reason.expect("a reason");
    assert!(
        reason.starts_with("s/c: not an etcd-naming JSON value"),
        "{reason}"
    );
}

#[test]
fn a_nested_service_key_is_never_announced_or_removed() {
    let mut d = Decoder::new(Arc::new(EtcdNaming), "s".into(), EndpointRecipe::default());
    assert!(apply1(&mut d, put("s/admin/127.0.0.1:1", GOOD)).is_none());
    assert!(apply1(&mut d, put("s/127.0.0.1:2", OTHER)).is_some());
    assert!(apply1(&mut d, RawChange::Delete("s/admin/127.0.0.1:1".into())).is_none());
    assert_eq!(d.len(), 1);
}

/// The changes as `(key, Some(addr))` for an insert, `(key, None)` for a remove.
fn seen(changes: Vec<Change<String, Discovered>>) -> Vec<(String, Option<String>)> {
    let seen = |change: Change<String, Discovered>| match change {
        Change::Insert(key, d) => (key, Some(d.instance.addr)),
        Change::Remove(key) => (key, None),
    };
    changes.into_iter().map(seen).collect()
}

fn pair(key: &str, addr: Option<&str>) -> (String, Option<String>) {
    (key.to_owned(), addr.map(str::to_owned))
}

#[test]
fn one_address_under_two_keys_is_one_endpoint() {
    let mut d = Decoder::new(
        Arc::new(GoZero::new()),
        "s".into(),
        EndpointRecipe::default(),
    );
    let a = "127.0.0.1:1";
    assert_eq!(seen(d.apply(put("s/1", a))), [pair("s/1", Some(a))]);
    assert_eq!(
        seen(d.apply(put("s/2", a))),
        [],
        "a second key adds nothing"
    );
    assert_eq!(seen(d.apply(put("s/3", "127.0.0.1:2"))).len(), 1);
    assert_eq!(d.len(), 2, "two addresses");
    // The first key goes: the address stays, under the key left.
    let moved = seen(d.apply(RawChange::Delete("s/1".into())));
    assert_eq!(moved, [pair("s/1", None), pair("s/2", Some(a))]);
    assert_eq!(d.len(), 2);
    // The last key goes: the address goes.
    assert_eq!(
        seen(d.apply(RawChange::Delete("s/2".into()))),
        [pair("s/2", None)]
    );
    assert_eq!(d.len(), 1);
}

#[test]
fn a_later_key_of_an_address_going_first_changes_nothing() {
    let mut d = Decoder::new(
        Arc::new(GoZero::new()),
        "s".into(),
        EndpointRecipe::default(),
    );
    let a = "127.0.0.1:1";
    d.apply(put("s/1", a));
    d.apply(put("s/2", a));
    assert_eq!(seen(d.apply(RawChange::Delete("s/2".into()))), []);
    assert_eq!(
        seen(d.apply(RawChange::Delete("s/1".into()))),
        [pair("s/1", None)]
    );
}

#[test]
fn a_key_that_changes_address_leaves_the_old_one_to_its_other_key() {
    let mut d = Decoder::new(
        Arc::new(GoZero::new()),
        "s".into(),
        EndpointRecipe::default(),
    );
    let (a, b) = ("127.0.0.1:1", "127.0.0.1:2");
    d.apply(put("s/1", a));
    // Sole key: a plain update, never a remove then an insert.
    assert_eq!(seen(d.apply(put("s/1", b))), [pair("s/1", Some(b))]);
    d.apply(put("s/2", b));
    let moved = seen(d.apply(put("s/1", a)));
    assert_eq!(moved, [pair("s/2", Some(b)), pair("s/1", Some(a))]);
}

#[test]
fn the_hook_shapes_the_endpoint() {
    let hook: EndpointHook =
        Arc::new(|e: Endpoint, _: &Instance| e.user_agent("t").expect("valid"));
    // Without the `tls` feature, `hook` is the only field.
    #[allow(clippy::needless_update)]
    let recipe = EndpointRecipe {
        hook: Some(hook),
        ..EndpointRecipe::default()
    };
    let mut d = Decoder::new(Arc::new(EtcdNaming), "s".into(), recipe);
    assert!(apply1(&mut d, put("s/a", GOOD)).is_some());
}

fn uri_of(change: Option<Change<String, Discovered>>) -> String {
    match change {
        Some(Change::Insert(_, d)) => d.endpoint.uri().to_string(),
        other => panic!("expected an insert, got {other:?}"),
    }
}

#[test]
fn an_instance_that_asks_for_tls_gets_https() {
    let mut d = Decoder::new(
        Arc::new(Kratos::new()),
        "s".into(),
        EndpointRecipe::default(),
    );
    let value = r#"{"id":"a","name":"s","endpoints":["grpcs://127.0.0.1:9443"]}"#;
    let uri = uri_of(apply1(&mut d, put("/microservices/s/a", value)));
    assert_eq!(uri, "https://127.0.0.1:9443/");
}

#[cfg(feature = "tls")]
#[test]
fn a_tls_configuration_makes_every_endpoint_https() {
    let recipe = EndpointRecipe {
        tls: Some(crate::discovery::recipe::BackendTls::Tonic(
            tonic::transport::ClientTlsConfig::new(),
        )),
        ..EndpointRecipe::default()
    };
    let mut d = Decoder::new(Arc::new(EtcdNaming), "s".into(), recipe);
    assert_eq!(
        uri_of(apply1(&mut d, put("s/a", GOOD))),
        "https://127.0.0.1:1/"
    );
}

#[test]
fn what_it_has_seen_is_every_keys_latest_value_decoded_or_not() {
    use crate::discovery::entries::entries;
    let mut d = Decoder::new(Arc::new(EtcdNaming), "s".into(), EndpointRecipe::default());
    d.apply(put("s/a", GOOD));
    d.apply(put("s/b", "garbage"));
    assert_eq!(d.seen(), entries(&[("s/a", GOOD), ("s/b", "garbage")]));
    // A bad value over a good one: seen as it is, while the endpoint keeps the good one.
    d.apply(put("s/a", "worse"));
    assert_eq!(d.seen(), entries(&[("s/a", "worse"), ("s/b", "garbage")]));
    assert_eq!(d.len(), 1);
    assert_eq!(d.skipped().keys, 2);
    // Back to the announced value: no longer skipped.
    d.apply(put("s/a", GOOD));
    assert_eq!(d.seen(), entries(&[("s/a", GOOD), ("s/b", "garbage")]));
    assert_eq!(d.skipped().keys, 1);
    d.apply(RawChange::Delete("s/b".into()));
    d.apply(RawChange::Delete("s/a".into()));
    assert_eq!(d.seen(), entries(&[]));
    assert_eq!(d.skipped(), Skipped::default());
}
