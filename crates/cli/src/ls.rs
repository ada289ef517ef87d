//! `tonic-etcd ls`: the instances of a service, as a table or as JSON.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};

use crate::listing::Row;

/// A table of `rows`: key, address, TLS, weight, zone, version, lease (hex, as etcdctl shows
/// it), TTL left and what is wrong.
pub fn table(rows: &[Row]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "KEY", "ADDRESS", "TLS", "WEIGHT", "ZONE", "VERSION", "LEASE", "TTL", "PROBLEM",
        ]);
    for row in rows {
        table.add_row([
            row.key.clone(),
            row.addr.clone().unwrap_or_else(|| "-".into()),
            if row.tls { "yes" } else { "no" }.into(),
            opt(row.weight),
            opt(row.zone.as_ref()),
            opt(row.version.as_ref()),
            lease(row.lease_id),
            ttl(row.ttl_secs),
            row.problem.clone().unwrap_or_default(),
        ]);
    }
    table
}

fn opt(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

/// A lease id in hexadecimal, as etcdctl prints and reads it; `-` for none.
pub fn lease(id: i64) -> String {
    if id == 0 {
        "-".into()
    } else {
        format!("{id:x}")
    }
}

/// Seconds left, `expired` for a lease etcd no longer knows, `-` without a lease.
fn ttl(secs: Option<i64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 0 => "expired".into(),
        Some(s) => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_leases_in_hex_and_ttls_in_seconds() {
        assert_eq!(lease(0), "-");
        assert_eq!(lease(255), "ff");
        assert_eq!(ttl(None), "-");
        assert_eq!(ttl(Some(-1)), "expired");
        assert_eq!(ttl(Some(7)), "7s");
    }
}
