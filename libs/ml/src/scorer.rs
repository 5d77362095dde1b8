//! What turns encoded inputs into class probabilities: an MLP's weights or an ensemble of
//! gradient-boosted trees.

use crate::{MlpWeights, Trees};

/// A trained model's parameters, of either kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Scorer {
    Mlp(MlpWeights),
    Trees(Trees),
}

impl Scorer {
    pub fn inputs(&self) -> usize {
        match self {
            Scorer::Mlp(w) => w.inputs(),
            Scorer::Trees(t) => t.inputs,
        }
    }

    pub fn classes(&self) -> usize {
        match self {
            Scorer::Mlp(w) => w.classes(),
            Scorer::Trees(t) => t.classes,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        match self {
            Scorer::Mlp(w) => w.validate(),
            Scorer::Trees(t) => t.validate(),
        }
    }

    /// Probabilities for a row-major `[n, inputs]` matrix, row-major `[n, classes]`.
    pub fn probabilities(&self, matrix: &[f32]) -> Vec<f32> {
        match self {
            Scorer::Mlp(w) => w.probabilities(matrix),
            Scorer::Trees(t) => t.probabilities(matrix),
        }
    }

    /// Probabilities for one row; `scratch` is reused across rows.
    pub fn probabilities_into(&self, x: &[f32], scratch: &mut Vec<f32>, probs: &mut [f32]) {
        match self {
            Scorer::Mlp(w) => w.probabilities_into(x, scratch, probs),
            Scorer::Trees(t) => t.probabilities_into(x, probs),
        }
    }

    /// Scratch space [`probabilities_into`](Self::probabilities_into) wants.
    pub fn scratch_len(&self) -> usize {
        match self {
            Scorer::Mlp(w) => 2 * w.widest_hidden(),
            Scorer::Trees(_) => 0,
        }
    }
}
