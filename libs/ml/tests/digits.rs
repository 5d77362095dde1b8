//! The image CNN on the bundled handwritten digits (`data/digits.csv`, scikit-learn's copy of
//! the UCI set): trained on the training split, scored on the held-out split, served from its
//! bundle with pixel arrays and PNGs alike.

use std::time::Instant;

use petrel_ml::image::{encode_png_base64, idx_to_csv, read_idx_images, read_idx_labels};
use petrel_ml::{
    Holdout, ModelBundle, ModelKind, Schema, Table, TrainConfig, Value, parse_csv, row_from_json,
    train_classifier,
};

const DIGITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/digits.csv");

fn digits() -> Table {
    let bytes = std::fs::read(DIGITS).unwrap();
    let report = parse_csv(&bytes, &Schema::digits()).unwrap();
    assert!(report.errors.is_empty(), "{:?}", &report.errors[..1]);
    report.table
}

/// The configuration the tests, the demo and the benchmark train the digits CNN with.
fn cnn() -> TrainConfig {
    TrainConfig {
        kind: ModelKind::Cnn,
        epochs: 12,
        ..TrainConfig::default()
    }
}

#[test]
fn the_cnn_learns_digits_and_serves_what_it_was_scored_with() {
    let table = digits();
    assert_eq!(table.len(), 1797);
    let started = Instant::now();
    let mut epochs = Vec::new();
    let bundle = train_classifier(&table, &cnn(), &mut |e, loss| epochs.push((e, loss))).unwrap();
    eprintln!(
        "digits CNN trained in {:?}: {:?}",
        started.elapsed(),
        bundle.metrics
    );
    assert_eq!(bundle.format_version, 5);
    assert_eq!(bundle.kind(), ModelKind::Cnn);
    assert!(bundle.cnn.is_some() && bundle.weights.is_none() && bundle.trees.is_none());
    let m = &bundle.metrics;
    assert_eq!((m.n_train, m.n_test), (1438, 359));
    assert!(m.test_accuracy >= 0.95, "test accuracy {}", m.test_accuracy);
    // Progress is heard every epoch, and the training loss falls.
    assert_eq!(epochs.len(), 12);
    assert!(epochs[11].1 < epochs[0].1 / 4.0, "{epochs:?}");
    // The monitor's reference: intensity statistics of every training image.
    let profile = &bundle.reference.image["image"];
    assert_eq!(profile.mean_intensity.len(), 1438);
    assert!(
        profile
            .mean_intensity
            .iter()
            .all(|m| (0.0..=1.0).contains(m))
    );

    // Deterministic for a fixed seed.
    let again = train_classifier(&table, &cnn(), &mut |_, _| {}).unwrap();
    assert_eq!(bundle.cnn, again.cnn);
    assert_eq!(bundle.metrics, again.metrics);

    // The bundle round-trips, and serving reproduces the held-out scores exactly.
    let decoded = ModelBundle::from_bytes(&bundle.to_bytes().unwrap()).unwrap();
    assert_eq!(decoded.cnn, bundle.cnn);
    let served = decoded.load().unwrap();
    let holdout = Holdout::of(&table, &cnn()).unwrap();
    let s = holdout.score(&served).unwrap();
    assert_eq!(s.accuracy, m.test_accuracy);
    assert_eq!(s.log_loss, m.test_log_loss);

    // A request may send the pixels as an array, nested rows, or a PNG: same answer.
    let schema = Schema::digits();
    let Some(Value::Pixels(pixels)) = holdout.rows()[0][0].clone() else {
        panic!("an image")
    };
    let spec = schema.features[0].image.unwrap();
    let flat = serde_json::json!({ "image": pixels });
    let nested: Vec<Vec<f32>> = pixels.chunks(8).map(<[f32]>::to_vec).collect();
    let nested = serde_json::json!({ "image": nested });
    let png = serde_json::json!({ "image": encode_png_base64(&pixels, &spec) });
    let answer = |row: &serde_json::Value| {
        let row = row_from_json(row.as_object().unwrap(), &schema).unwrap();
        served.try_predict(&[row]).unwrap().remove(0)
    };
    let want = answer(&flat);
    assert_eq!(answer(&nested), want);
    // 0..16 pixels survive an 8-bit PNG up to rounding (1/255 of the range).
    assert_eq!(answer(&png).class, want.class);
    // A wrong size is refused, naming the column.
    let err = row_from_json(
        serde_json::json!({ "image": [1, 2, 3] })
            .as_object()
            .unwrap(),
        &schema,
    )
    .unwrap_err();
    assert!(err.to_string().contains("image"), "{err}");
    assert!(err.to_string().contains("3 pixel values"), "{err}");
}

#[test]
fn the_mlp_and_trees_take_image_columns_as_flat_pixels() {
    let table = digits();
    let config = TrainConfig {
        epochs: 100,
        ..TrainConfig::default()
    };
    let bundle = train_classifier(&table, &config, &mut |_, _| {}).unwrap();
    assert_eq!(bundle.format_version, 5);
    assert!(bundle.metrics.test_accuracy >= 0.9, "{:?}", bundle.metrics);
    let err = train_classifier(&penguins(), &cnn(), &mut |_, _| {}).unwrap_err();
    assert!(
        err.to_string().contains("exactly one image column"),
        "{err}"
    );
}

/// The bundled penguins, a schema without an image column.
fn penguins() -> Table {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/penguins.csv"
    ))
    .unwrap();
    parse_csv(&bytes, &Schema::penguins()).unwrap().table
}

/// IDX files as Fashion-MNIST ships them (here a small one the test writes) become a CSV the
/// digits schema's shape can read.
#[test]
fn idx_files_become_a_trainable_csv() {
    let (n, h, w) = (40usize, 8u32, 8u32);
    let mut images = vec![0, 0, 8, 3];
    for d in [n as u32, h, w] {
        images.extend_from_slice(&d.to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend_from_slice(&(n as u32).to_be_bytes());
    for i in 0..n {
        // Class 0 is bright on the left half, class 1 on the right.
        let class = (i % 2) as u8;
        for _y in 0..h {
            for x in 0..w {
                let left = x < w / 2;
                images.push(if left == (class == 0) { 200 } else { 10 });
            }
        }
        labels.push(class);
    }
    let csv = idx_to_csv(
        &read_idx_images(&images).unwrap(),
        &read_idx_labels(&labels).unwrap(),
        None,
    )
    .unwrap();
    let schema = Schema {
        features: vec![petrel_ml::Column::image("image", 8, 8, 255.0)],
        target: "label".into(),
    };
    let table = parse_csv(&csv, &schema).unwrap().table;
    assert_eq!(table.len(), n);
    let bundle = train_classifier(
        &table,
        &TrainConfig {
            epochs: 20,
            batch_size: 8,
            ..cnn()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(bundle.metrics.test_accuracy, 1.0, "{:?}", bundle.metrics);
}
