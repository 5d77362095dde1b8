//! Stratified k-fold cross-validation and hyperparameter sweeps over it.
//!
//! Both work on the *training* split of [`train_classifier`](crate::train_classifier)'s stratified split only, so the
//! test rows a bundle is finally scored on are never seen while choosing its settings: the
//! sweep picks a configuration by its mean cross-validated score, then [`sweep`] trains that
//! configuration once on the whole training split and scores it once on the test split.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::rng::SeededRng;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::train::{Prepared, Scores, fit};
use crate::{MlError, ModelBundle, Stop, Table, TrainConfig, train_classifier_until};

/// Most folds [`cross_validate`] accepts.
pub const MAX_FOLDS: usize = 20;
/// Most trials one sweep may run.
pub const MAX_TRIALS: usize = 1000;

/// Stratified fold assignment: each class's rows are shuffled (seeded) and dealt round-robin
/// into `k` folds, so every fold has each class's share of rows, give or take one. Returns the
/// fold of each position of `labels`.
#[must_use]
pub fn stratified_folds(labels: &[usize], k: usize, seed: u64) -> Vec<usize> {
    let k = k.max(1);
    let mut by_class: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        by_class.entry(l).or_default().push(i);
    }
    let mut rng = SeededRng::seed_from_u64(seed);
    let mut fold = vec![0; labels.len()];
    // Continue the deal across classes, so small classes do not all start in fold 0.
    let mut next = 0;
    for members in by_class.values_mut() {
        members.shuffle(&mut rng);
        for &i in members.iter() {
            fold[i] = next % k;
            next += 1;
        }
    }
    fold
}

/// Mean and spread (population standard deviation, as `numpy.std`) of one metric over folds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub mean: f64,
    pub std: f64,
}

impl Spread {
    fn of(values: impl Iterator<Item = f64> + Clone) -> Spread {
        let n = values.clone().count().max(1) as f64;
        let mean = values.clone().sum::<f64>() / n;
        let var = values.map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        Spread {
            mean,
            std: var.sqrt(),
        }
    }
}

/// One fold's validation scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FoldScore {
    pub fold: usize,
    pub scores: Scores,
    /// Rows the fold's model was fitted on, and rows it was scored on.
    pub n_fit: usize,
    pub n_validation: usize,
    /// Epochs trained, and the epoch kept when early stopping was on.
    pub epochs_run: usize,
    pub best_epoch: Option<usize>,
    /// The training loss as the fold's model trained: `(epoch, loss)` about 20 times over the
    /// epochs, and for the last epoch (the learning curve a trial's run shows).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub train_loss: Vec<(usize, f64)>,
}

/// What [`cross_validate`] measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CrossValidation {
    pub folds: Vec<FoldScore>,
    pub accuracy: Spread,
    pub log_loss: Spread,
    pub macro_f1: Spread,
    /// How the rows were split, for the record: the test split left out and the folds.
    pub split: String,
}

impl CrossValidation {
    /// The metrics as flat names (`cv_accuracy_mean`, `cv_accuracy_std`, ...), as a run logs
    /// them.
    #[must_use]
    pub fn metric_map(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (name, s) in [
            ("accuracy", self.accuracy),
            ("log_loss", self.log_loss),
            ("macro_f1", self.macro_f1),
        ] {
            out.insert(format!("cv_{name}_mean"), s.mean);
            out.insert(format!("cv_{name}_std"), s.std);
        }
        out
    }

    /// The epoch count that served the folds best: the median of their best epochs when
    /// early stopping chose them, else what they trained.
    #[must_use]
    pub fn typical_epochs(&self) -> usize {
        let mut e: Vec<usize> = self
            .folds
            .iter()
            .map(|f| f.best_epoch.unwrap_or(f.epochs_run))
            .collect();
        e.sort_unstable();
        e.get(e.len() / 2).copied().unwrap_or(1).max(1)
    }
}

/// Stratified `folds`-fold cross-validation of `config` on the training split of `table`
/// (the test split that [`train_classifier`](crate::train_classifier) would hold out with the same config is left
/// out entirely). Each fold fits preprocessing and the network on the other folds and is
/// scored on its own rows. `progress(fold, epoch, loss)` reports training as it goes.
///
/// # Errors
///
/// [`MlError::Training`] for fewer than 2 or more than [`MAX_FOLDS`] folds, a training split
/// too small to give every fold two rows, or any error training itself reports.
pub fn cross_validate(
    table: &Table,
    config: &TrainConfig,
    folds: usize,
    progress: &mut dyn FnMut(usize, usize, f64),
    stop: &Stop,
) -> Result<CrossValidation, MlError> {
    config.validate()?;
    if !(2..=MAX_FOLDS).contains(&folds) {
        return Err(MlError::Training(format!(
            "folds must be between 2 and {MAX_FOLDS}"
        )));
    }
    let data = Prepared::new(table)?;
    let (train_idx, _) = data.split(config)?;
    if train_idx.len() < 2 * folds {
        return Err(MlError::Training(format!(
            "{folds} folds need at least {} training rows, got {}",
            2 * folds,
            train_idx.len()
        )));
    }
    let train_labels = data.labels_of(&train_idx);
    let assignment = stratified_folds(&train_labels, folds, config.seed ^ 0xF01D);
    let k = data.classes();
    let mut scores = Vec::with_capacity(folds);
    for fold in 0..folds {
        let (mut fit_idx, mut val_idx) = (Vec::new(), Vec::new());
        for (pos, &f) in assignment.iter().enumerate() {
            if f == fold {
                val_idx.push(train_idx[pos]);
            } else {
                fit_idx.push(train_idx[pos]);
            }
        }
        let fit_rows = data.rows(&fit_idx);
        let fit_labels = data.labels_of(&fit_idx);
        let mut curve = Vec::new();
        let fitted = fit(
            &table.schema,
            &fit_rows,
            &fit_labels,
            k,
            config,
            &mut |epoch, loss| {
                curve.push((epoch, loss));
                progress(fold, epoch, loss)
            },
            stop,
        )?;
        let val_x = fitted.preprocessor.transform(&data.rows(&val_idx));
        let probs = fitted.scorer.probabilities(&val_x);
        scores.push(FoldScore {
            fold,
            scores: Scores::of(&probs, &data.labels_of(&val_idx), k),
            n_fit: fitted.fit_rows,
            n_validation: val_idx.len(),
            epochs_run: fitted.epochs_run,
            best_epoch: fitted.best_epoch,
            train_loss: curve,
        });
    }
    Ok(CrossValidation {
        accuracy: Spread::of(scores.iter().map(|f| f.scores.accuracy)),
        log_loss: Spread::of(scores.iter().map(|f| f.scores.log_loss)),
        macro_f1: Spread::of(scores.iter().map(|f| f.scores.macro_f1)),
        split: format!(
            "stratified {folds}-fold over the training split (test split {} left out, seed {})",
            config.test_fraction, config.seed
        ),
        folds: scores,
    })
}

/// The values a sweep tries for each setting; an empty list keeps the base configuration's
/// value. The grid is every combination, in order (the last setting varies fastest).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweepGrid {
    pub hidden_size: Vec<usize>,
    pub depth: Vec<usize>,
    pub learning_rate: Vec<f64>,
    pub epochs: Vec<usize>,
    pub dropout: Vec<f64>,
    pub weight_decay: Vec<f64>,
    /// Gradient-boosted trees: boosting rounds, tree depth and learning rate.
    pub rounds: Vec<usize>,
    pub max_depth: Vec<usize>,
    pub eta: Vec<f64>,
    /// Rows per optimisation step (MLP and CNN).
    pub batch_size: Vec<usize>,
    /// CNN: channels of the first convolution block.
    pub channels: Vec<usize>,
}

/// A sweep: the grid, the folds each trial is cross-validated on, how many trials run at
/// once, and optionally a random sample of the grid instead of all of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweepSpec {
    pub grid: SweepGrid,
    pub folds: usize,
    /// Trials trained at the same time (each on one core).
    pub concurrency: usize,
    /// Random search: this many distinct grid points, drawn with the base seed.
    pub samples: Option<usize>,
}

impl Default for SweepSpec {
    fn default() -> SweepSpec {
        SweepSpec {
            grid: SweepGrid::default(),
            folds: 5,
            concurrency: 2,
            samples: None,
        }
    }
}

impl SweepSpec {
    /// How many trials [`trials`](Self::trials) makes: the grid's size, or `samples` when that
    /// is smaller.
    pub fn count(&self) -> usize {
        let total = self.grid_points();
        self.samples.map_or(total, |s| s.min(total))
    }

    /// The points of the grid (saturating at `usize::MAX` for absurd grids, which `trials`
    /// refuses).
    fn grid_points(&self) -> usize {
        let g = &self.grid;
        [
            g.hidden_size.len(),
            g.depth.len(),
            g.learning_rate.len(),
            g.epochs.len(),
            g.dropout.len(),
            g.weight_decay.len(),
            g.rounds.len(),
            g.max_depth.len(),
            g.eta.len(),
            g.batch_size.len(),
            g.channels.len(),
        ]
        .iter()
        .map(|&n| n.max(1))
        .try_fold(1usize, |acc, n| acc.checked_mul(n))
        .unwrap_or(usize::MAX)
    }

    /// The configurations to try, each `base` with one grid point applied and validated.
    ///
    /// # Errors
    ///
    /// [`MlError::Training`] when the grid is empty of points, too large, or a point is not a
    /// valid configuration (the message names the trial and the setting).
    pub fn trials(&self, base: &TrainConfig) -> Result<Vec<TrainConfig>, MlError> {
        /// Every configuration of `out` with each of `values` set (none: `out` as it is).
        fn expand<T: Copy>(
            out: Vec<TrainConfig>,
            values: &[T],
            set: fn(&mut TrainConfig, T),
        ) -> Vec<TrainConfig> {
            if values.is_empty() {
                return out;
            }
            out.into_iter()
                .flat_map(|c| {
                    values.iter().map(move |&v| {
                        let mut c = c.clone();
                        set(&mut c, v);
                        c
                    })
                })
                .collect()
        }
        let g = &self.grid;
        let total = self.grid_points();
        let wanted = self.count();
        if wanted == 0 {
            return Err(MlError::Training("a sweep needs at least one trial".into()));
        }
        if wanted > MAX_TRIALS {
            return Err(MlError::Training(format!(
                "the sweep has {wanted} trials; the most is {MAX_TRIALS} (use samples for a random search)"
            )));
        }
        if total > 100 * MAX_TRIALS {
            return Err(MlError::Training(format!(
                "the grid has {total} points; the most is {}",
                100 * MAX_TRIALS
            )));
        }
        // The first setting varies slowest.
        let mut out = vec![base.clone()];
        out = expand(out, &g.hidden_size, |c, v| c.hidden_size = v);
        out = expand(out, &g.depth, |c, v| c.depth = v);
        out = expand(out, &g.learning_rate, |c, v| c.learning_rate = v);
        out = expand(out, &g.epochs, |c, v| c.epochs = v);
        out = expand(out, &g.dropout, |c, v| c.dropout = v);
        out = expand(out, &g.weight_decay, |c, v| c.weight_decay = v);
        out = expand(out, &g.rounds, |c, v| c.rounds = v);
        out = expand(out, &g.max_depth, |c, v| c.max_depth = v);
        out = expand(out, &g.eta, |c, v| c.eta = v);
        out = expand(out, &g.batch_size, |c, v| c.batch_size = v);
        out = expand(out, &g.channels, |c, v| c.channels = v);
        if wanted < total {
            let mut rng = SeededRng::seed_from_u64(base.seed ^ 0x5A3B);
            out.shuffle(&mut rng);
            out.truncate(wanted);
        }
        for (i, c) in out.iter().enumerate() {
            c.validate()
                .map_err(|e| MlError::Training(format!("trial {}: {e}", i + 1)))?;
        }
        Ok(out)
    }
}

/// One trial of a sweep: its configuration and cross-validated scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// 0-based, in grid order.
    pub index: usize,
    pub config: TrainConfig,
    pub cv: CrossValidation,
}

/// What [`sweep`] found: every trial, the chosen one, and the final bundle.
#[derive(Debug)]
pub struct SweepOutcome {
    pub trials: Vec<Trial>,
    /// Index into `trials` of the chosen configuration.
    pub best: usize,
    /// The chosen configuration trained on the whole training split and scored once on the
    /// test split.
    pub bundle: ModelBundle,
}

/// What a running [`sweep`] reports, from the worker thread that runs each trial (so one
/// trial's calls come in order). Every method does nothing unless implemented; `()` observes
/// nothing.
pub trait SweepObserver: Sync {
    /// Trial `index` starts training with `config`.
    fn started(&self, index: usize, config: &TrainConfig) {
        let _ = (index, config);
    }
    /// A fold model of trial `index` (fold 0-based) reached `epoch` with training loss `loss`:
    /// the points its [`FoldScore::train_loss`] keeps, as they are made.
    fn epoch(&self, index: usize, fold: usize, epoch: usize, loss: f64) {
        let _ = (index, fold, epoch, loss);
    }
    /// Trial `index` finished; a failed or stopped trial does not report.
    fn finished(&self, trial: &Trial) {
        let _ = trial;
    }
}

impl SweepObserver for () {}

/// Runs every trial of `spec` (cross-validated, up to `spec.concurrency` at once), picks the
/// highest mean cross-validated accuracy (then the lowest mean log loss, then the first in
/// grid order), and trains it on the whole training split, with the epochs its folds found
/// best when early stopping was on. `observer` hears of each trial as it starts, trains and
/// finishes.
///
/// `earlier` holds trials an interrupted run of the same sweep already finished: each one
/// whose index and configuration match this sweep's is kept as it is instead of trained
/// again (training is deterministic, so the outcome is the same), and is not reported.
///
/// # Errors
///
/// The first trial's error in grid order, or the final training's.
pub fn sweep(
    table: &Table,
    base: &TrainConfig,
    spec: &SweepSpec,
    earlier: &[Trial],
    observer: &dyn SweepObserver,
    stop: &Stop,
) -> Result<SweepOutcome, MlError> {
    let configs = spec.trials(base)?;
    let mut kept: Vec<Option<Result<Trial, MlError>>> = (0..configs.len()).map(|_| None).collect();
    for t in earlier {
        if configs.get(t.index) == Some(&t.config) {
            kept[t.index] = Some(Ok(t.clone()));
        }
    }
    let todo: Vec<usize> = (0..configs.len()).filter(|&i| kept[i].is_none()).collect();
    let workers = spec.concurrency.clamp(1, 64).min(todo.len());
    let next = AtomicUsize::new(0);
    let results = Mutex::new(kept);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some(&i) = todo.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let config = &configs[i];
                    observer.started(i, config);
                    let r = cross_validate(
                        table,
                        config,
                        spec.folds,
                        &mut |fold, epoch, loss| observer.epoch(i, fold, epoch, loss),
                        stop,
                    )
                    .map(|cv| Trial {
                        index: i,
                        config: config.clone(),
                        cv,
                    });
                    if let Ok(t) = &r {
                        observer.finished(t);
                    }
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    let trials = results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every trial ran"))
        .collect::<Result<Vec<Trial>, MlError>>()?;
    let best = (0..trials.len())
        .reduce(|a, b| {
            let (x, y) = (&trials[a].cv, &trials[b].cv);
            let better = y.accuracy.mean > x.accuracy.mean
                || (y.accuracy.mean == x.accuracy.mean && y.log_loss.mean < x.log_loss.mean);
            if better { b } else { a }
        })
        .unwrap_or(0);
    let chosen = &trials[best];
    let final_config = if chosen.config.patience > 0 {
        TrainConfig {
            epochs: chosen.cv.typical_epochs(),
            patience: 0,
            ..chosen.config.clone()
        }
    } else {
        chosen.config.clone()
    };
    let bundle = train_classifier_until(table, &final_config, &mut |_, _| {}, stop)?;
    Ok(SweepOutcome {
        trials,
        best,
        bundle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_are_stratified_and_cover_every_row() {
        let labels: Vec<usize> = (0..103).map(|i| usize::from(i % 4 == 0)).collect();
        let folds = stratified_folds(&labels, 5, 3);
        for f in 0..5 {
            let members: Vec<usize> = (0..labels.len()).filter(|&i| folds[i] == f).collect();
            let ones = members.iter().filter(|&&i| labels[i] == 1).count();
            // 26 of class 1 over 5 folds: 5 or 6 each; 77 of class 0: 15 or 16 each.
            assert!((5..=6).contains(&ones), "fold {f}: {ones}");
            assert!(
                (20..=22).contains(&members.len()),
                "fold {f}: {}",
                members.len()
            );
        }
        assert_eq!(folds, stratified_folds(&labels, 5, 3));
        assert_ne!(folds, stratified_folds(&labels, 5, 4));
    }

    #[test]
    fn spread_is_numpys_mean_and_std() {
        let s = Spread::of([0.9, 0.8, 1.0, 0.7].into_iter());
        assert!((s.mean - 0.85).abs() < 1e-12);
        // numpy.std([0.9, 0.8, 1.0, 0.7]) = 0.11180339887498948
        assert!((s.std - 0.111_803_398_874_989_48).abs() < 1e-12);
    }

    #[test]
    fn the_grid_is_every_combination_or_a_seeded_sample() {
        let spec = SweepSpec {
            grid: SweepGrid {
                hidden_size: vec![8, 16, 32],
                learning_rate: vec![0.01, 0.1],
                dropout: vec![0.0, 0.2],
                ..SweepGrid::default()
            },
            ..SweepSpec::default()
        };
        let base = TrainConfig::default();
        let all = spec.trials(&base).unwrap();
        assert_eq!(all.len(), 12);
        assert_eq!(
            (all[0].hidden_size, all[0].learning_rate, all[0].dropout),
            (8, 0.01, 0.0)
        );
        assert_eq!((all[1].hidden_size, all[1].dropout), (8, 0.2));
        assert!(all.iter().all(|c| c.epochs == base.epochs));
        let sampled = SweepSpec {
            samples: Some(5),
            ..spec.clone()
        };
        let some = sampled.trials(&base).unwrap();
        assert_eq!(some.len(), 5);
        assert_eq!(some, sampled.trials(&base).unwrap());
        let bad = SweepSpec {
            grid: SweepGrid {
                dropout: vec![1.5],
                ..SweepGrid::default()
            },
            ..SweepSpec::default()
        };
        let e = bad.trials(&base).unwrap_err().to_string();
        assert!(e.contains("trial 1") && e.contains("dropout"), "{e}");
        let json: SweepSpec = serde_json::from_str(r#"{"grid": {"depth": [1, 2]}}"#).unwrap();
        assert_eq!(json.folds, 5);
        assert!(serde_json::from_str::<SweepSpec>(r#"{"grid": {"width": [1]}}"#).is_err());
    }
}
