//! The bus, consumers and outbox against the real NATS JetStream and Postgres. Each test has
//! its own subject namespace (so its own stream) and, for the outbox, its own database.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use petrel_events::consumer::{self, ConsumerSpec, Outcome};
use petrel_events::outbox::{self, Relay};
use petrel_events::payloads::DeadLetter;
use petrel_events::{Bus, BusError, Envelope, Event, Namespace};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(15);
/// Longer than the test consumers' ack wait, so an unacknowledged event would be redelivered.
const QUIET: Duration = Duration::from_millis(1500);
/// The relative subject the test events travel on (inside the stream's `data.>` family).
const PING: &str = "data.ping";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ping {
    n: u32,
}

impl Event for Ping {
    const TYPE: &'static str = "petrel.test.ping.v1";
    fn subject(&self) -> String {
        PING.to_owned()
    }
}

/// Another event type on the same subject, which a `Ping` consumer must not read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pong {
    n: u32,
}

impl Event for Pong {
    const TYPE: &'static str = "petrel.test.pong.v1";
    fn subject(&self) -> String {
        PING.to_owned()
    }
}

fn nats_url() -> String {
    std::env::var("PETREL_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn fresh_namespace() -> Namespace {
    Namespace::new(Some(&format!("t{}", Uuid::now_v7().simple())))
}

async fn connect(ns: &Namespace) -> Bus {
    Bus::connect(&nats_url(), ns.clone(), "petrel/test")
        .await
        .expect("NATS with JetStream is running")
}

async fn stream_messages(bus: &Bus) -> u64 {
    let mut stream = bus
        .jetstream()
        .get_stream(bus.namespace().stream_name())
        .await
        .unwrap();
    stream.info().await.unwrap().state.messages
}

async fn consumer_info(bus: &Bus, name: &str) -> async_nats::jetstream::consumer::Info {
    bus.jetstream()
        .get_stream(bus.namespace().stream_name())
        .await
        .unwrap()
        .consumer_info(name)
        .await
        .unwrap()
}

/// Removes the test's stream.
async fn cleanup(bus: &Bus) {
    bus.jetstream()
        .delete_stream(bus.namespace().stream_name())
        .await
        .unwrap();
}

/// Polls `check` until it holds, failing the test after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A core-NATS subscription (it sees the JetStream-stored subjects too), ready on return.
async fn subscribe(bus: &Bus, relative: &str) -> async_nats::Subscriber {
    let sub = bus
        .client()
        .subscribe(bus.namespace().subject(relative))
        .await
        .unwrap();
    bus.client().flush().await.unwrap();
    sub
}

async fn next_message(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("a message arrives in time")
        .expect("the subscription is open")
}

async fn assert_quiet(sub: &mut async_nats::Subscriber) {
    if let Ok(Some(m)) = tokio::time::timeout(QUIET, sub.next()).await {
        panic!(
            "unexpected message on {}: {}",
            m.subject,
            String::from_utf8_lossy(&m.payload)
        );
    }
}

/// A durable consumer on [`PING`] with a short ack wait.
fn spec(name: &str) -> ConsumerSpec {
    ConsumerSpec {
        ack_wait: Duration::from_secs(1),
        ..ConsumerSpec::durable(name, PING)
    }
}

/// A consumer running in the background, with the numbers its handler saw.
struct Running {
    seen: Arc<Mutex<Vec<u32>>>,
    cancel: CancellationToken,
    handle: JoinHandle<Result<(), BusError>>,
}

impl Running {
    /// Runs a consumer whose handler records each event's `n` and answers `decide(n, nth)`,
    /// where `nth` counts the calls for that `n` from 1.
    fn start<D>(bus: &Bus, spec: ConsumerSpec, decide: D) -> Self
    where
        D: Fn(u32, usize) -> Outcome + Send + Sync + 'static,
    {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let decide = Arc::new(decide);
        let s = seen.clone();
        let handle = tokio::spawn(consumer::run(
            bus.clone(),
            spec,
            cancel.clone(),
            move |env: Envelope<Ping>| {
                let seen = s.clone();
                let decide = decide.clone();
                async move {
                    let n = env.data.n;
                    let nth = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(n);
                        seen.iter().filter(|&&m| m == n).count()
                    };
                    decide(n, nth)
                }
            },
        ));
        Self {
            seen,
            cancel,
            handle,
        }
    }

    fn seen(&self) -> Vec<u32> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_seen(&self, expected: &[u32]) {
        eventually(&format!("handler sees {expected:?}"), || async {
            self.seen() == expected
        })
        .await;
    }

    /// Cancels the consumer and checks that `run` returns `Ok` promptly.
    async fn stop(self) -> Vec<u32> {
        self.cancel.cancel();
        let result = tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("the consumer stops promptly on cancel")
            .expect("the consumer does not panic");
        assert!(result.is_ok(), "{result:?}");
        self.seen.lock().unwrap().clone()
    }
}

fn dead_letter(msg: &async_nats::Message) -> Envelope<DeadLetter> {
    Envelope::from_bytes(&msg.payload).expect("a dead-letter envelope")
}

#[tokio::test]
async fn connecting_creates_the_stream_idempotently() {
    let ns = fresh_namespace();
    let first = connect(&ns).await;
    let second = connect(&ns).await;
    assert!(first.is_connected() && second.is_connected());
    second.ensure_stream().await.unwrap();

    let mut stream = first
        .jetstream()
        .get_stream(ns.stream_name())
        .await
        .unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.name, ns.stream_name());
    let mut subjects = info.config.subjects.clone();
    subjects.sort();
    let mut expected: Vec<String> = [
        "alerts.>",
        "data.>",
        "deadletter.>",
        "labels.>",
        "model.>",
        "predictions.>",
    ]
    .iter()
    .map(|f| ns.subject(f))
    .collect();
    expected.sort();
    assert_eq!(subjects, expected);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));

    // Events stay in their namespace's stream.
    let other = connect(&fresh_namespace()).await;
    first.publish(&first.envelope(Ping { n: 1 })).await.unwrap();
    assert_eq!(stream_messages(&first).await, 1);
    assert_eq!(stream_messages(&other).await, 0);

    cleanup(&first).await;
    cleanup(&other).await;
}

#[tokio::test]
async fn an_envelope_published_twice_is_stored_once() {
    let bus = connect(&fresh_namespace()).await;
    let env = bus.envelope(Ping { n: 7 });
    bus.publish(&env).await.unwrap();
    bus.publish(&env).await.unwrap();
    assert_eq!(stream_messages(&bus).await, 1);

    // What is stored is the envelope, under its subject, with its id as the message id.
    let stream = bus
        .jetstream()
        .get_stream(bus.namespace().stream_name())
        .await
        .unwrap();
    let stored = stream
        .get_last_raw_message_by_subject(&bus.namespace().subject(PING))
        .await
        .unwrap();
    assert_eq!(Envelope::<Ping>::from_bytes(&stored.payload).unwrap(), env);
    assert_eq!(
        stored
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned()),
        Some(env.id.to_string())
    );
    assert_eq!(env.source, "petrel/test");

    // Another envelope with the same data is another event.
    bus.publish(&bus.envelope(Ping { n: 7 })).await.unwrap();
    assert_eq!(stream_messages(&bus).await, 2);
    cleanup(&bus).await;
}

#[tokio::test]
async fn done_acknowledges_so_the_event_is_not_redelivered() {
    let bus = connect(&fresh_namespace()).await;
    let consumer = Running::start(&bus, spec("done"), |_, _| Outcome::Done);
    bus.publish(&bus.envelope(Ping { n: 1 })).await.unwrap();
    bus.publish(&bus.envelope(Ping { n: 2 })).await.unwrap();
    consumer.wait_seen(&[1, 2]).await;
    eventually("both events acknowledged", || async {
        let info = consumer_info(&bus, "done").await;
        info.ack_floor.stream_sequence == 2 && info.num_ack_pending == 0
    })
    .await;
    // Past the ack wait: nothing comes back.
    tokio::time::sleep(QUIET).await;
    assert_eq!(consumer.stop().await, vec![1, 2]);
    assert_eq!(consumer_info(&bus, "done").await.num_redelivered, 0);
    cleanup(&bus).await;
}

#[tokio::test]
async fn retry_redelivers_until_done() {
    let bus = connect(&fresh_namespace()).await;
    let mut dead = subscribe(&bus, "deadletter.>").await;
    let consumer = Running::start(&bus, spec("retry"), |_, nth| {
        if nth < 3 {
            Outcome::Retry(Duration::from_millis(100))
        } else {
            Outcome::Done
        }
    });
    bus.publish(&bus.envelope(Ping { n: 5 })).await.unwrap();
    consumer.wait_seen(&[5, 5, 5]).await;
    eventually("the event acknowledged", || async {
        consumer_info(&bus, "retry").await.ack_floor.stream_sequence == 1
    })
    .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(consumer.stop().await, vec![5, 5, 5]);
    assert_quiet(&mut dead).await;
    cleanup(&bus).await;
}

#[tokio::test]
async fn by_default_a_transient_failure_is_retried_past_any_fixed_count() {
    let bus = connect(&fresh_namespace()).await;
    let mut dead = subscribe(&bus, "deadletter.>").await;
    // Twelve failures (an outage longer than the old limit of ten deliveries), then success;
    // the backoff starts at 1 ms so the test stays quick.
    let consumer = Running::start(&bus, spec("patient"), |_, nth| {
        if nth < 13 {
            Outcome::Retry(Duration::from_millis(1))
        } else {
            Outcome::Done
        }
    });
    bus.publish(&bus.envelope(Ping { n: 4 })).await.unwrap();
    // The handler has seen every delivery (so the consumer exists) before its state is read.
    consumer.wait_seen(&[4; 13]).await;
    eventually("the event acknowledged after 13 deliveries", || async {
        consumer_info(&bus, "patient")
            .await
            .ack_floor
            .stream_sequence
            == 1
    })
    .await;
    assert_eq!(consumer.stop().await, vec![4; 13]);
    assert_quiet(&mut dead).await;
    cleanup(&bus).await;
}

#[tokio::test]
async fn retries_past_max_deliver_are_set_aside() {
    let bus = connect(&fresh_namespace()).await;
    let mut dead = subscribe(&bus, "deadletter.>").await;
    let spec = ConsumerSpec {
        max_deliver: 3,
        ..spec("flaky")
    };
    let consumer = Running::start(&bus, spec, |_, _| Outcome::Retry(Duration::from_millis(50)));
    let env = bus.envelope(Ping { n: 9 });
    bus.publish(&env).await.unwrap();

    let msg = next_message(&mut dead).await;
    assert_eq!(
        msg.subject.as_str(),
        bus.namespace().subject("deadletter.flaky")
    );
    let letter = dead_letter(&msg);
    assert_eq!(letter.data.consumer, "flaky");
    assert_eq!(letter.data.delivered, 3);
    assert_eq!(letter.data.reason, "gave up after 3 deliveries");
    assert_eq!(
        Envelope::<Ping>::from_bytes(letter.data.payload.as_bytes()).unwrap(),
        env
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(consumer.stop().await, vec![9, 9, 9]);
    assert_quiet(&mut dead).await;
    cleanup(&bus).await;
}

#[tokio::test]
async fn rejected_events_become_dead_letters_and_are_not_retried() {
    let bus = connect(&fresh_namespace()).await;
    let mut dead = subscribe(&bus, "deadletter.>").await;
    let consumer = Running::start(&bus, spec("picky"), |n, _| {
        if n == 13 {
            Outcome::Reject("unlucky number".to_owned())
        } else {
            Outcome::Done
        }
    });
    let bad = bus.envelope(Ping { n: 13 });
    bus.publish(&bad).await.unwrap();
    bus.publish(&bus.envelope(Ping { n: 14 })).await.unwrap();

    let msg = next_message(&mut dead).await;
    assert_eq!(
        msg.subject.as_str(),
        bus.namespace().subject("deadletter.picky")
    );
    let letter = dead_letter(&msg);
    assert_eq!(letter.source, "petrel/test");
    assert_eq!(
        letter.data,
        DeadLetter {
            consumer: "picky".to_owned(),
            subject: bus.namespace().subject(PING),
            reason: "unlucky number".to_owned(),
            delivered: 1,
            stream_sequence: 1,
            payload: String::from_utf8(bad.to_bytes().unwrap()).unwrap(),
        }
    );
    // The consumer went on, and the rejected event is never seen again.
    consumer.wait_seen(&[13, 14]).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(consumer.stop().await, vec![13, 14]);
    assert_quiet(&mut dead).await;
    // The dead letter stays in the stream.
    assert_eq!(stream_messages(&bus).await, 3);
    cleanup(&bus).await;
}

#[tokio::test]
async fn malformed_and_mistyped_payloads_are_set_aside_and_the_consumer_goes_on() {
    let bus = connect(&fresh_namespace()).await;
    let mut dead = subscribe(&bus, "deadletter.>").await;
    let consumer = Running::start(&bus, spec("strict"), |_, _| Outcome::Done);

    bus.publish_raw(PING, Uuid::now_v7(), Bytes::from_static(b"not json"))
        .await
        .unwrap();
    let pong = Envelope::new("petrel/test", Pong { n: 1 });
    bus.publish(&pong).await.unwrap();
    bus.publish(&bus.envelope(Ping { n: 2 })).await.unwrap();

    let first = dead_letter(&next_message(&mut dead).await);
    assert_eq!(first.data.consumer, "strict");
    assert_eq!(first.data.payload, "not json");
    assert!(
        first.data.reason.contains("not a valid event envelope"),
        "{}",
        first.data.reason
    );
    let second = dead_letter(&next_message(&mut dead).await);
    assert!(
        second.data.reason.contains("petrel.test.pong.v1"),
        "{}",
        second.data.reason
    );
    assert_eq!(
        Envelope::<Pong>::from_bytes(second.data.payload.as_bytes()).unwrap(),
        pong
    );

    consumer.wait_seen(&[2]).await;
    // Counted in the consumer's own sequence: the dead letters share the stream, so the three
    // events' stream sequences depend on how the dead letters interleave with them.
    eventually("all three acknowledged", || async {
        let info = consumer_info(&bus, "strict").await;
        info.ack_floor.consumer_sequence == 3 && info.num_ack_pending == 0 && info.num_pending == 0
    })
    .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(consumer.stop().await, vec![2]);
    assert_quiet(&mut dead).await;
    cleanup(&bus).await;
}

#[tokio::test]
async fn a_durable_consumer_resumes_where_it_stopped() {
    let bus = connect(&fresh_namespace()).await;
    let first = Running::start(&bus, spec("worker"), |_, _| Outcome::Done);
    bus.publish(&bus.envelope(Ping { n: 1 })).await.unwrap();
    first.wait_seen(&[1]).await;
    eventually("the first event acknowledged", || async {
        consumer_info(&bus, "worker")
            .await
            .ack_floor
            .stream_sequence
            == 1
    })
    .await;
    assert_eq!(first.stop().await, vec![1]);

    // Published while nobody consumes; an event on another subject is not for this consumer.
    bus.publish(&bus.envelope(Ping { n: 2 })).await.unwrap();
    bus.publish_raw(
        "data.other",
        Uuid::now_v7(),
        Bytes::from_static(b"not for the worker"),
    )
    .await
    .unwrap();

    let mut dead = subscribe(&bus, "deadletter.>").await;
    let second = Running::start(&bus, spec("worker"), |_, _| Outcome::Done);
    second.wait_seen(&[2]).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(second.stop().await, vec![2]);
    assert_quiet(&mut dead).await;
    cleanup(&bus).await;
}

#[tokio::test]
async fn an_ephemeral_consumer_sees_only_new_events() {
    let bus = connect(&fresh_namespace()).await;
    bus.publish(&bus.envelope(Ping { n: 1 })).await.unwrap();
    let consumer = Running::start(&bus, ConsumerSpec::ephemeral("watcher", PING), |_, _| {
        Outcome::Done
    });
    eventually("the consumer exists", || async {
        let mut stream = bus
            .jetstream()
            .get_stream(bus.namespace().stream_name())
            .await
            .unwrap();
        stream.info().await.unwrap().state.consumer_count == 1
    })
    .await;
    bus.publish(&bus.envelope(Ping { n: 2 })).await.unwrap();
    consumer.wait_seen(&[2]).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(consumer.stop().await, vec![2]);
    cleanup(&bus).await;
}

// ---- outbox ----

static NO_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;

/// A pool on a fresh database, in a schema with the common tables (`outbox` among them).
async fn fresh_pool() -> sqlx::PgPool {
    let config = petrel_db::DbConfig {
        url: petrel_db::testing::fresh_database_url(),
        schema: "events_test".to_owned(),
        max_connections: 4,
    };
    petrel_db::connect(&config, &NO_MIGRATIONS)
        .await
        .expect("Postgres is running")
}

#[tokio::test]
async fn a_rolled_back_enqueue_publishes_nothing() {
    let pool = fresh_pool().await;
    let bus = connect(&fresh_namespace()).await;
    let mut sub = subscribe(&bus, PING).await;
    let relay = Relay::new(pool.clone(), bus.clone());

    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, &bus.envelope(Ping { n: 1 }))
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    assert_eq!(relay.pending().await.unwrap(), 0);
    assert_eq!(relay.drain().await.unwrap(), 0);
    assert_quiet(&mut sub).await;
    assert_eq!(stream_messages(&bus).await, 0);
    cleanup(&bus).await;
}

#[tokio::test]
async fn a_committed_enqueue_is_published_exactly_once() {
    let pool = fresh_pool().await;
    let bus = connect(&fresh_namespace()).await;
    let mut sub = subscribe(&bus, PING).await;
    let relay = Relay::new(pool.clone(), bus.clone());

    let first = bus.envelope(Ping { n: 1 });
    let second = bus.envelope(Ping { n: 2 });
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, &first).await.unwrap();
    outbox::enqueue(&mut tx, &second).await.unwrap();
    // Not visible to the relay before commit.
    assert_eq!(relay.pending().await.unwrap(), 0);
    assert_eq!(relay.drain().await.unwrap(), 0);
    tx.commit().await.unwrap();

    assert_eq!(relay.pending().await.unwrap(), 2);
    assert_eq!(relay.drain().await.unwrap(), 2);
    assert_eq!(relay.pending().await.unwrap(), 0);
    // In order, intact, under their own ids.
    let got = next_message(&mut sub).await;
    assert_eq!(Envelope::<Ping>::from_bytes(&got.payload).unwrap(), first);
    let got = next_message(&mut sub).await;
    assert_eq!(Envelope::<Ping>::from_bytes(&got.payload).unwrap(), second);

    // A second drain has nothing to do.
    assert_eq!(relay.drain().await.unwrap(), 0);
    assert_quiet(&mut sub).await;
    assert_eq!(stream_messages(&bus).await, 2);

    // A row published again (a relay that died before marking it) is stored once.
    sqlx::query("UPDATE outbox SET published_at = NULL WHERE id = $1")
        .bind(first.id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(relay.pending().await.unwrap(), 1);
    assert_eq!(relay.drain().await.unwrap(), 1);
    assert_eq!(stream_messages(&bus).await, 2);
    let published: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(published, 2);
    cleanup(&bus).await;
}

#[tokio::test]
async fn the_running_relay_publishes_when_poked_and_stops_on_cancel() {
    let pool = fresh_pool().await;
    let bus = connect(&fresh_namespace()).await;
    let mut sub = subscribe(&bus, PING).await;
    let relay = Relay::new(pool.clone(), bus.clone());
    let cancel = CancellationToken::new();
    let running = tokio::spawn(relay.clone().run(cancel.clone()));

    let env = bus.envelope(Ping { n: 3 });
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, &env).await.unwrap();
    tx.commit().await.unwrap();
    relay.poke();

    let got = next_message(&mut sub).await;
    assert_eq!(Envelope::<Ping>::from_bytes(&got.payload).unwrap(), env);
    eventually("the row is marked published", || async {
        relay.pending().await.unwrap() == 0
    })
    .await;

    cancel.cancel();
    tokio::time::timeout(PATIENCE, running)
        .await
        .expect("the relay stops promptly on cancel")
        .unwrap();
    assert_quiet(&mut sub).await;
    assert_eq!(stream_messages(&bus).await, 1);
    cleanup(&bus).await;
}

#[tokio::test]
async fn an_event_too_large_to_publish_fails_its_transaction() {
    let pool = fresh_pool().await;
    let bus = connect(&fresh_namespace()).await;
    let relay = Relay::new(pool.clone(), bus.clone());
    let mut tx = pool.begin().await.unwrap();
    let small = bus.envelope(Ping { n: 1 });
    outbox::enqueue(&mut tx, &small).await.unwrap();
    let mut huge = bus.envelope(Ping { n: 2 });
    huge.source = "x".repeat(outbox::MAX_EVENT_BYTES);
    let err = outbox::enqueue(&mut tx, &huge).await.unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
    tx.rollback().await.unwrap();
    assert_eq!(relay.pending().await.unwrap(), 0);
    cleanup(&bus).await;
}

#[tokio::test]
async fn cleanup_forgets_only_what_can_no_longer_matter() {
    let pool = fresh_pool().await;
    let bus = connect(&fresh_namespace()).await;
    let relay = Relay::new(pool.clone(), bus.clone());
    let (old, recent) = (Uuid::now_v7(), Uuid::now_v7());
    for (id, age) in [(old, "31 days"), (recent, "1 day")] {
        sqlx::query(&format!(
            "INSERT INTO processed_events (consumer, event_id, processed_at) \
             VALUES ('c', $1, now() - interval '{age}')"
        ))
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(&format!(
            "INSERT INTO outbox (id, subject, payload, published_at) \
             VALUES ($1, 'x', '{{}}', now() - interval '{age}')"
        ))
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    }
    relay.cleanup().await;
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM processed_events")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, [recent]);
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM outbox")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, [recent]);
    cleanup(&bus).await;
}
