//! The promotion policy: whether a newly registered version takes an alias automatically.
//!
//! A version is compared with the alias holder only when both were evaluated on the same data
//! (dataset, digest and split): a score on a 2-row test split of another upload says nothing
//! about a score on 69 rows of this one. Metrics are also bounded where their meaning bounds
//! them, so a `test_accuracy` of 5.0 is refused at registration instead of winning forever.
//!
//! Champion/challenger on one holdout: when the registering client scored the alias holder on
//! the candidate's own held-out rows ([`ChampionScore`]), the two scores from those rows decide,
//! whatever data the holder was first evaluated on. A candidate that passes the gate but loses
//! takes the policy's challenger alias, and the decision records both scores.

use std::collections::BTreeMap;

use chrono::Utc;
use petrel_api::registry::{
    ChampionScore, Evaluation, ModelVersion, PromotionDecision, PromotionPolicy,
};

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
    if p.challenger_alias.as_deref() == Some(p.alias.as_str()) {
        return Err(Error::Invalid(
            "policy challenger_alias must differ from its alias".into(),
        ));
    }
    Ok(())
}

/// Held-out rows behind a version's metrics: from its evaluation, else its `n_test` metric.
fn eval_rows(metrics: &BTreeMap<String, f64>, evaluation: Option<&Evaluation>) -> Option<u64> {
    evaluation
        .map(|e| e.rows)
        .or_else(|| metrics.get("n_test").map(|&n| n as u64))
}

/// Decides whether a candidate takes `policy.alias` from `champion` (the current holder), on
/// `champion_score` (the holder scored on the candidate's held-out rows) when it is for that
/// holder, else on the holder's recorded metrics.
pub fn decide(
    policy: &PromotionPolicy,
    metrics: &BTreeMap<String, f64>,
    evaluation: Option<&Evaluation>,
    champion: Option<&ModelVersion>,
    champion_score: Option<&ChampionScore>,
) -> PromotionDecision {
    let metric = policy.metric.as_str();
    let candidate = metrics.get(metric).copied();
    let recorded = champion.and_then(|c| c.metrics.get(metric).copied());
    // The shared-holdout score counts only for the version that holds the alias now.
    let shared = champion.zip(champion_score).and_then(|(c, s)| {
        (s.version == c.version)
            .then(|| s.metrics.get(metric).map(|v| (*v, s.rows)))
            .flatten()
    });
    let decision = |promoted: bool, reason: String| PromotionDecision {
        alias: policy.alias.clone(),
        promoted,
        reason,
        metric: metric.to_owned(),
        candidate,
        champion_version: champion.map(|c| c.version),
        champion: shared.map(|(v, _)| v).or(recorded),
        champion_recorded: recorded,
        compared_on: None,
        challenger: None,
        policy: policy.clone(),
        decided_at: Utc::now(),
    };
    let stale = match (champion, champion_score) {
        (Some(c), Some(s)) if s.version != c.version => format!(
            " (the shared-holdout score is for version {}, but the alias now points at version {})",
            s.version, c.version
        ),
        (None, Some(s)) => format!(
            " (a shared-holdout score was sent for version {}, but nothing holds the alias now)",
            s.version
        ),
        _ => String::new(),
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
            format!("auto: first version to pass the gate, {metric} {value:.4}{on}{stale}"),
        );
    };
    // Past the gate, a candidate that loses to the holder is its challenger.
    let lost = |reason: String, compared_on: &str| PromotionDecision {
        compared_on: Some(compared_on.to_owned()),
        challenger: policy.challenger_alias.clone(),
        ..decision(false, reason)
    };
    let won = |reason: String, compared_on: &str| PromotionDecision {
        compared_on: Some(compared_on.to_owned()),
        ..decision(true, reason)
    };
    let beats = |best: f64| {
        if policy.higher_is_better {
            value >= best + policy.margin
        } else {
            value <= best - policy.margin
        }
    };
    let margin = if policy.margin > 0.0 {
        format!(" by a margin of {}", policy.margin)
    } else {
        String::new()
    };
    let cmp = if policy.higher_is_better { ">=" } else { "<=" };
    if let Some((best, shared_rows)) = shared {
        if let Err(e) = check_metric_bounds(&BTreeMap::from([(metric.to_owned(), best)])) {
            return decision(
                false,
                format!(
                    "not promoted: the shared-holdout score of version {}: {e}",
                    champ.version
                ),
            );
        }
        let was = recorded.map_or(String::new(), |r| format!("; {r:.4} as registered"));
        return if beats(best) {
            won(
                format!(
                    "auto: {metric} {value:.4} {cmp} {best:.4} of version {}{margin} on the same {shared_rows} held-out rows{was}",
                    champ.version
                ),
                "shared holdout",
            )
        } else {
            lost(
                format!(
                    "{metric} {value:.4} does not beat {best:.4} of version {} on the same {shared_rows} held-out rows by the policy's margin {}{was}",
                    champ.version, policy.margin
                ),
                "shared holdout",
            )
        };
    }
    if policy.same_evaluation {
        match (evaluation, champ.evaluation.as_ref()) {
            (Some(a), Some(b)) if a == b => {}
            (None, _) | (_, None) => {
                return decision(
                    false,
                    format!(
                        "cannot compare with version {}: the evaluation data of {} is not recorded; move the alias by hand after comparing on the same data{stale}",
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
                        "evaluated on {what} than version {} ({metric} {value:.4} against {}); compare on the same data before promoting by hand{stale}",
                        champ.version,
                        recorded.map_or("none".into(), |c| format!("{c:.4}"))
                    ),
                );
            }
        }
    }
    let Some(best) = recorded else {
        return decision(
            true,
            format!(
                "auto: version {} has no {metric}; {value:.4}{on} replaces it{stale}",
                champ.version
            ),
        );
    };
    let basis = if policy.same_evaluation {
        "same evaluation"
    } else {
        "recorded values"
    };
    if beats(best) {
        won(
            format!(
                "auto: {metric} {value:.4} {cmp} {best:.4} of version {}{margin} on {}{stale}",
                champ.version,
                if policy.same_evaluation {
                    "the same evaluation data"
                } else {
                    "their recorded evaluations"
                }
            ),
            basis,
        )
    } else {
        lost(
            format!(
                "{metric} {value:.4} does not beat {best:.4} of version {} by the policy's margin {}{stale}",
                champ.version, policy.margin
            ),
            basis,
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
        let d = decide(&p, &acc(1.0, 2.0), Some(&tiny), Some(&champ), None);
        assert!(!d.promoted);
        assert!(d.reason.contains("2 held-out rows"), "{}", d.reason);
        // Even with enough rows, another dataset is not comparable.
        let other = eval(Uuid::now_v7(), "sha256:bb", 100);
        let d = decide(&p, &acc(1.0, 100.0), Some(&other), Some(&champ), None);
        assert!(!d.promoted);
        assert!(d.reason.contains("another dataset"), "{}", d.reason);
        assert_eq!(
            (d.candidate, d.champion, d.champion_version),
            (Some(1.0), Some(0.9855), Some(1))
        );
        // The same data and a better score promotes; a worse one does not.
        let same = eval(penguins, "sha256:aa", 69);
        assert!(decide(&p, &acc(0.99, 69.0), Some(&same), Some(&champ), None).promoted);
        assert!(!decide(&p, &acc(0.97, 69.0), Some(&same), Some(&champ), None).promoted);
        // A margin is respected.
        let strict = PromotionPolicy {
            margin: 0.01,
            ..PromotionPolicy::default()
        };
        assert!(!decide(&strict, &acc(0.99, 69.0), Some(&same), Some(&champ), None).promoted);
    }

    #[test]
    fn the_first_version_must_pass_the_gate() {
        let gated = PromotionPolicy {
            min_value: Some(0.9),
            ..PromotionPolicy::default()
        };
        let e = eval(Uuid::now_v7(), "sha256:aa", 69);
        assert!(!decide(&gated, &acc(0.5, 69.0), Some(&e), None, None).promoted);
        assert!(decide(&gated, &acc(0.95, 69.0), Some(&e), None, None).promoted);
        let d = decide(&gated, &BTreeMap::new(), Some(&e), None, None);
        assert!(!d.promoted && d.reason.contains("declares no test_accuracy"));
        let off = PromotionPolicy {
            auto: false,
            ..PromotionPolicy::default()
        };
        assert!(!decide(&off, &acc(0.95, 69.0), Some(&e), None, None).promoted);
        // Smaller is better: a loss gate.
        let loss = PromotionPolicy {
            metric: "test_log_loss".into(),
            higher_is_better: false,
            min_value: Some(0.5),
            ..PromotionPolicy::default()
        };
        let m = BTreeMap::from([("test_log_loss".into(), 0.2), ("n_test".into(), 69.0)]);
        assert!(decide(&loss, &m, Some(&e), None, None).promoted);
    }

    #[test]
    fn a_champion_scored_on_the_candidates_rows_is_compared_there() {
        let p = PromotionPolicy::default();
        // The champion was registered on other data with a high score.
        let champ = version(3, 0.99, Some(eval(Uuid::now_v7(), "sha256:aa", 69)));
        let fresh = eval(Uuid::now_v7(), "sha256:bb", 80);
        let scored = |v: i32, a: f64| ChampionScore {
            version: v,
            metrics: BTreeMap::from([("test_accuracy".into(), a)]),
            rows: 80,
        };
        // On the candidate's rows the champion does worse: the candidate wins there.
        let d = decide(
            &p,
            &acc(0.95, 80.0),
            Some(&fresh),
            Some(&champ),
            Some(&scored(3, 0.90)),
        );
        assert!(d.promoted, "{}", d.reason);
        assert_eq!(d.compared_on.as_deref(), Some("shared holdout"));
        assert_eq!((d.champion, d.champion_recorded), (Some(0.90), Some(0.99)));
        assert!(d.reason.contains("same 80 held-out rows"), "{}", d.reason);
        assert_eq!(d.challenger, None);
        // Losing there makes it the challenger, with both scores kept.
        let d = decide(
            &p,
            &acc(0.85, 80.0),
            Some(&fresh),
            Some(&champ),
            Some(&scored(3, 0.90)),
        );
        assert!(!d.promoted);
        assert_eq!(d.challenger.as_deref(), Some("challenger"));
        assert_eq!((d.candidate, d.champion), (Some(0.85), Some(0.90)));
        // A tie wins without a margin and loses with one.
        assert!(
            decide(
                &p,
                &acc(0.90, 80.0),
                Some(&fresh),
                Some(&champ),
                Some(&scored(3, 0.90))
            )
            .promoted
        );
        let strict = PromotionPolicy {
            margin: 0.02,
            ..PromotionPolicy::default()
        };
        let d = decide(
            &strict,
            &acc(0.91, 80.0),
            Some(&fresh),
            Some(&champ),
            Some(&scored(3, 0.90)),
        );
        assert!(!d.promoted && d.challenger.is_some(), "{}", d.reason);
        // A score for a version that no longer holds the alias is not used: back to the
        // recorded evaluation, which is not comparable here, and no challenger.
        let d = decide(
            &p,
            &acc(0.95, 80.0),
            Some(&fresh),
            Some(&champ),
            Some(&scored(2, 0.10)),
        );
        assert!(!d.promoted);
        assert!(
            d.reason.contains("another dataset") && d.reason.contains("version 2"),
            "{}",
            d.reason
        );
        assert_eq!(d.challenger, None);
        // The gate still comes first: a failed gate is no challenger.
        let gated = PromotionPolicy {
            min_value: Some(0.9),
            ..PromotionPolicy::default()
        };
        let d = decide(
            &gated,
            &acc(0.85, 80.0),
            Some(&fresh),
            Some(&champ),
            Some(&scored(3, 0.5)),
        );
        assert!(
            !d.promoted && d.challenger.is_none() && d.reason.contains("gate"),
            "{}",
            d.reason
        );
        // No challenger alias configured: none given.
        let none = PromotionPolicy {
            challenger_alias: None,
            ..PromotionPolicy::default()
        };
        let d = decide(
            &none,
            &acc(0.85, 80.0),
            Some(&fresh),
            Some(&champ),
            Some(&scored(3, 0.9)),
        );
        assert!(!d.promoted && d.challenger.is_none());
        // An impossible shared score is refused, not compared.
        let d = decide(
            &p,
            &acc(0.85, 80.0),
            Some(&fresh),
            Some(&champ),
            Some(&scored(3, 7.0)),
        );
        assert!(
            !d.promoted && d.reason.contains("shared-holdout"),
            "{}",
            d.reason
        );
        // A loss: smaller is better on the shared rows too.
        let loss = PromotionPolicy {
            metric: "test_log_loss".into(),
            higher_is_better: false,
            ..PromotionPolicy::default()
        };
        let m = BTreeMap::from([("test_log_loss".into(), 0.2), ("n_test".into(), 80.0)]);
        let ls = ChampionScore {
            version: 3,
            metrics: BTreeMap::from([("test_log_loss".into(), 0.3)]),
            rows: 80,
        };
        assert!(decide(&loss, &m, Some(&fresh), Some(&champ), Some(&ls)).promoted);
    }

    #[test]
    fn a_challenger_alias_must_differ_from_the_alias() {
        let p = PromotionPolicy {
            challenger_alias: Some("production".into()),
            ..PromotionPolicy::default()
        };
        assert!(check_policy(&p).is_err());
        check_policy(&PromotionPolicy::default()).unwrap();
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
