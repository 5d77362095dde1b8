//! What turns encoded inputs into class probabilities: an MLP's weights, an ensemble of
//! gradient-boosted trees, or a CNN's weights.

use crate::{CnnWeights, MlpWeights, Trees};

/// A trained model's parameters, of either kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Scorer {
    Mlp(MlpWeights),
    Trees(Trees),
    Cnn(CnnWeights),
}

impl Scorer {
    /// The kind of model these parameters belong to.
    pub fn kind(&self) -> crate::ModelKind {
        match self {
            Scorer::Mlp(_) => crate::ModelKind::Mlp,
            Scorer::Trees(_) => crate::ModelKind::Gbt,
            Scorer::Cnn(_) => crate::ModelKind::Cnn,
        }
    }

    pub fn inputs(&self) -> usize {
        match self {
            Scorer::Mlp(w) => w.inputs(),
            Scorer::Trees(t) => t.inputs,
            Scorer::Cnn(w) => w.inputs(),
        }
    }

    pub fn classes(&self) -> usize {
        match self {
            Scorer::Mlp(w) => w.classes(),
            Scorer::Trees(t) => t.classes,
            Scorer::Cnn(w) => w.classes(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        match self {
            Scorer::Mlp(w) => w.validate(),
            Scorer::Trees(t) => t.validate(),
            Scorer::Cnn(w) => w.validate(),
        }
    }

    /// Probabilities for a row-major `[n, inputs]` matrix, row-major `[n, classes]`.
    pub fn probabilities(&self, matrix: &[f32]) -> Vec<f32> {
        match self {
            Scorer::Mlp(w) => w.probabilities(matrix),
            Scorer::Trees(t) => t.probabilities(matrix),
            Scorer::Cnn(w) => w.probabilities(matrix),
        }
    }

    /// Probabilities for one row; `scratch` is reused across rows.
    pub fn probabilities_into(&self, x: &[f32], scratch: &mut Vec<f32>, probs: &mut [f32]) {
        match self {
            Scorer::Mlp(w) => w.probabilities_into(x, scratch, probs),
            Scorer::Trees(t) => t.probabilities_into(x, probs),
            Scorer::Cnn(w) => w.probabilities_into(x, scratch, probs),
        }
    }

    /// Scratch space [`probabilities_into`](Self::probabilities_into) wants.
    pub fn scratch_len(&self) -> usize {
        match self {
            Scorer::Mlp(w) => 2 * w.widest_hidden(),
            Scorer::Trees(_) => 0,
            Scorer::Cnn(w) => w.scratch_len(),
        }
    }
}
