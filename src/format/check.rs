//! What registration and discovery accept, checked before any I/O: a service name that
//! names one service, and an address clients can dial.

use std::net::SocketAddr;

use super::{Format, Instance, validate_addr};
use crate::Error;

/// Checks that `service` names one service in `format`, as [`Registrar::register`],
/// [`Registration::add`] and [`EtcdDiscover`] do before any I/O.
///
/// It fails with [`Error::InvalidPrefix`] when the name:
///
/// - is empty, or only slashes: its prefix would be the root of the registry (or of the
///   format's namespace), which holds every service;
/// - has leading or trailing whitespace, or a control character: a name read from a file
///   with its newline, which no other program would spell the same;
///
/// or when the format's [`prefix`](Format::prefix) for it has no trailing slash (it would
/// also take the keys of `<service>-admin`), or is only slashes. The built-in formats always
/// end their prefixes with a slash.
///
/// ```
/// use tonic_etcd::{EtcdNaming, Kratos, check_service};
///
/// assert!(check_service(&EtcdNaming, "greeter").is_ok());
/// assert!(check_service(&Kratos::new(), "greeter/admin").is_ok());
/// assert!(check_service(&EtcdNaming, "").is_err());
/// assert!(check_service(&Kratos::new(), "/").is_err());
/// assert!(check_service(&EtcdNaming, "greeter\n").is_err());
/// ```
///
/// [`Registrar::register`]: crate::Registrar::register
/// [`Registration::add`]: crate::Registration::add
/// [`EtcdDiscover`]: crate::EtcdDiscover
pub fn check_service<F: Format + ?Sized>(format: &F, service: &str) -> Result<(), Error> {
    let invalid = |reason| {
        Err(Error::InvalidPrefix {
            prefix: service.to_owned(),
            reason,
        })
    };
    if service.trim().is_empty() {
        return invalid("it is empty");
    }
    if service.trim_matches('/').is_empty() {
        return invalid("it is only slashes: the root of the registry, which holds every service");
    }
    if service.trim() != service {
        return invalid("it has leading or trailing whitespace");
    }
    if service.chars().any(char::is_control) {
        return invalid("it has a control character");
    }
    let prefix = format.prefix(service);
    if !prefix.ends_with('/') {
        return invalid(
            "the format's prefix for it has no trailing slash, so it would also match other services' keys",
        );
    }
    if prefix.trim_matches('/').is_empty() {
        return invalid("the format's prefix for it is the root of the registry");
    }
    Ok(())
}

/// Checks that clients can dial `instance`'s address, as [`Registrar::register`] and
/// [`Registration::add`] do before any I/O.
///
/// It fails with [`Error::InvalidAddress`] when the address is not `host:port` with a port
/// in 1..=65535, when the port is 0 (what a server binds to be given a free port: register
/// the listener's `local_addr()`), or when the host is unspecified, `0.0.0.0` or `::` (what a
/// server binds to listen on every interface, which clients elsewhere cannot dial: register
/// the address they should use, `Instance::new("10.0.0.5:50051")`).
///
/// ```
/// use tonic_etcd::{Instance, check_instance};
///
/// assert!(check_instance(&Instance::new("10.0.0.5:50051")).is_ok());
/// assert!(check_instance(&Instance::new("greeter-0.svc:50051")).is_ok());
/// assert!(check_instance(&Instance::new("0.0.0.0:50051")).is_err());
/// assert!(check_instance(&Instance::new("[::]:50051")).is_err());
/// assert!(check_instance(&Instance::new("127.0.0.1:0")).is_err());
/// ```
///
/// [`Registrar::register`]: crate::Registrar::register
/// [`Registration::add`]: crate::Registration::add
pub fn check_instance(instance: &Instance) -> Result<(), Error> {
    let invalid = |reason| {
        Err(Error::InvalidAddress {
            addr: instance.addr.clone(),
            reason,
        })
    };
    if instance.addr.contains("://") {
        return invalid("it has a scheme: give host:port alone, without http:// or grpc://");
    }
    if let Ok(socket) = instance.addr.parse::<SocketAddr>() {
        if socket.port() == 0 {
            return invalid(
                "port 0 is what a server binds to be given a free port, not one clients can dial: register the listener's local_addr()",
            );
        }
        if socket.ip().is_unspecified() {
            return invalid(
                "0.0.0.0 and :: listen on every interface, but clients cannot dial them: register the address clients should use, Instance::new(\"host:port\")",
            );
        }
    }
    match validate_addr(&instance.addr) {
        Ok(()) => Ok(()),
        Err(super::DecodeError::InvalidAddress { reason, .. }) => invalid(reason),
        Err(_) => invalid("it is not host:port"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Blog, EtcdNaming, GoZero, Kratos, PlainAddr};

    fn formats() -> Vec<Box<dyn Format>> {
        vec![
            Box::new(EtcdNaming),
            Box::new(GoZero::new()),
            Box::new(Kratos::new()),
            Box::new(Blog::new()),
            Box::new(PlainAddr),
        ]
    }

    #[test]
    fn every_format_refuses_a_root_or_blank_service() {
        for format in formats() {
            for service in ["", " ", "/", "//", " / "] {
                let error = check_service(&format, service).expect_err(service);
                assert!(matches!(error, Error::InvalidPrefix { .. }), "{error}");
                assert!(error.is_permanent());
            }
            for service in ["greeter", "services/greeter", "greeter/admin", "/greeter/"] {
                assert!(
                    check_service(&format, service).is_ok(),
                    "{format:?} {service}"
                );
            }
        }
    }

    #[test]
    fn a_name_with_stray_whitespace_or_control_characters_is_refused() {
        for service in ["greeter\n", " greeter", "gree\tter", "greeter\u{7f}"] {
            let error = check_service(&EtcdNaming, service).expect_err(service);
            assert!(
                error.to_string().contains(&format!("{service:?}")),
                "{error}"
            );
        }
    }

    /// A format whose prefix has no trailing slash.
    #[derive(Debug)]
    struct NoSlash;

    impl Format for NoSlash {
        fn prefix(&self, service: &str) -> String {
            service.to_owned()
        }
        fn key(&self, service: &str, instance: &Instance, _: i64) -> String {
            format!("{service}/{}", instance.addr)
        }
        fn value(&self, _: &str, instance: &Instance) -> Vec<u8> {
            instance.addr.clone().into_bytes()
        }
        fn decode(&self, _: &str, _: &[u8]) -> Result<Instance, crate::DecodeError> {
            Err(crate::DecodeError::MissingAddress)
        }
    }

    #[test]
    fn a_custom_prefix_without_a_trailing_slash_is_refused() {
        let error = check_service(&NoSlash, "greeter").expect_err("no slash");
        assert!(error.to_string().contains("trailing slash"), "{error}");
    }

    #[test]
    fn addresses_clients_cannot_dial_are_refused_with_what_to_do() {
        for (addr, says) in [
            ("0.0.0.0:50051", "Instance::new"),
            ("[::]:50051", "Instance::new"),
            ("127.0.0.1:0", "local_addr()"),
            ("[::1]:0", "local_addr()"),
            ("host:0", "1..=65535"),
            ("10.0.0.1", "no port"),
            ("grpc://10.0.0.1:50051", "scheme"),
            ("", "no port"),
        ] {
            let error = check_instance(&Instance::new(addr)).expect_err(addr);
            assert!(matches!(error, Error::InvalidAddress { .. }), "{error}");
            assert!(error.to_string().contains(says), "{addr}: {error}");
            assert!(error.is_permanent());
        }
        for addr in ["127.0.0.1:1", "[::1]:50051", "greeter-0.svc.local:443"] {
            assert!(check_instance(&Instance::new(addr)).is_ok(), "{addr}");
        }
    }
}
