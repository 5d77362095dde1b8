//! The labeler's periodic upkeep: retention of old rows, and a warning when labels that never
//! found their prediction pile up.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How often upkeep runs (the first pass runs at start).
pub const EVERY: Duration = Duration::from_secs(60);

/// Rows one retention statement deletes at most: each batch is its own short transaction, so
/// a large backlog never holds many row locks or one long transaction.
pub const RETENTION_BATCH: i64 = 10_000;

/// Rows whose prediction is older than `$1` hours, joined or never labelled. `SKIP LOCKED`:
/// a row an upsert holds is left for the next pass, so retention never waits on (or deadlocks
/// with) the join.
const EXPIRED_PREDICTIONS: &str = "\
    DELETE FROM joins WHERE inference_id IN ( \
        SELECT inference_id FROM joins \
        WHERE predicted_class IS NOT NULL AND predicted_at < now() - make_interval(hours => $1) \
        LIMIT $2 FOR UPDATE SKIP LOCKED)";

/// Labels that waited for their prediction longer than `$1` hours.
const EXPIRED_LABELS: &str = "\
    DELETE FROM joins WHERE inference_id IN ( \
        SELECT inference_id FROM joins \
        WHERE predicted_class IS NULL AND labelled_at < now() - make_interval(hours => $1) \
        LIMIT $2 FOR UPDATE SKIP LOCKED)";

/// Runs upkeep every [`EVERY`] until `cancel` fires. Failures (Postgres away) are logged and
/// the next pass tries again; they never stop the service.
pub async fn run(
    pool: PgPool,
    retention_hours: u32,
    unknown_after: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_unknown = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        match sweep(&pool, retention_hours, &cancel).await {
            Ok((0, 0)) => {}
            Ok((predictions, labels)) => tracing::info!(
                rows.predictions = predictions,
                rows.waiting_labels = labels,
                retention_hours,
                "retention removed old rows"
            ),
            Err(e) => tracing::warn!(error = %e, "retention failed; trying again next pass"),
        }
        match unknown(&pool, unknown_after).await {
            Ok(n) => {
                if n > last_unknown {
                    tracing::warn!(
                        labels.unknown = n,
                        labels.new_unknown = n - last_unknown,
                        unknown_after_secs = unknown_after.as_secs(),
                        "labels without a prediction past the grace period are growing; \
                         check that their inference ids were served by this environment"
                    );
                }
                last_unknown = n;
            }
            Err(e) => tracing::warn!(error = %e, "cannot count unknown labels"),
        }
    }
}

/// Deletes, in batches of [`RETENTION_BATCH`], rows whose prediction is older than the
/// retention, and labels that waited for a prediction longer than it. Returns how many of each.
pub async fn sweep(
    pool: &PgPool,
    retention_hours: u32,
    cancel: &CancellationToken,
) -> Result<(u64, u64), sqlx::Error> {
    let hours = i32::try_from(retention_hours).unwrap_or(i32::MAX);
    let mut removed = [0; 2];
    for (sql, total) in [EXPIRED_PREDICTIONS, EXPIRED_LABELS]
        .into_iter()
        .zip(&mut removed)
    {
        loop {
            let n = sqlx::query(sql)
                .bind(hours)
                .bind(RETENTION_BATCH)
                .execute(pool)
                .await?
                .rows_affected();
            *total += n;
            if n < RETENTION_BATCH as u64 || cancel.is_cancelled() {
                break;
            }
        }
    }
    Ok((removed[0], removed[1]))
}

/// Labels without a prediction for longer than `unknown_after` (an index range scan).
async fn unknown(pool: &PgPool, unknown_after: Duration) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM joins WHERE predicted_class IS NULL \
         AND labelled_at < now() - make_interval(secs => $1)",
    )
    .bind(unknown_after.as_secs_f64())
    .fetch_one(pool)
    .await?;
    Ok(n.unsigned_abs())
}
