//! Confidence-based performance estimation (CBPE, as NannyML calls it): the accuracy of a
//! window estimated from the model's confidences alone, before any label arrives.
//!
//! A model's top-class probability is rarely the probability that it is right. On the
//! held-out split, where the truth is known, an isotonic regression (pool adjacent violators)
//! maps confidence to the observed share of correct predictions; a window's estimated accuracy
//! is the mean of that map over its predictions. The estimate is unbiased as long as the
//! relation between confidence and correctness holds on live data (a covariate shift, not a
//! change of the concept), which is the assumption CBPE makes.
//!
//! Held-out splits are often small, so each isotonic block is shrunk towards the raw
//! confidence with [`PRIOR_WEIGHT`] pseudo-observations: a block of 3 rows cannot claim that
//! every prediction at that confidence is right. Below the lowest and above the highest
//! held-out confidence there is no evidence at all, and the raw confidence is used.

use serde::{Deserialize, Serialize};

/// Pseudo-observations with which the raw confidence enters each block's estimate.
pub const PRIOR_WEIGHT: f64 = 5.0;

/// One isotonic block: held-out confidences in `[low, high]`, `mean` of them right.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Block {
    low: f64,
    high: f64,
    /// Mean confidence of the block's rows.
    confidence: f64,
    /// Share of the block's rows that were right.
    accuracy: f64,
    rows: f64,
}

/// A fitted confidence-to-accuracy map.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    blocks: Vec<Block>,
}

/// A window's estimated accuracy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub accuracy: f64,
    /// Standard error from the predictions' own uncertainty, `sqrt(sum p(1-p)) / n`.
    pub std_error: f64,
    /// Predictions the estimate averages over.
    pub n: usize,
}

impl Calibration {
    /// Fits the map on held-out confidences and outcomes (equal lengths; non-finite
    /// confidences are skipped).
    pub fn fit(confidence: &[f64], correct: &[bool]) -> Calibration {
        let mut points: Vec<(f64, f64)> = confidence
            .iter()
            .zip(correct)
            .filter(|(c, _)| c.is_finite())
            .map(|(&c, &y)| (c, if y { 1.0 } else { 0.0 }))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Pool adjacent violators; equal confidences start in one block so the map is a
        // function of confidence.
        let mut blocks: Vec<Block> = Vec::new();
        for (c, y) in points {
            match blocks.last_mut() {
                Some(b) if b.high == c => {
                    b.accuracy = (b.accuracy * b.rows + y) / (b.rows + 1.0);
                    b.confidence = (b.confidence * b.rows + c) / (b.rows + 1.0);
                    b.rows += 1.0;
                }
                _ => blocks.push(Block {
                    low: c,
                    high: c,
                    confidence: c,
                    accuracy: y,
                    rows: 1.0,
                }),
            }
            while blocks.len() >= 2
                && blocks[blocks.len() - 2].accuracy > blocks[blocks.len() - 1].accuracy
            {
                let b = blocks.pop().expect("two blocks");
                let a = blocks.last_mut().expect("two blocks");
                let rows = a.rows + b.rows;
                a.accuracy = (a.accuracy * a.rows + b.accuracy * b.rows) / rows;
                a.confidence = (a.confidence * a.rows + b.confidence * b.rows) / rows;
                a.high = b.high;
                a.rows = rows;
            }
        }
        Calibration { blocks }
    }

    /// Held-out rows the map was fitted on.
    pub fn rows(&self) -> usize {
        self.blocks.iter().map(|b| b.rows).sum::<f64>() as usize
    }

    /// The probability that a prediction made with `confidence` is right.
    pub fn probability(&self, confidence: f64) -> f64 {
        let c = confidence.clamp(0.0, 1.0);
        let (Some(first), Some(last)) = (self.blocks.first(), self.blocks.last()) else {
            return c;
        };
        if c < first.low || c > last.high {
            return c;
        }
        // The block whose span holds `c`, or the nearer of the two it falls between.
        let i = self.blocks.partition_point(|b| b.high < c);
        let b = if i < self.blocks.len() && self.blocks[i].low <= c {
            &self.blocks[i]
        } else {
            let (lo, hi) = (&self.blocks[i - 1], &self.blocks[i]);
            if c - lo.high <= hi.low - c { lo } else { hi }
        };
        // Shrink towards the raw confidence by the block's own evidence.
        (b.accuracy * b.rows + c * PRIOR_WEIGHT) / (b.rows + PRIOR_WEIGHT)
    }

    /// The estimated accuracy of predictions made with these confidences; `None` for none.
    pub fn estimate(&self, confidences: &[f64]) -> Option<Estimate> {
        if confidences.is_empty() {
            return None;
        }
        let n = confidences.len() as f64;
        let (mut sum, mut var) = (0.0, 0.0);
        for &c in confidences {
            let p = self.probability(c);
            sum += p;
            var += p * (1.0 - p);
        }
        Some(Estimate {
            accuracy: sum / n,
            std_error: var.sqrt() / n,
            n: confidences.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_adjacent_violators_gives_a_monotone_map() {
        // Right at 0.9 and 0.95, wrong at 0.6 and 0.92: 0.92 pools with 0.9.
        let c = Calibration::fit(&[0.6, 0.9, 0.92, 0.95], &[false, true, false, true]);
        let acc: Vec<f64> = c.blocks.iter().map(|b| b.accuracy).collect();
        assert_eq!(acc, [0.0, 0.5, 1.0]);
        assert!(acc.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(c.rows(), 4);
        // Inside the pooled block [0.9, 0.92]: (0.5 * 2 + 0.91 * 5) / 7.
        assert!((c.probability(0.91) - (1.0 + 0.91 * 5.0) / 7.0).abs() < 1e-12);
        // Outside the held-out range: the raw confidence.
        assert_eq!(c.probability(0.3), 0.3);
        assert_eq!(c.probability(0.99), 0.99);
    }

    #[test]
    fn a_well_calibrated_model_is_estimated_at_its_confidence() {
        // 1,000 held-out rows whose confidence is their probability of being right.
        let mut conf = Vec::new();
        let mut right = Vec::new();
        let mut state = 12345u64;
        for _ in 0..20_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let c = 0.5 + 0.5 * ((state >> 11) as f64 / (1u64 << 53) as f64);
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            conf.push(c);
            right.push(u < c);
        }
        let cal = Calibration::fit(&conf, &right);
        let live: Vec<f64> = (0..100).map(|i| 0.55 + 0.004 * f64::from(i)).collect();
        let est = cal.estimate(&live).unwrap();
        let truth = live.iter().sum::<f64>() / live.len() as f64;
        assert!((est.accuracy - truth).abs() < 0.02, "{est:?} vs {truth}");
        assert!(est.std_error > 0.0 && est.std_error < 0.06);
    }

    #[test]
    fn an_overconfident_model_is_estimated_below_its_confidence() {
        // Says 0.95 but is right 70% of the time.
        let conf = vec![0.95; 200];
        let right: Vec<bool> = (0..200).map(|i| i % 10 < 7).collect();
        let cal = Calibration::fit(&conf, &right);
        let est = cal.estimate(&[0.95; 50]).unwrap();
        let expected = (0.7 * 200.0 + 0.95 * PRIOR_WEIGHT) / (200.0 + PRIOR_WEIGHT);
        assert!((est.accuracy - expected).abs() < 1e-12);
        assert!(Calibration::fit(&[], &[]).estimate(&[]).is_none());
        assert_eq!(Calibration::fit(&[], &[]).probability(0.4), 0.4);
    }
}
