//! The penguins data set and a model trained on it: the realistic data every test uses.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use petrel_api::registry::{CreateModelVersion, CreateRun, ModelVersion, RegistryClient};
use petrel_ml::{ColumnKind, ModelBundle, Schema, TrainConfig, parse_csv, train_classifier};
use serde_json::{Map, Value};

use crate::{Service, TestEnv};

/// The penguins CSV in the repository (`data/penguins.csv`).
pub const PENGUINS_CSV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/penguins.csv");

/// The penguins' species, which are the model's classes, in its order.
pub const SPECIES: [&str; 3] = ["Adelie", "Chinstrap", "Gentoo"];

/// The text of the penguins CSV.
pub fn penguins_csv() -> String {
    std::fs::read_to_string(PENGUINS_CSV).expect("data/penguins.csv is in the repository")
}

/// The rows of the penguins CSV as `(species, features)`, features as a JSON object of column
/// name to number, string, or null for `NA`: what a client sends to the predictor.
pub fn penguin_rows() -> Vec<(String, Map<String, Value>)> {
    let text = penguins_csv();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let schema = Schema::penguins();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut species = String::new();
            let mut features = Map::new();
            for (name, raw) in header.iter().zip(line.split(',')) {
                if *name == schema.target {
                    species = raw.to_owned();
                    continue;
                }
                let kind = schema.features[schema.feature_index(name).unwrap()].kind;
                let value = match (raw, kind) {
                    ("NA", _) => Value::Null,
                    (_, ColumnKind::Numeric) => serde_json::json!(raw.parse::<f64>().unwrap()),
                    (_, ColumnKind::Categorical | ColumnKind::Text | ColumnKind::Image) => {
                        Value::String(raw.to_owned())
                    }
                };
                features.insert((*name).to_owned(), value);
            }
            (species, features)
        })
        .collect()
}

/// The penguins model trained with the default configuration, once per test binary, since
/// training takes a while and every test can share the result.
pub fn bundle() -> &'static ModelBundle {
    static BUNDLE: OnceLock<ModelBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let bytes = std::fs::read(PENGUINS_CSV).unwrap();
        let report = parse_csv(&bytes, &Schema::penguins()).unwrap();
        train_classifier(&report.table, &TrainConfig::default(), &mut |_, _| {}).unwrap()
    })
}

/// A review sentiment model (product and review text, 30 epochs) trained on 1,500 generated
/// reviews, once per test binary.
pub fn reviews_bundle() -> &'static ModelBundle {
    static BUNDLE: OnceLock<ModelBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let csv = petrel_ml::generate_reviews(&petrel_ml::ReviewSpec::new(1500, 21)).unwrap();
        let report = parse_csv(csv.as_bytes(), &Schema::reviews()).unwrap();
        let config = TrainConfig {
            epochs: 30,
            ..TrainConfig::default()
        };
        train_classifier(&report.table, &config, &mut |_, _| {}).unwrap()
    })
}

/// The bundled digits file (`data/digits.csv`).
pub fn digits_csv() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/digits.csv"
    ))
    .unwrap()
}

/// A digits model (an MLP over the 64 pixels, 30 epochs: the monitor watches images the same
/// whatever the model), once per test binary.
pub fn digits_bundle() -> &'static ModelBundle {
    static BUNDLE: OnceLock<ModelBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let report = parse_csv(&digits_csv(), &Schema::digits()).unwrap();
        let config = TrainConfig {
            epochs: 30,
            ..TrainConfig::default()
        };
        train_classifier(&report.table, &config, &mut |_, _| {}).unwrap()
    })
}

/// Stores the [`bundle`] under `key` in the test's artifact store and registers it with the
/// `registry` as a new version of `penguins` from a new run, as the trainer would. The registry
/// promotes it to `production` when its accuracy is at least production's.
pub async fn register_model(env: &TestEnv, registry: &Service, key: &str) -> ModelVersion {
    let bundle = bundle();
    let store = petrel_store::open(env.artifact_root()).unwrap();
    let uri = store
        .put(key, bytes::Bytes::from(bundle.to_bytes().unwrap()))
        .await
        .unwrap();
    let client = RegistryClient::new(&registry.base);
    let run = client
        .create_run(&CreateRun {
            experiment: "penguins".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let metrics = BTreeMap::from([("test_accuracy".to_owned(), bundle.metrics.test_accuracy)]);
    client
        .create_version(
            "penguins",
            &CreateModelVersion {
                run_id: run.id,
                artifact_uri: uri,
                metrics,
                // Every registration of this bundle is evaluated on the same held-out rows,
                // so a later one ties with production and the policy promotes it.
                evaluation: Some(petrel_api::registry::Evaluation {
                    dataset_id: uuid::Uuid::from_u128(0x7065_6e67_7569_6e73_0000_0000_0000_0001),
                    digest: "sha256:penguins-testkit".into(),
                    split: format!(
                        "stratified test split {}, seed {}",
                        bundle.config.test_fraction, bundle.config.seed
                    ),
                    rows: bundle.metrics.n_test as u64,
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap()
}
