//! The counts behind `GET /v1/labels/stats`.

use std::time::Duration;

use petrel_api::labeler::LabelStats;
use sqlx::{PgPool, Row};

/// The counts of `GET /v1/labels/stats`, in one pass over the table.
pub async fn stats(pool: &PgPool, unknown_after: Duration) -> Result<LabelStats, sqlx::Error> {
    let row = sqlx::query(
        "SELECT count(label) AS labels, \
           count(*) FILTER (WHERE label IS NOT NULL AND predicted_class IS NOT NULL) AS joined, \
           count(*) FILTER (WHERE predicted_class IS NULL AND labelled_at >= cutoff) AS waiting, \
           count(*) FILTER (WHERE predicted_class IS NULL AND labelled_at < cutoff) AS unknown, \
           count(*) FILTER (WHERE label IS NULL) AS predictions_without_label \
         FROM joins, (SELECT now() - make_interval(secs => $1) AS cutoff) AS c",
    )
    .bind(unknown_after.as_secs_f64())
    .fetch_one(pool)
    .await?;
    let count = |name: &str| row.get::<i64, _>(name).unsigned_abs();
    Ok(LabelStats {
        labels: count("labels"),
        joined: count("joined"),
        waiting: count("waiting"),
        unknown: count("unknown"),
        predictions_without_label: count("predictions_without_label"),
        unknown_after_secs: unknown_after.as_secs(),
    })
}
