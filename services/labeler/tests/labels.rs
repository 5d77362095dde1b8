//! The labeler against the real Postgres and NATS: predictions arrive as `predictions.logged`
//! events (published here as the predictor would), labels over HTTP, in either order, and each
//! join is announced once on `labels.joined`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use petrel_api::labeler::{LabelStats, LabelsResponse};
use petrel_events::payloads::{LabelsJoined, LoggedPrediction, PredictionsLogged};
use serde_json::{Value, json};

fn prediction(id: &str, class: &str, at: DateTime<Utc>) -> LoggedPrediction {
    LoggedPrediction {
        inference_id: id.to_owned(),
        features: serde_json::Map::from_iter([("bill_length_mm".to_owned(), json!(40.1))]),
        class: class.to_owned(),
        confidence: 0.9,
        probabilities: BTreeMap::from([(class.to_owned(), 0.9)]),
        predicted_at: at,
    }
}

fn logged(version: i32, rows: &[(&str, &str)], at: DateTime<Utc>) -> PredictionsLogged {
    PredictionsLogged {
        model_name: "penguins".into(),
        model_version: version,
        predictions: rows.iter().map(|(id, c)| prediction(id, c, at)).collect(),
    }
}

async fn post_labels(
    http: &reqwest::Client,
    labeler: &Service,
    labels: &[(&str, &str)],
) -> (u16, Value) {
    let labels: Vec<Value> = labels
        .iter()
        .map(|(id, label)| json!({ "inference_id": id, "label": label }))
        .collect();
    send(
        http.post(labeler.url("/v1/labels"))
            .json(&json!({ "labels": labels })),
    )
    .await
}

/// Posts a JSON body as is (for `overwrite`, and for owned ids).
async fn post_body(http: &reqwest::Client, labeler: &Service, body: Value) -> (u16, Value) {
    send(http.post(labeler.url("/v1/labels")).json(&body)).await
}

/// Posts a CSV body; `query` is the query string, such as `?overwrite=true`, or empty.
async fn post_csv(
    http: &reqwest::Client,
    labeler: &Service,
    query: &str,
    csv: String,
) -> (u16, Value) {
    send(
        http.post(labeler.url(&format!("/v1/labels{query}")))
            .header("content-type", "text/csv")
            .body(csv),
    )
    .await
}

async fn stats(http: &reqwest::Client, labeler: &Service) -> LabelStats {
    let (status, body) = send(http.get(labeler.url("/v1/labels/stats"))).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).unwrap()
}

/// `(labels, joined, waiting, unknown, predictions_without_label)`.
fn stat_counts(s: &LabelStats) -> (u64, u64, u64, u64, u64) {
    (
        s.labels,
        s.joined,
        s.waiting,
        s.unknown,
        s.predictions_without_label,
    )
}

/// Every label announced so far, from the stream (where JetStream's deduplication has had
/// its say): how many times each inference id was announced, and with which labels.
async fn announced(bus: &petrel_events::Bus) -> BTreeMap<String, Vec<String>> {
    let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in stored_events::<LabelsJoined>(bus, "labels.joined").await {
        assert!(
            !e.data.labels.is_empty() && e.data.labels.len() <= 256,
            "an event of {} labels",
            e.data.labels.len()
        );
        for l in e.data.labels {
            assert_eq!(l.correct, l.label == l.predicted_class, "{l:?}");
            by_id.entry(l.inference_id).or_default().push(l.label);
        }
    }
    by_id
}

fn counts(body: Value) -> (usize, usize, usize) {
    let r: LabelsResponse = serde_json::from_value(body).unwrap();
    (r.accepted, r.joined, r.duplicates)
}

/// `(inference_id, label, predicted_class, correct)` of each joined label.
fn joined(e: &LabelsJoined) -> Vec<(&str, &str, &str, bool)> {
    e.labels
        .iter()
        .map(|l| {
            (
                l.inference_id.as_str(),
                l.label.as_str(),
                l.predicted_class.as_str(),
                l.correct,
            )
        })
        .collect()
}

#[tokio::test]
async fn joins_labels_to_predictions_logged_before_them() {
    let env = TestEnv::new().await;
    let labeler = start_labeler(&env).await;
    let bus = env.bus().await;
    let http = reqwest::Client::new();
    let mut joins = env.subscribe("labels.joined").await;

    let at = Utc::now();
    bus.publish(&bus.envelope(logged(
        3,
        &[("p1", "Adelie"), ("p2", "Gentoo"), ("p3", "Chinstrap")],
        at,
    )))
    .await
    .unwrap();
    wait_consumer_caught_up(&bus, "labeler").await;

    // Three labels find their predictions at once; z1 has none yet and waits.
    let (status, body) = post_labels(
        &http,
        &labeler,
        &[
            ("p1", "Adelie"),
            ("p2", "Chinstrap"),
            ("p3", "Chinstrap"),
            ("z1", "Gentoo"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(body), (4, 3, 0));
    let e = next_event::<LabelsJoined>(&mut joins).await;
    assert_eq!(
        joined(&e.data),
        [
            ("p1", "Adelie", "Adelie", true),
            ("p2", "Chinstrap", "Gentoo", false),
            ("p3", "Chinstrap", "Chinstrap", true),
        ]
    );
    for l in &e.data.labels {
        assert_eq!(l.model_name, "penguins");
        assert_eq!(l.model_version, 3);
        let drift = (l.predicted_at - at).num_microseconds().unwrap().abs();
        assert!(drift <= 1, "predicted_at {} is not {at}", l.predicted_at);
        assert!(l.labelled_at >= at && l.labelled_at <= Utc::now());
    }

    // The same labels again: a retried call, counted as duplicates, announced no more.
    let (status, body) = post_labels(
        &http,
        &labeler,
        &[("p1", "Adelie"), ("p2", "Chinstrap"), ("p3", "Chinstrap")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(body), (0, 0, 3));

    // A label cannot change.
    let (status, body) = post_labels(&http, &labeler, &[("p1", "Adelie"), ("p2", "Gentoo")]).await;
    assert_eq!(status, 409, "{body}");
    let msg = error_message(&body, "conflict");
    assert!(msg.contains("p2") && msg.contains("Chinstrap"), "{msg}");
    assert!(!msg.contains("p1"), "p1 is not in conflict: {msg}");

    // z1's prediction arrives: the waiting label joins, and that is the next announcement, so
    // neither the duplicates nor the conflict announced anything.
    bus.publish(&bus.envelope(logged(3, &[("z1", "Adelie")], at)))
        .await
        .unwrap();
    let e = next_event::<LabelsJoined>(&mut joins).await;
    assert_eq!(joined(&e.data), [("z1", "Gentoo", "Adelie", false)]);

    // The labelled predictions with their features, for retraining: newest label first.
    let url = |q: &str| labeler.url(&format!("/v1/labels/joined?{q}"));
    let (status, body) = send(http.get(url("model=penguins"))).await;
    assert_eq!(status, 200, "{body}");
    let rows: petrel_api::labeler::JoinedRows = serde_json::from_value(body).unwrap();
    assert_eq!(rows.rows.len(), 4);
    assert_eq!(rows.rows[0].inference_id, "z1");
    assert_eq!(rows.rows[0].label, "Gentoo");
    assert_eq!(rows.rows[0].predicted_class, "Adelie");
    assert_eq!(rows.rows[0].features["bill_length_mm"], json!(40.1));
    let mut ids: Vec<&str> = rows.rows.iter().map(|r| r.inference_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["p1", "p2", "p3", "z1"]);
    let (_, body) = send(http.get(url("model=penguins&limit=1"))).await;
    assert_eq!(body["rows"].as_array().unwrap().len(), 1);
    let (_, body) = send(http.get(url("model=other"))).await;
    assert_eq!(body["rows"], json!([]));
    let (status, body) = send(http.get(url("model=penguins&limit=0"))).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = send(http.get(url("limit=5"))).await;
    assert_eq!(status, 400);

    labeler.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn labels_wait_for_predictions_and_a_redelivered_event_changes_nothing() {
    let env = TestEnv::new().await;
    let labeler = start_labeler(&env).await;
    let bus = env.bus().await;
    let http = reqwest::Client::new();
    let mut joins = env.subscribe("labels.joined").await;

    // Labels first: accepted, nothing to join yet.
    let (status, body) = post_labels(&http, &labeler, &[("q1", "Adelie"), ("q2", "Gentoo")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(body), (2, 0, 0));

    // Then the predictions, delivered twice: once more with the same Nats-Msg-Id (which
    // JetStream drops) and once with a new one (which reaches the labeler again).
    let at = Utc::now();
    let event = bus.envelope(logged(
        1,
        &[("q1", "Adelie"), ("q2", "Chinstrap"), ("q3", "Gentoo")],
        at,
    ));
    bus.publish(&event).await.unwrap();
    bus.publish(&event).await.unwrap();
    bus.publish_raw(
        "predictions.logged",
        uuid::Uuid::now_v7(),
        event.to_bytes().unwrap().into(),
    )
    .await
    .unwrap();

    let e = next_event::<LabelsJoined>(&mut joins).await;
    assert_eq!(
        joined(&e.data),
        [
            ("q1", "Adelie", "Adelie", true),
            ("q2", "Gentoo", "Chinstrap", false),
        ]
    );
    assert!(e.data.labels.iter().all(|l| l.model_version == 1));
    wait_consumer_caught_up(&bus, "labeler").await;
    let stream = bus
        .jetstream()
        .get_stream(bus.namespace().stream_name())
        .await
        .unwrap();
    let info = stream.consumer_info("labeler").await.unwrap();
    assert_eq!(
        info.ack_floor.consumer_sequence, 2,
        "the labeler saw the event twice"
    );

    // q3's label joins at once, and is the next announcement: the second delivery joined
    // nothing again.
    let (status, body) = post_labels(&http, &labeler, &[("q3", "Gentoo")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(body), (1, 1, 0));
    let e = next_event::<LabelsJoined>(&mut joins).await;
    assert_eq!(joined(&e.data), [("q3", "Gentoo", "Gentoo", true)]);

    // Each label was joined exactly once, so all are duplicates now.
    let (status, body) = post_labels(
        &http,
        &labeler,
        &[("q1", "Adelie"), ("q2", "Gentoo"), ("q3", "Gentoo")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(body), (0, 0, 3));

    labeler.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn refuses_bad_requests_with_json_errors() {
    let env = TestEnv::new().await;
    let labeler = start_labeler(&env).await;
    let http = reqwest::Client::new();

    let (status, body) = post_labels(&http, &labeler, &[]).await;
    assert_eq!(status, 422, "{body}");
    assert!(error_message(&body, "invalid").contains("empty"));

    let (status, body) = post_labels(&http, &labeler, &[("r1", "Adelie"), ("r1", "Gentoo")]).await;
    assert_eq!(status, 422, "{body}");
    let msg = error_message(&body, "invalid");
    assert!(
        msg.contains("r1") && msg.contains("two different labels"),
        "{msg}"
    );

    let (status, body) = post_labels(&http, &labeler, &[("", "Adelie")]).await;
    assert_eq!(status, 422, "{body}");
    assert!(error_message(&body, "invalid").contains("inference_id"));

    let (status, body) = post_labels(&http, &labeler, &[("r2", "")]).await;
    assert_eq!(status, 422, "{body}");
    assert!(error_message(&body, "invalid").contains("label"));

    let (status, body) = send(
        http.post(labeler.url("/v1/labels"))
            .header("content-type", "application/json")
            .body("{\"labels\": ["),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    error_message(&body, "invalid_json");

    let (status, body) = send(
        http.post(labeler.url("/v1/labels"))
            .json(&json!({ "labels": [{ "inference_id": "r3" }] })),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(error_message(&body, "invalid_json").contains("label"));

    // A refused request stored nothing: the same id can still be labelled.
    let (status, body) = post_labels(&http, &labeler, &[("r1", "Gentoo")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(body), (1, 0, 0));

    labeler.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_large_join_is_announced_in_events_of_at_most_256_labels() {
    let env = TestEnv::new().await;
    let labeler = start_labeler(&env).await;
    let bus = env.bus().await;
    let http = reqwest::Client::new();
    let mut joins = env.subscribe("labels.joined").await;

    // 600 logged predictions, then one request labelling all of them.
    let n = 600;
    let ids: Vec<String> = (0..n).map(|k| format!("big-{k:04}")).collect();
    let rows: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "Adelie")).collect();
    let at = Utc::now();
    bus.publish(&bus.envelope(logged(2, &rows, at)))
        .await
        .unwrap();
    wait_consumer_caught_up(&bus, "labeler").await;
    let (status, body) = post_labels(&http, &labeler, &rows).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(body), (n, n, 0));

    // Several events, none over 256 labels, and every id in exactly one of them.
    let mut seen: BTreeMap<String, uuid::Uuid> = BTreeMap::new();
    let mut events = 0;
    while seen.len() < n {
        let e = next_event::<LabelsJoined>(&mut joins).await;
        events += 1;
        assert!(
            !e.data.labels.is_empty() && e.data.labels.len() <= 256,
            "an event of {} labels",
            e.data.labels.len()
        );
        for l in &e.data.labels {
            assert_eq!((l.label.as_str(), l.model_version), ("Adelie", 2));
            let before = seen.insert(l.inference_id.clone(), e.id);
            assert!(before.is_none(), "{} announced twice", l.inference_id);
        }
    }
    assert_eq!(events, 3, "600 labels make 3 events of at most 256");
    let expected: Vec<&String> = ids.iter().collect();
    assert_eq!(seen.keys().collect::<Vec<_>>(), expected);

    // Each label's row names the event that announced it.
    let pool = db(&env).await;
    let stored: Vec<(String, Option<uuid::Uuid>)> =
        sqlx::query_as("SELECT inference_id, event_id FROM labeler.joins ORDER BY inference_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), n);
    for (id, event) in &stored {
        assert_eq!(event.as_ref(), seen.get(id), "event id of {id}");
    }
    pool.close().await;

    labeler.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn nul_and_control_characters_are_refused_naming_the_field() {
    let env = TestEnv::new().await;
    let labeler = start_labeler(&env).await;
    let http = reqwest::Client::new();

    let (status, body) = post_labels(&http, &labeler, &[("n1\0", "Adelie")]).await;
    assert_eq!(status, 422, "{body}");
    let msg = error_message(&body, "invalid");
    assert!(msg.contains("labels[0].inference_id"), "{msg}");

    let (status, body) =
        post_labels(&http, &labeler, &[("n1", "Adelie"), ("n2\n", "Adelie")]).await;
    assert_eq!(status, 422, "{body}");
    let msg = error_message(&body, "invalid");
    assert!(msg.contains("labels[1].inference_id"), "{msg}");

    let (status, body) = post_labels(&http, &labeler, &[("n3", "Ade\0lie")]).await;
    assert_eq!(status, 422, "{body}");
    let msg = error_message(&body, "invalid");
    assert!(
        msg.contains("labels[0].label") && msg.contains("NUL"),
        "{msg}"
    );

    // Nothing was stored: the ids can still be labelled.
    let (status, body) = post_labels(&http, &labeler, &[("n1", "Adelie"), ("n3", "Adelie")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(body), (2, 0, 0));

    labeler.stop().await;
    env.cleanup().await;
}

/// A permutation of `0..n` that scatters neighbours (7919 is prime and does not divide the
/// `n`s used here), so racing tasks touch the ids in unrelated orders.
fn scatter(n: usize) -> Vec<usize> {
    (0..n).map(|k| (k * 7919) % n).collect()
}

const CLASSES: [&str; 3] = ["Adelie", "Gentoo", "Chinstrap"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_labels_and_predictions_join_every_id_exactly_once() {
    let env = TestEnv::new().await;
    // Two replicas: label requests go to both, and both pull from the shared durable consumer,
    // so label and prediction transactions for the same ids commit concurrently.
    let replicas = [start_labeler(&env).await, start_labeler(&env).await];
    let bus = env.bus().await;
    let http = reqwest::Client::new();

    let n = 3000;
    let id = |k: usize| format!("race-{k:05}");
    let predicted = |k: usize| CLASSES[k % 3];
    let truth = |k: usize| CLASSES[(k / 2) % 3];
    let order = scatter(n);

    let mut publishes = tokio::task::JoinSet::new();
    for chunk in order.chunks(50) {
        let owned: Vec<(String, &str)> = chunk.iter().map(|&k| (id(k), predicted(k))).collect();
        let bus = bus.clone();
        publishes.spawn(async move {
            let rows: Vec<(&str, &str)> = owned.iter().map(|(i, c)| (i.as_str(), *c)).collect();
            bus.publish(&bus.envelope(logged(1, &rows, Utc::now())))
                .await
                .unwrap();
        });
    }
    // Every id is labelled twice, by two sets of requests cut differently, in different orders.
    let straight: Vec<usize> = (0..n).collect();
    let mut posts = tokio::task::JoinSet::new();
    for (set, (ks, size)) in [(&straight, 100), (&order, 70)].into_iter().enumerate() {
        for (i, chunk) in ks.chunks(size).enumerate() {
            let labels: Vec<Value> = chunk
                .iter()
                .map(|&k| json!({ "inference_id": id(k), "label": truth(k) }))
                .collect();
            let url = replicas[(i + set) % 2].url("/v1/labels");
            let http = http.clone();
            posts.spawn(async move {
                let (status, body) = send(http.post(url).json(&json!({ "labels": labels }))).await;
                assert_eq!(status, 200, "{body}");
                serde_json::from_value::<LabelsResponse>(body).unwrap()
            });
        }
    }
    let (mut accepted, mut duplicates, mut joined_by_requests) = (0, 0, 0);
    while let Some(r) = posts.join_next().await {
        let r = r.unwrap();
        accepted += r.accepted;
        duplicates += r.duplicates;
        joined_by_requests += r.joined;
    }
    while let Some(r) = publishes.join_next().await {
        r.unwrap();
    }
    assert_eq!(
        (accepted, duplicates),
        (n, n),
        "each id is stored once and found once"
    );
    assert!(joined_by_requests <= n);

    // Wait for everything to be joined and published.
    let (labeler, client) = (&replicas[0], &http);
    eventually("every id joined", || async move {
        (stats(client, labeler).await.joined == n as u64).then_some(())
    })
    .await;
    wait_consumer_caught_up(&bus, "labeler").await;
    let pool = db(&env).await;
    eventually("the outbox drained", || {
        let pool = pool.clone();
        async move {
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM labeler.outbox WHERE published_at IS NULL",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (pending == 0).then_some(())
        }
    })
    .await;
    let unannounced: i64 =
        sqlx::query_scalar("SELECT count(*) FROM labeler.joins WHERE event_id IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(unannounced, 0);

    // Exactly once each, with the right label.
    let seen = announced(&bus).await;
    assert_eq!(seen.len(), n, "every id announced");
    for k in 0..n {
        let labels = &seen[&id(k)];
        assert_eq!(labels, &[truth(k)], "{} announced {labels:?}", id(k));
    }
    assert_eq!(
        stat_counts(&stats(&http, labeler).await),
        (n as u64, n as u64, 0, 0, 0)
    );
    pool.close().await;

    for r in replicas {
        r.stop().await;
    }
    env.cleanup().await;
}

#[tokio::test]
async fn an_overwrite_is_announced_again_and_its_retry_is_not() {
    let env = TestEnv::new().await;
    let labeler = start_labeler(&env).await;
    let bus = env.bus().await;
    let http = reqwest::Client::new();
    let mut joins = env.subscribe("labels.joined").await;

    let at = Utc::now();
    bus.publish(&bus.envelope(logged(4, &[("o1", "Adelie"), ("o2", "Gentoo")], at)))
        .await
        .unwrap();
    wait_consumer_caught_up(&bus, "labeler").await;
    let (status, body) = post_labels(&http, &labeler, &[("o1", "Gentoo"), ("o2", "Gentoo")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(body), (2, 2, 0));
    let first = next_event::<LabelsJoined>(&mut joins).await;
    assert_eq!(
        joined(&first.data),
        [
            ("o1", "Gentoo", "Adelie", false),
            ("o2", "Gentoo", "Gentoo", true)
        ]
    );

    // Without overwrite, a different label is refused.
    let (status, body) = post_labels(&http, &labeler, &[("o1", "Adelie")]).await;
    assert_eq!(status, 409, "{body}");
    assert!(error_message(&body, "conflict").contains("overwrite"));

    // With it, o1's new label is stored and announced again; o2 is a duplicate.
    let overwrite = json!({
        "labels": [
            { "inference_id": "o1", "label": "Adelie" },
            { "inference_id": "o2", "label": "Gentoo" },
        ],
        "overwrite": true,
    });
    let (status, body) = post_body(&http, &labeler, overwrite.clone()).await;
    assert_eq!(status, 200, "{body}");
    let r: LabelsResponse = serde_json::from_value(body).unwrap();
    assert_eq!(
        (r.accepted, r.joined, r.duplicates, r.overwritten),
        (1, 1, 1, 1)
    );
    let again = next_event::<LabelsJoined>(&mut joins).await;
    assert_eq!(joined(&again.data), [("o1", "Adelie", "Adelie", true)]);
    assert_ne!(again.id, first.id);
    assert!(
        again.data.labels[0].labelled_at > first.data.labels[0].labelled_at,
        "the newer label is the later one"
    );

    // Retrying the overwrite changes nothing and announces nothing.
    let (status, body) = post_body(&http, &labeler, overwrite).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(body), (0, 0, 2));

    // A waiting label overwritten (through CSV and the query) is announced once, with the new
    // label, when its prediction arrives; and that is the next announcement, so the retry
    // above announced nothing.
    let (status, body) = post_labels(&http, &labeler, &[("o3", "Chinstrap")]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_csv(
        &http,
        &labeler,
        "?overwrite=true",
        "inference_id,label\no3,Gentoo\n".into(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r: LabelsResponse = serde_json::from_value(body).unwrap();
    assert_eq!(
        (r.accepted, r.joined, r.duplicates, r.overwritten),
        (1, 0, 0, 1)
    );
    bus.publish(&bus.envelope(logged(4, &[("o3", "Gentoo")], at)))
        .await
        .unwrap();
    let e = next_event::<LabelsJoined>(&mut joins).await;
    assert_eq!(joined(&e.data), [("o3", "Gentoo", "Gentoo", true)]);

    // The row keeps what the overwrite replaced, and names the latest announcement.
    let pool = db(&env).await;
    let (previous, event): (Option<String>, Option<uuid::Uuid>) = sqlx::query_as(
        "SELECT previous_label, event_id FROM labeler.joins WHERE inference_id = 'o1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(previous.as_deref(), Some("Gentoo"));
    assert_eq!(event, Some(again.id));
    pool.close().await;
    let announced = announced(&bus).await;
    assert_eq!(announced["o1"], ["Gentoo", "Adelie"]);
    assert_eq!(announced["o2"], ["Gentoo"]);
    assert_eq!(announced["o3"], ["Gentoo"]);

    labeler.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conflict_stores_nothing_even_when_requests_race() {
    let env = TestEnv::new().await;
    let labeler = start_labeler(&env).await;
    let http = reqwest::Client::new();

    let (status, body) = post_labels(&http, &labeler, &[("c1", "Adelie")]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_labels(
        &http,
        &labeler,
        &[("c0", "Gentoo"), ("c1", "Gentoo"), ("c2", "Gentoo")],
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let msg = error_message(&body, "conflict");
    assert!(
        msg.contains("\"c1\" is already labelled \"Adelie\""),
        "{msg}"
    );
    assert!(!msg.contains("c0") && !msg.contains("c2"), "{msg}");
    // c0 and c2 were not stored: other labels for them are new, not conflicts.
    assert_eq!(stat_counts(&stats(&http, &labeler).await).0, 1);
    let (status, body) =
        post_labels(&http, &labeler, &[("c0", "Chinstrap"), ("c2", "Adelie")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(body), (2, 0, 0));

    // Eight requests race to label the same 500 ids differently: one wins whole, the others
    // are refused whole, and every id keeps the winner's label.
    let ids: Vec<String> = (0..500).map(|k| format!("cr-{k:03}")).collect();
    let mut posts = tokio::task::JoinSet::new();
    for j in 0..8 {
        let label = format!("L{j}");
        let labels: Vec<Value> = scatter(ids.len())
            .into_iter()
            .map(|k| json!({ "inference_id": ids[k], "label": label }))
            .collect();
        let (http, url) = (http.clone(), labeler.url("/v1/labels"));
        posts.spawn(async move {
            let (status, body) = send(http.post(url).json(&json!({ "labels": labels }))).await;
            (label, status, body)
        });
    }
    let mut winners = Vec::new();
    while let Some(r) = posts.join_next().await {
        let (label, status, body) = r.unwrap();
        match status {
            200 => {
                assert_eq!(counts(body), (500, 0, 0));
                winners.push(label);
            }
            409 => assert!(error_message(&body, "conflict").contains("500 label(s) differ")),
            _ => panic!("{status}: {body}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one request wins: {winners:?}");
    let pool = db(&env).await;
    let stored: Vec<(String, i64)> = sqlx::query_as(
        "SELECT label, count(*) FROM labeler.joins WHERE inference_id LIKE 'cr-%' GROUP BY label",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(stored, [(winners[0].clone(), 500)]);
    pool.close().await;

    labeler.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_csv_bulk_of_20k_labels_is_stored_at_once_and_malformed_csv_names_the_line() {
    let env = TestEnv::new().await;
    let labeler = start_labeler(&env).await;
    let bus = env.bus().await;
    let http = reqwest::Client::new();

    // Predictions for the first half of the ids.
    let n = 20_000;
    let ids: Vec<String> = (0..n).map(|k| format!("bulk-{k:05}")).collect();
    let at = Utc::now();
    for chunk in ids[..n / 2].chunks(1000) {
        let rows: Vec<(&str, &str)> = chunk.iter().map(|i| (i.as_str(), "Adelie")).collect();
        bus.publish(&bus.envelope(logged(1, &rows, at)))
            .await
            .unwrap();
    }
    wait_consumer_caught_up(&bus, "labeler").await;

    let mut csv = String::from("inference_id,label\n");
    for (k, id) in ids.iter().enumerate() {
        csv.push_str(&format!("{id},{}\n", CLASSES[k % 3]));
    }
    let started = std::time::Instant::now();
    let (status, body) = post_csv(&http, &labeler, "", csv.clone()).await;
    assert_eq!(status, 200, "{body}");
    eprintln!("20,000 labels by CSV in {:?}", started.elapsed());
    assert_eq!(counts(body), (n, n / 2, 0));
    assert_eq!(
        stat_counts(&stats(&http, &labeler).await),
        (n as u64, n as u64 / 2, n as u64 / 2, 0, 0)
    );
    let stream = &bus;
    let seen = eventually("10,000 joins published", || async move {
        let seen = announced(stream).await;
        (seen.len() == n / 2).then_some(seen)
    })
    .await;
    for (k, id) in ids[..n / 2].iter().enumerate() {
        assert_eq!(seen[id], [CLASSES[k % 3]], "{id}");
    }
    let (status, body) = post_csv(&http, &labeler, "", csv).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(body), (0, 0, n));

    // Malformed bodies: 4xx naming the line, and nothing stored.
    let cases = [
        (
            "id,label\nm1,Adelie\n",
            400,
            "invalid_csv",
            "line 1: the header",
        ),
        (
            "inference_id,label\nm1,Adelie\nm2,Gentoo\nm3,Adelie,extra\n",
            400,
            "invalid_csv",
            "line 4: has 3 fields",
        ),
        (
            "inference_id,label\nm1,Adelie\n,Gentoo\n",
            422,
            "invalid",
            "line 3: inference_id",
        ),
        (
            "inference_id,label\nm1,Adelie\nm1,Gentoo\n",
            422,
            "invalid",
            "line 3: inference id \"m1\" is given two different labels",
        ),
        ("inference_id,label\n", 422, "invalid", "empty"),
    ];
    for (body, want_status, code, want) in cases {
        let (status, answer) = post_csv(&http, &labeler, "", body.into()).await;
        assert_eq!(status, want_status, "{body:?}: {answer}");
        let msg = error_message(&answer, code);
        assert!(msg.contains(want), "{body:?}: {msg}");
    }
    let (status, answer) = send(
        http.post(labeler.url("/v1/labels"))
            .header("content-type", "text/plain")
            .body("inference_id,label\nm1,Adelie\n"),
    )
    .await;
    assert_eq!(status, 415, "{answer}");
    assert!(error_message(&answer, "unsupported_media_type").contains("text/csv"));
    assert_eq!(stats(&http, &labeler).await.labels, n as u64);

    labeler.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn labels_without_a_prediction_count_as_unknown_after_the_grace_period() {
    let env = TestEnv::new().await;
    let labeler = start_labeler_with(&env, &["--unknown-after-secs", "1"]).await;
    let bus = env.bus().await;
    let http = reqwest::Client::new();
    let mut joins = env.subscribe("labels.joined").await;

    let at = Utc::now();
    bus.publish(&bus.envelope(logged(
        1,
        &[("s1", "Adelie"), ("s2", "Gentoo"), ("s9", "Adelie")],
        at,
    )))
    .await
    .unwrap();
    wait_consumer_caught_up(&bus, "labeler").await;
    let (status, body) = post_labels(
        &http,
        &labeler,
        &[
            ("s1", "Adelie"),
            ("s2", "Adelie"),
            ("u1", "Gentoo"),
            ("u2", "Gentoo"),
            ("u3", "Gentoo"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    next_event::<LabelsJoined>(&mut joins).await;
    let s = stats(&http, &labeler).await;
    assert_eq!(stat_counts(&s), (5, 2, 3, 0, 1));
    assert_eq!(s.unknown_after_secs, 1);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(stat_counts(&stats(&http, &labeler).await), (5, 2, 0, 3, 1));

    // An unknown label still joins if its prediction turns up; a new label waits again.
    bus.publish(&bus.envelope(logged(1, &[("u1", "Gentoo")], at)))
        .await
        .unwrap();
    let e = next_event::<LabelsJoined>(&mut joins).await;
    assert_eq!(joined(&e.data), [("u1", "Gentoo", "Gentoo", true)]);
    let (status, body) = post_labels(&http, &labeler, &[("u4", "Adelie")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stat_counts(&stats(&http, &labeler).await), (6, 3, 1, 2, 1));

    labeler.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn retention_deletes_old_predictions_and_labels_that_waited_too_long() {
    let env = TestEnv::new().await;
    let labeler = start_labeler(&env).await;
    let bus = env.bus().await;
    let http = reqwest::Client::new();

    // Predictions from 200 hours ago (past the default 168) and from now; labels for some.
    let old = Utc::now() - chrono::Duration::hours(200);
    bus.publish(&bus.envelope(logged(
        1,
        &[("old-joined", "Adelie"), ("old-alone", "Gentoo")],
        old,
    )))
    .await
    .unwrap();
    bus.publish(&bus.envelope(logged(
        1,
        &[("new-joined", "Adelie"), ("new-alone", "Gentoo")],
        Utc::now(),
    )))
    .await
    .unwrap();
    wait_consumer_caught_up(&bus, "labeler").await;
    let (status, body) = post_labels(
        &http,
        &labeler,
        &[
            ("old-joined", "Adelie"),
            ("new-joined", "Adelie"),
            ("wait-old", "Gentoo"),
            ("wait-new", "Gentoo"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(body), (4, 2, 0));
    // A label that has waited 200 hours for its prediction.
    let pool = db(&env).await;
    sqlx::query(
        "UPDATE labeler.joins SET labelled_at = now() - interval '200 hours' \
         WHERE inference_id = 'wait-old'",
    )
    .execute(&pool)
    .await
    .unwrap();
    labeler.stop().await;

    // Upkeep runs when the labeler starts, then every minute.
    let labeler = start_labeler(&env).await;
    let left = eventually("retention to run", || {
        let pool = pool.clone();
        async move {
            let ids: Vec<String> =
                sqlx::query_scalar("SELECT inference_id FROM labeler.joins ORDER BY inference_id")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            (ids.len() == 3).then_some(ids)
        }
    })
    .await;
    assert_eq!(left, ["new-alone", "new-joined", "wait-new"]);
    assert_eq!(stat_counts(&stats(&http, &labeler).await), (2, 1, 1, 0, 1));
    pool.close().await;

    labeler.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn rows_of_the_tables_before_joins_carry_over() {
    let env = TestEnv::new().await;
    // The schema as migration 1001 left it, with a joined label, a waiting label and a
    // prediction without one.
    let all = sqlx::migrate!("./migrations");
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            all.iter().filter(|m| m.version <= 1001).cloned().collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    let config = petrel_db::DbConfig {
        url: env.db.clone(),
        schema: "labeler".into(),
        max_connections: 1,
    };
    let pool = petrel_db::connect(&config, &before).await.unwrap();
    let announced_before = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO predictions (inference_id, model_name, model_version, predicted_class, \
         predicted_at) VALUES ('m-joined', 'penguins', 2, 'Adelie', now()), \
         ('m-alone', 'penguins', 2, 'Gentoo', now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO labels (inference_id, label, joined_at, event_id) VALUES \
         ('m-joined', 'Adelie', now(), $1), ('m-waiting', 'Chinstrap', NULL, NULL)",
    )
    .bind(announced_before)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let labeler = start_labeler(&env).await;
    let bus = env.bus().await;
    let http = reqwest::Client::new();
    let mut joins = env.subscribe("labels.joined").await;
    assert_eq!(stat_counts(&stats(&http, &labeler).await), (2, 1, 1, 0, 1));
    let pool = db(&env).await;
    let event: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT event_id FROM labeler.joins WHERE inference_id = 'm-joined'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(event, Some(announced_before));
    let old_tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'labeler' \
         AND table_name IN ('labels', 'predictions')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(old_tables, 0);
    pool.close().await;

    // The joined label is a duplicate; the others join as before.
    let (status, body) = post_labels(
        &http,
        &labeler,
        &[("m-joined", "Adelie"), ("m-alone", "Gentoo")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(body), (1, 1, 1));
    let e = next_event::<LabelsJoined>(&mut joins).await;
    assert_eq!(joined(&e.data), [("m-alone", "Gentoo", "Gentoo", true)]);
    assert_eq!(e.data.labels[0].model_version, 2);
    bus.publish(&bus.envelope(logged(2, &[("m-waiting", "Adelie")], Utc::now())))
        .await
        .unwrap();
    let e = next_event::<LabelsJoined>(&mut joins).await;
    assert_eq!(
        joined(&e.data),
        [("m-waiting", "Chinstrap", "Adelie", false)]
    );

    labeler.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn events_stay_within_256_labels_for_ids_of_mixed_case_and_script() {
    let env = TestEnv::new().await;
    let labeler = start_labeler(&env).await;
    let bus = env.bus().await;
    let http = reqwest::Client::new();

    // Ids that sort differently bytewise and by a locale's rules; two thirds have predictions,
    // so the request's chunks are joined in part.
    let prefixes = ["a", "B", "é", "Z", "_", "ß"];
    let ids: Vec<String> = (0..900)
        .map(|k| format!("{}{k:03}", prefixes[k % prefixes.len()]))
        .collect();
    let predicted: Vec<(&str, &str)> = ids
        .iter()
        .enumerate()
        .filter(|(k, _)| k % 3 != 0)
        .map(|(_, id)| (id.as_str(), "Adelie"))
        .collect();
    bus.publish(&bus.envelope(logged(1, &predicted, Utc::now())))
        .await
        .unwrap();
    wait_consumer_caught_up(&bus, "labeler").await;
    let rows: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "Adelie")).collect();
    let (status, body) = post_labels(&http, &labeler, &rows).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(body), (900, 600, 0));

    // `announced` checks every event holds 1 to 256 labels.
    let stream = &bus;
    let seen = eventually("600 joins published", || async move {
        let seen = announced(stream).await;
        (seen.len() == 600).then_some(seen)
    })
    .await;
    for (id, _) in &predicted {
        assert_eq!(seen[*id], ["Adelie"], "{id}");
    }
    let events = stored_events::<LabelsJoined>(&bus, "labels.joined").await;
    assert!(events.len() >= 3, "{} events", events.len());
    let pool = db(&env).await;
    for e in &events {
        let ids: Vec<&str> = e
            .data
            .labels
            .iter()
            .map(|l| l.inference_id.as_str())
            .collect();
        let marked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM labeler.joins WHERE inference_id = ANY($1) AND event_id = $2",
        )
        .bind(&ids)
        .bind(e.id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            marked as usize,
            ids.len(),
            "rows name the event that announced them"
        );
    }
    pool.close().await;

    labeler.stop().await;
    env.cleanup().await;
}
