//! Alert episodes: a condition (model, version, kind, key) opens an episode once, notifies
//! again only when it worsens or its cool-down has passed, and resolves after a number of
//! clean windows. Conditions decided by statistical tests must hold in several consecutive
//! windows before the episode opens, which keeps their false-alarm rate at about the per-window
//! rate raised to that power.
//!
//! Every notification is an `Alert` event enqueued in the caller's transaction (the outbox
//! publishes it) and a row in `alerts`, so the state, the notification and the report that
//! caused it commit together or not at all.

use std::time::Duration;

use chrono::{DateTime, Utc};
use petrel_events::outbox;
use petrel_events::payloads::{Alert, AlertKind, AlertStatus, Evidence, Severity};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::AppState;

/// One evaluated condition of a window.
#[derive(Clone, Debug)]
pub struct Condition {
    pub kind: AlertKind,
    /// The column (or metric) for kinds kept per column.
    pub key: Option<String>,
    pub firing: bool,
    pub severity: Severity,
    pub observed: f64,
    pub threshold: f64,
    /// What to tell people when it fires.
    pub message: String,
    pub evidence: Vec<Evidence>,
    pub details: serde_json::Value,
}

/// How episodes open, renotify and close.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Consecutive firing windows before a test-based episode (drift, prediction drift, data
    /// quality) opens.
    pub confirm_windows: i32,
    /// Consecutive clean windows that resolve an open episode.
    pub resolve_after: i32,
    /// An open episode that has not worsened notifies again after this long.
    pub cooldown: Duration,
}

impl Policy {
    fn confirm(&self, kind: AlertKind) -> i32 {
        match kind {
            AlertKind::Drift | AlertKind::PredictionDrift | AlertKind::DataQuality => {
                self.confirm_windows
            }
            _ => 1,
        }
    }
}

/// Where a report sits, for the notifications it causes.
#[derive(Clone, Copy, Debug)]
pub struct Window<'a> {
    pub model: &'a str,
    pub version: i32,
    pub report_id: Uuid,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// What one condition does to its episode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Nothing,
    /// Start (or extend) the streak of a pending episode.
    Pending {
        streak: i32,
    },
    /// Drop a pending episode whose streak broke.
    Forget,
    Open {
        streak: i32,
    },
    /// Still open; renotify or not.
    Continue {
        notify: bool,
    },
    /// Open, one more clean window.
    Clean {
        clean: i32,
    },
    Resolve,
}

struct Live {
    id: Uuid,
    state: String,
    streak: i32,
    clean: i32,
    severity: Severity,
    notified_at: Option<DateTime<Utc>>,
}

fn decide(policy: &Policy, c: &Condition, live: Option<&Live>, now: DateTime<Utc>) -> Step {
    let confirm = policy.confirm(c.kind);
    match (live, c.firing) {
        (None, false) => Step::Nothing,
        (None, true) if confirm <= 1 => Step::Open { streak: 1 },
        (None, true) => Step::Pending { streak: 1 },
        (Some(l), true) if l.state == "pending" => {
            if l.streak + 1 >= confirm {
                Step::Open {
                    streak: l.streak + 1,
                }
            } else {
                Step::Pending {
                    streak: l.streak + 1,
                }
            }
        }
        (Some(l), false) if l.state == "pending" => Step::Forget,
        (Some(l), true) => {
            let due = l
                .notified_at
                .is_none_or(|at| (now - at).to_std().unwrap_or_default() >= policy.cooldown);
            Step::Continue {
                notify: c.severity > l.severity || due,
            }
        }
        (Some(l), false) => {
            if l.clean + 1 >= policy.resolve_after {
                Step::Resolve
            } else {
                Step::Clean { clean: l.clean + 1 }
            }
        }
    }
}

fn severity_of(s: &str) -> Severity {
    if s == "critical" {
        Severity::Critical
    } else {
        Severity::Warning
    }
}

/// Applies a window's conditions to their episodes in `tx`; returns the notifications
/// enqueued.
pub async fn apply(
    s: &AppState,
    tx: &mut PgConnection,
    policy: &Policy,
    w: Window<'_>,
    conditions: &[Condition],
) -> Result<Vec<Alert>, sqlx::Error> {
    let now = Utc::now();
    let mut sent = Vec::new();
    for c in conditions {
        let key = c.key.clone().unwrap_or_default();
        let live = sqlx::query(
            "SELECT id, state, streak, clean_windows, severity, notified_at FROM alert_episodes \
             WHERE model_name = $1 AND model_version = $2 AND kind = $3 AND key = $4 AND state <> 'closed' \
             FOR UPDATE",
        )
        .bind(w.model)
        .bind(w.version)
        .bind(c.kind.as_str())
        .bind(&key)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| Live {
            id: r.get("id"),
            state: r.get("state"),
            streak: r.get("streak"),
            clean: r.get("clean_windows"),
            severity: severity_of(r.get::<&str, _>("severity")),
            notified_at: r.get("notified_at"),
        });
        let step = decide(policy, c, live.as_ref(), now);
        let notify = |status: AlertStatus, id: Uuid, message: String| Alert {
            kind: c.kind,
            status,
            episode_id: Some(id),
            severity: c.severity,
            model_name: w.model.to_owned(),
            model_version: w.version,
            key: c.key.clone(),
            report_id: w.report_id,
            window_start: Some(w.start),
            window_end: Some(w.end),
            message,
            observed: c.observed,
            threshold: c.threshold,
            evidence: c.evidence.clone(),
            details: c.details.clone(),
            dataset: None,
        };
        let alert = match (step, &live) {
            (Step::Nothing, _) => None,
            (Step::Pending { streak }, None) | (Step::Open { streak }, None) => {
                let open = matches!(step, Step::Open { .. });
                let id = Uuid::now_v7();
                sqlx::query(
                    "INSERT INTO alert_episodes (id, model_name, model_version, kind, key, state, streak, severity, observed, \
                     notified_at, opened_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
                )
                .bind(id)
                .bind(w.model)
                .bind(w.version)
                .bind(c.kind.as_str())
                .bind(&key)
                .bind(if open { "open" } else { "pending" })
                .bind(streak)
                .bind(c.severity.as_str())
                .bind(c.observed)
                .bind(open.then_some(now))
                .execute(&mut *tx)
                .await?;
                open.then(|| notify(AlertStatus::Opened, id, c.message.clone()))
            }
            (Step::Pending { streak }, Some(l)) => {
                sqlx::query("UPDATE alert_episodes SET streak = $2, severity = $3, observed = $4 WHERE id = $1")
                    .bind(l.id)
                    .bind(streak)
                    .bind(c.severity.as_str())
                    .bind(c.observed)
                    .execute(&mut *tx)
                    .await?;
                None
            }
            (Step::Open { streak }, Some(l)) => {
                sqlx::query(
                    "UPDATE alert_episodes SET state = 'open', streak = $2, severity = $3, observed = $4, \
                     notified_at = $5, opened_at = $5 WHERE id = $1",
                )
                .bind(l.id)
                .bind(streak)
                .bind(c.severity.as_str())
                .bind(c.observed)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                Some(notify(AlertStatus::Opened, l.id, c.message.clone()))
            }
            (Step::Forget, Some(l)) => {
                sqlx::query("DELETE FROM alert_episodes WHERE id = $1")
                    .bind(l.id)
                    .execute(&mut *tx)
                    .await?;
                None
            }
            (Step::Continue { notify: again }, Some(l)) => {
                let severity = c.severity.max(l.severity);
                sqlx::query(
                    "UPDATE alert_episodes SET streak = streak + 1, clean_windows = 0, severity = $2, observed = $3, \
                     notified_at = CASE WHEN $4 THEN $5 ELSE notified_at END WHERE id = $1",
                )
                .bind(l.id)
                .bind(severity.as_str())
                .bind(c.observed)
                .bind(again)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                again.then(|| {
                    notify(
                        AlertStatus::Renotified,
                        l.id,
                        format!("still going on: {}", c.message),
                    )
                })
            }
            (Step::Clean { clean }, Some(l)) => {
                sqlx::query("UPDATE alert_episodes SET clean_windows = $2 WHERE id = $1")
                    .bind(l.id)
                    .bind(clean)
                    .execute(&mut *tx)
                    .await?;
                None
            }
            (Step::Resolve, Some(l)) => {
                sqlx::query(
                    "UPDATE alert_episodes SET state = 'closed', clean_windows = clean_windows + 1, closed_at = $2 WHERE id = $1",
                )
                .bind(l.id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let what = match &c.key {
                    Some(k) => format!("{} ({k})", c.kind),
                    None => c.kind.to_string(),
                };
                let mut a = notify(
                    AlertStatus::Resolved,
                    l.id,
                    format!(
                        "{} v{}: {what} resolved after {} clean windows",
                        w.model, w.version, policy.resolve_after
                    ),
                );
                a.severity = l.severity;
                Some(a)
            }
            // Unreachable combinations (a step about a live episode without one).
            (_, None) => None,
        };
        if let Some(alert) = alert {
            let env = s.infra.bus.envelope(alert.clone());
            sqlx::query(
                "INSERT INTO alerts (id, episode_id, kind, status, severity, model_name, model_version, key, report_id, \
                 message, observed, threshold, evidence) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)",
            )
            .bind(env.id)
            .bind(alert.episode_id)
            .bind(alert.kind.as_str())
            .bind(alert.status.as_str())
            .bind(alert.severity.as_str())
            .bind(&alert.model_name)
            .bind(alert.model_version)
            .bind(&alert.key)
            .bind(alert.report_id)
            .bind(&alert.message)
            .bind(alert.observed)
            .bind(alert.threshold)
            .bind(serde_json::to_value(&alert.evidence).unwrap_or_default())
            .execute(&mut *tx)
            .await?;
            tracing::warn!(
                alert.kind = %alert.kind,
                alert.status = alert.status.as_str(),
                episode.id = ?alert.episode_id,
                report.id = %w.report_id,
                "{}",
                alert.message
            );
            outbox::enqueue(&mut *tx, &env).await?;
            sent.push(alert);
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            confirm_windows: 2,
            resolve_after: 3,
            cooldown: Duration::from_secs(3600),
        }
    }

    fn cond(kind: AlertKind, firing: bool, severity: Severity) -> Condition {
        Condition {
            kind,
            key: None,
            firing,
            severity,
            observed: 0.5,
            threshold: 0.1,
            message: "m".into(),
            evidence: Vec::new(),
            details: serde_json::Value::Null,
        }
    }

    fn live(state: &str, streak: i32, clean: i32, notified_ago_secs: Option<i64>) -> Live {
        Live {
            id: Uuid::nil(),
            state: state.into(),
            streak,
            clean,
            severity: Severity::Warning,
            notified_at: notified_ago_secs.map(|s| Utc::now() - chrono::Duration::seconds(s)),
        }
    }

    #[test]
    fn a_test_based_episode_opens_after_two_windows_and_resolves_after_three_clean() {
        let p = policy();
        let now = Utc::now();
        let fire = cond(AlertKind::Drift, true, Severity::Warning);
        let calm = cond(AlertKind::Drift, false, Severity::Warning);
        assert_eq!(decide(&p, &fire, None, now), Step::Pending { streak: 1 });
        assert_eq!(
            decide(&p, &calm, Some(&live("pending", 1, 0, None)), now),
            Step::Forget
        );
        assert_eq!(
            decide(&p, &fire, Some(&live("pending", 1, 0, None)), now),
            Step::Open { streak: 2 }
        );
        let open = live("open", 2, 0, Some(10));
        assert_eq!(
            decide(&p, &fire, Some(&open), now),
            Step::Continue { notify: false }
        );
        let worse = cond(AlertKind::Drift, true, Severity::Critical);
        assert_eq!(
            decide(&p, &worse, Some(&open), now),
            Step::Continue { notify: true }
        );
        let stale = live("open", 9, 0, Some(4000));
        assert_eq!(
            decide(&p, &fire, Some(&stale), now),
            Step::Continue { notify: true }
        );
        assert_eq!(
            decide(&p, &calm, Some(&open), now),
            Step::Clean { clean: 1 }
        );
        assert_eq!(
            decide(&p, &calm, Some(&live("open", 2, 2, Some(10))), now),
            Step::Resolve
        );
        assert_eq!(decide(&p, &calm, None, now), Step::Nothing);
    }

    #[test]
    fn measured_conditions_open_at_once() {
        let p = policy();
        let fire = cond(AlertKind::Accuracy, true, Severity::Warning);
        assert_eq!(
            decide(&p, &fire, None, Utc::now()),
            Step::Open { streak: 1 }
        );
    }
}
