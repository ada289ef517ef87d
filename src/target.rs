//! One string that says where a service is registered, for configuration files:
//! `etcd://10.0.0.1:2379,10.0.0.2:2379/greeter?format=kratos`.
//!
//! Parsing is pure: no I/O, no DNS. The error names the part that is wrong.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use crate::etcd::EtcdConfig;
use crate::format::{Blog, EtcdNaming, Format, GoZero, Kratos, PlainAddr};

/// The etcd port used when an endpoint of a target gives none.
pub const DEFAULT_ETCD_PORT: u16 = 2379;

/// Where a service is registered, parsed from a target string.
///
/// The shape is `SCHEME://ENDPOINTS/SERVICE[?format=FORMAT]`:
///
/// - `SCHEME`: `etcd` (etcd over plain HTTP) or `etcds` (etcd over TLS, which needs the `tls`
///   feature to connect);
/// - `ENDPOINTS`: one or more `host[:port]`, comma-separated; the port defaults to
///   [`DEFAULT_ETCD_PORT`]; an IPv6 host goes in brackets (`[::1]:2379`);
/// - `SERVICE`: everything after the first `/` up to `?`, as the format means it (the etcd
///   naming target, the go-zero key, the Kratos or blog name, the plain prefix); it may
///   contain `/`. It is taken as written: no percent-decoding.
/// - `format`: `etcd-naming` (default), `go-zero`, `kratos`, `blog` or `plain`.
///
/// ```
/// use tonic_etcd::{Target, TargetFormat};
///
/// let target: Target = "etcd://10.0.0.1:2379,10.0.0.2/greeter?format=kratos".parse()?;
/// assert_eq!(target.endpoints, ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
/// assert_eq!(target.service, "greeter");
/// assert_eq!(target.format, TargetFormat::Kratos);
/// # Ok::<(), tonic_etcd::TargetError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Target {
    /// The etcd endpoints as URLs (`http://host:port`, or `https://` for `etcds`), in order.
    pub endpoints: Vec<String>,
    /// The service, as the format means it.
    pub service: String,
    /// The wire format.
    pub format: TargetFormat,
}

/// The wire format a target names with `?format=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TargetFormat {
    /// `etcd-naming`: [`EtcdNaming`], the default.
    #[default]
    EtcdNaming,
    /// `go-zero`: [`GoZero`].
    GoZero,
    /// `kratos`: [`Kratos`].
    Kratos,
    /// `blog`: [`Blog`].
    Blog,
    /// `plain`: [`PlainAddr`].
    Plain,
}

/// Why a target string was rejected; the message names the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The string does not start with `etcd://` or `etcds://`.
    #[error("target {target:?} must start with etcd:// or etcds://")]
    Scheme {
        /// The whole target.
        target: String,
    },
    /// No endpoint between `://` and the service.
    #[error("target {target:?} names no etcd endpoint before the service")]
    NoEndpoint {
        /// The whole target.
        target: String,
    },
    /// One endpoint is not `host[:port]`.
    #[error("etcd endpoint {endpoint:?} of the target: {reason}")]
    Endpoint {
        /// The endpoint as written.
        endpoint: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Nothing after the endpoints' `/`.
    #[error("target {target:?} names no service after the endpoints (add /SERVICE)")]
    NoService {
        /// The whole target.
        target: String,
    },
    /// `format=` names no known format.
    #[error(
        "format {found:?} of the target is not one of etcd-naming, go-zero, kratos, blog, plain"
    )]
    Format {
        /// The value given.
        found: String,
    },
    /// A query parameter other than `format`, or one without a value.
    #[error("query parameter {param:?} of the target is not understood (only format=...)")]
    Query {
        /// The parameter as written.
        param: String,
    },
}

impl Target {
    /// Parses a target string; see [`Target`] for the shape.
    pub fn parse(target: &str) -> Result<Target, TargetError> {
        let (scheme, rest) = target
            .split_once("://")
            .ok_or_else(|| TargetError::Scheme {
                target: target.to_owned(),
            })?;
        let http = match scheme {
            "etcd" => "http",
            "etcds" => "https",
            _ => {
                return Err(TargetError::Scheme {
                    target: target.to_owned(),
                });
            }
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, service) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(TargetError::NoEndpoint {
                target: target.to_owned(),
            });
        }
        let endpoints = authority
            .split(',')
            .map(|e| endpoint(e).map(|(host, port)| format!("{http}://{host}:{port}")))
            .collect::<Result<Vec<_>, _>>()?;
        if service.trim_matches('/').is_empty() {
            return Err(TargetError::NoService {
                target: target.to_owned(),
            });
        }
        Ok(Target {
            endpoints,
            service: service.to_owned(),
            format: format_param(query)?,
        })
    }

    /// Parses a target string into the crate's [`Error`]: [`Error::InvalidTarget`], which
    /// names the bad part.
    pub(crate) fn parse_or_error(target: &str) -> Result<Target, Error> {
        Target::parse(target).map_err(|reason| Error::InvalidTarget {
            target: target.to_owned(),
            reason,
        })
    }

    /// An [`EtcdConfig`] for the target's endpoints, with its defaults otherwise.
    pub fn etcd_config(&self) -> EtcdConfig {
        EtcdConfig::new(self.endpoints.iter().cloned())
    }

    /// The format the target names.
    pub fn format(&self) -> Box<dyn Format> {
        self.format.format()
    }
}

impl TargetFormat {
    /// The library format with its defaults.
    pub fn format(self) -> Box<dyn Format> {
        match self {
            TargetFormat::EtcdNaming => Box::new(EtcdNaming),
            TargetFormat::GoZero => Box::new(GoZero::new()),
            TargetFormat::Kratos => Box::new(Kratos::new()),
            TargetFormat::Blog => Box::new(Blog::new()),
            TargetFormat::Plain => Box::new(PlainAddr),
        }
    }

    /// The name a target uses for it.
    pub fn name(self) -> &'static str {
        match self {
            TargetFormat::EtcdNaming => "etcd-naming",
            TargetFormat::GoZero => "go-zero",
            TargetFormat::Kratos => "kratos",
            TargetFormat::Blog => "blog",
            TargetFormat::Plain => "plain",
        }
    }
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Target::parse(s)
    }
}

impl fmt::Display for Target {
    /// The target in its canonical form: ports explicit, `format` only when not the default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tls = self.endpoints.iter().any(|e| e.starts_with("https://"));
        let hosts: Vec<&str> = self.endpoints.iter().map(|e| authority_of(e)).collect();
        let scheme = if tls { "etcds" } else { "etcd" };
        write!(f, "{scheme}://{}/{}", hosts.join(","), self.service)?;
        match self.format {
            TargetFormat::EtcdNaming => Ok(()),
            other => write!(f, "?format={}", other.name()),
        }
    }
}

fn authority_of(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest)
}

/// `host[:port]` or `[v6]:port`, checked, with the default port filled in.
fn endpoint(text: &str) -> Result<(&str, u16), TargetError> {
    let bad = |reason| TargetError::Endpoint {
        endpoint: text.to_owned(),
        reason,
    };
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(|| bad("no closing ']'"))?;
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad("not an IPv6 address in brackets"))?;
        match after {
            "" => (&text[..v6.len() + 2], None),
            _ => {
                let port = after
                    .strip_prefix(':')
                    .ok_or_else(|| bad("expected ':port' after ']'"))?;
                (&text[..v6.len() + 2], Some(port))
            }
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host
        .chars()
        .any(|c| !(c.is_ascii_alphanumeric() || "-._[]:".contains(c)))
    {
        return Err(bad("the host has characters a host name cannot have"));
    }
    let port = match port {
        None => DEFAULT_ETCD_PORT,
        Some(port) => match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("the port is not a number in 1..=65535")),
            Ok(port) => port,
        },
    };
    Ok((host, port))
}

fn format_param(query: &str) -> Result<TargetFormat, TargetError> {
    let mut format = TargetFormat::default();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let Some(("format", value)) = param.split_once('=') else {
            return Err(TargetError::Query {
                param: param.to_owned(),
            });
        };
        format = match value {
            "etcd-naming" => TargetFormat::EtcdNaming,
            "go-zero" => TargetFormat::GoZero,
            "kratos" => TargetFormat::Kratos,
            "blog" => TargetFormat::Blog,
            "plain" => TargetFormat::Plain,
            _ => {
                return Err(TargetError::Format {
                    found: value.to_owned(),
                });
            }
        };
    }
    Ok(format)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Target, TargetError> {
        text.parse()
    }

    #[test]
    fn parses_endpoints_service_and_format() {
        let target = parse("etcd://10.0.0.1:2379,10.0.0.2:2380/services/greeter?format=kratos")
            .expect("valid");
        assert_eq!(
            target.endpoints,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2380"]
        );
        assert_eq!(target.service, "services/greeter");
        assert_eq!(target.format, TargetFormat::Kratos);
    }

    #[test]
    fn defaults_to_etcd_naming_and_port_2379() {
        let target = parse("etcd://etcd-0.etcd/greeter").expect("valid");
        assert_eq!(target.endpoints, ["http://etcd-0.etcd:2379"]);
        assert_eq!(target.service, "greeter");
        assert_eq!(target.format, TargetFormat::EtcdNaming);
    }

    #[test]
    fn etcds_means_https_and_ipv6_hosts_go_in_brackets() {
        let target = parse("etcds://[::1]:2379,[fe80::1]/greeter").expect("valid");
        assert_eq!(
            target.endpoints,
            ["https://[::1]:2379", "https://[fe80::1]:2379"]
        );
    }

    #[test]
    fn displays_the_canonical_form_and_parses_it_back() {
        for text in [
            "etcd://10.0.0.1:2379/greeter",
            "etcds://[::1]:2379,a.b:4001/foo/bar/greeter?format=go-zero",
        ] {
            let target = parse(text).expect("valid");
            assert_eq!(target.to_string(), text);
            assert_eq!(parse(&target.to_string()), Ok(target));
        }
    }

    #[test]
    fn names_the_bad_part() {
        let cases = [
            ("http://10.0.0.1:2379/greeter", "must start with etcd://"),
            ("10.0.0.1:2379/greeter", "must start with etcd://"),
            ("etcd:///greeter", "names no etcd endpoint"),
            ("etcd://10.0.0.1:2379", "names no service"),
            ("etcd://10.0.0.1:2379/", "names no service"),
            ("etcd://10.0.0.1:2379//", "names no service"),
            (
                "etcd://10.0.0.1:0/greeter",
                "\"10.0.0.1:0\" of the target: the port",
            ),
            (
                "etcd://a:2379,b:x/greeter",
                "\"b:x\" of the target: the port",
            ),
            ("etcd://a:2379,,b/greeter", "\"\" of the target: no host"),
            ("etcd://[::1/greeter", "no closing ']'"),
            ("etcd://[zz]:1/greeter", "not an IPv6 address"),
            ("etcd://h o:1/greeter", "characters a host name cannot have"),
            ("etcd://a/greeter?format=consul", "format \"consul\""),
            (
                "etcd://a/greeter?fromat=kratos",
                "parameter \"fromat=kratos\"",
            ),
            ("etcd://a/greeter?format", "parameter \"format\""),
        ];
        for (text, expected) in cases {
            let error = parse(text).expect_err(text).to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn builds_the_format_and_etcd_config() {
        let target = parse("etcd://a:1,b:2/svc?format=go-zero").expect("valid");
        assert_eq!(
            target.etcd_config().endpoints(),
            ["http://a:1", "http://b:2"]
        );
        assert_eq!(target.format().prefix("svc"), GoZero::new().prefix("svc"));
    }
}
