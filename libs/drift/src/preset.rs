//! Choosing a method per column and deciding whether the dataset drifted.
//!
//! Two presets are offered because they answer to different masters:
//!
//! * [`Preset::Evidently`] makes exactly the choices of Evidently 0.7's default
//!   `DataDriftPreset` (`get_default_stattest`): with a reference of at most 1000 rows,
//!   KS for numeric columns with more than 5 distinct values (over both sides), chi-square
//!   goodness of fit for columns with 3 to 5 values (numeric) or more than 2 (categorical), and
//!   the Z-test for columns with at most 2; above 1000 rows, normalised Wasserstein for numeric
//!   columns with more than 5 values and Jensen-Shannon for the rest. p-values are judged at
//!   0.05, distances at 0.1, each with Evidently's own comparison ([`Method::evidently_drifted`]),
//!   and the dataset drifted when the share of drifted columns is `>= 0.5`. Users migrating
//!   from Evidently get the decisions they are used to.
//! * [`Preset::Petrel`] is built to be statistically sound for windows of about 100 to 10,000
//!   rows. Every column gets a two-sample test that accounts for the noise on both sides (KS
//!   for numeric columns with more than 10 distinct values, chi-square homogeneity for
//!   categorical columns and numeric ones with 3 to 10 values, the two-proportion Z-test for
//!   two-valued columns), plus a Z-test on the share of missing values when either side has
//!   any. All these p-values are adjusted together with Benjamini-Hochberg, and a column
//!   drifted when an adjusted p-value is below the FDR level. The dataset drifted when any
//!   column did: when nothing changed, BH makes the chance of that at most the FDR level, so
//!   the default of 0.05 is a 5% false-alarm rate per window whatever the number of columns
//!   (Evidently's per-column 5% grows with the column count), while one clearly shifted
//!   column is enough to alert.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::anderson::anderson_ksamp;
use crate::categorical::{chi2_goodness_of_fit, chi2_homogeneity, two_proportion_z, z_test};
use crate::distance::wasserstein_norm;
use crate::distance::{binned_categorical, binned_numeric, jensen_shannon, kl_div, psi};
use crate::fdr::benjamini_hochberg;
use crate::histogram::Histogram;
use crate::ks::ks_2samp;
use crate::sample::{CategoricalSample, CategoryTable, NumericSample, union_unique};
use crate::{DEFAULT_THRESHOLD, DriftError, Method, check_threshold};

/// Evidently's boundary between "small" and "large" references (rows after dropping missing).
pub const EVIDENTLY_SMALL_REFERENCE: usize = 1000;

/// Evidently treats numeric columns with at most this many distinct values as categories.
pub const EVIDENTLY_MAX_DISCRETE: usize = 5;

/// The `petrel` preset tests numeric columns with at most this many distinct values with
/// chi-square homogeneity instead of KS: with so few values KS's continuous-data p-value is
/// very conservative, while a 2 x 10 table still has expected counts of 5 or more in most cells
/// of a 100-row window.
pub const PETREL_MAX_DISCRETE: usize = 10;

/// Evidently's default share of drifted columns at which the dataset drifted.
pub const DEFAULT_DRIFT_SHARE: f64 = 0.5;

/// Which rules choose the methods and decide the verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// Petrel's own rules (see the module documentation).
    #[default]
    Petrel,
    /// Evidently 0.7's `DataDriftPreset` defaults.
    Evidently,
}

/// Whether a column is numeric or categorical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Real numbers.
    Numeric,
    /// Labels from a finite set.
    Categorical,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Numeric => "numeric",
            Kind::Categorical => "categorical",
        }
    }
}

/// One column's reference and current data.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnData {
    /// A numeric column.
    Numeric {
        /// Training-time values.
        reference: NumericSample,
        /// The window under test.
        current: NumericSample,
    },
    /// A categorical column.
    Categorical {
        /// Training-time values.
        reference: CategoricalSample,
        /// The window under test.
        current: CategoricalSample,
    },
}

impl ColumnData {
    fn kind(&self) -> Kind {
        match self {
            ColumnData::Numeric { .. } => Kind::Numeric,
            ColumnData::Categorical { .. } => Kind::Categorical,
        }
    }

    /// (non-missing, missing) counts of reference and current.
    fn sizes(&self) -> ((u64, u64), (u64, u64)) {
        match self {
            ColumnData::Numeric { reference, current } => (
                (reference.len() as u64, reference.missing()),
                (current.len() as u64, current.missing()),
            ),
            ColumnData::Categorical { reference, current } => (
                (reference.len(), reference.missing()),
                (current.len(), current.missing()),
            ),
        }
    }

    fn n_values(&self) -> usize {
        match self {
            ColumnData::Numeric { reference, current } => {
                union_unique(reference.values(), current.values())
            }
            ColumnData::Categorical { reference, current } => {
                CategoryTable::new(reference, current).cells.len()
            }
        }
    }

    fn table(&self) -> CategoryTable {
        match self {
            ColumnData::Numeric { reference, current } => {
                CategoryTable::from_numeric(reference, current)
            }
            ColumnData::Categorical { reference, current } => {
                CategoryTable::new(reference, current)
            }
        }
    }

    fn histogram(&self) -> Histogram {
        match self {
            ColumnData::Numeric { reference, current } => Histogram::numeric(reference, current),
            ColumnData::Categorical { reference, current } => {
                Histogram::categorical(&CategoryTable::new(reference, current))
            }
        }
    }
}

/// A named column to test.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// The column name, used in results and to look up overrides.
    pub name: String,
    /// Its data.
    pub data: ColumnData,
}

/// A per-column choice that replaces the preset's.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ColumnOverride {
    /// Use this method instead of the preset's choice.
    pub method: Option<Method>,
    /// Judge the column at this threshold: a significance level for p-value methods (under
    /// the `petrel` preset it replaces the FDR level the adjusted p-value is compared with), a
    /// cut-off for distances.
    pub threshold: Option<f64>,
}

/// How [`detect`] runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftConfig {
    /// The rules to follow.
    pub preset: Preset,
    /// `petrel`: the Benjamini-Hochberg false discovery rate (default 0.05; see the module
    /// documentation for why it is also the per-window false-alarm rate).
    pub fdr: f64,
    /// `evidently`: the share of drifted columns at which the dataset drifted (default 0.5).
    pub drift_share: f64,
    /// Per-column overrides, by column name.
    pub overrides: BTreeMap<String, ColumnOverride>,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self::new(Preset::Petrel)
    }
}

impl DriftConfig {
    /// The defaults of a preset.
    #[must_use]
    pub fn new(preset: Preset) -> Self {
        Self {
            preset,
            fdr: DEFAULT_THRESHOLD,
            drift_share: DEFAULT_DRIFT_SHARE,
            overrides: BTreeMap::new(),
        }
    }
}

/// The missing-value test of one column (`petrel` preset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MissingShare {
    /// Missing values in the reference.
    pub reference_missing: u64,
    /// Rows in the reference.
    pub reference_rows: u64,
    /// Missing values in the current window.
    pub current_missing: u64,
    /// Rows in the current window.
    pub current_rows: u64,
    /// Two-proportion z statistic.
    pub statistic: f64,
    /// Raw two-sided p-value.
    pub p_value: f64,
    /// Benjamini-Hochberg adjusted p-value.
    pub adjusted_p_value: f64,
    /// Whether the missing share changed (`adjusted_p_value < threshold`).
    pub drifted: bool,
}

/// The result for one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnVerdict {
    /// The column name.
    pub column: String,
    /// Numeric or categorical.
    pub kind: Kind,
    /// The method whose score decided the column. [`Method::MissingShare`] when one side had
    /// no non-missing value, so only the missing share could be tested.
    pub method: Method,
    /// The test statistic (KS distance, chi-square sum, z, standardised A2) or the distance.
    pub statistic: f64,
    /// The raw p-value, for p-value methods.
    pub p_value: Option<f64>,
    /// The Benjamini-Hochberg adjusted p-value (`petrel` preset, p-value methods).
    pub adjusted_p_value: Option<f64>,
    /// The distance, for distance methods.
    pub distance: Option<f64>,
    /// The number compared with `threshold`: the adjusted p-value (`petrel`), the p-value
    /// (`evidently`) or the distance.
    pub score: f64,
    /// The threshold the score was judged against.
    pub threshold: f64,
    /// Whether the column drifted (its distribution or, under `petrel`, its missing share).
    pub drifted: bool,
    /// The missing-share test, when one was run.
    pub missing: Option<MissingShare>,
    /// Non-missing reference values.
    pub reference_values: u64,
    /// Non-missing current values.
    pub current_values: u64,
    /// Reference against current on shared bins.
    pub histogram: Histogram,
}

/// The result for a whole window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetVerdict {
    /// The preset that produced it.
    pub preset: Preset,
    /// Per-column results, in input order.
    pub columns: Vec<ColumnVerdict>,
    /// Number of columns tested.
    pub n_columns: usize,
    /// Number of columns that drifted.
    pub n_drifted: usize,
    /// `n_drifted / n_columns`.
    pub share_drifted: f64,
    /// The rule the decision used, in words (for people reading a stored result).
    pub rule: String,
    /// Whether the dataset drifted.
    pub drifted: bool,
}

/// Evidently's `get_default_stattest` for a column.
fn evidently_method(data: &ColumnData) -> Method {
    let n_ref = data.sizes().0.0 as usize;
    let n_values = data.n_values();
    let kind = data.kind();
    if n_ref <= EVIDENTLY_SMALL_REFERENCE {
        match kind {
            Kind::Numeric if n_values > EVIDENTLY_MAX_DISCRETE => Method::KolmogorovSmirnov,
            _ if n_values > 2 => Method::ChiSquareGoodnessOfFit,
            _ => Method::ZTest,
        }
    } else {
        match kind {
            Kind::Numeric if n_values > EVIDENTLY_MAX_DISCRETE => Method::WassersteinNorm,
            _ => Method::JensenShannon,
        }
    }
}

/// The `petrel` preset's choice for a column.
fn petrel_method(data: &ColumnData) -> Method {
    let n_values = data.n_values();
    match data.kind() {
        _ if n_values <= 2 => Method::ZTest,
        Kind::Numeric if n_values > PETREL_MAX_DISCRETE => Method::KolmogorovSmirnov,
        _ => Method::ChiSquare,
    }
}

/// (statistic, p-value or distance) of one method on one column.
fn run_method(method: Method, name: &str, data: &ColumnData) -> Result<(f64, f64), DriftError> {
    let not_applicable = || DriftError::MethodNotApplicable {
        column: name.to_owned(),
        method: method.name(),
        kind: data.kind().name(),
    };
    let numeric = || match data {
        ColumnData::Numeric { reference, current } => Ok((reference, current)),
        ColumnData::Categorical { .. } => Err(not_applicable()),
    };
    let binned = |fill: bool| match data {
        ColumnData::Numeric { reference, current } => binned_numeric(reference, current, fill),
        ColumnData::Categorical { .. } => binned_categorical(&data.table(), fill),
    };
    Ok(match method {
        Method::KolmogorovSmirnov => {
            let (r, c) = numeric()?;
            let o = ks_2samp(r, c)?;
            (o.statistic, o.p_value)
        }
        Method::AndersonDarling => {
            let (r, c) = numeric()?;
            let o = anderson_ksamp(&[r.values(), c.values()])?;
            (o.statistic, o.p_value)
        }
        Method::WassersteinNorm => {
            let (r, c) = numeric()?;
            let d = wasserstein_norm(r, c)?;
            (d, d)
        }
        Method::ChiSquare => {
            let o = chi2_homogeneity(&data.table())?;
            (o.statistic, o.p_value)
        }
        Method::ChiSquareGoodnessOfFit => {
            let o = chi2_goodness_of_fit(&data.table())?;
            (o.statistic, o.p_value)
        }
        Method::ZTest => {
            let o = z_test(&data.table())?;
            (o.statistic, o.p_value)
        }
        Method::JensenShannon => {
            let d = jensen_shannon(&binned(false)?);
            (d, d)
        }
        Method::Psi => {
            let d = psi(&binned(true)?);
            (d, d)
        }
        Method::KlDiv => {
            let d = kl_div(&binned(true)?);
            (d, d)
        }
        Method::MissingShare => return Err(not_applicable()),
    })
}

/// Runs the drift computation for a window: one method per column, per-column verdicts and
/// the dataset decision, under `config`.
///
/// Columns are independent except for the Benjamini-Hochberg step of the `petrel` preset,
/// which adjusts all p-values of the window together.
///
/// # Errors
///
/// [`DriftError::InvalidThreshold`] for an FDR level, drift share or override threshold
/// outside `(0, 1)` (distance thresholds need only be positive and finite);
/// [`DriftError::EmptyColumn`] when a column has no non-missing value on one side under the
/// `evidently` preset (Evidently refuses such a column too), or no row at all under `petrel`;
/// [`DriftError::MethodNotApplicable`] for an override that does not fit the column's kind.
pub fn detect(columns: &[Column], config: &DriftConfig) -> Result<DatasetVerdict, DriftError> {
    match config.preset {
        Preset::Petrel => check_threshold(config.fdr)?,
        Preset::Evidently => {
            if !(config.drift_share > 0.0 && config.drift_share <= 1.0) {
                return Err(DriftError::InvalidThreshold(config.drift_share));
            }
        }
    }
    struct Pending {
        verdict: ColumnVerdict,
        /// Index into `pvalues` of the distribution test, if it takes part in BH.
        test_index: Option<usize>,
        /// Index into `pvalues` of the missing-share test.
        missing_index: Option<usize>,
    }
    let mut pvalues: Vec<f64> = Vec::new();
    let mut pending = Vec::with_capacity(columns.len());
    for col in columns {
        let over = config.overrides.get(&col.name).copied().unwrap_or_default();
        let ((ref_values, ref_missing), (cur_values, cur_missing)) = col.data.sizes();
        let kind = col.data.kind();
        let histogram = col.data.histogram();
        let one_side_empty = ref_values == 0 || cur_values == 0;
        if config.preset == Preset::Evidently && one_side_empty {
            return Err(DriftError::EmptyColumn {
                column: col.name.clone(),
                side: if ref_values == 0 {
                    "reference"
                } else {
                    "current"
                },
            });
        }
        if ref_values + ref_missing == 0 || cur_values + cur_missing == 0 {
            return Err(DriftError::EmptyColumn {
                column: col.name.clone(),
                side: if ref_values + ref_missing == 0 {
                    "reference"
                } else {
                    "current"
                },
            });
        }
        let mut verdict = ColumnVerdict {
            column: col.name.clone(),
            kind,
            method: Method::MissingShare,
            statistic: 0.0,
            p_value: None,
            adjusted_p_value: None,
            distance: None,
            score: 1.0,
            threshold: 0.0,
            drifted: false,
            missing: None,
            reference_values: ref_values,
            current_values: cur_values,
            histogram,
        };
        let mut test_index = None;
        if !one_side_empty {
            let method = over.method.unwrap_or(match config.preset {
                Preset::Evidently => evidently_method(&col.data),
                Preset::Petrel => petrel_method(&col.data),
            });
            let (statistic, score) = run_method(method, &col.name, &col.data)?;
            let threshold = match (over.threshold, config.preset) {
                (Some(t), _) => t,
                (None, Preset::Petrel) if !method.is_distance() => config.fdr,
                (None, _) => method.default_threshold(),
            };
            check_override_threshold(method, threshold)?;
            verdict.method = method;
            verdict.statistic = statistic;
            verdict.threshold = threshold;
            verdict.score = score;
            if method.is_distance() {
                verdict.distance = Some(score);
                verdict.drifted = score >= threshold;
            } else {
                verdict.p_value = Some(score);
                if config.preset == Preset::Evidently {
                    verdict.drifted = method.evidently_drifted(score, threshold);
                } else {
                    test_index = Some(pvalues.len());
                    pvalues.push(score);
                }
            }
        }
        let mut missing_index = None;
        if config.preset == Preset::Petrel && ref_missing + cur_missing > 0 {
            let z = two_proportion_z(
                ref_missing,
                ref_values + ref_missing,
                cur_missing,
                cur_values + cur_missing,
            )?;
            missing_index = Some(pvalues.len());
            pvalues.push(z.p_value);
            verdict.missing = Some(MissingShare {
                reference_missing: ref_missing,
                reference_rows: ref_values + ref_missing,
                current_missing: cur_missing,
                current_rows: cur_values + cur_missing,
                statistic: z.statistic,
                p_value: z.p_value,
                adjusted_p_value: z.p_value,
                drifted: false,
            });
            if one_side_empty {
                verdict.statistic = z.statistic;
                verdict.p_value = Some(z.p_value);
                verdict.threshold = over.threshold.unwrap_or(config.fdr);
                check_threshold(verdict.threshold)?;
            }
        }
        pending.push(Pending {
            verdict,
            test_index,
            missing_index,
        });
    }

    let adjusted = benjamini_hochberg(&pvalues)?;
    let mut verdicts = Vec::with_capacity(pending.len());
    for p in pending {
        let mut v = p.verdict;
        if let Some(i) = p.test_index {
            v.adjusted_p_value = Some(adjusted[i]);
            v.score = adjusted[i];
            v.drifted = adjusted[i] < v.threshold;
        }
        if let Some(i) = p.missing_index {
            // The missing share is judged at the column's significance level; a distance
            // threshold is no significance level, so those columns use the FDR level.
            let level = if v.method.is_distance() {
                config.fdr
            } else {
                v.threshold
            };
            if let Some(m) = v.missing.as_mut() {
                m.adjusted_p_value = adjusted[i];
                m.drifted = adjusted[i] < level;
                if v.method == Method::MissingShare {
                    v.adjusted_p_value = Some(adjusted[i]);
                    v.score = adjusted[i];
                }
                v.drifted |= m.drifted;
            }
        }
        verdicts.push(v);
    }
    let n_columns = verdicts.len();
    let n_drifted = verdicts.iter().filter(|v| v.drifted).count();
    let share_drifted = if n_columns == 0 {
        0.0
    } else {
        n_drifted as f64 / n_columns as f64
    };
    let (drifted, rule) = match config.preset {
        Preset::Evidently => (
            n_columns > 0 && share_drifted >= config.drift_share,
            format!("share of drifted columns >= {}", config.drift_share),
        ),
        Preset::Petrel => (
            n_drifted > 0,
            format!(
                "any column drifted after Benjamini-Hochberg at FDR {}",
                config.fdr
            ),
        ),
    };
    Ok(DatasetVerdict {
        preset: config.preset,
        columns: verdicts,
        n_columns,
        n_drifted,
        share_drifted,
        rule,
        drifted,
    })
}

fn check_override_threshold(method: Method, threshold: f64) -> Result<(), DriftError> {
    if method.is_distance() {
        if threshold.is_finite() && threshold > 0.0 {
            Ok(())
        } else {
            Err(DriftError::InvalidThreshold(threshold))
        }
    } else {
        check_threshold(threshold)
    }
}
