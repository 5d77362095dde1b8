//! The whole loop, end to end: the six services run together against the real Postgres and
//! NATS; the test drives them over HTTP like a user and waits for an alert on `alerts.>` like a
//! subscriber would. Every hop must work for the alert to arrive.

use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use petrel_api::ApiClient;
use petrel_api::ingest::{IngestRequest, IngestResponse, PredictionLineage};
use petrel_api::labeler::{LabelInput, LabelsRequest, LabelsResponse};
use petrel_api::monitor::ReportList;
use petrel_api::predictor::{PredictRequest, PredictResponse, PredictRow, ServedModel};
use petrel_api::registry::RegistryClient;
use petrel_events::Envelope;
use petrel_events::payloads::{Alert, AlertKind, ModelPromoted};
use petrel_testkit::{Service, TestEnv, penguin_rows, penguins_csv};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

struct Stack {
    env: TestEnv,
    /// One token for all: cancelling it stops the six at once, as a shutdown of the host would.
    cancel: CancellationToken,
    /// In the order they started.
    services: Vec<Service>,
    /// The model the predictor serves.
    model: &'static str,
}

macro_rules! start {
    ($stack:ident, $name:literal, $krate:ident, $args:expr) => {{
        let app = $krate::App::build($krate::Config::parse_from($args), $stack.cancel.clone())
            .await
            .expect(concat!($name, " starts"));
        let service = Service::spawn($name, app.port(), $stack.cancel.clone(), app.run())
            .stop_limit(Duration::from_secs(40));
        $stack.services.push(service);
    }};
}

impl Stack {
    /// Starts the six services on free ports (each after those it calls), sharing a fresh database, a fresh NATS namespace
    /// and a fresh artifact directory; the monitor has one-second windows and `monitor` flags.
    async fn start(monitor: &[&str]) -> Stack {
        Stack::start_serving("penguins", &[], monitor).await
    }

    /// [`Stack::start`] with the predictor serving `model` and more `trainer` flags.
    async fn start_serving(model: &'static str, trainer: &[&str], monitor: &[&str]) -> Stack {
        let mut stack = Stack {
            env: TestEnv::new().await,
            cancel: CancellationToken::new(),
            services: Vec::new(),
            model,
        };
        let env = &stack.env;

        start!(
            stack,
            "registry",
            petrel_registry,
            env.args_without_store("petrel-registry", &[])
        );
        let registry = stack.url("registry").to_owned();
        start!(
            stack,
            "predictor",
            petrel_predictor,
            env.args(
                "petrel-predictor",
                &["--registry-url", &registry, "--model-name", model]
            )
        );
        let predictor = stack.url("predictor").to_owned();
        start!(
            stack,
            "ingest",
            petrel_ingest,
            env.args(
                "petrel-ingest",
                &["--predictor-url", &predictor, "--registry-url", &registry]
            )
        );
        let ingest = stack.url("ingest").to_owned();
        start!(
            stack,
            "labeler",
            petrel_labeler,
            env.args_without_store("petrel-labeler", &[])
        );
        let labeler = stack.url("labeler").to_owned();
        start!(
            stack,
            "trainer",
            petrel_trainer,
            env.args("petrel-trainer", &{
                let mut flags = vec![
                    "--registry-url",
                    &registry,
                    "--labeler-url",
                    &labeler,
                    "--ingest-url",
                    &ingest,
                ];
                flags.extend_from_slice(trainer);
                flags
            })
        );
        start!(
            stack,
            "monitor",
            petrel_monitor,
            env.args("petrel-monitor", &{
                let mut flags = vec![
                    "--registry-url",
                    &registry,
                    "--window-secs",
                    "1",
                    "--window-lateness-secs",
                    "1",
                    "--window-idle-secs",
                    "2",
                    "--min-window",
                    "30",
                ];
                flags.extend_from_slice(monitor);
                flags
            })
        );
        stack
    }

    fn url(&self, name: &str) -> &str {
        let service = self.services.iter().find(|s| s.name == name);
        &service.unwrap_or_else(|| panic!("{name} runs")).base
    }

    /// Cancels every service and checks each one shut down cleanly.
    async fn stop(self) {
        self.cancel.cancel();
        for service in self.services {
            service.stop().await;
        }
        self.env.cleanup().await;
    }
}

/// Penguins rows as JSON features plus the species.
fn samples() -> Vec<(Map<String, Value>, String)> {
    penguin_rows()
        .into_iter()
        .map(|(species, features)| (features, species))
        .collect()
}

/// Predicts `rows` in batches and posts their true labels afterwards; returns accuracy.
async fn traffic(stack: &Stack, rows: &[(Map<String, Value>, String)], tag: &str) -> f64 {
    let predictor = ApiClient::new(stack.url("predictor"));
    let labeler = ApiClient::new(stack.url("labeler"));
    let mut correct = 0;
    for (i, chunk) in rows.chunks(10).enumerate() {
        let req = PredictRequest {
            rows: chunk
                .iter()
                .enumerate()
                .map(|(j, (f, _))| PredictRow {
                    inference_id: Some(format!("{tag}-{i}-{j}")),
                    features: f.clone(),
                })
                .collect(),
        };
        let resp: PredictResponse = predictor.post("/v1/predict", &req).await.expect("predict");
        assert_eq!(resp.predictions.len(), chunk.len());
        let labels: Vec<LabelInput> = resp
            .predictions
            .iter()
            .zip(chunk)
            .map(|(p, (_, species))| {
                assert_eq!(p.model_name, stack.model);
                let total: f32 = p.probabilities.values().sum();
                assert!((total - 1.0).abs() < 1e-3, "probabilities sum to {total}");
                if &p.class == species {
                    correct += 1;
                }
                LabelInput {
                    inference_id: p.inference_id.clone(),
                    label: species.clone(),
                }
            })
            .collect();
        let r: LabelsResponse = labeler
            .post("/v1/labels", &LabelsRequest::new(labels))
            .await
            .expect("labels");
        assert_eq!(r.accepted, chunk.len());
    }
    correct as f64 / rows.len() as f64
}

/// Sends `request` to ingest.
async fn ingest(stack: &Stack, request: IngestRequest) -> IngestResponse {
    ApiClient::new(stack.url("ingest"))
        .post("/v1/datasets", &request)
        .await
        .expect("ingest")
}

/// Ingests the penguins file for training.
async fn ingest_penguins(stack: &Stack) -> IngestResponse {
    ingest(
        stack,
        IngestRequest {
            name: "penguins".into(),
            schema: petrel_ml::Schema::penguins(),
            csv: Some(penguins_csv()),
            path: None,
            uri: None,
            generate: None,
            purpose: Default::default(),
            checks: Default::default(),
        },
    )
    .await
}

/// Waits for the `model.promoted` of `model` to production on `promoted`, and returns the
/// version the alias then names.
async fn promoted_to_production(
    stack: &Stack,
    promoted: &mut async_nats::Subscriber,
    model: &str,
) -> petrel_api::registry::ModelVersion {
    let msg = tokio::time::timeout(Duration::from_secs(120), promoted.next())
        .await
        .expect("a model is promoted")
        .unwrap();
    let event = Envelope::<ModelPromoted>::from_bytes(&msg.payload).unwrap();
    assert_eq!(event.data.model_name, model);
    assert_eq!(event.data.alias, "production");
    RegistryClient::new(stack.url("registry"))
        .get_alias(model, "production")
        .await
        .unwrap()
        .expect("alias set")
}

/// Waits until the predictor serves `version`.
async fn wait_served(stack: &Stack, version: i32) {
    let predictor = ApiClient::new(stack.url("predictor"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(predictor.get::<ServedModel>("/v1/model").await, Ok(m) if m.model_version == version)
    {
        assert!(
            Instant::now() < deadline,
            "the predictor never loaded the model"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The monitor's first window report, once there is one.
async fn first_report(stack: &Stack) -> petrel_api::monitor::Report {
    let monitor = ApiClient::new(stack.url("monitor"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list: ReportList = monitor.get("/v1/reports").await.unwrap();
        if let Some(r) = list.reports.last() {
            return r.clone();
        }
        assert!(Instant::now() < deadline, "no report for normal traffic");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The next drift alert on `alerts` (other kinds are skipped), within a minute.
async fn next_drift_alert(alerts: &mut async_nats::Subscriber) -> Envelope<Alert> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, alerts.next())
            .await
            .expect("an alert arrives on alerts.>")
            .unwrap();
        let alert = Envelope::<Alert>::from_bytes(&msg.payload).expect("a well-formed alert");
        if alert.data.kind == AlertKind::Drift {
            return alert;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn csv_to_alert() {
    // One drifted window opens the alert here; the false-alarm test keeps the default 2.
    let stack = Stack::start(&["--confirm-windows", "1"]).await;
    let mut alerts = stack.env.subscribe("alerts.>").await;
    let mut promoted = stack.env.subscribe("model.promoted").await;

    // 1. ingest
    let resp = ingest_penguins(&stack).await;
    assert!(resp.created);
    assert_eq!(resp.dataset.row_count, 344);

    // 2-3. trainer trains and registers; registry promotes and announces it
    let production = promoted_to_production(&stack, &mut promoted, "penguins").await;
    let registry = RegistryClient::new(stack.url("registry"));
    let accuracy = production.metrics["test_accuracy"];
    assert!(accuracy >= 0.95, "test accuracy {accuracy}");
    let run = registry.get_run(production.run_id).await.unwrap();
    assert_eq!(run.params["seed"], "42");

    // 4. the predictor loads it
    wait_served(&stack, production.version).await;

    // 5-6. normal traffic: accurate, labelled, and no alert
    let rows = samples();
    // The file is ordered by species: spread the sample over it (97 is coprime to 344).
    let spread = |offset: usize| (0..90).map(move |i| (i * 97 + offset) % 344);
    let normal: Vec<_> = spread(0).map(|i| rows[i].clone()).collect();
    let acc = traffic(&stack, &normal, "normal").await;
    assert!(acc > 0.9, "accuracy on normal traffic {acc}");
    let first = first_report(&stack).await;
    assert!(first.n_predictions >= 30);
    assert!(
        !first.alerts.iter().any(|a| a == "drift"),
        "normal traffic raised drift: {first:?}"
    );

    // Lineage: one call traces a prediction to its model version, run, dataset and source.
    let ingest_api = ApiClient::new(stack.url("ingest"));
    let deadline = Instant::now() + Duration::from_secs(15);
    let lineage: PredictionLineage = loop {
        match ingest_api.get("/v1/lineage/predictions/normal-0-0").await {
            Ok(l) => break l,
            Err(e) if e.status() == Some(404) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("lineage: {e}"),
        }
    };
    assert_eq!(lineage.prediction["inference_id"], "normal-0-0");
    assert_eq!(lineage.model_version.version, production.version);
    assert_eq!(lineage.run.id, production.run_id);
    assert_eq!(lineage.run.params["seed"], "42");
    assert_eq!(lineage.datasets.len(), 1, "{:?}", lineage.datasets);
    let trained_on = &lineage.datasets[0];
    assert_eq!(trained_on.role.as_deref(), Some("training"));
    assert_eq!(trained_on.digest, resp.dataset.content_hash);
    let dataset = trained_on.dataset.as_ref().expect("ingest's own dataset");
    assert_eq!(dataset.id, resp.dataset.id);
    assert_eq!(dataset.source, "upload");
    assert_eq!(trained_on.report.as_ref().unwrap().accepted, 344);
    let r = ingest_api
        .get::<Value>("/v1/lineage/predictions/no-such-prediction")
        .await
        .unwrap_err();
    assert_eq!(r.status(), Some(404));

    // drifted traffic: shifted measurements must raise a drift alert
    let drifted = shifted(&rows, 90, 1);
    traffic(&stack, &drifted, "drifted").await;
    let drift = next_drift_alert(&mut alerts).await.data;
    assert_eq!(drift.model_name, "penguins");
    let monitor = ApiClient::new(stack.url("monitor"));
    let names = drift.details["drifted_features"].as_array().unwrap();
    assert!(names.iter().any(|n| n == "bill_length_mm"), "{names:?}");
    // The alert points at a stored report listing it.
    let report: petrel_api::monitor::Report = monitor
        .get(&format!("/v1/reports/{}", drift.report_id))
        .await
        .unwrap();
    assert!(report.alerts.iter().any(|a| a == "drift"));

    // What operators see: every hop above shows in the services' `/metrics`. (The six run in
    // this one process and share its recorder, as six scrape targets would share a
    // Prometheus; other tests of this file may add to the counts, never take from them.)
    let scraped = scrape(stack.url("predictor")).await;
    let at_least = |series: &str, n: f64| {
        let value = metric(&scraped, series).unwrap_or_else(|| panic!("no {series} in /metrics"));
        assert!(value >= n, "{series} = {value}, expected at least {n}");
    };
    at_least(
        r#"petrel_http_requests_total{method="POST",route="/v1/predict",status="200"}"#,
        2.0,
    );
    at_least(
        r#"petrel_http_requests_total{method="GET",route="/v1/lineage/predictions/{inference_id}",status="404"}"#,
        1.0,
    );
    at_least(
        r#"petrel_http_request_duration_seconds_count{method="POST",route="/v1/predict"}"#,
        2.0,
    );
    at_least("petrel_prediction_log_message_rows_sum", 180.0);
    at_least(
        r#"petrel_events_published_total{subject="predictions.logged",result="ok"}"#,
        1.0,
    );
    at_least(
        r#"petrel_events_published_total{subject="data.ready",result="ok"}"#,
        1.0,
    );
    at_least(
        r#"petrel_events_handled_total{consumer="monitor-predictions",outcome="done"}"#,
        1.0,
    );
    at_least(r#"petrel_training_jobs_total{outcome="succeeded"}"#, 1.0);
    at_least(r#"petrel_ingest_datasets_total{status="accepted"}"#, 1.0);
    at_least(r#"petrel_ingest_rows_total{result="accepted"}"#, 344.0);
    at_least(r#"petrel_labels_total{result="joined"}"#, 1.0);
    at_least(r#"petrel_monitor_windows_total{model="penguins"}"#, 2.0);
    assert!(
        metric(&scraped, r#"petrel_served_model_version{model="penguins"}"#).is_some(),
        "the served version is in /metrics"
    );
    assert!(
        scraped.contains(r#"petrel_drift_statistic{model="penguins",column="bill_length_mm""#),
        "drift per column is in /metrics"
    );
    assert!(
        !scraped.contains("normal-0-0"),
        "request paths never become labels: {scraped}"
    );
    // Every service answers its own scrape.
    for name in ["registry", "ingest", "labeler", "trainer", "monitor"] {
        assert!(
            scrape(stack.url(name))
                .await
                .contains("# TYPE petrel_http_requests_total counter")
        );
    }

    stack.stop().await;
}

/// `GET /metrics` of the service at `base`.
async fn scrape(base: &str) -> String {
    let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    response.text().await.unwrap()
}

/// The value of one series (its name and labels exactly as rendered) in a scrape.
fn metric(scraped: &str, series: &str) -> Option<f64> {
    scraped.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Ingests penguins and waits until the predictor serves the promoted model.
async fn train_and_serve(stack: &Stack) {
    let mut promoted = stack.env.subscribe("model.promoted").await;
    let resp = ingest_penguins(stack).await;
    assert!(resp.created);
    let msg = tokio::time::timeout(Duration::from_secs(120), promoted.next())
        .await
        .expect("a model is promoted")
        .unwrap();
    let version = Envelope::<ModelPromoted>::from_bytes(&msg.payload)
        .unwrap()
        .data
        .version;
    wait_served(stack, version).await;
}

/// Randomly sampled normal traffic through the real predictor, over more than 20 one-second
/// windows, raises no drift alert; the observed per-window false-positive rate is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn normal_traffic_over_twenty_windows_raises_no_drift_alert() {
    use rand::{Rng, SeedableRng};
    let stack = Stack::start(&[]).await;
    let mut alerts = stack.env.subscribe("alerts.>").await;
    train_and_serve(&stack).await;
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let rows = samples();
    let predictor = ApiClient::new(stack.url("predictor"));
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(24) {
        let req = PredictRequest {
            rows: (0..6)
                .map(|_| PredictRow {
                    inference_id: None,
                    features: rows[rng.random_range(0..rows.len())].0.clone(),
                })
                .collect(),
        };
        let resp: PredictResponse = predictor.post("/v1/predict", &req).await.expect("predict");
        sent += resp.predictions.len();
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    let monitor = ApiClient::new(stack.url("monitor"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let tested = loop {
        let list: ReportList = monitor.get("/v1/reports?limit=100").await.unwrap();
        let total: i64 = list.reports.iter().map(|r| r.n_predictions).sum();
        let tested: Vec<_> = list
            .reports
            .into_iter()
            .filter(|r| r.detail.drift_verdict.is_some())
            .collect();
        if total as usize == sent {
            break tested;
        }
        assert!(
            Instant::now() < deadline,
            "{total} of {sent} predictions reported"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        tested.len() >= 20,
        "only {} windows were tested",
        tested.len()
    );
    let flagged = tested
        .iter()
        .filter(|r| r.drift.iter().any(|d| d.drifted))
        .count();
    println!(
        "observed: {flagged} of {} tested windows had a drifted column (rate {:.3}); {sent} predictions",
        tested.len(),
        flagged as f64 / tested.len() as f64
    );
    let mut heard = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), alerts.next()).await {
        heard.push(Envelope::<Alert>::from_bytes(&msg.payload).unwrap().data);
    }
    let drift: Vec<_> = heard
        .iter()
        .filter(|a| a.kind == AlertKind::Drift)
        .collect();
    assert!(
        drift.is_empty(),
        "normal traffic raised drift alerts: {drift:#?}"
    );
    println!(
        "other alerts: {:?}",
        heard.iter().map(|a| a.kind.as_str()).collect::<Vec<_>>()
    );
    stack.stop().await;
}

/// Penguins rows with their measurements shifted far from the training data.
fn shifted(
    rows: &[(Map<String, Value>, String)],
    n: usize,
    offset: usize,
) -> Vec<(Map<String, Value>, String)> {
    (0..n)
        .map(|i| &rows[(i * 97 + offset) % rows.len()])
        .map(|(f, s)| {
            let mut f = f.clone();
            for (col, delta) in [
                ("bill_length_mm", 12.0),
                ("flipper_length_mm", 25.0),
                ("body_mass_g", 1500.0),
            ] {
                if let Some(x) = f.get(col).and_then(Value::as_f64) {
                    f.insert(col.to_owned(), serde_json::json!(x + delta));
                }
            }
            (f, s.clone())
        })
        .collect()
}

/// The trainer's retraining history of penguins, and its entry for `alert`.
async fn retraining_of(trainer: &ApiClient, alert: uuid::Uuid) -> (Value, Option<Value>) {
    let h: Value = trainer
        .get("/v1/retraining/penguins/history")
        .await
        .unwrap();
    let mine = h["retrainings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["alert_id"] == serde_json::json!(alert))
        .cloned();
    (h, mine)
}

/// Closing the loop: drifted, labelled production traffic raises a drift alert; the trainer's
/// retraining policy ingests the labelled rows as a new dataset version (lineage through
/// ingest), trains on it, scores production on the new held-out rows too, and the new version
/// takes production only because it wins there. A second alert inside the cool-down starts
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift_retrains_on_labelled_production_data_and_promotes_only_a_winner() {
    use serde_json::json;
    let stack = Stack::start(&["--confirm-windows", "1"]).await;
    let trainer = ApiClient::new(stack.url("trainer"));
    let registry = RegistryClient::new(stack.url("registry"));
    const LABELLED: usize = 200;
    let policy: Value = trainer
        .put(
            "/v1/retraining/penguins",
            &json!({
                "mode": "recent",
                "alerts": ["drift"],
                "min_rows": LABELLED,
                "max_rows": 5000,
                "label_wait_seconds": 120,
                "cooldown_seconds": 3600,
            }),
        )
        .await
        .expect("the policy is set");
    assert_eq!(policy["mode"], "recent");
    train_and_serve(&stack).await;
    let mut alerts = stack.env.subscribe("alerts.>").await;

    let drifted = shifted(&samples(), LABELLED, 1);
    let served_accuracy = traffic(&stack, &drifted, "drifted").await;
    let drift = next_drift_alert(&mut alerts).await;

    // The retraining waits for the labels, ingests them, and the trainer trains on them.
    let deadline = Instant::now() + Duration::from_secs(120);
    let retraining = loop {
        let (h, mine) = retraining_of(&trainer, drift.id).await;
        if let Some(r) = mine {
            assert!(
                ["collecting", "requested"].contains(&r["status"].as_str().unwrap()),
                "{r}"
            );
            if r["status"] == "requested" {
                break r;
            }
        }
        assert!(Instant::now() < deadline, "no retraining: {h}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(retraining["rows"], LABELLED as i64, "{retraining}");
    assert_eq!(retraining["dataset_version"], 2, "{retraining}");
    let dataset_id = retraining["dataset_id"].clone();
    let job = loop {
        let jobs: Value = trainer.get("/v1/jobs").await.unwrap();
        let job = jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["dataset_id"] == dataset_id)
            .cloned();
        if let Some(j) = job.filter(|j| j["status"] == "succeeded") {
            break j;
        }
        assert!(
            Instant::now() < deadline,
            "the retraining job did not finish: {jobs}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };

    // Its version was compared with production on the same, recent, labelled rows.
    let version = job["model_version"].as_i64().unwrap() as i32;
    assert_eq!(version, 2);
    let v2 = registry.get_version("penguins", version).await.unwrap();
    let d = v2.promotion.clone().expect("a decision");
    assert_eq!(d.compared_on.as_deref(), Some("shared holdout"), "{d:?}");
    assert_eq!(d.champion_version, Some(1));
    let (candidate, champion) = (d.candidate.unwrap(), d.champion.unwrap());
    assert_eq!(
        d.promoted,
        candidate >= champion + d.policy.margin,
        "promoted exactly when it wins: {d:?}"
    );
    println!("retrained on {LABELLED} labelled rows: {}", d.reason);
    // Here it wins: the old model never saw such measurements, the new one learnt them.
    assert!(d.promoted, "{d:?}");
    assert!(champion < 0.9 && candidate > champion, "{d:?}");
    assert!(
        served_accuracy < 0.9,
        "served accuracy on drifted traffic {served_accuracy}"
    );
    let prod = registry
        .get_alias("penguins", "production")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(prod.version, 2);
    // Lineage: the run trained on the dataset ingest recorded.
    let run = registry.get_run(v2.run_id).await.unwrap();
    assert_eq!(run.params["dataset_id"], dataset_id.as_str().unwrap());
    assert_eq!(run.params["dataset_version"], "2");

    // Another alert inside the cool-down is recorded and starts nothing.
    let bus = stack.env.bus_as("petrel/monitor").await;
    let mut again = drift.data.clone();
    again.episode_id = Some(uuid::Uuid::now_v7());
    let env = bus.envelope(again);
    bus.publish(&env).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (h, mine) = retraining_of(&trainer, env.id).await;
        if let Some(r) = mine {
            assert_eq!(r["status"], "suppressed", "{r}");
            assert!(r["reason"].as_str().unwrap().contains("cool-down"), "{r}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second alert was not recorded: {h}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let jobs: Value = trainer.get("/v1/jobs").await.unwrap();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 2, "{jobs}");

    stack.stop().await;
}

/// Labelled generated reviews as request features and their sentiment.
fn review_rows(spec: &petrel_ml::ReviewSpec) -> Vec<(Map<String, Value>, String)> {
    let csv = petrel_ml::generate_reviews(spec).unwrap();
    petrel_ml::csv_to_json_rows(csv.as_bytes())
        .unwrap()
        .rows
        .into_iter()
        .map(|row| {
            let mut features = row.unwrap();
            let Some(Value::String(label)) = features.remove("sentiment") else {
                panic!("a generated review has a sentiment")
            };
            (features, label)
        })
        .collect()
}

/// The text model through the services: ingest generates a review feed, the trainer fits
/// hashed TF-IDF and an MLP head, the registry promotes it, the predictor serves raw text, and
/// a vocabulary shift in production traffic raises a drift alert on the text column's derived
/// features while same-kind traffic raises none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_text_model_is_trained_served_and_watched_for_vocabulary_drift() {
    let stack =
        Stack::start_serving("reviews", &["--epochs", "30"], &["--confirm-windows", "1"]).await;
    let mut alerts = stack.env.subscribe("alerts.>").await;
    let mut promoted = stack.env.subscribe("model.promoted").await;
    let resp = ingest(
        &stack,
        IngestRequest {
            name: "reviews".into(),
            schema: petrel_ml::Schema::reviews(),
            csv: None,
            path: None,
            uri: None,
            generate: Some(petrel_api::ingest::Generator::Reviews(
                petrel_ml::ReviewSpec::new(1500, 1),
            )),
            purpose: Default::default(),
            checks: Default::default(),
        },
    )
    .await;
    assert_eq!(resp.dataset.row_count, 1500);

    let production = promoted_to_production(&stack, &mut promoted, "reviews").await;
    let registry = RegistryClient::new(stack.url("registry"));
    let accuracy = production.metrics["test_accuracy"];
    assert!(accuracy > 0.85, "test accuracy {accuracy}");
    let run = registry.get_run(production.run_id).await.unwrap();
    assert_eq!(run.params["text_buckets"], "2048");
    assert_eq!(run.params["text_ngrams"], "2");

    wait_served(&stack, production.version).await;
    let predictor = ApiClient::new(stack.url("predictor"));
    // A text value of the wrong type is a 4xx naming the column, as for any column.
    let bad: Result<PredictResponse, _> = predictor
        .post(
            "/v1/predict",
            &serde_json::json!({"rows": [{"features": {"product": "phone", "review": [1, 2]}}]}),
        )
        .await;
    let err = bad.unwrap_err().to_string();
    assert!(err.contains("review"), "{err}");

    let normal = review_rows(&petrel_ml::ReviewSpec::new(90, 2));
    let acc = traffic(&stack, &normal, "normal").await;
    assert!(acc > 0.8, "accuracy on normal traffic {acc}");
    let first = first_report(&stack).await;
    assert!(
        !first.alerts.iter().any(|a| a == "drift"),
        "normal reviews raised drift: {first:?}"
    );

    let slang = review_rows(&petrel_ml::ReviewSpec {
        shift: 0.8,
        ..petrel_ml::ReviewSpec::new(90, 3)
    });
    let acc_shifted = traffic(&stack, &slang, "slang").await;
    assert!(acc_shifted < acc, "{acc_shifted} vs {acc}");
    let drift = next_drift_alert(&mut alerts).await.data;
    assert_eq!(drift.model_name, "reviews");
    let names = drift.details["drifted_features"].as_array().unwrap();
    assert!(
        names.iter().any(|n| n == "review.oov_share") && names.iter().any(|n| n == "review.tokens"),
        "{names:?}"
    );
    stack.stop().await;
}

/// The bundled digits as JSON features (the image as its CSV cell: space-separated pixels)
/// plus the digit.
fn digit_rows() -> Vec<(Map<String, Value>, String)> {
    let csv = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/digits.csv")).unwrap();
    petrel_ml::csv_to_json_rows(&csv)
        .unwrap()
        .rows
        .into_iter()
        .map(|row| {
            let mut features = row.unwrap();
            let label = match features.remove("digit") {
                Some(Value::Number(n)) => (n.as_f64().unwrap() as i64).to_string(),
                other => panic!("a digit, not {other:?}"),
            };
            (features, label)
        })
        .collect()
}

/// `features` with its image re-encoded: as a JSON array of pixel numbers, or as a base64 PNG.
fn image_as(features: &Map<String, Value>, png: bool) -> Map<String, Value> {
    let spec = petrel_ml::Schema::digits().features[0].image.unwrap();
    let pixels =
        petrel_ml::image::parse_image_text(features["image"].as_str().unwrap(), &spec).unwrap();
    let image = if png {
        Value::String(petrel_ml::image::encode_png_base64(&pixels, &spec))
    } else {
        serde_json::json!(pixels)
    };
    Map::from_iter([("image".to_owned(), image)])
}

/// The image CNN through the services: ingest takes the digits file, the trainer fits the CNN,
/// the registry promotes it, the predictor serves images sent as pixel arrays, base64 PNGs and
/// Open Inference Protocol tensors alike, and brighter production images raise a drift alert on
/// the image's mean intensity while images like training's raise none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_model_is_trained_served_as_pixels_and_pngs_and_watched_for_brightness_drift() {
    let stack = Stack::start_serving(
        "digits",
        &["--kind", "cnn", "--epochs", "8"],
        &["--confirm-windows", "1"],
    )
    .await;
    let mut alerts = stack.env.subscribe("alerts.>").await;
    let mut promoted = stack.env.subscribe("model.promoted").await;
    let csv = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/digits.csv"))
        .unwrap();
    let resp = ingest(
        &stack,
        IngestRequest {
            name: "digits".into(),
            schema: petrel_ml::Schema::digits(),
            csv: Some(csv),
            path: None,
            uri: None,
            generate: None,
            purpose: Default::default(),
            checks: Default::default(),
        },
    )
    .await;
    assert_eq!(resp.dataset.row_count, 1797);

    let production = promoted_to_production(&stack, &mut promoted, "digits").await;
    let accuracy = production.metrics["test_accuracy"];
    assert!(accuracy > 0.9, "test accuracy {accuracy}");
    let registry = RegistryClient::new(stack.url("registry"));
    let run = registry.get_run(production.run_id).await.unwrap();
    assert_eq!(run.params["model_kind"], "cnn");
    assert_eq!(run.params["channels"], "8");
    assert_eq!(run.tags["petrel.model_type"], "burn-cnn");

    wait_served(&stack, production.version).await;
    let predictor = ApiClient::new(stack.url("predictor"));
    let rows = digit_rows();
    // The same image as an array and as a PNG gets the same answer.
    let predict = |features: Map<String, Value>| {
        let predictor = &predictor;
        async move {
            let req = PredictRequest {
                rows: vec![PredictRow {
                    inference_id: None,
                    features,
                }],
            };
            let resp: Result<PredictResponse, _> = predictor.post("/v1/predict", &req).await;
            resp.map(|mut r| r.predictions.remove(0))
        }
    };
    let as_array = predict(image_as(&rows[0].0, false)).await.unwrap();
    let as_png = predict(image_as(&rows[0].0, true)).await.unwrap();
    assert_eq!(as_array.class, as_png.class);
    assert_eq!(as_array.class, rows[0].1);
    // A wrong-sized image is a 4xx naming the column and the size.
    let err = predict(Map::from_iter([(
        "image".to_owned(),
        serde_json::json!([1, 2, 3]),
    )]))
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("image") && err.contains("8x8"), "{err}");
    // The Open Inference Protocol: an FP32 [1, 8, 8] tensor and a BYTES PNG tensor.
    let pixels = image_as(&rows[0].0, false)["image"].clone();
    let png = image_as(&rows[0].0, true)["image"].clone();
    for (datatype, shape, data) in [
        ("FP32", serde_json::json!([1, 8, 8]), pixels),
        ("BYTES", serde_json::json!([1]), serde_json::json!([png])),
    ] {
        let body = serde_json::json!({"inputs": [
            {"name": "image", "datatype": datatype, "shape": shape, "data": data}
        ]});
        let resp: Value = predictor
            .post("/v2/models/digits/infer", &body)
            .await
            .unwrap_or_else(|e| panic!("{datatype}: {e}"));
        assert_eq!(
            resp["outputs"][0]["data"][0], as_array.class,
            "{datatype}: {resp}"
        );
    }

    // Production traffic: images like training's, half as arrays and half as PNGs.
    let sample = |offset: usize, png_every: usize| -> Vec<(Map<String, Value>, String)> {
        rows.iter()
            .skip(offset)
            .step_by(12)
            .take(90)
            .enumerate()
            .map(|(i, (f, label))| (image_as(f, i % png_every == 0), label.clone()))
            .collect()
    };
    let normal = sample(1, 2);
    let acc = traffic(&stack, &normal, "normal").await;
    assert!(acc > 0.85, "accuracy on normal traffic {acc}");
    let first = first_report(&stack).await;
    assert!(
        !first.alerts.iter().any(|a| a == "drift"),
        "images like training's raised drift: {first:?}"
    );

    // Brighter images (every pixel +5, within the image's range).
    let brighter: Vec<(Map<String, Value>, String)> = sample(7, 3)
        .into_iter()
        .map(|(f, label)| {
            let spec = petrel_ml::Schema::digits().features[0].image.unwrap();
            let pixels = petrel_ml::row_from_json(&f, &petrel_ml::Schema::digits()).unwrap();
            let Some(petrel_ml::Value::Pixels(p)) = pixels[0].clone() else {
                panic!("an image")
            };
            let bright: Vec<f32> = p.iter().map(|v| (v + 5.0).min(16.0)).collect();
            let image = Value::String(petrel_ml::image::encode_png_base64(&bright, &spec));
            (Map::from_iter([("image".to_owned(), image)]), label)
        })
        .collect();
    traffic(&stack, &brighter, "bright").await;
    let drift = next_drift_alert(&mut alerts).await.data;
    assert_eq!(drift.model_name, "digits");
    let names = drift.details["drifted_features"].as_array().unwrap();
    assert!(
        names.iter().any(|n| n == "image.mean_intensity"),
        "{names:?}"
    );
    stack.stop().await;
}
