//! Turning raw registry changes into endpoint changes, per subscriber.

use std::collections::BTreeSet;
use std::sync::Arc;

use tower::discover::Change;
use tracing::{debug, warn};

use super::Discovered;
use super::addresses::{Addresses, Announce};
use super::diff::RawChange;
use super::entries::{Entries, Entry};
use super::recipe::{EndpointRecipe, Skip};
use crate::format::Format;

/// Decodes raw changes with one format, keeping the values that decoded, and announces one
/// endpoint per address however many keys hold it (see [`super::addresses`]).
pub(super) struct Decoder {
    format: Arc<dyn Format>,
    /// The service discovered: keys and values of other services under its prefix are
    /// skipped ([`Format::decode_for`]).
    service: String,
    recipe: EndpointRecipe,
    /// The keys that hold an endpoint's address, with the values they were decoded from:
    /// entries shared with the engine, not copies.
    good: Entries,
    /// Which of those keys hold each address, and which one it is announced under.
    addresses: Addresses,
    /// The keys under the prefix that are not endpoints: their values do not decode, or
    /// they are another service's. Counted in the status, so that a call that finds no
    /// endpoint can say that keys exist but were skipped.
    skipped: BTreeSet<String>,
    /// Why the last key skipped was, with its key.
    skip_reason: Option<String>,
}

/// The keys a decoder skipped: how many, and why the last one was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Skipped {
    pub(super) keys: usize,
    pub(super) reason: Option<String>,
}

impl Decoder {
    pub(super) fn new(format: Arc<dyn Format>, service: String, recipe: EndpointRecipe) -> Self {
        Decoder {
            format,
            service,
            recipe,
            good: Entries::new(),
            addresses: Addresses::default(),
            skipped: BTreeSet::new(),
            skip_reason: None,
        }
    }

    /// The keys under the prefix skipped so far and still there.
    pub(super) fn skipped(&self) -> Skipped {
        Skipped {
            keys: self.skipped.len(),
            reason: self
                .skip_reason
                .clone()
                .filter(|_| !self.skipped.is_empty()),
        }
    }

    fn skip(&mut self, key: &str, reason: String) {
        self.skipped.insert(key.to_owned());
        self.skip_reason = Some(format!("{key}: {reason}"));
    }

    /// How many endpoints are announced: one per address.
    pub(super) fn len(&self) -> usize {
        self.addresses.len()
    }

    /// The endpoint changes for a raw change, keyed by an etcd key that holds the address:
    ///
    /// - a put of a new or changed value that decodes is an insert, unless another key
    ///   holds the same address already: then it only updates that endpoint if its value
    ///   differs;
    /// - a put that does not decode is skipped with a warning naming the key, and the
    ///   endpoint the key had before, if any, stays;
    /// - a put of another service's instance (a nested service's key) is skipped the same
    ///   way, with a `debug!`;
    /// - a delete removes the endpoint once no key holds its address any more.
    pub(super) fn apply(&mut self, change: RawChange) -> Vec<Change<String, Discovered>> {
        match change {
            RawChange::Put(entry) => {
                if self.good.get(entry.key()) == Some(&entry) {
                    return Vec::new();
                }
                match self.endpoint_for(entry.key(), entry.value()) {
                    Ok(discovered) => {
                        self.skipped.remove(entry.key());
                        self.put(entry, discovered)
                    }
                    Err(Skip::Decode(error)) if error.is_other_service() => {
                        debug!(key = entry.key(), service = %self.service, reason = %error, "skipping another service's instance");
                        self.skip(entry.key(), error.to_string());
                        Vec::new()
                    }
                    Err(error) => {
                        let reason = crate::error::Chain(&error).to_string();
                        warn!(key = entry.key(), error = %reason, "skipping undecodable value");
                        self.skip(entry.key(), reason);
                        Vec::new()
                    }
                }
            }
            RawChange::Delete(key) => {
                self.skipped.remove(&key);
                let Some(old) = self.good.remove(&key) else {
                    return Vec::new();
                };
                let Some(addr) = self.addr_of(&old) else {
                    return Vec::new();
                };
                let announces = self.addresses.delete(&key, &addr);
                self.changes(announces, None)
            }
        }
    }

    /// `entry`, which decoded to `discovered`, is good: the changes it makes.
    fn put(&mut self, entry: Entry, discovered: Discovered) -> Vec<Change<String, Discovered>> {
        let previous = self.good.insert(entry.clone());
        let previous = previous.and_then(|old| self.addr_of(&old));
        let addr = discovered.instance.addr.clone();
        let key = entry.key().to_owned();
        let announces = self.addresses.put(entry, &addr, previous.as_deref());
        if let Some(holder) = self.addresses.announced_as(&addr).filter(|h| *h != key) {
            debug!(
                key,
                addr,
                announced_as = holder,
                "address already held by another key: one endpoint"
            );
        }
        self.changes(announces, Some((key, discovered)))
    }

    /// Turns announcements into changes. `just_put` is the key just put and its decoded
    /// endpoint, which an announcement that follows it reuses.
    fn changes(
        &self,
        announces: Vec<Announce>,
        mut just_put: Option<(String, Discovered)>,
    ) -> Vec<Change<String, Discovered>> {
        let mut changes = Vec::with_capacity(announces.len());
        for announce in announces {
            match announce {
                Announce::Remove(key) => {
                    debug!(key, "endpoint removed");
                    changes.push(Change::Remove(key));
                }
                Announce::Insert { key, entry } => {
                    let discovered = match just_put.take_if(|(k, _)| k == entry.key()) {
                        Some((_, discovered)) => Ok(discovered),
                        None => self.endpoint_for(entry.key(), entry.value()),
                    };
                    match discovered {
                        Ok(discovered) => {
                            debug!(key, addr = %discovered.instance.addr, "endpoint inserted");
                            changes.push(Change::Insert(key, discovered));
                        }
                        // It decoded before, with the same format and recipe.
                        Err(error) => {
                            warn!(key, error = %crate::error::Chain(&error), "cannot rebuild endpoint")
                        }
                    }
                }
            }
        }
        changes
    }

    /// The address a good entry holds.
    fn addr_of(&self, entry: &Entry) -> Option<String> {
        let decoded = self
            .format
            .decode_for(&self.service, entry.key(), entry.value());
        decoded.ok().map(|instance| instance.addr)
    }

    /// Decodes a registry value and builds the endpoint for it.
    fn endpoint_for(&self, key: &str, value: &[u8]) -> Result<Discovered, Skip> {
        let instance = self.format.decode_for(&self.service, key, value)?;
        let endpoint = self.recipe.endpoint(&instance)?;
        let route = self.recipe.route(&instance);
        Ok(Discovered {
            endpoint,
            instance,
            route,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EtcdNaming;
    use crate::discovery::EndpointHook;
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
        assert!(
            matches!(apply1(&mut d, put("s/a", OTHER)), Some(Change::Insert(k, _)) if k == "s/a")
        );
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
            Arc::new(crate::GoZero::new()),
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
            Arc::new(crate::GoZero::new()),
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
            Arc::new(crate::GoZero::new()),
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
            Arc::new(|e: Endpoint, _: &crate::Instance| e.user_agent("t").expect("valid"));
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
            Arc::new(crate::Kratos::new()),
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
}
