//! The monitor against a real registry, model bundle, Postgres and NATS: logged predictions and
//! joined labels (published here as the predictor and labeler would) become windows of
//! prediction time; drifted, unsure or wrong windows open alert episodes that notify once and
//! resolve.
//!
//! Predictions are stamped in the past, one window per event, so each window is complete when
//! it is stored and closes at the next tick.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use common::*;
use futures::StreamExt;
use petrel_api::monitor::{AlertList, Report, ReportList, RevisionList};
use petrel_events::Envelope;
use petrel_events::payloads::{
    Alert, AlertKind, AlertStatus, DeadLetter, JoinedLabel, LabelsJoined, LoggedPrediction,
    PredictionsLogged,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

type Row = (String, Map<String, Value>);

/// The start of window `k` of a test: window 0 starts twenty minutes ago, on a window
/// boundary (inside the default label grace period of an hour, so quality stays open).
fn window_start(base: DateTime<Utc>, k: i64) -> DateTime<Utc> {
    base + chrono::Duration::seconds(k * WINDOW_SECS)
}

fn base() -> DateTime<Utc> {
    let t = Utc::now() - chrono::Duration::minutes(20);
    let s = t.timestamp() - t.timestamp().rem_euclid(WINDOW_SECS);
    DateTime::from_timestamp(s, 0).unwrap()
}

/// `n` rows drawn at random (with replacement) from the penguins CSV.
fn sampled(rng: &mut StdRng, n: usize) -> Vec<Row> {
    let rows = penguin_rows();
    (0..n)
        .map(|_| rows[rng.random_range(0..rows.len())].clone())
        .collect()
}

/// The same rows with longer bills and flippers and heavier birds than the model ever saw.
fn shifted(rows: &[Row]) -> Vec<Row> {
    rows.iter()
        .map(|(species, f)| {
            let mut f = f.clone();
            for (name, by) in [
                ("bill_length_mm", 15.0),
                ("flipper_length_mm", 25.0),
                ("body_mass_g", 1500.0),
            ] {
                if let Some(x) = f[name].as_f64() {
                    f.insert(name.to_owned(), json!(x + by));
                }
            }
            (species.clone(), f)
        })
        .collect()
}

/// The registered model, to predict as the predictor would.
fn model() -> &'static petrel_ml::LoadedModel {
    static MODEL: std::sync::OnceLock<petrel_ml::LoadedModel> = std::sync::OnceLock::new();
    MODEL.get_or_init(|| bundle().load().unwrap())
}

/// One window's predictions by the real model, 10 ms apart from the window's start.
fn window(tag: &str, start: DateTime<Utc>, rows: &[Row]) -> PredictionsLogged {
    let m = model();
    PredictionsLogged {
        model_name: "penguins".into(),
        model_version: 1,
        predictions: rows
            .iter()
            .enumerate()
            .map(|(k, (_, features))| {
                let p = m.predict(&[m.row_from_json(features).unwrap()]).remove(0);
                LoggedPrediction {
                    inference_id: format!("{tag}-{k}"),
                    features: features.clone(),
                    class: p.class.clone(),
                    confidence: p.confidence,
                    probabilities: p.probabilities.clone(),
                    predicted_at: start + chrono::Duration::milliseconds(k as i64 * 10),
                }
            })
            .collect(),
    }
}

/// The same predictions made with confidence `c` (an unsure model).
fn unsure(mut p: PredictionsLogged, c: f32) -> PredictionsLogged {
    for pr in &mut p.predictions {
        pr.confidence = c;
        pr.probabilities = BTreeMap::from([(pr.class.clone(), c)]);
    }
    p
}

/// Labels for a window's predictions: right where `right(k)`, otherwise another species.
fn labels(p: &PredictionsLogged, right: impl Fn(usize) -> bool) -> LabelsJoined {
    LabelsJoined {
        labels: p
            .predictions
            .iter()
            .enumerate()
            .map(|(k, pr)| {
                let label = if right(k) {
                    pr.class.clone()
                } else {
                    SPECIES
                        .iter()
                        .find(|s| **s != pr.class)
                        .unwrap()
                        .to_string()
                };
                JoinedLabel {
                    inference_id: pr.inference_id.clone(),
                    correct: label == pr.class,
                    label,
                    predicted_class: pr.class.clone(),
                    model_name: "penguins".into(),
                    model_version: 1,
                    predicted_at: pr.predicted_at,
                    labelled_at: Utc::now(),
                }
            })
            .collect(),
    }
}

async fn reports(http: &reqwest::Client, monitor: &Service) -> Vec<Report> {
    let (status, body) = send(http.get(monitor.url("/v1/reports?model=penguins&limit=100"))).await;
    assert_eq!(status, 200, "{body}");
    let mut r = serde_json::from_value::<ReportList>(body).unwrap().reports;
    r.sort_by_key(|r| r.window_start);
    r
}

async fn wait_reports(http: &reqwest::Client, monitor: &Service, n: usize) -> Vec<Report> {
    eventually(&format!("{n} reports"), || async {
        let r = reports(http, monitor).await;
        assert!(r.len() <= n, "more reports than windows: {}", r.len());
        (r.len() == n).then_some(r)
    })
    .await
}

async fn alert_list(http: &reqwest::Client, monitor: &Service, query: &str) -> AlertList {
    let (status, body) = send(http.get(monitor.url(&format!("/v1/alerts?{query}")))).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).unwrap()
}

/// Collects alerts from a subscription until `quiet` passes without one.
async fn drain(sub: &mut async_nats::Subscriber, quiet: std::time::Duration) -> Vec<Alert> {
    let mut out = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(quiet, sub.next()).await {
        out.push(Envelope::<Alert>::from_bytes(&msg.payload).unwrap().data);
    }
    out
}

struct World {
    env: TestEnv,
    registry: Service,
    monitor: Service,
    bus: petrel_events::Bus,
    http: reqwest::Client,
}

async fn world(extra: &[&str]) -> World {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    register_model(&env, &registry, "models/penguins/x/bundle.json").await;
    let monitor = start_monitor_with(&env, &registry, extra).await;
    let bus = env.bus().await;
    World {
        env,
        registry,
        monitor,
        bus,
        http: reqwest::Client::new(),
    }
}

impl World {
    async fn publish<E: petrel_events::Event>(&self, e: E) {
        self.bus.publish(&self.bus.envelope(e)).await.unwrap();
    }

    async fn stop(self) {
        self.monitor.stop().await;
        self.registry.stop().await;
        self.env.cleanup().await;
    }
}

#[tokio::test]
async fn normal_traffic_over_many_windows_raises_no_alert() {
    // Randomly sampled, not systematic: every run draws new windows, and the seed is printed
    // so a failure can be replayed.
    let seed: u64 = std::env::var("PETREL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let w = world(&[]).await;
    let mut alerts = w.env.subscribe("alerts.>").await;
    let base = base();
    const WINDOWS: i64 = 24;
    for k in 0..WINDOWS {
        let rows = sampled(&mut rng, 100);
        w.publish(window(&format!("w{k}"), window_start(base, k), &rows))
            .await;
    }
    let reports = wait_reports(&w.http, &w.monitor, WINDOWS as usize).await;
    let flagged = reports
        .iter()
        .filter(|r| r.drift.iter().any(|d| d.drifted))
        .count();
    println!(
        "observed: {flagged} of {WINDOWS} normal windows had a drifted column (per-window false-positive rate {:.3}); alerts need 2 in a row",
        flagged as f64 / WINDOWS as f64
    );
    for r in &reports {
        assert_eq!(r.n_predictions, 100, "{r:?}");
        assert_eq!(r.detail.sampled, 100);
        let v = r.detail.drift_verdict.as_ref().expect("drift was tested");
        assert_eq!(v.n_columns, 7, "every feature is tested");
        assert!(r.detail.prediction_drift.is_some());
        let est = r.detail.estimated_accuracy.as_ref().expect("an estimate");
        assert!(est.accuracy > 0.85, "{est:?}");
        assert!(
            r.detail.data_quality.iter().all(|q| q.issues.is_empty()),
            "{:?}",
            r.detail.data_quality
        );
    }
    let heard = drain(&mut alerts, std::time::Duration::from_secs(2)).await;
    assert!(heard.is_empty(), "normal traffic raised alerts: {heard:#?}");
    assert!(alert_list(&w.http, &w.monitor, "").await.alerts.is_empty());
    w.stop().await;
}

#[tokio::test]
async fn a_drift_episode_alerts_once_and_resolves_when_traffic_returns_to_normal() {
    let mut rng = StdRng::seed_from_u64(11);
    let w = world(&[]).await;
    let mut alerts = w.env.subscribe("alerts.>").await;
    let base = base();
    // 2 normal windows, 5 drifted, 4 normal.
    for k in 0..11 {
        let rows = sampled(&mut rng, 80);
        let rows = if (2..7).contains(&k) {
            shifted(&rows)
        } else {
            rows
        };
        w.publish(window(&format!("w{k}"), window_start(base, k), &rows))
            .await;
    }
    let reports = wait_reports(&w.http, &w.monitor, 11).await;
    let heard = drain(&mut alerts, std::time::Duration::from_secs(2)).await;
    let drift: Vec<&Alert> = heard
        .iter()
        .filter(|a| a.kind == AlertKind::Drift)
        .collect();
    let statuses: Vec<AlertStatus> = drift.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [AlertStatus::Opened, AlertStatus::Resolved],
        "one drift alert per episode, then its resolution: {heard:#?}"
    );
    let (opened, resolved) = (drift[0], drift[1]);
    assert_eq!(opened.episode_id, resolved.episode_id);
    assert!(opened.episode_id.is_some());
    // Opened on the second drifted window (confirmation), resolved on the second clean one.
    assert_eq!(opened.report_id, reports[3].id);
    assert_eq!(opened.window_start, Some(reports[3].window_start));
    assert_eq!(resolved.report_id, reports[8].id);
    for f in ["bill_length_mm", "flipper_length_mm", "body_mass_g"] {
        assert!(
            opened
                .evidence
                .iter()
                .any(|e| e.column.as_deref() == Some(f)),
            "{f} missing from {:?}",
            opened.evidence
        );
        assert!(opened.message.contains(f), "{}", opened.message);
    }
    for e in &opened.evidence {
        assert!(e.value < e.threshold, "{e:?}");
    }
    // The report lists the condition in every drifted window, notified or not.
    for r in &reports[2..7] {
        assert!(r.alerts.contains(&"drift".to_owned()), "{r:?}");
    }
    // Out-of-range values are a data-quality finding of their own.
    assert!(
        heard
            .iter()
            .any(|a| a.kind == AlertKind::DataQuality && a.status == AlertStatus::Opened),
        "{heard:#?}"
    );

    // GET /v1/alerts: the notifications, newest first, filterable.
    let listed = alert_list(&w.http, &w.monitor, "kind=drift").await.alerts;
    assert_eq!(listed.len(), 2, "{listed:#?}");
    assert_eq!(listed[0].status, "resolved");
    assert_eq!(listed[1].status, "opened");
    assert!(!listed[0].episode_open);
    assert!(
        alert_list(&w.http, &w.monitor, "kind=drift&open=true")
            .await
            .alerts
            .is_empty()
    );
    let (status, body) = send(w.http.get(w.monitor.url("/v1/alerts?kind=nope"))).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_message(&body, "bad_request").contains("kind must be one of"));
    let (status, body) = send(w.http.get(w.monitor.url("/v1/reports?model=%00"))).await;
    assert_eq!(status, 400, "{body}");
    w.stop().await;
}

#[tokio::test]
async fn a_degraded_model_is_flagged_from_confidence_before_labels_and_from_labels_after() {
    let mut rng = StdRng::seed_from_u64(5);
    let w = world(&[]).await;
    let mut alerts = w.env.subscribe("alerts.>").await;
    let base = base();
    // The model turns unsure: training-like inputs, confidence 0.45.
    let unsure = unsure(
        window("u", window_start(base, 0), &sampled(&mut rng, 60)),
        0.45,
    );
    w.publish(unsure.clone()).await;
    let closed = wait_reports(&w.http, &w.monitor, 1).await;
    let est = closed[0].detail.estimated_accuracy.as_ref().unwrap();
    assert!(est.accuracy < 0.8, "{est:?}");
    assert_eq!(est.method, "cbpe");
    assert!(est.calibration_rows > 50);
    let before = drain(&mut alerts, std::time::Duration::from_secs(2)).await;
    let kinds: Vec<AlertKind> = before.iter().map(|a| a.kind).collect();
    assert!(kinds.contains(&AlertKind::EstimatedAccuracy), "{before:#?}");
    assert!(kinds.contains(&AlertKind::Confidence), "{before:#?}");
    assert!(
        !kinds.contains(&AlertKind::Accuracy),
        "no labels yet: {before:#?}"
    );
    assert_eq!(closed[0].n_labels, 0);

    // Labels arrive after the window closed: 15 of 60 right. They revise that window.
    w.publish(labels(&unsure, |k| k % 4 == 0)).await;
    let revised = eventually("the window's quality revision", || async {
        let r = reports(&w.http, &w.monitor).await;
        (r[0].n_labels == 60).then(|| r[0].clone())
    })
    .await;
    assert_eq!(revised.revision, 2);
    assert!(revised.quality_final, "coverage 100% finalises quality");
    let q = revised.detail.quality.as_ref().unwrap();
    assert!((q.accuracy - 0.25).abs() < 1e-12, "{q:?}");
    assert_eq!(revised.accuracy, Some(0.25));
    let support: u64 = q.per_class.values().map(|c| c.support).sum();
    assert_eq!(support, 60);
    assert!(q.log_loss.unwrap() > 1.0);
    assert!(q.reference_accuracy.unwrap() > 0.9);
    let after = drain(&mut alerts, std::time::Duration::from_secs(2)).await;
    let accuracy: Vec<&Alert> = after
        .iter()
        .filter(|a| a.kind == AlertKind::Accuracy)
        .collect();
    assert_eq!(accuracy.len(), 1, "{after:#?}");
    assert_eq!(accuracy[0].report_id, revised.id);
    assert!((accuracy[0].observed - 0.25).abs() < 1e-12);
    let (status, body) = send(
        w.http.get(
            w.monitor
                .url(&format!("/v1/reports/{}/revisions", revised.id)),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let revs: RevisionList = serde_json::from_value(body).unwrap();
    let ns: Vec<i64> = revs.revisions.iter().map(|r| r.n_labels).collect();
    assert_eq!(ns, [0, 60], "the first revision is kept, not overwritten");
    w.stop().await;
}

#[tokio::test]
async fn a_steady_decline_raises_a_trend_alert_before_the_threshold() {
    let mut rng = StdRng::seed_from_u64(8);
    let w = world(&["--trend-windows", "6"]).await;
    let mut alerts = w.env.subscribe("alerts.>").await;
    let base = base();
    // Mean confidence 0.95, 0.91, ... 0.75: falling 0.04 a window, still above 0.6, and
    // projected at 0.51 six windows on.
    for k in 0..6 {
        let c = 0.95 - 0.04 * k as f32;
        let p = unsure(
            window(
                &format!("t{k}"),
                window_start(base, k),
                &sampled(&mut rng, 30),
            ),
            c,
        );
        w.publish(p).await;
    }
    let reports = wait_reports(&w.http, &w.monitor, 6).await;
    let heard = drain(&mut alerts, std::time::Duration::from_secs(2)).await;
    let trend: Vec<&Alert> = heard
        .iter()
        .filter(|a| a.kind == AlertKind::Trend && a.key.as_deref() == Some("mean_confidence"))
        .collect();
    assert_eq!(trend.len(), 1, "{heard:#?}");
    assert_eq!(
        trend[0].report_id, reports[5].id,
        "on the sixth window, the first with a fit"
    );
    assert!(trend[0].observed < 0.0, "the slope: {}", trend[0].observed);
    assert!(
        !heard.iter().any(|a| a.kind == AlertKind::Confidence),
        "the hard threshold was never crossed: {heard:#?}"
    );
    let t = reports[5]
        .detail
        .trends
        .iter()
        .find(|t| t.metric == "mean_confidence")
        .unwrap();
    assert!((t.slope + 0.04).abs() < 1e-6, "{t:?}");
    assert!(t.declining && t.projected < 0.6 && t.last >= 0.6, "{t:?}");
    w.stop().await;
}

#[tokio::test]
async fn labels_join_the_window_of_their_own_predictions() {
    let mut rng = StdRng::seed_from_u64(3);
    let w = world(&[]).await;
    let base = base();
    let first = window("a", window_start(base, 0), &sampled(&mut rng, 40));
    let second = window("b", window_start(base, 1), &sampled(&mut rng, 40));
    // The first window's labels come before its predictions, the second's never.
    w.publish(labels(&first, |k| k != 3)).await;
    w.publish(first).await;
    w.publish(second).await;
    let r = eventually("both windows with the first one's labels", || async {
        let r = reports(&w.http, &w.monitor).await;
        (r.len() == 2 && r[0].n_labels == 40).then_some(r)
    })
    .await;
    assert_eq!(r[0].accuracy, Some(39.0 / 40.0));
    assert_eq!(
        r[1].n_labels, 0,
        "no label leaks into another window: {:?}",
        r[1]
    );
    assert_eq!(r[1].accuracy, None);
    assert_eq!(r[0].window_end, r[1].window_start);
    assert_eq!(
        (r[0].window_end - r[0].window_start).num_seconds(),
        WINDOW_SECS
    );
    w.stop().await;
}

#[tokio::test]
async fn a_newer_label_supersedes_an_older_one_and_a_stale_one_does_not() {
    let mut rng = StdRng::seed_from_u64(4);
    let w = world(&[]).await;
    let p = window("c", window_start(base(), 0), &sampled(&mut rng, 40));
    w.publish(p.clone()).await;
    wait_reports(&w.http, &w.monitor, 1).await;
    // 30 of 40 labelled (not final yet), all wrong.
    let mut first = labels(&p, |_| false);
    first.labels.truncate(30);
    w.publish(first.clone()).await;
    eventually("30 labels", || async {
        let r = reports(&w.http, &w.monitor).await;
        (r[0].n_labels == 30).then_some(())
    })
    .await;
    // The labeler announces corrections of the first 10 with a later time.
    let mut fixed = labels(&p, |_| true);
    fixed.labels.truncate(10);
    for l in &mut fixed.labels {
        l.labelled_at = Utc::now() + chrono::Duration::seconds(5);
    }
    w.publish(fixed).await;
    let r = eventually("the corrections counted", || async {
        let r = reports(&w.http, &w.monitor).await;
        let q = r[0].detail.quality.clone()?;
        ((q.accuracy - 10.0 / 30.0).abs() < 1e-12).then_some(r)
    })
    .await;
    assert_eq!(r[0].n_labels, 30);
    assert!(!r[0].quality_final);
    // A redelivered stale event (the original, older labels) changes nothing.
    w.publish(first).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let r = reports(&w.http, &w.monitor).await;
    let q = r[0].detail.quality.as_ref().unwrap();
    assert!((q.accuracy - 10.0 / 30.0).abs() < 1e-12, "{q:?}");
    w.stop().await;
}

#[tokio::test]
async fn alerts_are_posted_to_the_webhook_signed_and_once() {
    let received: Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let sink = sink.clone();
            async move {
                let mut seen = sink.lock().unwrap();
                seen.push((headers, body));
                // The first delivery fails: the monitor retries.
                if seen.len() == 1 {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut rng = StdRng::seed_from_u64(9);
    let w = world(&["--webhook-url", &url, "--webhook-secret", "s3cret"]).await;
    let base = base();
    w.publish(unsure(
        window("u", window_start(base, 0), &sampled(&mut rng, 40)),
        0.3,
    ))
    .await;
    wait_reports(&w.http, &w.monitor, 1).await;
    let published = eventually("the alerts in the monitor's list", || async {
        let l = alert_list(&w.http, &w.monitor, "").await.alerts;
        (l.len() >= 2).then_some(l)
    })
    .await;
    let delivered = eventually("every alert posted", || async {
        let seen = received.lock().unwrap().clone();
        (seen.len() > published.len()).then_some(seen)
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let delivered_after = received.lock().unwrap().len();
    assert_eq!(
        delivered_after,
        delivered.len(),
        "posted again after success"
    );
    assert_eq!(
        delivered.len(),
        published.len() + 1,
        "one retry, no duplicate"
    );
    let mut ids: Vec<String> = Vec::new();
    for (headers, body) in &delivered {
        let id = headers["x-petrel-event-id"].to_str().unwrap().to_owned();
        let ts: i64 = headers["x-petrel-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let sig = headers["x-petrel-signature"].to_str().unwrap();
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(format!("{ts}.{body}").as_bytes());
        assert_eq!(
            sig,
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        );
        let env = Envelope::<Alert>::from_bytes(body.as_bytes()).unwrap();
        assert_eq!(env.id.to_string(), id);
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    let mut listed: Vec<String> = published.iter().map(|a| a.id.to_string()).collect();
    listed.sort();
    assert_eq!(ids, listed, "every listed alert was delivered");
    w.stop().await;
}

#[tokio::test]
async fn malformed_events_are_set_aside_and_later_ones_processed() {
    let w = world(&[]).await;
    let mut dead = w.env.subscribe("deadletter.>").await;

    // Garbage, then a well-formed event of the wrong type, on the predictions subject; garbage
    // on the labels subject.
    w.bus
        .publish_raw(
            "predictions.logged",
            uuid::Uuid::now_v7(),
            "{\"not\": an event".into(),
        )
        .await
        .unwrap();
    let wrong = w.bus.envelope(LabelsJoined { labels: vec![] });
    w.bus
        .publish_raw(
            "predictions.logged",
            wrong.id,
            wrong.to_bytes().unwrap().into(),
        )
        .await
        .unwrap();
    w.bus
        .publish_raw("labels.joined", uuid::Uuid::now_v7(), "[1, 2]".into())
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
            w.env.subject(&format!("deadletter.{}", letter.consumer))
        );
        letters.push(letter);
    }
    letters.sort_by(|a, b| (&a.consumer, a.stream_sequence).cmp(&(&b.consumer, b.stream_sequence)));
    let [labels_letter, garbage, wrong_type] = &letters[..] else {
        unreachable!()
    };
    assert_eq!(labels_letter.consumer, "monitor-labels");
    assert_eq!(labels_letter.payload, "[1, 2]");
    assert_eq!(garbage.consumer, "monitor-predictions");
    assert!(
        garbage.reason.contains("not a valid event envelope"),
        "{}",
        garbage.reason
    );
    assert_eq!(garbage.delivered, 1, "poison is not retried");
    assert!(
        wrong_type.reason.contains("petrel.predictions.logged.v1")
            && wrong_type.reason.contains("petrel.labels.joined.v1"),
        "{}",
        wrong_type.reason
    );

    // The consumer went on: a good window still becomes a report.
    let mut rng = StdRng::seed_from_u64(1);
    w.publish(window(
        "after",
        window_start(base(), 0),
        &sampled(&mut rng, 50),
    ))
    .await;
    let r = wait_reports(&w.http, &w.monitor, 1).await;
    assert_eq!(r[0].n_predictions, 50);
    w.stop().await;
}

#[tokio::test]
async fn a_backlog_of_windows_closes_in_one_tick() {
    let w = world(&[]).await;
    let mut rng = StdRng::seed_from_u64(2);
    let base = base();
    // Eight windows' worth arrives at once.
    let mut all = window("burst", window_start(base, 0), &[]);
    for k in 0..8 {
        let p = window(
            &format!("b{k}"),
            window_start(base, k),
            &sampled(&mut rng, 30),
        );
        all.predictions.extend(p.predictions);
    }
    w.publish(all).await;
    let closed = wait_reports(&w.http, &w.monitor, 8).await;
    assert!(closed.iter().all(|r| r.n_predictions == 30), "{closed:?}");
    let first = closed.iter().map(|r| r.created_at).min().unwrap();
    let last = closed.iter().map(|r| r.created_at).max().unwrap();
    assert!(
        last - first < chrono::Duration::milliseconds(1500),
        "the backlog took {} ms to close",
        (last - first).num_milliseconds()
    );
    // Too few predictions for tests: the report says so instead of guessing.
    w.publish(window("few", window_start(base, 8), &sampled(&mut rng, 5)))
        .await;
    let r = wait_reports(&w.http, &w.monitor, 9).await;
    assert!(r[8].detail.drift_verdict.is_none());
    assert!(
        r[8].detail
            .skipped
            .as_deref()
            .unwrap()
            .contains("fewer than the 20")
    );
    w.stop().await;
}

#[tokio::test]
async fn reports_of_all_models_are_listed_by_an_index() {
    let w = world(&[]).await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&w.env.db)
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
    let (status, body) = send(w.http.get(w.monitor.url("/v1/reports?limit=5"))).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        serde_json::from_value::<ReportList>(body)
            .unwrap()
            .reports
            .is_empty()
    );
    w.stop().await;
}
