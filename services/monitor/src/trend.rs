//! Trends across windows: a least-squares slope test per monitored metric, so a steady decline
//! is flagged while the metric is still above its hard threshold.

use petrel_api::monitor::Trend;
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

/// The slope of a metric over its last windows (`x` = window number, 0 for the oldest).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slope {
    pub slope: f64,
    pub intercept: f64,
    /// Standard error of the slope.
    pub std_error: f64,
    /// One-sided p-value of "the slope is not negative" (Student's t, n - 2 degrees of
    /// freedom); the lower tail of the two-sided test `scipy.stats.linregress` reports.
    pub p_value: f64,
    pub n: usize,
}

/// Ordinary least squares of `y` on `0, 1, ..., n-1`; `None` with fewer than 3 points or a
/// constant series (no decline to test).
pub fn slope(y: &[f64]) -> Option<Slope> {
    let n = y.len();
    if n < 3 || y.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let nf = n as f64;
    let mean_x = (nf - 1.0) / 2.0;
    let mean_y = y.iter().sum::<f64>() / nf;
    let (mut sxx, mut sxy) = (0.0, 0.0);
    for (i, &v) in y.iter().enumerate() {
        let dx = i as f64 - mean_x;
        sxx += dx * dx;
        sxy += dx * (v - mean_y);
    }
    let b = sxy / sxx;
    let a = mean_y - b * mean_x;
    let sse: f64 = y
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let r = v - (a + b * i as f64);
            r * r
        })
        .sum();
    let dof = nf - 2.0;
    let se = (sse / dof / sxx).sqrt();
    let p_value = if se == 0.0 {
        if b < 0.0 {
            0.0
        } else if b == 0.0 {
            return None;
        } else {
            1.0
        }
    } else {
        StudentsT::new(0.0, 1.0, dof).ok()?.cdf(b / se)
    };
    Some(Slope {
        slope: b,
        intercept: a,
        std_error: se,
        p_value,
        n,
    })
}

/// Tests `values` (oldest first) for a decline towards `threshold`: declining when the slope
/// is negative with `p_value < p_threshold`, the latest value is still at or above the
/// threshold, and the fit is below it `horizon` windows on.
pub fn decline(
    metric: &str,
    values: &[f64],
    threshold: f64,
    p_threshold: f64,
    horizon: usize,
) -> Option<Trend> {
    let s = slope(values)?;
    let last = *values.last()?;
    let projected = s.intercept + s.slope * ((values.len() - 1 + horizon) as f64);
    let declining =
        s.slope < 0.0 && s.p_value < p_threshold && last >= threshold && projected < threshold;
    Some(Trend {
        metric: metric.to_owned(),
        slope: s.slope,
        intercept: s.intercept,
        std_error: s.std_error,
        p_value: s.p_value,
        n: s.n,
        last,
        projected,
        horizon,
        threshold,
        declining,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scipy.stats.linregress(range(8), y)` with scipy 1.14.1: slope, intercept, stderr and
    /// the two-sided p-value (halved here: the slope is negative, so the lower tail is half).
    #[test]
    fn slope_matches_scipy_linregress() {
        let y = [0.97, 0.965, 0.95, 0.951, 0.94, 0.925, 0.93, 0.91];
        let s = slope(&y).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1e-300);
        assert!(close(s.slope, -0.008_107_142_857_142_844), "{}", s.slope);
        assert!(close(s.intercept, 0.971), "{}", s.intercept);
        assert!(
            close(s.std_error, 0.000_785_263_218_287_643),
            "{}",
            s.std_error
        );
        assert!(
            close(s.p_value, 4.827_391_519_788_142_5e-5 / 2.0),
            "{}",
            s.p_value
        );
    }

    #[test]
    fn a_steady_decline_is_flagged_before_the_threshold() {
        let y = [0.97, 0.965, 0.95, 0.951, 0.94, 0.925, 0.93, 0.91];
        let t = decline("mean_confidence", &y, 0.85, 0.001, 10).unwrap();
        assert!(t.declining, "{t:?}");
        assert!(t.projected < 0.85 && t.last >= 0.85);
        // Not within the horizon.
        assert!(!decline("m", &y, 0.5, 0.001, 10).unwrap().declining);
        // Flat noise is no trend.
        let flat = [0.95, 0.96, 0.95, 0.955, 0.96, 0.95, 0.957, 0.951];
        assert!(!decline("m", &flat, 0.94, 0.001, 10).unwrap().declining);
        // Constant: nothing to test.
        assert!(slope(&[0.9; 6]).is_none());
        assert!(slope(&[0.9, 0.8]).is_none());
    }
}
