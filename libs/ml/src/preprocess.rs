//! Turning typed feature rows into the dense `f32` matrix the network consumes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ColumnKind, FeatureRow, MlError, Schema, Value};

/// The fitted encoding of one feature column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ColumnTransform {
    /// Missing values become `median`, then `(x - mean) / std`.
    Numeric {
        /// The column name, kept so a bundle can be checked against its schema.
        name: String,
        /// Imputation value: the median of the training split's non-missing values.
        median: f64,
        /// Mean of the imputed training column.
        mean: f64,
        /// Population standard deviation of the imputed training column (1 when it was 0).
        std: f64,
    },
    /// One output per category seen in training, in sorted order.
    Categorical {
        /// The column name, kept so a bundle can be checked against its schema.
        name: String,
        /// Categories seen in training, sorted; their positions are the one-hot slots.
        categories: Vec<String>,
        /// The most frequent training category, used for missing values; `None` when the
        /// training split had no value at all for this column.
        mode: Option<String>,
    },
    /// Hashed TF-IDF: one output per bucket (see [`crate::text`]); a missing text is empty.
    Text {
        /// The column name, kept so a bundle can be checked against its schema.
        name: String,
        /// Smoothed inverse document frequency per bucket, fitted on the training split; its
        /// length is the number of buckets.
        idf: Vec<f64>,
        /// Terms join up to this many consecutive words (1: words only).
        #[serde(default = "one")]
        ngrams: usize,
    },
    /// One output per pixel, `(p - mean) / std` with the mean and standard deviation of every
    /// training pixel; a missing image encodes as the mean image (all zeros).
    Image {
        /// The column name, kept so a bundle can be checked against its schema.
        name: String,
        /// Rows of pixels.
        height: usize,
        /// Pixels per row.
        width: usize,
        /// Mean of all training pixels, in the column's units.
        mean: f64,
        /// Population standard deviation of all training pixels (1 when it was 0).
        std: f64,
    },
}

impl ColumnTransform {
    /// How many matrix columns this feature expands to.
    fn width(&self) -> usize {
        match self {
            ColumnTransform::Numeric { .. } => 1,
            ColumnTransform::Categorical { categories, .. } => categories.len(),
            ColumnTransform::Text { idf, .. } => idf.len(),
            ColumnTransform::Image { height, width, .. } => height * width,
        }
    }

    /// The column name, whichever the kind.
    pub fn name(&self) -> &str {
        match self {
            ColumnTransform::Numeric { name, .. }
            | ColumnTransform::Categorical { name, .. }
            | ColumnTransform::Text { name, .. }
            | ColumnTransform::Image { name, .. } => name,
        }
    }
}

/// Fitted on the training split only: numeric -> median imputation then standardisation
/// (mean/std of the training split, std 0 -> 1); categorical -> one-hot over the categories seen
/// in training, sorted; missing -> the training mode; a category unseen in training -> all zeros.
///
/// Fitting on the training split alone keeps test metrics honest: nothing about the test rows
/// leaks into the features the model is evaluated on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocessor {
    /// One transform per schema feature, in schema order.
    pub columns: Vec<ColumnTransform>,
}

fn one() -> usize {
    1
}

/// How text columns are encoded: the buckets they hash into and the longest word run counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextEncoding {
    /// Buckets per text column.
    pub buckets: usize,
    /// Terms join up to this many consecutive words.
    pub ngrams: usize,
}

impl Default for TextEncoding {
    fn default() -> TextEncoding {
        TextEncoding {
            buckets: crate::text::DEFAULT_TEXT_BUCKETS,
            ngrams: crate::text::DEFAULT_NGRAMS,
        }
    }
}

/// Reads a numeric value, accepting a numeric string in case a row was built by hand.
fn as_number(value: &Value) -> Option<f64> {
    match value {
        Value::Num(v) => Some(*v).filter(|v| v.is_finite()),
        Value::Cat(s) => s.trim().parse::<f64>().ok().filter(|v| v.is_finite()),
        Value::Pixels(_) => None,
    }
}

/// Reads a categorical value; a number stands for its decimal text, as CSV would have read it.
pub(crate) fn as_category(value: &Value) -> String {
    match value {
        Value::Cat(s) => s.clone(),
        Value::Num(v) => format!("{v}"),
        Value::Pixels(p) => format!("[{} pixels]", p.len()),
    }
}

/// The median of a non-empty slice; sorts it in place.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

impl Preprocessor {
    /// Learns the per-column statistics from `rows`, which must be the training split only;
    /// text columns hash into [`DEFAULT_TEXT_BUCKETS`](crate::text::DEFAULT_TEXT_BUCKETS).
    ///
    /// Fails when a row does not match the schema's width or a numeric column holds text that is
    /// not a number, since such rows mean the caller skipped validation.
    pub fn fit(schema: &Schema, rows: &[FeatureRow]) -> Result<Preprocessor, MlError> {
        Preprocessor::fit_with(schema, rows, TextEncoding::default())
    }

    /// [`Preprocessor::fit`] with text columns encoded as `text` says.
    pub fn fit_with(
        schema: &Schema,
        rows: &[FeatureRow],
        text: TextEncoding,
    ) -> Result<Preprocessor, MlError> {
        schema.validate()?;
        if !(1..=crate::text::MAX_TEXT_BUCKETS).contains(&text.buckets) {
            return Err(MlError::Training(format!(
                "text_buckets must be between 1 and {}",
                crate::text::MAX_TEXT_BUCKETS
            )));
        }
        if !(1..=crate::text::MAX_NGRAMS).contains(&text.ngrams) {
            return Err(MlError::Training(format!(
                "text_ngrams must be between 1 and {}",
                crate::text::MAX_NGRAMS
            )));
        }
        if rows.is_empty() {
            return Err(MlError::Training(
                "cannot fit preprocessing on zero rows".into(),
            ));
        }
        if let Some(row) = rows.iter().find(|r| r.len() != schema.features.len()) {
            return Err(MlError::Training(format!(
                "a row has {} values but the schema has {} features",
                row.len(),
                schema.features.len()
            )));
        }
        let columns = schema
            .features
            .iter()
            .enumerate()
            .map(|(i, column)| {
                let present = rows.iter().filter_map(|r| r[i].as_ref());
                match column.kind {
                    ColumnKind::Numeric => {
                        let mut values = Vec::with_capacity(rows.len());
                        for value in present {
                            values.push(as_number(value).ok_or_else(|| MlError::InvalidValue {
                                column: column.name.clone(),
                                message: format!("{value:?} is not a finite number"),
                            })?);
                        }
                        let missing = rows.len() - values.len();
                        let median = if values.is_empty() {
                            0.0
                        } else {
                            median(&mut values)
                        };
                        // Statistics of the imputed column, which is what the network sees.
                        let n = rows.len() as f64;
                        let sum: f64 = values.iter().sum::<f64>() + median * missing as f64;
                        let mean = sum / n;
                        let sq: f64 = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>()
                            + (median - mean).powi(2) * missing as f64;
                        let std = (sq / n).sqrt();
                        let std = if std.is_finite() && std > 1e-12 {
                            std
                        } else {
                            1.0
                        };
                        Ok(ColumnTransform::Numeric {
                            name: column.name.clone(),
                            median,
                            mean,
                            std,
                        })
                    }
                    ColumnKind::Categorical => {
                        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                        for value in present {
                            *counts.entry(as_category(value)).or_insert(0) += 1;
                        }
                        // Strictly greater keeps the alphabetically first category on ties,
                        // so the mode does not depend on row order.
                        let mut mode: Option<(&String, u64)> = None;
                        for (category, &count) in &counts {
                            if mode.is_none_or(|(_, best)| count > best) {
                                mode = Some((category, count));
                            }
                        }
                        Ok(ColumnTransform::Categorical {
                            name: column.name.clone(),
                            mode: mode.map(|(c, _)| c.clone()),
                            categories: counts.keys().cloned().collect(),
                        })
                    }
                    ColumnKind::Text => {
                        let texts: Vec<Option<String>> = rows
                            .iter()
                            .map(|r| r[i].as_ref().map(as_category))
                            .collect();
                        Ok(ColumnTransform::Text {
                            name: column.name.clone(),
                            idf: crate::text::fit_idf(
                                texts.iter().map(Option::as_deref),
                                text.buckets,
                                text.ngrams,
                            ),
                            ngrams: text.ngrams,
                        })
                    }
                    ColumnKind::Image => {
                        let spec = column.image.ok_or_else(|| {
                            MlError::Schema(format!(
                                "image column '{}' declares no shape",
                                column.name
                            ))
                        })?;
                        let (mut n, mut sum, mut sq) = (0u64, 0.0f64, 0.0f64);
                        for value in present {
                            let Value::Pixels(pixels) = value else {
                                return Err(MlError::InvalidValue {
                                    column: column.name.clone(),
                                    message: "expected an image".into(),
                                });
                            };
                            for &p in pixels {
                                n += 1;
                                sum += f64::from(p);
                                sq += f64::from(p) * f64::from(p);
                            }
                        }
                        let mean = if n == 0 { 0.0 } else { sum / n as f64 };
                        let var = if n == 0 {
                            0.0
                        } else {
                            (sq / n as f64 - mean * mean).max(0.0)
                        };
                        let std = var.sqrt();
                        Ok(ColumnTransform::Image {
                            name: column.name.clone(),
                            height: spec.height,
                            width: spec.width,
                            mean,
                            std: if std.is_finite() && std > 1e-12 {
                                std
                            } else {
                                1.0
                            },
                        })
                    }
                }
            })
            .collect::<Result<_, MlError>>()?;
        Ok(Preprocessor { columns })
    }

    /// The number of matrix columns a row expands to.
    pub fn width(&self) -> usize {
        self.columns.iter().map(ColumnTransform::width).sum()
    }

    /// Row-major matrix of rows.len() x width().
    ///
    /// Never fails, because serving must answer every validated row: values that do not fit
    /// their column (possible only for rows built by hand) are treated as missing.
    pub fn transform(&self, rows: &[FeatureRow]) -> Vec<f32> {
        let width = self.width();
        let mut out = vec![0.0f32; rows.len() * width];
        for (row, dst) in rows.iter().zip(out.chunks_exact_mut(width.max(1))) {
            self.transform_row_into(row, dst);
        }
        out
    }

    /// Encodes one row into `dst` (exactly `width()` long, zero-filled by the caller).
    pub(crate) fn transform_row_into(&self, row: &FeatureRow, dst: &mut [f32]) {
        let mut offset = 0;
        for (i, column) in self.columns.iter().enumerate() {
            let value = row.get(i).and_then(Option::as_ref);
            match column {
                ColumnTransform::Numeric {
                    median, mean, std, ..
                } => {
                    let x = value.and_then(as_number).unwrap_or(*median);
                    dst[offset] = ((x - mean) / std) as f32;
                }
                ColumnTransform::Categorical {
                    categories, mode, ..
                } => {
                    let category = match value {
                        Some(v) => Some(as_category(v)),
                        None => mode.clone(),
                    };
                    if let Some(slot) = category.and_then(|c| categories.binary_search(&c).ok()) {
                        dst[offset + slot] = 1.0;
                    }
                }
                ColumnTransform::Text { idf, ngrams, .. } => match value {
                    Some(Value::Cat(text)) => crate::text::encode_into(
                        text,
                        idf,
                        *ngrams,
                        &mut dst[offset..offset + idf.len()],
                    ),
                    Some(number @ Value::Num(_)) => crate::text::encode_into(
                        &as_category(number),
                        idf,
                        *ngrams,
                        &mut dst[offset..offset + idf.len()],
                    ),
                    Some(Value::Pixels(_)) | None => {}
                },
                ColumnTransform::Image { mean, std, .. } => {
                    let out = &mut dst[offset..offset + column.width()];
                    if let Some(Value::Pixels(pixels)) = value
                        && pixels.len() == out.len()
                    {
                        let (mean, inv) = (*mean as f32, (1.0 / *std) as f32);
                        for (o, &p) in out.iter_mut().zip(pixels) {
                            *o = (p - mean) * inv;
                        }
                    }
                }
            }
            offset += column.width();
        }
    }

    /// Checks that this preprocessor was fitted for `schema`, so a bundle whose parts disagree
    /// is refused at load time instead of producing garbage predictions.
    pub fn check_matches(&self, schema: &Schema) -> Result<(), String> {
        if self.columns.len() != schema.features.len() {
            return Err(format!(
                "the preprocessor has {} columns but the schema has {} features",
                self.columns.len(),
                schema.features.len()
            ));
        }
        for (transform, column) in self.columns.iter().zip(&schema.features) {
            let kind_matches = matches!(
                (transform, column.kind),
                (ColumnTransform::Numeric { .. }, ColumnKind::Numeric)
                    | (ColumnTransform::Categorical { .. }, ColumnKind::Categorical)
                    | (ColumnTransform::Text { .. }, ColumnKind::Text)
                    | (ColumnTransform::Image { .. }, ColumnKind::Image)
            );
            if transform.name() != column.name || !kind_matches {
                return Err(format!(
                    "preprocessor column '{}' does not match schema column '{}'",
                    transform.name(),
                    column.name
                ));
            }
            match transform {
                ColumnTransform::Numeric {
                    median, mean, std, ..
                } => {
                    if !(median.is_finite() && mean.is_finite() && std.is_finite() && *std > 0.0) {
                        return Err(format!(
                            "column '{}' has invalid numeric statistics",
                            column.name
                        ));
                    }
                }
                ColumnTransform::Categorical {
                    categories, mode, ..
                } => {
                    if !categories.windows(2).all(|w| w[0] < w[1]) {
                        return Err(format!(
                            "column '{}' has unsorted or duplicate categories",
                            column.name
                        ));
                    }
                    if mode
                        .as_ref()
                        .is_some_and(|m| categories.binary_search(m).is_err())
                    {
                        return Err(format!(
                            "column '{}' has a mode that is not one of its categories",
                            column.name
                        ));
                    }
                }
                ColumnTransform::Text { idf, ngrams, .. } => {
                    if !(1..=crate::text::MAX_NGRAMS).contains(ngrams) {
                        return Err(format!(
                            "column '{}' joins {ngrams} words per term, more than this build reads",
                            column.name
                        ));
                    }
                    if idf.is_empty()
                        || idf.len() > crate::text::MAX_TEXT_BUCKETS
                        || !idf.iter().all(|w| w.is_finite() && *w >= 1.0)
                    {
                        return Err(format!("column '{}' has invalid text weights", column.name));
                    }
                }
                ColumnTransform::Image {
                    height,
                    width,
                    mean,
                    std,
                    ..
                } => {
                    let declared = column.image.map(|s| (s.height, s.width));
                    if declared != Some((*height, *width)) {
                        return Err(format!(
                            "column '{}' was fitted on {height}x{width} images, not the schema's",
                            column.name
                        ));
                    }
                    if !(mean.is_finite() && std.is_finite() && *std > 0.0) {
                        return Err(format!(
                            "column '{}' has invalid pixel statistics",
                            column.name
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Column;

    fn schema() -> Schema {
        Schema {
            features: vec![Column::numeric("x"), Column::categorical("c")],
            target: "y".into(),
        }
    }

    fn row(x: Option<f64>, c: Option<&str>) -> FeatureRow {
        vec![x.map(Value::Num), c.map(|c| Value::Cat(c.into()))]
    }

    #[test]
    fn imputes_with_median_and_mode_and_standardises() {
        let train = vec![
            row(Some(1.0), Some("b")),
            row(Some(2.0), Some("a")),
            row(Some(10.0), Some("b")),
            row(None, None),
        ];
        let p = Preprocessor::fit(&schema(), &train).unwrap();
        // Median of 1, 2, 10 is 2 (the mean, 4.33, would be the wrong imputation).
        let ColumnTransform::Numeric {
            median, mean, std, ..
        } = &p.columns[0]
        else {
            panic!()
        };
        assert_eq!(*median, 2.0);
        // Imputed column is 1, 2, 10, 2.
        assert!((mean - 3.75).abs() < 1e-12);
        let expected_std =
            ((2.75f64.powi(2) + 1.75f64.powi(2) * 2.0 + 6.25f64.powi(2)) / 4.0).sqrt();
        assert!((std - expected_std).abs() < 1e-12);
        assert_eq!(
            p.columns[1],
            ColumnTransform::Categorical {
                name: "c".into(),
                categories: vec!["a".into(), "b".into()],
                mode: Some("b".into()),
            }
        );
        assert_eq!(p.width(), 3);

        let m = p.transform(&[row(None, None), row(Some(3.75), Some("a"))]);
        let imputed = ((2.0 - 3.75) / expected_std) as f32;
        assert_eq!(m, vec![imputed, 0.0, 1.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn unseen_category_encodes_as_all_zeros() {
        let train = vec![row(Some(1.0), Some("a")), row(Some(2.0), Some("b"))];
        let p = Preprocessor::fit(&schema(), &train).unwrap();
        let m = p.transform(&[row(Some(1.5), Some("zebra"))]);
        assert_eq!(&m[1..], &[0.0, 0.0]);
    }

    #[test]
    fn statistics_come_from_the_rows_it_is_fitted_on_only() {
        let train = vec![
            row(Some(1.0), Some("a")),
            row(Some(3.0), Some("a")),
            row(Some(5.0), Some("b")),
        ];
        let test = vec![row(Some(1000.0), Some("c")), row(Some(-50.0), Some("c"))];
        let p = Preprocessor::fit(&schema(), &train).unwrap();
        // Transforming other rows never changes the fitted state.
        let before = p.clone();
        let _ = p.transform(&test);
        assert_eq!(p, before);
        // Fitting on train + test would give different statistics and categories.
        let all: Vec<_> = train.iter().chain(&test).cloned().collect();
        let leaky = Preprocessor::fit(&schema(), &all).unwrap();
        assert_ne!(p, leaky);
        let ColumnTransform::Numeric { mean, median, .. } = &p.columns[0] else {
            panic!()
        };
        assert_eq!((*mean, *median), (3.0, 3.0));
        let ColumnTransform::Categorical { categories, .. } = &p.columns[1] else {
            panic!()
        };
        assert_eq!(categories, &vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn constant_column_gets_unit_std() {
        let train = vec![row(Some(4.0), Some("a")), row(Some(4.0), Some("a"))];
        let p = Preprocessor::fit(&schema(), &train).unwrap();
        let ColumnTransform::Numeric { std, .. } = &p.columns[0] else {
            panic!()
        };
        assert_eq!(*std, 1.0);
        assert_eq!(p.transform(&[row(Some(5.0), None)]), vec![1.0, 1.0]);
    }

    #[test]
    fn fit_rejects_rows_that_skipped_validation() {
        assert!(Preprocessor::fit(&schema(), &[vec![None]]).is_err());
        let bad = vec![vec![Some(Value::Cat("abc".into())), None]];
        assert!(matches!(
            Preprocessor::fit(&schema(), &bad),
            Err(MlError::InvalidValue { column, .. }) if column == "x"
        ));
        assert!(Preprocessor::fit(&schema(), &[]).is_err());
    }

    #[test]
    fn text_columns_become_unit_length_tfidf_buckets() {
        let schema = Schema {
            features: vec![Column::numeric("x"), Column::text("t")],
            target: "y".into(),
        };
        let text =
            |x: f64, t: Option<&str>| vec![Some(Value::Num(x)), t.map(|t| Value::Cat(t.into()))];
        let train = vec![
            text(1.0, Some("great battery")),
            text(2.0, Some("awful battery")),
            text(3.0, None),
        ];
        let words = TextEncoding {
            buckets: 64,
            ngrams: 1,
        };
        let p = Preprocessor::fit_with(&schema, &train, words).unwrap();
        p.check_matches(&schema).unwrap();
        assert_eq!(p.width(), 1 + 64);
        let m = p.transform(&[text(2.0, Some("Great, GREAT battery!")), text(2.0, None)]);
        let row = &m[1..65];
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6, "{norm}");
        let great = crate::text::bucket("great", 64);
        let battery = crate::text::bucket("battery", 64);
        assert!(
            row[great] > row[battery],
            "twice the count and a rarer token"
        );
        // A missing text encodes as nothing at all.
        assert!(m[66..].iter().all(|&v| v == 0.0));
        // Other bucket counts are refused by name, and a text transform cannot pass for a
        // categorical column.
        let none = TextEncoding {
            buckets: 0,
            ngrams: 1,
        };
        let err = Preprocessor::fit_with(&schema, &train, none).unwrap_err();
        assert!(err.to_string().contains("text_buckets"), "{err}");
        let long = TextEncoding {
            buckets: 8,
            ngrams: 9,
        };
        let err = Preprocessor::fit_with(&schema, &train, long).unwrap_err();
        assert!(err.to_string().contains("text_ngrams"), "{err}");
        let mut other = schema.clone();
        other.features[1].kind = ColumnKind::Categorical;
        assert!(p.check_matches(&other).is_err());
    }

    #[test]
    fn check_matches_catches_a_foreign_schema() {
        let p = Preprocessor::fit(&schema(), &[row(Some(1.0), Some("a"))]).unwrap();
        p.check_matches(&schema()).unwrap();
        let mut other = schema();
        other.features.swap(0, 1);
        assert!(p.check_matches(&other).is_err());
    }
}
