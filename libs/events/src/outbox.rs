//! The transactional outbox.
//!
//! A service that changes its database and must announce the change calls [`enqueue`] inside
//! the same transaction; after commit it pokes the [`Relay`], which publishes pending rows in
//! order and marks them published. If the process dies between commit and publish, the relay of
//! the next start (or of another replica) publishes the row: the event is never lost, and since
//! the event id is the `Nats-Msg-Id`, a row published twice is stored once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Bus, Envelope, Event};

/// Largest event the outbox accepts. NATS refuses messages over 1 MiB by default; an event that
/// could never be published must fail its transaction, not block the outbox behind it.
pub const MAX_EVENT_BYTES: usize = 900 * 1024;

/// An event too large to ever be published.
#[derive(Debug, thiserror::Error)]
#[error("event {id} on {subject} is {size} bytes; the limit is {MAX_EVENT_BYTES}")]
pub struct TooLarge {
    pub id: Uuid,
    pub subject: String,
    pub size: usize,
}

/// Stores `env` for publication, inside the caller's transaction. Fails (so the transaction
/// rolls back) if the event is larger than [`MAX_EVENT_BYTES`]; producers split large batches.
pub async fn enqueue<T: Event>(
    conn: &mut PgConnection,
    env: &Envelope<T>,
) -> Result<(), sqlx::Error> {
    let bytes = serde_json::to_vec(env).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    if bytes.len() > MAX_EVENT_BYTES {
        let e = TooLarge {
            id: env.id,
            subject: env.data.subject(),
            size: bytes.len(),
        };
        return Err(sqlx::Error::Encode(Box::new(e)));
    }
    let payload: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query("INSERT INTO outbox (id, subject, payload) VALUES ($1, $2, $3)")
        .bind(env.id)
        .bind(env.data.subject())
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}

/// Publishes the outbox. Cheap to clone; every clone pokes the same relay.
#[derive(Clone, Debug)]
pub struct Relay {
    pool: PgPool,
    bus: Bus,
    wake: Arc<Notify>,
}

impl Relay {
    pub fn new(pool: PgPool, bus: Bus) -> Self {
        Self {
            pool,
            bus,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Asks the relay to publish now (call after committing a transaction that enqueued).
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Publishes what is pending, oldest first, until nothing is left or publishing fails.
    /// Returns how many events were published. Replicas may run this concurrently: rows are
    /// locked with `SKIP LOCKED`.
    pub async fn drain(&self) -> Result<usize, sqlx::Error> {
        let mut total = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let rows = sqlx::query(
                "SELECT id, subject, payload FROM outbox WHERE published_at IS NULL \
                 ORDER BY created_at, id LIMIT 100 FOR UPDATE SKIP LOCKED",
            )
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                return Ok(total);
            }
            let mut published = Vec::with_capacity(rows.len());
            let mut failure = None;
            for row in &rows {
                let id: Uuid = row.get("id");
                let subject: String = row.get("subject");
                let payload: serde_json::Value = row.get("payload");
                let bytes = Bytes::from(serde_json::to_vec(&payload).unwrap_or_default());
                match self.bus.publish_raw(&subject, id, bytes).await {
                    Ok(()) => published.push(id),
                    Err(e) => {
                        // Stop at the first failure: usually NATS is down and the rest would
                        // fail too; the row is retried first on the next pass, keeping order.
                        failure = Some((id, e));
                        break;
                    }
                }
            }
            sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
                .bind(&published)
                .execute(&mut *tx)
                .await?;
            let mut attempts = 0;
            if let Some((id, e)) = &failure {
                attempts = sqlx::query_scalar(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1 \
                     RETURNING attempts",
                )
                .bind(id)
                .bind(format!("{e}"))
                .fetch_one(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            total += published.len();
            if let Some((id, e)) = failure {
                // Never skipped: a row that cannot be published holds back the rows behind it
                // until the cause is fixed, so no event is lost or reordered.
                if attempts % 60 == 0 {
                    tracing::error!(event.id = %id, error = %e, attempts, "outbox still cannot publish; events are waiting");
                } else {
                    tracing::warn!(event.id = %id, error = %e, attempts, "outbox publish failed; will retry");
                }
                return Ok(total);
            }
        }
    }

    /// Deletes what can no longer matter: outbox rows published more than 7 days ago, and
    /// processed-event ids older than 30 days (the stream keeps events 7 days, so an id that old
    /// can never be delivered again).
    pub async fn cleanup(&self) {
        for (what, sql) in [
            (
                "outbox",
                "DELETE FROM outbox WHERE published_at < now() - interval '7 days'",
            ),
            (
                "processed_events",
                "DELETE FROM processed_events WHERE processed_at < now() - interval '30 days'",
            ),
        ] {
            match sqlx::query(sql).execute(&self.pool).await {
                Ok(done) if done.rows_affected() > 0 => {
                    tracing::info!(table = what, rows = done.rows_affected(), "cleaned up")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(table = what, error = %e, "cleanup failed"),
            }
        }
    }

    /// Number of events not yet published (for readiness and metrics).
    pub async fn pending(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&self.pool)
            .await
    }

    /// Runs until `cancel` fires: publishes when poked, and every second in case a poke was
    /// missed or NATS was down. Publishes what is pending once more before returning.
    pub async fn run(self, cancel: CancellationToken) {
        let mut last_cleanup = tokio::time::Instant::now();
        loop {
            if let Err(e) = self.drain().await {
                tracing::warn!(error = %e, "outbox drain failed");
            }
            if last_cleanup.elapsed() > Duration::from_secs(3600) {
                last_cleanup = tokio::time::Instant::now();
                self.cleanup().await;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        if let Err(e) = self.drain().await {
            tracing::warn!(error = %e, "final outbox drain failed");
        }
    }
}
