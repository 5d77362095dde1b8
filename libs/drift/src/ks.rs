//! Two-sample Kolmogorov-Smirnov test for numeric features.
//!
//! KS is the default for numeric features because it makes no assumption about
//! the shape of either distribution: it compares the empirical CDFs directly,
//! so it notices shifts in location, spread or shape alike.

use crate::{DriftError, Method, TestResult, check_threshold};

/// Below this `lambda` the Kolmogorov survival function equals 1 to within
/// about 1e-12.
///
/// The alternating series converges very slowly for small arguments, so
/// rather than summing thousands of terms (as Numerical Recipes' `probks`
/// would otherwise fail to converge and return 1 anyway) we short-circuit.
/// The error is bounded by the complementary theta-function form
/// `1 - Q(l) = sqrt(2 pi)/l * sum exp(-(2j-1)^2 pi^2 / (8 l^2))`, which at
/// `l = 0.2` is about 5e-13.
const SMALL_LAMBDA: f64 = 0.2;

/// Upper bound on series terms. For `lambda >= SMALL_LAMBDA` the terms fall
/// below `f64::EPSILON` relative to the sum well before this (around j = 22),
/// so the bound only guards against an infinite loop.
const MAX_TERMS: u32 = 200;

/// Two-sample Kolmogorov-Smirnov test (two-sided).
///
/// The statistic is `D = sup |F_ref(x) - F_cur(x)|` over the two empirical
/// CDFs, computed exactly (see [`ks_statistic`] for how ties are handled).
///
/// The p-value uses the asymptotic Kolmogorov distribution, as in Numerical
/// Recipes' `kstwo`: with the effective sample size `en = n*m/(n+m)` and
/// Stephens' small-sample correction
/// `lambda = (sqrt(en) + 0.12 + 0.11/sqrt(en)) * D`, the p-value is
/// [`kolmogorov_sf`]`(lambda)`. The correction is used because the monitor
/// often compares a modest window of live traffic against training data, and
/// without it the asymptotic p-value is noticeably off for samples of a few
/// dozen points. This differs slightly from `scipy.stats.ks_2samp(...,
/// method='asymp')`, which evaluates the finite-n `kstwo` distribution at
/// `round(en)` without Stephens' correction; the two agree to within a few
/// hundredths for small samples and converge as the samples grow.
///
/// # Errors
///
/// [`DriftError::EmptySample`] if either sample is empty,
/// [`DriftError::NonFinite`] if either contains NaN or an infinity, and
/// [`DriftError::InvalidThreshold`] unless `0 < threshold < 1`.
pub fn ks_two_sample(
    reference: &[f64],
    current: &[f64],
    threshold: f64,
) -> Result<TestResult, DriftError> {
    check_threshold(threshold)?;
    let d = ks_statistic(reference, current)?;
    // Lengths are far below 2^53 in practice, so the conversion is exact.
    let n = reference.len() as f64;
    let m = current.len() as f64;
    let en = n * m / (n + m);
    let sqrt_en = en.sqrt();
    let lambda = (sqrt_en + 0.12 + 0.11 / sqrt_en) * d;
    Ok(TestResult::new(
        Method::KolmogorovSmirnov,
        d,
        kolmogorov_sf(lambda),
        threshold,
    ))
}

/// The two-sample KS distance `D = sup |F_ref(x) - F_cur(x)|`.
///
/// Both samples are sorted and merged. At each distinct value every copy of
/// that value is consumed from *both* samples before the CDFs are compared,
/// because the empirical CDF jumps by the full multiplicity of a value at
/// once; comparing after consuming only some of the copies would measure a
/// gap that exists at no real `x` and overstate `D` (badly so for discrete or
/// rounded features, where ties are the norm). The supremum is attained at one
/// of the sample values, so checking after each distinct value is exact.
///
/// Exposed separately so callers that only want an effect size (for example
/// to chart drift over time) need not choose a threshold.
///
/// # Errors
///
/// [`DriftError::EmptySample`] if either sample is empty and
/// [`DriftError::NonFinite`] if either contains NaN or an infinity.
pub fn ks_statistic(reference: &[f64], current: &[f64]) -> Result<f64, DriftError> {
    let a = sorted_finite(reference, "reference")?;
    let b = sorted_finite(current, "current")?;
    let n = a.len() as f64;
    let m = b.len() as f64;

    let (mut i, mut j) = (0, 0);
    let mut d: f64 = 0.0;
    // Once either sample is exhausted its CDF is 1 and the other's only rises
    // towards 1, so the gap can only shrink: the loop may stop there.
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
    Ok(d)
}

/// Survival function of the Kolmogorov distribution,
/// `Q_KS(lambda) = 2 * sum_{j>=1} (-1)^(j-1) exp(-2 j^2 lambda^2)`.
///
/// statrs has no Kolmogorov distribution, so the series is summed here. The
/// result is clamped to `[0, 1]` because truncation and rounding can push the
/// partial sum marginally outside it, and a p-value outside `[0, 1]` would
/// confuse anything downstream. Small `lambda` (including 0 and negative
/// values, which cannot arise from a distance but are handled rather than
/// trusted) return exactly 1, because below 0.2 the true value differs from 1
/// by less than 1e-12 and the series converges too slowly to be worth summing.
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

/// Copies and sorts a sample after checking it is usable, so the caller's
/// data is left untouched and the merge can rely on a total order.
fn sorted_finite(sample: &[f64], which: &'static str) -> Result<Vec<f64>, DriftError> {
    if sample.is_empty() {
        return Err(DriftError::EmptySample(which));
    }
    if sample.iter().any(|x| !x.is_finite()) {
        return Err(DriftError::NonFinite);
    }
    let mut v = sample.to_vec();
    // total_cmp orders -0.0 just before 0.0; the merge compares with `==`,
    // which treats them as the same value, so they are still consumed together.
    v.sort_unstable_by(f64::total_cmp);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values were computed with Python 3 / NumPy / SciPy 1.17.1:
    // * D independently via np.searchsorted(side='right') on both sorted
    //   samples over the pooled values (and equals ks_2samp's statistic);
    // * "NR" p-values from the Numerical Recipes formula (Stephens-corrected
    //   lambda), the series summed with math.fsum over 20 000 terms, and
    //   cross-checked against scipy.special.kolmogorov(lambda), which agreed
    //   to ~1e-16;
    // * "scipy asymp" p-values from scipy.stats.ks_2samp(a, b,
    //   method='asymp'), which uses kstwo.sf(D, round(en)) without Stephens'
    //   correction, so they are only compared loosely.

    const A: [f64; 25] = [
        0.61, 0.29, 0.06, 0.59, -1.73, -0.74, 0.51, -0.56, 0.39, 1.64, 0.05, -0.06, 0.64, -0.82,
        0.37, 1.77, 1.09, -1.28, 2.36, 1.31, 1.05, -0.32, -0.40, 1.06, -2.47,
    ];
    const B: [f64; 16] = [
        2.20, 1.66, 1.38, 0.20, 1.36, 0.00, 0.00, -0.18, 1.34, 1.12, 2.02, 1.37, 0.43, 1.38, 0.87,
        1.41,
    ];

    fn close(actual: f64, expected: f64, tol: f64) {
        assert!(
            (actual - expected).abs() <= tol,
            "expected {expected}, got {actual} (tolerance {tol})"
        );
    }

    /// Deterministic approximately-normal values without a `rand`
    /// dependency: a 64-bit LCG (Knuth's MMIX constants) feeding the
    /// Irwin-Hall approximation, sum of 12 uniforms minus 6, which has mean 0
    /// and variance 1.
    fn normalish(seed: u64, count: usize, shift: f64) -> Vec<f64> {
        let mut state = seed;
        let mut uniform = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // Top 53 bits give a uniform double in [0, 1).
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..count)
            .map(|_| (0..12).map(|_| uniform()).sum::<f64>() - 6.0 + shift)
            .collect()
    }

    #[test]
    fn matches_reference_values_for_small_samples() {
        let r = ks_two_sample(&A, &B, 0.05).unwrap();
        assert_eq!(r.method, Method::KolmogorovSmirnov);
        close(r.statistic, 0.465, 1e-12);
        // NR formula: lambda = 1.5245919758012707.
        close(r.p_value, 0.01914688801678088, 1e-12);
        // scipy asymp: 0.016804018807380472.
        close(r.p_value, 0.016804018807380472, 0.005);
        assert!(r.drifted);
        assert_eq!(r.threshold, 0.05);

        // Swapping the samples must not change a two-sided test.
        let s = ks_two_sample(&B, &A, 0.05).unwrap();
        close(s.statistic, r.statistic, 1e-15);
        close(s.p_value, r.p_value, 1e-15);
    }

    #[test]
    fn matches_reference_values_without_drift() {
        // Interleaved samples: D = 1/3, lambda = 0.6126846518265621.
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let b = [1.5, 2.5, 3.5, 4.5, 5.5, 6.5];
        let r = ks_two_sample(&a, &b, 0.05).unwrap();
        close(r.statistic, 1.0 / 3.0, 1e-12);
        close(r.p_value, 0.8470543419978267, 1e-12);
        // scipy asymp gives 0.7778 here (n = 5 is far from asymptotic).
        close(r.p_value, 0.7777777777777778, 0.08);
        assert!(!r.drifted);

        // A sample against a subset of itself: D = 0.22,
        // lambda = 0.6234295430833265.
        let r = ks_two_sample(&A, &A[..10], 0.05).unwrap();
        close(r.statistic, 0.22, 1e-12);
        close(r.p_value, 0.8318244928346505, 1e-12);
        close(r.p_value, 0.8214026764379705, 0.02);
    }

    #[test]
    fn ties_are_stepped_over_together() {
        // Empirical CDFs at 1..=5: ref 1/7, 3/7, 6/7, 1, 1 and cur 0, 1/6,
        // 1/2, 5/6, 1, so D = 6/7 - 1/2 = 5/14 (also scipy's statistic). A
        // merge that advanced one element at a time would see the state
        // "all of ref's 3s consumed, none of cur's" and report 6/7 - 1/6.
        let a = [1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0];
        let b = [2.0, 3.0, 3.0, 4.0, 4.0, 5.0];
        let r = ks_two_sample(&a, &b, 0.05).unwrap();
        close(r.statistic, 5.0 / 14.0, 1e-12);
        // lambda = 0.7066544353481766.
        close(r.p_value, 0.7001308145277136, 1e-12);
        close(r.p_value, 0.7133138969873666, 0.02);

        // Fully tied samples of different sizes have identical CDFs.
        let d = ks_statistic(&[7.0; 3], &[7.0; 11]).unwrap();
        assert_eq!(d, 0.0);

        // Signed zeros are the same value.
        let d = ks_statistic(&[-0.0, 1.0], &[0.0, 1.0]).unwrap();
        assert_eq!(d, 0.0);
    }

    #[test]
    fn identical_samples_do_not_drift() {
        let r = ks_two_sample(&A, &A, 0.05).unwrap();
        assert_eq!(r.statistic, 0.0);
        assert_eq!(r.p_value, 1.0);
        assert!(!r.drifted);

        // Order must not matter.
        let mut rev = A;
        rev.reverse();
        assert_eq!(ks_statistic(&A, &rev).unwrap(), 0.0);
    }

    #[test]
    fn shifted_samples_drift() {
        let reference = normalish(1, 200, 0.0);
        let current = normalish(2, 200, 3.0);
        let r = ks_two_sample(&reference, &current, 0.05).unwrap();
        assert!(r.p_value < 1e-6, "p = {}", r.p_value);
        assert!(r.drifted);
        // The same generator ported to Python gives D = 0.86 and an NR
        // p-value of 2.323035572786658e-66. (scipy asymp reports 1.19e-85:
        // this far into the tail the finite-n and asymptotic distributions
        // differ by orders of magnitude, both being "certainly drifted".)
        close(r.statistic, 0.86, 1e-12);
        assert!(
            (r.p_value / 2.323035572786658e-66 - 1.0).abs() < 1e-9,
            "p = {}",
            r.p_value
        );
    }

    #[test]
    fn same_distribution_does_not_drift() {
        // Two independent draws from the same generator: the test should not
        // cry wolf. (Deterministic, so this cannot be flaky.)
        let reference = normalish(1, 200, 0.0);
        let current = normalish(2, 200, 0.0);
        let r = ks_two_sample(&reference, &current, 0.05).unwrap();
        // Python port: D = 0.07, NR p = 0.6959205945266983,
        // scipy asymp p = 0.6846706791645851.
        close(r.statistic, 0.07, 1e-12);
        close(r.p_value, 0.6959205945266983, 1e-12);
        close(r.p_value, 0.6846706791645851, 0.02);
        assert!(!r.drifted);
    }

    #[test]
    fn kolmogorov_sf_known_values() {
        // scipy.special.kolmogorov at these points.
        close(kolmogorov_sf(0.5), 0.9639452436648751, 1e-14);
        close(kolmogorov_sf(1.0), 0.26999967167735456, 1e-14);
        close(kolmogorov_sf(1.3580986393225507), 0.05, 1e-12);
        close(kolmogorov_sf(2.0), 0.0006709252557796953, 1e-16);
        assert_eq!(kolmogorov_sf(0.0), 1.0);
        assert_eq!(kolmogorov_sf(0.1), 1.0);
        assert!(kolmogorov_sf(30.0) >= 0.0);
        assert!(kolmogorov_sf(30.0) < 1e-300);
        // Monotone decreasing across the short-circuit boundary.
        assert!(kolmogorov_sf(SMALL_LAMBDA) <= 1.0);
        assert!(kolmogorov_sf(0.3) < 1.0);
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
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(matches!(
                ks_two_sample(&[1.0, bad], &[1.0], 0.05),
                Err(DriftError::NonFinite)
            ));
            assert!(matches!(
                ks_two_sample(&[1.0], &[bad, 2.0], 0.05),
                Err(DriftError::NonFinite)
            ));
        }
        assert!(matches!(
            ks_two_sample(&[1.0], &[2.0], f64::NAN),
            Err(DriftError::InvalidThreshold(_))
        ));
    }
}
