//! Serving predictions from a loaded bundle.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::train::argmax;
use crate::{FeatureRow, MlError, MlpWeights, Preprocessor, Schema, row_from_json};

/// One row's prediction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The most probable class (the first one on exact ties).
    pub class: String,
    /// Probability per class name; they sum to 1.
    pub probabilities: BTreeMap<String, f32>,
    /// The max probability, i.e. that of `class`.
    pub confidence: f32,
}

/// A model ready to serve, built by [`ModelBundle::load`](crate::ModelBundle::load).
///
/// Holds plain vectors, not burn modules, so it is `Send + Sync + 'static` and can be shared
/// across request tasks (the predictor keeps it behind an `ArcSwap`); predicting needs only
/// `&self` and runs a dense forward pass in plain Rust, which for one row takes microseconds.
#[derive(Clone, Debug)]
pub struct LoadedModel {
    schema: Schema,
    preprocessor: Preprocessor,
    class_names: Vec<String>,
    weights: MlpWeights,
}

impl LoadedModel {
    /// Assembles a model from parts already checked by the bundle.
    pub(crate) fn new(
        schema: Schema,
        preprocessor: Preprocessor,
        class_names: Vec<String>,
        weights: MlpWeights,
    ) -> LoadedModel {
        LoadedModel {
            schema,
            preprocessor,
            class_names,
            weights,
        }
    }

    /// The schema requests must follow.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Class labels in output order.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Validates one JSON request row against this model's schema; see [`row_from_json`].
    pub fn row_from_json(
        &self,
        obj: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<FeatureRow, MlError> {
        row_from_json(obj, &self.schema)
    }

    /// Predicts every row, one [`Prediction`] per row in order. Missing values are imputed and
    /// unseen categories ignored, so every row gets an answer.
    pub fn predict(&self, rows: &[FeatureRow]) -> Vec<Prediction> {
        let width = self.preprocessor.width();
        let classes = self.class_names.len();
        let mut x = vec![0.0f32; width];
        let mut hidden = Vec::with_capacity(self.weights.hidden.outputs);
        let mut probs = vec![0.0f32; classes];
        rows.iter()
            .map(|row| {
                x.fill(0.0);
                self.preprocessor.transform_row_into(row, &mut x);
                self.weights.probabilities_into(&x, &mut hidden, &mut probs);
                let best = argmax(&probs);
                Prediction {
                    class: self.class_names[best].clone(),
                    probabilities: self
                        .class_names
                        .iter()
                        .cloned()
                        .zip(probs.iter().copied())
                        .collect(),
                    confidence: probs[best],
                }
            })
            .collect()
    }
}
