//! Quality from labels: a window's labels are the labels of its own predictions, joined by
//! inference id whenever they arrive. Each arrival revises the window's quality as a new
//! revision (kept in `report_revisions`); quality is final once `--label-coverage` of the
//! window is labelled or `--label-grace-secs` have passed, and the window's stored
//! predictions are then dropped.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use petrel_api::monitor::{ClassMetrics, Confusion, Quality};
use petrel_events::payloads::{AlertKind, Evidence};
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

use crate::AppState;
use crate::episodes::{self, Condition};
use crate::window::{lock_version, severity_below};

/// Most windows revised per tick.
const REVISIONS_PER_TICK: i64 = 200;

/// One label of a window.
#[derive(Clone, Debug)]
pub struct Labelled {
    pub label: String,
    pub predicted: String,
    /// The probability the model gave the true label, when its prediction is still stored.
    pub p_true: Option<f64>,
}

/// Accuracy, per-class precision/recall/F1, log loss and the confusion matrix of `labels`.
pub fn quality(
    labels: &[Labelled],
    n_predictions: i64,
    reference_accuracy: Option<f64>,
) -> Quality {
    let classes: Vec<String> = labels
        .iter()
        .flat_map(|l| [l.label.clone(), l.predicted.clone()])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let index: BTreeMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let k = classes.len();
    let mut matrix = vec![vec![0u64; k]; k];
    for l in labels {
        matrix[index[l.label.as_str()]][index[l.predicted.as_str()]] += 1;
    }
    let right: u64 = (0..k).map(|i| matrix[i][i]).sum();
    let n = labels.len() as u64;
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let mut per_class = BTreeMap::new();
    for (i, c) in classes.iter().enumerate() {
        let tp = matrix[i][i];
        let support: u64 = matrix[i].iter().sum();
        let predicted: u64 = (0..k).map(|r| matrix[r][i]).sum();
        let precision = ratio(tp, predicted);
        let recall = ratio(tp, support);
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        per_class.insert(
            c.clone(),
            ClassMetrics {
                precision,
                recall,
                f1,
                support,
            },
        );
    }
    let with_p: Vec<f64> = labels.iter().filter_map(|l| l.p_true).collect();
    let log_loss = (!with_p.is_empty()).then(|| {
        with_p
            .iter()
            .map(|p| -p.clamp(1e-15, 1.0).ln())
            .sum::<f64>()
            / with_p.len() as f64
    });
    Quality {
        n_labels: n as i64,
        coverage: ratio(n, n_predictions.max(0) as u64),
        accuracy: ratio(right, n),
        log_loss,
        per_class,
        confusion: Confusion { classes, matrix },
        reference_accuracy,
    }
}

/// Revises every window with new labels and finalises those past their grace period.
pub async fn revise(s: &AppState) -> anyhow::Result<usize> {
    let grace = chrono::Duration::seconds(s.thresholds.label_grace_secs as i64);
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "(SELECT DISTINCT report_id FROM outcomes WHERE NOT counted AND report_id IS NOT NULL LIMIT $1) \
         UNION (SELECT id FROM reports WHERE NOT quality_final AND window_end < $2 LIMIT $1)",
    )
    .bind(REVISIONS_PER_TICK)
    .bind(Utc::now() - grace)
    .fetch_all(&s.infra.pool)
    .await?;
    let mut revised = 0;
    for id in ids {
        if revise_one(s, id).await? {
            revised += 1;
        }
    }
    if revised > 0 {
        s.infra.relay.poke();
    }
    Ok(revised)
}

async fn revise_one(s: &AppState, id: Uuid) -> anyhow::Result<bool> {
    let t = &s.thresholds;
    let head = sqlx::query("SELECT model_name, model_version FROM reports WHERE id = $1")
        .bind(id)
        .fetch_optional(&s.infra.pool)
        .await?;
    let Some(head) = head else { return Ok(false) };
    let model: String = head.get("model_name");
    let version: i32 = head.get("model_version");
    let mut tx = s.infra.pool.begin().await?;
    lock_version(&mut tx, &model, version).await?;
    let r = sqlx::query(
        "SELECT window_start, window_end, n_predictions, n_labels, revision, quality_final, alerts, \
         (detail ? 'accuracy_evaluated') AS evaluated FROM reports WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let start: DateTime<Utc> = r.get("window_start");
    let end: DateTime<Utc> = r.get("window_end");
    let n_predictions: i64 = r.get("n_predictions");
    let old_labels: i64 = r.get("n_labels");
    let revision: i32 = r.get("revision");
    let mut alerts: Vec<String> = r.get("alerts");
    let evaluated: bool = r.get("evaluated");
    if r.get::<bool, _>("quality_final") {
        // Labels after the window's quality was final are not counted; drop them.
        sqlx::query("DELETE FROM outcomes WHERE report_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Ok(false);
    }
    let rows = sqlx::query(
        "SELECT o.label, o.predicted_class, (ob.probabilities ->> o.label)::float8 AS p_true, \
         ob.probabilities IS NOT NULL AS has_p FROM outcomes o \
         LEFT JOIN observations ob ON ob.inference_id = o.inference_id WHERE o.report_id = $1",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let labels: Vec<Labelled> = rows
        .iter()
        .map(|row| Labelled {
            label: row.get("label"),
            predicted: row
                .get::<Option<String>, _>("predicted_class")
                .unwrap_or_default(),
            // A prediction with probabilities that gave the label none gave it 0.
            p_true: row
                .get::<Option<f64>, _>("p_true")
                .or_else(|| row.get::<bool, _>("has_p").then_some(0.0)),
        })
        .collect();
    let reference = s.references.get(&model, version).await.ok();
    let q = (!labels.is_empty()).then(|| {
        quality(
            &labels,
            n_predictions,
            reference.as_ref().map(|r| r.test_accuracy),
        )
    });
    let n_labels = labels.len() as i64;
    let coverage = if n_predictions > 0 {
        n_labels as f64 / n_predictions as f64
    } else {
        1.0
    };
    let grace = chrono::Duration::seconds(t.label_grace_secs as i64);
    let is_final = coverage >= t.label_coverage || Utc::now() >= end + grace;
    let changed = n_labels != old_labels;
    let accuracy = q
        .as_ref()
        .filter(|q| q.n_labels >= t.min_labels)
        .map(|q| q.accuracy);
    // Accuracy alerts are judged once per window: when it first has enough labels.
    let judge = accuracy.is_some() && !evaluated;
    if let (true, Some(acc)) = (judge, accuracy) {
        let firing = acc < t.min_accuracy;
        if firing && !alerts.iter().any(|a| a == "accuracy") {
            alerts.push("accuracy".into());
        }
        let q = q.as_ref().expect("accuracy comes from quality");
        let reference_note = q
            .reference_accuracy
            .map(|r| format!(" (held-out accuracy at training: {r:.3})"))
            .unwrap_or_default();
        let c = Condition {
            kind: AlertKind::Accuracy,
            key: None,
            firing,
            severity: severity_below(acc, t.min_accuracy),
            observed: acc,
            threshold: t.min_accuracy,
            message: format!(
                "{model} v{version}: accuracy {acc:.3} on {n_labels} labelled predictions of the window is below {:.3}{reference_note}; consider retraining",
                t.min_accuracy
            ),
            evidence: vec![Evidence {
                column: None,
                metric: "accuracy".into(),
                value: acc,
                threshold: t.min_accuracy,
            }],
            details: json!({ "labelled": n_labels, "coverage": coverage }),
        };
        let w = episodes::Window {
            model: &model,
            version,
            report_id: id,
            start,
            end,
        };
        episodes::apply(s, &mut tx, &t.policy(), w, &[c]).await?;
    }
    let new_revision = if changed { revision + 1 } else { revision };
    let mut patch = json!({ "quality": q });
    if judge {
        patch["accuracy_evaluated"] = json!(true);
    }
    sqlx::query(
        "UPDATE reports SET n_labels = $2, accuracy = $3, revision = $4, quality_final = $5, alerts = $6, \
         detail = detail || $7 WHERE id = $1",
    )
    .bind(id)
    .bind(n_labels)
    .bind(accuracy)
    .bind(new_revision)
    .bind(is_final)
    .bind(&alerts)
    .bind(&patch)
    .execute(&mut *tx)
    .await?;
    if changed {
        sqlx::query(
            "INSERT INTO report_revisions (report_id, revision, n_labels, quality, quality_final) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(new_revision)
        .bind(n_labels)
        .bind(serde_json::to_value(&q)?)
        .bind(is_final)
        .execute(&mut *tx)
        .await?;
    } else if is_final {
        sqlx::query("UPDATE report_revisions SET quality_final = true WHERE report_id = $1 AND revision = $2")
            .bind(id)
            .bind(revision)
            .execute(&mut *tx)
            .await?;
    }
    if is_final {
        // The window is settled: its predictions and labels have done their work.
        sqlx::query(
            "DELETE FROM observations WHERE model_name = $1 AND model_version = $2 AND predicted_at >= $3 AND predicted_at < $4",
        )
        .bind(&model)
        .bind(version)
        .bind(start)
        .bind(end)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM outcomes WHERE report_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    } else {
        sqlx::query("UPDATE outcomes SET counted = true WHERE report_id = $1 AND NOT counted")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    if changed {
        tracing::info!(report.id = %id, revision = new_revision, n_labels, accuracy = ?accuracy, quality_final = is_final, "window quality revised");
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(label: &str, predicted: &str, p: Option<f64>) -> Labelled {
        Labelled {
            label: label.into(),
            predicted: predicted.into(),
            p_true: p,
        }
    }

    #[test]
    fn quality_metrics_match_their_definitions() {
        let labels = [
            l("a", "a", Some(0.9)),
            l("a", "b", Some(0.2)),
            l("b", "b", Some(0.8)),
            l("b", "b", None),
            l("c", "a", Some(0.0)),
        ];
        let q = quality(&labels, 10, Some(0.95));
        assert_eq!(q.n_labels, 5);
        assert!((q.coverage - 0.5).abs() < 1e-12);
        assert!((q.accuracy - 0.6).abs() < 1e-12);
        assert_eq!(q.confusion.classes, ["a", "b", "c"]);
        assert_eq!(
            q.confusion.matrix,
            [vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]
        );
        let a = &q.per_class["a"];
        assert!((a.precision - 0.5).abs() < 1e-12 && (a.recall - 0.5).abs() < 1e-12);
        let b = &q.per_class["b"];
        assert!((b.precision - 2.0 / 3.0).abs() < 1e-12 && (b.recall - 1.0).abs() < 1e-12);
        assert!((b.f1 - 0.8).abs() < 1e-12);
        assert_eq!(q.per_class["c"].f1, 0.0);
        let expected = (-(0.9f64).ln() - (0.2f64).ln() - (0.8f64).ln() - (1e-15f64).ln()) / 4.0;
        assert!((q.log_loss.unwrap() - expected).abs() < 1e-12);
    }
}
