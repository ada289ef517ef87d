//! `tonic-etcd watch`: one line per change of a service's instances, from the current listing
//! on. List, then watch from the listing's revision + 1; after a compaction or a lost
//! connection, list again and print the difference, so no change is missed or repeated.
//!
//! The decisions ([`Known::put`], [`Known::delete`], [`Known::relist`]) are pure; [`run`]
//! does the I/O.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{SignalKind, signal};
use tonic_etcd::Format;
use tonic_etcd::etcd_client::{Client, EventType, GetOptions, WatchOptions};

use crate::etcd::chain;
use crate::print_line;

/// What a key says: the address it carries, or why its value does not decode.
pub type Entry = Result<String, String>;

/// A change to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `present` (in the first listing), `added`, `updated` or `removed`.
    pub what: &'static str,
    /// The etcd key.
    pub key: String,
    /// What the key says (for `removed`: what it said).
    pub entry: Entry,
}

/// The keys known so far, and what each says.
#[derive(Debug, Default)]
pub struct Known(BTreeMap<String, Entry>);

impl Known {
    /// A put of `key`: `added` if new, `updated` if it now says something else, nothing if
    /// it says the same (a duplicate event, or a lease refresh).
    pub fn put(&mut self, key: &str, entry: Entry) -> Option<Change> {
        let what = match self.0.insert(key.to_owned(), entry.clone()) {
            None => "added",
            Some(old) if old == entry => return None,
            Some(_) => "updated",
        };
        Some(Change {
            what,
            key: key.to_owned(),
            entry,
        })
    }

    /// A delete of `key`: `removed` with what it said, nothing for an unknown key.
    pub fn delete(&mut self, key: &str) -> Option<Change> {
        let entry = self.0.remove(key)?;
        Some(Change {
            what: "removed",
            key: key.to_owned(),
            entry,
        })
    }

    /// A fresh listing: the difference from what is known (removed first, then added and
    /// updated). `first` marks every key of the first listing `present`.
    pub fn relist(&mut self, listing: BTreeMap<String, Entry>, first: bool) -> Vec<Change> {
        let gone: Vec<String> = self
            .0
            .keys()
            .filter(|k| !listing.contains_key(*k))
            .cloned()
            .collect();
        let mut changes: Vec<Change> = gone.iter().filter_map(|k| self.delete(k)).collect();
        for (key, entry) in listing {
            if let Some(mut change) = self.put(&key, entry) {
                if first {
                    change.what = "present";
                }
                changes.push(change);
            }
        }
        changes
    }
}

/// One output line: time (RFC 3339, UTC, milliseconds), change, address, key.
pub fn line(at: SystemTime, change: &Change) -> String {
    let addr = match &change.entry {
        Ok(addr) => addr.clone(),
        Err(why) => format!("<undecodable: {why}>"),
    };
    format!(
        "{}  {:<8} {:<21}  {}",
        humantime::format_rfc3339_millis(at),
        change.what,
        addr,
        change.key
    )
}

fn entry(format: &dyn Format, key: &str, value: &[u8]) -> Entry {
    format
        .decode(key, value)
        .map(|i| i.addr)
        .map_err(|e| e.to_string())
}

/// Prints changes under `prefix` until SIGINT or SIGTERM or until stdout is closed (then
/// `Ok`), retrying a lost etcd every second with a warning on stderr.
pub async fn run(mut client: Client, prefix: &str, format: &dyn Format) -> Result<(), String> {
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut known = Known::default();
    let mut first = true;
    loop {
        tokio::select! {
            // Signals first: a stop wins over a change that arrives at the same time.
            biased;
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            stop = follow(&mut client, prefix, format, &mut known, &mut first) => match stop {
                Stop::OutputClosed => return Ok(()),
                Stop::Interrupted(why) => {
                    eprintln!("tonic-etcd: watch of {prefix} interrupted, listing again in 1s: {why}");
                }
            }
        }
        tokio::select! {
            biased;
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Why [`follow`] stopped.
enum Stop {
    /// An etcd error, or a compaction that needs a re-list.
    Interrupted(String),
    /// Nobody reads stdout any more.
    OutputClosed,
}

/// Lists, prints the difference, then watches from the listing's revision + 1 and prints
/// every change, until etcd fails or stdout is closed.
async fn follow(
    client: &mut Client,
    prefix: &str,
    format: &dyn Format,
    known: &mut Known,
    first: &mut bool,
) -> Stop {
    let listing = match client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
    {
        Ok(listing) => listing,
        Err(e) => return Stop::Interrupted(chain(&e)),
    };
    let revision = listing.header().map_or(0, |h| h.revision());
    let entries = listing
        .kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let entry = entry(format, &key, kv.value());
            (key, entry)
        })
        .collect();
    for change in known.relist(entries, std::mem::take(first)) {
        if !print_line(&line(SystemTime::now(), &change)) {
            return Stop::OutputClosed;
        }
    }
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut stream = match client.watch(prefix, Some(options)).await {
        Ok(stream) => stream,
        Err(e) => return Stop::Interrupted(chain(&e)),
    };
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return Stop::Interrupted("the watch stream ended".into()),
            Err(e) => return Stop::Interrupted(chain(&e)),
        };
        if response.canceled() {
            let compacted = response.compact_revision();
            return Stop::Interrupted(format!("watch canceled (compacted at {compacted})"));
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let change = match event.event_type() {
                EventType::Put => known.put(&key, entry(format, &key, kv.value())),
                EventType::Delete => known.delete(&key),
            };
            if let Some(change) = change
                && !print_line(&line(SystemTime::now(), &change))
            {
                return Stop::OutputClosed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(addr: &str) -> Entry {
        Ok(addr.into())
    }

    #[test]
    fn a_put_adds_then_updates_and_a_repeat_prints_nothing() {
        let mut known = Known::default();
        assert_eq!(known.put("k", ok("a:1")).unwrap().what, "added");
        assert_eq!(known.put("k", ok("a:1")), None);
        assert_eq!(known.put("k", ok("a:2")).unwrap().what, "updated");
    }

    #[test]
    fn a_delete_names_the_address_it_removes() {
        let mut known = Known::default();
        known.put("k", ok("a:1"));
        let change = known.delete("k").unwrap();
        assert_eq!((change.what, change.entry), ("removed", ok("a:1")));
        assert_eq!(known.delete("k"), None);
    }

    #[test]
    fn a_relist_prints_only_the_difference() {
        let mut known = Known::default();
        let first = known.relist(
            [("k1".into(), ok("a:1")), ("k2".into(), ok("a:2"))].into(),
            true,
        );
        assert!(first.iter().all(|c| c.what == "present"));
        let again = known.relist(
            [("k2".into(), ok("a:3")), ("k3".into(), ok("a:4"))].into(),
            false,
        );
        let whats: Vec<_> = again.iter().map(|c| (c.what, c.key.as_str())).collect();
        assert_eq!(
            whats,
            [("removed", "k1"), ("updated", "k2"), ("added", "k3")]
        );
    }

    #[test]
    fn a_line_has_time_change_address_and_key() {
        let change = Change {
            what: "added",
            key: "svc/k".into(),
            entry: ok("10.0.0.1:80"),
        };
        let text = line(SystemTime::UNIX_EPOCH, &change);
        assert!(
            text.starts_with("1970-01-01T00:00:00.000Z  added "),
            "{text}"
        );
        assert!(
            text.contains("10.0.0.1:80") && text.ends_with("svc/k"),
            "{text}"
        );
        let bad = Change {
            what: "added",
            key: "k".into(),
            entry: Err("bad json".into()),
        };
        assert!(line(SystemTime::UNIX_EPOCH, &bad).contains("<undecodable: bad json>"));
    }
}
