//! Durable pull consumers with explicit acks.
//!
//! A handler receives a typed [`Envelope`] and answers an [`Outcome`]; the runner maps it onto
//! JetStream: `Done` acks, `Retry` naks with a delay that doubles with each delivery (capped at
//! [`MAX_RETRY_DELAY`]), `Reject` terminates. A transient failure (a dependency down) is retried
//! until it clears, however long that takes, so an outage loses nothing; only a consumer given
//! a finite `max_deliver` gives up. An event that cannot be parsed, is rejected, or exhausts a
//! finite `max_deliver` is published on `deadletter.<consumer>` first, so it stays visible in
//! the stream while the consumer goes on with the next one. While a handler runs, the runner sends progress acks so
//! that long work (training) is not redelivered to someone else.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::payloads::DeadLetter;
use crate::{Bus, BusError, Envelope, Event};

/// What a handler decided about one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The effect is applied (or was already): acknowledge.
    Done,
    /// A transient failure (a dependency is down): deliver again after the delay.
    Retry(Duration),
    /// The event can never be processed (it is invalid): set it aside, do not retry.
    Reject(String),
}

/// How a consumer is set up.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Durable name, e.g. `trainer`. Several replicas with the same name share the work.
    /// `None` makes an ephemeral consumer that sees only new events (for per-instance
    /// notifications such as the predictor's reloads).
    pub durable: Option<String>,
    /// A name for logs and dead letters when `durable` is `None`.
    pub label: String,
    /// Relative subject filter, e.g. `data.ready`.
    pub subject: String,
    /// Deliveries before a retried event is set aside; 0 or less means never (the default: a
    /// transient failure is waited out rather than turned into a lost event).
    pub max_deliver: i64,
    /// How long the server waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Messages fetched per pull. Long handlers (training) use 1, so events waiting behind the
    /// one in hand are not held past their ack wait and redelivered to another replica.
    pub batch: usize,
}

/// Longest delay between two deliveries of a retried event.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(120);

/// The delay before delivery `delivered + 1`: the handler's base delay doubled per delivery so
/// far, capped at [`MAX_RETRY_DELAY`].
pub fn backoff(base: Duration, delivered: i64) -> Duration {
    let doublings = delivered.clamp(1, 17) as u32 - 1;
    base.saturating_mul(1 << doublings).min(MAX_RETRY_DELAY)
}

impl ConsumerSpec {
    /// A durable consumer with the defaults: retried until done, 30 s ack wait, 32 per pull.
    pub fn durable(name: &str, subject: &str) -> Self {
        Self {
            durable: Some(name.to_owned()),
            label: name.to_owned(),
            subject: subject.to_owned(),
            max_deliver: -1,
            ack_wait: Duration::from_secs(30),
            batch: 32,
        }
    }

    /// An ephemeral consumer delivering only events published from now on.
    pub fn ephemeral(label: &str, subject: &str) -> Self {
        Self {
            durable: None,
            ..Self::durable(label, subject)
        }
    }
}

/// Creates the consumer (idempotently) and runs `handler` on each event until `cancel` fires.
///
/// On cancellation the runner stops fetching, lets the event in hand finish and acks it, and
/// returns; events fetched but not started are left for redelivery.
pub async fn run<E, H, Fut>(
    bus: Bus,
    spec: ConsumerSpec,
    cancel: CancellationToken,
    handler: H,
) -> Result<(), BusError>
where
    E: Event,
    H: Fn(Envelope<E>) -> Fut + Send + Sync,
    Fut: Future<Output = Outcome> + Send,
{
    let stream = bus.ensure_stream().await?;
    let config = pull::Config {
        durable_name: spec.durable.clone(),
        description: Some(format!("petrel {}", spec.label)),
        filter_subject: bus.namespace().subject(&spec.subject),
        ack_policy: AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        max_deliver: if spec.max_deliver > 0 {
            spec.max_deliver
        } else {
            -1
        },
        deliver_policy: if spec.durable.is_some() {
            DeliverPolicy::All
        } else {
            DeliverPolicy::New
        },
        inactive_threshold: if spec.durable.is_some() {
            Duration::ZERO
        } else {
            Duration::from_secs(60)
        },
        ..Default::default()
    };
    let consumer_err = |e: Box<dyn std::error::Error + Send + Sync>| BusError::Consumer {
        consumer: spec.label.clone(),
        source: e,
    };
    let consumer = match &spec.durable {
        Some(name) => stream.get_or_create_consumer(name, config).await,
        None => stream.create_consumer(config).await,
    }
    .map_err(|e| consumer_err(Box::new(e)))?;
    tracing::info!(consumer = %spec.label, subject = %spec.subject, "consumer started");

    while !cancel.is_cancelled() {
        let batch = consumer
            .batch()
            .max_messages(spec.batch.max(1))
            .expires(Duration::from_secs(2))
            .messages();
        let mut batch = tokio::select! {
            _ = cancel.cancelled() => break,
            b = batch => match b {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(consumer = %spec.label, error = %e, "fetch failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => None,
                m = batch.next() => m,
            };
            let Some(msg) = next else { break };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(consumer = %spec.label, error = %e, "receive failed");
                    break;
                }
            };
            process(&bus, &spec, &handler, msg).await;
        }
    }
    tracing::info!(consumer = %spec.label, "consumer stopped");
    Ok(())
}

async fn process<E, H, Fut>(
    bus: &Bus,
    spec: &ConsumerSpec,
    handler: &H,
    msg: async_nats::jetstream::Message,
) where
    E: Event,
    H: Fn(Envelope<E>) -> Fut + Send + Sync,
    Fut: Future<Output = Outcome> + Send,
{
    let (delivered, sequence) = msg
        .info()
        .map(|i| (i.delivered, i.stream_sequence))
        .unwrap_or((1, 0));
    let outcome = match Envelope::<E>::from_bytes(&msg.payload) {
        Err(e) => Outcome::Reject(e.to_string()),
        Ok(env) => {
            let event_id = env.id;
            let span = tracing::info_span!("event", consumer = %spec.label, event.id = %event_id, event.type = E::TYPE, delivered);
            let work = handler(env).instrument(span);
            tokio::pin!(work);
            // Progress acks keep a long handler's event from being redelivered meanwhile.
            let mut tick = tokio::time::interval(spec.ack_wait / 3);
            tick.tick().await;
            loop {
                tokio::select! {
                    outcome = &mut work => break outcome,
                    _ = tick.tick() => {
                        if let Err(e) = msg.ack_with(AckKind::Progress).await {
                            tracing::warn!(consumer = %spec.label, error = %e, "progress ack failed");
                        }
                    }
                }
            }
        }
    };
    let result = match outcome {
        Outcome::Done => msg.ack().await,
        Outcome::Retry(base) if spec.max_deliver <= 0 || delivered < spec.max_deliver => {
            let delay = backoff(base, delivered);
            tracing::warn!(consumer = %spec.label, delivered, delay_ms = delay.as_millis() as u64, "event will be retried");
            msg.ack_with(AckKind::Nak(Some(delay))).await
        }
        Outcome::Retry(_) => {
            let reason = format!("gave up after {delivered} deliveries");
            set_aside(bus, spec, &msg, &reason, delivered, sequence).await;
            msg.ack_with(AckKind::Term).await
        }
        Outcome::Reject(reason) => {
            set_aside(bus, spec, &msg, &reason, delivered, sequence).await;
            msg.ack_with(AckKind::Term).await
        }
    };
    if let Err(e) = result {
        tracing::warn!(consumer = %spec.label, error = %e, "ack failed; the event may be redelivered");
    }
}

async fn set_aside(
    bus: &Bus,
    spec: &ConsumerSpec,
    msg: &async_nats::jetstream::Message,
    reason: &str,
    delivered: i64,
    stream_sequence: u64,
) {
    tracing::error!(consumer = %spec.label, subject = %msg.subject, delivered, reason, "event set aside on the dead-letter subject");
    let mut payload = String::from_utf8_lossy(&msg.payload).into_owned();
    if payload.len() > 64 * 1024 {
        let mut cut = 64 * 1024;
        while !payload.is_char_boundary(cut) {
            cut -= 1;
        }
        payload.truncate(cut);
    }
    let letter = DeadLetter {
        consumer: spec.label.clone(),
        subject: msg.subject.to_string(),
        reason: reason.to_owned(),
        delivered,
        stream_sequence,
        payload,
    };
    if let Err(e) = bus.publish(&bus.envelope(letter)).await {
        tracing::error!(consumer = %spec.label, error = %e, "could not publish the dead letter");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_a_cap() {
        let base = Duration::from_secs(2);
        assert_eq!(backoff(base, 1), Duration::from_secs(2));
        assert_eq!(backoff(base, 2), Duration::from_secs(4));
        assert_eq!(backoff(base, 4), Duration::from_secs(16));
        assert_eq!(backoff(base, 7), MAX_RETRY_DELAY);
        assert_eq!(backoff(base, i64::MAX), MAX_RETRY_DELAY);
        assert_eq!(backoff(base, 0), base);
    }

    #[test]
    fn durable_consumers_retry_until_done_by_default() {
        let spec = ConsumerSpec::durable("c", "data.ready");
        assert!(spec.max_deliver <= 0);
        assert_eq!(spec.batch, 32);
        assert!(
            ConsumerSpec::ephemeral("e", "model.promoted")
                .durable
                .is_none()
        );
    }
}
