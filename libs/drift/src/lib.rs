//! Drift statistics for Petrel's monitor.
//!
//! The monitor compares the feature values a model sees in production against
//! the values it was trained on. A model is only as good as the assumption that
//! those two distributions match, so when they part ways the predictions stop
//! being trustworthy long before any labels arrive to prove it. This crate turns
//! that comparison into a hypothesis test per feature: numeric features use the
//! two-sample Kolmogorov-Smirnov test ([`ks_two_sample`]) and categorical
//! features use a chi-square goodness-of-fit test ([`chi_square`]). Both return
//! the same [`TestResult`] so the monitor can store, serialise and alert on them
//! uniformly.

#![forbid(unsafe_code)]

mod chi_square;
mod ks;

pub use chi_square::{chi_square, counts};
pub use ks::{kolmogorov_sf, ks_statistic, ks_two_sample};

use serde::{Deserialize, Serialize};

/// The significance level most monitors start with.
///
/// It is offered as a named constant so that callers who have no better
/// calibrated value do not scatter magic numbers around, not because 5% is
/// right for every feature: with many features checked at once, callers will
/// often want something stricter.
pub const DEFAULT_THRESHOLD: f64 = 0.05;

/// Which statistical test produced a [`TestResult`].
///
/// The method is recorded with each result because the statistic means
/// different things for each test (a distance in `[0, 1]` for KS, an unbounded
/// sum for chi-square) and a stored result must be interpretable on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Two-sample Kolmogorov-Smirnov, for continuous numeric features.
    KolmogorovSmirnov,
    /// Chi-square goodness of fit, for categorical features.
    ChiSquare,
}

/// The outcome of one drift test on one feature.
///
/// The threshold is kept next to the verdict so that a stored result explains
/// itself: someone reading `drifted: true` later can see which significance
/// level it was judged against without reconstructing the monitor's
/// configuration at that time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    /// The test that was run.
    pub method: Method,
    /// The test statistic: the KS distance `D` or the chi-square sum.
    pub statistic: f64,
    /// The probability of a statistic at least this extreme if the current
    /// data came from the reference distribution.
    pub p_value: f64,
    /// Whether `p_value < threshold`, i.e. whether the test rejects "no drift".
    pub drifted: bool,
    /// The significance level the verdict was judged against.
    pub threshold: f64,
}

impl TestResult {
    /// Builds a result and derives the verdict, so that `drifted` can never
    /// disagree with `p_value` and `threshold`.
    fn new(method: Method, statistic: f64, p_value: f64, threshold: f64) -> Self {
        Self {
            method,
            statistic,
            p_value,
            drifted: p_value < threshold,
            threshold,
        }
    }
}

/// Why a drift test could not be computed.
///
/// These are all problems with the input rather than with the data being
/// "drifted", so they are errors instead of results: reporting drift (or its
/// absence) for an empty or corrupted sample would be misleading.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    /// One of the samples had no observations, so it has no distribution to
    /// compare. The payload names which one (`"reference"` or `"current"`).
    #[error("the {0} sample is empty")]
    EmptySample(&'static str),
    /// A sample contained NaN or an infinity. NaN has no place in an ordering,
    /// so an empirical CDF over it is undefined; rather than silently dropping
    /// such values (which would hide an upstream data-quality problem) the test
    /// refuses to run.
    #[error("a sample contains NaN or infinite values")]
    NonFinite,
    /// The significance threshold was NaN or outside the open interval
    /// `(0, 1)`. Such a threshold would make the verdict constant (always or
    /// never drifted), which is almost certainly a configuration mistake.
    #[error("threshold must be a finite number strictly between 0 and 1, got {0}")]
    InvalidThreshold(f64),
    /// statrs refused to build a distribution. This should be unreachable for
    /// valid input, but it is surfaced instead of panicking inside a service.
    #[error("could not build reference distribution: {0}")]
    Distribution(String),
}

/// Rejects thresholds that would make the verdict meaningless; shared by both
/// tests so they agree on what a valid significance level is.
fn check_threshold(threshold: f64) -> Result<(), DriftError> {
    if threshold > 0.0 && threshold < 1.0 {
        Ok(())
    } else {
        Err(DriftError::InvalidThreshold(threshold))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_serialises_with_snake_case_method() {
        // The monitor stores results as JSON, so the wire names are part of
        // the contract with whatever reads them back.
        let r = TestResult::new(Method::KolmogorovSmirnov, 0.5, 0.01, 0.05);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["method"], "kolmogorov_smirnov");
        assert_eq!(json["drifted"], true);
        assert_eq!(
            serde_json::to_value(Method::ChiSquare).unwrap(),
            "chi_square"
        );
        let back: TestResult = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn verdict_follows_threshold() {
        assert!(TestResult::new(Method::ChiSquare, 1.0, 0.049, 0.05).drifted);
        assert!(!TestResult::new(Method::ChiSquare, 1.0, 0.05, 0.05).drifted);
        assert!(!TestResult::new(Method::ChiSquare, 1.0, 0.2, 0.05).drifted);
    }

    #[test]
    fn threshold_validation() {
        assert!(check_threshold(0.05).is_ok());
        for bad in [0.0, 1.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                check_threshold(bad),
                Err(DriftError::InvalidThreshold(_))
            ));
        }
    }
}
