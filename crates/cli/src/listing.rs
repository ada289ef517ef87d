//! One listing of a service's keys, decoded: the rows `ls` shows and `probe` calls.
//!
//! [`rows`] is the pure part (decode, flag duplicates); [`fetch`] reads etcd.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tonic_etcd::Format;
use tonic_etcd::etcd_client::{Client, GetOptions};

/// One key under the service's prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The etcd key.
    pub key: String,
    /// The address the value names, if it decodes.
    pub addr: Option<String>,
    /// Whether clients must connect with TLS.
    pub tls: bool,
    /// The instance's weight, from its metadata.
    pub weight: Option<u32>,
    /// The instance's zone, from its metadata.
    pub zone: Option<String>,
    /// The instance's version, from its metadata.
    pub version: Option<String>,
    /// The lease that holds the key, 0 for none.
    pub lease_id: i64,
    /// Seconds the lease has left: `None` without a lease, -1 if etcd no longer knows it.
    pub ttl_secs: Option<i64>,
    /// What is wrong with this key: a value that does not decode, or an address that other
    /// keys carry too. `None` when all is well.
    pub problem: Option<String>,
}

/// A raw key-value pair: key, value, lease.
pub type Kv = (String, Vec<u8>, i64);

/// Decodes `kvs` with `format` and flags what is wrong: values that do not decode, and
/// addresses carried by more than one key. `ttls` maps a lease to its seconds left.
pub fn rows(kvs: &[Kv], format: &dyn Format, ttls: &HashMap<i64, i64>) -> Vec<Row> {
    let mut rows: Vec<Row> = kvs
        .iter()
        .map(|(key, value, lease)| {
            let mut row = Row {
                key: key.clone(),
                addr: None,
                tls: false,
                weight: None,
                zone: None,
                version: None,
                lease_id: *lease,
                ttl_secs: (*lease != 0).then(|| ttls.get(lease).copied().unwrap_or(-1)),
                problem: None,
            };
            match format.decode(key, value) {
                Ok(instance) => {
                    row.addr = Some(instance.addr);
                    row.tls = instance.tls;
                    row.weight = instance.metadata.weight;
                    row.zone = instance.metadata.zone;
                    row.version = instance.metadata.version;
                }
                Err(error) => row.problem = Some(format!("does not decode: {error}")),
            }
            row
        })
        .collect();
    let mut keys_by_addr: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in &rows {
        if let Some(addr) = &row.addr {
            keys_by_addr
                .entry(addr.clone())
                .or_default()
                .push(row.key.clone());
        }
    }
    for row in &mut rows {
        let Some(addr) = &row.addr else { continue };
        let others: Vec<&str> = keys_by_addr[addr]
            .iter()
            .filter(|k| **k != row.key)
            .map(String::as_str)
            .collect();
        if !others.is_empty() {
            row.problem = Some(format!("address also under {}", others.join(", ")));
        }
    }
    rows
}

/// Reads every key under `prefix`, and the time left of each lease that holds one.
pub async fn fetch(
    client: &mut Client,
    prefix: &str,
    format: &dyn Format,
) -> Result<Vec<Row>, String> {
    let response = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("cannot list {prefix}: {}", crate::etcd::chain(&e)))?;
    let kvs: Vec<Kv> = response
        .kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            (key, kv.value().to_vec(), kv.lease())
        })
        .collect();
    let mut ttls = HashMap::new();
    for (_, _, lease) in &kvs {
        if *lease == 0 || ttls.contains_key(lease) {
            continue;
        }
        // A lease that expired since the listing reads as -1: shown, not fatal.
        let ttl = match client.lease_time_to_live(*lease, None).await {
            Ok(response) => response.ttl(),
            Err(_) => -1,
        };
        ttls.insert(*lease, ttl);
    }
    Ok(rows(&kvs, format, &ttls))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_etcd::{EtcdNaming, Format, Instance};

    fn kv(key: &str, instance: &Instance, lease: i64) -> Kv {
        (key.into(), EtcdNaming.value("svc", instance), lease)
    }

    #[test]
    fn decodes_metadata_and_lease_time() {
        let instance = Instance::new("10.0.0.1:80").weight(5).zone("z1");
        let ttls = HashMap::from([(7, 4)]);
        let rows = rows(&[kv("svc/a", &instance, 7)], &EtcdNaming, &ttls);
        assert_eq!(rows[0].addr.as_deref(), Some("10.0.0.1:80"));
        assert_eq!(rows[0].weight, Some(5));
        assert_eq!(rows[0].zone.as_deref(), Some("z1"));
        assert_eq!(rows[0].ttl_secs, Some(4));
        assert_eq!(rows[0].problem, None);
    }

    #[test]
    fn flags_a_value_that_does_not_decode_and_keeps_the_rest() {
        let good = kv("svc/a", &Instance::new("10.0.0.1:80"), 0);
        let bad: Kv = ("svc/b".into(), b"{not json".to_vec(), 0);
        let rows = rows(&[good, bad], &EtcdNaming, &HashMap::new());
        assert_eq!(rows[0].problem, None);
        assert_eq!(rows[0].ttl_secs, None);
        assert!(
            rows[1]
                .problem
                .as_deref()
                .unwrap()
                .starts_with("does not decode")
        );
        assert_eq!(rows[1].addr, None);
    }

    #[test]
    fn flags_an_address_carried_by_two_keys() {
        let instance = Instance::new("10.0.0.1:80");
        let kvs = [kv("svc/a", &instance, 1), kv("svc/b", &instance, 2)];
        let rows = rows(&kvs, &EtcdNaming, &HashMap::new());
        assert_eq!(rows[0].problem.as_deref(), Some("address also under svc/b"));
        assert_eq!(rows[1].problem.as_deref(), Some("address also under svc/a"));
        assert_eq!(rows[0].ttl_secs, Some(-1), "a lease etcd does not know");
    }
}
