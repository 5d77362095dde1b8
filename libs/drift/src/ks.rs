//! Two-sample Kolmogorov-Smirnov test for numeric features, with scipy's `method="auto"`.
//!
//! KS makes no assumption about the shape of either distribution: it compares the empirical
//! CDFs directly, so it notices shifts in location, spread or shape alike. The p-value follows
//! `scipy.stats.ks_2samp(a, b)` (two-sided, `method="auto"`) exactly: when neither sample has
//! more than 10,000 values the exact distribution of the statistic is computed by counting
//! lattice paths (Hodges 1958; the Viehmann 2021 recursion for unequal sizes); otherwise, or if
//! the exact computation fails numerically, the finite-sample one-sample distribution
//! `kstwo.sf(D, round(n m / (n + m)))` is used. Exact p-values matter for the monitor because
//! live windows are often a few hundred rows, where the asymptotic Kolmogorov law is
//! noticeably off.
//!
//! Ties are handled as scipy handles them: the statistic is measured between the two
//! right-continuous empirical CDFs (every copy of a value is consumed at once), and the p-value
//! is the continuous-data one, which is conservative when ties are present.

use crate::kolmogorov::kstwo_sf;
use crate::sample::NumericSample;
use crate::{DriftError, Method, TestResult, check_threshold};

/// Below this `lambda` the Kolmogorov survival function equals 1 to within about 1e-12.
const SMALL_LAMBDA: f64 = 0.2;

/// Upper bound on series terms of [`kolmogorov_sf`]; it only guards against an endless loop.
const MAX_TERMS: u32 = 200;

/// scipy's `MAX_AUTO_N`: the exact path is taken when both samples are at most this large.
pub const KS_MAX_EXACT_N: usize = 10_000;

/// The outcome of [`ks_2samp`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KsOutcome {
    /// `D = sup |F_ref(x) - F_cur(x)|`; on the exact path it is rounded to the nearest multiple
    /// of `1 / lcm(n, m)` exactly as scipy does.
    pub statistic: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    /// Whether the exact distribution was used (otherwise `kstwo`).
    pub exact: bool,
}

/// Two-sample KS test on prepared samples: `scipy.stats.ks_2samp(ref, cur)`.
///
/// Missing values were already set aside by [`NumericSample`], so this sees only finite values.
///
/// # Errors
///
/// [`DriftError::EmptySample`] if either sample has no finite value.
pub fn ks_2samp(
    reference: &NumericSample,
    current: &NumericSample,
) -> Result<KsOutcome, DriftError> {
    if reference.is_empty() {
        return Err(DriftError::EmptySample("reference"));
    }
    if current.is_empty() {
        return Err(DriftError::EmptySample("current"));
    }
    Ok(ks_2samp_sorted(reference.values(), current.values()))
}

/// [`ks_2samp`] on two sorted, non-empty slices of finite values.
///
/// Exposed so callers that already hold sorted data (the monitor's reference profile) do not
/// pay for a copy. Unsorted input gives a meaningless answer, not a panic.
#[must_use]
pub fn ks_2samp_sorted(a: &[f64], b: &[f64]) -> KsOutcome {
    let (n1, n2) = (a.len(), b.len());
    debug_assert!(n1 > 0 && n2 > 0);
    let d = ks_distance_sorted(a, b);
    let g = gcd(n1 as u64, n2 as u64);
    if n1.max(n2) <= KS_MAX_EXACT_N
        && let Some((d_exact, p)) = exact_two_sided(n1 as u64, n2 as u64, g, d)
    {
        return KsOutcome {
            statistic: d_exact,
            p_value: p,
            exact: true,
        };
    }
    let (m, n) = if n1 >= n2 {
        (n1 as f64, n2 as f64)
    } else {
        (n2 as f64, n1 as f64)
    };
    let en = m * n / (m + n);
    let p = kstwo_sf(en.round_ties_even() as u64, d);
    KsOutcome {
        statistic: d,
        p_value: p.clamp(0.0, 1.0),
        exact: false,
    }
}

/// The KS distance between two sorted slices, computed as scipy computes it: after consuming
/// every copy of each distinct value, `i/n - j/m` in floating point, the largest absolute gap.
fn ks_distance_sorted(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let m = b.len() as f64;
    let (mut i, mut j) = (0, 0);
    let mut d: f64 = 0.0;
    // Once either sample is exhausted its CDF is 1 and the other's only rises towards 1, so
    // the gap can only shrink: the loop may stop there.
    while i < a.len() && j < b.len() {
        let x = if a[i] <= b[j] { a[i] } else { b[j] };
        while i < a.len() && a[i] == x {
            i += 1;
        }
        while j < b.len() && b[j] == x {
            j += 1;
        }
        d = d.max((i as f64 / n - j as f64 / m).abs());
    }
    d
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// scipy's `_attempt_exact_2kssamp` for the two-sided alternative: `None` when the computation
/// is not trustworthy (a probability outside `[0, 1]`), which sends the caller to `kstwo`.
fn exact_two_sided(n1: u64, n2: u64, g: u64, d: f64) -> Option<(f64, f64)> {
    let lcm = (n1 / g) * n2;
    let h = (d * lcm as f64).round_ties_even() as u64;
    let d = h as f64 / lcm as f64;
    if h == 0 {
        return Some((d, 1.0));
    }
    let prob = if n1 == n2 {
        prob_outside_square(n1, h)
    } else {
        outer_prob_inside(n1, n2, g, h)
    };
    (0.0..=1.0).contains(&prob).then_some((d, prob))
}

/// `Pr(D_{n,n} >= h/n)` by the Horner-like alternating sum scipy uses, which avoids the
/// cancellation of the textbook binomial formula.
fn prob_outside_square(n: u64, h: u64) -> f64 {
    let (n, h) = (n as f64, h as f64);
    let mut p = 0.0;
    let mut k = (n / h).floor();
    while k >= 0.0 {
        let mut p1 = 1.0;
        let mut j = 0.0;
        while j < h {
            p1 = (n - k * h - j) * p1 / (n + k * h + j + 1.0);
            j += 1.0;
        }
        p = p1 * (1.0 - p);
        k -= 1.0;
    }
    2.0 * p
}

/// The proportion of lattice paths from `(0,0)` to `(m,n)` that leave the band
/// `|x/m - y/n| < h/lcm(m,n)`, by Viehmann's recursion for `1 - p` (scipy's
/// `_compute_outer_prob_inside_method`). It keeps one sliding column of the path-count matrix,
/// normalised as it goes, so it neither overflows nor loses the small tail to cancellation.
fn outer_prob_inside(m: u64, n: u64, g: u64, h: u64) -> f64 {
    let (m, n) = if m < n { (n, m) } else { (m, n) };
    let (m, n, h) = (m as i64, n as i64, h as i64);
    let mg = m / g as i64;
    let ng = n / g as i64;
    let mut minj: i64 = 0;
    let mut maxj: i64 = (((h as f64) / (mg as f64)).ceil() as i64).min(n + 1);
    let mut curlen = maxj - minj;
    let len_a = (2 * maxj + 2).min(n + 1) as usize;
    let mut a = vec![1.0f64; len_a];
    for v in &mut a[minj as usize..maxj as usize] {
        *v = 0.0;
    }
    for i in 1..=m {
        let (lastminj, lastlen) = (minj, curlen);
        minj = ((((ng * i - h) as f64) / mg as f64).floor() as i64 + 1).max(0);
        minj = minj.min(n);
        maxj = ((((ng * i + h) as f64) / mg as f64).ceil() as i64).min(n + 1);
        if maxj <= minj {
            return 1.0;
        }
        let mut val = if minj == 0 { 0.0 } else { 1.0 };
        let fi = i as f64;
        for jj in 0..(maxj - minj) {
            let j = jj + minj;
            val = (a[(jj + minj - lastminj) as usize] * fi + val * j as f64) / (fi + j as f64);
            a[jj as usize] = val;
        }
        curlen = maxj - minj;
        if lastlen > curlen {
            let start = (maxj - minj) as usize;
            let end = start + (lastlen - curlen) as usize;
            for v in &mut a[start..end.min(len_a)] {
                *v = 1.0;
            }
        }
    }
    a[(maxj - minj - 1) as usize]
}

/// Two-sample Kolmogorov-Smirnov test (two-sided) on raw slices, judged at `threshold`.
///
/// Kept for callers of the first version of this crate (the monitor): the signature is
/// unchanged, but the p-value is now scipy's `method="auto"` (exact for small samples) rather
/// than the Stephens-corrected asymptotic formula. `drifted` is `p_value < threshold`.
///
/// # Errors
///
/// [`DriftError::EmptySample`] if either sample is empty, [`DriftError::NonFinite`] if either
/// contains NaN or an infinity (this legacy entry point refuses them; [`NumericSample`] treats
/// them as missing instead), and [`DriftError::InvalidThreshold`] unless `0 < threshold < 1`.
pub fn ks_two_sample(
    reference: &[f64],
    current: &[f64],
    threshold: f64,
) -> Result<TestResult, DriftError> {
    check_threshold(threshold)?;
    let a = sorted_finite(reference, "reference")?;
    let b = sorted_finite(current, "current")?;
    let r = ks_2samp_sorted(&a, &b);
    Ok(TestResult::new(
        Method::KolmogorovSmirnov,
        r.statistic,
        r.p_value,
        threshold,
    ))
}

/// The two-sample KS distance `D = sup |F_ref(x) - F_cur(x)|` on raw slices.
///
/// Exposed separately so callers that only want an effect size need not choose a threshold.
///
/// # Errors
///
/// [`DriftError::EmptySample`] if either sample is empty and [`DriftError::NonFinite`] if
/// either contains NaN or an infinity.
pub fn ks_statistic(reference: &[f64], current: &[f64]) -> Result<f64, DriftError> {
    let a = sorted_finite(reference, "reference")?;
    let b = sorted_finite(current, "current")?;
    Ok(ks_distance_sorted(&a, &b))
}

/// Survival function of the limiting Kolmogorov distribution (scipy's `kstwobign.sf`),
/// `Q(lambda) = 2 sum_{j>=1} (-1)^(j-1) exp(-2 j^2 lambda^2)`.
///
/// `ks_2samp` no longer uses it (scipy's asymptotic branch uses the finite-`n` `kstwo`), but it
/// is kept for callers that want the classical large-sample approximation.
#[must_use]
pub fn kolmogorov_sf(lambda: f64) -> f64 {
    if lambda.is_nan() {
        return f64::NAN;
    }
    if lambda < SMALL_LAMBDA {
        return 1.0;
    }
    let a2 = -2.0 * lambda * lambda;
    let mut sum = 0.0;
    let mut sign = 2.0;
    for j in 1..=MAX_TERMS {
        let jf = f64::from(j);
        let term = sign * (a2 * jf * jf).exp();
        sum += term;
        if term.abs() <= f64::EPSILON * sum.abs() || term == 0.0 {
            break;
        }
        sign = -sign;
    }
    sum.clamp(0.0, 1.0)
}

/// Copies and sorts a sample after checking it is usable, so the caller's data is left
/// untouched and the merge can rely on a total order.
fn sorted_finite(sample: &[f64], which: &'static str) -> Result<Vec<f64>, DriftError> {
    if sample.is_empty() {
        return Err(DriftError::EmptySample(which));
    }
    if sample.iter().any(|x| !x.is_finite()) {
        return Err(DriftError::NonFinite);
    }
    let mut v = sample.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [f64; 25] = [
        0.61, 0.29, 0.06, 0.59, -1.73, -0.74, 0.51, -0.56, 0.39, 1.64, 0.05, -0.06, 0.64, -0.82,
        0.37, 1.77, 1.09, -1.28, 2.36, 1.31, 1.05, -0.32, -0.40, 1.06, -2.47,
    ];
    const B: [f64; 16] = [
        2.20, 1.66, 1.38, 0.20, 1.36, 0.00, 0.00, -0.18, 1.34, 1.12, 2.02, 1.37, 0.43, 1.38, 0.87,
        1.41,
    ];

    #[test]
    fn ties_are_stepped_over_together() {
        // Empirical CDFs at 1..=5: ref 1/7, 3/7, 6/7, 1, 1 and cur 0, 1/6, 1/2, 5/6, 1, so
        // D = 6/7 - 1/2 = 5/14. A merge that advanced one element at a time would see "all of
        // ref's 3s consumed, none of cur's" and report 6/7 - 1/6.
        let d = ks_statistic(
            &[1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0],
            &[2.0, 3.0, 3.0, 4.0, 4.0, 5.0],
        )
        .unwrap();
        assert!((d - 5.0 / 14.0).abs() < 1e-15);
        assert_eq!(ks_statistic(&[7.0; 3], &[7.0; 11]).unwrap(), 0.0);
        assert_eq!(ks_statistic(&[-0.0, 1.0], &[0.0, 1.0]).unwrap(), 0.0);
    }

    #[test]
    fn legacy_entry_point_uses_exact_p_values() {
        // scipy.stats.ks_2samp(A, B): statistic 0.465, pvalue 0.019598020755809152 (exact).
        let r = ks_two_sample(&A, &B, 0.05).unwrap();
        assert_eq!(r.method, Method::KolmogorovSmirnov);
        assert!((r.statistic - 0.465).abs() < 1e-12);
        assert!(
            (r.p_value / 0.019598020755809152 - 1.0).abs() < 1e-9,
            "{}",
            r.p_value
        );
        assert!(r.drifted);
        let s = ks_two_sample(&B, &A, 0.05).unwrap();
        assert_eq!(s.p_value, r.p_value);
        let same = ks_two_sample(&A, &A, 0.05).unwrap();
        assert_eq!(
            (same.statistic, same.p_value, same.drifted),
            (0.0, 1.0, false)
        );
    }

    #[test]
    fn equal_sizes_use_the_square_formula() {
        // Complete separation of two samples of 5: p = 2 / C(10, 5) = 1/126.
        let r = ks_2samp_sorted(&[1.0, 2.0, 3.0, 4.0, 5.0], &[6.0, 7.0, 8.0, 9.0, 10.0]);
        assert!(r.exact);
        assert_eq!(r.statistic, 1.0);
        assert!((r.p_value - 2.0 / 252.0).abs() < 1e-15);
    }

    #[test]
    fn kolmogorov_sf_known_values() {
        // scipy.special.kolmogorov at these points.
        assert!((kolmogorov_sf(0.5) - 0.9639452436648751).abs() < 1e-14);
        assert!((kolmogorov_sf(1.0) - 0.26999967167735456).abs() < 1e-14);
        assert_eq!(kolmogorov_sf(0.1), 1.0);
    }

    #[test]
    fn empty_and_non_finite_inputs_error() {
        assert!(matches!(
            ks_two_sample(&[], &[1.0], 0.05),
            Err(DriftError::EmptySample("reference"))
        ));
        assert!(matches!(
            ks_two_sample(&[1.0], &[], 0.05),
            Err(DriftError::EmptySample("current"))
        ));
        assert!(matches!(
            ks_two_sample(&[1.0, f64::NAN], &[1.0], 0.05),
            Err(DriftError::NonFinite)
        ));
        let empty = NumericSample::new(&[f64::NAN]);
        let one = NumericSample::new(&[1.0]);
        assert!(matches!(
            ks_2samp(&empty, &one),
            Err(DriftError::EmptySample("reference"))
        ));
    }
}
