//! Windows: when enough has arrived, compute a report, store it and raise alerts, all in one
//! transaction (the alerts go through the outbox).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Args;
use petrel_api::monitor::FeatureDrift;
use petrel_events::outbox;
use petrel_events::payloads::{Alert, AlertKind};
use petrel_ml::{ColumnKind, Value, row_from_json};
use serde_json::json;
use sqlx::Row;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::AppState;
use crate::reference::{Reference, ReferenceError};

/// When windows close and what raises an alert.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// Predictions per window: a window closes as soon as this many have arrived.
    #[arg(long, env = "PETREL_MONITOR_WINDOW_SIZE", default_value_t = 100)]
    pub window_size: i64,
    /// A window also closes once its oldest entry is this old (seconds), if it holds at least
    /// `min_window` predictions or `min_labels` labels.
    #[arg(long, env = "PETREL_MONITOR_WINDOW_MAX_SECS", default_value_t = 60)]
    pub window_max_secs: i64,
    /// Fewest predictions a time-closed window needs for drift and confidence.
    #[arg(long, env = "PETREL_MONITOR_MIN_WINDOW", default_value_t = 30)]
    pub min_window: i64,
    /// Fewest labels needed to report accuracy.
    #[arg(long, env = "PETREL_MONITOR_MIN_LABELS", default_value_t = 20)]
    pub min_labels: i64,
    /// A feature drifts when its test's p-value is below this.
    #[arg(long, env = "PETREL_MONITOR_DRIFT_P_VALUE", default_value_t = 0.01)]
    pub drift_p_value: f64,
    /// `alerts.drift` when at least this share of the features drift.
    #[arg(long, env = "PETREL_MONITOR_DRIFT_SHARE", default_value_t = 0.25)]
    pub drift_share: f64,
    /// `alerts.accuracy` when accuracy on labelled predictions is below this.
    #[arg(long, env = "PETREL_MONITOR_MIN_ACCURACY", default_value_t = 0.8)]
    pub min_accuracy: f64,
    /// `alerts.confidence` when the mean top-class probability is below this.
    #[arg(long, env = "PETREL_MONITOR_MIN_CONFIDENCE", default_value_t = 0.6)]
    pub min_confidence: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            window_size: 100,
            window_max_secs: 60,
            min_window: 30,
            min_labels: 20,
            drift_p_value: 0.01,
            drift_share: 0.25,
            min_accuracy: 0.8,
            min_confidence: 0.6,
        }
    }
}

impl Thresholds {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.window_size >= 2, "window size must be at least 2");
        anyhow::ensure!(
            self.min_window >= 2 && self.min_window <= self.window_size,
            "min window must be in 2..=window size"
        );
        anyhow::ensure!(self.min_labels >= 1, "min labels must be at least 1");
        anyhow::ensure!(
            self.window_max_secs >= 1,
            "window max secs must be at least 1"
        );
        anyhow::ensure!(
            self.drift_p_value > 0.0 && self.drift_p_value < 1.0,
            "drift p-value must be in (0, 1)"
        );
        for (name, v) in [
            ("drift share", self.drift_share),
            ("min accuracy", self.min_accuracy),
            ("min confidence", self.min_confidence),
        ] {
            anyhow::ensure!((0.0..=1.0).contains(&v), "{name} must be in [0, 1]");
        }
        Ok(())
    }
}

/// Most windows one model version closes per tick. Traffic faster than a window per second
/// is caught up within the tick, not one window a second behind it; the cap keeps one busy
/// version from starving the others (and the tick from running long).
pub const MAX_WINDOWS_PER_TICK: usize = 20;

/// Most labels one window takes, as a multiple of the window size: a backlog of labels is
/// spread over several windows instead of being locked and read in one go.
pub const LABELS_PER_WINDOW: i64 = 10;

/// Checks for windows to close every second until cancelled.
pub async fn run(state: AppState, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Err(e) = close_ready_windows(&state).await {
            tracing::warn!(error = format!("{e:#}"), "window check failed");
        }
    }
}

/// Closes every window that is ready, several per model version while full windows of
/// predictions remain (up to [`MAX_WINDOWS_PER_TICK`]); returns the reports written.
pub async fn close_ready_windows(s: &AppState) -> anyhow::Result<Vec<Uuid>> {
    let t = &s.thresholds;
    let candidates = sqlx::query(
        "WITH o AS (SELECT model_name, model_version, count(*) AS n, min(received_at) AS oldest \
                    FROM observations WHERE report_id IS NULL GROUP BY 1, 2), \
              l AS (SELECT model_name, model_version, count(*) AS n, min(received_at) AS oldest \
                    FROM outcomes WHERE report_id IS NULL GROUP BY 1, 2) \
         SELECT COALESCE(o.model_name, l.model_name) AS model_name, \
                COALESCE(o.model_version, l.model_version) AS model_version, \
                COALESCE(o.n, 0) AS n_obs, COALESCE(l.n, 0) AS n_lab, \
                LEAST(o.oldest, l.oldest) AS oldest \
         FROM o FULL JOIN l ON o.model_name = l.model_name AND o.model_version = l.model_version",
    )
    .fetch_all(&s.infra.pool)
    .await?;
    let mut written = Vec::new();
    for c in candidates {
        let model: String = c.get("model_name");
        let version: i32 = c.get("model_version");
        let n_obs: i64 = c.get("n_obs");
        let n_lab: i64 = c.get("n_lab");
        let oldest: DateTime<Utc> = c.get("oldest");
        let aged = (Utc::now() - oldest).num_seconds() >= t.window_max_secs;
        let ready =
            n_obs >= t.window_size || (aged && (n_obs >= t.min_window || n_lab >= t.min_labels));
        if !ready {
            continue;
        }
        let reference = match s.references.get(&model, version).await {
            Ok(r) => r,
            Err(ReferenceError::RecentlyFailed) => continue,
            Err(ReferenceError::Load(e)) => {
                tracing::warn!(model.name = %model, model.version = version, error = format!("{e:#}"), "no reference for this model version; its windows wait");
                continue;
            }
        };
        // The first window is ready (full, or old enough); more follow while a full window of
        // predictions is still open.
        let mut open = n_obs;
        for _ in 0..MAX_WINDOWS_PER_TICK {
            let Some((id, taken)) = close_window(s, &model, version, &reference).await? else {
                break;
            };
            written.push(id);
            open -= taken as i64;
            if taken == 0 || open < t.window_size {
                break;
            }
        }
    }
    if !written.is_empty() {
        s.infra.relay.poke();
    }
    Ok(written)
}

async fn close_window(
    s: &AppState,
    model: &str,
    version: i32,
    reference: &Reference,
) -> anyhow::Result<Option<(Uuid, usize)>> {
    let t = &s.thresholds;
    let mut tx = s.infra.pool.begin().await?;
    let obs = sqlx::query(
        "SELECT inference_id, features, confidence, received_at FROM observations \
         WHERE report_id IS NULL AND model_name = $1 AND model_version = $2 \
         ORDER BY received_at, inference_id LIMIT $3 FOR UPDATE SKIP LOCKED",
    )
    .bind(model)
    .bind(version)
    .bind(t.window_size)
    .fetch_all(&mut *tx)
    .await?;
    let labs = sqlx::query(
        "SELECT inference_id, correct, received_at FROM outcomes \
         WHERE report_id IS NULL AND model_name = $1 AND model_version = $2 \
         ORDER BY received_at, inference_id LIMIT $3 FOR UPDATE SKIP LOCKED",
    )
    .bind(model)
    .bind(version)
    .bind(t.window_size.saturating_mul(LABELS_PER_WINDOW))
    .fetch_all(&mut *tx)
    .await?;
    let use_obs = obs.len() as i64 >= t.min_window.min(t.window_size);
    let use_labs = labs.len() as i64 >= t.min_labels;
    if !use_obs && !use_labs {
        return Ok(None);
    }
    let id = Uuid::now_v7();
    let mut times: Vec<DateTime<Utc>> = Vec::new();

    let (drift, drift_share, mean_confidence, obs_ids) = if use_obs {
        let rows: Vec<serde_json::Map<String, serde_json::Value>> = obs
            .iter()
            .filter_map(|r| match r.get::<serde_json::Value, _>("features") {
                serde_json::Value::Object(m) => Some(m),
                _ => None,
            })
            .collect();
        let confidences: Vec<f64> = obs
            .iter()
            .map(|r| r.get::<f32, _>("confidence") as f64)
            .collect();
        times.extend(obs.iter().map(|r| r.get::<DateTime<Utc>, _>("received_at")));
        let drift = feature_drift(reference, &rows, t.drift_p_value);
        let share = drift_share(&drift);
        let mean = confidences.iter().sum::<f64>() / confidences.len() as f64;
        let ids: Vec<String> = obs.iter().map(|r| r.get("inference_id")).collect();
        (drift, share, Some(mean), ids)
    } else {
        (Vec::new(), None, None, Vec::new())
    };
    let (accuracy, lab_ids) = if use_labs {
        let correct = labs.iter().filter(|r| r.get::<bool, _>("correct")).count();
        times.extend(
            labs.iter()
                .map(|r| r.get::<DateTime<Utc>, _>("received_at")),
        );
        let ids: Vec<String> = labs.iter().map(|r| r.get("inference_id")).collect();
        (Some(correct as f64 / labs.len() as f64), ids)
    } else {
        (None, Vec::new())
    };
    let window_start = times.iter().min().copied().unwrap_or_else(Utc::now);
    let window_end = times.iter().max().copied().unwrap_or_else(Utc::now);

    let alerts = evaluate(
        t,
        model,
        version,
        id,
        &drift,
        drift_share,
        accuracy,
        mean_confidence,
        lab_ids.len(),
    );
    let kinds: Vec<&str> = alerts.iter().map(|a| a.kind.as_str()).collect();
    sqlx::query(
        "INSERT INTO reports (id, model_name, model_version, window_start, window_end, n_predictions, n_labels, \
         accuracy, mean_confidence, drift_share, drift, alerts) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)",
    )
    .bind(id)
    .bind(model)
    .bind(version)
    .bind(window_start)
    .bind(window_end)
    .bind(obs_ids.len() as i64)
    .bind(lab_ids.len() as i64)
    .bind(accuracy)
    .bind(mean_confidence)
    .bind(drift_share)
    .bind(serde_json::to_value(&drift)?)
    .bind(&kinds)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE observations SET report_id = $1 WHERE inference_id = ANY($2)")
        .bind(id)
        .bind(&obs_ids)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE outcomes SET report_id = $1 WHERE inference_id = ANY($2)")
        .bind(id)
        .bind(&lab_ids)
        .execute(&mut *tx)
        .await?;
    for alert in alerts {
        tracing::warn!(report.id = %id, alert.kind = %alert.kind, "{}", alert.message);
        outbox::enqueue(&mut tx, &s.infra.bus.envelope(alert)).await?;
    }
    tx.commit().await?;
    tracing::info!(
        report.id = %id,
        model.name = %model,
        model.version = version,
        n_predictions = obs_ids.len(),
        n_labels = lab_ids.len(),
        accuracy = ?accuracy,
        mean_confidence = ?mean_confidence,
        drift_share = ?drift_share,
        alerts = ?kinds,
        "window closed"
    );
    Ok(Some((id, obs_ids.len())))
}

/// Fewest live values a feature needs before it is tested.
const MIN_VALUES: usize = 5;

/// Tests every feature of the reference against the live rows.
pub fn feature_drift(
    reference: &Reference,
    rows: &[serde_json::Map<String, serde_json::Value>],
    p_threshold: f64,
) -> Vec<FeatureDrift> {
    let schema = &reference.schema;
    let parsed: Vec<_> = rows
        .iter()
        .filter_map(|r| row_from_json(r, schema).ok())
        .collect();
    let mut out = Vec::new();
    for (i, col) in schema.features.iter().enumerate() {
        let result = match col.kind {
            ColumnKind::Numeric => {
                let live: Vec<f64> = parsed
                    .iter()
                    .filter_map(|r| match r.get(i) {
                        Some(Some(Value::Num(x))) => Some(*x),
                        _ => None,
                    })
                    .collect();
                let Some(base) = reference.profile.numeric.get(&col.name) else {
                    continue;
                };
                if live.len() < MIN_VALUES || base.is_empty() {
                    continue;
                }
                petrel_drift::ks_two_sample(base, &live, p_threshold).map(|r| (r, live.len()))
            }
            ColumnKind::Categorical => {
                let live: Vec<String> = parsed
                    .iter()
                    .filter_map(|r| match r.get(i) {
                        Some(Some(Value::Cat(s))) => Some(s.clone()),
                        Some(Some(Value::Num(x))) => Some(x.to_string()),
                        _ => None,
                    })
                    .collect();
                let Some(base) = reference.profile.categorical.get(&col.name) else {
                    continue;
                };
                if live.len() < MIN_VALUES || base.is_empty() {
                    continue;
                }
                let counts = petrel_drift::counts(live.iter().map(String::as_str));
                petrel_drift::chi_square(base, &counts, p_threshold).map(|r| (r, live.len()))
            }
        };
        match result {
            Ok((r, n)) => out.push(FeatureDrift {
                feature: col.name.clone(),
                method: r.method.name().to_owned(),
                statistic: r.statistic,
                p_value: r.p_value,
                drifted: r.drifted,
                n,
            }),
            Err(e) => tracing::debug!(feature = %col.name, error = %e, "feature not tested"),
        }
    }
    out
}

fn drift_share(drift: &[FeatureDrift]) -> Option<f64> {
    if drift.is_empty() {
        return None;
    }
    Some(drift.iter().filter(|d| d.drifted).count() as f64 / drift.len() as f64)
}

/// Decides which alerts a window raises.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    t: &Thresholds,
    model: &str,
    version: i32,
    report_id: Uuid,
    drift: &[FeatureDrift],
    drift_share: Option<f64>,
    accuracy: Option<f64>,
    mean_confidence: Option<f64>,
    n_labels: usize,
) -> Vec<Alert> {
    let mut alerts = Vec::new();
    let alert = |kind, message: String, observed, threshold, details| Alert {
        kind,
        model_name: model.to_owned(),
        model_version: version,
        report_id,
        message,
        observed,
        threshold,
        details,
    };
    if let Some(share) = drift_share
        && share >= t.drift_share
    {
        let drifted: BTreeMap<&str, f64> = drift
            .iter()
            .filter(|d| d.drifted)
            .map(|d| (d.feature.as_str(), d.p_value))
            .collect();
        let names: Vec<&str> = drifted.keys().copied().collect();
        alerts.push(alert(
            AlertKind::Drift,
            format!(
                "{model} v{version}: {} of {} features drifted from the training data ({}); check the upstream data",
                drifted.len(),
                drift.len(),
                names.join(", ")
            ),
            share,
            t.drift_share,
            json!({ "drifted_features": drifted, "p_value_threshold": t.drift_p_value }),
        ));
    }
    if let Some(acc) = accuracy
        && acc < t.min_accuracy
    {
        alerts.push(alert(
            AlertKind::Accuracy,
            format!(
                "{model} v{version}: accuracy {acc:.3} on {n_labels} labelled predictions is below {:.3}; consider retraining",
                t.min_accuracy
            ),
            acc,
            t.min_accuracy,
            json!({ "labelled": n_labels }),
        ));
    }
    if let Some(conf) = mean_confidence
        && conf < t.min_confidence
    {
        alerts.push(alert(
            AlertKind::Confidence,
            format!(
                "{model} v{version}: mean confidence {conf:.3} is below {:.3}",
                t.min_confidence
            ),
            conf,
            t.min_confidence,
            json!({}),
        ));
    }
    alerts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd(name: &str, drifted: bool) -> FeatureDrift {
        FeatureDrift {
            feature: name.into(),
            method: "kolmogorov_smirnov".into(),
            statistic: 0.5,
            p_value: if drifted { 1e-6 } else { 0.5 },
            drifted,
            n: 100,
        }
    }

    #[test]
    fn alerts_fire_only_past_thresholds() {
        let t = Thresholds::default();
        let id = Uuid::now_v7();
        let calm = [
            fd("a", false),
            fd("b", false),
            fd("c", true),
            fd("d", false),
            fd("e", false),
        ];
        let none = evaluate(
            &t,
            "m",
            1,
            id,
            &calm,
            drift_share(&calm),
            Some(0.95),
            Some(0.9),
            50,
        );
        assert!(none.is_empty(), "{none:?}");

        let stormy = [fd("a", true), fd("b", true), fd("c", false)];
        let all = evaluate(
            &t,
            "m",
            1,
            id,
            &stormy,
            drift_share(&stormy),
            Some(0.5),
            Some(0.4),
            50,
        );
        let kinds: Vec<_> = all.iter().map(|a| a.kind).collect();
        assert_eq!(
            kinds,
            [AlertKind::Drift, AlertKind::Accuracy, AlertKind::Confidence]
        );
        assert!(all[0].message.contains("a, b"));
        assert_eq!(all[0].subject_for_test(), "alerts.drift");
        assert!((all[0].observed - 2.0 / 3.0).abs() < 1e-12);
    }

    trait SubjectForTest {
        fn subject_for_test(&self) -> String;
    }
    impl SubjectForTest for Alert {
        fn subject_for_test(&self) -> String {
            use petrel_events::Event;
            self.subject()
        }
    }

    #[test]
    fn thresholds_are_validated() {
        assert!(Thresholds::default().validate().is_ok());
        let bad = Thresholds {
            drift_p_value: 0.0,
            ..Thresholds::default()
        };
        assert!(bad.validate().is_err());
        let bad = Thresholds {
            min_window: 500,
            ..Thresholds::default()
        };
        assert!(bad.validate().is_err());
    }
}
