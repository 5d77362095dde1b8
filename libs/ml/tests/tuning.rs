//! Deeper networks, dropout, early stopping, cross-validation and sweeps on the bundled
//! Palmer Penguins data.

use std::sync::Mutex;

use petrel_ml::{
    LoadedModel, MlError, Schema, Stop, SweepGrid, SweepObserver, SweepSpec, Table, TrainConfig,
    Trial, cross_validate, parse_csv, sweep, train_classifier, train_classifier_until,
};

const PENGUINS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/penguins.csv");

fn penguins() -> Table {
    let bytes = std::fs::read(PENGUINS).expect("penguins.csv is part of the repository");
    parse_csv(&bytes, &Schema::penguins()).unwrap().table
}

fn quick() -> TrainConfig {
    TrainConfig {
        epochs: 120,
        ..TrainConfig::default()
    }
}

#[test]
fn a_deeper_network_with_dropout_learns_and_serves_the_same_answers() {
    let table = penguins();
    let config = TrainConfig {
        depth: 3,
        hidden_size: 16,
        dropout: 0.2,
        ..quick()
    };
    let bundle = train_classifier(&table, &config, &mut |_, _| {}).unwrap();
    assert_eq!(bundle.weights.as_ref().unwrap().deeper.len(), 2);
    assert!(bundle.metrics.test_accuracy >= 0.93, "{:?}", bundle.metrics);
    // Dropout masks come from the seed: the same config gives the same weights.
    let again = train_classifier(&table, &config, &mut |_, _| {}).unwrap();
    assert_eq!(bundle.weights, again.weights);
    // The bundle round-trips and serves through the plain forward pass.
    let json = serde_json::to_vec(&bundle).unwrap();
    let model: LoadedModel = petrel_ml::ModelBundle::from_bytes(&json)
        .unwrap()
        .load()
        .unwrap();
    // A deeper network is format version 2, which builds that know only version 1 refuse;
    // labelled version 1 it is refused here too, rather than served without its layers.
    assert_eq!(bundle.format_version, 2);
    let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    v["format_version"] = 1.into();
    let e = petrel_ml::ModelBundle::from_bytes(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(e.to_string().contains("needs version 2"), "{e}");
    let shallow = train_classifier(&table, &quick(), &mut |_, _| {}).unwrap();
    assert_eq!(
        shallow.format_version, 1,
        "one hidden layer stays readable by older builds"
    );
    let predictions = model.predict(&table.rows[..20]);
    let right = predictions
        .iter()
        .zip(&table.targets)
        .filter(|(p, t)| &p.class == *t)
        .count();
    assert!(right >= 18, "{right} of 20");
}

#[test]
fn early_stopping_keeps_the_best_epoch_and_stops_before_the_limit() {
    let table = penguins();
    let config = TrainConfig {
        epochs: 5000,
        patience: 20,
        learning_rate: 0.05,
        ..TrainConfig::default()
    };
    let mut last = 0;
    let bundle = train_classifier(&table, &config, &mut |e, _| last = e).unwrap();
    let m = &bundle.metrics;
    let best = m
        .best_epoch
        .expect("early stopping records the epoch it kept");
    assert!(m.epochs_run < 5000, "{m:?}");
    assert_eq!(m.epochs_run, best + 20, "{m:?}");
    assert_eq!(
        last, m.epochs_run,
        "progress ends on the last epoch trained"
    );
    assert!(m.test_accuracy >= 0.95, "{m:?}");
    // The validation rows come out of the training split.
    assert_eq!(m.n_test, 69);
    assert!(m.n_train < 344 - 69, "{m:?}");
}

#[test]
fn cross_validation_reports_every_fold_and_never_sees_the_test_split() {
    let table = penguins();
    let mut seen = Vec::new();
    let cv = cross_validate(
        &table,
        &quick(),
        5,
        &mut |fold, _, _| seen.push(fold),
        &Stop::new(),
    )
    .unwrap();
    assert_eq!(cv.folds.len(), 5);
    // 275 training rows (344 less the 69 held out) dealt into 5 folds.
    assert_eq!(cv.folds.iter().map(|f| f.n_validation).sum::<usize>(), 275);
    for f in &cv.folds {
        assert_eq!(f.n_fit + f.n_validation, 275, "{f:?}");
        assert!(f.scores.accuracy >= 0.85, "{f:?}");
    }
    assert!(cv.accuracy.mean >= 0.93, "{cv:?}");
    assert!(cv.accuracy.std < 0.06, "{cv:?}");
    let by_hand = cv.folds.iter().map(|f| f.scores.accuracy).sum::<f64>() / 5.0;
    assert!((cv.accuracy.mean - by_hand).abs() < 1e-12);
    assert!(seen.contains(&0) && seen.contains(&4));
    let metrics = cv.metric_map();
    assert!(metrics.contains_key("cv_accuracy_mean") && metrics.contains_key("cv_log_loss_std"));
    assert!(cv.split.contains("5-fold"), "{}", cv.split);
    assert_eq!(
        cv,
        cross_validate(&table, &quick(), 5, &mut |_, _, _| {}, &Stop::new()).unwrap()
    );
    let e = cross_validate(&table, &quick(), 1, &mut |_, _, _| {}, &Stop::new()).unwrap_err();
    assert!(e.to_string().contains("folds"), "{e}");
}

#[test]
fn a_sweep_cross_validates_each_trial_and_trains_the_best_once() {
    let table = penguins();
    let spec = SweepSpec {
        grid: SweepGrid {
            // A learning rate far too small cannot learn in 40 epochs; the sweep must not pick it.
            learning_rate: vec![1e-5, 0.05],
            hidden_size: vec![4, 16],
            epochs: vec![40],
            ..SweepGrid::default()
        },
        folds: 3,
        concurrency: 2,
        samples: None,
    };
    let heard = Heard::default();
    let outcome = sweep(
        &table,
        &TrainConfig::default(),
        &spec,
        &[],
        &heard,
        &Stop::new(),
    )
    .unwrap();
    assert_eq!(outcome.trials.len(), 4);
    assert_eq!(heard.started(), vec![0, 1, 2, 3]);
    assert_eq!(heard.finished(), vec![0, 1, 2, 3]);
    // Each trial's epochs were heard as they trained: exactly the learning curves it keeps.
    for t in &outcome.trials {
        let mut streamed = heard.epochs_of(t.index);
        let mut kept: Vec<(usize, usize, u64)> =
            t.cv.folds
                .iter()
                .flat_map(|f| f.train_loss.iter().map(|&(e, l)| (f.fold, e, l.to_bits())))
                .collect();
        streamed.sort_unstable();
        kept.sort_unstable();
        assert_eq!(streamed, kept, "trial {}", t.index);
    }
    let best = &outcome.trials[outcome.best];
    assert_eq!(best.config.learning_rate, 0.05, "{:?}", best.config);
    for t in &outcome.trials {
        assert!(t.cv.accuracy.mean <= best.cv.accuracy.mean);
    }
    // The final bundle is the chosen configuration, scored once on the test split.
    assert_eq!(outcome.bundle.config, best.config);
    assert_eq!(outcome.bundle.metrics.n_test, 69);
    assert!(outcome.bundle.metrics.test_accuracy >= 0.9);
}

#[test]
fn a_stop_ends_training_a_cross_validation_and_a_sweep_within_an_epoch() {
    let table = penguins();
    let long = TrainConfig {
        epochs: 2_000,
        ..TrainConfig::default()
    };
    // Set at the 3rd reported epoch (of 20): training ends at the next one, long before 2,000.
    let stop = Stop::new();
    let mut last = 0;
    let err = train_classifier_until(
        &table,
        &long,
        &mut |epoch, _| {
            last = epoch;
            if epoch >= 300 {
                stop.stop();
            }
        },
        &stop,
    )
    .unwrap_err();
    assert!(matches!(err, MlError::Cancelled), "{err}");
    assert_eq!(last, 300);
    // Already stopped: nothing trains.
    let err =
        cross_validate(&table, &long, 5, &mut |_, _, _| panic!("trained"), &stop).unwrap_err();
    assert!(matches!(err, MlError::Cancelled), "{err}");
    let spec = SweepSpec {
        grid: SweepGrid {
            learning_rate: vec![0.01, 0.05],
            ..SweepGrid::default()
        },
        folds: 3,
        concurrency: 2,
        samples: None,
    };
    let err = sweep(&table, &long, &spec, &[], &NoTrialFinishes, &stop).unwrap_err();
    assert!(matches!(err, MlError::Cancelled), "{err}");
    assert_eq!(err.to_string(), "training was cancelled");
}

/// Records what a sweep reported.
#[derive(Default)]
struct Heard {
    started: Mutex<Vec<usize>>,
    epochs: Mutex<Vec<(usize, usize, usize, u64)>>,
    finished: Mutex<Vec<usize>>,
}

impl Heard {
    fn started(&self) -> Vec<usize> {
        let mut v = self.started.lock().unwrap().clone();
        v.sort_unstable();
        v
    }
    fn finished(&self) -> Vec<usize> {
        let mut v = self.finished.lock().unwrap().clone();
        v.sort_unstable();
        v
    }
    fn epochs_of(&self, trial: usize) -> Vec<(usize, usize, u64)> {
        self.epochs
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.0 == trial)
            .map(|&(_, f, e, l)| (f, e, l))
            .collect()
    }
}

impl SweepObserver for Heard {
    fn started(&self, index: usize, _: &TrainConfig) {
        self.started.lock().unwrap().push(index);
    }
    fn epoch(&self, index: usize, fold: usize, epoch: usize, loss: f64) {
        self.epochs
            .lock()
            .unwrap()
            .push((index, fold, epoch, loss.to_bits()));
    }
    fn finished(&self, trial: &Trial) {
        // A trial finishes once, after it started.
        assert!(self.started.lock().unwrap().contains(&trial.index));
        self.finished.lock().unwrap().push(trial.index);
    }
}

struct NoTrialFinishes;

impl SweepObserver for NoTrialFinishes {
    fn finished(&self, _: &Trial) {
        panic!("a trial finished");
    }
}

#[test]
fn a_resumed_sweep_keeps_the_trials_it_finished_and_ends_as_an_uninterrupted_one() {
    let table = penguins();
    let spec = SweepSpec {
        grid: SweepGrid {
            learning_rate: vec![0.01, 0.05],
            hidden_size: vec![8, 16],
            epochs: vec![30],
            ..SweepGrid::default()
        },
        folds: 3,
        concurrency: 2,
        samples: None,
    };
    let base = TrainConfig::default();
    let whole = sweep(&table, &base, &spec, &[], &(), &Stop::new()).unwrap();
    // An interrupted run finished trials 0 and 2; trial 3's record is for another configuration
    // (the sweep changed), so it must be trained again rather than trusted.
    let mut stale = whole.trials[3].clone();
    stale.config.hidden_size = 99;
    let earlier = vec![whole.trials[0].clone(), whole.trials[2].clone(), stale];
    let heard = Heard::default();
    let resumed = sweep(&table, &base, &spec, &earlier, &heard, &Stop::new()).unwrap();
    assert_eq!(heard.started(), vec![1, 3]);
    assert_eq!(heard.finished(), vec![1, 3]);
    assert_eq!(resumed.trials, whole.trials);
    assert_eq!(resumed.best, whole.best);
    assert_eq!(resumed.bundle.metrics, whole.bundle.metrics);
}
