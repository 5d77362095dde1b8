//! Tests for categorical features (and numeric features with only a few distinct values).
//!
//! Two chi-square tests live here because they answer different questions:
//!
//! * [`chi2_homogeneity`] asks whether the reference and the current window are two samples
//!   from one distribution (`scipy.stats.chi2_contingency` on the 2 x k table). Both sides are
//!   samples with their own noise, so this is the sound test for drift and the one the
//!   `petrel` preset uses.
//! * [`chi2_goodness_of_fit`] asks whether the current window fits the reference *shares*,
//!   treating those shares as exact. That ignores the reference's own sampling noise, so it
//!   rejects too often when the reference is small; it is kept because it is what Evidently's
//!   `chisquare` stattest computes, and the `evidently` preset must match Evidently.
//!
//! The previous version of this crate ran the goodness-of-fit test with `+0.5` smoothing of the
//! reference counts, which inflated the statistic for rare categories and raised false alarms;
//! the smoothing is gone.

use std::collections::BTreeMap;

use statrs::distribution::{ChiSquared, ContinuousCDF, Normal};

use crate::sample::{CategoricalSample, CategoryTable};
use crate::{DriftError, Method, TestResult, check_threshold};

/// The outcome of a chi-square test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChiSquareOutcome {
    /// The chi-square statistic (`+inf` for a goodness-of-fit test with an unseen category).
    pub statistic: f64,
    /// Upper-tail p-value from the chi-square distribution with `dof` degrees of freedom.
    pub p_value: f64,
    /// Degrees of freedom: `k - 1` for `k` categories with a positive count somewhere.
    pub dof: u64,
    /// Whether Yates' continuity correction was applied (2 x 2 tables only).
    pub yates: bool,
}

/// The outcome of a two-proportion Z-test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZOutcome {
    /// `(p_ref - p_cur) / sqrt(P (1 - P) (1/n_ref + 1/n_cur))` with the pooled share `P`.
    pub statistic: f64,
    /// Two-sided p-value, `2 (1 - Phi(|z|))`.
    pub p_value: f64,
}

fn chi2_sf(statistic: f64, dof: u64) -> Result<f64, DriftError> {
    if statistic.is_infinite() {
        return Ok(0.0);
    }
    let dist = ChiSquared::new(dof as f64).map_err(|e| DriftError::Distribution(e.to_string()))?;
    Ok(dist.sf(statistic).clamp(0.0, 1.0))
}

fn check_totals(table: &CategoryTable) -> Result<(u64, u64), DriftError> {
    let (nr, nc) = table.totals();
    if nr == 0 {
        return Err(DriftError::EmptySample("reference"));
    }
    if nc == 0 {
        return Err(DriftError::EmptySample("current"));
    }
    Ok((nr, nc))
}

/// Chi-square test of homogeneity on the 2 x k contingency table (reference row, current row),
/// exactly `scipy.stats.chi2_contingency(table)` with its defaults.
///
/// Expected counts are `row_total * column_total / total`. Only categories that occur on at
/// least one side are columns, so no expected count is zero and an unseen category is simply a
/// column whose reference cell is 0: it contributes its full weight to the statistic, which is
/// what makes a new category register as drift. With a single category there are no degrees of
/// freedom and, like scipy, the result is statistic 0, p-value 1.
///
/// For a 2 x 2 table (two categories) scipy's default applies Yates' continuity correction,
/// moving each observed count half a unit towards its expectation (but never past it); this
/// function does the same, so that it matches `chi2_contingency` called with defaults. The
/// correction makes the test conservative for binary columns, which is why the `petrel` preset
/// uses the two-proportion Z-test for those instead.
///
/// # Errors
///
/// [`DriftError::EmptySample`] if either side has no non-missing value.
pub fn chi2_homogeneity(table: &CategoryTable) -> Result<ChiSquareOutcome, DriftError> {
    let (nr, nc) = check_totals(table)?;
    let k = table.cells.len() as u64;
    let dof = k - 1;
    if dof == 0 {
        return Ok(ChiSquareOutcome {
            statistic: 0.0,
            p_value: 1.0,
            dof,
            yates: false,
        });
    }
    let total = (nr + nc) as f64;
    let yates = dof == 1;
    let mut terms = Vec::with_capacity(2 * table.cells.len());
    for &(r, c) in &table.cells {
        let col = (r + c) as f64;
        for (obs, row) in [(r, nr), (c, nc)] {
            let expected = row as f64 * col / total;
            let mut obs = obs as f64;
            if yates {
                let diff = expected - obs;
                obs += diff.abs().min(0.5) * diff.signum();
            }
            let d = obs - expected;
            terms.push(d * d / expected);
        }
    }
    let statistic = crate::sample::neumaier_sum(terms);
    Ok(ChiSquareOutcome {
        statistic,
        p_value: chi2_sf(statistic, dof)?,
        dof,
        yates,
    })
}

/// Evidently's `chisquare` stattest: goodness of fit of the current counts against expected
/// counts `reference_count * n_cur / n_ref`, i.e. `scipy.stats.chisquare(f_obs, f_exp)` with
/// `k - 1` degrees of freedom.
///
/// A category present in the current window but absent from the reference has an expected
/// count of zero; as in scipy (and so in Evidently) its term is infinite, the statistic is
/// `+inf` and the p-value 0. A single category gives statistic 0 with no degrees of freedom;
/// scipy returns a NaN p-value there, which Evidently's `p < threshold` reads as "not
/// drifted", so this returns p-value 1 to reach the same verdict without a NaN.
///
/// # Errors
///
/// [`DriftError::EmptySample`] if either side has no non-missing value.
pub fn chi2_goodness_of_fit(table: &CategoryTable) -> Result<ChiSquareOutcome, DriftError> {
    let (nr, nc) = check_totals(table)?;
    let k = table.cells.len() as u64;
    let k_norm = nc as f64 / nr as f64;
    let mut terms = Vec::with_capacity(table.cells.len());
    for &(r, c) in &table.cells {
        let expected = r as f64 * k_norm;
        let d = c as f64 - expected;
        terms.push(if expected == 0.0 {
            f64::INFINITY
        } else {
            d * d / expected
        });
    }
    let statistic = crate::sample::neumaier_sum(terms);
    let dof = k - 1;
    let p_value = if dof == 0 {
        1.0
    } else {
        chi2_sf(statistic, dof)?
    };
    Ok(ChiSquareOutcome {
        statistic,
        p_value,
        dof,
        yates: false,
    })
}

/// Pooled two-proportion Z-test of `x_ref / n_ref` against `x_cur / n_cur`, two-sided, with the
/// arithmetic of Evidently's `proportions_diff_z_stat_ind`.
///
/// When the pooled share is 0 or 1 (no event, or only events, on both sides) there is no
/// variance and nothing can have changed, so the result is z = 0, p = 1 rather than NaN.
///
/// # Errors
///
/// [`DriftError::EmptySample`] if either `n` is zero.
pub fn two_proportion_z(
    x_ref: u64,
    n_ref: u64,
    x_cur: u64,
    n_cur: u64,
) -> Result<ZOutcome, DriftError> {
    if n_ref == 0 {
        return Err(DriftError::EmptySample("reference"));
    }
    if n_cur == 0 {
        return Err(DriftError::EmptySample("current"));
    }
    let (n1, n2) = (n_ref as f64, n_cur as f64);
    let p1 = x_ref as f64 / n1;
    let p2 = x_cur as f64 / n2;
    let pooled = (p1 * n1 + p2 * n2) / (n1 + n2);
    let var = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2);
    if var <= 0.0 {
        return Ok(ZOutcome {
            statistic: 0.0,
            p_value: 1.0,
        });
    }
    let z = (p1 - p2) / var.sqrt();
    Ok(ZOutcome {
        statistic: z,
        p_value: normal_two_sided(z),
    })
}

/// `2 (1 - Phi(|z|))`, written as Evidently writes it so the rounding agrees.
fn normal_two_sided(z: f64) -> f64 {
    // Normal::new(0, 1) cannot fail.
    let std = Normal::new(0.0, 1.0).expect("standard normal");
    (2.0 * (1.0 - std.cdf(z.abs()))).clamp(0.0, 1.0)
}

/// Evidently's `z` stattest for a column with (at most) two values: the share of values that
/// differ from the first category in sorted order, compared by [`two_proportion_z`]. If both
/// sides hold one and the same single value, the p-value is 1.
///
/// # Errors
///
/// [`DriftError::EmptySample`] if either side has no non-missing value.
pub fn z_test(table: &CategoryTable) -> Result<ZOutcome, DriftError> {
    let (nr, nc) = check_totals(table)?;
    let (r0, c0) = table.cells[0];
    two_proportion_z(nr - r0, nr, nc - c0, nc)
}

/// Chi-square test of homogeneity between reference and current category counts, judged at
/// `threshold` ([`chi2_homogeneity`]).
///
/// Kept with the signature of the first version of this crate so the monitor keeps compiling;
/// the test behind it changed from smoothed goodness of fit (which raised false alarms) to
/// scipy's `chi2_contingency`. Zero counts are ignored; `drifted` is `p_value < threshold`.
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
    let table = CategoryTable::new(
        &CategoricalSample::from_counts(reference.clone(), 0),
        &CategoricalSample::from_counts(current.clone(), 0),
    );
    let r = chi2_homogeneity(&table)?;
    Ok(TestResult::new(
        Method::ChiSquare,
        r.statistic,
        r.p_value,
        threshold,
    ))
}

/// Counts occurrences of each string value; the bridge from raw columns to [`chi_square`].
pub fn counts<'a>(values: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, u64> {
    CategoricalSample::from_values(values.into_iter().map(Some))
        .counts()
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(cells: &[(u64, u64)]) -> CategoryTable {
        CategoryTable {
            categories: (0..cells.len()).map(|i| format!("c{i}")).collect(),
            cells: cells.to_vec(),
        }
    }

    #[test]
    fn homogeneity_hand_computed() {
        // [[10, 10, 10], [20, 20, 20]]: identical shares, statistic 0, p = 1.
        let r = chi2_homogeneity(&table(&[(10, 20), (10, 20), (10, 20)])).unwrap();
        assert_eq!((r.statistic, r.dof, r.yates), (0.0, 2, false));
        assert!((r.p_value - 1.0).abs() < 1e-15);
        // 2 x 2 [[30, 70], [70, 30]]: expected 50 everywhere, Yates |d| = 19.5:
        // 4 * 19.5^2 / 50 = 30.42.
        let r = chi2_homogeneity(&table(&[(30, 70), (70, 30)])).unwrap();
        assert!(r.yates);
        assert!((r.statistic - 30.42).abs() < 1e-12);
        // A single category has no degrees of freedom.
        let r = chi2_homogeneity(&table(&[(5, 9)])).unwrap();
        assert_eq!((r.statistic, r.p_value), (0.0, 1.0));
    }

    #[test]
    fn goodness_of_fit_unseen_category_is_infinite() {
        let r = chi2_goodness_of_fit(&table(&[(50, 45), (50, 45), (0, 10)])).unwrap();
        assert!(r.statistic.is_infinite());
        assert_eq!(r.p_value, 0.0);
    }

    #[test]
    fn z_test_degenerate_cases() {
        // One shared value on both sides: nothing to compare.
        assert_eq!(z_test(&table(&[(10, 4)])).unwrap().p_value, 1.0);
        // Same shares: z = 0.
        let r = z_test(&table(&[(10, 20), (30, 60)])).unwrap();
        assert_eq!(r.statistic, 0.0);
        assert_eq!(r.p_value, 1.0);
        assert!(matches!(
            two_proportion_z(0, 0, 1, 2),
            Err(DriftError::EmptySample("reference"))
        ));
    }

    #[test]
    fn legacy_chi_square_is_homogeneity() {
        let m = |p: &[(&str, u64)]| -> BTreeMap<String, u64> {
            p.iter().map(|&(k, v)| (k.to_owned(), v)).collect()
        };
        let r = chi_square(
            &m(&[("a", 10), ("b", 10), ("c", 10)]),
            &m(&[("a", 20), ("b", 20), ("c", 20), ("ghost", 0)]),
            0.05,
        )
        .unwrap();
        assert_eq!(r.method, Method::ChiSquare);
        assert_eq!(r.statistic, 0.0);
        assert!(!r.drifted);
        assert!(matches!(
            chi_square(&m(&[]), &m(&[("a", 1)]), 0.05),
            Err(DriftError::EmptySample("reference"))
        ));
        assert_eq!(counts(["b", "a", "b"]), m(&[("a", 1), ("b", 2)]));
    }
}
