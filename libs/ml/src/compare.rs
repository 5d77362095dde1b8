//! Champion/challenger on one holdout: scoring any model on the held-out rows of a new
//! training, so the new version and the one it would replace are judged on the very same rows.
//!
//! The candidate's own test metrics come from [`train_classifier`](crate::train_classifier) on
//! the split its configuration draws; [`Holdout::of`] draws that same split again (it is a
//! function of the labels, `test_fraction` and `seed`), and [`Holdout::score`] scores a served
//! model on it through [`LoadedModel::try_predict`], the predictor's own code path, with the same
//! metric code. Scoring the candidate this way reproduces its bundle's metrics bit for bit; a
//! test holds that.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::train::Prepared;
use crate::{FeatureRow, LoadedModel, MlError, Schema, Scores, Table, TrainConfig};

/// The held-out test rows of a training, with their labels.
#[derive(Clone, Debug)]
pub struct Holdout {
    schema: Schema,
    rows: Vec<FeatureRow>,
    targets: Vec<String>,
}

/// A model's scores on a [`Holdout`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HoldoutScore {
    pub accuracy: f64,
    pub log_loss: f64,
    pub macro_f1: f64,
    /// Held-out rows scored.
    pub rows: usize,
}

impl Holdout {
    /// The rows `train_classifier(table, config)` holds out for its test metrics.
    pub fn of(table: &Table, config: &TrainConfig) -> Result<Holdout, MlError> {
        let data = Prepared::new(table)?;
        let (_, test) = data.split(config)?;
        Ok(Holdout {
            schema: table.schema.clone(),
            rows: data.rows(&test),
            targets: test.iter().map(|&i| table.targets[i].clone()).collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The held-out feature rows, in the table's schema.
    pub fn rows(&self) -> &[FeatureRow] {
        &self.rows
    }

    /// Scores `model` on these rows. The model may have been trained on another schema: its
    /// features are looked up by name (each must be here, of the same kind), and a label it has
    /// no output for counts as a wrong answer with probability 0.
    pub fn score(&self, model: &LoadedModel) -> Result<HoldoutScore, MlError> {
        let wanted = &model.schema().features;
        let mut from = Vec::with_capacity(wanted.len());
        for column in wanted {
            let Some(j) = self.schema.feature_index(&column.name) else {
                return Err(MlError::Schema(format!(
                    "the model takes a feature '{}' that these rows do not have",
                    column.name
                )));
            };
            if self.schema.features[j].kind != column.kind {
                return Err(MlError::Schema(format!(
                    "feature '{}' is {} here but {} for the model",
                    column.name,
                    self.schema.features[j].kind.as_str(),
                    column.kind.as_str()
                )));
            }
            from.push(j);
        }
        let rows: Vec<FeatureRow> = self
            .rows
            .iter()
            .map(|r| from.iter().map(|&j| r[j].clone()).collect())
            .collect();
        let predictions = model.try_predict(&rows)?;
        // Outputs over every class either side knows, so labels the model never saw still count.
        let classes: Vec<&str> = model
            .class_names()
            .iter()
            .chain(&self.targets)
            .map(String::as_str)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let k = classes.len();
        let mut probs = Vec::with_capacity(predictions.len() * k);
        for p in &predictions {
            probs.extend(
                classes
                    .iter()
                    .map(|c| p.probabilities.get(*c).copied().unwrap_or(0.0)),
            );
        }
        let labels: Vec<usize> = self
            .targets
            .iter()
            .map(|t| classes.binary_search(&t.as_str()).unwrap_or(0))
            .collect();
        let s = Scores::of(&probs, &labels, k);
        Ok(HoldoutScore {
            accuracy: s.accuracy,
            log_loss: s.log_loss,
            macro_f1: s.macro_f1,
            rows: self.rows.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Column, Value, train_classifier};

    fn table(n: usize, shift: f64) -> Table {
        let schema = Schema {
            features: vec![Column::numeric("x"), Column::categorical("c")],
            target: "y".into(),
        };
        let rows = (0..n)
            .map(|i| {
                let class = i % 3;
                vec![
                    Some(Value::Num(
                        class as f64 * 2.0 + (i % 7) as f64 * 0.1 + shift,
                    )),
                    Some(Value::Cat(["a", "b"][i % 2].into())),
                ]
            })
            .collect();
        let targets = (0..n).map(|i| format!("k{}", i % 3)).collect();
        Table {
            schema,
            rows,
            targets,
        }
    }

    #[test]
    fn scoring_the_candidate_reproduces_its_own_test_metrics_exactly() {
        let t = table(120, 0.0);
        let config = TrainConfig {
            epochs: 60,
            ..TrainConfig::default()
        };
        let bundle = train_classifier(&t, &config, &mut |_, _| {}).unwrap();
        let holdout = Holdout::of(&t, &config).unwrap();
        let s = holdout.score(&bundle.load().unwrap()).unwrap();
        assert_eq!(s.rows, bundle.metrics.n_test);
        assert_eq!(s.accuracy, bundle.metrics.test_accuracy);
        assert_eq!(s.log_loss, bundle.metrics.test_log_loss);
        assert_eq!(s.macro_f1, bundle.metrics.test_macro_f1);
    }

    #[test]
    fn a_model_of_other_columns_and_classes_is_scored_by_name() {
        let config = TrainConfig {
            epochs: 60,
            ..TrainConfig::default()
        };
        // The champion knows only the numeric column, in a schema with an extra one first.
        let mut old = table(120, 0.0);
        old.schema.features = vec![Column::numeric("z"), Column::numeric("x")];
        for r in &mut old.rows {
            r[1] = r[0].clone();
            r[0] = Some(Value::Num(0.5));
        }
        let champion = train_classifier(&old, &config, &mut |_, _| {})
            .unwrap()
            .load()
            .unwrap();
        let new = table(120, 0.0);
        let err = Holdout::of(&new, &config)
            .unwrap()
            .score(&champion)
            .unwrap_err();
        assert!(err.to_string().contains("'z'"), "{err}");
        // Drop the champion's extra column: then it scores on the new rows by name.
        let mut narrow = table(120, 0.0);
        narrow.schema.features = vec![Column::categorical("c"), Column::numeric("x")];
        for r in &mut narrow.rows {
            r.swap(0, 1);
        }
        let holdout = Holdout::of(&narrow, &config).unwrap();
        let mut only_x = table(120, 0.0);
        only_x.schema.features.truncate(1);
        for r in &mut only_x.rows {
            r.truncate(1);
        }
        let champion = train_classifier(&only_x, &config, &mut |_, _| {})
            .unwrap()
            .load()
            .unwrap();
        let s = holdout.score(&champion).unwrap();
        assert!(s.accuracy > 0.9, "{s:?}");
        // A class the champion never saw is always wrong for it.
        let mut more = narrow.clone();
        for (i, t) in more.targets.iter_mut().enumerate() {
            if i % 3 == 2 {
                *t = "k9".into();
            }
        }
        let s2 = Holdout::of(&more, &config)
            .unwrap()
            .score(&champion)
            .unwrap();
        assert!(s2.accuracy <= 2.0 / 3.0 + 1e-9, "{s2:?}");
        assert!(s2.log_loss > s.log_loss);
        // A feature of another kind is refused by name.
        let mut recast = narrow.clone();
        recast.schema.features[1].kind = crate::ColumnKind::Categorical;
        let err = Holdout::of(&recast, &config)
            .unwrap()
            .score(&champion)
            .unwrap_err();
        assert!(err.to_string().contains("'x'"), "{err}");
    }
}
