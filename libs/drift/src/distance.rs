//! Distances between distributions, as Evidently defines them.
//!
//! Unlike the hypothesis tests these have no p-value: Evidently compares them with a fixed
//! threshold (0.1 by default). With large windows every test rejects for differences too
//! small to matter, which is why Evidently switches to distances once the reference has more
//! than 1000 rows. Each function mirrors the corresponding Evidently stattest
//! (`wasserstein_distance_norm`, `psi`, `kl_div`, `jensenshannon`) so that the `evidently`
//! preset reaches the same decisions as Evidently itself.

use crate::DriftError;
use crate::sample::{CategoryTable, Neumaier, NumericSample, neumaier_sum};

/// The first Wasserstein distance between two sorted, non-empty samples
/// (`scipy.stats.wasserstein_distance`): the area between the two empirical CDFs.
#[must_use]
pub fn wasserstein_sorted(u: &[f64], v: &[f64]) -> f64 {
    if u.is_empty() || v.is_empty() {
        return f64::NAN;
    }
    // The same area between the quantile functions: W = ∫₀¹ |U⁻¹(t) - V⁻¹(t)| dt, where
    // U⁻¹(t) = u[i] on (i/n, (i+1)/n]. Measured in units of 1/(n·m) the breakpoints of both
    // step functions are the integers i·m and j·n, so the walk over them is integer
    // arithmetic that never compares the data: no data-dependent branch, no load on the
    // loop's critical path, and no division per step (scipy's CDF form divides twice per
    // merged value). With n = m every step advances both sides and the walk is
    // Σ|u[i] - v[i]| · m.
    let (n, m) = (u.len() as u64, v.len() as u64);
    let (mut i, mut j) = (0usize, 0usize);
    // The next breakpoint of each side and the last one passed, in units of 1/(n·m).
    let (mut next_u, mut next_v, mut at) = (m, n, 0u64);
    // Every term is non-negative, so there is no cancellation: terms are summed plainly in
    // blocks (error about 1e-13 relative per block) and the blocks with compensation.
    let mut acc = Neumaier::default();
    let mut block = [0.0f64; 2];
    let mut in_block = 0u32;
    while i < u.len() && j < v.len() {
        let to = next_u.min(next_v);
        block[(in_block & 1) as usize] += (u[i] - v[j]).abs() * (to - at) as f64;
        at = to;
        let (step_u, step_v) = (next_u == to, next_v == to);
        i += usize::from(step_u);
        j += usize::from(step_v);
        next_u += if step_u { m } else { 0 };
        next_v += if step_v { n } else { 0 };
        in_block += 1;
        if in_block == 1024 {
            acc.add(block[0] + block[1]);
            block = [0.0; 2];
            in_block = 0;
        }
    }
    acc.add(block[0] + block[1]);
    // Both sides end at t = 1, so both are exhausted together.
    debug_assert!(i == u.len() && j == v.len());
    acc.sum() / (n as f64 * m as f64)
}

/// The smallest reference spread Evidently divides by, so a constant reference column does not
/// turn every shift into an infinite distance.
pub const WASSERSTEIN_MIN_NORM: f64 = 0.001;

/// Evidently's normalised Wasserstein distance:
/// `wasserstein_distance(ref, cur) / max(std(ref), 0.001)` with the population standard
/// deviation, so the distance is in units of the reference's spread.
///
/// # Errors
///
/// [`DriftError::EmptySample`] if either side has no finite value.
pub fn wasserstein_norm(
    reference: &NumericSample,
    current: &NumericSample,
) -> Result<f64, DriftError> {
    non_empty(reference, current)?;
    let norm = reference.std_population().max(WASSERSTEIN_MIN_NORM);
    Ok(wasserstein_sorted(reference.values(), current.values()) / norm)
}

fn non_empty(reference: &NumericSample, current: &NumericSample) -> Result<(), DriftError> {
    if reference.is_empty() {
        return Err(DriftError::EmptySample("reference"));
    }
    if current.is_empty() {
        return Err(DriftError::EmptySample("current"));
    }
    Ok(())
}

/// numpy's `histogram_bin_edges(combined, bins="sturges")` for the union of two sorted,
/// non-empty samples: `ceil(log2(N) + 1)`-ish equal-width bins over `[min, max]`, the width
/// being `ptp / (log2(N) + 1)` and the edges `min + i * step` with the last edge exactly `max`.
#[must_use]
pub fn sturges_edges(a: &[f64], b: &[f64]) -> Vec<f64> {
    let min = a[0].min(b[0]);
    let max = a[a.len() - 1].max(b[b.len() - 1]);
    let size = (a.len() + b.len()) as f64;
    let width = (max - min) / (size.log2() + 1.0);
    let (first, last) = if min == max {
        (min - 0.5, max + 0.5)
    } else {
        (min, max)
    };
    let n_bins = if width != 0.0 {
        ((last - first) / width).ceil() as usize
    } else {
        1
    };
    linspace(first, last, n_bins + 1)
}

/// `numpy.linspace(start, stop, num)` with `endpoint=True`, step by step as numpy computes it.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let div = (num - 1) as f64;
    let delta = stop - start;
    let step = delta / div;
    let mut out: Vec<f64> = (0..num)
        .map(|i| {
            let y = if step == 0.0 {
                i as f64 / div * delta
            } else {
                i as f64 * step
            };
            y + start
        })
        .collect();
    if num > 1 {
        out[num - 1] = stop;
    }
    out
}

/// Counts of a sorted sample in the bins given by `edges` (`numpy.histogram` with explicit
/// edges): `[e_i, e_{i+1})`, the last bin closed on the right; values outside are not counted.
#[must_use]
pub fn histogram_sorted(sorted: &[f64], edges: &[f64]) -> Vec<u64> {
    let nb = edges.len() - 1;
    let mut cum: Vec<usize> = edges[..nb]
        .iter()
        .map(|&e| sorted.partition_point(|&x| x < e))
        .collect();
    cum.push(sorted.partition_point(|&x| x <= edges[nb]));
    cum.windows(2).map(|w| (w[1] - w[0]) as u64).collect()
}

/// Reference and current shares per bin, the way Evidently's `get_binned_data` builds them.
#[derive(Debug, Clone, PartialEq)]
pub struct BinnedShares {
    /// Share of the reference in each bin.
    pub reference: Vec<f64>,
    /// Share of the current window in each bin.
    pub current: Vec<f64>,
}

/// Evidently's `get_binned_data` for a numeric column: if the reference has more than 20
/// distinct values, Sturges bins over both samples together; otherwise one bin per distinct
/// value seen on either side. Shares are counts over each side's number of non-missing values.
///
/// With `fill_zeroes` (PSI and KL; not Jensen-Shannon) an empty bin's share is replaced by a
/// small positive number so logarithms stay finite: `min_nonzero / 1e6` if the smallest
/// non-zero share is at most `1e-4`, else `1e-4`, separately for each side.
///
/// One known difference: numpy widens a Sturges bin to 1 for integer-typed pandas columns;
/// values here are always `f64`, so integer columns with a very narrow range can be binned
/// more finely than Evidently bins them.
///
/// # Errors
///
/// [`DriftError::EmptySample`] if either side has no finite value.
pub fn binned_numeric(
    reference: &NumericSample,
    current: &NumericSample,
    fill_zeroes: bool,
) -> Result<BinnedShares, DriftError> {
    non_empty(reference, current)?;
    let (r, c) = (reference.values(), current.values());
    let (ref_counts, cur_counts) = if reference.n_unique() > 20 {
        let edges = sturges_edges(r, c);
        (histogram_sorted(r, &edges), histogram_sorted(c, &edges))
    } else {
        let t = CategoryTable::from_numeric(reference, current);
        t.cells.iter().map(|&(a, b)| (a, b)).unzip()
    };
    Ok(shares(&ref_counts, &cur_counts, fill_zeroes))
}

/// Evidently's `get_binned_data` for a categorical column: one bin per category seen on
/// either side. An unseen category (absent from the reference) is an empty reference bin,
/// filled by `fill_zeroes` like any other.
///
/// # Errors
///
/// [`DriftError::EmptySample`] if either side has no non-missing value.
pub fn binned_categorical(
    table: &CategoryTable,
    fill_zeroes: bool,
) -> Result<BinnedShares, DriftError> {
    let (nr, nc) = table.totals();
    if nr == 0 {
        return Err(DriftError::EmptySample("reference"));
    }
    if nc == 0 {
        return Err(DriftError::EmptySample("current"));
    }
    let (r, c): (Vec<u64>, Vec<u64>) = table.cells.iter().copied().unzip();
    Ok(shares(&r, &c, fill_zeroes))
}

fn shares(r: &[u64], c: &[u64], fill_zeroes: bool) -> BinnedShares {
    let to_shares = |counts: &[u64]| -> Vec<f64> {
        let n = counts.iter().sum::<u64>() as f64;
        let mut s: Vec<f64> = counts.iter().map(|&k| k as f64 / n).collect();
        if fill_zeroes {
            let min_nonzero = s
                .iter()
                .copied()
                .filter(|&x| x != 0.0)
                .fold(f64::INFINITY, f64::min);
            let fill = if min_nonzero <= 1e-4 {
                min_nonzero / 1e6
            } else {
                1e-4
            };
            for x in &mut s {
                if *x == 0.0 {
                    *x = fill;
                }
            }
        }
        s
    };
    BinnedShares {
        reference: to_shares(r),
        current: to_shares(c),
    }
}

/// Population stability index of binned shares: `sum (r - c) ln(r / c)` (Evidently's `psi`;
/// the shares must already be zero-filled).
#[must_use]
pub fn psi(b: &BinnedShares) -> f64 {
    neumaier_sum(
        b.reference
            .iter()
            .zip(&b.current)
            .map(|(&r, &c)| (r - c) * (r / c).ln()),
    )
}

/// Kullback-Leibler divergence `KL(ref || cur)` of binned shares (`scipy.stats.entropy(r, c)`
/// as Evidently's `kl_div` calls it): both vectors are renormalised to sum to one first, which
/// matters because zero-filling adds a little mass.
#[must_use]
pub fn kl_div(b: &BinnedShares) -> f64 {
    let sr = neumaier_sum(b.reference.iter().copied());
    let sc = neumaier_sum(b.current.iter().copied());
    neumaier_sum(b.reference.iter().zip(&b.current).map(|(&r, &c)| {
        let (p, q) = (r / sr, c / sc);
        rel_entr(p, q)
    }))
}

/// `scipy.special.rel_entr`: `x ln(x/y)`, 0 when `x == 0`, infinite when only `y` is 0.
fn rel_entr(x: f64, y: f64) -> f64 {
    if x > 0.0 && y > 0.0 {
        x * (x / y).ln()
    } else if x == 0.0 && y >= 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// Jensen-Shannon distance (natural logarithm) of binned shares,
/// `scipy.spatial.distance.jensenshannon(r, c)` as Evidently calls it: the square root of the
/// mean KL divergence of each side from their midpoint. Bounded by `sqrt(ln 2)`; no zero-filling
/// is needed because the midpoint is positive wherever either side is.
#[must_use]
pub fn jensen_shannon(b: &BinnedShares) -> f64 {
    let sr = neumaier_sum(b.reference.iter().copied());
    let sc = neumaier_sum(b.current.iter().copied());
    let mut left = Vec::with_capacity(b.reference.len());
    let mut right = Vec::with_capacity(b.reference.len());
    for (&r, &c) in b.reference.iter().zip(&b.current) {
        let (p, q) = (r / sr, c / sc);
        let m = (p + q) / 2.0;
        left.push(rel_entr(p, m));
        right.push(rel_entr(q, m));
    }
    let js = neumaier_sum(left) + neumaier_sum(right);
    (js / 2.0).max(0.0).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasserstein_hand_computed() {
        // scipy.stats.wasserstein_distance([0, 1, 3], [5, 6, 8]) == 5.0
        assert_eq!(wasserstein_sorted(&[0.0, 1.0, 3.0], &[5.0, 6.0, 8.0]), 5.0);
        assert_eq!(wasserstein_sorted(&[1.0, 1.0], &[1.0]), 0.0);
        // [0, 1] vs [0, 0, 1, 1, 1]: |1/2 - 2/5| * 1 = 0.1
        let w = wasserstein_sorted(&[0.0, 1.0], &[0.0, 0.0, 1.0, 1.0, 1.0]);
        assert!((w - 0.1).abs() < 1e-15);
    }

    #[test]
    fn constant_reference_uses_the_floor() {
        let r = NumericSample::new(&[2.0; 10]);
        let c = NumericSample::new(&[2.0, 3.0]);
        // W = 0.5, std = 0 -> divided by 0.001.
        assert!((wasserstein_norm(&r, &c).unwrap() - 500.0).abs() < 1e-9);
        assert!(matches!(
            wasserstein_norm(&NumericSample::default(), &c),
            Err(DriftError::EmptySample("reference"))
        ));
    }

    #[test]
    fn sturges_edges_match_numpy() {
        // numpy.histogram_bin_edges([0, 1, 2, 3, 4, 5, 6, 7], bins="sturges"):
        // width = 7 / 4 -> 4 bins of 1.75.
        let e = sturges_edges(&[0.0, 1.0, 2.0, 3.0], &[4.0, 5.0, 6.0, 7.0]);
        assert_eq!(e, [0.0, 1.75, 3.5, 5.25, 7.0]);
        assert_eq!(histogram_sorted(&[0.0, 1.75, 7.0, 7.0], &e), [1, 1, 0, 2]);
        // A constant sample gets one bin of width 1 around the value.
        assert_eq!(sturges_edges(&[3.0], &[3.0]), [2.5, 3.5]);
    }

    #[test]
    fn divergences_of_identical_shares_are_zero() {
        let b = BinnedShares {
            reference: vec![0.25, 0.75],
            current: vec![0.25, 0.75],
        };
        assert_eq!(psi(&b), 0.0);
        assert_eq!(kl_div(&b), 0.0);
        assert_eq!(jensen_shannon(&b), 0.0);
        // Disjoint supports: JS distance is sqrt(ln 2).
        let d = BinnedShares {
            reference: vec![1.0, 0.0],
            current: vec![0.0, 1.0],
        };
        assert!((jensen_shannon(&d) - std::f64::consts::LN_2.sqrt()).abs() < 1e-15);
    }

    #[test]
    fn zero_filling_follows_evidently() {
        let s = shares(&[0, 5, 5], &[1, 0, 9999], true);
        assert_eq!(s.reference, [1e-4, 0.5, 0.5]);
        // Smallest non-zero current share is 1e-4, so the fill is 1e-4 / 1e6.
        assert_eq!(s.current[1], 1e-4 / 1e6);
    }
}
