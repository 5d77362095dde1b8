//! Gradient-boosted trees on the bundled Palmer Penguins data: the same bundle, serving and
//! held-out evaluation as the MLP.

use petrel_ml::{
    BUNDLE_FORMAT_VERSION, Holdout, ModelBundle, ModelKind, Schema, Stop, SweepGrid, SweepSpec,
    Table, TrainConfig, cross_validate, parse_csv, sweep, train_classifier,
};

const PENGUINS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/penguins.csv");

fn penguins() -> Table {
    let bytes = std::fs::read(PENGUINS).unwrap();
    parse_csv(&bytes, &Schema::penguins()).unwrap().table
}

fn gbt() -> TrainConfig {
    TrainConfig {
        kind: ModelKind::Gbt,
        rounds: 50,
        ..TrainConfig::default()
    }
}

#[test]
fn trees_learn_penguins_and_serve_what_they_were_scored_with() {
    let table = penguins();
    let bundle = train_classifier(&table, &gbt(), &mut |_, _| {}).unwrap();
    assert_eq!(bundle.format_version, 3);
    assert_eq!(BUNDLE_FORMAT_VERSION, 5);
    assert_eq!(bundle.kind(), ModelKind::Gbt);
    assert!(bundle.weights.is_none() && bundle.trees.is_some());
    let m = &bundle.metrics;
    assert!(m.test_accuracy >= 0.95, "test accuracy {}", m.test_accuracy);
    assert_eq!(m.n_test, 69);
    // Deterministic for a fixed seed.
    let again = train_classifier(&table, &gbt(), &mut |_, _| {}).unwrap();
    assert_eq!(bundle.trees, again.trees);
    assert_eq!(bundle.metrics, again.metrics);
    // The bundle round-trips, and the served model answers what the held-out scores came from:
    // the candidate scored through the serving path reproduces its test metrics exactly.
    let decoded = ModelBundle::from_bytes(&bundle.to_bytes().unwrap()).unwrap();
    assert_eq!(decoded.trees, bundle.trees);
    let served = decoded.load().unwrap();
    let s = Holdout::of(&table, &gbt()).unwrap().score(&served).unwrap();
    assert_eq!(s.accuracy, m.test_accuracy);
    assert_eq!(s.log_loss, m.test_log_loss);
    assert_eq!(s.macro_f1, m.test_macro_f1);
    let held_out = bundle.held_out.as_ref().unwrap();
    let predictions = served.predict(Holdout::of(&table, &gbt()).unwrap().rows());
    for (p, (class, confidence)) in predictions
        .iter()
        .zip(held_out.predicted.iter().zip(&held_out.confidence))
    {
        assert_eq!(&p.class, class);
        assert_eq!(p.confidence, *confidence);
        let total: f32 = p.probabilities.values().sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
    }
}

#[test]
fn two_classes_take_one_booster_and_bad_settings_are_named() {
    let mut table = penguins();
    for t in &mut table.targets {
        if t != "Adelie" {
            *t = "other".into();
        }
    }
    let bundle = train_classifier(&table, &gbt(), &mut |_, _| {}).unwrap();
    assert_eq!(bundle.trees.as_ref().unwrap().boosters.len(), 1);
    assert!(bundle.metrics.test_accuracy >= 0.95, "{:?}", bundle.metrics);
    for (config, needle) in [
        (TrainConfig { rounds: 0, ..gbt() }, "rounds"),
        (
            TrainConfig {
                max_depth: 0,
                ..gbt()
            },
            "max_depth",
        ),
        (TrainConfig { eta: 2.0, ..gbt() }, "eta"),
    ] {
        let e = train_classifier(&table, &config, &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
    }
    let kind: TrainConfig = serde_json::from_str(r#"{"kind": "gbt"}"#).unwrap();
    assert_eq!(kind.kind, ModelKind::Gbt);
    assert!(serde_json::from_str::<TrainConfig>(r#"{"kind": "svm"}"#).is_err());
}

#[test]
fn trees_cross_validate_and_sweep_over_depth_and_rounds() {
    let table = penguins();
    let cv = cross_validate(&table, &gbt(), 3, &mut |_, _, _| {}, &Stop::new()).unwrap();
    assert_eq!(cv.folds.len(), 3);
    assert!(cv.accuracy.mean > 0.9, "{:?}", cv.accuracy);
    let spec = SweepSpec {
        grid: SweepGrid {
            rounds: vec![10, 40],
            max_depth: vec![2, 4],
            ..SweepGrid::default()
        },
        folds: 3,
        concurrency: 2,
        samples: None,
    };
    let trials = spec.trials(&gbt()).unwrap();
    let points: Vec<(usize, usize)> = trials.iter().map(|c| (c.rounds, c.max_depth)).collect();
    assert_eq!(points, vec![(10, 2), (10, 4), (40, 2), (40, 4)]);
    let outcome = sweep(&table, &gbt(), &spec, &[], &(), &Stop::new()).unwrap();
    assert_eq!(outcome.trials.len(), 4);
    assert_eq!(outcome.bundle.kind(), ModelKind::Gbt);
    let best = &outcome.trials[outcome.best];
    assert_eq!(outcome.bundle.config.rounds, best.config.rounds);
}
