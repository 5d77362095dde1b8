//! Chi-square goodness-of-fit test for categorical features.
//!
//! Categorical features have no order, so the KS test does not apply; instead
//! the live category counts are compared against the proportions seen in
//! training, which is what Evidently does for categorical columns and so what
//! users migrating from it will expect.

use std::collections::BTreeMap;

use statrs::distribution::{ChiSquared, ContinuousCDF};

use crate::{DriftError, Method, TestResult, check_threshold};

/// Pseudo-count added to every reference category (a Jeffreys-style prior).
///
/// Without it a category that never appeared in training would have an
/// expected count of zero and the statistic would divide by zero, yet a brand
/// new category is exactly the kind of drift the monitor must report. Half a
/// count keeps the expectation small (so a handful of unseen values still
/// produces a very large statistic) while barely moving the proportions of
/// categories that were seen.
const SMOOTHING: f64 = 0.5;

/// Chi-square goodness of fit of the current category counts against the
/// reference proportions.
///
/// The categories are the union of both maps, ignoring entries whose count is
/// zero on both sides (they carry no observation, and counting them would
/// silently inflate the degrees of freedom). Reference proportions are
/// smoothed by adding 0.5 to every reference count, so
/// `p_i = (ref_i + 0.5) / (sum(ref) + 0.5 k)` and `expected_i = n_cur * p_i`.
/// The statistic is `sum (obs_i - expected_i)^2 / expected_i` and the p-value
/// is the survival function of statrs' `ChiSquared` with `k - 1` degrees of
/// freedom. With a single category there is nothing that could have shifted,
/// so the result is statistic 0, p-value 1.
///
/// # Errors
///
/// [`DriftError::EmptySample`] if either side has a total count of zero and
/// [`DriftError::InvalidThreshold`] unless `0 < threshold < 1`.
pub fn chi_square(
    reference: &BTreeMap<String, u64>,
    current: &BTreeMap<String, u64>,
    threshold: f64,
) -> Result<TestResult, DriftError> {
    check_threshold(threshold)?;
    // Summed as f64: u64 counts could overflow a u64 total in principle, and
    // every later step is floating point anyway.
    let ref_total: f64 = reference.values().map(|&c| c as f64).sum();
    let cur_total: f64 = current.values().map(|&c| c as f64).sum();
    if ref_total == 0.0 {
        return Err(DriftError::EmptySample("reference"));
    }
    if cur_total == 0.0 {
        return Err(DriftError::EmptySample("current"));
    }

    // (reference count, current count) per category, in a deterministic order.
    let mut cells: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (name, &c) in reference.iter().filter(|&(_, &c)| c > 0) {
        cells.entry(name.as_str()).or_default().0 = c;
    }
    for (name, &c) in current.iter().filter(|&(_, &c)| c > 0) {
        cells.entry(name.as_str()).or_default().1 = c;
    }

    let k = cells.len();
    if k < 2 {
        return Ok(TestResult::new(Method::ChiSquare, 0.0, 1.0, threshold));
    }
    let k = k as f64;
    let smoothed_total = ref_total + SMOOTHING * k;
    let statistic: f64 = cells
        .values()
        .map(|&(r, c)| {
            let expected = cur_total * (r as f64 + SMOOTHING) / smoothed_total;
            let diff = c as f64 - expected;
            diff * diff / expected
        })
        .sum();

    let dist = ChiSquared::new(k - 1.0).map_err(|e| DriftError::Distribution(e.to_string()))?;
    let p_value = dist.sf(statistic).clamp(0.0, 1.0);
    Ok(TestResult::new(
        Method::ChiSquare,
        statistic,
        p_value,
        threshold,
    ))
}

/// Counts occurrences of each string value.
///
/// This is the bridge from raw categorical columns to [`chi_square`]; a
/// `BTreeMap` is used so that iteration (and therefore any stored or logged
/// counts) is in a stable order.
pub fn counts<'a>(values: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for v in values {
        // Look up by &str first so repeated values do not allocate.
        match out.get_mut(v) {
            Some(c) => *c += 1,
            None => {
                out.insert(v.to_owned(), 1);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values were computed with Python 3 / SciPy 1.17.1 by building
    // the smoothed expected counts as documented above and calling
    // scipy.stats.chisquare(f_obs, f_exp), and, where noted, by hand.

    fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|&(k, v)| (k.to_owned(), v)).collect()
    }

    fn close_rel(actual: f64, expected: f64, rel: f64) {
        assert!(
            (actual - expected).abs() <= rel * expected.abs(),
            "expected {expected}, got {actual} (relative tolerance {rel})"
        );
    }

    #[test]
    fn hand_computed_two_categories() {
        // Smoothed proportions (99.5/199) are exactly 1/2, so with 100 current
        // observations expected = (50, 50) and
        // statistic = (30-50)^2/50 + (70-50)^2/50 = 16. With one degree of
        // freedom sf(x) = erfc(sqrt(x/2)) = erfc(sqrt 8) = 6.3342483666e-5.
        let r = chi_square(
            &map(&[("a", 99), ("b", 99)]),
            &map(&[("a", 30), ("b", 70)]),
            0.05,
        )
        .unwrap();
        assert_eq!(r.method, Method::ChiSquare);
        close_rel(r.statistic, 16.0, 1e-12);
        close_rel(r.p_value, 6.334248366623977e-05, 1e-9);
        assert!(r.drifted);
    }

    #[test]
    fn hand_computed_three_categories() {
        // Reference (1, 0, 2) smoothed to (1.5, 0.5, 2.5)/4.5 = (1/3, 1/9, 5/9);
        // 90 current observations give expected (30, 10, 50) against observed
        // (20, 25, 45): statistic = 100/30 + 225/10 + 25/50 = 79/3. With two
        // degrees of freedom sf(x) = exp(-x/2) = exp(-79/6). This also covers
        // a category ("b") absent from the reference map's counts.
        let r = chi_square(
            &map(&[("a", 1), ("b", 0), ("c", 2)]),
            &map(&[("a", 20), ("b", 25), ("c", 45)]),
            0.05,
        )
        .unwrap();
        close_rel(r.statistic, 79.0 / 3.0, 1e-12);
        close_rel(r.p_value, (-79.0f64 / 6.0).exp(), 1e-9);
        // scipy.stats.chisquare: 1.9133275352423022e-06.
        close_rel(r.p_value, 1.9133275352423022e-06, 1e-9);
    }

    #[test]
    fn matches_scipy_chisquare() {
        let reference = map(&[("red", 30), ("green", 50), ("blue", 20)]);
        let r = chi_square(
            &reference,
            &map(&[("red", 20), ("green", 40), ("blue", 40)]),
            0.05,
        )
        .unwrap();
        close_rel(r.statistic, 24.689403446542173, 1e-12);
        close_rel(r.p_value, 4.35275437638161e-06, 1e-9);
        assert!(r.drifted);

        // Proportions close to the reference: no drift.
        let r = chi_square(
            &map(&[("red", 300), ("green", 500), ("blue", 200)]),
            &map(&[("red", 29), ("green", 52), ("blue", 19)]),
            0.05,
        )
        .unwrap();
        close_rel(r.statistic, 0.16767688467316277, 1e-12);
        close_rel(r.p_value, 0.9195798092601615, 1e-9);
        assert!(!r.drifted);
    }

    #[test]
    fn unseen_category_flags_drift() {
        // "c" never occurred in training; smoothing gives it an expected count
        // of 100 * 0.5/1001 ~ 0.05, so 10 sightings dominate the statistic
        // (scipy: 1984.0404595404596, p underflows to 0).
        let r = chi_square(
            &map(&[("a", 500), ("b", 500)]),
            &map(&[("a", 45), ("b", 45), ("c", 10)]),
            0.05,
        )
        .unwrap();
        close_rel(r.statistic, 1984.0404595404596, 1e-12);
        assert!(r.p_value < 1e-100, "p = {}", r.p_value);
        assert!(r.drifted);
    }

    #[test]
    fn identical_proportions_do_not_drift() {
        let reference = map(&[("x", 200), ("y", 600), ("z", 200)]);
        let current = map(&[("x", 20), ("y", 60), ("z", 20)]);
        let r = chi_square(&reference, &current, 0.05).unwrap();
        // Smoothing moves the expectation by a hair, so not exactly zero.
        assert!(r.statistic < 1e-3, "statistic = {}", r.statistic);
        assert!(r.p_value > 0.99);
        assert!(!r.drifted);
    }

    #[test]
    fn single_category_is_trivially_undrifted() {
        let r = chi_square(&map(&[("only", 10)]), &map(&[("only", 3)]), 0.05).unwrap();
        assert_eq!(r.statistic, 0.0);
        assert_eq!(r.p_value, 1.0);
        assert!(!r.drifted);

        // A zero-count entry is not a category.
        let r = chi_square(
            &map(&[("only", 10), ("ghost", 0)]),
            &map(&[("only", 3)]),
            0.05,
        )
        .unwrap();
        assert_eq!(r.p_value, 1.0);
    }

    #[test]
    fn empty_inputs_error() {
        let some = map(&[("a", 1)]);
        assert!(matches!(
            chi_square(&BTreeMap::new(), &some, 0.05),
            Err(DriftError::EmptySample("reference"))
        ));
        assert!(matches!(
            chi_square(&some, &BTreeMap::new(), 0.05),
            Err(DriftError::EmptySample("current"))
        ));
        assert!(matches!(
            chi_square(&some, &map(&[("a", 0)]), 0.05),
            Err(DriftError::EmptySample("current"))
        ));
        assert!(matches!(
            chi_square(&some, &some, 1.0),
            Err(DriftError::InvalidThreshold(_))
        ));
    }

    #[test]
    fn counts_tallies_values() {
        let c = counts(["b", "a", "b", "c", "b"]);
        assert_eq!(c, map(&[("a", 1), ("b", 3), ("c", 1)]));
        assert!(counts(std::iter::empty()).is_empty());

        let words = ["x".to_owned(), "y".to_owned(), "x".to_owned()];
        let c = counts(words.iter().map(String::as_str));
        assert_eq!(c, map(&[("x", 2), ("y", 1)]));
    }
}
