//! The predictor against a real registry, Postgres and NATS: loading the production model,
//! answering and logging predictions, refusing bad input, hot reload and shutdown.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use petrel_api::predictor::{PredictResponse, ServedModel};
use petrel_events::payloads::PredictionsLogged;
use serde_json::{Value, json};

/// Waits until the predictor serves `version` of penguins.
async fn wait_for_version(
    http: &reqwest::Client,
    predictor: &Service,
    version: i32,
) -> ServedModel {
    eventually(
        &format!("the predictor to serve version {version}"),
        || async {
            let resp = http.get(predictor.url("/v1/model")).send().await.ok()?;
            if resp.status() != 200 {
                return None;
            }
            let served: ServedModel = resp.json().await.ok()?;
            (served.model_version == version).then_some(served)
        },
    )
    .await
}

async fn predict(http: &reqwest::Client, predictor: &Service, body: &Value) -> (u16, Value) {
    send(http.post(predictor.url("/v1/predict")).json(body)).await
}

fn rows_request(rows: &[(Option<&str>, serde_json::Map<String, Value>)]) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|(id, features)| match id {
            Some(id) => json!({ "inference_id": id, "features": features }),
            None => json!({ "features": features }),
        })
        .collect();
    json!({ "rows": rows })
}

#[tokio::test]
async fn serves_the_production_model_and_logs_each_prediction_once() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    let predictor = start_predictor(&env, &registry).await;
    let http = reqwest::Client::new();
    let penguins = penguin_rows();
    let (_, first) = &penguins[0];

    // Nothing registered yet: a JSON 503, for predictions and for the model.
    let (status, body) = predict(&http, &predictor, &rows_request(&[(None, first.clone())])).await;
    assert_eq!(status, 503, "{body}");
    assert!(error_message(&body, "unavailable").contains("no model"));
    let (status, body) = send(http.get(predictor.url("/v1/model"))).await;
    assert_eq!(status, 503, "{body}");
    error_message(&body, "unavailable");

    // Registering v1 promotes it; the predictor picks it up by itself.
    let v1 = register_model(&env, &registry, "models/penguins/v1/bundle.json").await;
    assert_eq!(v1.version, 1);
    assert!(v1.aliases.contains(&"production".to_owned()), "{v1:?}");
    let served = wait_for_version(&http, &predictor, 1).await;
    assert_eq!(served.model_name, "penguins");
    assert_eq!(served.artifact_uri, v1.artifact_uri);
    assert_eq!(served.class_names, SPECIES);
    assert_eq!(served.schema, petrel_ml::Schema::penguins());

    let mut logged = env.subscribe("predictions.logged").await;

    // Five rows, one of each kind of penguin and two chosen at random, three with the caller's
    // ids and two without.
    let picks = [0usize, 160, 250, 100, 300];
    let ids = [Some("req-a"), None, Some("req-b"), None, Some("req-c")];
    let rows: Vec<_> = picks
        .iter()
        .zip(ids)
        .map(|(&i, id)| (id, penguins[i].1.clone()))
        .collect();
    let (status, body) = predict(&http, &predictor, &rows_request(&rows)).await;
    assert_eq!(status, 200, "{body}");
    let resp: PredictResponse = serde_json::from_value(body).unwrap();
    assert_eq!(resp.predictions.len(), 5);
    let mut right = 0;
    for ((p, id), &i) in resp.predictions.iter().zip(ids).zip(&picks) {
        assert!(SPECIES.contains(&p.class.as_str()), "{p:?}");
        assert_eq!(p.model_name, "penguins");
        assert_eq!(p.model_version, 1);
        let keys: Vec<&str> = p.probabilities.keys().map(String::as_str).collect();
        assert_eq!(keys, SPECIES);
        let sum: f32 = p.probabilities.values().sum();
        assert!(
            (sum - 1.0).abs() < 1e-3,
            "probabilities sum to {sum}: {p:?}"
        );
        assert_eq!(p.confidence, p.probabilities[&p.class], "{p:?}");
        let best = p.probabilities.values().cloned().fold(0.0f32, f32::max);
        assert_eq!(p.confidence, best, "{p:?}");
        match id {
            Some(id) => assert_eq!(p.inference_id, id),
            None => assert!(!p.inference_id.is_empty()),
        }
        right += usize::from(p.class == penguins[i].0);
    }
    assert!(
        right >= 4,
        "a ~98% accurate model got {right} of 5: {resp:?}"
    );
    let generated: BTreeSet<&str> = resp
        .predictions
        .iter()
        .map(|p| p.inference_id.as_str())
        .collect();
    assert_eq!(generated.len(), 5, "inference ids must be unique");

    // One event for the request, carrying the five predictions as answered.
    let env1 = next_event::<PredictionsLogged>(&mut logged).await;
    assert_eq!(env1.data.model_name, "penguins");
    assert_eq!(env1.data.model_version, 1);
    assert_eq!(env1.data.predictions.len(), 5);
    for (lp, (p, &i)) in env1
        .data
        .predictions
        .iter()
        .zip(resp.predictions.iter().zip(&picks))
    {
        assert_eq!(lp.inference_id, p.inference_id);
        assert_eq!(lp.class, p.class);
        assert_eq!(lp.confidence, p.confidence);
        assert_eq!(lp.probabilities, p.probabilities);
        assert_eq!(lp.features, penguins[i].1, "the row as received");
    }

    // Sending req-a again with a new id: only the new one is announced.
    let again = rows_request(&[
        (Some("req-a"), penguins[0].1.clone()),
        (Some("req-d"), penguins[1].1.clone()),
    ]);
    let (status, body) = predict(&http, &predictor, &again).await;
    assert_eq!(status, 200, "{body}");
    let env2 = next_event::<PredictionsLogged>(&mut logged).await;
    let ids2: Vec<&str> = env2
        .data
        .predictions
        .iter()
        .map(|p| p.inference_id.as_str())
        .collect();
    assert_eq!(ids2, ["req-d"]);

    // A request made only of known ids announces nothing: the next event is the sentinel's.
    let (status, _) = predict(
        &http,
        &predictor,
        &rows_request(&[(Some("req-b"), penguins[2].1.clone())]),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = predict(
        &http,
        &predictor,
        &rows_request(&[(Some("sentinel"), penguins[3].1.clone())]),
    )
    .await;
    assert_eq!(status, 200);
    let env3 = next_event::<PredictionsLogged>(&mut logged).await;
    let ids3: Vec<&str> = env3
        .data
        .predictions
        .iter()
        .map(|p| p.inference_id.as_str())
        .collect();
    assert_eq!(ids3, ["sentinel"]);
    assert_ne!(env1.id, env2.id);

    // A prediction answered just before shutdown is still announced: the outbox drains on the
    // way out.
    let (status, _) = predict(
        &http,
        &predictor,
        &rows_request(&[(Some("last-one"), penguins[4].1.clone())]),
    )
    .await;
    assert_eq!(status, 200);
    predictor.stop().await;
    let env4 = next_event::<PredictionsLogged>(&mut logged).await;
    assert_eq!(env4.data.predictions[0].inference_id, "last-one");
    registry.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn refuses_bad_input_with_json_errors_and_logs_nothing() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    register_model(&env, &registry, "models/penguins/x/bundle.json").await;
    let predictor = start_predictor(&env, &registry).await;
    let http = reqwest::Client::new();
    wait_for_version(&http, &predictor, 1).await;
    let mut logged = env.subscribe("predictions.logged").await;
    let good = penguin_rows()[0].1.clone();

    let mut typo = good.clone();
    typo.insert("bill_lenght_mm".into(), json!(40.1));
    let (status, body) = predict(&http, &predictor, &rows_request(&[(None, typo)])).await;
    assert_eq!(status, 422, "{body}");
    let msg = error_message(&body, "invalid");
    assert!(
        msg.contains("bill_lenght_mm") && msg.contains("rows[0]"),
        "{msg}"
    );

    let mut wrong_type = good.clone();
    wrong_type.insert("bill_length_mm".into(), json!("abc"));
    let (status, body) = predict(
        &http,
        &predictor,
        &rows_request(&[(None, good.clone()), (None, wrong_type)]),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let msg = error_message(&body, "invalid");
    assert!(
        msg.contains("bill_length_mm") && msg.contains("rows[1]"),
        "{msg}"
    );

    let mut wrong_kind = good.clone();
    wrong_kind.insert("island".into(), json!(true));
    let (status, body) = predict(&http, &predictor, &rows_request(&[(None, wrong_kind)])).await;
    assert_eq!(status, 422, "{body}");
    assert!(error_message(&body, "invalid").contains("island"));

    let (status, body) = predict(&http, &predictor, &json!({ "rows": [] })).await;
    assert_eq!(status, 422, "{body}");
    assert!(error_message(&body, "invalid").contains("empty"));

    let dup = rows_request(&[(Some("same"), good.clone()), (Some("same"), good.clone())]);
    let (status, body) = predict(&http, &predictor, &dup).await;
    assert_eq!(status, 422, "{body}");
    let msg = error_message(&body, "invalid");
    assert!(msg.contains("same") && msg.contains("twice"), "{msg}");

    let (status, body) = predict(
        &http,
        &predictor,
        &rows_request(&[(Some(""), good.clone())]),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(error_message(&body, "invalid").contains("inference_id"));

    // Not JSON at all, JSON of the wrong shape, and no content type.
    let (status, body) = send(
        http.post(predictor.url("/v1/predict"))
            .header("content-type", "application/json")
            .body("{\"rows\": [ {"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    error_message(&body, "invalid_json");
    let (status, body) = predict(&http, &predictor, &json!({ "rows": "none" })).await;
    assert_eq!(status, 422, "{body}");
    error_message(&body, "invalid_json");
    let (status, body) = send(http.post(predictor.url("/v1/predict")).body("{}")).await;
    assert_eq!(status, 415, "{body}");
    error_message(&body, "unsupported_media_type");
    // Past the body limit (16 MiB): a JSON 413 that says what to do.
    let (status, body) = send(
        http.post(predictor.url("/v1/predict"))
            .header("content-type", "application/json")
            .body(vec![b' '; (16 << 20) + 1]),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(error_message(&body, "payload_too_large").contains("fewer rows"));

    // Missing values are fine: they are imputed.
    let mut sparse = good.clone();
    sparse.insert("sex".into(), Value::Null);
    sparse.remove("year");
    sparse.insert("species".into(), json!("Adelie"));
    let (status, body) = predict(&http, &predictor, &rows_request(&[(Some("ok"), sparse)])).await;
    assert_eq!(status, 200, "{body}");

    // None of the refused requests was logged: the first event is the good request's.
    let first = next_event::<PredictionsLogged>(&mut logged).await;
    assert_eq!(first.data.predictions.len(), 1);
    assert_eq!(first.data.predictions[0].inference_id, "ok");

    predictor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn refuses_rows_it_cannot_score_or_store_without_failing_others() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    register_model(&env, &registry, "models/penguins/x/bundle.json").await;
    let predictor = start_predictor(&env, &registry).await;
    let http = reqwest::Client::new();
    wait_for_version(&http, &predictor, 1).await;
    let mut logged = env.subscribe("predictions.logged").await;
    let good = penguin_rows()[0].1.clone();

    // Finite, but far beyond anything the model can score: its probabilities would be NaN,
    // announced as null.
    for (i, mass) in [
        (1usize, json!(1e300)),
        (2, json!(-1.7e308)),
        (0, json!("1e300")),
    ] {
        let mut huge = good.clone();
        huge.insert("body_mass_g".into(), mass.clone());
        let mut rows = vec![(None, good.clone()), (None, good.clone())];
        rows.insert(i, (None, huge));
        let (status, body) = predict(&http, &predictor, &rows_request(&rows)).await;
        assert_eq!(status, 422, "{mass}: {body}");
        let msg = error_message(&body, "invalid");
        assert_eq!(
            msg,
            format!("rows[{i}]: feature values are outside the range this model can score")
        );
    }

    // A NUL cannot be stored in jsonb: in a feature or in the ignored target, it is refused up
    // front, naming the row and the column, rather than failing the transaction it shares.
    let mut nul_feature = good.clone();
    nul_feature.insert("island".into(), json!("Torg\u{0}ersen"));
    let mut nul_target = good.clone();
    nul_target.insert("species".into(), json!("Ade\u{0}lie"));
    let mut nul_nested = good.clone();
    nul_nested.insert("species".into(), json!({ "name": ["Adelie", "\u{0}"] }));
    for (bad, column) in [
        (nul_feature, "island"),
        (nul_target, "species"),
        (nul_nested, "species"),
    ] {
        let body = rows_request(&[(None, good.clone()), (None, bad)]);
        let (status, body) = predict(&http, &predictor, &body).await;
        assert_eq!(status, 422, "{body}");
        let msg = error_message(&body, "invalid");
        assert!(
            msg.starts_with("rows[1]: ") && msg.contains(column) && msg.contains("NUL"),
            "{msg}"
        );
    }

    // Requests sent alongside refused ones are answered and logged as usual.
    let mut calls = Vec::new();
    for i in 0..20 {
        let body = if i % 2 == 0 {
            rows_request(&[(Some(&format!("fine-{i}")), good.clone())])
        } else {
            let mut bad = good.clone();
            bad.insert("sex".into(), json!("ma\u{0}le"));
            rows_request(&[(Some(&format!("bad-{i}")), bad)])
        };
        let (http, url) = (http.clone(), predictor.url("/v1/predict"));
        calls.push(tokio::spawn(async move {
            http.post(url).json(&body).send().await.unwrap().status()
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let expected = if i % 2 == 0 { 200 } else { 422 };
        assert_eq!(call.await.unwrap(), expected, "request {i}");
    }
    let (status, body) = predict(
        &http,
        &predictor,
        &rows_request(&[(Some("sentinel"), good.clone())]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (ids, _, _) = announced_until(&mut logged, "sentinel").await;
    let ids: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let mut expected: BTreeSet<String> = (0..20).step_by(2).map(|i| format!("fine-{i}")).collect();
    expected.insert("sentinel".into());
    assert_eq!(
        ids,
        expected.iter().map(String::as_str).collect(),
        "only the good rows are logged"
    );

    predictor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn switches_to_a_new_version_without_failing_a_request() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    register_model(&env, &registry, "models/penguins/v1/bundle.json").await;
    let predictor = start_predictor(&env, &registry).await;
    let http = reqwest::Client::new();
    wait_for_version(&http, &predictor, 1).await;
    // Every answered row, with the version that answered it.
    let answered = Arc::new(std::sync::Mutex::new(Vec::<(String, i32)>::new()));

    // Clients hammer the predictor while v2 is registered and loaded.
    let stop = Arc::new(AtomicBool::new(false));
    let rows = penguin_rows();
    let body = rows_request(&[(None, rows[10].1.clone()), (None, rows[200].1.clone())]);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (http, url, body, stop, answered) = (
            http.clone(),
            predictor.url("/v1/predict"),
            body.clone(),
            stop.clone(),
            answered.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut answers: Vec<Result<i32, String>> = Vec::new();
            // Until told to stop, and then until this client has been answered by v2.
            while !(stop.load(Ordering::Relaxed) && matches!(answers.last(), Some(Ok(2)))) {
                assert!(answers.len() < 100_000, "never answered by v2");
                let resp = match http.post(&url).json(&body).send().await {
                    Ok(r) => r,
                    Err(e) => {
                        answers.push(Err(e.to_string()));
                        continue;
                    }
                };
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                if status != 200 {
                    answers.push(Err(format!("{status}: {text}")));
                    continue;
                }
                let r: PredictResponse = serde_json::from_str(&text).unwrap();
                let versions: BTreeSet<i32> =
                    r.predictions.iter().map(|p| p.model_version).collect();
                assert_eq!(versions.len(), 1, "one request, one version: {r:?}");
                answers.push(Ok(r.predictions[0].model_version));
                answered.lock().unwrap().extend(
                    r.predictions
                        .iter()
                        .map(|p| (p.inference_id.clone(), p.model_version)),
                );
            }
            answers
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v2 = register_model(&env, &registry, "models/penguins/v2/bundle.json").await;
    assert_eq!(v2.version, 2);
    assert!(v2.aliases.contains(&"production".to_owned()), "{v2:?}");
    // The reconcile period is 30 s, so a switch within the patience is `model.promoted`'s doing.
    let served = wait_for_version(&http, &predictor, 2).await;
    assert_eq!(served.artifact_uri, v2.artifact_uri);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    let mut all = Vec::new();
    for c in clients {
        let answers = c.await.unwrap();
        assert!(!answers.is_empty());
        // Once a client saw v2, it never went back to v1.
        let seen: Vec<i32> = answers
            .iter()
            .filter_map(|a| a.as_ref().ok().copied())
            .collect();
        assert!(seen.is_sorted(), "versions went back and forth: {seen:?}");
        all.extend(answers);
    }
    let failures: Vec<&String> = all.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:?}",
        failures.len(),
        all.len()
    );
    let versions: BTreeSet<i32> = all
        .iter()
        .filter_map(|a| a.as_ref().ok().copied())
        .collect();
    assert_eq!(
        versions,
        BTreeSet::from([1, 2]),
        "requests saw both versions"
    );
    // Every answered row is logged once, under the version that answered it.
    let bus = env.bus().await;
    let events = stored_events::<PredictionsLogged>(&bus, "predictions.logged").await;
    let logged: std::collections::HashMap<&str, i32> = events
        .iter()
        .flat_map(|e| {
            e.data
                .predictions
                .iter()
                .map(|p| (p.inference_id.as_str(), e.data.model_version))
        })
        .collect();
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() > 10);
    assert_eq!(
        logged.len(),
        answered.len(),
        "answered and logged rows differ"
    );
    for (id, version) in &answered {
        assert_eq!(logged.get(id.as_str()), Some(version), "row {id}");
    }

    predictor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}

/// Reads `predictions.logged` events until one carries `sentinel`; returns every inference id
/// announced (in order, repeats kept) and the largest event's size and row count.
async fn announced_until(
    logged: &mut async_nats::Subscriber,
    sentinel: &str,
) -> (Vec<String>, usize, usize) {
    use futures::StreamExt;
    let (mut ids, mut max_bytes, mut max_rows) = (Vec::new(), 0, 0);
    loop {
        let msg = tokio::time::timeout(PATIENCE, logged.next())
            .await
            .unwrap_or_else(|_| panic!("no event with {sentinel} after {} ids", ids.len()))
            .unwrap();
        let e = petrel_events::Envelope::<PredictionsLogged>::from_bytes(&msg.payload).unwrap();
        max_bytes = max_bytes.max(msg.payload.len());
        max_rows = max_rows.max(e.data.predictions.len());
        ids.extend(e.data.predictions.into_iter().map(|p| p.inference_id));
        if ids.iter().any(|i| i == sentinel) {
            return (ids, max_bytes, max_rows);
        }
    }
}

#[tokio::test]
async fn large_requests_are_announced_in_events_nats_accepts() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    register_model(&env, &registry, "models/penguins/x/bundle.json").await;
    let predictor = start_predictor(&env, &registry).await;
    let http = reqwest::Client::new();
    wait_for_version(&http, &predictor, 1).await;
    let mut logged = env.subscribe("predictions.logged").await;
    let max_payload = env.nats.server_info().max_payload;

    // 1000 rows whose island nobody has heard of (ignored by the model, kept in the log): well
    // over a megabyte of predictions in one request.
    let mut odd = penguin_rows()[0].1.clone();
    odd.insert("island".into(), json!("x".repeat(900)));
    let rows: Vec<_> = (0..1000)
        .map(|i| json!({ "inference_id": format!("big-{i}"), "features": odd }))
        .collect();
    let body = json!({ "rows": rows });
    assert!(serde_json::to_vec(&body).unwrap().len() > max_payload);
    let (status, body) = predict(&http, &predictor, &body).await;
    assert_eq!(status, 200, "{body}");
    let normal = penguin_rows()[1].1.clone();
    let (status, _) = predict(
        &http,
        &predictor,
        &rows_request(&[(Some("after-big"), normal.clone())]),
    )
    .await;
    assert_eq!(status, 200);

    // Every row is announced, once, in events NATS took, and the log keeps flowing after.
    let (ids, max_bytes, max_rows) = announced_until(&mut logged, "after-big").await;
    assert_eq!(ids.len(), 1001);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 1001);
    assert!(max_bytes < max_payload, "an event of {max_bytes} bytes");
    assert!(
        max_rows < 1001,
        "the large request was split, into {max_rows}-row events"
    );

    // A single row too large for any event is refused up front.
    let mut huge = normal.clone();
    huge.insert("island".into(), json!("x".repeat(100_000)));
    let (status, body) = predict(
        &http,
        &predictor,
        &rows_request(&[(None, normal), (None, huge)]),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(error_message(&body, "invalid").contains("rows[1].features"));

    predictor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn concurrent_requests_sharing_an_inference_id_announce_it_once() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    register_model(&env, &registry, "models/penguins/x/bundle.json").await;
    let predictor = start_predictor(&env, &registry).await;
    let http = reqwest::Client::new();
    wait_for_version(&http, &predictor, 1).await;
    let mut logged = env.subscribe("predictions.logged").await;
    let row = penguin_rows()[0].1.clone();

    // A client retrying a request while the first attempt is still in flight: the copies queue
    // up behind a large request and are committed together.
    for round in 0..3 {
        let mut calls = Vec::new();
        for i in 0..30 {
            let body = if i == 0 {
                let rows: Vec<_> = (0..1000).map(|_| json!({ "features": row })).collect();
                json!({ "rows": rows })
            } else {
                rows_request(&[(Some(&format!("retried-{round}")), row.clone())])
            };
            let (http, url) = (http.clone(), predictor.url("/v1/predict"));
            calls.push(tokio::spawn(async move {
                http.post(url).json(&body).send().await.unwrap().status()
            }));
        }
        for c in calls {
            assert_eq!(c.await.unwrap(), 200);
        }
    }
    let (status, _) = predict(
        &http,
        &predictor,
        &rows_request(&[(Some("sentinel"), row.clone())]),
    )
    .await;
    assert_eq!(status, 200);

    let (ids, _, _) = announced_until(&mut logged, "sentinel").await;
    for round in 0..3 {
        let id = format!("retried-{round}");
        let times = ids.iter().filter(|i| **i == id).count();
        assert_eq!(times, 1, "{id} announced {times} times");
    }
    assert_eq!(ids.len(), 3 * 1000 + 3 + 1);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len());

    predictor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}

/// A free port on loopback, for a service started as a separate process.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_200_survives_a_sigkill_the_instant_after_it() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    register_model(&env, &registry, "models/penguins/k/bundle.json").await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = predictor_args(&env, &registry, &[]);
    let at = args.iter().position(|a| a == "--listen").unwrap();
    args[at + 1] = listen.clone();
    let log = std::fs::File::create(env.dir.join("predictor.log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_petrel-predictor"))
        .args(&args[1..])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{listen}");
    eventually("the predictor process to serve", || {
        let (http, url) = (http.clone(), format!("{base}/v1/model"));
        async move {
            let r = http.get(url).send().await.ok()?;
            (r.status() == 200).then_some(())
        }
    })
    .await;

    // Sixteen clients send as fast as they can; the process is killed the instant the 300th
    // answer is in, with requests still in flight.
    let rows = penguin_rows();
    let answered = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for c in 0..16 {
        let (http, url, answered) = (http.clone(), format!("{base}/v1/predict"), answered.clone());
        let body = rows_request(&[(None, rows[c].1.clone()), (None, rows[c + 100].1.clone())]);
        clients.push(tokio::spawn(async move {
            loop {
                let Ok(resp) = http.post(&url).json(&body).send().await else {
                    return;
                };
                if resp.status() != 200 {
                    return;
                }
                let Ok(r) = resp.json::<PredictResponse>().await else {
                    return;
                };
                answered
                    .lock()
                    .unwrap()
                    .extend(r.predictions.into_iter().map(|p| p.inference_id));
            }
        }));
    }
    eventually("300 answered rows", || {
        let n = answered.lock().unwrap().len();
        async move { (n >= 300).then_some(()) }
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    let answered: Vec<String> = answered.lock().unwrap().clone();
    child.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }

    // Every row that got a 200 is in the log, once.
    let bus = env.bus().await;
    let events = stored_events::<PredictionsLogged>(&bus, "predictions.logged").await;
    let mut logged: Vec<&str> = events
        .iter()
        .flat_map(|e| e.data.predictions.iter().map(|p| p.inference_id.as_str()))
        .collect();
    let total = logged.len();
    logged.sort_unstable();
    logged.dedup();
    assert_eq!(logged.len(), total, "a row was logged twice");
    let missing: Vec<&String> = answered
        .iter()
        .filter(|id| logged.binary_search(&id.as_str()).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered rows were lost: {:?}",
        missing.len(),
        answered.len(),
        &missing[..missing.len().min(5)]
    );

    // A new predictor stores the log downstream, and finds every answered row there.
    let predictor = start_predictor(&env, &registry).await;
    let last = answered.last().unwrap().clone();
    eventually("the log to be stored downstream", || {
        let (http, url) = (
            http.clone(),
            predictor.url(&format!("/v1/predictions/{last}")),
        );
        async move {
            let r = http.get(url).send().await.ok()?;
            (r.status() == 200).then_some(())
        }
    })
    .await;
    let (status, body) =
        send(http.get(predictor.url(&format!("/v1/predictions/{}", answered[0])))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["inference_id"], answered[0].as_str());
    assert_eq!(body["model_version"], 1);
    assert!(body["features"].is_object(), "{body}");
    let (status, body) = send(http.get(predictor.url("/v1/predictions/never-seen"))).await;
    assert_eq!(status, 404, "{body}");
    error_message(&body, "not_found");
    predictor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_nats_outage_answers_503_with_retry_after_and_recovers() {
    let mut env = TestEnv::new().await;
    let mut nats = ThrowawayNats::start().await;
    env.services_nats_url = nats.url();
    let registry = start_registry(&env).await;
    register_model(&env, &registry, "models/penguins/n1/bundle.json").await;
    let predictor = start_predictor(&env, &registry).await;
    let http = reqwest::Client::new();
    wait_for_version(&http, &predictor, 1).await;
    let row = penguin_rows()[0].1.clone();
    let (status, body) = predict(&http, &predictor, &rows_request(&[(None, row.clone())])).await;
    assert_eq!(status, 200, "{body}");

    nats.stop();
    // While NATS is down nothing can be made durable: 503 with Retry-After, never a 200.
    let resp = eventually("a 503 while NATS is down", || {
        let (http, url) = (http.clone(), predictor.url("/v1/predict"));
        let body = rows_request(&[(None, row.clone())]);
        async move {
            let r = http.post(url).json(&body).send().await.ok()?;
            (r.status() == 503).then_some(r)
        }
    })
    .await;
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert!(
        error_message(&body, "unavailable").contains("NATS"),
        "{body}"
    );
    let (status, body) = send(http.get(predictor.url("/readyz"))).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("nats"), "{body}");
    let (status, body) = send(http.get(predictor.url("/v1/log"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["nats_connected"], false, "{body}");
    assert_eq!(body["accepting"], false, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("NATS"), "{body}");

    nats.restart().await;
    eventually("predictions to be answered again", || {
        let (http, url) = (http.clone(), predictor.url("/v1/predict"));
        let body = rows_request(&[(None, row.clone())]);
        async move {
            let r = http.post(url).json(&body).send().await.ok()?;
            (r.status() == 200).then_some(())
        }
    })
    .await;
    // The reload subscription came back too: a promotion after the restart switches the
    // served version long before the 30 s reconcile would.
    register_model(&env, &registry, "models/penguins/n2/bundle.json").await;
    wait_for_version(&http, &predictor, 2).await;
    predictor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn retried_ids_get_the_logged_answer_even_after_a_restart_and_a_new_version() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    register_model(&env, &registry, "models/penguins/r1/bundle.json").await;
    let predictor = start_predictor(&env, &registry).await;
    let http = reqwest::Client::new();
    wait_for_version(&http, &predictor, 1).await;
    let rows = penguin_rows();
    let first = rows_request(&[(Some("keep-1"), rows[0].1.clone())]);
    let (status, body) = predict(&http, &predictor, &first).await;
    assert_eq!(status, 200, "{body}");
    let answer: PredictResponse = serde_json::from_value(body).unwrap();

    // v2 is served now; the retry of keep-1 (even with other features) answers as logged.
    register_model(&env, &registry, "models/penguins/r2/bundle.json").await;
    wait_for_version(&http, &predictor, 2).await;
    let retry = rows_request(&[
        (Some("keep-1"), rows[300].1.clone()),
        (Some("new-1"), rows[1].1.clone()),
    ]);
    let (status, body) = predict(&http, &predictor, &retry).await;
    assert_eq!(status, 200, "{body}");
    let again: PredictResponse = serde_json::from_value(body).unwrap();
    assert_eq!(
        again.predictions[0], answer.predictions[0],
        "the logged answer"
    );
    assert_eq!(again.predictions[1].model_version, 2);

    // A new process has an empty memory: the answer comes from the log's copy in Postgres,
    // once that copy holds what the last process logged. Until then caller ids get a 503 to
    // retry, never a second answer.
    predictor.stop().await;
    let predictor = start_predictor(&env, &registry).await;
    wait_for_version(&http, &predictor, 2).await;
    let body = eventually("the retry to be answered after the restart", || {
        let (http, predictor, retry) = (http.clone(), &predictor, &retry);
        async move {
            let (status, body) = predict(&http, predictor, retry).await;
            if status == 503 {
                assert!(
                    error_message(&body, "unavailable").contains("catching up"),
                    "{body}"
                );
                return None;
            }
            assert_eq!(status, 200, "{body}");
            Some(body)
        }
    })
    .await;
    let third: PredictResponse = serde_json::from_value(body).unwrap();
    assert_eq!(third.predictions, again.predictions);

    // keep-1 was logged once, by v1; new-1 once, by v2.
    let bus = env.bus().await;
    let events = stored_events::<PredictionsLogged>(&bus, "predictions.logged").await;
    let logged: Vec<(String, i32)> = events
        .iter()
        .flat_map(|e| {
            e.data
                .predictions
                .iter()
                .map(|p| (p.inference_id.clone(), e.data.model_version))
        })
        .collect();
    assert_eq!(logged, [("keep-1".to_owned(), 1), ("new-1".to_owned(), 2)]);
    predictor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn callers_can_pin_a_version_or_an_alias() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    register_model(&env, &registry, "models/penguins/p1/bundle.json").await;
    register_model(&env, &registry, "models/penguins/p2/bundle.json").await;
    let predictor = start_predictor(&env, &registry).await;
    let http = reqwest::Client::new();
    wait_for_version(&http, &predictor, 2).await;
    let row = penguin_rows()[0].1.clone();
    let pinned = |model: &str| json!({ "model": model, "rows": [{ "features": row }] });

    let (status, body) = predict(&http, &predictor, &pinned("penguins/1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["predictions"][0]["model_version"], 1);
    let (status, body) = predict(&http, &predictor, &pinned("penguins@production")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["predictions"][0]["model_version"], 2);
    let (status, body) = predict(&http, &predictor, &pinned("penguins/9")).await;
    assert_eq!(status, 404, "{body}");
    assert!(error_message(&body, "not_found").contains("no version 9"));
    let (status, body) = predict(&http, &predictor, &pinned("penguins@nope")).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = predict(&http, &predictor, &pinned("penguins")).await;
    assert_eq!(status, 422, "{body}");
    assert!(error_message(&body, "invalid").contains("NAME/VERSION"));

    // The pinned version's rows are logged as that version's.
    let bus = env.bus().await;
    let events = stored_events::<PredictionsLogged>(&bus, "predictions.logged").await;
    let versions: Vec<i32> = events.iter().map(|e| e.data.model_version).collect();
    assert_eq!(versions, [1, 2]);
    predictor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn unseen_categories_follow_the_configured_policy() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    register_model(&env, &registry, "models/penguins/u/bundle.json").await;
    let lenient = start_predictor(&env, &registry).await;
    let strict = start_predictor_with(&env, &registry, &["--unseen-categories", "reject"]).await;
    let http = reqwest::Client::new();
    wait_for_version(&http, &lenient, 1).await;
    wait_for_version(&http, &strict, 1).await;
    let mut row = penguin_rows()[0].1.clone();
    row.insert("island".into(), json!("Atlantis"));
    let body = rows_request(&[(None, row)]);
    let (status, answer) = predict(&http, &lenient, &body).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = predict(&http, &strict, &body).await;
    assert_eq!(status, 422, "{answer}");
    let message = error_message(&answer, "invalid");
    assert!(
        message.contains("rows[0]") && message.contains("island"),
        "{message}"
    );
    assert!(
        message.contains("Atlantis") && message.contains("Biscoe"),
        "{message}"
    );
    strict.stop().await;
    lenient.stop().await;
    registry.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn past_the_concurrency_limit_requests_are_shed_with_retry_after() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    register_model(&env, &registry, "models/penguins/c/bundle.json").await;
    let predictor = start_predictor_with(&env, &registry, &["--max-concurrency", "1"]).await;
    let http = reqwest::Client::new();
    wait_for_version(&http, &predictor, 1).await;
    let row = penguin_rows()[0].1.clone();
    let rows: Vec<_> = (0..1000).map(|_| json!({ "features": row })).collect();
    let body = json!({ "rows": rows });
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let (http, url, body) = (http.clone(), predictor.url("/v1/predict"), body.clone());
            tokio::spawn(async move {
                let r = http.post(url).json(&body).send().await.unwrap();
                let retry = r.headers().get("retry-after").cloned();
                (r.status().as_u16(), retry)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        let (status, retry) = c.await.unwrap();
        if status == 503 {
            assert_eq!(retry.unwrap(), "1");
        }
        statuses.push(status);
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.contains(&503),
        "32 concurrent requests, one allowed: {statuses:?}"
    );
    predictor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[tokio::test]
async fn mlflow_and_v2_clients_are_served_and_logged_like_native_ones() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    register_model(&env, &registry, "models/penguins/m1/bundle.json").await;
    register_model(&env, &registry, "models/penguins/m2/bundle.json").await;
    let predictor = start_predictor(&env, &registry).await;
    let http = reqwest::Client::new();
    wait_for_version(&http, &predictor, 2).await;

    let (status, body) = send(http.get(predictor.url("/ping"))).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(http.get(predictor.url("/version"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["backend"], "local");

    // A body made by pandas' to_json(orient="split"), as an MLflow client sends it.
    let split = fixture("split.json");
    let (status, body) = send(
        http.post(predictor.url("/invocations"))
            .header("content-type", "application/json")
            .body(split),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mlflow_rows = body["predictions"].as_array().unwrap().len();
    assert!(mlflow_rows > 0);
    assert!(body["predictions"][0]["class"].is_string(), "{body}");

    // CSV with a header row.
    let (status, body) = send(
        http.post(predictor.url("/invocations"))
            .header("content-type", "text/csv")
            .body(fixture("frame.csv")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let csv_rows = body["predictions"].as_array().unwrap().len();

    // Another content type: 415 in MLflow's error shape.
    let (status, body) = send(
        http.post(predictor.url("/invocations"))
            .header("content-type", "text/plain")
            .body("x"),
    )
    .await;
    assert_eq!(status, 415, "{body}");
    assert!(body["error_code"].is_string(), "{body}");

    // V2: the served version, and version 1 pinned by path.
    let v2 = fixture("v2-columns.json");
    let (status, body) = send(
        http.post(predictor.url("/v2/models/penguins/infer"))
            .header("content-type", "application/json")
            .body(v2.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_version"], "2");
    let v2_rows = body["outputs"][0]["shape"][0].as_u64().unwrap() as usize;
    let (status, body) = send(
        http.post(predictor.url("/v2/models/penguins/versions/1/infer"))
            .header("content-type", "application/json")
            .body(v2.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_version"], "1");
    let (status, body) = send(
        http.post(predictor.url("/v2/models/penguins/versions/7/infer"))
            .header("content-type", "application/json")
            .body(v2),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = send(http.get(predictor.url("/v2/models/penguins"))).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = send(http.get(predictor.url("/v2/models/other"))).await;
    assert_eq!(status, 404);

    // Every answered row was logged, under the version that answered it.
    let bus = env.bus().await;
    let events = stored_events::<PredictionsLogged>(&bus, "predictions.logged").await;
    let per_version = |v: i32| -> usize {
        events
            .iter()
            .filter(|e| e.data.model_version == v)
            .map(|e| e.data.predictions.len())
            .sum()
    };
    assert_eq!(per_version(2), mlflow_rows + csv_rows + v2_rows);
    assert_eq!(per_version(1), v2_rows);
    predictor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_request_past_its_time_limit_gets_503_with_retry_after() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    register_model(&env, &registry, "models/penguins/t/bundle.json").await;
    let predictor = start_predictor_with(&env, &registry, &["--request-timeout-ms", "1"]).await;
    let http = reqwest::Client::new();
    wait_for_version(&http, &predictor, 1).await;
    // A thousand rows take milliseconds to parse, score and log: well past 1 ms.
    let row = penguin_rows()[0].1.clone();
    let rows: Vec<_> = (0..1000).map(|_| json!({ "features": row })).collect();
    let resp = http
        .post(predictor.url("/v1/predict"))
        .json(&json!({ "rows": rows }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    let message = error_message(&body, "unavailable");
    assert!(message.contains("longer than 1 ms"), "{message}");
    // Health checks are outside the limit.
    let (status, _) = send(http.get(predictor.url("/healthz"))).await;
    assert_eq!(status, 200);
    predictor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn predictions_go_on_while_postgres_is_down_and_are_stored_once_it_is_back() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    register_model(&env, &registry, "models/penguins/pg/bundle.json").await;
    // The predictor alone on a Postgres of its own, so it can be stopped.
    let pg = ThrowawayPostgres::start();
    let mut args = predictor_args(&env, &registry, &[]);
    let at = args.iter().position(|a| a == "--database-url").unwrap();
    args[at + 1] = pg.url("petrel_predictor_outage");
    let cancel = tokio_util::sync::CancellationToken::new();
    let app = petrel_predictor::App::build(
        <petrel_predictor::Config as clap::Parser>::parse_from(args),
        cancel.clone(),
    )
    .await
    .unwrap();
    let predictor = Service::spawn("the predictor", app.port(), cancel, app.run());
    let http = reqwest::Client::new();
    wait_for_version(&http, &predictor, 1).await;
    let row = penguin_rows()[0].1.clone();

    pg.stop();
    // Postgres is off the request path: answered, logged in JetStream, and still ready.
    let (status, body) = predict(&http, &predictor, &rows_request(&[(None, row.clone())])).await;
    assert_eq!(status, 200, "{body}");
    let id = body["predictions"][0]["inference_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = send(http.get(predictor.url("/readyz"))).await;
    assert_eq!(status, 200, "{body}");
    // Only a replay of a caller's id needs Postgres, and says so.
    let (status, body) = predict(
        &http,
        &predictor,
        &rows_request(&[(Some("mine"), row.clone())]),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        error_message(&body, "unavailable").contains("database"),
        "{body}"
    );

    pg.restart();
    // The downstream copy catches up on its own.
    eventually("the row answered during the outage to be stored", || {
        let (http, url) = (
            http.clone(),
            predictor.url(&format!("/v1/predictions/{id}")),
        );
        async move {
            let r = http.get(url).send().await.ok()?;
            (r.status() == 200).then_some(())
        }
    })
    .await;
    predictor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}
