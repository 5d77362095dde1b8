//! The prediction log: group commit of predictions with their `predictions.logged` event.
//!
//! Requests hand their rows to one writer task and wait for its answer. The writer takes
//! whatever has queued up (up to [`MAX_BATCH_ROWS`]), inserts it in one transaction together
//! with one outbox event per model version, commits, and answers every waiting request. Under
//! load, batches grow by themselves; at rest a request commits alone.

use std::collections::BTreeMap;

use petrel_events::outbox;
use petrel_events::payloads::{LoggedPrediction, PredictionsLogged};
use petrel_runtime::infra::Infra;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Rows per transaction and at most per event, to keep events well under NATS's 1 MiB.
pub const MAX_BATCH_ROWS: usize = 256;

/// About the most bytes of predictions one event carries: a request's rows are split over
/// several events rather than sent as one too large for NATS, which the outbox could never
/// publish (and would retry forever, holding back every later event).
pub const MAX_EVENT_BYTES: usize = 512 * 1024;

/// The largest row (its features as JSON) a request may send, so that any row fits an event.
pub const MAX_ROW_BYTES: usize = 64 * 1024;

struct Job {
    model_name: String,
    model_version: i32,
    rows: Vec<LoggedPrediction>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The requests' side: cheap to clone.
#[derive(Clone, Debug)]
pub struct Logger {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("rows", &self.rows.len())
            .finish()
    }
}

/// The writer task's side.
#[derive(Debug)]
pub struct Writer {
    rx: mpsc::Receiver<Job>,
    infra: Infra,
}

pub fn channel(infra: Infra) -> (Logger, Writer) {
    let (tx, rx) = mpsc::channel(1024);
    (Logger { tx }, Writer { rx, infra })
}

impl Logger {
    /// Logs rows durably; returns once they are committed.
    pub async fn log(
        &self,
        model_name: &str,
        model_version: i32,
        rows: Vec<LoggedPrediction>,
    ) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        let job = Job {
            model_name: model_name.to_owned(),
            model_version,
            rows,
            done,
        };
        self.tx
            .send(job)
            .await
            .map_err(|_| "the prediction log is shut down".to_owned())?;
        wait.await
            .map_err(|_| "the prediction log stopped".to_owned())?
    }
}

impl Writer {
    /// Runs until `stop` is cancelled or every [`Logger`] is dropped, whichever comes first.
    ///
    /// On `stop` it closes the queue, so later [`Logger::log`] calls fail at once (the request
    /// gets a 503 and no 200 is sent for rows that were not committed), then commits and answers
    /// every job already queued before it returns. It does not wait for the senders to go: after
    /// an HTTP drain that timed out, connection tasks may still hold them indefinitely.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            let first = tokio::select! {
                // The stop first, so that requests that keep coming cannot hold it off; what is
                // queued by then is committed below all the same.
                biased;
                () = stop.cancelled() => break,
                job = self.rx.recv() => match job {
                    Some(job) => job,
                    None => return,
                },
            };
            self.commit_batch(first).await;
        }
        self.rx.close();
        while let Some(first) = self.rx.recv().await {
            self.commit_batch(first).await;
        }
    }

    /// Commits `first` with whatever else is queued (up to [`MAX_BATCH_ROWS`] rows) in one
    /// transaction and answers every job in it.
    async fn commit_batch(&mut self, first: Job) {
        let mut jobs = vec![first];
        let mut rows = jobs[0].rows.len();
        while rows < MAX_BATCH_ROWS {
            match self.rx.try_recv() {
                Ok(job) => {
                    rows += job.rows.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let result = self.commit(&jobs).await.map_err(|e| {
            tracing::error!(error = %e, rows, "cannot log predictions");
            "the prediction log is unavailable".to_owned()
        });
        if result.is_ok() {
            self.infra.relay.poke();
        }
        for job in jobs {
            let _ = job.done.send(result.clone());
        }
    }

    async fn commit(&self, jobs: &[Job]) -> Result<(), sqlx::Error> {
        let mut groups: BTreeMap<(&str, i32), Vec<&LoggedPrediction>> = BTreeMap::new();
        for job in jobs {
            groups
                .entry((&job.model_name, job.model_version))
                .or_default()
                .extend(job.rows.iter());
        }
        let mut tx = self.infra.pool.begin().await?;
        let mut batches = Vec::new();
        for (key, rows) in &groups {
            for chunk in chunks(rows) {
                batches.push((*key, chunk));
            }
        }
        for ((model_name, model_version), rows) in batches {
            let envelope_id = uuid::Uuid::now_v7();
            let ids: Vec<&str> = rows.iter().map(|r| r.inference_id.as_str()).collect();
            let features: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| serde_json::Value::Object(r.features.clone()))
                .collect();
            let classes: Vec<&str> = rows.iter().map(|r| r.class.as_str()).collect();
            let confidences: Vec<f32> = rows.iter().map(|r| r.confidence).collect();
            let probabilities: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| serde_json::to_value(&r.probabilities).unwrap_or_default())
                .collect();
            let times: Vec<_> = rows.iter().map(|r| r.predicted_at).collect();
            // A retried request may reuse inference ids: only new rows are logged and announced.
            let fresh: Vec<String> = sqlx::query_scalar(
                "INSERT INTO predictions (inference_id, model_name, model_version, features, class, confidence, \
                 probabilities, event_id, predicted_at) \
                 SELECT i, $2, $3, f, c, p, pr, $1, t \
                 FROM UNNEST($4::text[], $5::jsonb[], $6::text[], $7::real[], $8::jsonb[], $9::timestamptz[]) \
                 AS u(i, f, c, p, pr, t) \
                 ON CONFLICT (inference_id) DO NOTHING RETURNING inference_id",
            )
            .bind(envelope_id)
            .bind(model_name)
            .bind(model_version)
            .bind(&ids)
            .bind(&features)
            .bind(&classes)
            .bind(&confidences)
            .bind(&probabilities)
            .bind(&times)
            .fetch_all(&mut *tx)
            .await?;
            if fresh.is_empty() {
                continue;
            }
            // Concurrent requests may share an id: announce each id once, as the row stored.
            let mut fresh: std::collections::HashSet<String> = fresh.into_iter().collect();
            let predictions = rows
                .into_iter()
                .filter(|r| fresh.remove(&r.inference_id))
                .cloned()
                .collect();
            let mut envelope = self.infra.bus.envelope(PredictionsLogged {
                model_name: model_name.to_owned(),
                model_version,
                predictions,
            });
            envelope.id = envelope_id;
            outbox::enqueue(&mut tx, &envelope).await?;
        }
        tx.commit().await
    }
}

/// Splits rows into runs of at most [`MAX_BATCH_ROWS`] rows and about [`MAX_EVENT_BYTES`].
fn chunks<'a>(rows: &[&'a LoggedPrediction]) -> Vec<Vec<&'a LoggedPrediction>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for &row in rows {
        let size = serde_json::to_vec(row).map_or(0, |v| v.len());
        if !current.is_empty()
            && (current.len() >= MAX_BATCH_ROWS || bytes + size > MAX_EVENT_BYTES)
        {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(row);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use petrel_runtime::config::{NatsArgs, PostgresArgs};
    use petrel_testkit::{NATS_URL, PATIENCE, TestEnv, eventually};

    use super::*;

    async fn infra(env: &TestEnv) -> Infra {
        let pg = PostgresArgs {
            database_url: env.db.clone(),
            database_max_connections: 2,
        };
        let nats = NatsArgs {
            nats_url: NATS_URL.to_owned(),
            nats_prefix: env.prefix.clone(),
        };
        Infra::connect("predictor", "predictor", &pg, &nats, &crate::MIGRATOR)
            .await
            .unwrap()
    }

    fn row(id: &str) -> Vec<LoggedPrediction> {
        vec![LoggedPrediction {
            inference_id: id.to_owned(),
            features: serde_json::Map::new(),
            class: "Adelie".to_owned(),
            confidence: 1.0,
            probabilities: BTreeMap::from([("Adelie".to_owned(), 1.0)]),
            predicted_at: chrono::Utc::now(),
        }]
    }

    async fn stored(infra: &Infra) -> Vec<String> {
        sqlx::query_scalar("SELECT inference_id FROM predictions ORDER BY inference_id")
            .fetch_all(&infra.pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn stops_when_told_even_while_a_logger_is_alive() {
        let env = TestEnv::new().await;
        let infra = infra(&env).await;
        let (logger, writer) = channel(infra.clone());
        let stop = CancellationToken::new();
        let run = tokio::spawn(writer.run(stop.clone()));
        logger.log("penguins", 1, row("before")).await.unwrap();

        // A connection task that outlived the HTTP drain still holds a sender.
        let alive = logger.clone();
        stop.cancel();
        tokio::time::timeout(PATIENCE, run)
            .await
            .expect("the writer waits for its senders instead of stopping")
            .unwrap();
        let err = alive.log("penguins", 1, row("after")).await.unwrap_err();
        assert!(err.contains("shut down"), "{err}");
        assert_eq!(stored(&infra).await, ["before"]);

        drop((logger, alive));
        infra.pool.close().await;
        env.cleanup().await;
    }

    #[tokio::test]
    async fn commits_and_answers_what_was_queued_before_the_stop() {
        let env = TestEnv::new().await;
        let infra = infra(&env).await;
        let (logger, writer) = channel(infra.clone());
        // Requests queue up before the writer runs, so the stop finds them waiting.
        let calls: Vec<_> = (0..3)
            .map(|i| {
                let logger = logger.clone();
                tokio::spawn(
                    async move { logger.log("penguins", 1, row(&format!("queued-{i}"))).await },
                )
            })
            .collect();
        eventually("the three jobs to be queued", || {
            let queued = logger.tx.max_capacity() - logger.tx.capacity();
            async move { (queued == 3).then_some(()) }
        })
        .await;
        let stop = CancellationToken::new();
        stop.cancel();
        tokio::time::timeout(PATIENCE, writer.run(stop))
            .await
            .expect("the writer did not stop");

        // Every queued request was committed before it was answered, and answered Ok.
        for call in calls {
            call.await.unwrap().unwrap();
        }
        assert_eq!(stored(&infra).await, ["queued-0", "queued-1", "queued-2"]);
        let err = logger.log("penguins", 1, row("late")).await.unwrap_err();
        assert!(err.contains("shut down"), "{err}");
        assert_eq!(stored(&infra).await.len(), 3);

        drop(logger);
        infra.pool.close().await;
        env.cleanup().await;
    }

    #[tokio::test]
    async fn still_stops_when_every_logger_is_dropped() {
        let env = TestEnv::new().await;
        let infra = infra(&env).await;
        let (logger, writer) = channel(infra.clone());
        let run = tokio::spawn(writer.run(CancellationToken::new()));
        logger.log("penguins", 1, row("only")).await.unwrap();
        drop(logger);
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the writer did not stop once its senders were gone")
            .unwrap();
        assert_eq!(stored(&infra).await, ["only"]);
        infra.pool.close().await;
        env.cleanup().await;
    }
}
