//! What a window's predictions say without labels: feature drift, prediction drift, data
//! quality and estimated accuracy. Pure functions of the reference and a sample of rows, so
//! they are tested without a database.

use std::collections::BTreeMap;

use petrel_api::monitor::{ColumnQuality, EstimatedAccuracy};
use petrel_drift::{
    CategoricalSample, Column, ColumnData, ColumnVerdict, DatasetVerdict, DriftConfig, Method,
    NumericSample, detect,
};
use petrel_ml::{ColumnKind, Value, image, row_from_json, text};

use crate::reference::Reference;

/// One sampled prediction of a window.
#[derive(Debug, Clone)]
pub struct Sampled {
    pub features: serde_json::Map<String, serde_json::Value>,
    pub class: String,
    pub confidence: f64,
}

/// The label-free analysis of a window.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub drift: Option<DatasetVerdict>,
    pub prediction_drift: Option<DatasetVerdict>,
    pub data_quality: Vec<ColumnQuality>,
    pub estimated_accuracy: Option<EstimatedAccuracy>,
    /// Why drift was not tested, when it was not.
    pub skipped: Option<String>,
}

/// Data-quality limits.
#[derive(Debug, Clone, Copy)]
pub struct QualityLimits {
    /// Most share of a numeric column's values outside the training range.
    pub out_of_range_share: f64,
    /// Most share of a categorical column's values in categories training never saw.
    pub unseen_share: f64,
    /// Significance of a change in the missing share (Benjamini-Hochberg adjusted).
    pub missing_p_value: f64,
}

/// Whether a column's *distribution* drifted, leaving its missing-share test aside (that one
/// is a data-quality finding of its own).
pub fn distribution_drifted(v: &ColumnVerdict) -> bool {
    match v.method {
        Method::MissingShare => false,
        m if m.is_distance() => v.distance.is_some_and(|d| d >= v.threshold),
        _ => v.score < v.threshold,
    }
}

/// Analyses a window's sampled predictions against the reference.
pub fn analyse(
    reference: &Reference,
    sample: &[Sampled],
    config: &DriftConfig,
    limits: QualityLimits,
    min_window: usize,
) -> Analysis {
    let schema = &reference.schema;
    if sample.len() < min_window {
        return Analysis {
            drift: None,
            prediction_drift: None,
            data_quality: Vec::new(),
            estimated_accuracy: None,
            skipped: Some(format!(
                "{} predictions, fewer than the {min_window} drift tests need (--min-window)",
                sample.len()
            )),
        };
    }
    let rows: Vec<_> = sample
        .iter()
        .map(|s| row_from_json(&s.features, schema).unwrap_or_default())
        .collect();
    let mut columns = Vec::new();
    let mut quality = Vec::new();
    // Column `i` as text: categories and free text alike (a number reads as its digits).
    let texts = |i: usize| -> Vec<Option<String>> {
        rows.iter()
            .map(|r| match r.get(i).cloned().flatten() {
                Some(Value::Cat(s)) => Some(s),
                Some(Value::Num(x)) => Some(x.to_string()),
                Some(Value::Pixels(_)) | None => None,
            })
            .collect()
    };
    for (i, col) in schema.features.iter().enumerate() {
        let cell = |r: &Vec<Option<Value>>| r.get(i).cloned().flatten();
        match col.kind {
            ColumnKind::Numeric => {
                let Some(base) = reference.numeric.get(&col.name) else {
                    continue;
                };
                let current = NumericSample::from_options(rows.iter().map(|r| match cell(r) {
                    Some(Value::Num(x)) => Some(x),
                    Some(Value::Cat(s)) => s.trim().parse().ok(),
                    Some(Value::Pixels(_)) | None => None,
                }));
                let outside = current
                    .values()
                    .iter()
                    .filter(|&&x| x < base.min || x > base.max)
                    .count();
                let mut q =
                    column_quality(&col.name, current.missing(), current.rows(), &base.sample);
                let share = share(outside as u64, current.len() as u64);
                q.out_of_range_share = Some(share);
                if share > limits.out_of_range_share {
                    q.issues.push(format!(
                        "{:.1}% of values are outside the training range [{}, {}]",
                        share * 100.0,
                        base.min,
                        base.max
                    ));
                }
                quality.push(q);
                columns.push(Column {
                    name: col.name.clone(),
                    data: ColumnData::Numeric {
                        reference: base.sample.clone(),
                        current,
                    },
                });
            }
            ColumnKind::Categorical => {
                let Some(base) = reference.categorical.get(&col.name) else {
                    continue;
                };
                let values = texts(i);
                let current = CategoricalSample::from_values(values.iter().map(Option::as_deref));
                let unseen: BTreeMap<&str, u64> = current
                    .counts()
                    .iter()
                    .filter(|(c, _)| !base.counts().contains_key(*c))
                    .map(|(c, n)| (c.as_str(), *n))
                    .collect();
                let mut q = column_quality_categorical(&col.name, &current, base);
                let share = share(unseen.values().sum(), current.len());
                q.unseen_share = Some(share);
                q.unseen = unseen.keys().take(5).map(|s| (*s).to_owned()).collect();
                if share > limits.unseen_share {
                    q.issues.push(format!(
                        "{:.1}% of values are categories training never saw ({})",
                        share * 100.0,
                        q.unseen.join(", ")
                    ));
                }
                quality.push(q);
                columns.push(Column {
                    name: col.name.clone(),
                    data: ColumnData::Categorical {
                        reference: base.clone(),
                        current,
                    },
                });
            }
            ColumnKind::Text => {
                let Some(base) = reference.text.get(&col.name) else {
                    continue;
                };
                text_columns(
                    &col.name,
                    base,
                    &texts(i),
                    limits,
                    &mut columns,
                    &mut quality,
                );
            }
            ColumnKind::Image => {
                let Some(base) = reference.image.get(&col.name) else {
                    continue;
                };
                // An image column enters the drift tests and the quality report as two
                // derived columns: each image's mean intensity and its contrast.
                let (means, contrasts): (Vec<Option<f64>>, Vec<Option<f64>>) = rows
                    .iter()
                    .map(|r| match cell(r) {
                        Some(Value::Pixels(p)) => {
                            let (m, c) = image::intensity(&p, base.max_value);
                            (Some(m), Some(c))
                        }
                        _ => (None, None),
                    })
                    .unzip();
                for (suffix, reference, values) in [
                    ("mean_intensity", &base.mean_intensity, means),
                    ("contrast", &base.contrast, contrasts),
                ] {
                    let name = text::derived_name(&col.name, suffix);
                    let current = NumericSample::from_options(values);
                    quality.push(column_quality(
                        &name,
                        current.missing(),
                        current.rows(),
                        reference,
                    ));
                    columns.push(Column {
                        name,
                        data: ColumnData::Numeric {
                            reference: reference.clone(),
                            current,
                        },
                    });
                }
            }
        }
    }
    let (drift, skipped) = match detect(&columns, config) {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(format!("drift tests could not run: {e}"))),
    };
    if let Some(v) = &drift {
        for (q, c) in quality.iter_mut().zip(&v.columns) {
            if let Some(m) = &c.missing {
                q.missing_adjusted_p_value = Some(m.adjusted_p_value);
                if m.adjusted_p_value < limits.missing_p_value {
                    q.issues.push(format!(
                        "the missing share changed from {:.1}% to {:.1}% (adjusted p = {:.2e})",
                        q.reference_missing_share * 100.0,
                        q.missing_share * 100.0,
                        m.adjusted_p_value
                    ));
                }
            }
        }
    }
    let confidences: Vec<f64> = sample.iter().map(|s| s.confidence).collect();
    let (prediction_drift, estimated_accuracy) = match &reference.predictions {
        None => (None, None),
        Some(p) => {
            let columns = [
                Column {
                    name: "predicted_class".to_owned(),
                    data: ColumnData::Categorical {
                        reference: p.classes.clone(),
                        current: CategoricalSample::from_values(
                            sample.iter().map(|s| Some(s.class.as_str())),
                        ),
                    },
                },
                Column {
                    name: "confidence".to_owned(),
                    data: ColumnData::Numeric {
                        reference: p.confidence.clone(),
                        current: NumericSample::new(&confidences),
                    },
                },
            ];
            let drift = detect(
                &columns,
                &DriftConfig {
                    overrides: BTreeMap::new(),
                    ..config.clone()
                },
            )
            .ok();
            let estimate = p
                .calibration
                .estimate(&confidences)
                .map(|e| EstimatedAccuracy {
                    accuracy: e.accuracy,
                    std_error: e.std_error,
                    n: e.n,
                    method: "cbpe".to_owned(),
                    calibration_rows: p.calibration.rows(),
                });
            (drift, estimate)
        }
    };
    Analysis {
        drift,
        prediction_drift,
        data_quality: quality,
        estimated_accuracy,
        skipped,
    }
}

/// A text column enters the drift tests and the quality report as three derived columns:
/// `NAME.length` (tokens per text, with the missing texts), `NAME.oov_share` (each text's share
/// of words outside the training vocabulary) and `NAME.tokens` (the distribution of the most
/// frequent training tokens, every other token as one category).
fn text_columns(
    name: &str,
    base: &crate::reference::TextReference,
    texts: &[Option<String>],
    limits: QualityLimits,
    columns: &mut Vec<Column>,
    quality: &mut Vec<ColumnQuality>,
) {
    // One pass over each text's tokens feeds all three columns.
    let mut lengths = Vec::with_capacity(texts.len());
    let mut shares = Vec::new();
    let mut unknown: BTreeMap<String, u64> = BTreeMap::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let (mut words, mut unknown_words) = (0u64, 0u64);
    for t in texts {
        let Some(t) = t else {
            lengths.push(None);
            continue;
        };
        let (mut n, mut out) = (0u64, 0u64);
        for token in text::tokens(t) {
            n += 1;
            if base.vocabulary.binary_search(&token).is_err() {
                out += 1;
                *unknown.entry(token.clone()).or_insert(0) += 1;
            }
            *counts
                .entry(text::token_category(token, &base.top_tokens))
                .or_insert(0) += 1;
        }
        lengths.push(Some(n as f64));
        if n > 0 {
            shares.push(out as f64 / n as f64);
        }
        words += n;
        unknown_words += out;
    }

    let length_name = text::derived_name(name, "length");
    let length = NumericSample::from_options(lengths);
    quality.push(column_quality(
        &length_name,
        length.missing(),
        length.rows(),
        &base.length,
    ));
    columns.push(Column {
        name: length_name,
        data: ColumnData::Numeric {
            reference: base.length.clone(),
            current: length,
        },
    });

    let oov_name = text::derived_name(name, "oov_share");
    let mut q = column_quality(&oov_name, 0, shares.len() as u64, &base.oov_share);
    let current_share = share(unknown_words, words);
    q.unseen_share = Some(current_share);
    let mut ranked: Vec<(String, u64)> = unknown.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    q.unseen = ranked.into_iter().take(5).map(|(t, _)| t).collect();
    if current_share > base.mean_oov_share + limits.unseen_share {
        q.issues.push(format!(
            "{:.1}% of words are outside the training vocabulary, against {:.1}% on held-out \
             training data ({})",
            current_share * 100.0,
            base.mean_oov_share * 100.0,
            q.unseen.join(", ")
        ));
    }
    quality.push(q);
    columns.push(Column {
        name: oov_name,
        data: ColumnData::Numeric {
            reference: base.oov_share.clone(),
            current: NumericSample::new(&shares),
        },
    });

    let tokens_name = text::derived_name(name, "tokens");
    let current = CategoricalSample::from_counts(counts, 0);
    quality.push(column_quality_categorical(
        &tokens_name,
        &current,
        &base.tokens,
    ));
    columns.push(Column {
        name: tokens_name,
        data: ColumnData::Categorical {
            reference: base.tokens.clone(),
            current,
        },
    });
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn column_quality(name: &str, missing: u64, rows: u64, base: &NumericSample) -> ColumnQuality {
    ColumnQuality {
        column: name.to_owned(),
        missing_share: share(missing, rows),
        reference_missing_share: share(base.missing(), base.rows()),
        missing_adjusted_p_value: None,
        out_of_range_share: None,
        unseen_share: None,
        unseen: Vec::new(),
        issues: Vec::new(),
    }
}

fn column_quality_categorical(
    name: &str,
    current: &CategoricalSample,
    base: &CategoricalSample,
) -> ColumnQuality {
    ColumnQuality {
        column: name.to_owned(),
        missing_share: share(current.missing(), current.rows()),
        reference_missing_share: share(base.missing(), base.rows()),
        missing_adjusted_p_value: None,
        out_of_range_share: None,
        unseen_share: None,
        unseen: Vec::new(),
        issues: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn limits() -> QualityLimits {
        QualityLimits {
            out_of_range_share: 0.05,
            unseen_share: 0.01,
            missing_p_value: 0.01,
        }
    }

    fn penguins() -> (Reference, Vec<serde_json::Map<String, serde_json::Value>>) {
        let bundle = petrel_testkit::bundle().clone();
        let rows = petrel_testkit::penguin_rows()
            .into_iter()
            .map(|(_, f)| f)
            .collect();
        (Reference::from_bundle(bundle), rows)
    }

    fn sample(
        rows: &[serde_json::Map<String, serde_json::Value>],
        n: usize,
        seed: u64,
    ) -> Vec<Sampled> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| Sampled {
                features: rows[rng.random_range(0..rows.len())].clone(),
                class: "Adelie".to_owned(),
                confidence: 0.97,
            })
            .collect()
    }

    /// A reviews model and a feed of reviews as request objects.
    fn reviews(spec: &petrel_ml::ReviewSpec) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let csv = petrel_ml::generate_reviews(spec).unwrap();
        petrel_ml::csv_to_json_rows(csv.as_bytes())
            .unwrap()
            .rows
            .into_iter()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn image_columns_are_watched_through_intensity_and_contrast() {
        let reference = Reference::from_bundle(petrel_testkit::digits_bundle().clone());
        let csv = petrel_testkit::digits_csv();
        let rows: Vec<serde_json::Map<String, serde_json::Value>> =
            petrel_ml::csv_to_json_rows(&csv)
                .unwrap()
                .rows
                .into_iter()
                .map(|r| {
                    let mut r = r.unwrap();
                    r.remove("digit");
                    r
                })
                .collect();
        let drift = DriftConfig::default();
        let image_drifted = |a: &Analysis| {
            a.drift
                .as_ref()
                .expect("tested")
                .columns
                .iter()
                .filter(|c| c.column.starts_with("image.") && distribution_drifted(c))
                .map(|c| c.column.clone())
                .collect::<Vec<_>>()
        };
        // Random windows of the digits themselves: the derived columns rarely raise an alarm.
        let mut flagged = 0;
        for seed in 0..40 {
            let a = analyse(&reference, &sample(&rows, 100, seed), &drift, limits(), 30);
            let names: Vec<&str> = a
                .drift
                .as_ref()
                .unwrap()
                .columns
                .iter()
                .map(|c| c.column.as_str())
                .collect();
            assert_eq!(names, ["image.mean_intensity", "image.contrast"]);
            if !image_drifted(&a).is_empty() {
                flagged += 1;
            }
        }
        assert!(flagged <= 4, "{flagged} of 40 normal windows flagged");
        // Brighter images (every pixel +4, capped at 16) drift in mean intensity.
        let spec = petrel_ml::Schema::digits().features[0].image.unwrap();
        let brighter: Vec<_> = rows
            .iter()
            .map(|r| {
                let pixels =
                    petrel_ml::image::parse_image_text(r["image"].as_str().unwrap(), &spec)
                        .unwrap();
                let bright: Vec<f32> = pixels.iter().map(|p| (p + 4.0).min(16.0)).collect();
                serde_json::Map::from_iter([("image".to_owned(), serde_json::json!(bright))])
            })
            .collect();
        let a = analyse(&reference, &sample(&brighter, 100, 7), &drift, limits(), 30);
        let drifted = image_drifted(&a);
        assert!(
            drifted.contains(&"image.mean_intensity".to_owned()),
            "{drifted:?}"
        );
        // A window whose images are missing shows in the quality report.
        let missing: Vec<_> = rows.iter().map(|_| serde_json::Map::new()).collect();
        let a = analyse(&reference, &sample(&missing, 100, 8), &drift, limits(), 30);
        let q = a
            .data_quality
            .iter()
            .find(|q| q.column == "image.mean_intensity")
            .unwrap();
        assert_eq!(q.missing_share, 1.0, "{q:?}");
    }

    #[test]
    fn text_columns_are_watched_through_length_vocabulary_and_tokens() {
        let reference = Reference::from_bundle(petrel_testkit::reviews_bundle().clone());
        let drift = DriftConfig::default();
        let fresh = reviews(&petrel_ml::ReviewSpec::new(4000, 22));
        let shifted = reviews(&petrel_ml::ReviewSpec {
            shift: 0.6,
            ..petrel_ml::ReviewSpec::new(400, 23)
        });
        let text_drifted = |a: &Analysis| {
            a.drift
                .as_ref()
                .expect("tested")
                .columns
                .iter()
                .filter(|c| c.column.starts_with("review.") && distribution_drifted(c))
                .map(|c| c.column.clone())
                .collect::<Vec<_>>()
        };
        // Random windows of the same feed: the derived columns rarely raise a false alarm.
        let mut flagged = 0;
        for seed in 0..40 {
            let a = analyse(&reference, &sample(&fresh, 100, seed), &drift, limits(), 30);
            let names: Vec<&str> = a
                .drift
                .as_ref()
                .unwrap()
                .columns
                .iter()
                .map(|c| c.column.as_str())
                .collect();
            assert_eq!(
                names,
                [
                    "product",
                    "review.length",
                    "review.oov_share",
                    "review.tokens"
                ]
            );
            if !text_drifted(&a).is_empty() {
                flagged += 1;
            }
            let oov = a
                .data_quality
                .iter()
                .find(|q| q.column == "review.oov_share")
                .unwrap();
            assert!(oov.issues.is_empty(), "{oov:?}");
        }
        assert!(flagged <= 4, "{flagged} of 40 normal windows flagged");
        // New words: the vocabulary and token columns drift, and the quality report names them.
        let a = analyse(&reference, &sample(&shifted, 100, 7), &drift, limits(), 30);
        let drifted = text_drifted(&a);
        assert!(
            drifted.contains(&"review.oov_share".to_owned()),
            "{drifted:?}"
        );
        assert!(drifted.contains(&"review.tokens".to_owned()), "{drifted:?}");
        let oov = a
            .data_quality
            .iter()
            .find(|q| q.column == "review.oov_share")
            .unwrap();
        assert!(oov.unseen_share.unwrap() > 0.05, "{oov:?}");
        assert!(
            oov.issues[0].contains("outside the training vocabulary"),
            "{oov:?}"
        );
        assert!(!oov.unseen.is_empty());
    }

    #[test]
    fn normal_windows_raise_no_finding_and_shifted_ones_do() {
        let (reference, rows) = penguins();
        let config = DriftConfig::default();
        let mut flagged = 0;
        for seed in 0..40 {
            let a = analyse(&reference, &sample(&rows, 100, seed), &config, limits(), 30);
            let v = a.drift.expect("tested");
            if v.columns.iter().any(distribution_drifted) {
                flagged += 1;
            }
            assert!(
                a.data_quality.iter().all(|q| q.issues.is_empty()),
                "{:?}",
                a.data_quality
            );
        }
        // BH at 5% per window: a handful at most in 40 windows.
        assert!(flagged <= 6, "{flagged} of 40 normal windows flagged");

        let mut shifted = sample(&rows, 100, 99);
        for s in &mut shifted {
            if let Some(v) = s.features.get("bill_length_mm").and_then(|v| v.as_f64()) {
                s.features
                    .insert("bill_length_mm".into(), (v + 12.0).into());
            }
            s.features.insert("island".into(), "Atlantis".into());
        }
        let a = analyse(&reference, &shifted, &config, limits(), 30);
        let v = a.drift.unwrap();
        let drifted: Vec<&str> = v
            .columns
            .iter()
            .filter(|c| distribution_drifted(c))
            .map(|c| c.column.as_str())
            .collect();
        assert!(drifted.contains(&"bill_length_mm"), "{drifted:?}");
        let island = a
            .data_quality
            .iter()
            .find(|q| q.column == "island")
            .unwrap();
        assert_eq!(island.unseen_share, Some(1.0));
        assert_eq!(island.unseen, ["Atlantis"]);
        let bill = a
            .data_quality
            .iter()
            .find(|q| q.column == "bill_length_mm")
            .unwrap();
        assert!(bill.out_of_range_share.unwrap() > 0.05, "{bill:?}");
        assert!(!bill.issues.is_empty());

        let few = analyse(&reference, &shifted[..10], &config, limits(), 30);
        assert!(few.drift.is_none());
        assert!(few.skipped.unwrap().contains("fewer than the 30"));
    }

    #[test]
    fn reference_keeps_training_missing_share_and_held_out_outputs() {
        let (reference, _) = penguins();
        // penguins.csv has missing `sex` values; the training split keeps their share.
        let sex = &reference.categorical["sex"];
        assert!(sex.missing() > 0, "{sex:?}");
        let p = reference.predictions.as_ref().expect("held-out outputs");
        assert!(p.calibration.rows() > 50);
        assert!(p.classes.len() > 50);
        // A well-trained model is estimated near its held-out accuracy on confident rows.
        let est = p.calibration.estimate(&[0.99; 20]).unwrap();
        assert!(est.accuracy > 0.9, "{est:?}");
    }
}
