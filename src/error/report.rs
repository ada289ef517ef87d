//! An error with all its causes on one line, for the end of a program.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use super::Error;

/// Displays an [`Error`] and every cause under it on one line,
/// `failed to connect to etcd at http://127.0.0.1:2379: ...: Connection refused (os error 111)`.
///
/// Made by [`Error::report`]. An error's own `Display` names only its level (the operation
/// that failed), as hyper's and tonic's do; the reason is usually deeper, in its `source`
/// chain. etcd-client's errors hide their causes from `source`, so this looks inside them
/// too, and prints a gRPC status as its code and message.
pub(super) struct Report<'a>(pub(super) &'a Error);

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut written: Vec<String> = Vec::new();
        let mut next: Option<&(dyn StdError + 'static)> = Some(self.0);
        while let Some(error) = next {
            next = cause_of(error);
            let mut text = own_text(error);
            // etcd-client writes its cause into its own text (`io error: <cause>`): keep
            // only what it adds.
            if let Some(cause) = next.map(|c| c.to_string())
                && let Some(own) = text.strip_suffix(cause.as_str())
            {
                text = own.trim_end_matches([':', ' ']).to_owned();
            }
            if !text.is_empty() && written.last() != Some(&text) {
                written.push(text);
            }
        }
        write!(f, "{}", written.join(": "))
    }
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An error's own text: a gRPC status as `<code>: <message>`, `Unavailable: etcdserver:
/// leader changed`.
fn own_text(error: &(dyn StdError + 'static)) -> String {
    match error.downcast_ref::<tonic::Status>() {
        Some(status) => format!("{:?}: {}", status.code(), status.message()),
        None => error.to_string(),
    }
}

/// The cause of `error`, looking inside etcd-client's error, which gives none through
/// `source`.
/// The cause of `error`: etcd-client's error gives none through `source`, so its inner
/// error is taken instead.
pub(crate) fn cause_of<'a>(
    error: &'a (dyn StdError + 'static),
) -> Option<&'a (dyn StdError + 'static)> {
    use etcd_client::Error as Etcd;
    let etcd = error
        .downcast_ref::<Etcd>()
        .or_else(|| error.downcast_ref::<Arc<Etcd>>().map(|e| &**e));
    match etcd {
        Some(Etcd::IoError(e)) => Some(e),
        Some(Etcd::TransportError(e)) => Some(e),
        Some(Etcd::GRpcStatus(e)) => Some(e),
        _ => error.source(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::error::Error;
    use crate::etcd::EtcdConfig;

    #[tokio::test]
    async fn a_refused_connection_is_named() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let connected = EtcdConfig::new([format!("http://127.0.0.1:{port}")])
            .deadline(Duration::from_millis(300))
            .connect()
            .await;
        let Err(error) = connected else {
            panic!("nothing listens on {port}");
        };
        let report = error.report().to_string();
        assert!(report.starts_with(&error.to_string()), "{report}");
        assert!(
            report.to_lowercase().contains("connection refused"),
            "{report} ({error:?})"
        );
    }

    #[test]
    fn an_etcd_status_is_its_code_and_message() {
        let status = tonic::Status::unavailable("etcdserver: leader changed");
        let error = Error::Put {
            key: "greeter/a".into(),
            lease_id: 0x10,
            source: std::sync::Arc::new(etcd_client::Error::GRpcStatus(status)),
        };
        assert_eq!(
            error.report().to_string(),
            "failed to put key \"greeter/a\" with lease 0x10: grpc request error: \
             Unavailable: etcdserver: leader changed"
        );
    }
}
