//! One endpoint per address: which etcd keys hold each address, and which one of them the
//! endpoint is announced under.
//!
//! Two keys can name one address: go-zero names keys after the lease, so a server restarted
//! on the same port has a new key while the old one waits for its lease to expire; a Kratos
//! server restarted with a new id does the same. Each key as its own endpoint would give the
//! address two connections and a double share of the calls. go-zero's own subscriber counts
//! an address once; so does this.
//!
//! The rules, decided here and carried out by the decoder:
//!
//! - An address's endpoint is announced under the first of its keys seen, and keeps that key
//!   for as long as the key holds the address, so a second key changes nothing in the
//!   balancer: no new connection, no second share.
//! - The endpoint follows the value most recently put among its keys (its metadata, its TLS
//!   flag): a put that changes what the endpoint follows is an update under the same key.
//! - The endpoint is removed only when the last of its keys is deleted or moves to another
//!   address.
//! - When the key it is announced under goes while others remain, it moves to the oldest
//!   remaining key: a remove and an insert, so one new connection. This happens only when the
//!   first key goes before a later one, as when the old lease of a restarted go-zero server
//!   expires.

use std::collections::HashMap;

use super::entries::KeyValue;

/// What to announce after a key changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Announce {
    /// The endpoint of an address is new or changed: announce it under `key`, as `entry`
    /// (one of the address's keys and its value) describes it.
    Insert { key: String, entry: KeyValue },
    /// The endpoint announced under this key is gone.
    Remove(String),
}

/// The keys holding each address.
#[derive(Debug, Default)]
pub(super) struct Addresses {
    by_addr: HashMap<Box<str>, Holders>,
}

#[derive(Debug)]
struct Holders {
    /// The entry whose key the endpoint is announced under; its key is one of `keys`'.
    announced: KeyValue,
    /// The entries holding the address, the most recently put last: the endpoint follows it.
    keys: Vec<KeyValue>,
}

/// An address's endpoint as announced: its key, and the entry it follows.
#[derive(Debug, Clone)]
struct Shown {
    key: KeyValue,
    follows: KeyValue,
}

impl Shown {
    /// Whether the endpoint announced as `self` needs no new announcement to be `other`:
    /// the same key, and a value that decodes the same.
    fn same_as(&self, other: &Shown) -> bool {
        self.key.key() == other.key.key() && self.follows.value() == other.follows.value()
    }
}

impl Addresses {
    /// How many addresses have an endpoint.
    pub(super) fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// The key the endpoint of `addr` is announced under, if it has one.
    pub(super) fn announced_as(&self, addr: &str) -> Option<&str> {
        self.by_addr.get(addr).map(|h| h.announced.key())
    }

    /// `entry`'s key now holds `addr`; before, it held `previous` (an address), if anything.
    pub(super) fn put(
        &mut self,
        entry: KeyValue,
        addr: &str,
        previous: Option<&str>,
    ) -> Vec<Announce> {
        let affected: Vec<&str> = match previous {
            Some(previous) if previous != addr => vec![previous, addr],
            _ => vec![addr],
        };
        let before = self.shown(&affected);
        if let Some(previous) = previous {
            self.detach(previous, entry.key());
        }
        self.attach(addr, entry);
        let after = self.shown(&affected);
        announce(before, after)
    }

    /// `key`, which held `addr`, is gone.
    pub(super) fn delete(&mut self, key: &str, addr: &str) -> Vec<Announce> {
        let before = self.shown(&[addr]);
        self.detach(addr, key);
        let after = self.shown(&[addr]);
        announce(before, after)
    }

    fn shown(&self, addrs: &[&str]) -> Vec<Shown> {
        addrs
            .iter()
            .filter_map(|addr| self.by_addr.get(*addr))
            .map(|holders| Shown {
                key: holders.announced.clone(),
                follows: holders.keys.last().expect("never empty").clone(),
            })
            .collect()
    }

    fn attach(&mut self, addr: &str, entry: KeyValue) {
        match self.by_addr.get_mut(addr) {
            Some(holders) => holders.keys.push(entry),
            None => {
                // Most addresses have one key: no room for more until a second comes.
                let holders = Holders {
                    keys: vec![entry.clone()],
                    announced: entry,
                };
                self.by_addr.insert(addr.into(), holders);
            }
        }
    }

    fn detach(&mut self, addr: &str, key: &str) {
        let Some(holders) = self.by_addr.get_mut(addr) else {
            return;
        };
        holders.keys.retain(|entry| entry.key() != key);
        match holders.keys.first() {
            None => {
                self.by_addr.remove(addr);
            }
            Some(oldest) if holders.announced.key() == key => holders.announced = oldest.clone(),
            Some(_) => {}
        }
    }
}

/// The announcements that turn `before` into `after`, removals first: a key announced before
/// and by no address after is removed; an endpoint that is new, or whose key or value
/// changed, is inserted.
fn announce(before: Vec<Shown>, after: Vec<Shown>) -> Vec<Announce> {
    let removed = before
        .iter()
        .filter(|b| !after.iter().any(|a| a.key.key() == b.key.key()))
        .map(|b| Announce::Remove(b.key.key().to_owned()));
    let inserted = after
        .iter()
        .filter(|a| !before.iter().any(|b| b.same_as(a)))
        .map(|a| Announce::Insert {
            key: a.key.key().to_owned(),
            entry: a.follows.clone(),
        });
    removed.chain(inserted).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::entries::entry;

    fn insert(key: &str, entry_key: &str, value: &str) -> Announce {
        Announce::Insert {
            key: key.into(),
            entry: entry(entry_key, value),
        }
    }

    fn remove(key: &str) -> Announce {
        Announce::Remove(key.into())
    }

    /// Puts `key` = `value`, where the value is the address itself (go-zero's values).
    fn put(a: &mut Addresses, key: &str, value: &str, previous: Option<&str>) -> Vec<Announce> {
        a.put(entry(key, value), value, previous)
    }

    #[test]
    fn a_second_key_of_an_address_changes_nothing() {
        let mut a = Addresses::default();
        assert_eq!(
            put(&mut a, "k/1", "h:1", None),
            [insert("k/1", "k/1", "h:1")]
        );
        assert_eq!(put(&mut a, "k/2", "h:1", None), []);
        assert_eq!(a.len(), 1);
        assert_eq!(a.announced_as("h:1"), Some("k/1"));
    }

    #[test]
    fn the_address_stays_until_its_last_key_goes() {
        let mut a = Addresses::default();
        put(&mut a, "k/1", "h:1", None);
        put(&mut a, "k/2", "h:1", None);
        // The later key goes first: nothing to announce.
        assert_eq!(a.delete("k/2", "h:1"), []);
        put(&mut a, "k/2", "h:1", None);
        // The key it is announced under goes first: it moves to the one left.
        assert_eq!(
            a.delete("k/1", "h:1"),
            [remove("k/1"), insert("k/2", "k/2", "h:1")]
        );
        assert_eq!(a.announced_as("h:1"), Some("k/2"));
        assert_eq!(a.delete("k/2", "h:1"), [remove("k/2")]);
        assert_eq!(a.len(), 0);
    }

    #[test]
    fn the_endpoint_follows_the_latest_value_under_its_first_key() {
        let mut a = Addresses::default();
        a.put(entry("k/1", "h:1 w=1"), "h:1", None);
        let update = a.put(entry("k/2", "h:1 w=2"), "h:1", None);
        assert_eq!(update, [insert("k/1", "k/2", "h:1 w=2")]);
        // The key it follows goes: back to the other's value, same key.
        assert_eq!(a.delete("k/2", "h:1"), [insert("k/1", "k/1", "h:1 w=1")]);
        // A put of the same value on the other key changes nothing.
        assert_eq!(a.put(entry("k/2", "h:1 w=1"), "h:1", None), []);
    }

    #[test]
    fn a_key_that_moves_leaves_its_old_address_to_the_keys_left() {
        let mut a = Addresses::default();
        put(&mut a, "k/1", "h:1", None);
        // Sole key of its address moves: a plain update under the same key.
        let moved = put(&mut a, "k/1", "h:2", Some("h:1"));
        assert_eq!(moved, [insert("k/1", "k/1", "h:2")]);
        assert_eq!(a.announced_as("h:1"), None);
        // Shared address: the endpoint stays, under the key left.
        put(&mut a, "k/2", "h:2", None);
        let moved = put(&mut a, "k/1", "h:3", Some("h:2"));
        assert_eq!(
            moved,
            [insert("k/2", "k/2", "h:2"), insert("k/1", "k/1", "h:3")]
        );
        // Joins an address announced under another key: its own key is removed.
        let moved = put(&mut a, "k/1", "h:2", Some("h:3"));
        assert_eq!(moved, [remove("k/1")]);
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn every_sequence_keeps_one_endpoint_per_address() {
        // Every sequence of four steps over three keys and two addresses (a put of either
        // address or a delete, per key): what was announced is always one endpoint per
        // address held, under one of the keys that hold it.
        let keys = ["k/0", "k/1", "k/2"];
        let addrs = ["h:1", "h:2"];
        let steps = keys.len() * (addrs.len() + 1);
        for sequence in 0..steps.pow(4) {
            let mut a = Addresses::default();
            let mut held: HashMap<&str, &str> = HashMap::new();
            let mut balancer: HashMap<String, String> = HashMap::new();
            for i in 0..4 {
                let step = sequence / steps.pow(i) % steps;
                let key = keys[step / (addrs.len() + 1)];
                let announces = match addrs.get(step % (addrs.len() + 1)) {
                    Some(addr) => {
                        let previous = held.insert(key, addr);
                        a.put(entry(key, addr), addr, previous)
                    }
                    None => match held.remove(key) {
                        Some(addr) => a.delete(key, addr),
                        None => Vec::new(),
                    },
                };
                for announce in announces {
                    match announce {
                        Announce::Insert { key, entry } => {
                            balancer.insert(key, String::from_utf8_lossy(entry.value()).into())
                        }
                        Announce::Remove(key) => balancer.remove(&key),
                    };
                }
                let mut expected: Vec<&str> = held.values().copied().collect();
                expected.sort_unstable();
                expected.dedup();
                let mut got: Vec<&str> = balancer.values().map(String::as_str).collect();
                got.sort_unstable();
                assert_eq!(got, expected, "sequence {sequence} step {i}");
                for (key, addr) in &balancer {
                    assert_eq!(
                        held.get(key.as_str()),
                        Some(&addr.as_str()),
                        "{key} holds {addr}"
                    );
                }
            }
        }
    }
}
