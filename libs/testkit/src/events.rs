//! Waiting for events, and for consumers to have handled them.

use std::time::Duration;

use futures::StreamExt;
use petrel_events::{Bus, Envelope, Event};

use crate::{PATIENCE, eventually};

/// A core-NATS subscription on a test's namespace (it sees JetStream-stored subjects too) that
/// gives each event's subject relative to the namespace, for tests that check where events go
/// and that no more come. Made by [`crate::TestEnv::events`].
pub struct Events {
    _client: async_nats::Client,
    sub: async_nats::Subscriber,
    prefix: String,
    patience: Duration,
}

impl Events {
    pub(crate) fn new(
        client: async_nats::Client,
        sub: async_nats::Subscriber,
        prefix: &str,
    ) -> Self {
        Self {
            _client: client,
            sub,
            prefix: prefix.to_owned(),
            patience: PATIENCE,
        }
    }

    /// Waits up to `patience` instead of [`PATIENCE`] in [`Events::next`]: for events that
    /// follow slow work, such as training a model.
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// The next event: its subject relative to the namespace, and its bytes.
    pub async fn next(&mut self) -> (String, Vec<u8>) {
        let msg = tokio::time::timeout(self.patience, self.sub.next())
            .await
            .expect("an event arrives in time")
            .expect("the subscription is open");
        let subject = msg
            .subject
            .as_str()
            .strip_prefix(&format!("{}.", self.prefix))
            .expect("the subject is in the test's namespace")
            .to_owned();
        (subject, msg.payload.to_vec())
    }

    /// Checks that nothing more arrives for `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Ok(Some(msg)) = tokio::time::timeout(wait, self.sub.next()).await {
            panic!(
                "unexpected event on {}: {}",
                msg.subject,
                String::from_utf8_lossy(&msg.payload)
            );
        }
    }
}

/// The next message on `sub`, parsed as an event of type `T`, failing after [`PATIENCE`] or if
/// it is something else.
pub async fn next_event<T: Event>(sub: &mut async_nats::Subscriber) -> Envelope<T> {
    let msg = tokio::time::timeout(PATIENCE, sub.next())
        .await
        .unwrap_or_else(|_| panic!("no {} event within {PATIENCE:?}", T::TYPE))
        .expect("subscription closed");
    Envelope::<T>::from_bytes(&msg.payload).unwrap_or_else(|e| {
        panic!(
            "{} is not a {}: {e}",
            String::from_utf8_lossy(&msg.payload),
            T::TYPE
        )
    })
}

/// Waits until the durable consumer `name` has acknowledged every event published so far on
/// the subjects it reads, i.e. has finished processing them: the way to know that a service
/// has seen an event that has no visible effect of its own.
pub async fn wait_consumer_caught_up(bus: &Bus, name: &str) {
    let stream = bus.namespace().stream_name();
    let js = bus.jetstream().clone();
    eventually(&format!("consumer {name} to catch up"), || {
        let (js, stream) = (js.clone(), stream.clone());
        async move {
            let s = js.get_stream(&stream).await.ok()?;
            let info = s.consumer_info(name).await.ok()?;
            let done = info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.stream_sequence > 0;
            done.then_some(())
        }
    })
    .await
}

/// Every event stored so far on `relative` (a subject filter relative to the bus's namespace),
/// in stream order: what a consumer starting now from the beginning would read.
pub async fn stored_events<T: Event>(bus: &Bus, relative: &str) -> Vec<Envelope<T>> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull};
    let stream = bus
        .jetstream()
        .get_stream(bus.namespace().stream_name())
        .await
        .expect("the stream exists");
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: bus.namespace().subject(relative),
            deliver_policy: DeliverPolicy::All,
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("an ephemeral consumer");
    let mut out = Vec::new();
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .expect("a fetch");
        let mut got = 0;
        while let Some(msg) = batch.next().await {
            let msg = msg.expect("a message");
            got += 1;
            out.push(Envelope::<T>::from_bytes(&msg.payload).unwrap_or_else(|e| {
                panic!(
                    "{} is not a {}: {e}",
                    String::from_utf8_lossy(&msg.payload),
                    T::TYPE
                )
            }));
        }
        if got == 0 {
            return out;
        }
    }
}
