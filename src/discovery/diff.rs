//! The pure diff between the announced entries and a fresh listing.

use super::entries::{Entries, KeyValue};

/// A change to the raw registry entries, before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawChange {
    /// The entry's key now holds its value.
    Put(KeyValue),
    /// The key is gone.
    Delete(String),
}

impl Diff {
    /// The diff as changes: removals first.
    pub(crate) fn into_changes(self) -> impl Iterator<Item = RawChange> {
        let removed = self.removed.into_iter().map(RawChange::Delete);
        let upserted = self.upserted.into_iter().map(RawChange::Put);
        removed.chain(upserted)
    }
}

/// What a re-list must announce so that the announced set matches etcd again.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Diff {
    /// Keys that were announced and are gone.
    pub(crate) removed: Vec<String>,
    /// Entries that are new, or whose value changed.
    pub(crate) upserted: Vec<KeyValue>,
}

/// Compares what has been announced with what etcd holds now.
///
/// Unchanged keys appear in neither list, so a re-list after a reconnect announces only
/// what really changed while the watch was down. Both lists are in key order.
pub(crate) fn diff(announced: &Entries, listing: &Entries) -> Diff {
    let removed = announced
        .iter()
        .filter(|entry| !listing.contains_key(entry.key()))
        .map(|entry| entry.key().to_owned())
        .collect();
    let upserted = listing
        .iter()
        .filter(|entry| announced.get(entry.key()) != Some(*entry))
        .cloned()
        .collect();
    Diff { removed, upserted }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::entries::{entries, entry};

    #[test]
    fn empty_sets_have_no_diff() {
        assert_eq!(diff(&Entries::new(), &Entries::new()), Diff::default());
    }

    #[test]
    fn first_listing_upserts_everything() {
        let listing = entries(&[("a", "1"), ("b", "2")]);
        let d = diff(&Entries::new(), &listing);
        assert!(d.removed.is_empty());
        assert_eq!(d.upserted.len(), 2);
    }

    #[test]
    fn removes_gone_upserts_new_and_changed_skips_unchanged() {
        let announced = entries(&[("gone", "1"), ("same", "2"), ("changed", "3")]);
        let listing = entries(&[("same", "2"), ("changed", "4"), ("new", "5")]);
        let d = diff(&announced, &listing);
        assert_eq!(d.removed, vec!["gone".to_string()]);
        assert_eq!(d.upserted, vec![entry("changed", "4"), entry("new", "5")]);
    }

    #[test]
    fn everything_gone_removes_everything() {
        let announced = entries(&[("a", "1"), ("b", "2")]);
        let d = diff(&announced, &Entries::new());
        assert_eq!(d.removed, vec!["a".to_string(), "b".to_string()]);
        assert!(d.upserted.is_empty());
    }

    #[test]
    fn applying_the_diff_reaches_the_listing() {
        // A small exhaustive check over three keys and three values each (absent, x, y).
        let values = [None, Some("x"), Some("y")];
        let keys = ["k0", "k1", "k2"];
        let build = |pick: usize| -> Entries {
            keys.iter()
                .enumerate()
                .filter_map(|(i, k)| {
                    let v = values[(pick / 3usize.pow(i as u32)) % 3]?;
                    Some(entry(k, v))
                })
                .collect()
        };
        for a in 0..27 {
            for b in 0..27 {
                let (mut announced, listing) = (build(a), build(b));
                let d = diff(&announced, &listing);
                for key in &d.removed {
                    assert!(announced.remove(key).is_some());
                }
                for entry in d.upserted {
                    assert_ne!(announced.insert(entry.clone()).as_ref(), Some(&entry));
                }
                assert_eq!(announced, listing);
            }
        }
    }
}
