//! End-to-end checks on the bundled Palmer Penguins data: parse, train, encode, decode, serve.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use petrel_ml::{
    LoadedModel, MlError, ModelBundle, Schema, Table, TrainConfig, Value, parse_csv, row_from_json,
    train_classifier,
};

const PENGUINS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/penguins.csv");

fn penguins() -> Table {
    let bytes = std::fs::read(PENGUINS).expect("penguins.csv is part of the repository");
    let report = parse_csv(&bytes, &Schema::penguins()).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    report.table
}

/// A trained bundle, how long training took, and every `(epoch, loss)` progress report.
type Trained = (ModelBundle, Duration, Vec<(usize, f64)>);

/// The default-config model, trained once and shared by the tests of this file.
fn trained() -> &'static Trained {
    static TRAINED: OnceLock<Trained> = OnceLock::new();
    TRAINED.get_or_init(|| {
        let table = penguins();
        let mut progress = Vec::new();
        let start = Instant::now();
        let bundle = train_classifier(&table, &TrainConfig::default(), &mut |e, l| {
            progress.push((e, l))
        })
        .unwrap();
        (bundle, start.elapsed(), progress)
    })
}

#[test]
fn default_training_reaches_95_percent_test_accuracy_quickly() {
    let (bundle, elapsed, progress) = trained();
    let m = &bundle.metrics;
    eprintln!("penguins metrics with defaults: {m:?}; training took {elapsed:?}");
    assert!(m.test_accuracy >= 0.95, "test accuracy {}", m.test_accuracy);
    assert!(m.test_macro_f1 >= 0.9, "macro F1 {}", m.test_macro_f1);
    assert!(
        m.test_log_loss.is_finite() && m.test_log_loss < 0.3,
        "{}",
        m.test_log_loss
    );
    assert_eq!(m.n_train + m.n_test, 344);
    assert_eq!(m.n_test, 69, "20% of each species, rounded per class");
    assert_eq!(bundle.class_names, vec!["Adelie", "Chinstrap", "Gentoo"]);
    assert!(elapsed.as_secs_f64() < 10.0, "training took {elapsed:?}");

    // Progress is reported, ends on the last epoch and shows the loss going down.
    let epochs = TrainConfig::default().epochs;
    assert!(progress.len() >= 10);
    assert_eq!(progress.last().map(|p| p.0), Some(epochs));
    assert!(
        progress.last().unwrap().1 < progress[0].1 / 2.0,
        "{progress:?}"
    );
}

#[test]
fn training_is_deterministic_for_a_seed() {
    let table = penguins();
    let config = TrainConfig {
        epochs: 60,
        ..TrainConfig::default()
    };
    let run = |config: &TrainConfig| train_classifier(&table, config, &mut |_, _| {}).unwrap();
    let (a, b) = (run(&config), run(&config));
    assert_eq!(a.metrics, b.metrics);
    assert_eq!(a.weights, b.weights);
    assert_eq!(a.preprocessor, b.preprocessor);
    assert_eq!(a.reference, b.reference);
    let c = run(&TrainConfig { seed: 7, ..config });
    assert_ne!(a.weights, c.weights, "a different seed changes the model");
}

/// Minibatches (`batch_size` below the split) are shuffled from the seed: reproducible, as
/// good a model in fewer epochs, and different weights from full-batch training.
#[test]
fn minibatch_training_is_deterministic_and_learns() {
    let table = penguins();
    let config = TrainConfig {
        epochs: 30,
        batch_size: 32,
        ..TrainConfig::default()
    };
    let mut reports = Vec::new();
    let a = train_classifier(&table, &config, &mut |e, l| reports.push((e, l))).unwrap();
    let b = train_classifier(&table, &config, &mut |_, _| {}).unwrap();
    assert_eq!(a.weights, b.weights);
    assert!(a.metrics.test_accuracy >= 0.95, "{:?}", a.metrics);
    assert_eq!(reports.last().map(|r| r.0), Some(30));
    assert!(
        reports.iter().all(|(_, l)| l.is_finite() && *l > 0.0),
        "{reports:?}"
    );
    let full = train_classifier(
        &table,
        &TrainConfig {
            batch_size: 0,
            ..config.clone()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_ne!(a.weights, full.weights);
    // A batch as large as the split is full-batch training, exactly.
    let whole = train_classifier(
        &table,
        &TrainConfig {
            batch_size: 10_000,
            ..config
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(whole.weights, full.weights);
}

#[test]
fn reference_profile_describes_the_training_split() {
    let (bundle, ..) = trained();
    let r = &bundle.reference;
    let n_train = bundle.metrics.n_train;
    assert_eq!(r.numeric.len(), 5);
    assert_eq!(r.categorical.len(), 2);
    // Two penguins lack all measurements; the training split holds at most those two.
    let bills = &r.numeric["bill_length_mm"];
    assert!(bills.len() <= n_train && bills.len() >= n_train - 2);
    assert!(bills.iter().all(|b| (30.0..60.0).contains(b)));
    let islands = &r.categorical["island"];
    assert_eq!(islands.values().sum::<u64>(), n_train as u64);
    assert_eq!(
        islands.keys().collect::<Vec<_>>(),
        vec!["Biscoe", "Dream", "Torgersen"]
    );
    assert!(
        !r.categorical["sex"].contains_key("NA"),
        "missing values are not a category"
    );
}

#[test]
fn bundle_round_trips_to_identical_predictions() {
    let (bundle, ..) = trained();
    let bytes = bundle.to_bytes().unwrap();
    let decoded = ModelBundle::from_bytes(&bytes).unwrap();
    assert_eq!(decoded.to_bytes().unwrap(), bytes, "re-encoding is stable");
    assert_eq!(decoded.preprocessor, bundle.preprocessor);
    assert_eq!(decoded.weights, bundle.weights);
    assert_eq!(decoded.reference, bundle.reference);
    assert_eq!(decoded.metrics, bundle.metrics);
    assert_eq!(decoded.config, bundle.config);

    let rows = penguins().rows;
    let original = bundle.load().unwrap().predict(&rows);
    let again = decoded.load().unwrap().predict(&rows);
    assert_eq!(original, again);
    assert_eq!(original.len(), 344);
}

#[test]
fn garbage_and_foreign_bundles_are_rejected_clearly() {
    let expect = |bytes: &[u8], needle: &str| match ModelBundle::from_bytes(bytes) {
        Err(e @ MlError::Bundle(_)) => assert!(e.to_string().contains(needle), "{e}"),
        other => panic!("accepted or wrong error: {:?}", other.map(|_| ())),
    };
    expect(b"", "not a Petrel model bundle");
    expect(b"\x00\x01garbage\xff", "not a Petrel model bundle");
    expect(b"{\"hello\": 1}", "not a Petrel model bundle");
    expect(b"[1, 2, 3]", "not a Petrel model bundle");

    let (bundle, ..) = trained();
    let mut json: serde_json::Value = serde_json::from_slice(&bundle.to_bytes().unwrap()).unwrap();
    json["format_version"] = 99.into();
    expect(
        &serde_json::to_vec(&json).unwrap(),
        "unsupported bundle format_version 99",
    );

    json["format_version"] = 1.into();
    json["class_names"] = serde_json::json!(["Adelie", "Gentoo"]);
    expect(&serde_json::to_vec(&json).unwrap(), "outputs for 2 classes");

    json["class_names"] = serde_json::json!(["Adelie", "Chinstrap", "Gentoo"]);
    json["weights"]["hidden"]["inputs"] = 3.into();
    expect(&serde_json::to_vec(&json).unwrap(), "inconsistent");

    json["weights"] = serde_json::json!("nope");
    expect(
        &serde_json::to_vec(&json).unwrap(),
        "malformed model bundle",
    );

    let bytes = bundle.to_bytes().unwrap();
    expect(&bytes[..bytes.len() / 2], "not a Petrel model bundle");
}

#[test]
fn loaded_model_is_shareable_and_serves_json_rows() {
    fn assert_shareable<T: Send + Sync + 'static>() {}
    assert_shareable::<LoadedModel>();
    assert_shareable::<ModelBundle>();

    let (bundle, ..) = trained();
    let model = std::sync::Arc::new(bundle.load().unwrap());
    assert_eq!(model.schema(), &Schema::penguins());
    assert_eq!(model.class_names().len(), 3);

    let gentoo = serde_json::json!({
        "island": "Biscoe", "bill_length_mm": 47.5, "bill_depth_mm": 14.2,
        "flipper_length_mm": 220, "body_mass_g": "5200", "sex": "female", "year": 2008,
        "species": "ignored"
    });
    let adelie = serde_json::json!({
        "island": "Torgersen", "bill_length_mm": 38.8, "bill_depth_mm": 19.0,
        "flipper_length_mm": 188, "body_mass_g": 3650, "sex": null
    });
    let rows: Vec<_> = [gentoo, adelie]
        .iter()
        .map(|v| row_from_json(v.as_object().unwrap(), model.schema()).unwrap())
        .collect();
    assert_eq!(rows[1][5], None, "null means missing");
    assert_eq!(rows[0][4], Some(Value::Num(5200.0)));

    // Predict from another thread, as the predictor does from request tasks.
    let shared = model.clone();
    let predictions = std::thread::spawn(move || shared.predict(&rows))
        .join()
        .unwrap();
    assert_eq!(predictions[0].class, "Gentoo");
    assert_eq!(predictions[1].class, "Adelie");
    for p in &predictions {
        let sum: f32 = p.probabilities.values().sum();
        assert!((sum - 1.0).abs() < 1e-5);
        assert_eq!(p.confidence, p.probabilities[&p.class]);
        assert!(p.probabilities.values().all(|q| *q <= p.confidence));
    }

    // Unknown categories and fully missing rows still get an answer.
    let odd = model
        .row_from_json(
            serde_json::json!({"island": "Atlantis"})
                .as_object()
                .unwrap(),
        )
        .unwrap();
    assert_eq!(model.predict(&[odd]).len(), 1);
    assert!(matches!(
        model.row_from_json(serde_json::json!({"flipper": 1}).as_object().unwrap()),
        Err(MlError::UnknownColumn(c)) if c == "flipper"
    ));
}
