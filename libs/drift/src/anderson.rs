//! The k-sample Anderson-Darling test (Scholz and Stephens 1987), as `scipy.stats.anderson_ksamp`
//! computes it with its default `midrank=True`.
//!
//! Anderson-Darling weighs differences in the tails more than KS does, so it notices a change
//! in the extremes of a feature sooner. Its p-value is not exact: scipy interpolates a quadratic
//! in the critical values of Scholz and Stephens' Table 2 and clips the result to
//! `[0.001, 0.25]`, because the table only covers that range. This crate does the same, so a
//! p-value of exactly 0.25 or 0.001 means "at least" or "at most".

use crate::DriftError;

/// Significance levels of Scholz and Stephens' Table 2, as scipy lists them.
const SIG: [f64; 7] = [0.25, 0.1, 0.05, 0.025, 0.01, 0.005, 0.001];
const B0: [f64; 7] = [0.675, 1.281, 1.645, 1.96, 2.326, 2.573, 3.085];
const B1: [f64; 7] = [-0.245, 0.25, 0.678, 1.149, 1.822, 2.364, 3.615];
const B2: [f64; 7] = [-0.105, -0.305, -0.362, -0.391, -0.396, -0.345, -0.154];

/// The outcome of [`anderson_ksamp`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AndersonOutcome {
    /// The standardised statistic `(A2akN - (k - 1)) / sigma` (scipy's `statistic`).
    pub statistic: f64,
    /// Critical values for the significance levels 25%, 10%, 5%, 2.5%, 1%, 0.5%, 0.1%.
    pub critical_values: [f64; 7],
    /// Approximate p-value, clipped to `[0.001, 0.25]`.
    pub p_value: f64,
}

/// k-sample Anderson-Darling test on sorted samples (`scipy.stats.anderson_ksamp(samples)`).
///
/// The samples are walked together once, distinct value by distinct value, so the cost is
/// linear in the total size after the sorts the caller already did.
///
/// # Errors
///
/// [`DriftError::TooFewSamples`] for fewer than two samples, [`DriftError::EmptySample`] if any
/// sample is empty, and [`DriftError::Degenerate`] if all values are equal (scipy raises there
/// too) or there are fewer than four observations in all (the variance formula divides by
/// `(N-1)(N-2)(N-3)`).
pub fn anderson_ksamp(samples: &[&[f64]]) -> Result<AndersonOutcome, DriftError> {
    let k = samples.len();
    if k < 2 {
        return Err(DriftError::TooFewSamples);
    }
    for (i, s) in samples.iter().enumerate() {
        if s.is_empty() {
            return Err(DriftError::EmptySample(if i == 0 {
                "reference"
            } else {
                "current"
            }));
        }
    }
    let n: Vec<f64> = samples.iter().map(|s| s.len() as f64).collect();
    let total: usize = samples.iter().map(|s| s.len()).sum();
    if total < 4 {
        return Err(DriftError::Degenerate(
            "Anderson-Darling needs at least four observations",
        ));
    }
    let nf = total as f64;

    let mut idx = vec![0usize; k];
    let mut f = vec![0usize; k];
    // Per-sample compensated sums of the inner terms.
    let mut acc = vec![(0.0f64, 0.0f64); k];
    let mut below = 0usize;
    let mut n_unique = 0usize;
    loop {
        let mut z = f64::INFINITY;
        let mut any = false;
        for (s, &i) in samples.iter().zip(&idx) {
            if let Some(&v) = s.get(i) {
                any = true;
                if v < z {
                    z = v;
                }
            }
        }
        if !any {
            break;
        }
        n_unique += 1;
        let mut lj = 0usize;
        for ((s, i), fi) in samples.iter().zip(idx.iter_mut()).zip(f.iter_mut()) {
            let start = *i;
            while *i < s.len() && s[*i] == z {
                *i += 1;
            }
            *fi = *i - start;
            lj += *fi;
        }
        let ljf = lj as f64;
        let bj = below as f64 + ljf / 2.0;
        let denom = bj * (nf - bj) - nf * ljf / 4.0;
        for s in 0..k {
            let mij = idx[s] as f64 - f[s] as f64 / 2.0;
            let num = nf * mij - bj * n[s];
            let term = ljf / nf * num * num / denom;
            let (sum, comp) = &mut acc[s];
            let t = *sum + term;
            if sum.abs() >= term.abs() {
                *comp += (*sum - t) + term;
            } else {
                *comp += (term - t) + *sum;
            }
            *sum = t;
        }
        below += lj;
    }
    if n_unique < 2 {
        return Err(DriftError::Degenerate(
            "Anderson-Darling needs more than one distinct observation",
        ));
    }
    let mut a2akn = 0.0;
    for (s, &(sum, comp)) in acc.iter().enumerate() {
        a2akn += (sum + comp) / n[s];
    }
    a2akn *= (nf - 1.0) / nf;

    let kf = k as f64;
    let big_h: f64 = n.iter().map(|&x| 1.0 / x).sum();
    // hs_cs = cumsum(1 / arange(N-1, 1, -1)), a sequential running sum as numpy's cumsum is.
    let mut cs = 0.0f64;
    let mut g_terms = Vec::with_capacity(total.saturating_sub(2));
    for t in 0..total - 2 {
        cs += 1.0 / (total - 1 - t) as f64;
        g_terms.push(cs / (t + 2) as f64);
    }
    let h = cs + 1.0;
    let g = crate::sample::neumaier_sum(g_terms);
    let a = (4.0 * g - 6.0) * (kf - 1.0) + (10.0 - 6.0 * g) * big_h;
    let b = (2.0 * g - 4.0) * kf * kf + 8.0 * h * kf + (2.0 * g - 14.0 * h - 4.0) * big_h - 8.0 * h
        + 4.0 * g
        - 6.0;
    let c = (6.0 * h + 2.0 * g - 2.0) * kf * kf
        + (4.0 * h - 4.0 * g + 6.0) * kf
        + (2.0 * h - 6.0) * big_h
        + 4.0 * h;
    let d = (2.0 * h + 6.0) * kf * kf - 4.0 * h * kf;
    let sigmasq =
        (a * nf.powi(3) + b * nf * nf + c * nf + d) / ((nf - 1.0) * (nf - 2.0) * (nf - 3.0));
    let m = kf - 1.0;
    let statistic = (a2akn - m) / sigmasq.sqrt();

    let mut critical = [0.0; 7];
    for i in 0..7 {
        critical[i] = B0[i] + B1[i] / m.sqrt() + B2[i] / m;
    }
    let cmin = critical.iter().copied().fold(f64::INFINITY, f64::min);
    let cmax = critical.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let p_value = if statistic < cmin {
        0.25
    } else if statistic > cmax {
        0.001
    } else {
        let log_sig = SIG.map(f64::ln);
        let [c2, c1, c0] = quadratic_fit(&critical, &log_sig);
        (c2 * statistic * statistic + c1 * statistic + c0).exp()
    };
    Ok(AndersonOutcome {
        statistic,
        critical_values: critical,
        p_value,
    })
}

/// Least-squares quadratic `y ~ c2 x^2 + c1 x + c0` (numpy's `polyfit(x, y, 2)`), by a QR
/// decomposition of the Vandermonde matrix (modified Gram-Schmidt) rather than the normal
/// equations, which would square its condition number.
fn quadratic_fit(x: &[f64; 7], y: &[f64; 7]) -> [f64; 3] {
    let mut cols: [[f64; 7]; 3] = [x.map(|v| v * v), *x, [1.0; 7]];
    let mut r = [[0.0f64; 3]; 3];
    for j in 0..3 {
        for i in 0..j {
            let dot: f64 = cols[i].iter().zip(&cols[j]).map(|(a, b)| a * b).sum();
            r[i][j] = dot;
            let qi = cols[i];
            for (v, q) in cols[j].iter_mut().zip(qi) {
                *v -= dot * q;
            }
        }
        let norm = cols[j].iter().map(|v| v * v).sum::<f64>().sqrt();
        r[j][j] = norm;
        for v in &mut cols[j] {
            *v /= norm;
        }
    }
    let qty: Vec<f64> = (0..3)
        .map(|j| (0..7).map(|t| cols[j][t] * y[t]).sum())
        .collect();
    let mut coef = [0.0f64; 3];
    for j in (0..3).rev() {
        let mut s = qty[j];
        for i in j + 1..3 {
            s -= r[j][i] * coef[i];
        }
        coef[j] = s / r[j][j];
    }
    coef
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quadratic_fit_recovers_a_parabola() {
        let x = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0];
        let y = x.map(|v| 2.0 * v * v - 3.0 * v + 0.5);
        let c = quadratic_fit(&x, &y);
        assert!((c[0] - 2.0).abs() < 1e-12);
        assert!((c[1] + 3.0).abs() < 1e-12);
        assert!((c[2] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn errors_are_typed() {
        assert!(matches!(
            anderson_ksamp(&[&[1.0, 2.0]]),
            Err(DriftError::TooFewSamples)
        ));
        assert!(matches!(
            anderson_ksamp(&[&[], &[1.0, 2.0]]),
            Err(DriftError::EmptySample("reference"))
        ));
        assert!(matches!(
            anderson_ksamp(&[&[1.0, 1.0], &[1.0, 1.0, 1.0]]),
            Err(DriftError::Degenerate(_))
        ));
    }

    #[test]
    fn p_value_is_clipped() {
        let a: Vec<f64> = (0..50).map(f64::from).collect();
        let b: Vec<f64> = (100..150).map(f64::from).collect();
        assert_eq!(anderson_ksamp(&[&a, &b]).unwrap().p_value, 0.001);
        let same = anderson_ksamp(&[&a, &a]).unwrap();
        assert_eq!(same.p_value, 0.25);
    }
}
