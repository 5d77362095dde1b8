//! Windows: spans of prediction time per model version, aligned to multiples of
//! `--window-secs`. A window closes once a prediction at least `--window-lateness-secs` past
//! its end has arrived (or, with no newer traffic, `--window-idle-secs` after its end); closing
//! runs the label-free analysis on a uniform sample of its predictions, stores the report and
//! applies the conditions to their alert episodes, all in one transaction.
//!
//! Time windows keep the number of tests per hour, and so the false-alarm rate per hour,
//! independent of traffic: at 15,000 predictions a second a window is still one window a
//! minute, and its tests see at most `--drift-sample` rows.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use petrel_api::monitor::{FeatureDrift, ReportDetail};
use petrel_drift::{ColumnOverride, DatasetVerdict, DriftConfig, Method, Preset};
use petrel_events::payloads::{AlertKind, Evidence, Severity};
use serde_json::json;
use sqlx::Row;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::AppState;
use crate::analysis::{self, Analysis, QualityLimits, Sampled, distribution_drifted};
use crate::episodes::{self, Condition, Policy};
use crate::reference::{Reference, ReferenceError};
use crate::trend;

/// When windows close, how they are tested and what raises an alert.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// Length of a window in seconds of prediction time.
    #[arg(long, env = "PETREL_MONITOR_WINDOW_SECS", default_value_t = 60)]
    pub window_secs: u64,
    /// A window closes once a prediction this many seconds past its end has arrived.
    #[arg(long, env = "PETREL_MONITOR_WINDOW_LATENESS_SECS", default_value_t = 5)]
    pub window_lateness_secs: u64,
    /// With no newer prediction, a window closes this many seconds after its end.
    #[arg(long, env = "PETREL_MONITOR_WINDOW_IDLE_SECS", default_value_t = 30)]
    pub window_idle_secs: u64,
    /// Fewest predictions a window needs for drift, data-quality and confidence checks.
    #[arg(long, env = "PETREL_MONITOR_MIN_WINDOW", default_value_t = 30)]
    pub min_window: usize,
    /// Most predictions the drift tests use per window (a uniform random sample).
    #[arg(long, env = "PETREL_MONITOR_DRIFT_SAMPLE", default_value_t = 5000)]
    pub drift_sample: usize,
    /// Drift rules: `petrel` (two-sample tests, Benjamini-Hochberg across columns) or
    /// `evidently` (Evidently 0.7's DataDriftPreset defaults).
    #[arg(long, env = "PETREL_MONITOR_DRIFT_PRESET", default_value = "petrel", value_parser = ["petrel", "evidently"])]
    pub drift_preset: String,
    /// `petrel` preset: the false discovery rate across a window's columns.
    #[arg(long, env = "PETREL_MONITOR_DRIFT_FDR", default_value_t = 0.01)]
    pub drift_fdr: f64,
    /// `evidently` preset: share of drifted columns at which the window drifted.
    #[arg(long, env = "PETREL_MONITOR_DRIFT_SHARE", default_value_t = 0.5)]
    pub drift_share: f64,
    /// Per-column method and threshold, e.g. `body_mass_g=wasserstein:0.2,island=chi_square`.
    #[arg(long, env = "PETREL_MONITOR_DRIFT_OVERRIDES", default_value = "")]
    pub drift_overrides: String,
    /// Consecutive windows a drift, prediction-drift or data-quality finding must hold before
    /// its alert opens.
    #[arg(long, env = "PETREL_MONITOR_CONFIRM_WINDOWS", default_value_t = 2)]
    pub confirm_windows: i32,
    /// Consecutive clean windows that resolve an alert (`alerts.resolved`).
    #[arg(long, env = "PETREL_MONITOR_RESOLVE_AFTER", default_value_t = 3)]
    pub resolve_after: i32,
    /// An open alert that has not worsened notifies again after this many seconds.
    #[arg(long, env = "PETREL_MONITOR_COOLDOWN_SECS", default_value_t = 3600)]
    pub cooldown_secs: u64,
    /// Fewest labels needed to report and alert on accuracy.
    #[arg(long, env = "PETREL_MONITOR_MIN_LABELS", default_value_t = 20)]
    pub min_labels: i64,
    /// A window's quality is final once this share of its predictions is labelled...
    #[arg(long, env = "PETREL_MONITOR_LABEL_COVERAGE", default_value_t = 0.95)]
    pub label_coverage: f64,
    /// ...or this many seconds after the window ended.
    #[arg(long, env = "PETREL_MONITOR_LABEL_GRACE_SECS", default_value_t = 3600)]
    pub label_grace_secs: u64,
    /// `alerts.accuracy` below this accuracy on labelled predictions.
    #[arg(long, env = "PETREL_MONITOR_MIN_ACCURACY", default_value_t = 0.8)]
    pub min_accuracy: f64,
    /// `alerts.estimated_accuracy` below this accuracy estimated from confidence.
    #[arg(
        long,
        env = "PETREL_MONITOR_MIN_ESTIMATED_ACCURACY",
        default_value_t = 0.8
    )]
    pub min_estimated_accuracy: f64,
    /// `alerts.confidence` below this mean top-class probability.
    #[arg(long, env = "PETREL_MONITOR_MIN_CONFIDENCE", default_value_t = 0.6)]
    pub min_confidence: f64,
    /// Predictions under this confidence count as low-confidence in reports.
    #[arg(long, env = "PETREL_MONITOR_LOW_CONFIDENCE", default_value_t = 0.5)]
    pub low_confidence: f64,
    /// `alerts.data_quality` when more than this share of a numeric column is outside the
    /// training range.
    #[arg(long, env = "PETREL_MONITOR_MAX_OUT_OF_RANGE", default_value_t = 0.05)]
    pub max_out_of_range: f64,
    /// `alerts.data_quality` when more than this share of a categorical column is in
    /// categories training never saw.
    #[arg(long, env = "PETREL_MONITOR_MAX_UNSEEN", default_value_t = 0.01)]
    pub max_unseen: f64,
    /// Windows in a trend fit.
    #[arg(long, env = "PETREL_MONITOR_TREND_WINDOWS", default_value_t = 10)]
    pub trend_windows: usize,
    /// One-sided p-value under which a declining slope is a trend.
    #[arg(long, env = "PETREL_MONITOR_TREND_P_VALUE", default_value_t = 0.001)]
    pub trend_p_value: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            t: Thresholds,
        }
        Wrap::parse_from(["monitor"]).t
    }
}

impl Thresholds {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.window_secs >= 1, "window secs must be at least 1");
        anyhow::ensure!(self.min_window >= 2, "min window must be at least 2");
        anyhow::ensure!(
            self.drift_sample >= self.min_window,
            "drift sample must be at least min window"
        );
        anyhow::ensure!(self.min_labels >= 1, "min labels must be at least 1");
        anyhow::ensure!(
            self.drift_fdr > 0.0 && self.drift_fdr < 1.0,
            "drift FDR must be in (0, 1)"
        );
        anyhow::ensure!(
            self.confirm_windows >= 1 && self.resolve_after >= 1,
            "confirm windows and resolve after must be at least 1"
        );
        anyhow::ensure!(self.trend_windows >= 3, "trend windows must be at least 3");
        for (name, v) in [
            ("drift share", self.drift_share),
            ("label coverage", self.label_coverage),
            ("min accuracy", self.min_accuracy),
            ("min estimated accuracy", self.min_estimated_accuracy),
            ("min confidence", self.min_confidence),
            ("low confidence", self.low_confidence),
            ("max out of range", self.max_out_of_range),
            ("max unseen", self.max_unseen),
            ("trend p-value", self.trend_p_value),
        ] {
            anyhow::ensure!((0.0..=1.0).contains(&v), "{name} must be in [0, 1]");
        }
        // A bad override fails at start-up, not at the first window.
        self.drift_config()?;
        Ok(())
    }

    /// The drift configuration these flags describe.
    pub fn drift_config(&self) -> anyhow::Result<DriftConfig> {
        let preset = match self.drift_preset.as_str() {
            "evidently" => Preset::Evidently,
            _ => Preset::Petrel,
        };
        let mut config = DriftConfig::new(preset);
        config.fdr = self.drift_fdr;
        config.drift_share = self.drift_share;
        for item in self
            .drift_overrides
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (column, spec) = item.split_once('=').with_context(|| {
                format!("drift override {item:?} must be column=method[:threshold]")
            })?;
            let (method, threshold) = match spec.split_once(':') {
                Some((m, t)) => (
                    m,
                    Some(t.parse::<f64>().with_context(|| {
                        format!("drift override {item:?}: {t:?} is not a number")
                    })?),
                ),
                None => (spec, None),
            };
            let method = Method::from_name(method)
                .with_context(|| format!("drift override {item:?}: unknown method {method:?}"))?;
            config.overrides.insert(
                column.trim().to_owned(),
                ColumnOverride {
                    method: Some(method),
                    threshold,
                },
            );
        }
        Ok(config)
    }

    pub fn policy(&self) -> Policy {
        Policy {
            confirm_windows: self.confirm_windows,
            resolve_after: self.resolve_after,
            cooldown: Duration::from_secs(self.cooldown_secs),
        }
    }

    fn limits(&self) -> QualityLimits {
        QualityLimits {
            out_of_range_share: self.max_out_of_range,
            unseen_share: self.max_unseen,
            missing_p_value: self.drift_fdr,
        }
    }
}

/// Most windows one model version closes per tick, so a long backlog of one version cannot
/// starve the others.
pub const MAX_WINDOWS_PER_TICK: usize = 50;

/// Closes windows and revises their quality every second until cancelled.
pub async fn run(state: AppState, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Err(e) = close_ready_windows(&state).await {
            tracing::warn!(error = format!("{e:#}"), "window check failed");
        }
        if let Err(e) = crate::quality::revise(&state).await {
            tracing::warn!(error = format!("{e:#}"), "quality revision failed");
        }
    }
}

fn floor_to(t: DateTime<Utc>, secs: u64) -> DateTime<Utc> {
    let micros = secs as i64 * 1_000_000;
    let ts = t.timestamp_micros();
    DateTime::from_timestamp_micros(ts - ts.rem_euclid(micros)).unwrap_or(t)
}

/// Closes every window that is ready, oldest first per model version; returns the reports
/// written.
pub async fn close_ready_windows(s: &AppState) -> anyhow::Result<Vec<Uuid>> {
    let t = &s.thresholds;
    let streams = sqlx::query(
        "SELECT s.model_name, s.model_version, s.newest, \
                (SELECT max(window_end) FROM reports r WHERE r.model_name = s.model_name AND r.model_version = s.model_version) AS last_end \
         FROM streams s",
    )
    .fetch_all(&s.infra.pool)
    .await?;
    let lateness = chrono::Duration::seconds(t.window_lateness_secs as i64);
    let idle = chrono::Duration::seconds(t.window_idle_secs as i64);
    let length = chrono::Duration::seconds(t.window_secs as i64);
    let mut written = Vec::new();
    for st in streams {
        let model: String = st.get("model_name");
        let version: i32 = st.get("model_version");
        let newest: DateTime<Utc> = st.get("newest");
        let mut last_end: Option<DateTime<Utc>> = st.get("last_end");
        let mut reference: Option<std::sync::Arc<Reference>> = None;
        for _ in 0..MAX_WINDOWS_PER_TICK {
            let first: Option<DateTime<Utc>> = sqlx::query_scalar(
                "SELECT min(predicted_at) FROM observations WHERE model_name = $1 AND model_version = $2 \
                 AND predicted_at >= COALESCE($3, '-infinity'::timestamptz)",
            )
            .bind(&model)
            .bind(version)
            .bind(last_end)
            .fetch_one(&s.infra.pool)
            .await?;
            let Some(first) = first else { break };
            let mut start = floor_to(first, t.window_secs);
            if let Some(l) = last_end
                && l > start
            {
                start = l;
            }
            let end = start + length;
            let now = Utc::now();
            if newest < end + lateness && now < end + idle {
                break;
            }
            let r = match &reference {
                Some(r) => r.clone(),
                None => match s.references.get(&model, version).await {
                    Ok(r) => {
                        reference = Some(r.clone());
                        r
                    }
                    Err(ReferenceError::RecentlyFailed) => break,
                    Err(ReferenceError::Load(e)) => {
                        tracing::warn!(model.name = %model, model.version = version, error = format!("{e:#}"), "no reference for this model version; its windows wait");
                        break;
                    }
                },
            };
            if let Some(id) = close_window(s, &model, version, start, end, &r).await? {
                written.push(id);
            }
            last_end = Some(end);
        }
    }
    if !written.is_empty() {
        s.infra.relay.poke();
    }
    Ok(written)
}

/// Locks one model version's windows for the rest of the transaction, so replicas never close
/// the same window twice or apply episodes out of order.
pub async fn lock_version(
    tx: &mut sqlx::PgConnection,
    model: &str,
    version: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2::text, 7))")
        .bind(model)
        .bind(version)
        .execute(tx)
        .await?;
    Ok(())
}

async fn close_window(
    s: &AppState,
    model: &str,
    version: i32,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    reference: &Reference,
) -> anyhow::Result<Option<Uuid>> {
    let t = &s.thresholds;
    let mut tx = s.infra.pool.begin().await?;
    lock_version(&mut tx, model, version).await?;
    let done: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM reports WHERE model_name = $1 AND model_version = $2 AND window_start = $3",
    )
    .bind(model)
    .bind(version)
    .bind(start)
    .fetch_optional(&mut *tx)
    .await?;
    if done.is_some() {
        return Ok(None);
    }
    let agg = sqlx::query(
        "SELECT count(*) AS n, avg(confidence)::float8 AS mean, count(*) FILTER (WHERE confidence < $5) AS low \
         FROM observations WHERE model_name = $1 AND model_version = $2 AND predicted_at >= $3 AND predicted_at < $4",
    )
    .bind(model)
    .bind(version)
    .bind(start)
    .bind(end)
    .bind(t.low_confidence as f32)
    .fetch_one(&mut *tx)
    .await?;
    let n: i64 = agg.get("n");
    let mean_confidence: Option<f64> = agg.get("mean");
    let low: i64 = agg.get("low");
    let rows = sqlx::query(
        "SELECT features::text AS features, class, confidence FROM observations \
         WHERE model_name = $1 AND model_version = $2 AND predicted_at >= $3 AND predicted_at < $4 \
         ORDER BY sample_key LIMIT $5",
    )
    .bind(model)
    .bind(version)
    .bind(start)
    .bind(end)
    .bind(t.drift_sample as i64)
    .fetch_all(&mut *tx)
    .await?;
    let sample: Vec<Sampled> = rows
        .iter()
        .filter_map(|r| {
            let features = serde_json::from_str(r.get::<&str, _>("features")).ok()?;
            Some(Sampled {
                features,
                class: r.get("class"),
                confidence: f64::from(r.get::<f32, _>("confidence")),
            })
        })
        .collect();
    let a = analysis::analyse(
        reference,
        &sample,
        &s.drift_config,
        t.limits(),
        t.min_window,
    );
    let enough = n as usize >= t.min_window;
    let estimated = a.estimated_accuracy.as_ref().map(|e| e.accuracy);

    // Trends of the label-free metrics over this and the previous windows.
    let history = sqlx::query(
        "SELECT mean_confidence, (detail->'estimated_accuracy'->>'accuracy')::float8 AS estimated FROM reports \
         WHERE model_name = $1 AND model_version = $2 AND window_start < $3 AND n_predictions >= $4 \
         ORDER BY window_start DESC LIMIT $5",
    )
    .bind(model)
    .bind(version)
    .bind(start)
    .bind(t.min_window as i64)
    .bind(t.trend_windows as i64 - 1)
    .fetch_all(&mut *tx)
    .await?;
    let mut trends = Vec::new();
    if enough {
        let series = |current: Option<f64>, col: &str| -> Option<Vec<f64>> {
            let mut v: Vec<f64> = history
                .iter()
                .rev()
                .filter_map(|r| r.get::<Option<f64>, _>(col))
                .collect();
            v.push(current?);
            (v.len() >= t.trend_windows).then_some(v)
        };
        if let Some(v) = series(mean_confidence, "mean_confidence") {
            trends.extend(trend::decline(
                "mean_confidence",
                &v,
                t.min_confidence,
                t.trend_p_value,
                t.trend_windows,
            ));
        }
        if let Some(v) = series(estimated, "estimated") {
            trends.extend(trend::decline(
                "estimated_accuracy",
                &v,
                t.min_estimated_accuracy,
                t.trend_p_value,
                t.trend_windows,
            ));
        }
    }

    let id = Uuid::now_v7();
    let conditions = if enough {
        conditions(t, model, version, &a, mean_confidence, &trends)
    } else {
        Vec::new()
    };
    let firing: Vec<&str> = conditions
        .iter()
        .filter(|c| c.firing)
        .map(|c| c.kind.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let drift = a.drift.as_ref().map(feature_drift).unwrap_or_default();
    let drift_share = a.drift.as_ref().map(|v| {
        let n = v.columns.len().max(1) as f64;
        v.columns.iter().filter(|c| distribution_drifted(c)).count() as f64 / n
    });
    let detail = ReportDetail {
        sampled: sample.len() as i64,
        skipped: a.skipped.clone(),
        drift_verdict: a.drift.clone(),
        prediction_drift: a.prediction_drift.clone(),
        data_quality: a.data_quality.clone(),
        low_confidence_share: (n > 0).then(|| low as f64 / n as f64),
        estimated_accuracy: a.estimated_accuracy.clone(),
        quality: None,
        trends,
    };
    sqlx::query(
        "INSERT INTO reports (id, model_name, model_version, window_start, window_end, n_predictions, n_labels, \
         accuracy, mean_confidence, drift_share, drift, alerts, revision, quality_final, detail) \
         VALUES ($1,$2,$3,$4,$5,$6,0,NULL,$7,$8,$9,$10,1,false,$11)",
    )
    .bind(id)
    .bind(model)
    .bind(version)
    .bind(start)
    .bind(end)
    .bind(n)
    .bind(mean_confidence)
    .bind(drift_share)
    .bind(serde_json::to_value(&drift)?)
    .bind(&firing)
    .bind(serde_json::to_value(&detail)?)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO report_revisions (report_id, revision, n_labels, quality, quality_final) VALUES ($1, 1, 0, NULL, false)",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    // Labels that arrived before their window closed now belong to it.
    sqlx::query(
        "UPDATE outcomes SET report_id = $1, counted = false WHERE report_id IS NULL AND model_name = $2 \
         AND model_version = $3 AND predicted_at >= $4 AND predicted_at < $5",
    )
    .bind(id)
    .bind(model)
    .bind(version)
    .bind(start)
    .bind(end)
    .execute(&mut *tx)
    .await?;
    let w = episodes::Window {
        model,
        version,
        report_id: id,
        start,
        end,
    };
    let sent = episodes::apply(s, &mut tx, &t.policy(), w, &conditions).await?;
    tx.commit().await?;
    record_window(model, &a, drift_share, estimated, &firing);
    tracing::info!(
        report.id = %id,
        model.name = %model,
        model.version = version,
        window.start = %start,
        n_predictions = n,
        sampled = sample.len(),
        mean_confidence = ?mean_confidence,
        estimated_accuracy = ?estimated,
        drift_share = ?drift_share,
        firing = ?firing,
        notified = sent.len(),
        "window closed"
    );
    Ok(Some(id))
}

/// What a closed window shows in `/metrics`: per column its drift statistic and whether it
/// drifted, the share of drifted columns, the estimated accuracy and the conditions firing.
fn record_window(
    model: &str,
    a: &Analysis,
    drift_share: Option<f64>,
    estimated: Option<f64>,
    firing: &[&str],
) {
    if let Some(v) = &a.drift {
        for c in &v.columns {
            let labels = [
                ("model", model.to_owned()),
                ("column", c.column.clone()),
                ("method", c.method.name().to_owned()),
            ];
            metrics::gauge!("petrel_drift_statistic", &labels).set(c.statistic);
            metrics::gauge!("petrel_drift_detected", &labels).set(if distribution_drifted(c) {
                1.0
            } else {
                0.0
            });
        }
    }
    if let Some(share) = drift_share {
        metrics::gauge!("petrel_drift_share", "model" => model.to_owned()).set(share);
    }
    if let Some(estimated) = estimated {
        metrics::gauge!("petrel_estimated_accuracy", "model" => model.to_owned()).set(estimated);
    }
    metrics::counter!("petrel_monitor_windows_total", "model" => model.to_owned()).increment(1);
    for kind in firing {
        metrics::counter!(
            "petrel_monitor_conditions_firing_total",
            "model" => model.to_owned(),
            "kind" => (*kind).to_owned(),
        )
        .increment(1);
    }
}

/// Help texts of the monitor's metrics.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "petrel_drift_statistic",
        "The last closed window's drift statistic per model and feature column (the test's \
         own: KS D, chi-squared, PSI, Wasserstein or Jensen-Shannon, as `method` says)"
    );
    metrics::describe_gauge!(
        "petrel_drift_detected",
        "1 when the column drifted in the last closed window, else 0"
    );
    metrics::describe_gauge!(
        "petrel_drift_share",
        "Share of feature columns that drifted in the last closed window"
    );
    metrics::describe_gauge!(
        "petrel_estimated_accuracy",
        "Accuracy estimated from confidence (no labels needed) in the last closed window"
    );
    metrics::describe_counter!("petrel_monitor_windows_total", "Windows closed, per model");
    metrics::describe_counter!(
        "petrel_monitor_conditions_firing_total",
        "Closed windows in which a condition fired, per model and kind"
    );
}

/// The short per-feature list of a verdict.
fn feature_drift(v: &DatasetVerdict) -> Vec<FeatureDrift> {
    v.columns
        .iter()
        .map(|c| FeatureDrift {
            feature: c.column.clone(),
            method: c.method.name().to_owned(),
            statistic: c.statistic,
            p_value: c.p_value.or(c.distance).unwrap_or(c.score),
            drifted: distribution_drifted(c),
            n: c.current_values as usize,
        })
        .collect()
}

/// The label-free conditions of a window, firing or not.
fn conditions(
    t: &Thresholds,
    model: &str,
    version: i32,
    a: &Analysis,
    mean_confidence: Option<f64>,
    trends: &[petrel_api::monitor::Trend],
) -> Vec<Condition> {
    let mut out = Vec::new();
    let base =
        |kind, key: Option<String>, firing, severity, observed, threshold, message| Condition {
            kind,
            key,
            firing,
            severity,
            observed,
            threshold,
            message,
            evidence: Vec::new(),
            details: json!({}),
        };
    if let Some(v) = &a.drift {
        let drifted: Vec<_> = v
            .columns
            .iter()
            .filter(|c| distribution_drifted(c))
            .collect();
        let share = drifted.len() as f64 / v.columns.len().max(1) as f64;
        let firing = match v.preset {
            Preset::Petrel => !drifted.is_empty(),
            Preset::Evidently => share >= t.drift_share,
        };
        let names: Vec<&str> = drifted.iter().map(|c| c.column.as_str()).collect();
        let mut c = base(
            AlertKind::Drift,
            None,
            firing,
            if share >= 0.5 {
                Severity::Critical
            } else {
                Severity::Warning
            },
            share,
            if v.preset == Preset::Evidently {
                t.drift_share
            } else {
                t.drift_fdr
            },
            format!(
                "{model} v{version}: {} of {} features drifted from the training data ({}); check the upstream data before trusting predictions",
                drifted.len(),
                v.columns.len(),
                names.join(", ")
            ),
        );
        c.evidence = evidence_of(&drifted);
        c.details = json!({ "rule": v.rule, "drifted_features": names });
        out.push(c);
    }
    if let Some(v) = &a.prediction_drift {
        let drifted: Vec<_> = v
            .columns
            .iter()
            .filter(|c| distribution_drifted(c))
            .collect();
        let names: Vec<&str> = drifted.iter().map(|c| c.column.as_str()).collect();
        let mut c = base(
            AlertKind::PredictionDrift,
            None,
            !drifted.is_empty(),
            Severity::Warning,
            drifted.len() as f64 / v.columns.len().max(1) as f64,
            t.drift_fdr,
            format!(
                "{model} v{version}: the model's outputs moved away from its held-out behaviour ({})",
                names.join(", ")
            ),
        );
        c.evidence = evidence_of(&drifted);
        out.push(c);
    }
    for q in &a.data_quality {
        let mut c = base(
            AlertKind::DataQuality,
            Some(q.column.clone()),
            !q.issues.is_empty(),
            Severity::Warning,
            q.out_of_range_share
                .or(q.unseen_share)
                .unwrap_or(q.missing_share),
            q.out_of_range_share
                .map(|_| t.max_out_of_range)
                .unwrap_or(t.max_unseen),
            format!(
                "{model} v{version}: column {}: {}",
                q.column,
                q.issues.join("; ")
            ),
        );
        c.evidence = [
            (
                "missing_share",
                Some(q.missing_share),
                q.reference_missing_share,
            ),
            (
                "out_of_range_share",
                q.out_of_range_share,
                t.max_out_of_range,
            ),
            ("unseen_share", q.unseen_share, t.max_unseen),
        ]
        .into_iter()
        .filter_map(|(m, v, th)| {
            v.map(|value| Evidence {
                column: Some(q.column.clone()),
                metric: m.to_owned(),
                value,
                threshold: th,
            })
        })
        .collect();
        out.push(c);
    }
    if let Some(e) = &a.estimated_accuracy {
        let firing = e.accuracy < t.min_estimated_accuracy;
        let mut c = base(
            AlertKind::EstimatedAccuracy,
            None,
            firing,
            severity_below(e.accuracy, t.min_estimated_accuracy),
            e.accuracy,
            t.min_estimated_accuracy,
            format!(
                "{model} v{version}: estimated accuracy {:.3} (± {:.3}, from confidence, no labels yet) is below {:.3}; expect the model to be wrong more often",
                e.accuracy, e.std_error, t.min_estimated_accuracy
            ),
        );
        c.evidence = vec![Evidence {
            column: None,
            metric: "estimated_accuracy".into(),
            value: e.accuracy,
            threshold: t.min_estimated_accuracy,
        }];
        out.push(c);
    }
    if let Some(conf) = mean_confidence {
        let mut c = base(
            AlertKind::Confidence,
            None,
            conf < t.min_confidence,
            severity_below(conf, t.min_confidence),
            conf,
            t.min_confidence,
            format!(
                "{model} v{version}: mean confidence {conf:.3} is below {:.3}",
                t.min_confidence
            ),
        );
        c.evidence = vec![Evidence {
            column: None,
            metric: "mean_confidence".into(),
            value: conf,
            threshold: t.min_confidence,
        }];
        out.push(c);
    }
    for tr in trends {
        let mut c = base(
            AlertKind::Trend,
            Some(tr.metric.clone()),
            tr.declining,
            Severity::Warning,
            tr.slope,
            tr.threshold,
            format!(
                "{model} v{version}: {} declines steadily ({:+.4} per window over {} windows, p = {:.1e}) and is projected at {:.3} within {} windows, below {:.3}",
                tr.metric, tr.slope, tr.n, tr.p_value, tr.projected, tr.horizon, tr.threshold
            ),
        );
        c.evidence = vec![Evidence {
            column: None,
            metric: "slope".into(),
            value: tr.p_value,
            threshold: t.trend_p_value,
        }];
        out.push(c);
    }
    out
}

/// One evidence line per drifted column: its method, the score judged and the threshold.
fn evidence_of(drifted: &[&petrel_drift::ColumnVerdict]) -> Vec<Evidence> {
    drifted
        .iter()
        .map(|d| Evidence {
            column: Some(d.column.clone()),
            metric: d.method.name().to_owned(),
            value: d.score,
            threshold: d.threshold,
        })
        .collect()
}

/// Critical when the value is more than 0.1 below its threshold.
pub fn severity_below(value: f64, threshold: f64) -> Severity {
    if value < threshold - 0.1 {
        Severity::Critical
    } else {
        Severity::Warning
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_validated_and_overrides_parsed() {
        let t = Thresholds::default();
        assert!(t.validate().is_ok());
        assert_eq!(t.window_secs, 60);
        let bad = Thresholds {
            drift_fdr: 0.0,
            ..Thresholds::default()
        };
        assert!(bad.validate().is_err());
        let o = Thresholds {
            drift_overrides: "body_mass_g=wasserstein:0.2, island=chi_square".into(),
            ..Thresholds::default()
        };
        let c = o.drift_config().unwrap();
        assert_eq!(
            c.overrides["body_mass_g"].method,
            Some(Method::WassersteinNorm)
        );
        assert_eq!(c.overrides["body_mass_g"].threshold, Some(0.2));
        assert_eq!(c.overrides["island"].method, Some(Method::ChiSquare));
        for bad in ["x", "x=nope", "x=ks:abc"] {
            let t = Thresholds {
                drift_overrides: bad.into(),
                ..Thresholds::default()
            };
            assert!(t.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn windows_align_to_multiples_of_their_length() {
        let t = DateTime::parse_from_rfc3339("2026-12-01T10:00:37.5Z")
            .unwrap()
            .to_utc();
        assert_eq!(floor_to(t, 60).to_rfc3339(), "2026-12-01T10:00:00+00:00");
        assert_eq!(floor_to(t, 1).to_rfc3339(), "2026-12-01T10:00:37+00:00");
    }
}
