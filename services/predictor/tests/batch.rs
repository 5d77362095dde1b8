//! Batch scoring against a real registry, Postgres and NATS: `POST /v1/batch` and `data.ready`
//! with purpose scoring, the results CSV, every row logged once, the `batch_predictions` run,
//! and jobs resumed without logging a row twice.

mod common;

use std::collections::BTreeMap;

use common::*;
use petrel_api::predictor::{BatchJob, BatchStatus};
use petrel_api::registry::RegistryClient;
use petrel_events::payloads::{DataReady, DatasetPurpose, PredictionsLogged};
use serde_json::json;

/// The penguins CSV, labels and all (the batch leaves the label out), with one bad row (an
/// unknown island value is fine, a non-number for a numeric column is not) after row 2.
fn input_csv(copies: usize) -> (String, usize) {
    let text = penguins_csv();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let body: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
    let mut out = format!("{header}\n");
    let mut n = 0;
    for _ in 0..copies {
        for l in &body {
            out.push_str(l);
            out.push('\n');
            n += 1;
        }
    }
    (out, n)
}

/// Puts `csv` in the test's artifact store and returns its URI.
async fn store_csv(env: &TestEnv, key: &str, csv: String) -> String {
    let store = petrel_store::open(env.artifact_root()).unwrap();
    store.put(key, bytes::Bytes::from(csv)).await.unwrap()
}

async fn wait_served(http: &reqwest::Client, predictor: &Service) {
    eventually("the predictor to serve a model", || async {
        let resp = http.get(predictor.url("/v1/model")).send().await.ok()?;
        (resp.status() == 200).then_some(())
    })
    .await;
}

async fn get_job(http: &reqwest::Client, predictor: &Service, id: uuid::Uuid) -> BatchJob {
    let (status, body) = send(http.get(predictor.url(&format!("/v1/batch/{id}")))).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).unwrap()
}

async fn wait_finished(http: &reqwest::Client, predictor: &Service, id: uuid::Uuid) -> BatchJob {
    eventually("the batch job to finish", || async {
        let job = get_job(http, predictor, id).await;
        job.status.is_finished().then_some(job)
    })
    .await
}

/// The results CSV of a job, as records keyed by column.
fn read_output(job: &BatchJob) -> Vec<BTreeMap<String, String>> {
    let uri = job.output_uri.as_deref().expect("an output uri");
    let path = uri.strip_prefix("file://").unwrap();
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header = reader.headers().unwrap().clone();
    let cols: Vec<&str> = header.iter().collect();
    assert_eq!(
        cols,
        [
            "inference_id",
            "class",
            "confidence",
            "p_Adelie",
            "p_Chinstrap",
            "p_Gentoo",
            "error"
        ]
    );
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            header
                .iter()
                .zip(r.iter())
                .map(|(h, v)| (h.to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

/// How many times each inference id of `job` was logged on `predictions.logged`.
async fn logged_counts(env: &TestEnv, job: uuid::Uuid) -> BTreeMap<String, usize> {
    let bus = env.bus().await;
    let prefix = format!("batch-{job}-");
    let mut counts = BTreeMap::new();
    for e in stored_events::<PredictionsLogged>(&bus, "predictions.logged").await {
        for p in e.data.predictions {
            if p.inference_id.starts_with(&prefix) {
                *counts.entry(p.inference_id).or_insert(0) += 1;
            }
        }
    }
    counts
}

#[tokio::test]
async fn a_posted_batch_is_scored_logged_once_written_and_recorded() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    let predictor = start_predictor_with(&env, &registry, &["--max-rows", "50"]).await;
    let http = reqwest::Client::new();
    register_model(&env, &registry, "models/penguins/v1/bundle.json").await;
    wait_served(&http, &predictor).await;

    // Bad bodies and unknown jobs, in plain words.
    let (status, body) = send(
        http.post(predictor.url("/v1/batch"))
            .json(&json!({"model": 3})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = send(
        http.post(predictor.url("/v1/batch"))
            .json(&json!({"input_uri": "x", "model": "nope"})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        error_message(&body, "invalid").contains("NAME/VERSION"),
        "{body}"
    );
    let (status, body) =
        send(http.get(predictor.url(&format!("/v1/batch/{}", uuid::Uuid::now_v7())))).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = send(http.get(predictor.url("/v1/batch/not-a-uuid"))).await;
    assert_eq!(status, 404);

    // 344 penguins, and a bad row second: a word where a number belongs.
    let (csv, n) = input_csv(1);
    let mut lines: Vec<&str> = csv.lines().collect();
    let bad = "Adelie,Torgersen,lots,18.7,181,3750,male,2007";
    lines.insert(2, bad);
    let csv = lines.join("\n") + "\n";
    let total = n + 1;
    let uri = store_csv(&env, "incoming/penguins.csv", csv).await;

    let resp = http
        .post(predictor.url("/v1/batch"))
        .json(&json!({"input_uri": uri, "model": "penguins@production"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let job: BatchJob = resp.json().await.unwrap();
    assert_eq!(location, format!("/v1/batch/{}", job.id));
    assert_eq!(job.input_uri, uri);
    assert_eq!(job.model.as_deref(), Some("penguins@production"));

    let job = wait_finished(&http, &predictor, job.id).await;
    assert_eq!(job.status, BatchStatus::Succeeded, "{job:?}");
    assert_eq!(job.rows_total, Some(total as i64));
    assert_eq!(job.rows_done, total as i64);
    assert_eq!(job.rows_rejected, 1);
    assert_eq!(job.model_name.as_deref(), Some("penguins"));
    assert_eq!(job.model_version, Some(1));
    let output_uri = job.output_uri.clone().unwrap();
    assert!(
        output_uri.ends_with(&format!("predictions/penguins/{}.csv", job.id)),
        "{output_uri}"
    );

    // One line per input row, in order, with plausible classes; the bad row says why.
    let out = read_output(&job);
    assert_eq!(out.len(), total);
    let species: Vec<String> = penguin_rows().into_iter().map(|(s, _)| s).collect();
    let mut right = 0;
    let mut scored = 0;
    for (i, row) in out.iter().enumerate() {
        assert_eq!(row["inference_id"], format!("batch-{}-{}", job.id, i + 1));
        if i == 1 {
            assert_eq!(row["class"], "");
            assert!(row["error"].contains("bill_length_mm"), "{row:?}");
            continue;
        }
        assert_eq!(row["error"], "", "{row:?}");
        assert!(SPECIES.contains(&row["class"].as_str()), "{row:?}");
        let p: f32 = row[&format!("p_{}", row["class"])].parse().unwrap();
        assert_eq!(row["confidence"].parse::<f32>().unwrap(), p);
        let truth = &species[if i == 0 { 0 } else { i - 1 }];
        right += usize::from(row["class"] == *truth);
        scored += 1;
    }
    assert!(right * 100 >= scored * 90, "{right} of {scored} right");

    // Every scored row logged once, under its deterministic id; the bad one never.
    let counts = logged_counts(&env, job.id).await;
    assert_eq!(counts.len(), n, "{} logged", counts.len());
    assert!(counts.values().all(|&c| c == 1), "a row was logged twice");
    assert!(!counts.contains_key(&format!("batch-{}-2", job.id)));

    // The run, with its metrics.
    let run = RegistryClient::new(&registry.base)
        .get_run(job.run_id.expect("a run id"))
        .await
        .unwrap();
    assert_eq!(run.experiment, "batch_predictions");
    assert_eq!(run.status.as_str(), "finished");
    assert_eq!(run.params["model"], "penguins");
    assert_eq!(run.params["version"], "1");
    assert_eq!(run.params["input_uri"], uri);
    assert_eq!(run.params["output_uri"], output_uri);
    let m: BTreeMap<&str, f64> = run
        .metrics
        .iter()
        .map(|m| (m.key.as_str(), m.value))
        .collect();
    assert_eq!(m["rows"], n as f64);
    assert_eq!(m["rejected_rows"], 1.0);
    assert!(m["duration_s"] >= 0.0);
    assert!(
        m["mean_confidence"] > 0.5 && m["mean_confidence"] <= 1.0,
        "{m:?}"
    );
    let shares: f64 = SPECIES
        .iter()
        .map(|s| m[format!("class_share.{s}").as_str()])
        .sum();
    assert!((shares - 1.0).abs() < 1e-6, "{m:?}");
    assert!(m["class_share.Adelie"] > 0.3, "{m:?}");

    // A file that is not there fails its job, in words.
    let (status, body) = send(http.post(predictor.url("/v1/batch")).json(&json!({
        "input_uri": format!("file://{}/nope.csv", env.artifact_root())
    })))
    .await;
    assert_eq!(status, 202, "{body}");
    let id: uuid::Uuid = serde_json::from_value(body["id"].clone()).unwrap();
    let failed = wait_finished(&http, &predictor, id).await;
    assert_eq!(failed.status, BatchStatus::Failed);
    assert!(failed.error.unwrap().contains("input file"));

    predictor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_scoring_dataset_is_scored_once_per_event() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    let predictor = start_predictor(&env, &registry).await;
    let http = reqwest::Client::new();
    register_model(&env, &registry, "models/penguins/v1/bundle.json").await;
    wait_served(&http, &predictor).await;
    let (csv, n) = input_csv(1);
    let uri = store_csv(&env, "datasets/penguins/scoring.csv", csv).await;
    let bus = env.bus().await;
    let data = DataReady {
        dataset_id: uuid::Uuid::now_v7(),
        name: "penguins".into(),
        version: 2,
        uri: uri.clone(),
        content_hash: "sha256:00".into(),
        row_count: n as u64,
        rejected_rows: 0,
        schema: petrel_ml::Schema::penguins(),
        purpose: DatasetPurpose::Scoring,
    };
    // Training data, and scoring data for another model, are not the predictor's to score.
    let training = bus.envelope(DataReady {
        purpose: DatasetPurpose::Training,
        ..data.clone()
    });
    let other = bus.envelope(DataReady {
        name: "otters".into(),
        ..data.clone()
    });
    let scoring = bus.envelope(data.clone());
    for e in [&training, &other, &scoring] {
        bus.publish(e).await.unwrap();
    }
    wait_consumer_caught_up(&bus, "predictor-batch").await;

    let pool = sqlx::PgPool::connect(&env.db).await.unwrap();
    let jobs: Vec<(uuid::Uuid, Option<uuid::Uuid>, String)> =
        sqlx::query_as("SELECT id, event_id, status FROM predictor.batch_jobs")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].1, Some(scoring.id));
    let job = wait_finished(&http, &predictor, jobs[0].0).await;
    assert_eq!(job.status, BatchStatus::Succeeded, "{job:?}");
    assert_eq!(job.event_id, Some(scoring.id));
    assert_eq!(read_output(&job).len(), n);
    assert!(job.run_id.is_some());

    // The same event delivered again (same envelope, a new message id past JetStream's
    // de-duplication) finds its job and scores nothing more.
    bus.publish_raw(
        "data.ready",
        uuid::Uuid::now_v7(),
        bytes::Bytes::from(scoring.to_bytes().unwrap()),
    )
    .await
    .unwrap();
    wait_consumer_caught_up(&bus, "predictor-batch").await;
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM predictor.batch_jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
    let counts = logged_counts(&env, job.id).await;
    assert_eq!(counts.len(), n);
    assert!(counts.values().all(|&c| c == 1), "a row was logged twice");
    pool.close().await;
    predictor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn resumed_jobs_log_no_row_twice() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    // Small chunks, so the job is stopped part of the way through.
    let args = ["--max-rows", "10", "--batch-lease-secs", "2"];
    let predictor = start_predictor_with(&env, &registry, &args).await;
    let http = reqwest::Client::new();
    register_model(&env, &registry, "models/penguins/v1/bundle.json").await;
    wait_served(&http, &predictor).await;
    let (csv, n) = input_csv(12);
    let uri = store_csv(&env, "incoming/big.csv", csv).await;

    // Stopped part of the way through.
    let (status, body) = send(
        http.post(predictor.url("/v1/batch"))
            .json(&json!({"input_uri": uri})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id: uuid::Uuid = serde_json::from_value(body["id"].clone()).unwrap();
    eventually("the job to be part done", || async {
        let job = get_job(&http, &predictor, id).await;
        (job.rows_done > 0).then_some(())
    })
    .await;
    // A job a crashed runner left `running` long ago, with rows it logged before it died: the
    // first two rows answered online under the job's ids stand in for them.
    let crashed = uuid::Uuid::now_v7();
    let rows = penguin_rows();
    let early = json!({"rows": [
        {"inference_id": format!("batch-{crashed}-1"), "features": rows[0].1},
        {"inference_id": format!("batch-{crashed}-2"), "features": rows[1].1},
    ]});
    let (status, body) = send(http.post(predictor.url("/v1/predict")).json(&early)).await;
    assert_eq!(status, 200, "{body}");
    predictor.stop().await;
    let pool = sqlx::PgPool::connect(&env.db).await.unwrap();
    let (status, done): (String, i64) =
        sqlx::query_as("SELECT status, rows_done FROM predictor.batch_jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "queued", "a stopped job goes back in the queue");
    assert!(
        done < n as i64,
        "the job was stopped part of the way through"
    );
    sqlx::query(
        "INSERT INTO predictor.batch_jobs (id, input_uri, status, attempts, started_at, heartbeat_at) \
         VALUES ($1, $2, 'running', 1, now() - interval '1 hour', now() - interval '1 hour')",
    )
    .bind(crashed)
    .bind(&uri)
    .execute(&pool)
    .await
    .unwrap();

    let predictor = start_predictor_with(&env, &registry, &args).await;
    wait_served(&http, &predictor).await;
    let job = wait_finished(&http, &predictor, id).await;
    assert_eq!(job.status, BatchStatus::Succeeded, "{job:?}");
    assert!(job.attempts >= 2, "{job:?}");
    assert_eq!(read_output(&job).len(), n);
    let counts = logged_counts(&env, id).await;
    assert_eq!(counts.len(), n);
    assert!(
        counts.values().all(|&c| c == 1),
        "a resumed job logged a row twice"
    );

    let resumed = wait_finished(&http, &predictor, crashed).await;
    assert_eq!(resumed.status, BatchStatus::Succeeded, "{resumed:?}");
    assert_eq!(resumed.attempts, 2);
    let counts = logged_counts(&env, crashed).await;
    assert_eq!(counts.len(), n);
    assert!(counts.values().all(|&c| c == 1));
    // Same rows, same model: the same answers, the early ones as logged.
    let a = read_output(&job);
    let b = read_output(&resumed);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["class"], y["class"]);
    }
    let early: Vec<&str> = b[..2].iter().map(|r| r["class"].as_str()).collect();
    assert!(early.iter().all(|c| SPECIES.contains(c)), "{early:?}");
    pool.close().await;
    predictor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}
