//! Drift statistics for Petrel's monitor.
//!
//! The monitor compares the feature values a model sees in production against the values it
//! was trained on. A model is only as good as the assumption that those two distributions
//! match, so when they part ways the predictions stop being trustworthy long before any labels
//! arrive to prove it. This crate turns that comparison into numbers and verdicts:
//!
//! * statistics, each matching its reference implementation (scipy or Evidently) to about
//!   `1e-9` relative, checked against goldens in `tests/goldens.json`:
//!   [`ks_2samp`] (exact and asymptotic p-values), [`anderson_ksamp`], [`wasserstein_norm`],
//!   [`psi`], [`kl_div`], [`jensen_shannon`], [`chi2_homogeneity`], [`chi2_goodness_of_fit`],
//!   [`z_test`], [`two_proportion_z`] and [`benjamini_hochberg`];
//! * per-column method choice and a dataset decision ([`detect`]) under two presets:
//!   [`Preset::Evidently`] reproduces Evidently 0.7's `DataDriftPreset`, and [`Preset::Petrel`]
//!   uses two-sample tests with Benjamini-Hochberg control across columns plus a test on the
//!   share of missing values;
//! * histograms per column so a UI can draw reference against current.
//!
//! Every numeric statistic works on a [`NumericSample`], which sorts its values once; nothing
//! here is worse than `O(n log n)` in the number of rows.

#![forbid(unsafe_code)]

mod anderson;
mod categorical;
mod distance;
mod fdr;
mod histogram;
mod kolmogorov;
mod ks;
mod preset;
mod sample;

pub use anderson::{AndersonOutcome, anderson_ksamp};
pub use categorical::{
    ChiSquareOutcome, ZOutcome, chi_square, chi2_goodness_of_fit, chi2_homogeneity, counts,
    two_proportion_z, z_test,
};
pub use distance::{
    BinnedShares, WASSERSTEIN_MIN_NORM, binned_categorical, binned_numeric, histogram_sorted,
    jensen_shannon, kl_div, psi, sturges_edges, wasserstein_norm, wasserstein_sorted,
};
pub use fdr::benjamini_hochberg;
pub use histogram::Histogram;
pub use kolmogorov::{kstwo_sf, smirnov_sf};
pub use ks::{
    KS_MAX_EXACT_N, KsOutcome, kolmogorov_sf, ks_2samp, ks_2samp_sorted, ks_statistic,
    ks_two_sample,
};
pub use preset::{
    Column, ColumnData, ColumnOverride, ColumnVerdict, DatasetVerdict, DriftConfig, Kind,
    MissingShare, Preset, detect,
};
pub use sample::{
    CategoricalSample, CategoryTable, NumericSample, union_unique, union_unique_up_to,
};

use serde::{Deserialize, Serialize};

/// The significance level most monitors start with.
///
/// It is offered as a named constant so that callers who have no better
/// calibrated value do not scatter magic numbers around, not because 5% is
/// right for every feature: with many features checked at once, callers will
/// often want something stricter.
pub const DEFAULT_THRESHOLD: f64 = 0.05;

/// Which statistic produced a result.
///
/// The method is recorded with each result because the statistic means different things for
/// each (a distance in `[0, 1]` for KS, an unbounded sum for chi-square, a divergence for PSI)
/// and a stored result must be interpretable on its own. The wire names are part of the
/// monitor's stored JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Two-sample Kolmogorov-Smirnov ([`ks_2samp`]); p-value.
    KolmogorovSmirnov,
    /// Chi-square test of homogeneity ([`chi2_homogeneity`]); p-value.
    ChiSquare,
    /// Evidently's chi-square goodness of fit ([`chi2_goodness_of_fit`]); p-value.
    ChiSquareGoodnessOfFit,
    /// Two-proportion Z-test for two-valued columns ([`z_test`]); p-value.
    ZTest,
    /// k-sample Anderson-Darling ([`anderson_ksamp`]); p-value.
    AndersonDarling,
    /// Wasserstein distance over the reference's standard deviation ([`wasserstein_norm`]).
    WassersteinNorm,
    /// Jensen-Shannon distance of binned shares ([`jensen_shannon`]).
    JensenShannon,
    /// Population stability index of binned shares ([`psi`]).
    Psi,
    /// Kullback-Leibler divergence of binned shares ([`kl_div`]).
    KlDiv,
    /// Two-proportion Z-test on the share of missing values (the `petrel` preset).
    MissingShare,
}

impl Method {
    /// Whether the score is a distance (drift when large) rather than a p-value (drift when
    /// small).
    #[must_use]
    pub fn is_distance(self) -> bool {
        matches!(
            self,
            Method::WassersteinNorm | Method::JensenShannon | Method::Psi | Method::KlDiv
        )
    }

    /// Evidently's default threshold for the method: 0.05 for its p-value tests, 0.1 for the
    /// distances and, as Evidently registers it, 0.1 for Anderson-Darling.
    #[must_use]
    pub fn default_threshold(self) -> f64 {
        match self {
            Method::AndersonDarling => 0.1,
            m if m.is_distance() => 0.1,
            _ => DEFAULT_THRESHOLD,
        }
    }

    /// Evidently's verdict for a score: `p <= threshold` for KS, `p < threshold` for the other
    /// p-value tests, `distance >= threshold` for the distances. The comparisons differ between
    /// Evidently's stattests; they are kept so the `evidently` preset flags the same columns.
    #[must_use]
    pub fn evidently_drifted(self, score: f64, threshold: f64) -> bool {
        match self {
            Method::KolmogorovSmirnov => score <= threshold,
            m if m.is_distance() => score >= threshold,
            _ => score < threshold,
        }
    }

    /// Parses a method name: the wire name (`kolmogorov_smirnov`) or Evidently's stattest name
    /// (`ks`, `chisquare`, `z`, `anderson`, `wasserstein`, `jensenshannon`, `psi`, `kl_div`).
    /// `chi_square` is the homogeneity test; Evidently's `chisquare` is goodness of fit.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Method> {
        Some(match name {
            "kolmogorov_smirnov" | "ks" => Method::KolmogorovSmirnov,
            "chi_square" | "chi2_contingency" => Method::ChiSquare,
            "chi_square_goodness_of_fit" | "chisquare" => Method::ChiSquareGoodnessOfFit,
            "z_test" | "z" => Method::ZTest,
            "anderson_darling" | "anderson" => Method::AndersonDarling,
            "wasserstein_norm" | "wasserstein" => Method::WassersteinNorm,
            "jensen_shannon" | "jensenshannon" => Method::JensenShannon,
            "psi" => Method::Psi,
            "kl_div" => Method::KlDiv,
            _ => return None,
        })
    }

    /// The wire name, as serialised.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Method::KolmogorovSmirnov => "kolmogorov_smirnov",
            Method::ChiSquare => "chi_square",
            Method::ChiSquareGoodnessOfFit => "chi_square_goodness_of_fit",
            Method::ZTest => "z_test",
            Method::AndersonDarling => "anderson_darling",
            Method::WassersteinNorm => "wasserstein_norm",
            Method::JensenShannon => "jensen_shannon",
            Method::Psi => "psi",
            Method::KlDiv => "kl_div",
            Method::MissingShare => "missing_share",
        }
    }
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
    pub(crate) fn new(method: Method, statistic: f64, p_value: f64, threshold: f64) -> Self {
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
    /// A multi-sample test was given fewer than two samples.
    #[error("at least two samples are needed")]
    TooFewSamples,
    /// The data leave the statistic undefined (for example, every value equal); the payload
    /// says why.
    #[error("the statistic is undefined: {0}")]
    Degenerate(&'static str),
    /// A p-value handed to [`benjamini_hochberg`] was NaN or outside `[0, 1]`.
    #[error("p-values must lie in [0, 1], got {0}")]
    InvalidPValue(f64),
    /// A column's reference and current data are of different kinds (numeric against
    /// categorical), so no test applies.
    #[error("column '{0}' is numeric on one side and categorical on the other")]
    KindMismatch(String),
    /// A column had no usable value on one side; the `evidently` preset refuses it, as
    /// Evidently does.
    #[error("column '{column}' has no non-missing value in the {side} data")]
    EmptyColumn {
        /// The column.
        column: String,
        /// `"reference"` or `"current"`.
        side: &'static str,
    },
    /// A method was asked for a column kind it does not apply to (for example KS on a
    /// categorical column).
    #[error("method {method} does not apply to {kind} column '{column}'")]
    MethodNotApplicable {
        /// The column.
        column: String,
        /// The method's wire name.
        method: &'static str,
        /// `"numeric"` or `"categorical"`.
        kind: &'static str,
    },
}

/// Rejects thresholds that would make the verdict meaningless; shared by both
/// tests so they agree on what a valid significance level is.
pub(crate) fn check_threshold(threshold: f64) -> Result<(), DriftError> {
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
