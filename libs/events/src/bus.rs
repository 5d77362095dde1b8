use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use uuid::Uuid;

use crate::{Envelope, Event};

/// The subject families Petrel's stream captures. Every event Petrel publishes falls under one.
const FAMILIES: [&str; 6] = [
    "data.>",
    "model.>",
    "predictions.>",
    "labels.>",
    "alerts.>",
    "deadletter.>",
];

/// Errors talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("no connection to NATS at {url} after {waited_s} s (is nats-server running?)")]
    NotConnected { url: String, waited_s: u64 },
    #[error(
        "cannot create or read the JetStream stream {stream} (is JetStream enabled on the server?)"
    )]
    Stream {
        stream: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot publish to {subject}")]
    Publish {
        subject: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot set up consumer {consumer}")]
    Consumer {
        consumer: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Envelope(#[from] crate::EnvelopeError),
}

/// A deployment's subject namespace. With a prefix `p`, `data.ready` becomes `p.data.ready` and
/// the stream is `PETREL_P`, so several deployments (or parallel tests) can share one NATS
/// server without seeing each other's events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespace {
    prefix: Option<String>,
}

impl Namespace {
    /// `None` or an empty string means no prefix.
    pub fn new(prefix: Option<&str>) -> Self {
        let prefix = prefix
            .map(|p| p.trim_matches('.').to_owned())
            .filter(|p| !p.is_empty());
        Self { prefix }
    }

    /// The absolute subject for a relative one.
    pub fn subject(&self, relative: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p}.{relative}"),
            None => relative.to_owned(),
        }
    }

    /// The relative subject for an absolute one (the inverse of [`Namespace::subject`]).
    pub fn relative<'a>(&self, absolute: &'a str) -> &'a str {
        match &self.prefix {
            Some(p) => absolute
                .strip_prefix(p.as_str())
                .and_then(|s| s.strip_prefix('.'))
                .unwrap_or(absolute),
            None => absolute,
        }
    }

    /// The JetStream stream holding this namespace's events.
    pub fn stream_name(&self) -> String {
        match &self.prefix {
            Some(p) => {
                let clean: String = p
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_uppercase()
                        } else {
                            '_'
                        }
                    })
                    .collect();
                format!("PETREL_{clean}")
            }
            None => "PETREL".to_owned(),
        }
    }
}

/// A connection to the bus: the NATS client, its JetStream context, the namespace, and the
/// name of the service publishing (the envelopes' `source`).
#[derive(Clone, Debug)]
pub struct Bus {
    client: Client,
    js: jetstream::Context,
    ns: Namespace,
    source: String,
}

impl Bus {
    /// Connects to NATS and makes sure the stream exists.
    pub async fn connect(url: &str, ns: Namespace, source: &str) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name(source)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|source| BusError::Connect {
                url: url.to_owned(),
                source,
            })?;
        // `retry_on_initial_connect` returns at once; wait briefly for the first connection so a
        // wrong URL fails start-up with a clear message instead of hanging.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while client.connection_state() != async_nats::connection::State::Connected {
            if tokio::time::Instant::now() > deadline {
                return Err(BusError::NotConnected {
                    url: url.to_owned(),
                    waited_s: 5,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let bus = Self::from_client(client, ns, source);
        bus.ensure_stream().await?;
        Ok(bus)
    }

    /// Wraps an existing client; does not create the stream.
    pub fn from_client(client: Client, ns: Namespace, source: &str) -> Self {
        let js = jetstream::new(client.clone());
        Self {
            client,
            js,
            ns,
            source: source.to_owned(),
        }
    }

    /// Creates the stream if missing. Idempotent, so every service calls it at start.
    pub async fn ensure_stream(&self) -> Result<stream::Stream, BusError> {
        let name = self.ns.stream_name();
        self.js
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                description: Some("Petrel's events".to_owned()),
                subjects: FAMILIES.iter().map(|f| self.ns.subject(f)).collect(),
                storage: stream::StorageType::File,
                max_age: Duration::from_secs(7 * 24 * 3600),
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::Stream {
                stream: name,
                source: Box::new(e),
            })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// The `source` attribute this bus stamps on envelopes.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the client currently holds a connection to the server.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Wraps `data` in a new envelope from this service.
    pub fn envelope<T: Event>(&self, data: T) -> Envelope<T> {
        Envelope::new(&self.source, data)
    }

    /// Publishes an event and waits for JetStream to store it.
    pub async fn publish<T: Event>(&self, env: &Envelope<T>) -> Result<(), BusError> {
        let payload = Bytes::from(env.to_bytes()?);
        self.publish_raw(&env.data.subject(), env.id, payload).await
    }

    /// Publishes already-serialised envelope bytes under a relative subject, with `id` as the
    /// `Nats-Msg-Id` so the stream drops a second copy (the outbox relies on this).
    pub async fn publish_raw(
        &self,
        relative: &str,
        id: Uuid,
        payload: Bytes,
    ) -> Result<(), BusError> {
        let subject = self.ns.subject(relative);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.to_string().as_str());
        let err = |e: Box<dyn std::error::Error + Send + Sync>| BusError::Publish {
            subject: subject.clone(),
            source: e,
        };
        let stored = async {
            let ack = self
                .js
                .publish_with_headers(subject.clone(), headers, payload)
                .await
                .map_err(|e| err(Box::new(e)))?;
            ack.await.map_err(|e| err(Box::new(e)))?;
            Ok(())
        }
        .await;
        crate::metrics::published(relative, stored.is_ok());
        stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_prefix_subjects_and_streams() {
        let none = Namespace::new(None);
        assert_eq!(none.subject("data.ready"), "data.ready");
        assert_eq!(none.stream_name(), "PETREL");
        let empty = Namespace::new(Some(""));
        assert_eq!(empty, none);
        let t = Namespace::new(Some("t-1.x"));
        assert_eq!(t.subject("alerts.drift"), "t-1.x.alerts.drift");
        assert_eq!(t.relative("t-1.x.alerts.drift"), "alerts.drift");
        assert_eq!(t.stream_name(), "PETREL_T_1_X");
    }
}
