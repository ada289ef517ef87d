//! Checking the endpoints before any I/O.

use crate::error::Error;

/// Checks, before any I/O, that each endpoint is a URL etcd-client can connect to:
/// `http://` or `https://` (in lower case, as etcd-client matches them) and `host:port`, or
/// `host:port` alone, with a numeric port and nothing after it but an optional `/`.
/// etcd-client would prefix anything else with `http://`, so that `htp://10.0.0.1:2379`
/// became a lookup of the host `htp` that fails after the deadline, and would dial port 80
/// for `http://10.0.0.1:2380x` or `http://10.0.0.1`.
pub(super) fn check_endpoints(endpoints: &[String]) -> Result<(), Error> {
    if endpoints.is_empty() {
        return Err(Error::InvalidEndpoint {
            endpoint: String::new(),
            reason: "no etcd endpoint was given",
        });
    }
    for endpoint in endpoints {
        if let Err(reason) = check_endpoint(endpoint) {
            return Err(Error::InvalidEndpoint {
                endpoint: endpoint.to_owned(),
                reason,
            });
        }
    }
    Ok(())
}

/// Why `endpoint` is not `[http[s]://]host:port[/]`, if it is not.
fn check_endpoint(endpoint: &str) -> Result<(), &'static str> {
    let rest = match endpoint.split_once("://") {
        Some(("http" | "https", rest)) => rest,
        Some(_) => return Err("its scheme is not http:// or https://"),
        None => endpoint,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(end);
    if authority.is_empty()
        || authority.contains('@')
        || authority.parse::<http::uri::Authority>().is_err()
    {
        return Err("it does not name a host and port");
    }
    if !after.is_empty() && after != "/" {
        return Err("it has a path or query: give only scheme://host:port");
    }
    // `[::1]:2379`, `host:2379`: the port follows the last colon, outside the brackets.
    let port = match authority.rsplit_once(':') {
        Some((host, port))
            if !port.contains(']') && (!host.contains(':') || host.ends_with(']')) =>
        {
            port
        }
        _ => return Err("its port is missing (etcd's client port is usually 2379)"),
    };
    match port.parse::<u16>() {
        Ok(1..) if port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err("its port is not a number from 1 to 65535"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_before_any_io() {
        let ok = |list: &[&str]| {
            check_endpoints(&list.iter().map(|e| e.to_string()).collect::<Vec<_>>())
        };
        for good in [
            "http://127.0.0.1:2379",
            "https://etcd-0.etcd:2379",
            "http://[::1]:2379/",
            "127.0.0.1:2379",
            "localhost:2379",
        ] {
            assert!(ok(&[good]).is_ok(), "{good}");
        }
        for (bad, says) in [
            ("http://127.0.0.1:2380x", "port is not a number"),
            ("http://127.0.0.1:0", "port is not a number"),
            ("http://127.0.0.1:99999", "port is not a number"),
            ("http://127.0.0.1:+2379", "port is not a number"),
            ("http://127.0.0.1", "port is missing"),
            ("http://[::1]", "port is missing"),
            ("etcd-0.etcd", "port is missing"),
            ("http://127.0.0.1:2379/v3", "path or query"),
            ("http://127.0.0.1:2379?x=1", "path or query"),
            ("htp://127.0.0.1:2379", "scheme"),
            ("HTTP://127.0.0.1:2379", "scheme"),
            ("unix:///tmp/etcd.sock", "scheme"),
            ("http://", "host and port"),
            ("", "host and port"),
            ("127.0.0.1 2379", "host and port"),
            ("http://user@127.0.0.1:2379", "host and port"),
        ] {
            let error = ok(&["http://127.0.0.1:2379", bad]).expect_err(bad);
            assert!(matches!(error, Error::InvalidEndpoint { .. }), "{error}");
            assert!(error.to_string().contains(says), "{bad}: {error}");
            assert!(error.is_permanent());
        }
        assert!(ok(&[]).is_err(), "no endpoint");
    }
}
