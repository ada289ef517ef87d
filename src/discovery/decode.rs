//! Turning raw registry changes into endpoint changes, per subscriber.

use std::sync::Arc;

use tower::discover::Change;
use tracing::{debug, warn};

use super::Discovered;
use super::addresses::{Addresses, Announce};
use super::diff::RawChange;
use super::entries::{Entries, KeyValue};
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
    /// Held with their values, so that what this decoder has seen under the prefix (every
    /// key's latest value, [`seen`](Decoder::seen)) is `good` overlaid with these.
    skipped: Entries,
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
            skipped: Entries::new(),
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

    fn skip(&mut self, entry: KeyValue, reason: String) {
        let key = entry.key().to_owned();
        self.skipped.insert(entry);
        self.skip_reason = Some(format!("{key}: {reason}"));
    }

    /// Every key this decoder has seen under the prefix and not seen deleted, with its latest
    /// value, whether it decoded or not: what it must be reconciled from when it falls
    /// behind the shared watch or joins a new one.
    pub(super) fn seen(&self) -> Entries {
        let mut seen = self.good.clone();
        for entry in self.skipped.iter() {
            seen.insert(entry.clone());
        }
        seen
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
                    // Back to the value it is announced with, after a value that was skipped.
                    self.skipped.remove(entry.key());
                    return Vec::new();
                }
                match self.endpoint_for(entry.key(), entry.value()) {
                    Ok(discovered) => {
                        self.skipped.remove(entry.key());
                        self.put(entry, discovered)
                    }
                    Err(Skip::Decode(error)) if error.is_other_service() => {
                        debug!(key = entry.key(), service = %self.service, reason = %error, "skipping another service's instance");
                        let reason = error.to_string();
                        self.skip(entry, reason);
                        Vec::new()
                    }
                    Err(error) => {
                        let reason = crate::error::Chain(&error).to_string();
                        warn!(key = entry.key(), error = %reason, "skipping undecodable value");
                        self.skip(entry, reason);
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
    fn put(&mut self, entry: KeyValue, discovered: Discovered) -> Vec<Change<String, Discovered>> {
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
    fn addr_of(&self, entry: &KeyValue) -> Option<String> {
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
mod tests;
