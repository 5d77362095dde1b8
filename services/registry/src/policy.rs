//! The promotion policy: whether a newly registered version takes an alias automatically.
//!
//! A version is compared with the alias holder only when both were evaluated on the same data
//! (dataset, digest and split): a score on a 2-row test split of another upload says nothing
//! about a score on 69 rows of this one. Metrics are also bounded where their meaning bounds
//! them, so a `test_accuracy` of 5.0 is refused at registration instead of winning forever.

use std::collections::BTreeMap;

use chrono::Utc;
use petrel_api::registry::{Evaluation, ModelVersion, PromotionDecision, PromotionPolicy};

use crate::error::{Error, Result};

/// Refuses metric values their names make impossible: shares (accuracy, F1, precision, recall,
/// AUC) outside `[0, 1]`, counts (`n_*`) that are negative or fractional, losses below 0.
pub fn check_metric_bounds(metrics: &BTreeMap<String, f64>) -> Result<()> {
    for (k, &v) in metrics {
        let key = k.to_ascii_lowercase();
        let share = ["accuracy", "f1", "precision", "recall", "auc"]
            .iter()
            .any(|m| key == *m || key.ends_with(&format!("_{m}")));
        if share && !(0.0..=1.0).contains(&v) {
            return Err(Error::Invalid(format!(
                "metric {k:?} is {v}, but a share must be between 0 and 1"
            )));
        }
        if key.starts_with("n_") && (v < 0.0 || v.fract() != 0.0) {
            return Err(Error::Invalid(format!(
                "metric {k:?} is {v}, but a count must be a whole number >= 0"
            )));
        }
        if key.ends_with("loss") && v < 0.0 {
            return Err(Error::Invalid(format!(
                "metric {k:?} is {v}, but a loss cannot be negative"
            )));
        }
    }
    Ok(())
}

/// Checks a policy a user sends.
pub fn check_policy(p: &PromotionPolicy) -> Result<()> {
    if p.metric.trim().is_empty() || p.metric.len() > 256 || p.metric.chars().any(char::is_control)
    {
        return Err(Error::Invalid(
            "policy metric must be 1 to 256 characters without control characters".into(),
        ));
    }
    if !(p.margin.is_finite() && p.margin >= 0.0) {
        return Err(Error::Invalid(
            "policy margin must be a finite number >= 0".into(),
        ));
    }
    if p.min_value.is_some_and(|v| !v.is_finite()) {
        return Err(Error::Invalid("policy min_value must be finite".into()));
    }
    Ok(())
}

/// Held-out rows behind a version's metrics: from its evaluation, else its `n_test` metric.
fn eval_rows(metrics: &BTreeMap<String, f64>, evaluation: Option<&Evaluation>) -> Option<u64> {
    evaluation
        .map(|e| e.rows)
        .or_else(|| metrics.get("n_test").map(|&n| n as u64))
}

/// Decides whether a candidate takes `policy.alias` from `champion` (the current holder).
pub fn decide(
    policy: &PromotionPolicy,
    metrics: &BTreeMap<String, f64>,
    evaluation: Option<&Evaluation>,
    champion: Option<&ModelVersion>,
) -> PromotionDecision {
    let metric = policy.metric.as_str();
    let candidate = metrics.get(metric).copied();
    let champion_value = champion.and_then(|c| c.metrics.get(metric).copied());
    let decision = |promoted: bool, reason: String| PromotionDecision {
        alias: policy.alias.clone(),
        promoted,
        reason,
        metric: metric.to_owned(),
        candidate,
        champion_version: champion.map(|c| c.version),
        champion: champion_value,
        policy: policy.clone(),
        decided_at: Utc::now(),
    };
    if !policy.auto {
        return decision(false, "automatic promotion is off for this model".into());
    }
    let Some(value) = candidate else {
        return decision(false, format!("the version declares no {metric}"));
    };
    // Versions registered through MLflow carry the run's metrics unchecked.
    if let Err(e) = check_metric_bounds(&BTreeMap::from([(metric.to_owned(), value)])) {
        return decision(false, format!("not promoted: {e}"));
    }
    let rows = eval_rows(metrics, evaluation);
    if let Some(n) = rows
        && n < policy.min_eval_rows
    {
        return decision(
            false,
            format!(
                "{metric} comes from {n} held-out rows, fewer than the policy's {}",
                policy.min_eval_rows
            ),
        );
    }
    if let Some(min) = policy.min_value {
        let passes = if policy.higher_is_better {
            value >= min
        } else {
            value <= min
        };
        if !passes {
            return decision(
                false,
                format!("{metric} {value:.4} does not pass the gate of {min:.4}"),
            );
        }
    }
    let on = rows.map(|n| format!(" on {n} rows")).unwrap_or_default();
    let Some(champ) = champion else {
        return decision(
            true,
            format!("auto: first version to pass the gate, {metric} {value:.4}{on}"),
        );
    };
    if policy.same_evaluation {
        match (evaluation, champ.evaluation.as_ref()) {
            (Some(a), Some(b)) if a == b => {}
            (None, _) | (_, None) => {
                return decision(
                    false,
                    format!(
                        "cannot compare with version {}: the evaluation data of {} is not recorded; move the alias by hand after comparing on the same data",
                        champ.version,
                        if evaluation.is_none() {
                            "this version"
                        } else {
                            "the alias holder"
                        }
                    ),
                );
            }
            (Some(a), Some(b)) => {
                let what = if a.dataset_id != b.dataset_id {
                    "another dataset"
                } else if a.digest != b.digest {
                    "other content"
                } else {
                    "another split"
                };
                return decision(
                    false,
                    format!(
                        "evaluated on {what} than version {} ({metric} {value:.4} against {}); compare on the same data before promoting by hand",
                        champ.version,
                        champion_value.map_or("none".into(), |c| format!("{c:.4}"))
                    ),
                );
            }
        }
    }
    let Some(best) = champion_value else {
        return decision(
            true,
            format!(
                "auto: version {} has no {metric}; {value:.4}{on} replaces it",
                champ.version
            ),
        );
    };
    let better = if policy.higher_is_better {
        value >= best + policy.margin
    } else {
        value <= best - policy.margin
    };
    if better {
        decision(
            true,
            format!(
                "auto: {metric} {value:.4} {} {best:.4} of version {}{} on the same evaluation data",
                if policy.higher_is_better { ">=" } else { "<=" },
                champ.version,
                if policy.margin > 0.0 {
                    format!(" by a margin of {}", policy.margin)
                } else {
                    String::new()
                }
            ),
        )
    } else {
        decision(
            false,
            format!(
                "{metric} {value:.4} does not beat {best:.4} of version {} by the policy's margin {}",
                champ.version, policy.margin
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn eval(dataset: Uuid, digest: &str, rows: u64) -> Evaluation {
        Evaluation {
            dataset_id: dataset,
            digest: digest.into(),
            split: "stratified test split 0.2, seed 42".into(),
            rows,
        }
    }

    fn version(v: i32, acc: f64, e: Option<Evaluation>) -> ModelVersion {
        ModelVersion {
            model_name: "m".into(),
            version: v,
            run_id: Uuid::now_v7(),
            artifact_uri: "file:///x".into(),
            dataset_id: None,
            metrics: BTreeMap::from([("test_accuracy".into(), acc)]),
            description: None,
            aliases: vec![],
            created_at: Utc::now(),
            evaluation: e,
            promotion: None,
            tags: BTreeMap::new(),
            input_schema: None,
            class_names: Vec::new(),
        }
    }

    fn acc(a: f64, n: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([("test_accuracy".into(), a), ("n_test".into(), n)])
    }

    #[test]
    fn a_tiny_upload_with_a_perfect_score_does_not_replace_a_real_model() {
        let p = PromotionPolicy::default();
        let penguins = Uuid::now_v7();
        let champ = version(1, 0.9855, Some(eval(penguins, "sha256:aa", 69)));
        // The 10-row upload: another dataset, a 2-row test split scoring 1.0.
        let tiny = eval(Uuid::now_v7(), "sha256:bb", 2);
        let d = decide(&p, &acc(1.0, 2.0), Some(&tiny), Some(&champ));
        assert!(!d.promoted);
        assert!(d.reason.contains("2 held-out rows"), "{}", d.reason);
        // Even with enough rows, another dataset is not comparable.
        let other = eval(Uuid::now_v7(), "sha256:bb", 100);
        let d = decide(&p, &acc(1.0, 100.0), Some(&other), Some(&champ));
        assert!(!d.promoted);
        assert!(d.reason.contains("another dataset"), "{}", d.reason);
        assert_eq!(
            (d.candidate, d.champion, d.champion_version),
            (Some(1.0), Some(0.9855), Some(1))
        );
        // The same data and a better score promotes; a worse one does not.
        let same = eval(penguins, "sha256:aa", 69);
        assert!(decide(&p, &acc(0.99, 69.0), Some(&same), Some(&champ)).promoted);
        assert!(!decide(&p, &acc(0.97, 69.0), Some(&same), Some(&champ)).promoted);
        // A margin is respected.
        let strict = PromotionPolicy {
            margin: 0.01,
            ..PromotionPolicy::default()
        };
        assert!(!decide(&strict, &acc(0.99, 69.0), Some(&same), Some(&champ)).promoted);
    }

    #[test]
    fn the_first_version_must_pass_the_gate() {
        let gated = PromotionPolicy {
            min_value: Some(0.9),
            ..PromotionPolicy::default()
        };
        let e = eval(Uuid::now_v7(), "sha256:aa", 69);
        assert!(!decide(&gated, &acc(0.5, 69.0), Some(&e), None).promoted);
        assert!(decide(&gated, &acc(0.95, 69.0), Some(&e), None).promoted);
        let d = decide(&gated, &BTreeMap::new(), Some(&e), None);
        assert!(!d.promoted && d.reason.contains("declares no test_accuracy"));
        let off = PromotionPolicy {
            auto: false,
            ..PromotionPolicy::default()
        };
        assert!(!decide(&off, &acc(0.95, 69.0), Some(&e), None).promoted);
        // Smaller is better: a loss gate.
        let loss = PromotionPolicy {
            metric: "test_log_loss".into(),
            higher_is_better: false,
            min_value: Some(0.5),
            ..PromotionPolicy::default()
        };
        let m = BTreeMap::from([("test_log_loss".into(), 0.2), ("n_test".into(), 69.0)]);
        assert!(decide(&loss, &m, Some(&e), None).promoted);
    }

    #[test]
    fn impossible_metric_values_are_refused() {
        let bad =
            |k: &str, v: f64| check_metric_bounds(&BTreeMap::from([(k.to_owned(), v)])).is_err();
        assert!(bad("test_accuracy", 5.0));
        assert!(bad("test_macro_f1", -0.1));
        assert!(bad("n_test", 2.5));
        assert!(bad("test_log_loss", -1.0));
        assert!(!bad("test_accuracy", 1.0));
        assert!(!bad("temperature", 5.0));
    }
}
