//! Which etcd errors are final: a refusal of the credentials or the role, a bad argument, an
//! untrusted certificate; everything else is worth a retry.

use super::Error;

/// The etcd error behind `error`, if etcd's client returned one.
pub(super) fn etcd_source(error: &Error) -> Option<&etcd_client::Error> {
    match error {
        Error::List { source, .. }
        | Error::Watch { source, .. }
        | Error::LeaseGrant { source, .. }
        | Error::Put { source, .. }
        | Error::Delete { source, .. }
        | Error::KeepAlive { source, .. }
        | Error::Revoke { source, .. }
        | Error::Connect { source, .. }
        | Error::Authenticate { source, .. } => Some(source),
        _ => None,
    }
}

pub(super) fn status_of(error: &etcd_client::Error) -> Option<&tonic::Status> {
    match error {
        etcd_client::Error::GRpcStatus(status) => Some(status),
        _ => None,
    }
}

pub(super) fn etcd_error_is_permanent(error: &etcd_client::Error) -> bool {
    use tonic::Code;
    match error {
        etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => true,
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            Code::PermissionDenied => true,
            // An expired auth token is refreshed by etcd-client; wrong credentials are not.
            Code::Unauthenticated | Code::InvalidArgument | Code::FailedPrecondition => {
                reason_is_permanent(status.message())
            }
            _ => false,
        },
        _ => false,
    }
}

/// Whether the TLS client refused etcd's certificate (tonic reports it as `Unavailable`).
pub(crate) fn is_certificate_error(error: &etcd_client::Error) -> bool {
    status_of(error).is_some_and(|s| s.message().contains("invalid peer certificate"))
}

pub(super) fn reason_is_permanent(reason: &str) -> bool {
    const PERMANENT: [&str; 5] = [
        "permission denied",
        "authentication failed",
        "user name is empty",
        "user name not found",
        "invalid auth management",
    ];
    PERMANENT.iter().any(|p| reason.contains(p))
}
