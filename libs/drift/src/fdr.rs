//! Multiple-testing control across the columns of one window.
//!
//! A dataset with twenty features tested at 5% each raises at least one false alarm in about
//! 64% of windows even when nothing changed. The `petrel` preset therefore adjusts the
//! per-column p-values with Benjamini-Hochberg, which bounds the expected share of false
//! discoveries among the columns it flags; when nothing drifted at all that bound is also the
//! probability of any alarm, so the dataset-level false-alarm rate is the chosen FDR level.

use crate::DriftError;

/// Benjamini-Hochberg adjusted p-values, in the input order:
/// `scipy.stats.false_discovery_control(ps, method="bh")`.
///
/// With the p-values sorted ascending, `p_(i) * m / i` is made monotone from the largest down
/// (a running minimum) and clipped to 1. The presets call a column a discovery at level `q`
/// when its adjusted p-value is below `q`. A single p-value (or none) is returned unchanged, as
/// scipy does.
///
/// # Errors
///
/// [`DriftError::InvalidPValue`] if any p-value is NaN or outside `[0, 1]`.
pub fn benjamini_hochberg(ps: &[f64]) -> Result<Vec<f64>, DriftError> {
    if let Some(&bad) = ps.iter().find(|p| !(0.0..=1.0).contains(*p)) {
        return Err(DriftError::InvalidPValue(bad));
    }
    let m = ps.len();
    if m <= 1 {
        return Ok(ps.to_vec());
    }
    let mut order: Vec<usize> = (0..m).collect();
    // Stable, like numpy's argsort on ties it keeps the input order (the result does not
    // depend on it, since tied p-values get the same adjusted value).
    order.sort_by(|&a, &b| ps[a].total_cmp(&ps[b]));
    let mut adjusted = vec![0.0; m];
    let mut running = f64::INFINITY;
    let mf = m as f64;
    for (rank, &i) in order.iter().enumerate().rev() {
        let v = ps[i] * (mf / (rank + 1) as f64);
        running = running.min(v);
        adjusted[i] = running.clamp(0.0, 1.0);
    }
    Ok(adjusted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_textbook_example() {
        // scipy.stats.false_discovery_control([0.01, 0.04, 0.03, 0.2]):
        // [0.04, 0.05333333333333333, 0.05333333333333333, 0.2]
        let a = benjamini_hochberg(&[0.01, 0.04, 0.03, 0.2]).unwrap();
        let want = [0.04, 0.05333333333333333, 0.05333333333333333, 0.2];
        for (x, y) in a.iter().zip(want) {
            assert!((x - y).abs() < 1e-15, "{a:?}");
        }
        assert_eq!(benjamini_hochberg(&[0.3]).unwrap(), [0.3]);
        assert!(benjamini_hochberg(&[]).unwrap().is_empty());
        assert!(matches!(
            benjamini_hochberg(&[0.1, f64::NAN]),
            Err(DriftError::InvalidPValue(_))
        ));
    }
}
