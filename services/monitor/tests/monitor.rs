//! The monitor against a real registry, model bundle, Postgres and NATS: windows of logged
//! predictions and joined labels (published here as the predictor and labeler would) become
//! reports, and drifted, inaccurate or unsure windows raise alerts.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::Utc;
use common::*;
use futures::StreamExt;
use petrel_api::monitor::{Report, ReportList};
use petrel_events::Envelope;
use petrel_events::payloads::{
    Alert, AlertKind, DeadLetter, JoinedLabel, LabelsJoined, LoggedPrediction, PredictionsLogged,
};
use serde_json::{Map, Value, json};

const SHIFTED: [&str; 3] = ["bill_length_mm", "body_mass_g", "flipper_length_mm"];

/// `n` rows spread evenly over the CSV (which is sorted by species), starting at `offset`.
fn spread(n: usize, offset: usize) -> Vec<(String, Map<String, Value>)> {
    let rows = penguin_rows();
    (0..n)
        .map(|k| rows[(k * rows.len() / n + offset) % rows.len()].clone())
        .collect()
}

/// The same rows with longer bills and flippers and heavier birds than the model ever saw.
fn shifted(rows: &[(String, Map<String, Value>)]) -> Vec<(String, Map<String, Value>)> {
    rows.iter()
        .map(|(species, f)| {
            let mut f = f.clone();
            for (name, by) in [
                ("bill_length_mm", 30.0),
                ("flipper_length_mm", 30.0),
                ("body_mass_g", 3000.0),
            ] {
                if let Some(x) = f[name].as_f64() {
                    f.insert(name.to_owned(), json!(x + by));
                }
            }
            (species.clone(), f)
        })
        .collect()
}

fn predictions(
    ids: &[String],
    rows: &[(String, Map<String, Value>)],
    confidence: f32,
) -> PredictionsLogged {
    let now = Utc::now();
    PredictionsLogged {
        model_name: "penguins".into(),
        model_version: 1,
        predictions: ids
            .iter()
            .zip(rows)
            .map(|(id, (species, features))| LoggedPrediction {
                inference_id: id.clone(),
                features: features.clone(),
                class: species.clone(),
                confidence,
                probabilities: BTreeMap::from([(species.clone(), confidence)]),
                predicted_at: now,
            })
            .collect(),
    }
}

/// Labels for the predictions: right where `right(k)`, otherwise another species.
fn labels(
    ids: &[String],
    rows: &[(String, Map<String, Value>)],
    right: impl Fn(usize) -> bool,
) -> LabelsJoined {
    let now = Utc::now();
    LabelsJoined {
        labels: ids
            .iter()
            .zip(rows)
            .enumerate()
            .map(|(k, (id, (species, _)))| {
                let label = if right(k) {
                    species.clone()
                } else {
                    SPECIES.iter().find(|s| *s != species).unwrap().to_string()
                };
                JoinedLabel {
                    inference_id: id.clone(),
                    correct: label == *species,
                    label,
                    predicted_class: species.clone(),
                    model_name: "penguins".into(),
                    model_version: 1,
                    predicted_at: now,
                    labelled_at: now,
                }
            })
            .collect(),
    }
}

async fn reports(http: &reqwest::Client, monitor: &Service) -> Vec<Report> {
    let (status, body) = send(http.get(monitor.url("/v1/reports?model=penguins&limit=100"))).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value::<ReportList>(body).unwrap().reports
}

fn ids(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|k| format!("{tag}-{k}")).collect()
}

#[tokio::test]
async fn windows_become_reports_and_bad_windows_raise_alerts() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    let v1 = register_model(&env, &registry, "models/penguins/x/bundle.json").await;
    assert_eq!(v1.version, 1);
    let monitor = start_monitor(&env, &registry).await;
    let bus = env.bus().await;
    let http = reqwest::Client::new();
    let mut alerts = env.subscribe("alerts.>").await;

    // A calm stretch: training-like rows, confident, 58 of 60 labels right. Labels go first so
    // that they are waiting when the predictions fill a window.
    let calm_ids = ids("calm", 60);
    let calm = spread(60, 0);
    let calm_labels = labels(&calm_ids, &calm, |k| k % 30 != 7);
    bus.publish(&bus.envelope(calm_labels)).await.unwrap();
    bus.publish(&bus.envelope(predictions(&calm_ids, &calm, 0.95)))
        .await
        .unwrap();

    let calm_reports = eventually("reports of the calm window", || async {
        let r = reports(&http, &monitor).await;
        let labelled: i64 = r.iter().map(|r| r.n_labels).sum();
        (labelled == 60 && r.iter().any(|r| r.n_predictions == 50)).then_some(r)
    })
    .await;
    let full = calm_reports.iter().find(|r| r.n_predictions == 50).unwrap();
    assert_eq!(
        (full.model_name.as_str(), full.model_version),
        ("penguins", 1)
    );
    let conf = full.mean_confidence.unwrap();
    assert!((conf - 0.95).abs() < 1e-6, "mean confidence {conf}");
    let tested: BTreeSet<&str> = full.drift.iter().map(|d| d.feature.as_str()).collect();
    let schema = petrel_ml::Schema::penguins();
    let features: BTreeSet<&str> = schema.features.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(tested, features, "every feature is tested: {full:?}");
    assert!(full.drift_share.unwrap() < 0.25, "{full:?}");
    assert!(full.window_start <= full.window_end);
    for r in &calm_reports {
        assert!(r.alerts.is_empty(), "a calm window raised alerts: {r:?}");
        if r.n_labels > 0 {
            let acc = r.accuracy.unwrap();
            assert!((acc - 58.0 / 60.0).abs() < 1e-9, "accuracy {acc}: {r:?}");
        }
    }

    // A bad stretch: shifted measurements, unsure predictions, 10 of 60 labels right.
    let bad_ids = ids("bad", 60);
    let bad = shifted(&spread(60, 3));
    bus.publish(&bus.envelope(labels(&bad_ids, &bad, |k| k % 6 == 0)))
        .await
        .unwrap();
    bus.publish(&bus.envelope(predictions(&bad_ids, &bad, 0.4)))
        .await
        .unwrap();

    let mut seen: HashMap<AlertKind, (String, Alert)> = HashMap::new();
    while seen.len() < 3 {
        let msg = tokio::time::timeout(PATIENCE, alerts.next())
            .await
            .unwrap_or_else(|_| panic!("alerts so far: {:?}", seen.keys()))
            .unwrap();
        let alert = Envelope::<Alert>::from_bytes(&msg.payload).unwrap().data;
        seen.entry(alert.kind)
            .or_insert((msg.subject.to_string(), alert));
    }
    for (kind, (subject, alert)) in &seen {
        assert_eq!(*subject, env.subject(&format!("alerts.{kind}")));
        assert_eq!(
            (alert.model_name.as_str(), alert.model_version),
            ("penguins", 1)
        );
        assert!(!alert.message.is_empty());
        let (status, body) =
            send(http.get(monitor.url(&format!("/v1/reports/{}", alert.report_id)))).await;
        assert_eq!(status, 200, "{body}");
        let report: Report = serde_json::from_value(body).unwrap();
        assert_eq!(report.id, alert.report_id);
        assert!(
            report.alerts.contains(&kind.as_str().to_owned()),
            "report {report:?} does not list {kind}"
        );
        match kind {
            AlertKind::Drift => {
                assert_eq!(Some(alert.observed), report.drift_share);
                assert!(alert.observed >= alert.threshold);
                let drifted: BTreeSet<&str> = report
                    .drift
                    .iter()
                    .filter(|d| d.drifted)
                    .map(|d| d.feature.as_str())
                    .collect();
                let named: BTreeSet<&str> = alert.details["drifted_features"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(String::as_str)
                    .collect();
                assert_eq!(named, drifted);
                for f in SHIFTED {
                    assert!(drifted.contains(f), "{f} not found drifted: {report:?}");
                    assert!(alert.message.contains(f), "{}", alert.message);
                }
            }
            AlertKind::Accuracy => {
                assert_eq!(Some(alert.observed), report.accuracy);
                assert_eq!(report.n_labels, 60);
                assert!((alert.observed - 10.0 / 60.0).abs() < 1e-9, "{alert:?}");
                assert_eq!(alert.threshold, 0.8);
            }
            AlertKind::Confidence => {
                assert_eq!(Some(alert.observed), report.mean_confidence);
                assert!(alert.observed < alert.threshold && alert.threshold == 0.6);
            }
        }
    }

    // Every prediction ends up in exactly one report: the 10 calm rows left over join the bad
    // ones, and the last 20 close on age.
    eventually("every prediction to be reported", || async {
        let r = reports(&http, &monitor).await;
        let total: i64 = r.iter().map(|r| r.n_predictions).sum();
        assert!(total <= 120, "predictions counted twice: {r:?}");
        (total == 120).then_some(())
    })
    .await;

    let (status, body) =
        send(http.get(monitor.url(&format!("/v1/reports/{}", uuid::Uuid::now_v7())))).await;
    assert_eq!(status, 404, "{body}");
    error_message(&body, "not_found");
    let (status, body) = send(http.get(monitor.url("/v1/reports/not-a-uuid"))).await;
    assert_eq!(status, 400, "{body}");
    error_message(&body, "invalid_path");

    monitor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn malformed_events_are_set_aside_and_later_ones_processed() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    register_model(&env, &registry, "models/penguins/x/bundle.json").await;
    let monitor = start_monitor(&env, &registry).await;
    let bus = env.bus().await;
    let http = reqwest::Client::new();
    let mut dead = env.subscribe("deadletter.>").await;

    // Garbage, then a well-formed event of the wrong type, on the predictions subject; garbage
    // on the labels subject.
    bus.publish_raw(
        "predictions.logged",
        uuid::Uuid::now_v7(),
        "{\"not\": an event".into(),
    )
    .await
    .unwrap();
    let wrong = bus.envelope(LabelsJoined { labels: vec![] });
    bus.publish_raw(
        "predictions.logged",
        wrong.id,
        wrong.to_bytes().unwrap().into(),
    )
    .await
    .unwrap();
    bus.publish_raw("labels.joined", uuid::Uuid::now_v7(), "[1, 2]".into())
        .await
        .unwrap();

    let mut letters = Vec::new();
    for _ in 0..3 {
        let msg = tokio::time::timeout(PATIENCE, dead.next())
            .await
            .expect("no dead letter")
            .unwrap();
        let letter = Envelope::<DeadLetter>::from_bytes(&msg.payload)
            .unwrap()
            .data;
        assert_eq!(
            msg.subject.as_str(),
            env.subject(&format!("deadletter.{}", letter.consumer))
        );
        letters.push(letter);
    }
    letters.sort_by(|a, b| (&a.consumer, a.stream_sequence).cmp(&(&b.consumer, b.stream_sequence)));
    let [labels_letter, garbage, wrong_type] = &letters[..] else {
        unreachable!()
    };
    assert_eq!(labels_letter.consumer, "monitor-labels");
    assert_eq!(labels_letter.subject, env.subject("labels.joined"));
    assert_eq!(labels_letter.payload, "[1, 2]");
    assert_eq!(garbage.consumer, "monitor-predictions");
    assert_eq!(garbage.subject, env.subject("predictions.logged"));
    assert_eq!(garbage.payload, "{\"not\": an event");
    assert!(
        garbage.reason.contains("not a valid event envelope"),
        "{}",
        garbage.reason
    );
    assert_eq!(garbage.delivered, 1, "poison is not retried");
    assert_eq!(wrong_type.consumer, "monitor-predictions");
    assert!(
        wrong_type.reason.contains("petrel.predictions.logged.v1")
            && wrong_type.reason.contains("petrel.labels.joined.v1"),
        "{}",
        wrong_type.reason
    );

    // The consumer went on: a good window still becomes a report.
    let good_ids = ids("after", 50);
    bus.publish(&bus.envelope(predictions(&good_ids, &spread(50, 1), 0.9)))
        .await
        .unwrap();
    let report = eventually("a report after the poison", || async {
        reports(&http, &monitor)
            .await
            .into_iter()
            .find(|r| r.n_predictions == 50)
    })
    .await;
    assert!(report.alerts.is_empty(), "{report:?}");

    monitor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_backlog_of_full_windows_closes_in_one_tick() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    register_model(&env, &registry, "models/penguins/x/bundle.json").await;
    let monitor = start_monitor(&env, &registry).await;
    let bus = env.bus().await;
    let http = reqwest::Client::new();

    // Five windows' worth (the window size is 50) arrive at once, in one event, so they are
    // stored in one transaction and the next tick sees them all.
    let backlog = ids("burst", 250);
    bus.publish(&bus.envelope(predictions(&backlog, &spread(250, 0), 0.9)))
        .await
        .unwrap();
    let closed = eventually("five reports of the backlog", || async {
        let r = reports(&http, &monitor).await;
        (r.len() >= 5).then_some(r)
    })
    .await;
    assert_eq!(closed.len(), 5, "{closed:?}");
    assert!(closed.iter().all(|r| r.n_predictions == 50), "{closed:?}");
    // One window a second would take four seconds from the first report to the last.
    let first = closed.iter().map(|r| r.created_at).min().unwrap();
    let last = closed.iter().map(|r| r.created_at).max().unwrap();
    assert!(
        last - first < chrono::Duration::milliseconds(1500),
        "the backlog took {} ms to close",
        (last - first).num_milliseconds()
    );

    monitor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_window_takes_at_most_ten_windows_of_labels() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    register_model(&env, &registry, "models/penguins/x/bundle.json").await;
    let monitor = start_monitor(&env, &registry).await;
    let bus = env.bus().await;
    let http = reqwest::Client::new();

    // 600 labels and no predictions: windows close on age, each with at most 10 × 50 labels.
    let backlog = ids("late", 600);
    bus.publish(&bus.envelope(labels(&backlog, &spread(600, 0), |_| true)))
        .await
        .unwrap();
    let closed = eventually("every label to be reported", || async {
        let r = reports(&http, &monitor).await;
        let labelled: i64 = r.iter().map(|r| r.n_labels).sum();
        assert!(labelled <= 600, "labels counted twice: {r:?}");
        (labelled == 600).then_some(r)
    })
    .await;
    let mut sizes: Vec<i64> = closed.iter().map(|r| r.n_labels).collect();
    sizes.sort();
    assert_eq!(sizes, [100, 500], "{closed:?}");
    assert!(
        closed
            .iter()
            .all(|r| r.n_predictions == 0 && r.accuracy == Some(1.0))
    );

    monitor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn reports_of_all_models_are_listed_by_an_index() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    let monitor = start_monitor(&env, &registry).await;
    let http = reqwest::Client::new();

    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&env.db)
        .await
        .unwrap();
    let def: Option<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'monitor' AND indexname = 'reports_by_time'",
    )
    .fetch_optional(&mut conn)
    .await
    .unwrap();
    let def = def.expect("an index on reports by time");
    assert!(def.contains("(created_at DESC)"), "{def}");
    drop(conn);

    let (status, body) = send(http.get(monitor.url("/v1/reports?limit=5"))).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        serde_json::from_value::<ReportList>(body)
            .unwrap()
            .reports
            .is_empty()
    );

    monitor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}
