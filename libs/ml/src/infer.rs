//! Serving predictions from a loaded bundle.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::train::argmax;
use crate::{FeatureRow, MlError, Preprocessor, Schema, Scorer, row_from_json};

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
    scorer: Scorer,
}

impl LoadedModel {
    /// Assembles a model from parts already checked by the bundle.
    pub(crate) fn new(
        schema: Schema,
        preprocessor: Preprocessor,
        class_names: Vec<String>,
        scorer: Scorer,
    ) -> LoadedModel {
        LoadedModel {
            schema,
            preprocessor,
            class_names,
            scorer,
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

    /// Refuses a row holding a category the model never saw in training (which [`predict`]
    /// would otherwise encode as "none of the known ones"), naming the column and the
    /// categories it knows: for models whose owners want unseen values rejected.
    ///
    /// [`predict`]: Self::predict
    pub fn check_known_categories(&self, row: &FeatureRow) -> Result<(), MlError> {
        for (transform, value) in self.preprocessor.columns.iter().zip(row) {
            if let (
                crate::ColumnTransform::Categorical {
                    name, categories, ..
                },
                Some(crate::Value::Cat(v)),
            ) = (transform, value)
                && categories.binary_search(v).is_err()
            {
                let mut known = categories
                    .iter()
                    .take(20)
                    .map(|c| format!("{c:?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                if categories.len() > 20 {
                    known.push_str(", ...");
                }
                return Err(MlError::InvalidValue {
                    column: name.clone(),
                    message: format!("{v:?} is a category this model never saw; it knows {known}"),
                });
            }
        }
        Ok(())
    }

    /// Predicts every row, one [`Prediction`] per row in order. Missing values are imputed and
    /// unseen categories ignored, so every row gets an answer.
    ///
    /// Values far outside the training range (say a body mass of 1e300) overflow the network's
    /// `f32` arithmetic and give NaN probabilities here; callers that pass such answers on (to a
    /// client, a log, an event) should use [`try_predict`](Self::try_predict) instead.
    pub fn predict(&self, rows: &[FeatureRow]) -> Vec<Prediction> {
        let mut out = Vec::with_capacity(rows.len());
        self.predict_each(rows, |_, _, _| true, |p| out.push(p));
        out
    }

    /// Like [`predict`](Self::predict), but refuses the first row whose encoded inputs or output
    /// probabilities are not finite, with [`MlError::OutOfRange`] naming its position, so that a
    /// NaN never leaves as a prediction. The check costs a pass over a few dozen floats per row.
    pub fn try_predict(&self, rows: &[FeatureRow]) -> Result<Vec<Prediction>, MlError> {
        let refs: Vec<&FeatureRow> = rows.iter().collect();
        self.try_predict_refs(&refs)
    }

    /// [`try_predict`](Self::try_predict) over borrowed rows, for callers that hold them in
    /// other structures.
    pub fn try_predict_refs(&self, rows: &[&FeatureRow]) -> Result<Vec<Prediction>, MlError> {
        let mut out = Vec::with_capacity(rows.len());
        let mut bad = None;
        self.predict_each(
            rows,
            |i, x, probs| {
                let finite = x.iter().chain(probs).all(|v| v.is_finite());
                if !finite {
                    bad = Some(i);
                }
                finite
            },
            |p| out.push(p),
        );
        match bad {
            Some(row) => Err(MlError::OutOfRange { row }),
            None => Ok(out),
        }
    }

    /// The forward pass shared by [`predict`](Self::predict) and
    /// [`try_predict`](Self::try_predict): for each row, encodes it, computes its probabilities,
    /// asks `accept(index, inputs, probabilities)` whether to go on (stopping at the first `false`)
    /// and hands the prediction to `emit`.
    fn predict_each<R: std::borrow::Borrow<FeatureRow>>(
        &self,
        rows: &[R],
        mut accept: impl FnMut(usize, &[f32], &[f32]) -> bool,
        mut emit: impl FnMut(Prediction),
    ) {
        let width = self.preprocessor.width();
        let classes = self.class_names.len();
        let mut x = vec![0.0f32; width];
        let mut hidden = Vec::with_capacity(self.scorer.scratch_len());
        let mut probs = vec![0.0f32; classes];
        for (i, row) in rows.iter().enumerate() {
            x.fill(0.0);
            self.preprocessor.transform_row_into(row.borrow(), &mut x);
            self.scorer.probabilities_into(&x, &mut hidden, &mut probs);
            if !accept(i, &x, &probs) {
                return;
            }
            let best = argmax(&probs);
            emit(Prediction {
                class: self.class_names[best].clone(),
                probabilities: self
                    .class_names
                    .iter()
                    .cloned()
                    .zip(probs.iter().copied())
                    .collect(),
                confidence: probs[best],
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Column, ColumnTransform, DenseLayer, MlpWeights, Value};

    /// One numeric input, passed through unscaled to a hidden unit that multiplies it by 10,
    /// and two classes voting for and against it.
    fn model() -> LoadedModel {
        LoadedModel::new(
            Schema {
                features: vec![Column::numeric("x")],
                target: "y".into(),
            },
            Preprocessor {
                columns: vec![ColumnTransform::Numeric {
                    name: "x".into(),
                    median: 0.0,
                    mean: 0.0,
                    std: 1.0,
                }],
            },
            vec!["neg".into(), "pos".into()],
            Scorer::Mlp(MlpWeights {
                hidden: DenseLayer {
                    inputs: 1,
                    outputs: 1,
                    weight: vec![10.0],
                    bias: vec![0.0],
                },
                deeper: Vec::new(),
                output: DenseLayer {
                    inputs: 1,
                    outputs: 2,
                    weight: vec![-1.0, 1.0],
                    bias: vec![0.0, 0.0],
                },
            }),
        )
    }

    fn rows(xs: &[f64]) -> Vec<FeatureRow> {
        xs.iter().map(|x| vec![Some(Value::Num(*x))]).collect()
    }

    #[test]
    fn try_predict_answers_what_predict_answers_for_ordinary_rows() {
        let model = model();
        let rows = rows(&[1.0, -0.5, 0.0]);
        let checked = model.try_predict(&rows).unwrap();
        assert_eq!(checked, model.predict(&rows));
        assert_eq!(checked[0].class, "pos");
        assert_eq!(checked[1].class, "neg");
    }

    #[test]
    fn try_predict_refuses_rows_that_overflow_and_names_them() {
        let model = model();
        // 1e300 does not fit an f32 once standardised: the input itself is infinite.
        let predictions = model.predict(&rows(&[1e300]));
        assert!(predictions[0].confidence.is_nan(), "{predictions:?}");
        let err = model.try_predict(&rows(&[1.0, 2.0, 1e300])).unwrap_err();
        assert!(matches!(err, MlError::OutOfRange { row: 2 }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "feature values are outside the range this model can score"
        );
        // 1e38 fits an f32, but the hidden layer overflows it and the softmax turns into NaN.
        assert!(model.predict(&rows(&[1e38]))[0].confidence.is_nan());
        let err = model.try_predict(&rows(&[1e38, 1.0])).unwrap_err();
        assert!(matches!(err, MlError::OutOfRange { row: 0 }), "{err:?}");
        // So far from the data on the other side is refused too.
        let err = model.try_predict(&rows(&[0.0, -1e300])).unwrap_err();
        assert!(matches!(err, MlError::OutOfRange { row: 1 }), "{err:?}");
    }
}
