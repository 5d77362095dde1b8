//! A seeded generator of labelled product reviews: the simulated feed of the text model.
//!
//! Each review is a few clauses about a product's aspects ("the battery was really great",
//! "arrived after two days", "not terrible for the price"), mostly in the words of its label's
//! sentiment, sometimes in the other's (mixed reviews), with a share of labels flipped (`noise`).
//! `shift` draws that share of sentiment words from a second vocabulary of slang the model has
//! never seen, which is how a vocabulary drifts in production: the monitor sees the
//! out-of-vocabulary share and the token distribution move, and accuracy falls until a model
//! trained on the new words replaces it.
//!
//! The stream is ChaCha8 (`rand_chacha`), whose output is fixed by its specification, and every
//! draw is made here from raw `u64`s, so a seed gives the same CSV on every platform and with
//! every version of `rand`.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::rng::Draw;
use crate::{Column, MlError, Schema};

/// The most rows one call generates.
pub const MAX_REVIEW_ROWS: usize = 1_000_000;

/// What to generate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewSpec {
    /// Rows to generate (1 to 1,000,000).
    pub rows: usize,
    /// The seed: the same spec gives the same rows.
    #[serde(default)]
    pub seed: u64,
    /// Share of sentiment words drawn from the shifted vocabulary, in [0, 1] (0: none).
    #[serde(default)]
    pub shift: f64,
    /// Share of labels flipped at random, in [0, 0.5] (0.05 by default).
    #[serde(default = "default_noise")]
    pub noise: f64,
}

fn default_noise() -> f64 {
    0.05
}

impl ReviewSpec {
    /// A spec of `rows` rows with the given seed, no shift and the default noise.
    pub fn new(rows: usize, seed: u64) -> ReviewSpec {
        ReviewSpec {
            rows,
            seed,
            shift: 0.0,
            noise: default_noise(),
        }
    }

    /// Refuses settings outside their ranges, naming the setting.
    pub fn validate(&self) -> Result<(), MlError> {
        let bad = |m: &str| Err(MlError::Setting(m.to_owned()));
        if !(1..=MAX_REVIEW_ROWS).contains(&self.rows) {
            return bad("rows must be between 1 and 1000000");
        }
        if !(self.shift.is_finite() && (0.0..=1.0).contains(&self.shift)) {
            return bad("shift must be a share in [0, 1]");
        }
        if !(self.noise.is_finite() && (0.0..=0.5).contains(&self.noise)) {
            return bad("noise must be a share in [0, 0.5]");
        }
        Ok(())
    }
}

impl Schema {
    /// The schema of generated reviews: `product` (categorical) and `review` (text) predict
    /// `sentiment` (`positive` or `negative`).
    pub fn reviews() -> Schema {
        Schema {
            features: vec![Column::categorical("product"), Column::text("review")],
            target: "sentiment".to_owned(),
        }
    }
}

const PRODUCTS: &[&str] = &[
    "phone",
    "laptop",
    "headphones",
    "blender",
    "camera",
    "kettle",
    "backpack",
    "monitor",
];
const ASPECTS: &[&str] = &[
    "battery",
    "screen",
    "sound",
    "delivery",
    "packaging",
    "price",
    "build",
    "design",
    "support",
    "manual",
    "size",
    "charger",
    "buttons",
    "app",
    "lid",
    "strap",
];
const POSITIVE: &[&str] = &[
    "great",
    "excellent",
    "perfect",
    "amazing",
    "reliable",
    "sturdy",
    "fast",
    "comfortable",
    "beautiful",
    "solid",
    "smooth",
    "impressive",
    "bright",
    "crisp",
    "quiet",
    "helpful",
];
const NEGATIVE: &[&str] = &[
    "terrible",
    "broken",
    "awful",
    "slow",
    "disappointing",
    "cheap",
    "flimsy",
    "noisy",
    "useless",
    "poor",
    "faulty",
    "cracked",
    "dead",
    "annoying",
    "overpriced",
    "rude",
];
/// The shifted vocabulary: slang for the same sentiments, unseen before the shift.
const POSITIVE_SLANG: &[&str] = &[
    "fire",
    "goated",
    "elite",
    "bussin",
    "immaculate",
    "slaps",
    "chef",
    "peak",
];
const NEGATIVE_SLANG: &[&str] = &[
    "mid", "trash", "bricked", "scammy", "janky", "laggy", "sus", "busted",
];
const VERDICT_POSITIVE: &[&str] = &[
    "would recommend",
    "love it",
    "worth every penny",
    "very happy with it",
    "buying another one",
];
const VERDICT_NEGATIVE: &[&str] = &[
    "returned it",
    "want a refund",
    "waste of money",
    "never again",
    "avoid this one",
];
const FILLER: &[&str] = &[
    "arrived after two days",
    "bought it for my brother",
    "used it every day for a month",
    "second one I have owned",
    "got it on sale",
    "came in a plain box",
    "took a week to arrive",
    "my first one from this brand",
];
const INTENSIFIERS: &[&str] = &["", "", "very ", "really ", "quite ", "so "];

/// One labelled review: (product, text, label).
fn review(draw: &mut Draw, spec: &ReviewSpec) -> (&'static str, String, &'static str) {
    let positive = draw.share() < 0.5;
    let product = draw.pick(PRODUCTS);
    let sentiment_word = |draw: &mut Draw, positive: bool| {
        let slang = draw.share() < spec.shift;
        match (positive, slang) {
            (true, false) => draw.pick(POSITIVE),
            (true, true) => draw.pick(POSITIVE_SLANG),
            (false, false) => draw.pick(NEGATIVE),
            (false, true) => draw.pick(NEGATIVE_SLANG),
        }
    };
    let mut clauses: Vec<String> = Vec::new();
    let n = 2 + draw.index(3);
    for _ in 0..n {
        let roll = draw.share();
        if roll < 0.15 {
            clauses.push(draw.pick(FILLER).to_owned());
            continue;
        }
        // Mixed reviews: a clause in the other sentiment's words now and then.
        let mut tone = if draw.share() < 0.1 {
            !positive
        } else {
            positive
        };
        let negated = draw.share() < 0.1;
        if negated {
            // "not terrible" praises, "not great" complains.
            tone = !tone;
        }
        let aspect = draw.pick(ASPECTS);
        let verb = if draw.share() < 0.5 { "is" } else { "was" };
        let intensity = draw.pick(INTENSIFIERS);
        let word = sentiment_word(draw, tone);
        let clause = if negated {
            format!("the {aspect} {verb} not {word}")
        } else {
            format!("the {aspect} {verb} {intensity}{word}")
        };
        clauses.push(clause);
    }
    if draw.share() < 0.5 {
        let verdict = if positive {
            draw.pick(VERDICT_POSITIVE)
        } else {
            draw.pick(VERDICT_NEGATIVE)
        };
        clauses.push(verdict.to_owned());
    }
    let mut text = String::new();
    for (i, clause) in clauses.iter().enumerate() {
        if i > 0 {
            text.push_str(if draw.share() < 0.5 { ", " } else { ". " });
        }
        text.push_str(clause);
    }
    let flipped = draw.share() < spec.noise;
    let label = if positive != flipped {
        "positive"
    } else {
        "negative"
    };
    (product, text, label)
}

/// Generates `spec.rows` reviews as CSV with the header `product,review,sentiment`, the
/// columns of [`Schema::reviews`].
pub fn generate_reviews(spec: &ReviewSpec) -> Result<String, MlError> {
    spec.validate()?;
    let mut draw = Draw(ChaCha8Rng::seed_from_u64(spec.seed));
    let mut out = csv::Writer::from_writer(Vec::with_capacity(spec.rows * 80));
    let fail = |e: csv::Error| MlError::Csv(e.to_string());
    out.write_record(["product", "review", "sentiment"])
        .map_err(fail)?;
    for _ in 0..spec.rows {
        let (product, text, label) = review(&mut draw, spec);
        out.write_record([product, text.as_str(), label])
            .map_err(fail)?;
    }
    let bytes = out
        .into_inner()
        .map_err(|e| MlError::Csv(e.error().to_string()))?;
    String::from_utf8(bytes).map_err(|e| MlError::Csv(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_csv, text::tokens};

    #[test]
    fn the_same_spec_gives_the_same_rows_and_another_seed_others() {
        let spec = ReviewSpec::new(200, 7);
        let a = generate_reviews(&spec).unwrap();
        assert_eq!(a, generate_reviews(&spec).unwrap());
        assert_ne!(a, generate_reviews(&ReviewSpec::new(200, 8)).unwrap());
        // Pinned: a change to the generator or its stream changes every seeded feed.
        let first = a.lines().nth(1).unwrap();
        assert_eq!(first, PINNED_FIRST_ROW, "{first}");
    }

    const PINNED_FIRST_ROW: &str = "laptop,\"the screen was very amazing. the build was sturdy, \
the battery is quiet. bought it for my brother\",positive";

    #[test]
    fn rows_parse_with_the_reviews_schema_and_classes_are_balanced() {
        let csv = generate_reviews(&ReviewSpec::new(2000, 1)).unwrap();
        let report = parse_csv(csv.as_bytes(), &Schema::reviews()).unwrap();
        assert!(report.errors.is_empty(), "{:?}", &report.errors[..1]);
        let counts = report.table.class_counts();
        assert_eq!(counts.len(), 2);
        let positive = counts["positive"] as f64 / 2000.0;
        assert!((0.45..0.55).contains(&positive), "{positive}");
    }

    #[test]
    fn shift_replaces_sentiment_words_with_unseen_ones() {
        let slang = |csv: &str| {
            let mut n = 0;
            for t in tokens(csv) {
                if POSITIVE_SLANG.contains(&t.as_str()) || NEGATIVE_SLANG.contains(&t.as_str()) {
                    n += 1;
                }
            }
            n
        };
        let plain = generate_reviews(&ReviewSpec::new(500, 3)).unwrap();
        assert_eq!(slang(&plain), 0);
        let shifted = generate_reviews(&ReviewSpec {
            shift: 0.8,
            ..ReviewSpec::new(500, 3)
        })
        .unwrap();
        assert!(slang(&shifted) > 300, "{}", slang(&shifted));
    }

    fn table(spec: &ReviewSpec) -> crate::Table {
        let csv = generate_reviews(spec).unwrap();
        parse_csv(csv.as_bytes(), &Schema::reviews()).unwrap().table
    }

    fn accuracy(model: &crate::LoadedModel, table: &crate::Table) -> f64 {
        let predictions = model.try_predict(&table.rows).unwrap();
        let right = predictions
            .iter()
            .zip(&table.targets)
            .filter(|(p, t)| &p.class == *t)
            .count();
        right as f64 / table.len() as f64
    }

    /// The text model learns the feed, and the shifted vocabulary costs it accuracy: what the
    /// monitor's alert and the retraining that follows are about.
    #[test]
    fn a_text_model_learns_reviews_and_loses_accuracy_under_shift() {
        // Full-batch Adam on TF-IDF fits the training split within a few dozen epochs.
        let config = crate::TrainConfig {
            epochs: 30,
            ..crate::TrainConfig::default()
        };
        let bundle =
            crate::train_classifier(&table(&ReviewSpec::new(1500, 11)), &config, &mut |_, _| {})
                .unwrap();
        assert_eq!(bundle.format_version, 4);
        // 5% of labels are flipped, so about 0.95 is the ceiling.
        assert!(bundle.metrics.test_accuracy > 0.85, "{:?}", bundle.metrics);
        let model = crate::ModelBundle::from_bytes(&bundle.to_bytes().unwrap())
            .unwrap()
            .load()
            .unwrap();
        let fresh = accuracy(&model, &table(&ReviewSpec::new(1000, 12)));
        let shifted = accuracy(
            &model,
            &table(&ReviewSpec {
                shift: 1.0,
                ..ReviewSpec::new(1000, 12)
            }),
        );
        assert!(fresh > 0.85, "{fresh}");
        assert!(shifted < fresh - 0.15, "{shifted} vs {fresh}");

        let text = &bundle.reference.text["review"];
        assert!(text.vocabulary.binary_search(&"sturdy".to_owned()).is_ok());
        assert!(text.vocabulary.binary_search(&"goated".to_owned()).is_err());
        assert_eq!(text.lengths.len(), bundle.metrics.n_train);
        assert_eq!(text.oov_shares.len(), bundle.metrics.n_test);
        assert!(text.tokens.contains_key(crate::text::OTHER_TOKENS));
    }

    #[test]
    fn bad_specs_are_refused_by_name() {
        let err = |spec: ReviewSpec| generate_reviews(&spec).unwrap_err().to_string();
        assert!(err(ReviewSpec::new(0, 1)).contains("rows"));
        assert!(
            err(ReviewSpec {
                shift: 1.5,
                ..ReviewSpec::new(5, 1)
            })
            .contains("shift")
        );
        assert!(
            err(ReviewSpec {
                noise: f64::NAN,
                ..ReviewSpec::new(5, 1)
            })
            .contains("noise")
        );
    }
}
