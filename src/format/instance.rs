//! The one instance model every format maps into and out of.

use std::collections::BTreeMap;

/// One server instance, as a registry entry describes it.
///
/// ```
/// use tonic_etcd::Instance;
///
/// let instance = Instance::new("10.0.0.1:50051").weight(10).zone("eu-1");
/// assert_eq!(instance.addr, "10.0.0.1:50051");
/// assert_eq!(instance.metadata.weight, Some(10));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Instance {
    /// The address clients connect to, as `host:port`.
    pub addr: String,
    /// Whether clients must connect with TLS.
    pub tls: bool,
    /// What the instance says about itself.
    pub metadata: Metadata,
}

/// Instance metadata: the well-known fields, and any others as text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Metadata {
    /// The instance's relative share of calls.
    pub weight: Option<u32>,
    /// The zone the instance runs in.
    pub zone: Option<String>,
    /// The version of the instance's software.
    pub version: Option<String>,
    /// Any other fields.
    pub attributes: BTreeMap<String, String>,
}

impl Instance {
    /// An instance at `addr` (`host:port`), with no metadata.
    #[must_use]
    pub fn new(addr: impl Into<String>) -> Self {
        Instance {
            addr: addr.into(),
            ..Instance::default()
        }
    }

    /// Sets the weight.
    #[must_use]
    pub fn weight(mut self, weight: u32) -> Self {
        self.metadata.weight = Some(weight);
        self
    }

    /// Sets the zone.
    #[must_use]
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.metadata.zone = Some(zone.into());
        self
    }

    /// Sets the version.
    #[must_use]
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.metadata.version = Some(version.into());
        self
    }

    /// Sets whether clients must use TLS.
    #[must_use]
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }
}

impl Metadata {
    /// Returns `true` if no field is set.
    pub fn is_empty(&self) -> bool {
        self.weight.is_none()
            && self.zone.is_none()
            && self.version.is_none()
            && self.attributes.is_empty()
    }

    /// Encodes the metadata as a JSON object.
    pub(crate) fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::Value;
        let mut map: serde_json::Map<String, Value> = self
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        if let Some(weight) = self.weight {
            map.insert("weight".into(), weight.into());
        }
        if let Some(zone) = &self.zone {
            map.insert("zone".into(), zone.clone().into());
        }
        if let Some(version) = &self.version {
            map.insert("version".into(), version.clone().into());
        }
        map
    }

    /// Encodes the metadata as text fields, for registries whose metadata is Go's
    /// `map[string]string`: the weight is written in decimal.
    pub(crate) fn to_strings(&self) -> BTreeMap<String, String> {
        let mut map = self.attributes.clone();
        if let Some(weight) = self.weight {
            map.insert("weight".into(), weight.to_string());
        }
        if let Some(zone) = &self.zone {
            map.insert("zone".into(), zone.clone());
        }
        if let Some(version) = &self.version {
            map.insert("version".into(), version.clone());
        }
        map
    }

    /// Reads metadata from a JSON object. Unknown fields become attributes; a weight that is
    /// not a whole number in `u32` range is kept as an attribute rather than guessed at.
    pub(crate) fn from_json(map: &serde_json::Map<String, serde_json::Value>) -> Self {
        use serde_json::Value;
        let mut meta = Metadata::default();
        for (key, value) in map {
            match (key.as_str(), value) {
                ("weight", Value::Number(n))
                    if n.as_u64().is_some_and(|w| w <= u32::MAX as u64) =>
                {
                    meta.weight = n.as_u64().map(|w| w as u32);
                }
                ("weight", Value::String(s)) if s.parse::<u32>().is_ok() => {
                    meta.weight = s.parse().ok();
                }
                ("zone", Value::String(s)) => meta.zone = Some(s.clone()),
                ("version", Value::String(s)) => meta.version = Some(s.clone()),
                (_, Value::Null) => {}
                (_, Value::String(s)) => {
                    meta.attributes.insert(key.clone(), s.clone());
                }
                (_, other) => {
                    meta.attributes.insert(key.clone(), other.to_string());
                }
            }
        }
        meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_json() {
        let mut meta = Metadata {
            weight: Some(10),
            zone: Some("eu-1".into()),
            version: Some("1.2.3".into()),
            ..Metadata::default()
        };
        meta.attributes.insert("team".into(), "core".into());
        assert_eq!(Metadata::from_json(&meta.to_json()), meta);
    }

    #[test]
    fn metadata_round_trips_through_text_fields() {
        let meta = Metadata {
            weight: Some(10),
            zone: Some("eu-1".into()),
            ..Metadata::default()
        };
        let strings = meta.to_strings();
        assert_eq!(strings["weight"], "10");
        let json = strings
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        assert_eq!(Metadata::from_json(&json), meta);
    }

    #[test]
    fn odd_weights_become_attributes() {
        let json = serde_json::json!({"weight": -3, "other": {"a": 1}});
        let meta = Metadata::from_json(json.as_object().expect("object"));
        assert_eq!(meta.weight, None);
        assert_eq!(meta.attributes["weight"], "-3");
        assert_eq!(meta.attributes["other"], r#"{"a":1}"#);
    }
}
