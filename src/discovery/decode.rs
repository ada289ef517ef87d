//! Turning raw registry changes into endpoint changes, per subscriber.

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Endpoint;
use tower::discover::Change;
use tracing::{debug, warn};

use super::diff::{Entries, RawChange};
use super::{Discovered, EndpointHook};
use crate::format::{DecodeError, Format};

/// Decodes raw changes with one format, keeping the values that decoded.
pub(super) struct Decoder {
    format: Arc<dyn Format>,
    hook: Option<EndpointHook>,
    /// The keys announced as endpoints, with the values they were decoded from.
    good: Entries,
}

impl Decoder {
    pub(super) fn new(format: Arc<dyn Format>, hook: Option<EndpointHook>) -> Self {
        Decoder {
            format,
            hook,
            good: Entries::new(),
        }
    }

    /// How many endpoints are announced.
    pub(super) fn len(&self) -> usize {
        self.good.len()
    }

    /// The endpoint change for a raw change, if any:
    ///
    /// - a put of a new or changed value that decodes is an insert;
    /// - a put that does not decode is skipped with a warning naming the key, and the
    ///   endpoint the key had before, if any, stays;
    /// - a delete of an announced key is a remove.
    pub(super) fn apply(&mut self, change: RawChange) -> Option<Change<String, Discovered>> {
        match change {
            RawChange::Put(key, value) => {
                if self.good.get(&key) == Some(&value) {
                    return None;
                }
                match self.endpoint_for(&key, &value) {
                    Ok(discovered) => {
                        debug!(key, addr = %discovered.instance.addr, "endpoint inserted");
                        self.good.insert(key.clone(), value);
                        Some(Change::Insert(key, discovered))
                    }
                    Err(error) => {
                        warn!(key, error = %crate::error::Chain(&error), "skipping undecodable value");
                        None
                    }
                }
            }
            RawChange::Delete(key) => {
                self.good.remove(&key)?;
                debug!(key, "endpoint removed");
                Some(Change::Remove(key))
            }
        }
    }

    /// Decodes a registry value and builds the endpoint for it.
    fn endpoint_for(&self, key: &str, value: &[u8]) -> Result<Discovered, DecodeError> {
        let instance = self.format.decode(key, value)?;
        let scheme = if instance.tls { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{}", instance.addr))
            .map_err(|_| DecodeError::InvalidAddress {
                addr: instance.addr.clone(),
                reason: "not a valid uri authority",
            })?
            .connect_timeout(Duration::from_secs(5));
        let endpoint = match &self.hook {
            Some(hook) => hook(endpoint, &instance),
            None => endpoint,
        };
        Ok(Discovered { endpoint, instance })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EtcdNaming;

    fn put(key: &str, value: &str) -> RawChange {
        RawChange::Put(key.into(), value.as_bytes().to_vec())
    }

    const GOOD: &str = r#"{"Addr":"127.0.0.1:1"}"#;
    const OTHER: &str = r#"{"Addr":"127.0.0.1:2"}"#;

    #[test]
    fn a_bad_value_keeps_the_previous_endpoint() {
        let mut d = Decoder::new(Arc::new(EtcdNaming), None);
        assert!(matches!(
            d.apply(put("s/a", GOOD)),
            Some(Change::Insert(..))
        ));
        assert!(d.apply(put("s/a", "garbage")).is_none());
        // Back to the value already announced: nothing to do.
        assert!(d.apply(put("s/a", GOOD)).is_none());
        assert!(matches!(d.apply(put("s/a", OTHER)), Some(Change::Insert(k, _)) if k == "s/a"));
        assert!(matches!(
            d.apply(RawChange::Delete("s/a".into())),
            Some(Change::Remove(_))
        ));
    }

    #[test]
    fn a_bad_key_is_never_announced_or_removed() {
        let mut d = Decoder::new(Arc::new(EtcdNaming), None);
        assert!(d.apply(put("s/bad", "{}")).is_none());
        assert!(d.apply(RawChange::Delete("s/bad".into())).is_none());
    }

    #[test]
    fn the_hook_shapes_the_endpoint() {
        let hook: EndpointHook =
            Arc::new(|e: Endpoint, _: &crate::Instance| e.user_agent("t").expect("valid"));
        let mut d = Decoder::new(Arc::new(EtcdNaming), Some(hook));
        assert!(d.apply(put("s/a", GOOD)).is_some());
    }
}
