use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A payload type that travels as an event: it knows its CloudEvents `type` and the subject it
/// is published on (relative to the deployment's namespace).
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The CloudEvents `type`, e.g. `petrel.data.ready.v1`. Consumers check it, so a payload of
    /// one kind is never read as another.
    const TYPE: &'static str;

    /// The subject, relative to the namespace, e.g. `data.ready` or `alerts.drift`.
    fn subject(&self) -> String;
}

/// The JSON envelope of every Petrel event. Attribute names follow CloudEvents 1.0 (structured
/// mode), so CloudEvents tooling can read Petrel's events as they are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub specversion: String,
    /// UUID v7: unique, and sortable by creation time. Also sent as `Nats-Msg-Id`.
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    /// The producing service, e.g. `petrel/registry`.
    pub source: String,
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    pub data: T,
}

/// Why bytes could not be read as an event of the expected type. A consumer treats this as a
/// poison message: it is set aside, never retried.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a valid event envelope: {0}")]
    Malformed(String),
    #[error("expected event type {expected}, got {actual}")]
    WrongType {
        expected: &'static str,
        actual: String,
    },
}

impl<T: Event> Envelope<T> {
    /// Wraps `data` in a new envelope with a fresh id and the current time.
    pub fn new(source: &str, data: T) -> Self {
        Self {
            specversion: "1.0".to_owned(),
            id: Uuid::now_v7(),
            kind: T::TYPE.to_owned(),
            source: source.to_owned(),
            time: Utc::now(),
            datacontenttype: "application/json".to_owned(),
            data,
        }
    }

    /// Serialises the envelope. Serialising our own payload types cannot fail in practice
    /// (they hold no maps with non-string keys), so a failure is reported as malformed.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        serde_json::to_vec(self).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }

    /// Parses bytes as an envelope of `T`, checking the `type` attribute.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        #[derive(Deserialize)]
        struct Head {
            #[serde(rename = "type")]
            kind: String,
        }
        let head: Head =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if head.kind != T::TYPE {
            return Err(EnvelopeError::WrongType {
                expected: T::TYPE,
                actual: head.kind,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Ping {
        n: u32,
    }
    impl Event for Ping {
        const TYPE: &'static str = "petrel.test.ping.v1";
        fn subject(&self) -> String {
            "test.ping".into()
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Pong {
        n: u32,
    }
    impl Event for Pong {
        const TYPE: &'static str = "petrel.test.pong.v1";
        fn subject(&self) -> String {
            "test.pong".into()
        }
    }

    #[test]
    fn round_trips_with_cloudevents_names() {
        let env = Envelope::new("petrel/test", Ping { n: 7 });
        let bytes = env.to_bytes().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        for key in [
            "specversion",
            "id",
            "type",
            "source",
            "time",
            "datacontenttype",
            "data",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["type"], "petrel.test.ping.v1");
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(env.id.get_version_num(), 7);
        let back = Envelope::<Ping>::from_bytes(&bytes).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn ids_are_unique_and_time_ordered() {
        let a = Envelope::new("s", Ping { n: 1 });
        let b = Envelope::new("s", Ping { n: 1 });
        assert_ne!(a.id, b.id);
        assert!(a.id < b.id);
    }

    #[test]
    fn rejects_wrong_type_and_garbage() {
        let bytes = Envelope::new("s", Ping { n: 1 }).to_bytes().unwrap();
        assert!(matches!(
            Envelope::<Pong>::from_bytes(&bytes),
            Err(EnvelopeError::WrongType { .. })
        ));
        assert!(matches!(
            Envelope::<Ping>::from_bytes(b"not json"),
            Err(EnvelopeError::Malformed(_))
        ));
        let missing = br#"{"type":"petrel.test.ping.v1","data":{"n":1}}"#;
        assert!(matches!(
            Envelope::<Ping>::from_bytes(missing),
            Err(EnvelopeError::Malformed(_))
        ));
    }
}
