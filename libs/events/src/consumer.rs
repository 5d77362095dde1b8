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

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics;
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

/// What a batch handler decided about the events it was given (see [`run_batch`]).
#[derive(Debug, Clone, PartialEq)]
pub enum BatchOutcome {
    /// Every event's effect is applied (or was already), except the events at the listed
    /// positions, which can never be processed: those are set aside with their reason.
    Done { rejected: Vec<(usize, String)> },
    /// A transient failure: deliver the whole batch again after the delay. Since the batch's
    /// effects are written in one transaction, none of them was applied.
    Retry(Duration),
}

impl BatchOutcome {
    /// Everything applied, nothing rejected.
    pub fn done() -> Self {
        Self::Done {
            rejected: Vec::new(),
        }
    }
}

/// Fetch failures in a row after which the consumer is looked up (and created) again: after a
/// NATS restart an ephemeral consumer is gone, and fetching from it fails forever.
const RECREATE_AFTER_FAILURES: u32 = 3;

async fn create_consumer(
    bus: &Bus,
    spec: &ConsumerSpec,
) -> Result<jetstream::consumer::Consumer<pull::Config>, BusError> {
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
        // Enough for the largest batch, so a batch handler always gets a whole batch.
        max_ack_pending: (spec.batch.max(1) as i64 * 4).max(1000),
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
    match &spec.durable {
        Some(name) => stream.get_or_create_consumer(name, config).await,
        None => stream.create_consumer(config).await,
    }
    .map_err(|e| consumer_err(Box::new(e)))
}

/// Attempts, a second apart, at creating a consumer when its task starts.
const FIRST_CREATE_ATTEMPTS: u32 = 30;

/// Pulls messages until `cancel` fires and hands them to `on_messages`: one at a time as they
/// arrive when `batched` is false; when it is true, whatever is waiting (up to `spec.batch`) at
/// once, after waiting for the first, so a quiet subject is handled without delay and a busy
/// one in large batches. Survives NATS restarts: after [`RECREATE_AFTER_FAILURES`] failed
/// fetches in a row the consumer is created again (an ephemeral one then sees only events from
/// then on, and `on_recreated` runs so its owner can catch up by other means).
async fn pull_loop<F, Fut>(
    bus: &Bus,
    spec: &ConsumerSpec,
    cancel: &CancellationToken,
    batched: bool,
    on_recreated: &(dyn Fn() + Send + Sync),
    mut on_messages: F,
) -> Result<(), BusError>
where
    F: FnMut(Vec<async_nats::jetstream::Message>) -> Fut,
    Fut: Future<Output = ()>,
{
    // While NATS is unreachable or restarting, creating the consumer is retried; only a
    // server that refuses it for half a minute (a misconfigured stream) fails the task.
    let mut attempts = 0u32;
    let mut consumer = loop {
        attempts += 1;
        let created = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            c = create_consumer(bus, spec) => c,
        };
        match created {
            Ok(c) => break c,
            Err(e) if attempts >= FIRST_CREATE_ATTEMPTS => return Err(e),
            Err(e) => {
                tracing::warn!(consumer = %spec.label, error = %e, "cannot create the consumer yet; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    tracing::info!(consumer = %spec.label, subject = %spec.subject, "consumer started");
    let mut failures = 0u32;
    let max = spec.batch.max(1);
    while !cancel.is_cancelled() {
        if failures >= RECREATE_AFTER_FAILURES {
            let created = tokio::select! {
                _ = cancel.cancelled() => break,
                c = create_consumer(bus, spec) => c,
            };
            match created {
                Ok(c) => {
                    tracing::warn!(consumer = %spec.label, "consumer created again after failed fetches");
                    consumer = c;
                    failures = 0;
                    on_recreated();
                }
                Err(e) => {
                    tracing::warn!(consumer = %spec.label, error = %e, "cannot create the consumer again; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            }
        }
        // Batched: wait for the first message only; the rest is fetched without waiting below.
        let wait_for = if batched { 1 } else { max };
        let fetch = consumer
            .batch()
            .max_messages(wait_for)
            .expires(Duration::from_secs(2))
            .messages();
        let mut batch = tokio::select! {
            _ = cancel.cancelled() => break,
            b = fetch => match b {
                Ok(b) => b,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(consumer = %spec.label, error = %e, failures, "fetch failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let mut received = Vec::new();
        let mut got_any = false;
        let mut broken = false;
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => None,
                m = batch.next() => m,
            };
            match next {
                None => break,
                Some(Ok(m)) if batched => {
                    got_any = true;
                    received.push(m);
                }
                Some(Ok(m)) => {
                    got_any = true;
                    failures = 0;
                    on_messages(vec![m]).await;
                }
                Some(Err(e)) => {
                    tracing::warn!(consumer = %spec.label, error = %e, "receive failed");
                    broken = true;
                    break;
                }
            }
        }
        if batched && !received.is_empty() && received.len() < max && !cancel.is_cancelled() {
            // Whatever else is waiting, without waiting for more.
            let more = consumer
                .fetch()
                .max_messages(max - received.len())
                .messages();
            let more = tokio::select! {
                _ = cancel.cancelled() => None,
                m = more => m.ok(),
            };
            if let Some(mut more) = more {
                loop {
                    let next = tokio::select! {
                        _ = cancel.cancelled() => None,
                        m = more.next() => m,
                    };
                    match next {
                        Some(Ok(m)) => received.push(m),
                        _ => break,
                    }
                }
            }
        }
        // An idle ephemeral consumer may be gone without a fetch failing (a NATS restart
        // drops it): look it up, and create it again at once if it is missing.
        if spec.durable.is_none() && !got_any && !broken && !cancel.is_cancelled() {
            let info = tokio::select! {
                _ = cancel.cancelled() => break,
                i = tokio::time::timeout(Duration::from_secs(2), consumer.info()) => i,
            };
            if !matches!(info, Ok(Ok(_))) {
                failures = RECREATE_AFTER_FAILURES;
                continue;
            }
        }
        // A fetch that ends in an error with nothing received is a failure; one that expired
        // empty is a healthy, idle consumer.
        if broken && received.is_empty() {
            failures += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        } else if !received.is_empty() {
            failures = 0;
        }
        if !received.is_empty() {
            on_messages(received).await;
        }
    }
    tracing::info!(consumer = %spec.label, "consumer stopped");
    Ok(())
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
    run_notified(bus, spec, cancel, || {}, handler).await
}

/// [`run`], calling `on_recreated` whenever the consumer had to be created again (after a NATS
/// restart, say): an ephemeral consumer missed whatever was published meanwhile.
pub async fn run_notified<E, H, Fut>(
    bus: Bus,
    spec: ConsumerSpec,
    cancel: CancellationToken,
    on_recreated: impl Fn() + Send + Sync,
    handler: H,
) -> Result<(), BusError>
where
    E: Event,
    H: Fn(Envelope<E>) -> Fut + Send + Sync,
    Fut: Future<Output = Outcome> + Send,
{
    let (b, s, c, h) = (&bus, &spec, &cancel, &handler);
    pull_loop(b, s, c, false, &on_recreated, |messages| async move {
        for msg in messages {
            process(b, s, h, msg).await;
        }
    })
    .await
}

/// Like [`run`], but hands `handler` every event of a fetch (up to `spec.batch`) at once, so it
/// can apply them in one transaction: the way to keep up with a high-rate subject such as
/// `predictions.logged`. Events that cannot be parsed are set aside before the handler sees
/// them; the handler's [`BatchOutcome`] then acks, retries or sets aside the rest.
pub async fn run_batch<E, H, Fut>(
    bus: Bus,
    spec: ConsumerSpec,
    cancel: CancellationToken,
    handler: H,
) -> Result<(), BusError>
where
    E: Event,
    H: Fn(Vec<Envelope<E>>) -> Fut + Send + Sync,
    Fut: Future<Output = BatchOutcome> + Send,
{
    let (b, s, c, h) = (&bus, &spec, &cancel, &handler);
    pull_loop(b, s, c, true, &|| {}, |messages| async move {
        process_batch(b, s, h, messages).await;
    })
    .await
}

async fn process_batch<E, H, Fut>(
    bus: &Bus,
    spec: &ConsumerSpec,
    handler: &H,
    messages: Vec<async_nats::jetstream::Message>,
) where
    E: Event,
    H: Fn(Vec<Envelope<E>>) -> Fut + Send + Sync,
    Fut: Future<Output = BatchOutcome> + Send,
{
    if let Some(last) = messages.last() {
        lag(spec, last);
    }
    let mut events = Vec::with_capacity(messages.len());
    let mut kept = Vec::with_capacity(messages.len());
    for msg in messages {
        match Envelope::<E>::from_bytes(&msg.payload) {
            Ok(env) => {
                events.push(env);
                kept.push(msg);
            }
            Err(e) => {
                metrics::handled(&spec.label, "rejected", 1);
                set_aside_and_term(bus, spec, &msg, &e.to_string()).await;
            }
        }
    }
    if events.is_empty() {
        return;
    }
    let span = tracing::info_span!("event_batch", consumer = %spec.label, events = events.len(), event.type = E::TYPE);
    let work = handler(events).instrument(span);
    tokio::pin!(work);
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(spec.ack_wait / 3);
    tick.tick().await;
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break outcome,
            _ = tick.tick() => {
                for msg in &kept {
                    if let Err(e) = msg.ack_with(AckKind::Progress).await {
                        tracing::warn!(consumer = %spec.label, error = %e, "progress ack failed");
                    }
                }
            }
        }
    };
    metrics::handle_time(&spec.label, started.elapsed().as_secs_f64());
    match outcome {
        BatchOutcome::Done { rejected } => {
            let rejected: std::collections::HashMap<usize, String> = rejected.into_iter().collect();
            for (i, msg) in kept.into_iter().enumerate() {
                match rejected.get(&i) {
                    Some(reason) => {
                        metrics::handled(&spec.label, "rejected", 1);
                        set_aside_and_term(bus, spec, &msg, reason).await;
                    }
                    None => {
                        metrics::handled(&spec.label, "done", 1);
                        ack_or_warn(spec, msg.ack().await);
                    }
                }
            }
        }
        BatchOutcome::Retry(base) => {
            for msg in kept {
                let (delivered, _) = delivery(&msg);
                if spec.max_deliver > 0 && delivered >= spec.max_deliver {
                    metrics::handled(&spec.label, "exhausted", 1);
                    let reason = format!("gave up after {delivered} deliveries");
                    set_aside_and_term(bus, spec, &msg, &reason).await;
                } else {
                    metrics::handled(&spec.label, "retry", 1);
                    let delay = backoff(base, delivered);
                    tracing::warn!(consumer = %spec.label, delivered, delay_ms = delay.as_millis() as u64, "event will be retried");
                    ack_or_warn(spec, msg.ack_with(AckKind::Nak(Some(delay))).await);
                }
            }
        }
    }
}

/// Sets `msg` aside on the dead-letter subject and terminates it, so it is never redelivered.
async fn set_aside_and_term(
    bus: &Bus,
    spec: &ConsumerSpec,
    msg: &async_nats::jetstream::Message,
    reason: &str,
) {
    let (delivered, sequence) = delivery(msg);
    set_aside(bus, spec, msg, reason, delivered, sequence).await;
    ack_or_warn(spec, msg.ack_with(AckKind::Term).await);
}

/// Records the consumer's lag as JetStream reports it with each delivery.
fn lag(spec: &ConsumerSpec, msg: &async_nats::jetstream::Message) {
    if let Ok(info) = msg.info() {
        metrics::pending(&spec.label, info.pending);
    }
}

fn delivery(msg: &async_nats::jetstream::Message) -> (i64, u64) {
    msg.info()
        .map(|i| (i.delivered, i.stream_sequence))
        .unwrap_or((1, 0))
}

fn ack_or_warn(spec: &ConsumerSpec, result: Result<(), async_nats::Error>) {
    if let Err(e) = result {
        tracing::warn!(consumer = %spec.label, error = %e, "ack failed; the event may be redelivered");
    }
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
    let (delivered, sequence) = delivery(&msg);
    lag(spec, &msg);
    let started = std::time::Instant::now();
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
    metrics::handle_time(&spec.label, started.elapsed().as_secs_f64());
    let result = match outcome {
        Outcome::Done => {
            metrics::handled(&spec.label, "done", 1);
            msg.ack().await
        }
        Outcome::Retry(base) if spec.max_deliver <= 0 || delivered < spec.max_deliver => {
            metrics::handled(&spec.label, "retry", 1);
            let delay = backoff(base, delivered);
            tracing::warn!(consumer = %spec.label, delivered, delay_ms = delay.as_millis() as u64, "event will be retried");
            msg.ack_with(AckKind::Nak(Some(delay))).await
        }
        Outcome::Retry(_) => {
            metrics::handled(&spec.label, "exhausted", 1);
            let reason = format!("gave up after {delivered} deliveries");
            set_aside(bus, spec, &msg, &reason, delivered, sequence).await;
            msg.ack_with(AckKind::Term).await
        }
        Outcome::Reject(reason) => {
            metrics::handled(&spec.label, "rejected", 1);
            set_aside(bus, spec, &msg, &reason, delivered, sequence).await;
            msg.ack_with(AckKind::Term).await
        }
    };
    ack_or_warn(spec, result);
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
    metrics::dead_lettered(&spec.label);
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
