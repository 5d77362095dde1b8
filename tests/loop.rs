//! The whole loop, end to end: the six services run together against the real Postgres and
//! NATS; the test drives them over HTTP like a user and waits for an alert on `alerts.>` like a
//! subscriber would. Every hop must work for the alert to arrive.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use petrel_api::ApiClient;
use petrel_api::ingest::{IngestRequest, IngestResponse};
use petrel_api::labeler::{LabelInput, LabelsRequest, LabelsResponse};
use petrel_api::monitor::ReportList;
use petrel_api::predictor::{PredictRequest, PredictResponse, PredictRow, ServedModel};
use petrel_api::registry::RegistryClient;
use petrel_events::Envelope;
use petrel_events::payloads::{Alert, AlertKind, ModelPromoted};
use serde_json::{Map, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PENGUINS: &str = include_str!("../data/penguins.csv");

struct Stack {
    urls: BTreeMap<&'static str, String>,
    prefix: String,
    cancel: CancellationToken,
    handles: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
}

fn args(bin: &str, common: &[String], extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        bin.to_owned(),
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
    ];
    v.extend(common.iter().cloned());
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

macro_rules! start {
    ($stack:ident, $name:literal, $krate:ident, $args:expr) => {{
        let app = $krate::App::build($krate::Config::parse_from($args), $stack.cancel.clone())
            .await
            .expect(concat!($name, " starts"));
        $stack
            .urls
            .insert($name, format!("http://127.0.0.1:{}", app.port()));
        $stack.handles.push(($name, tokio::spawn(app.run())));
    }};
}

impl Stack {
    /// Starts the six services on free ports, sharing a fresh database, a fresh NATS namespace
    /// and a fresh artifact directory.
    async fn start() -> Stack {
        let db = petrel_db::testing::fresh_database_url();
        let prefix = format!("e2e{}", uuid::Uuid::now_v7().simple());
        let artifacts =
            std::env::temp_dir().join(format!("petrel-e2e-{}", uuid::Uuid::now_v7().simple()));
        let common: Vec<String> = vec![
            "--database-url".into(),
            db,
            "--nats-prefix".into(),
            prefix.clone(),
        ];
        let store: Vec<String> = vec!["--artifact-root".into(), artifacts.display().to_string()];
        let mut stack = Stack {
            urls: BTreeMap::new(),
            prefix,
            cancel: CancellationToken::new(),
            handles: Vec::new(),
        };
        let with_store: Vec<String> = common.iter().chain(store.iter()).cloned().collect();

        start!(
            stack,
            "registry",
            petrel_registry,
            args("petrel-registry", &common, &[])
        );
        let registry = stack.urls["registry"].clone();
        start!(
            stack,
            "ingest",
            petrel_ingest,
            args("petrel-ingest", &with_store, &[])
        );
        start!(
            stack,
            "trainer",
            petrel_trainer,
            args(
                "petrel-trainer",
                &with_store,
                &["--registry-url", &registry]
            )
        );
        start!(
            stack,
            "predictor",
            petrel_predictor,
            args(
                "petrel-predictor",
                &with_store,
                &["--registry-url", &registry]
            )
        );
        start!(
            stack,
            "labeler",
            petrel_labeler,
            args("petrel-labeler", &common, &[])
        );
        start!(
            stack,
            "monitor",
            petrel_monitor,
            args(
                "petrel-monitor",
                &with_store,
                &[
                    "--registry-url",
                    &registry,
                    "--window-size",
                    "60",
                    "--min-window",
                    "30",
                    "--window-max-secs",
                    "3"
                ]
            )
        );
        stack
    }

    fn url(&self, name: &str) -> &str {
        &self.urls[name]
    }

    /// Cancels every service and checks each one shut down cleanly.
    async fn stop(self) {
        self.cancel.cancel();
        for (name, handle) in self.handles {
            let result = tokio::time::timeout(Duration::from_secs(40), handle)
                .await
                .unwrap_or_else(|_| panic!("{name} did not stop in time"))
                .unwrap_or_else(|e| panic!("{name} panicked: {e}"));
            assert!(result.is_ok(), "{name} stopped with an error: {result:?}");
        }
    }
}

/// Penguins rows as JSON features plus the species.
fn samples() -> Vec<(Map<String, Value>, String)> {
    let mut reader = csv::Reader::from_reader(PENGUINS.as_bytes());
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            let mut features = Map::new();
            let mut species = String::new();
            for (h, v) in headers.iter().zip(r.iter()) {
                if h == "species" {
                    species = v.to_owned();
                    continue;
                }
                let value = match v.parse::<f64>() {
                    _ if v == "NA" => Value::Null,
                    Ok(x) => serde_json::json!(x),
                    Err(_) => Value::String(v.to_owned()),
                };
                features.insert(h.to_owned(), value);
            }
            (features, species)
        })
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
                assert_eq!(p.model_name, "penguins");
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
            .post("/v1/labels", &LabelsRequest { labels })
            .await
            .expect("labels");
        assert_eq!(r.accepted, chunk.len());
    }
    correct as f64 / rows.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn csv_to_alert() {
    let stack = Stack::start().await;
    let nats = async_nats::connect("127.0.0.1:4222").await.expect("NATS");
    let mut alerts = nats
        .subscribe(format!("{}.alerts.>", stack.prefix))
        .await
        .unwrap();
    let mut promoted = nats
        .subscribe(format!("{}.model.promoted", stack.prefix))
        .await
        .unwrap();

    // 1. ingest
    let ingest = ApiClient::new(stack.url("ingest"));
    let resp: IngestResponse = ingest
        .post(
            "/v1/datasets",
            &IngestRequest {
                name: "penguins".into(),
                schema: petrel_ml::Schema::penguins(),
                csv: Some(PENGUINS.to_owned()),
                path: None,
            },
        )
        .await
        .expect("ingest");
    assert!(resp.created);
    assert_eq!(resp.dataset.row_count, 344);

    // 2-3. trainer trains and registers; registry promotes and announces it
    let msg = tokio::time::timeout(Duration::from_secs(120), promoted.next())
        .await
        .expect("a model is promoted")
        .unwrap();
    let event = Envelope::<ModelPromoted>::from_bytes(&msg.payload).unwrap();
    assert_eq!(event.data.model_name, "penguins");
    assert_eq!(event.data.alias, "production");
    let registry = RegistryClient::new(stack.url("registry"));
    let production = registry
        .get_alias("penguins", "production")
        .await
        .unwrap()
        .expect("alias set");
    let accuracy = production.metrics["test_accuracy"];
    assert!(accuracy >= 0.95, "test accuracy {accuracy}");
    let run = registry.get_run(production.run_id).await.unwrap();
    assert_eq!(run.params["seed"], "42");

    // 4. the predictor loads it
    let predictor = ApiClient::new(stack.url("predictor"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(m) = predictor.get::<ServedModel>("/v1/model").await {
            assert_eq!(m.model_version, production.version);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the predictor never loaded the model"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 5-6. normal traffic: accurate, labelled, and no alert
    let rows = samples();
    // The file is ordered by species: spread the sample over it (97 is coprime to 344).
    let spread = |offset: usize| (0..90).map(move |i| (i * 97 + offset) % 344);
    let normal: Vec<_> = spread(0).map(|i| rows[i].clone()).collect();
    let acc = traffic(&stack, &normal, "normal").await;
    assert!(acc > 0.9, "accuracy on normal traffic {acc}");
    let monitor = ApiClient::new(stack.url("monitor"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let list: ReportList = monitor.get("/v1/reports").await.unwrap();
        if let Some(r) = list.reports.last() {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "no report for normal traffic");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(first.n_predictions >= 30);
    assert!(
        !first.alerts.iter().any(|a| a == "drift"),
        "normal traffic raised drift: {first:?}"
    );

    // drifted traffic: shifted measurements must raise a drift alert
    let drifted: Vec<_> = spread(1)
        .map(|i| &rows[i])
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
        .collect();
    traffic(&stack, &drifted, "drifted").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let drift = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, alerts.next())
            .await
            .expect("an alert arrives on alerts.>")
            .unwrap();
        let alert = Envelope::<Alert>::from_bytes(&msg.payload).expect("a well-formed alert");
        if alert.data.kind == AlertKind::Drift {
            break alert.data;
        }
    };
    assert_eq!(drift.model_name, "penguins");
    let names = drift.details["drifted_features"].as_object().unwrap();
    assert!(names.contains_key("bill_length_mm"), "{names:?}");
    // The alert points at a stored report listing it.
    let report: petrel_api::monitor::Report = monitor
        .get(&format!("/v1/reports/{}", drift.report_id))
        .await
        .unwrap();
    assert!(report.alerts.iter().any(|a| a == "drift"));

    stack.stop().await;
}
