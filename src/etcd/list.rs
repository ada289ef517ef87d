//! Listing a prefix in pages, all at one revision.
//!
//! A prefix is read as a series of ranges of at most [`PAGE`] keys: the first at the current
//! revision, each next one from just after the last key of the page before, at the first
//! page's revision. So the listing is one consistent snapshot however many keys there are
//! (etcd's Go resolver and kube's reflector page the same way), and no response comes near
//! the client's 4 MiB decode limit with values of a few KiB; the limit is raised anyway, as
//! for the watch, for values up to etcd's 1.5 MiB request limit. Each page goes through the
//! crate's one-shot [`request`] path. A compaction past the first page's revision in the
//! middle fails the listing, which the caller starts again.

use std::sync::Arc;
use std::time::Duration;

use super::history::Header;
use super::request::request;
use super::seam::Etcd;
use crate::error::Error;

/// The most keys one page holds.
pub(crate) const PAGE: i64 = 1000;

/// Lists every key under `prefix`, handing each page's keys and values to `page` in key
/// order, and returns the first page's header: the listing is current at its revision. Each
/// page may take `deadline`.
pub(crate) async fn list_prefix(
    etcd: &dyn Etcd,
    prefix: &str,
    deadline: Duration,
    mut page: impl FnMut(&[(Vec<u8>, Vec<u8>)]),
) -> Result<Header, Error> {
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut first = Header::default();
    let mut revision = 0;
    loop {
        let get = || async {
            let range = etcd.range(from.clone(), end.clone(), PAGE, revision);
            range.await.map_err(|source| Error::List {
                prefix: prefix.to_owned(),
                source: Arc::new(source),
            })
        };
        let response = request("listing the prefix", deadline, get).await?;
        if revision == 0 {
            first = response.header;
            revision = first.revision;
        }
        page(&response.kvs);
        match (response.more, response.kvs.last()) {
            (true, Some((last, _))) => from = after(last),
            _ => return Ok(first),
        }
        // A long listing must not hold the runtime's thread between pages.
        tokio::task::yield_now().await;
    }
}

/// The cluster's current header, through a linearizable count-only read of `prefix`, which
/// a member answers only in step with the leader; it may take `deadline`.
pub(crate) async fn cluster_header(
    etcd: &dyn Etcd,
    prefix: &str,
    deadline: Duration,
) -> Result<Header, Error> {
    let end = prefix_end(prefix.as_bytes());
    let count = || async {
        let count = etcd.count(prefix.as_bytes().to_vec(), end.clone());
        count.await.map_err(|source| Error::List {
            prefix: prefix.to_owned(),
            source: Arc::new(source),
        })
    };
    request("reading the cluster's revision", deadline, count).await
}

/// The end of the range of every key that starts with `prefix` (etcd's `GetPrefixRangeEnd`):
/// the prefix with its last byte below 0xff incremented and the rest dropped; `\0`, meaning
/// "to the end", when there is no such byte.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&b| b < 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

/// The smallest key after `key`.
fn after(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_of_a_prefix_ends_at_its_successor() {
        assert_eq!(prefix_end(b"services/greeter/"), b"services/greeter0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn the_next_page_starts_just_after_the_last_key() {
        assert_eq!(after(b"p/a"), b"p/a\0");
        assert!(after(b"p/a").as_slice() > b"p/a".as_slice());
        assert!(after(b"p/a").as_slice() < b"p/a\x01".as_slice());
    }
}
