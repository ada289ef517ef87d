//! Raw registry entries, shared between the engine, the hub and the subscribers.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

/// One registry entry: an etcd key and its value, immutable.
///
/// A clone shares the same allocation, so the engine, the hub and every subscriber that
/// hold an entry hold one copy of its key and value between them.
#[derive(Clone)]
pub(crate) struct KeyValue(Arc<Pair>);

struct Pair {
    key: Box<str>,
    value: Box<[u8]>,
}

impl KeyValue {
    pub(crate) fn new(key: impl Into<Box<str>>, value: impl Into<Box<[u8]>>) -> Self {
        KeyValue(Arc::new(Pair {
            key: key.into(),
            value: value.into(),
        }))
    }

    pub(crate) fn key(&self) -> &str {
        &self.0.key
    }

    pub(crate) fn value(&self) -> &[u8] {
        &self.0.value
    }
}

/// Two entries are equal when their keys and values are, shared or not.
impl PartialEq for KeyValue {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.key() == other.key() && self.value() == other.value())
    }
}

impl Eq for KeyValue {}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyValue")
            .field(&self.key())
            .field(&String::from_utf8_lossy(self.value()))
            .finish()
    }
}

/// Raw registry entries by etcd key, in key order.
///
/// A set of shared [`KeyValue`]s, ordered and looked up by key: a pointer each, where a map
/// of owned keys and values would hold its own copy of both.
#[derive(Clone, Default)]
pub(crate) struct Entries(BTreeSet<ByKey>);

/// An entry that compares by its key alone, so that the set can be searched by key.
#[derive(Clone)]
struct ByKey(KeyValue);

impl Borrow<str> for ByKey {
    fn borrow(&self) -> &str {
        self.0.key()
    }
}

impl PartialEq for ByKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.key() == other.0.key()
    }
}

impl Eq for ByKey {}

impl PartialOrd for ByKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.key().cmp(other.0.key())
    }
}

impl Entries {
    pub(crate) fn new() -> Self {
        Entries::default()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entry of `key`, if any.
    pub(crate) fn get(&self, key: &str) -> Option<&KeyValue> {
        self.0.get(key).map(|e| &e.0)
    }

    pub(crate) fn contains_key(&self, key: &str) -> bool {
        self.0.contains(key)
    }

    /// Puts `entry` in place of the entry of its key, if any, and returns that one.
    pub(crate) fn insert(&mut self, entry: KeyValue) -> Option<KeyValue> {
        self.0.replace(ByKey(entry)).map(|e| e.0)
    }

    /// Takes out the entry of `key`, if any.
    pub(crate) fn remove(&mut self, key: &str) -> Option<KeyValue> {
        self.0.take(key).map(|e| e.0)
    }

    /// The entries in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &KeyValue> {
        self.0.iter().map(|e| &e.0)
    }
}

impl FromIterator<KeyValue> for Entries {
    /// The entries; of two with the same key, the last one.
    fn from_iter<I: IntoIterator<Item = KeyValue>>(iter: I) -> Self {
        let mut entries = Entries::new();
        for entry in iter {
            entries.insert(entry);
        }
        entries
    }
}

/// Two sets are equal when they hold the same keys with the same values.
impl PartialEq for Entries {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Entries {}

impl fmt::Debug for Entries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Entries from text pairs, for tests.
#[cfg(test)]
pub(crate) fn entries(pairs: &[(&str, &str)]) -> Entries {
    pairs.iter().map(|(k, v)| entry(k, v)).collect()
}

/// An entry from text, for tests.
#[cfg(test)]
pub(crate) fn entry(key: &str, value: &str) -> KeyValue {
    KeyValue::new(key, value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_equal_by_key_and_value_shared_or_not() {
        let a = entry("k", "v");
        assert_eq!(a, a.clone());
        assert_eq!(a, entry("k", "v"));
        assert_ne!(a, entry("k", "w"));
        assert_ne!(a, entry("j", "v"));
    }

    #[test]
    fn a_clone_shares_the_key_and_the_value() {
        let a = entry("k", "v");
        let b = a.clone();
        assert!(std::ptr::eq(a.key(), b.key()));
        assert!(std::ptr::eq(a.value(), b.value()));
    }

    #[test]
    fn entries_are_looked_up_replaced_and_removed_by_key() {
        let mut set = entries(&[("b", "2"), ("a", "1")]);
        assert_eq!(set.len(), 2);
        assert_eq!(set.get("a"), Some(&entry("a", "1")));
        assert!(set.get("c").is_none());
        assert_eq!(set.insert(entry("a", "9")), Some(entry("a", "1")));
        assert_eq!(set.get("a"), Some(&entry("a", "9")));
        assert_eq!(set.len(), 2);
        assert_eq!(set.insert(entry("c", "3")), None);
        assert!(set.contains_key("c"));
        assert_eq!(set.remove("b"), Some(entry("b", "2")));
        assert_eq!(set.remove("b"), None);
        let keys: Vec<&str> = set.iter().map(KeyValue::key).collect();
        assert_eq!(keys, ["a", "c"], "in key order");
    }

    #[test]
    fn the_last_entry_of_a_key_wins_when_collecting() {
        let set = entries(&[("a", "1"), ("a", "2")]);
        assert_eq!(set.len(), 1);
        assert_eq!(set.get("a"), Some(&entry("a", "2")));
    }

    #[test]
    fn entry_sets_are_equal_by_keys_and_values() {
        assert_eq!(entries(&[("a", "1")]), entries(&[("a", "1")]));
        assert_ne!(entries(&[("a", "1")]), entries(&[("a", "2")]));
        assert_ne!(entries(&[("a", "1")]), entries(&[("a", "1"), ("b", "1")]));
        assert_ne!(entries(&[("a", "1")]), Entries::new());
    }
}
