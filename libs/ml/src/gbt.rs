//! Gradient-boosted trees for tabular data, through the `forust-ml` crate: the drop-in for an
//! XGBoost template (`rounds`, `max_depth`, `eta`). They take the same preprocessed inputs as
//! the MLP (the bundle's [`Preprocessor`](crate::Preprocessor)), so training, serving and
//! monitoring are the same code for both.
//!
//! Two classes are one booster on the log-odds of the second; more are one booster per class
//! (one-vs-rest) whose log-odds become probabilities through a softmax. Training runs on one
//! thread with the configuration's seed, so the same data and seed give the same trees.

use std::sync::Arc;

use forust_ml::objective::ObjectiveType;
use forust_ml::{GradientBooster, Matrix};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{MlError, Stop, TrainConfig};

/// A fitted ensemble. Boosters are shared (`Arc`): a loaded model is cloned into every served
/// slot, and a booster is never changed after training.
#[derive(Clone, Serialize, Deserialize)]
pub struct Trees {
    /// Inputs per row (the preprocessor's width).
    pub inputs: usize,
    /// Classes the model answers with.
    pub classes: usize,
    /// One booster for two classes, else one per class.
    #[serde(serialize_with = "write_boosters", deserialize_with = "read_boosters")]
    pub boosters: Vec<Arc<GradientBooster>>,
}

fn write_boosters<S: Serializer>(b: &[Arc<GradientBooster>], s: S) -> Result<S::Ok, S::Error> {
    let plain: Vec<&GradientBooster> = b.iter().map(|b| &**b).collect();
    plain.serialize(s)
}

fn read_boosters<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Arc<GradientBooster>>, D::Error> {
    Ok(Vec::<GradientBooster>::deserialize(d)?
        .into_iter()
        .map(Arc::new)
        .collect())
}

impl std::fmt::Debug for Trees {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trees")
            .field("inputs", &self.inputs)
            .field("classes", &self.classes)
            .field("boosters", &self.boosters.len())
            .finish()
    }
}

impl PartialEq for Trees {
    /// Equal when they encode the same: boosters have no equality of their own.
    fn eq(&self, other: &Trees) -> bool {
        self.inputs == other.inputs
            && self.classes == other.classes
            && serde_json::to_value(self).ok() == serde_json::to_value(other).ok()
    }
}

impl Trees {
    /// Fits on `x` (row-major, `inputs` wide) with labels in `0..classes`; `stop` is checked
    /// between boosters.
    pub fn fit(
        x: &[f32],
        inputs: usize,
        labels: &[usize],
        classes: usize,
        config: &TrainConfig,
        stop: &Stop,
    ) -> Result<Trees, MlError> {
        let rows = labels.len();
        if rows == 0 || inputs == 0 || x.len() != rows * inputs {
            return Err(MlError::Training(
                "gradient-boosted trees need at least one row and one input".into(),
            ));
        }
        let columns = column_major(x, rows, inputs);
        let data = Matrix::new(&columns, rows, inputs);
        let targets: Vec<usize> = if classes == 2 {
            vec![1]
        } else {
            (0..classes).collect()
        };
        let mut boosters = Vec::with_capacity(targets.len());
        for class in targets {
            if stop.is_stopped() {
                return Err(MlError::Cancelled);
            }
            let y: Vec<f64> = labels
                .iter()
                .map(|&l| if l == class { 1.0 } else { 0.0 })
                .collect();
            let mut booster = GradientBooster::default()
                .set_objective_type(ObjectiveType::LogLoss)
                .set_iterations(config.rounds)
                .set_max_depth(config.max_depth)
                .set_learning_rate(config.eta as f32)
                .set_parallel(false)
                .set_seed(config.seed);
            booster
                .fit_unweighted(&data, &y, None)
                .map_err(|e| MlError::Training(format!("gradient boosting: {e}")))?;
            boosters.push(Arc::new(booster));
        }
        Ok(Trees {
            inputs,
            classes,
            boosters,
        })
    }

    /// Class probabilities for one encoded row; `probs` must be `classes` long.
    pub fn probabilities_into(&self, x: &[f32], probs: &mut [f32]) {
        let row: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let data = Matrix::new(&row, 1, self.inputs);
        let log_odds: Vec<f64> = self
            .boosters
            .iter()
            .map(|b| b.predict(&data, false)[0])
            .collect();
        self.finish(&log_odds, probs);
    }

    /// Class probabilities for a row-major `[n, inputs]` matrix, row-major `[n, classes]`; the
    /// same numbers as [`probabilities_into`](Self::probabilities_into) row by row.
    pub fn probabilities(&self, matrix: &[f32]) -> Vec<f32> {
        let rows = matrix.len() / self.inputs.max(1);
        let columns = column_major(matrix, rows, self.inputs);
        let data = Matrix::new(&columns, rows, self.inputs);
        let per_booster: Vec<Vec<f64>> = self
            .boosters
            .iter()
            .map(|b| b.predict(&data, false))
            .collect();
        let mut out = vec![0.0; rows * self.classes];
        let mut log_odds = vec![0.0; self.boosters.len()];
        for (r, probs) in out.chunks_exact_mut(self.classes.max(1)).enumerate() {
            for (b, values) in per_booster.iter().enumerate() {
                log_odds[b] = values[r];
            }
            self.finish(&log_odds, probs);
        }
        out
    }

    /// Log-odds to probabilities: a sigmoid for one booster, a softmax for one per class.
    fn finish(&self, log_odds: &[f64], probs: &mut [f32]) {
        if self.boosters.len() == 1 {
            let p1 = 1.0 / (1.0 + (-log_odds[0]).exp());
            probs[0] = (1.0 - p1) as f32;
            probs[1] = p1 as f32;
            return;
        }
        let max = log_odds.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = log_odds.iter().map(|v| (v - max).exp()).sum();
        for (p, v) in probs.iter_mut().zip(log_odds) {
            *p = ((v - max).exp() / sum) as f32;
        }
    }

    /// Checks the parts agree: a booster per class (one for two), and at least one input.
    pub fn validate(&self) -> Result<(), String> {
        if self.inputs == 0 {
            return Err("the trees take no inputs".into());
        }
        let want = if self.classes == 2 { 1 } else { self.classes };
        if self.classes < 2 || self.boosters.len() != want {
            return Err(format!(
                "{} boosters for {} classes (want {want})",
                self.boosters.len(),
                self.classes
            ));
        }
        Ok(())
    }
}

fn column_major(x: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * cols];
    for (r, row) in x.chunks_exact(cols).enumerate() {
        for (c, v) in row.iter().enumerate() {
            out[c * rows + r] = f64::from(*v);
        }
    }
    out
}
