//! Property tests of the decoders, and the fuzz-style target.
//!
//! - `*_never_panics`: 25,000 cases per format, 125,000 in all, each decoding arbitrary or
//!   nearly valid bytes under an arbitrary key. A decoder may accept or refuse, but it never
//!   panics; a refusal says why (its `Display` is not empty), and an acceptance names an
//!   address that makes a valid endpoint URI.
//! - `bad_addresses_are_refused_with_a_reason`: a format's own value around a bad address.
//! - `written_instances_decode_to_themselves`: writing, then reading, is the identity on
//!   what each format carries.
//!
//! The fuzz-style target is [`fuzz_decoders_for_longer`]: an `#[ignore]`d proptest, not a
//! cargo-fuzz crate, so it needs no nightly toolchain and runs wherever the tests run. It
//! feeds every input to every decoder, `TONIC_ETCD_FUZZ_CASES` times (default 1,000,000):
//!
//! ```text
//! TONIC_ETCD_FUZZ_CASES=10000000 cargo test --release --test formats -- --ignored fuzz_decoders
//! ```

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value};
use tonic::transport::Endpoint;
use tonic_etcd::{Blog, EtcdNaming, Format, GoZero, Kratos, PlainAddr};
use tonic_etcd::{DecodeError, Instance};

/// Cases per format in the regular run.
const CASES_PER_FORMAT: u32 = 25_000;

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

/// Decodes, and checks that the outcome is well formed.
fn check(format: &dyn Format, key: &str, value: &[u8]) -> Result<(), TestCaseError> {
    match format.decode(key, value) {
        Ok(instance) => {
            let uri = format!("http://{}", instance.addr);
            prop_assert!(Endpoint::from_shared(uri).is_ok(), "{:?}", instance.addr);
        }
        Err(error) => prop_assert!(!error.to_string().is_empty(), "{error:?}"),
    }
    Ok(())
}

/// Strings that look like addresses, or nearly.
fn addr_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ \t\n]?[a-z0-9.:_%@\\[\\]-]{0,24}[ \n]?",
        "(10\\.0\\.0\\.[0-9]{1,3}|\\[::1\\]|[a-z]{1,8}):[0-9+-]{1,6}",
        "(grpcs?|GRPC|http)(://|:)[a-z0-9.:@\\[\\]]{0,20}([/?#][a-zA-Z=&/]{0,12})?",
        ".{0,16}",
    ]
}

/// JSON values whose object keys are the fields the formats look for.
fn json_like() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        addr_like().prop_map(Value::from),
    ];
    let field = prop_oneof![
        Just("Op"),
        Just("Addr"),
        Just("Metadata"),
        Just("ID"),
        Just("IP"),
        Just("id"),
        Just("name"),
        Just("version"),
        Just("metadata"),
        Just("endpoints"),
        Just("weight"),
        Just("zone"),
    ]
    .prop_map(str::to_owned);
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(field.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A valid value of one of the formats, with a few bytes flipped, cut or added.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let seeds = [
        r#"{"Op":0,"Addr":"10.0.0.1:50051","Metadata":"{\"weight\":10}"}"#,
        r#"{"id":"a","name":"g","version":"v1","metadata":{"weight":"1"},"endpoints":["http://a:1","grpc://10.0.0.5:9000?isSecure=true"]}"#,
        r#"{"ID":1,"IP":"127.0.0.1:8080"}"#,
        "10.0.0.5:8080",
    ];
    (
        0..seeds.len(),
        vec((any::<usize>(), any::<u8>(), 0..3u8), 1..6),
    )
        .prop_map(move |(seed, edits)| {
            let mut bytes = seeds[seed].as_bytes().to_vec();
            for (at, byte, op) in edits {
                let at = at % (bytes.len() + 1);
                match op {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, byte),
                }
            }
            bytes
        })
}

/// Any key: decoders are handed the key too, though none of the built-in ones reads it.
fn key() -> impl Strategy<Value = String> {
    ".{0,32}"
}

/// Any value a decoder might be handed.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..64),
        ".{0,48}".prop_map(String::into_bytes),
        addr_like().prop_map(String::into_bytes),
        json_like().prop_map(|v| v.to_string().into_bytes()),
        mutated(),
    ]
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(CASES_PER_FORMAT))]

    #[test]
    fn etcd_naming_never_panics(key in key(), value in value()) {
        check(&EtcdNaming, &key, &value)?;
    }

    #[test]
    fn go_zero_never_panics(key in key(), value in value()) {
        check(&GoZero::new(), &key, &value)?;
    }

    #[test]
    fn kratos_never_panics(key in key(), value in value()) {
        check(&Kratos::new(), &key, &value)?;
    }

    #[test]
    fn blog_never_panics(key in key(), value in value()) {
        check(&Blog::new(), &key, &value)?;
    }

    #[test]
    fn plain_addr_never_panics(key in key(), value in value()) {
        check(&PlainAddr, &key, &value)?;
    }
}

/// Addresses every decoder must refuse.
fn bad_addr() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.]{1,12}",
        "[a-z0-9.]{0,12}:0",
        "[a-z0-9.]{1,12}:(6553[6-9]|[7-9][0-9]{4}|[1-9][0-9]{5})",
        "[a-z]{1,5}[ @/][a-z]{1,5}:80",
        ":[1-9][0-9]{0,3}",
    ]
}

/// Addresses every decoder must accept.
fn good_addr() -> impl Strategy<Value = String> {
    "(10\\.0\\.0\\.[0-9]{1,3}|\\[::1\\]|\\[fd00::[0-9a-f]{1,4}\\]|[a-z][a-z0-9-]{0,10}(\\.[a-z]{1,5}){0,2}):[1-9][0-9]{0,3}"
}

/// An instance with what a format can carry: metadata and TLS only where it has them.
fn instance(format: usize) -> impl Strategy<Value = Instance> {
    let meta = (
        prop::option::of(any::<u32>()),
        prop::option::of(".{0,8}"),
        prop::option::of(".{1,8}"),
        btree_map("x-[a-z]{1,6}", ".{0,8}", 0..3),
        any::<bool>(),
    );
    (good_addr(), meta).prop_map(move |(addr, (weight, zone, version, attributes, tls))| {
        let mut instance = Instance::new(addr);
        if matches!(format, 0 | 2) {
            instance.metadata.weight = weight;
            instance.metadata.zone = zone;
            instance.metadata.version = version;
            instance.metadata.attributes = attributes;
        }
        instance.tls(format == 2 && tls)
    })
}

proptest! {
    #![proptest_config(config(2_000))]

    #[test]
    fn bad_addresses_are_refused_with_a_reason(addr in bad_addr(), format in 0..5usize) {
        let format = &formats()[format];
        let value = format.value("greeter", &Instance::new(addr.clone()));
        let error: DecodeError = match format.decode("greeter/x", &value) {
            Ok(instance) => return Err(TestCaseError::fail(format!("{format:?} took {instance:?}"))),
            Err(error) => error,
        };
        prop_assert!(!error.to_string().is_empty(), "{error:?}");
    }

    #[test]
    fn written_instances_decode_to_themselves(
        (format, instance) in (0..5usize).prop_flat_map(|f| (Just(f), instance(f)))
    ) {
        let format = &formats()[format];
        let key = format.key("greeter", &instance, 7);
        prop_assert!(key.starts_with(&format.prefix("greeter")), "{key}");
        let value = format.value("greeter", &instance);
        prop_assert_eq!(format.decode(&key, &value).ok(), Some(instance));
    }
}

/// The fuzz-style target: every input to every decoder, `TONIC_ETCD_FUZZ_CASES` times.
#[test]
#[ignore = "long-running: set TONIC_ETCD_FUZZ_CASES and run with --ignored"]
fn fuzz_decoders_for_longer() {
    let cases = std::env::var("TONIC_ETCD_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let formats = formats();
    let mut runner = proptest::test_runner::TestRunner::new(config(cases));
    let result = runner.run(&(key(), value()), |(key, value)| {
        for format in &formats {
            check(format.as_ref(), &key, &value)?;
        }
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
