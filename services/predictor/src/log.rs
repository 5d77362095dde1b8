//! The prediction log: JetStream itself is the durable log.
//!
//! A request serialises each of its rows once, as the JSON of a [`LoggedPrediction`], and hands
//! them to the shipper. The shipper packs whatever has queued up (rows of one model version, up
//! to [`MAX_MESSAGE_BYTES`]) into one `predictions.logged` event, publishes it with the event id
//! as `Nats-Msg-Id`, and answers every request in it once JetStream has acknowledged the
//! message (the PubAck: the stream has stored it). Only then does a response leave. Several
//! messages are in flight at once (up to `max_in_flight`), so the PubAck's round trip does not
//! bound throughput. Postgres is written downstream, in bulk, by the consumers of the stream
//! (this service's own [`crate::store`], the labeler, the monitor).
//!
//! A publish that fails or whose ack does not come is sent again with the same id until the
//! publish deadline passes: JetStream keeps one copy within its duplicate window, so a retry
//! never logs a row twice. If the deadline passes, the requests get a 503 and nothing was
//! answered that is not logged (the rows may still have been stored: they are then logged
//! predictions nobody received, never the other way round).
//!
//! [`LoggedPrediction`]: petrel_events::payloads::LoggedPrediction

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use petrel_events::Bus;
use petrel_events::Event;
use petrel_events::payloads::{PredictionsLogged, subjects};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Largest `predictions.logged` message the shipper builds (NATS refuses more than 1 MiB by
/// default). A request's rows are split into parts no larger than this before they are queued.
pub const MAX_MESSAGE_BYTES: usize = 768 * 1024;

/// The largest row (its features as JSON) a request may send, so that any row fits a message.
pub const MAX_ROW_BYTES: usize = 64 * 1024;

/// Room in a message for the envelope around the rows.
const FRAME_BYTES: usize = 1024;

/// Why rows could not be logged. Each maps to a 503 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LogError {
    #[error("the prediction log is full ({queued_bytes} bytes wait for NATS); retry in a moment")]
    Full { queued_bytes: usize },
    #[error("the prediction log is unavailable: NATS is not connected")]
    Disconnected,
    #[error("the prediction log is unavailable: NATS did not acknowledge the predictions in time")]
    NotAcknowledged,
    #[error("the prediction log is shut down")]
    ShutDown,
}

/// How the shipper batches and how much it may hold.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Messages published and not yet acknowledged at once.
    pub max_in_flight: usize,
    /// Bytes of rows queued or in flight at most; past it requests get 503 at once.
    pub max_queued_bytes: usize,
    /// How long a message may take to be acknowledged, retries included.
    pub publish_deadline: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 32,
            max_queued_bytes: 64 << 20,
            publish_deadline: Duration::from_secs(5),
        }
    }
}

/// Rows of one model version ready to be logged: their JSON objects joined by commas.
#[derive(Debug, Default)]
pub struct Part {
    pub rows: Vec<u8>,
    pub count: usize,
}

impl Part {
    /// Appends one row, serialised with `write`.
    pub fn push(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        if self.count > 0 {
            self.rows.push(b',');
        }
        write(&mut self.rows);
        self.count += 1;
    }
}

struct Job {
    model_name: Arc<str>,
    model_version: i32,
    part: Part,
    _room: Room,
    done: oneshot::Sender<Result<(), LogError>>,
}

/// A job's room in the bounded buffer, given back (and uncounted) when the job is dropped,
/// which is when it has been answered.
struct Room {
    _permit: OwnedSemaphorePermit,
    bytes: usize,
    stats: Arc<LogStats>,
}

impl Drop for Room {
    fn drop(&mut self) {
        let before = self
            .stats
            .queued_bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
        queued_gauge(before - self.bytes);
    }
}

/// `petrel_prediction_log_queued_bytes`: rows waiting for JetStream's acknowledgement.
fn queued_gauge(bytes: usize) {
    metrics::gauge!("petrel_prediction_log_queued_bytes").set(bytes as f64);
}

/// Help texts of the prediction log's metrics.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "petrel_prediction_log_queued_bytes",
        metrics::Unit::Bytes,
        "Bytes of logged predictions queued or in flight to JetStream (requests wait on them)"
    );
    metrics::describe_gauge!(
        "petrel_prediction_log_in_flight",
        "predictions.logged messages published and not yet acknowledged"
    );
    metrics::describe_histogram!(
        "petrel_prediction_log_message_rows",
        "Predictions packed into one predictions.logged message"
    );
    metrics::describe_counter!(
        "petrel_prediction_log_failures_total",
        "predictions.logged messages JetStream did not acknowledge before the deadline (their \
         requests got a 503)"
    );
}

/// Counters the readiness check and operators read.
#[derive(Debug, Default)]
pub struct LogStats {
    queued_bytes: AtomicUsize,
    in_flight: AtomicUsize,
}

impl LogStats {
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// The requests' side: cheap to clone.
#[derive(Clone, Debug)]
pub struct Logger {
    tx: mpsc::UnboundedSender<Job>,
    room: Arc<Semaphore>,
    max_queued_bytes: usize,
    bus: Bus,
    stats: Arc<LogStats>,
}

/// The shipper task's side.
#[derive(Debug)]
pub struct Shipper {
    rx: mpsc::UnboundedReceiver<Job>,
    bus: Bus,
    config: LogConfig,
    stats: Arc<LogStats>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("rows", &self.part.count)
            .finish()
    }
}

pub fn channel(bus: Bus, config: LogConfig) -> (Logger, Shipper) {
    let (tx, rx) = mpsc::unbounded_channel();
    let stats = Arc::new(LogStats::default());
    let max = config.max_queued_bytes.max(MAX_MESSAGE_BYTES);
    let logger = Logger {
        tx,
        room: Arc::new(Semaphore::new(max)),
        max_queued_bytes: max,
        bus: bus.clone(),
        stats: stats.clone(),
    };
    (
        logger,
        Shipper {
            rx,
            bus,
            config,
            stats,
        },
    )
}

impl Logger {
    /// Logs the parts durably; returns once JetStream holds every one of them.
    pub async fn log(
        &self,
        model_name: &Arc<str>,
        model_version: i32,
        parts: Vec<Part>,
    ) -> Result<(), LogError> {
        if !self.bus.is_connected() {
            return Err(LogError::Disconnected);
        }
        let mut waits = Vec::with_capacity(parts.len());
        for part in parts {
            // The permit is the job's room in the bounded buffer; it is given back when the job
            // is answered (dropped).
            let bytes = part
                .rows
                .len()
                .clamp(1, self.max_queued_bytes)
                .min(u32::MAX as usize) as u32;
            let permit = self
                .room
                .clone()
                .try_acquire_many_owned(bytes)
                .map_err(|_| LogError::Full {
                    queued_bytes: self.stats.queued_bytes(),
                })?;
            let before = self
                .stats
                .queued_bytes
                .fetch_add(bytes as usize, Ordering::Relaxed);
            queued_gauge(before + bytes as usize);
            let room = Room {
                _permit: permit,
                bytes: bytes as usize,
                stats: self.stats.clone(),
            };
            let (done, wait) = oneshot::channel();
            let job = Job {
                model_name: model_name.clone(),
                model_version,
                part,
                _room: room,
                done,
            };
            self.tx.send(job).map_err(|_| LogError::ShutDown)?;
            waits.push(wait);
        }
        for wait in waits {
            wait.await.map_err(|_| LogError::ShutDown)??;
        }
        Ok(())
    }

    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// The log's state for operators (`GET /v1/log`): why requests may be getting 503s.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "nats_connected": self.bus.is_connected(),
            "queued_bytes": self.stats.queued_bytes(),
            "max_queued_bytes": self.max_queued_bytes,
            "messages_in_flight": self.stats.in_flight(),
            "accepting": self.unready().is_none(),
            "reason": self.unready(),
        })
    }

    /// Why the log cannot take rows right now, if it cannot: for `/readyz`.
    pub fn unready(&self) -> Option<String> {
        if !self.bus.is_connected() {
            return Some("prediction log: NATS is not connected".to_owned());
        }
        let queued = self.stats.queued_bytes();
        (queued * 10 >= self.max_queued_bytes * 9).then(|| {
            format!(
                "prediction log: {queued} of {} bytes of queue in use",
                self.max_queued_bytes
            )
        })
    }
}

/// One message being published: its jobs wait for the ack.
struct Message {
    id: Uuid,
    payload: Bytes,
    jobs: Vec<Job>,
}

impl Shipper {
    /// Runs until `stop` is cancelled or every [`Logger`] is dropped, whichever comes first.
    ///
    /// On `stop` it closes the queue, so later [`Logger::log`] calls fail at once (the request
    /// gets a 503 and no 200 is sent for rows that were not logged), then publishes and answers
    /// every job already queued before it returns. It does not wait for the senders to go:
    /// after an HTTP drain that timed out, connection tasks may still hold them indefinitely.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut in_flight = FuturesUnordered::new();
        let mut pending: Option<Job> = None;
        let mut stopping = false;
        loop {
            // Take new work only while there is room in flight.
            let room = in_flight.len() < self.config.max_in_flight.max(1);
            tokio::select! {
                biased;
                () = stop.cancelled(), if !stopping => {
                    stopping = true;
                    self.rx.close();
                }
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                first = next_job(&mut self.rx, &mut pending), if room => match first {
                    Some(first) => {
                        let message = self.pack(first, &mut pending);
                        in_flight.push(self.publish(message));
                    }
                    None => {
                        // Closed and drained (stopped, or every logger dropped).
                        while in_flight.next().await.is_some() {}
                        return;
                    }
                },
            }
        }
    }

    /// Packs `first` and whatever else is queued for the same model version into one message.
    /// A job for another version waits in `pending` for the next message.
    fn pack(&mut self, first: Job, pending: &mut Option<Job>) -> Message {
        let mut jobs = vec![first];
        let mut bytes = jobs[0].part.rows.len();
        while pending.is_none() {
            let Ok(job) = self.rx.try_recv() else { break };
            let same =
                job.model_version == jobs[0].model_version && job.model_name == jobs[0].model_name;
            if !same || bytes + 1 + job.part.rows.len() + FRAME_BYTES > MAX_MESSAGE_BYTES {
                *pending = Some(job);
                break;
            }
            bytes += 1 + job.part.rows.len();
            jobs.push(job);
        }
        metrics::histogram!("petrel_prediction_log_message_rows")
            .record(jobs.iter().map(|j| j.part.count).sum::<usize>() as f64);
        let id = Uuid::now_v7();
        let payload = frame(
            id,
            self.bus.source(),
            &jobs[0].model_name,
            jobs[0].model_version,
            jobs.iter().map(|j| j.part.rows.as_slice()),
            bytes,
        );
        Message {
            id,
            payload: Bytes::from(payload),
            jobs,
        }
    }

    fn publish(&self, message: Message) -> impl Future<Output = ()> + use<> {
        let bus = self.bus.clone();
        let deadline = tokio::time::Instant::now() + self.config.publish_deadline;
        let stats = self.stats.clone();
        let in_flight = stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("petrel_prediction_log_in_flight").set(in_flight as f64);
        async move {
            let mut attempt = 0u32;
            let result = loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let sent = tokio::time::timeout(
                    left,
                    bus.publish_raw(
                        subjects::PREDICTIONS_LOGGED,
                        message.id,
                        message.payload.clone(),
                    ),
                )
                .await;
                match sent {
                    Ok(Ok(())) => break Ok(()),
                    Ok(Err(e)) if tokio::time::Instant::now() < deadline => {
                        attempt += 1;
                        tracing::warn!(error = %e, event.id = %message.id, attempt, "publishing predictions failed; retrying");
                        let pause = Duration::from_millis(50 * u64::from(attempt.min(10)));
                        tokio::time::sleep(pause.min(left)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, event.id = %message.id, "cannot log predictions");
                        break Err(LogError::NotAcknowledged);
                    }
                    Err(_) => {
                        tracing::error!(event.id = %message.id, "predictions were not acknowledged in time");
                        break Err(LogError::NotAcknowledged);
                    }
                }
            };
            if result.is_err() {
                metrics::counter!("petrel_prediction_log_failures_total").increment(1);
            }
            for job in message.jobs {
                let _ = job.done.send(result.clone());
            }
            let in_flight = stats.in_flight.fetch_sub(1, Ordering::Relaxed) - 1;
            metrics::gauge!("petrel_prediction_log_in_flight").set(in_flight as f64);
        }
    }
}

async fn next_job(rx: &mut mpsc::UnboundedReceiver<Job>, pending: &mut Option<Job>) -> Option<Job> {
    match pending.take() {
        Some(job) => Some(job),
        None => rx.recv().await,
    }
}

/// The bytes of a `predictions.logged` envelope around rows already serialised: the same JSON
/// as `Envelope<PredictionsLogged>` would give, built without parsing or re-serialising rows.
pub fn frame<'a>(
    id: Uuid,
    source: &str,
    model_name: &str,
    model_version: i32,
    parts: impl Iterator<Item = &'a [u8]>,
    rows_bytes: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows_bytes + FRAME_BYTES);
    out.extend_from_slice(br#"{"specversion":"1.0","id":""#);
    out.extend_from_slice(
        id.hyphenated()
            .encode_lower(&mut Uuid::encode_buffer())
            .as_bytes(),
    );
    out.extend_from_slice(br#"","type":""#);
    out.extend_from_slice(PredictionsLogged::TYPE.as_bytes());
    out.extend_from_slice(br#"","source":"#);
    json_string(&mut out, source);
    out.extend_from_slice(br#","time":"#);
    json_string(
        &mut out,
        &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    );
    out.extend_from_slice(br#","datacontenttype":"application/json","data":{"model_name":"#);
    json_string(&mut out, model_name);
    out.extend_from_slice(br#","model_version":"#);
    out.extend_from_slice(model_version.to_string().as_bytes());
    out.extend_from_slice(br#","predictions":["#);
    for (i, part) in parts.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"]}}");
    out
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    // Serialising a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use petrel_events::Envelope;
    use petrel_events::payloads::LoggedPrediction;

    use super::*;

    fn row(id: &str) -> LoggedPrediction {
        LoggedPrediction {
            inference_id: id.to_owned(),
            features: serde_json::from_str(r#"{"island":"Biscoe","bill_length_mm":39.1}"#).unwrap(),
            class: "Adelie".to_owned(),
            confidence: 0.75,
            probabilities: BTreeMap::from([
                ("Adelie".to_owned(), 0.75),
                ("Gentoo".to_owned(), 0.25),
            ]),
            predicted_at: chrono::Utc::now(),
        }
    }

    fn part(ids: &[&str]) -> Part {
        let mut part = Part::default();
        for id in ids {
            part.push(|buf| serde_json::to_writer(buf, &row(id)).unwrap());
        }
        part
    }

    /// Every `predictions.logged` event of the test's stream, in stream order, as inference ids.
    async fn stored(env: &petrel_testkit::TestEnv) -> Vec<(String, Vec<String>)> {
        let js = async_nats::jetstream::new(env.nats.clone());
        let stream = petrel_events::Namespace::new(Some(&env.prefix)).stream_name();
        let mut stream = js.get_stream(&stream).await.unwrap();
        let last = stream.info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            let Ok(msg) = stream.get_raw_message(seq).await else {
                continue;
            };
            if !msg.subject.ends_with(subjects::PREDICTIONS_LOGGED) {
                continue;
            }
            let env = Envelope::<PredictionsLogged>::from_bytes(&msg.payload).unwrap();
            let ids = env
                .data
                .predictions
                .iter()
                .map(|p| p.inference_id.clone())
                .collect();
            out.push((env.id.to_string(), ids));
        }
        out
    }

    #[tokio::test]
    async fn concurrent_requests_share_messages_and_are_answered_once_stored() {
        let env = petrel_testkit::TestEnv::new().await;
        let bus = env.bus_as("petrel/predictor").await;
        let (logger, shipper) = channel(bus, LogConfig::default());
        let stop = CancellationToken::new();
        let run = tokio::spawn(shipper.run(stop.clone()));
        let name: Arc<str> = "penguins".into();
        let calls: Vec<_> = (0..50)
            .map(|i| {
                let (logger, name) = (logger.clone(), name.clone());
                tokio::spawn(async move {
                    let ids = [format!("r{i}-a"), format!("r{i}-b")];
                    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                    logger.log(&name, 1, vec![part(&ids)]).await
                })
            })
            .collect();
        for c in calls {
            c.await.unwrap().unwrap();
        }
        // A second version's rows never share a message with the first's.
        logger.log(&name, 2, vec![part(&["v2"])]).await.unwrap();
        // Answered means stored: every row is in the stream now, once.
        let messages = stored(&env).await;
        let mut ids: Vec<String> = messages.iter().flat_map(|(_, ids)| ids.clone()).collect();
        assert_eq!(ids.len(), 101);
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 101, "a row was logged twice");
        assert!(
            messages.len() < 51,
            "50 concurrent requests took {} messages: nothing was shared",
            messages.len()
        );
        assert_eq!(messages.last().unwrap().1, ["v2"]);
        assert_eq!(logger.stats().queued_bytes(), 0);
        stop.cancel();
        tokio::time::timeout(petrel_testkit::PATIENCE, run)
            .await
            .unwrap()
            .unwrap();
        let err = logger
            .log(&name, 1, vec![part(&["late"])])
            .await
            .unwrap_err();
        assert_eq!(err, LogError::ShutDown);
        env.cleanup().await;
    }

    #[tokio::test]
    async fn a_full_buffer_refuses_at_once_instead_of_queueing() {
        let env = petrel_testkit::TestEnv::new().await;
        let bus = env.bus_as("petrel/predictor").await;
        let config = LogConfig {
            max_queued_bytes: MAX_MESSAGE_BYTES,
            ..LogConfig::default()
        };
        // No shipper runs: whatever is queued stays queued.
        let (logger, shipper) = channel(bus, config);
        let name: Arc<str> = "penguins".into();
        let mut big = Part::default();
        big.push(|buf| buf.extend(std::iter::repeat_n(b' ', MAX_MESSAGE_BYTES - 10)));
        let first = {
            let (logger, name) = (logger.clone(), name.clone());
            tokio::spawn(async move { logger.log(&name, 1, vec![big]).await })
        };
        petrel_testkit::eventually("the first part to be queued", || {
            let queued = logger.stats().queued_bytes();
            async move { (queued > 0).then_some(()) }
        })
        .await;
        let err = logger.log(&name, 1, vec![part(&["x"])]).await.unwrap_err();
        assert!(matches!(err, LogError::Full { .. }), "{err:?}");
        assert!(err.to_string().contains("retry"), "{err}");
        drop(shipper);
        assert_eq!(first.await.unwrap().unwrap_err(), LogError::ShutDown);
        // The room is given back once the job is gone.
        assert_eq!(logger.stats().queued_bytes(), 0);
        env.cleanup().await;
    }

    #[test]
    fn frames_read_back_as_the_event_they_stand_for() {
        let rows = [row("a"), row("b\"quoted\""), row("c")];
        let mut first = Part::default();
        for r in &rows[..2] {
            first.push(|buf| serde_json::to_writer(buf, r).unwrap());
        }
        let mut second = Part::default();
        second.push(|buf| serde_json::to_writer(buf, &rows[2]).unwrap());
        let id = Uuid::now_v7();
        let bytes = frame(
            id,
            "petrel/predictor",
            "pen\"guins",
            7,
            [first.rows.as_slice(), second.rows.as_slice()].into_iter(),
            0,
        );
        let env = Envelope::<PredictionsLogged>::from_bytes(&bytes).unwrap();
        assert_eq!(env.id, id);
        assert_eq!(env.source, "petrel/predictor");
        assert_eq!(env.data.model_name, "pen\"guins");
        assert_eq!(env.data.model_version, 7);
        assert_eq!(env.data.predictions, rows);
    }
}
