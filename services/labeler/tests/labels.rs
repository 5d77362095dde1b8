//! The labeler against the real Postgres and NATS: predictions arrive as `predictions.logged`
//! events (published here as the predictor would), labels over HTTP, in either order, and each
//! join is announced once on `labels.joined`.

mod common;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use common::*;
use petrel_api::labeler::LabelsResponse;
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
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&env.db)
        .await
        .unwrap();
    let stored: Vec<(String, Option<uuid::Uuid>)> =
        sqlx::query_as("SELECT inference_id, event_id FROM labeler.labels ORDER BY inference_id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(stored.len(), n);
    for (id, event) in &stored {
        assert_eq!(event.as_ref(), seen.get(id), "event id of {id}");
    }
    drop(conn);

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
