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
use crate::sample::{CategoricalSample, CategoryTable, NumericSample, union_unique_up_to};
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

    /// Rows on both sides, missing values included.
    fn rows(&self) -> u64 {
        let ((a, b), (c, d)) = self.sizes();
        a + b + c + d
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

    /// Distinct values over both sides, counted up to `limit`.
    fn n_values(&self, limit: usize) -> usize {
        match self {
            ColumnData::Numeric { reference, current } => {
                union_unique_up_to(reference.values(), current.values(), limit)
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
    /// It is `+inf` for Evidently's goodness of fit with an unseen category; JSON has no
    /// infinity, so non-finite values are written as the strings `"inf"`, `"-inf"`, `"nan"`.
    #[serde(with = "lossless_f64")]
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

/// Serde for an `f64` that may be infinite: a JSON number when finite, else a string, so a
/// stored verdict reads back exactly.
mod lossless_f64 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else if x.is_nan() {
            s.serialize_str("nan")
        } else if *x > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Num(f64),
            Text(String),
        }
        match Repr::deserialize(d)? {
            Repr::Num(x) => Ok(x),
            Repr::Text(t) => match t.as_str() {
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                "nan" => Ok(f64::NAN),
                other => Err(D::Error::custom(format!("not a number: {other}"))),
            },
        }
    }
}

/// Evidently's `get_default_stattest` for a column.
fn evidently_method(data: &ColumnData) -> Method {
    let n_ref = data.sizes().0.0 as usize;
    let n_values = data.n_values(EVIDENTLY_MAX_DISCRETE + 1);
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
    let n_values = data.n_values(PETREL_MAX_DISCRETE + 1);
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
    let evaluated = map_columns(columns, |col| evaluate(col, config))?;
    let mut pvalues: Vec<f64> = Vec::new();
    let mut pending = Vec::with_capacity(evaluated.len());
    for e in evaluated {
        let mut index = |p: Option<f64>| {
            p.map(|p| {
                pvalues.push(p);
                pvalues.len() - 1
            })
        };
        let test_index = index(e.test_p);
        let missing_index = index(e.missing_p);
        pending.push(Pending {
            verdict: e.verdict,
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

/// One column's verdict before the Benjamini-Hochberg step, with the raw p-values that take
/// part in it.
struct Evaluated {
    verdict: ColumnVerdict,
    test_p: Option<f64>,
    missing_p: Option<f64>,
}

/// Everything [`detect`] does for one column that does not depend on the other columns.
fn evaluate(col: &Column, config: &DriftConfig) -> Result<Evaluated, DriftError> {
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
    let mut test_p = None;
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
                test_p = Some(score);
            }
        }
    }
    let mut missing_p = None;
    if config.preset == Preset::Petrel && ref_missing + cur_missing > 0 {
        let z = two_proportion_z(
            ref_missing,
            ref_values + ref_missing,
            cur_missing,
            cur_values + cur_missing,
        )?;
        missing_p = Some(z.p_value);
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
    Ok(Evaluated {
        verdict,
        test_p,
        missing_p,
    })
}

/// Applies `f` to every column, spreading the columns over the available cores: columns are
/// independent until the Benjamini-Hochberg step, and the large windows spend nearly all their
/// time in per-column work. Results keep the input order; the first error (in column order)
/// wins.
fn map_columns<T: Send>(
    columns: &[Column],
    f: impl Fn(&Column) -> Result<T, DriftError> + Sync,
) -> Result<Vec<T>, DriftError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(columns.len());
    // Small windows are not worth a thread.
    let rows: u64 = columns.iter().map(|c| c.data.rows()).sum();
    if workers <= 1 || rows < PARALLEL_MIN_ROWS {
        return columns.iter().map(&f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut slots: Vec<Option<Result<T, DriftError>>> = Vec::new();
    slots.resize_with(columns.len(), || None);
    let results = std::sync::Mutex::new(slots);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(col) = columns.get(i) else { break };
                    let r = f(col);
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every column was evaluated"))
        .collect()
}

/// Below this many rows in all (both sides, all columns) [`detect`] stays on one thread.
const PARALLEL_MIN_ROWS: u64 = 200_000;

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

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: a small, well-mixed seeded generator, so the statistical tests below are
    /// deterministic without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn normal(&mut self, mean: f64, sd: f64) -> f64 {
            // Box-Muller; 1 - u keeps the logarithm finite.
            let (u, v) = (1.0 - self.uniform(), self.uniform());
            mean + sd * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }
        fn pick<'a>(&mut self, labels: &[&'a str], weights: &[f64]) -> &'a str {
            let total: f64 = weights.iter().sum();
            let mut u = self.uniform() * total;
            for (l, w) in labels.iter().zip(weights) {
                if u < *w {
                    return l;
                }
                u -= w;
            }
            labels[labels.len() - 1]
        }
    }

    fn numeric(name: &str, r: Vec<Option<f64>>, c: Vec<Option<f64>>) -> Column {
        Column {
            name: name.to_owned(),
            data: ColumnData::Numeric {
                reference: NumericSample::from_options(r),
                current: NumericSample::from_options(c),
            },
        }
    }

    fn categorical(name: &str, r: &[Option<&str>], c: &[Option<&str>]) -> Column {
        Column {
            name: name.to_owned(),
            data: ColumnData::Categorical {
                reference: CategoricalSample::from_values(r.iter().copied()),
                current: CategoricalSample::from_values(c.iter().copied()),
            },
        }
    }

    /// Penguin-like rows: island, four measurements, sex (with a few missing) and year.
    /// `flipper_shift` moves flipper length by that many millimetres (sd 14).
    fn penguins(rng: &mut Rng, n: usize, flipper_shift: f64) -> Vec<Column> {
        let mut island = Vec::with_capacity(n);
        let mut sex = Vec::with_capacity(n);
        let (mut bill_l, mut bill_d, mut flip, mut mass, mut year) =
            (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..n {
            island.push(Some(
                rng.pick(&["Biscoe", "Dream", "Torgersen"], &[0.49, 0.36, 0.15]),
            ));
            sex.push(if rng.uniform() < 0.03 {
                None
            } else {
                Some(rng.pick(&["female", "male"], &[0.5, 0.5]))
            });
            bill_l.push(Some((rng.normal(43.9, 5.5) * 10.0).round() / 10.0));
            bill_d.push(Some((rng.normal(17.2, 2.0) * 10.0).round() / 10.0));
            flip.push(Some(rng.normal(200.9 + flipper_shift, 14.1).round()));
            mass.push(Some((rng.normal(4200.0, 800.0) / 25.0).round() * 25.0));
            year.push(Some(2007.0 + (rng.uniform() * 3.0).floor()));
        }
        vec![
            categorical("island", &island, &[]),
            numeric("bill_length_mm", bill_l, vec![]),
            numeric("bill_depth_mm", bill_d, vec![]),
            numeric("flipper_length_mm", flip, vec![]),
            numeric("body_mass_g", mass, vec![]),
            categorical("sex", &sex, &[]),
            numeric("year", year, vec![]),
        ]
    }

    /// Pairs two one-sided column lists (as built by `penguins`) into reference/current.
    fn pair(reference: Vec<Column>, current: Vec<Column>) -> Vec<Column> {
        reference
            .into_iter()
            .zip(current)
            .map(|(r, c)| {
                let data = match (r.data, c.data) {
                    (
                        ColumnData::Numeric { reference, .. },
                        ColumnData::Numeric {
                            reference: current, ..
                        },
                    ) => ColumnData::Numeric { reference, current },
                    (
                        ColumnData::Categorical { reference, .. },
                        ColumnData::Categorical {
                            reference: current, ..
                        },
                    ) => ColumnData::Categorical { reference, current },
                    _ => unreachable!(),
                };
                Column { name: r.name, data }
            })
            .collect()
    }

    fn drifted_columns(v: &DatasetVerdict) -> Vec<&str> {
        v.columns
            .iter()
            .filter(|c| c.drifted)
            .map(|c| c.column.as_str())
            .collect()
    }

    #[test]
    fn the_old_false_alarm_case_flags_only_the_shifted_column() {
        // 10,000 against 10,000 rows, only flipper length shifted (by half a standard
        // deviation). The first version of the monitor flagged categorical columns here.
        let mut rng = Rng(20_260_101);
        let reference = penguins(&mut rng, 10_000, 0.0);
        let current = penguins(&mut rng, 10_000, 7.0);
        let columns = pair(reference, current);
        for preset in [Preset::Evidently, Preset::Petrel] {
            let v = detect(&columns, &DriftConfig::new(preset)).unwrap();
            assert_eq!(
                drifted_columns(&v),
                ["flipper_length_mm"],
                "{preset:?}: {v:#?}"
            );
            assert_eq!(v.n_columns, 7);
        }
        let v = detect(&columns, &DriftConfig::new(Preset::Evidently)).unwrap();
        // 1 of 7 columns is below Evidently's 50% share.
        assert!(!v.drifted);
        let methods: Vec<Method> = v.columns.iter().map(|c| c.method).collect();
        use Method::*;
        assert_eq!(
            methods,
            [
                JensenShannon,
                WassersteinNorm,
                WassersteinNorm,
                WassersteinNorm,
                WassersteinNorm,
                JensenShannon,
                JensenShannon
            ]
        );
        let v = detect(&columns, &DriftConfig::new(Preset::Petrel)).unwrap();
        assert!(v.drifted);
        let methods: Vec<Method> = v.columns.iter().map(|c| c.method).collect();
        assert_eq!(
            methods,
            [
                ChiSquare,
                KolmogorovSmirnov,
                KolmogorovSmirnov,
                KolmogorovSmirnov,
                KolmogorovSmirnov,
                ZTest,
                ChiSquare
            ]
        );
        // sex has missing values on both sides, so it also got a missing-share test.
        assert!(v.columns[5].missing.as_ref().is_some_and(|m| !m.drifted));
    }

    #[test]
    fn petrel_false_alarm_rate_is_at_most_the_fdr_level() {
        // Under the null (both windows drawn from one distribution), the share of windows in
        // which the petrel preset reports dataset drift must stay at or below its 5% level.
        // Testing 7 columns at 5% each without correction alarms in about 30% of windows, so
        // an implementation that skipped or botched the BH step would fail here.
        let trials = 300;
        let mut rng = Rng(7);
        let config = DriftConfig::new(Preset::Petrel);
        let (mut alarms, mut uncorrected) = (0, 0);
        for _ in 0..trials {
            let reference = penguins(&mut rng, 1000, 0.0);
            let current = penguins(&mut rng, 200, 0.0);
            let v = detect(&pair(reference, current), &config).unwrap();
            alarms += usize::from(v.drifted);
            let any_raw = v.columns.iter().any(|c| {
                c.p_value.is_some_and(|p| p < 0.05)
                    || c.missing.as_ref().is_some_and(|m| m.p_value < 0.05)
            });
            uncorrected += usize::from(any_raw);
        }
        let rate = alarms as f64 / trials as f64;
        // Binomial standard error at 5% over 300 trials is 1.26%; allow three of them.
        assert!(rate <= 0.05 + 3.0 * 0.0126, "false-alarm rate {rate}");
        let raw_rate = uncorrected as f64 / trials as f64;
        println!("null windows: petrel alarm rate {rate}, uncorrected rate {raw_rate}");
        assert!(
            raw_rate > 0.15,
            "uncorrected rate {raw_rate} should be far above 5%"
        );
    }

    #[test]
    fn evidently_method_choice_follows_get_default_stattest() {
        let many = |n: usize| -> Vec<Option<f64>> { (0..n).map(|i| Some(i as f64)).collect() };
        let cycle = |n: usize, k: usize| -> Vec<Option<f64>> {
            (0..n).map(|i| Some((i % k) as f64)).collect()
        };
        let cats = |n: usize, k: usize| -> Vec<Option<String>> {
            (0..n).map(|i| Some(format!("c{}", i % k))).collect()
        };
        let choose = |col: Column| -> Method {
            let v = detect(&[col], &DriftConfig::new(Preset::Evidently)).unwrap();
            v.columns[0].method
        };
        let cat_col = |r: Vec<Option<String>>, c: Vec<Option<String>>| -> Column {
            let r: Vec<Option<&str>> = r.iter().map(|s| s.as_deref()).collect();
            let c: Vec<Option<&str>> = c.iter().map(|s| s.as_deref()).collect();
            categorical("c", &r, &c)
        };
        use Method::*;
        // Reference of exactly 1000 rows is still "small".
        assert_eq!(
            choose(numeric("x", many(1000), many(50))),
            KolmogorovSmirnov
        );
        assert_eq!(choose(numeric("x", many(1001), many(50))), WassersteinNorm);
        // Distinct values are counted over both sides: 5 -> chi-square, 6 -> KS.
        assert_eq!(
            choose(numeric("x", cycle(500, 5), cycle(50, 5))),
            ChiSquareGoodnessOfFit
        );
        assert_eq!(
            choose(numeric("x", cycle(500, 5), cycle(50, 6))),
            KolmogorovSmirnov
        );
        assert_eq!(choose(numeric("x", cycle(500, 2), cycle(50, 2))), ZTest);
        assert_eq!(
            choose(numeric("x", cycle(500, 2), cycle(50, 3))),
            ChiSquareGoodnessOfFit
        );
        assert_eq!(
            choose(numeric("x", cycle(2000, 5), cycle(50, 5))),
            JensenShannon
        );
        assert_eq!(
            choose(numeric("x", cycle(2000, 6), cycle(50, 6))),
            WassersteinNorm
        );
        assert_eq!(choose(cat_col(cats(500, 2), cats(50, 2))), ZTest);
        assert_eq!(
            choose(cat_col(cats(500, 2), cats(50, 3))),
            ChiSquareGoodnessOfFit
        );
        assert_eq!(choose(cat_col(cats(2000, 2), cats(50, 2))), JensenShannon);
        // Missing values do not count towards the reference size.
        let mut r = many(1000);
        r.extend([None; 10]);
        assert_eq!(choose(numeric("x", r, many(50))), KolmogorovSmirnov);
    }

    #[test]
    fn evidently_dataset_rule_is_share_at_least_half() {
        let same: Vec<Option<f64>> = (0..100).map(|i| Some(f64::from(i))).collect();
        let moved: Vec<Option<f64>> = (0..100).map(|i| Some(f64::from(i) + 500.0)).collect();
        let cols = vec![
            numeric("a", same.clone(), same.clone()),
            numeric("b", same.clone(), moved),
        ];
        let v = detect(&cols, &DriftConfig::new(Preset::Evidently)).unwrap();
        assert_eq!((v.n_drifted, v.share_drifted), (1, 0.5));
        assert!(v.drifted, "1 of 2 columns meets the >= 0.5 share");
        let mut config = DriftConfig::new(Preset::Evidently);
        config.drift_share = 0.6;
        assert!(!detect(&cols, &config).unwrap().drifted);
        // KS at the threshold itself counts as drifted (p <= threshold).
        assert!(Method::KolmogorovSmirnov.evidently_drifted(0.05, 0.05));
        assert!(!Method::ChiSquareGoodnessOfFit.evidently_drifted(0.05, 0.05));
        assert!(Method::WassersteinNorm.evidently_drifted(0.1, 0.1));
    }

    #[test]
    fn a_change_in_missing_share_registers() {
        let mut rng = Rng(99);
        let draw = |rng: &mut Rng, n: usize, missing: f64| -> Vec<Option<f64>> {
            (0..n)
                .map(|_| (rng.uniform() >= missing).then(|| rng.normal(0.0, 1.0)))
                .collect()
        };
        let r = draw(&mut rng, 2000, 0.02);
        let c = draw(&mut rng, 500, 0.20);
        let cols = [numeric("x", r, c)];
        let v = detect(&cols, &DriftConfig::new(Preset::Petrel)).unwrap();
        let col = &v.columns[0];
        assert_eq!(col.method, Method::KolmogorovSmirnov);
        let m = col.missing.as_ref().unwrap();
        assert!(m.drifted && col.drifted && v.drifted, "{col:#?}");
        // The values themselves did not move.
        assert!(col.adjusted_p_value.unwrap() > 0.05);
        // Evidently drops missing values and sees nothing.
        let v = detect(&cols, &DriftConfig::new(Preset::Evidently)).unwrap();
        assert!(!v.columns[0].drifted);
    }

    #[test]
    fn an_all_missing_window_is_tested_on_its_missing_share() {
        let r: Vec<Option<f64>> = (0..300).map(|i| Some(f64::from(i))).collect();
        let cols = [numeric("x", r, vec![None; 40])];
        let v = detect(&cols, &DriftConfig::new(Preset::Petrel)).unwrap();
        assert_eq!(v.columns[0].method, Method::MissingShare);
        assert!(v.columns[0].drifted);
        assert!(matches!(
            detect(&cols, &DriftConfig::new(Preset::Evidently)),
            Err(DriftError::EmptyColumn {
                side: "current",
                ..
            })
        ));
        let none = [numeric("x", vec![], vec![Some(1.0)])];
        assert!(matches!(
            detect(&none, &DriftConfig::new(Preset::Petrel)),
            Err(DriftError::EmptyColumn {
                side: "reference",
                ..
            })
        ));
    }

    #[test]
    fn an_unseen_category_registers() {
        let mut rng = Rng(5);
        let r: Vec<Option<&str>> = (0..2000)
            .map(|_| Some(rng.pick(&["a", "b", "c"], &[0.5, 0.3, 0.2])))
            .collect();
        let c: Vec<Option<&str>> = (0..300)
            .map(|_| Some(rng.pick(&["a", "b", "c", "new"], &[0.45, 0.27, 0.18, 0.1])))
            .collect();
        let cols = [categorical("cat", &r, &c)];
        for preset in [Preset::Petrel, Preset::Evidently] {
            let v = detect(&cols, &DriftConfig::new(preset)).unwrap();
            assert!(v.columns[0].drifted, "{preset:?}");
        }
    }

    #[test]
    fn overrides_replace_method_and_threshold() {
        let r: Vec<Option<f64>> = (0..500).map(|i| Some(f64::from(i % 97))).collect();
        let c: Vec<Option<f64>> = (0..500).map(|i| Some(f64::from(i % 97) + 3.0)).collect();
        let cols = [numeric("x", r, c)];
        let mut config = DriftConfig::new(Preset::Petrel);
        config.overrides.insert(
            "x".into(),
            ColumnOverride {
                method: Some(Method::Psi),
                threshold: Some(5.0),
            },
        );
        let v = detect(&cols, &config).unwrap();
        let col = &v.columns[0];
        assert_eq!((col.method, col.threshold), (Method::Psi, 5.0));
        assert!(col.distance.is_some() && col.p_value.is_none());
        assert!(
            !col.drifted,
            "PSI {} is below the raised threshold",
            col.score
        );

        config.overrides.insert(
            "x".into(),
            ColumnOverride {
                method: Some(Method::AndersonDarling),
                threshold: None,
            },
        );
        let v = detect(&cols, &config).unwrap();
        assert_eq!(v.columns[0].method, Method::AndersonDarling);
        assert!(v.columns[0].drifted);

        let cat = [categorical("c", &[Some("a")], &[Some("b")])];
        let mut config = DriftConfig::new(Preset::Evidently);
        config.overrides.insert(
            "c".into(),
            ColumnOverride {
                method: Some(Method::KolmogorovSmirnov),
                threshold: None,
            },
        );
        assert!(matches!(
            detect(&cat, &config),
            Err(DriftError::MethodNotApplicable { .. })
        ));
        let mut config = DriftConfig::new(Preset::Petrel);
        config.fdr = 1.5;
        assert!(matches!(
            detect(&cat, &config),
            Err(DriftError::InvalidThreshold(_))
        ));
    }

    #[test]
    fn large_windows_are_evaluated_in_parallel_in_order() {
        // 5 columns of 30,000 + 30,000 rows pass PARALLEL_MIN_ROWS, so the threads run; the
        // result must equal the column-by-column one, in input order.
        let mut rng = Rng(3);
        let cols: Vec<Column> = (0..5)
            .map(|k| {
                let draw = |rng: &mut Rng, shift: f64| -> Vec<Option<f64>> {
                    (0..30_000).map(|_| Some(rng.normal(shift, 1.0))).collect()
                };
                let r = draw(&mut rng, 0.0);
                let c = draw(&mut rng, f64::from(k) * 0.05);
                numeric(&format!("x{k}"), r, c)
            })
            .collect();
        let config = DriftConfig::new(Preset::Evidently);
        let all = detect(&cols, &config).unwrap();
        for (col, v) in cols.iter().zip(&all.columns) {
            let alone = detect(std::slice::from_ref(col), &config).unwrap();
            assert_eq!(&alone.columns[0], v);
        }
        // An error in one column still surfaces.
        let mut bad = cols.clone();
        bad.push(categorical("c", &[Some("a")], &[Some("b")]));
        let mut config = DriftConfig::new(Preset::Evidently);
        config.overrides.insert(
            "c".into(),
            ColumnOverride {
                method: Some(Method::WassersteinNorm),
                threshold: None,
            },
        );
        assert!(matches!(
            detect(&bad, &config),
            Err(DriftError::MethodNotApplicable { .. })
        ));
    }

    #[test]
    fn verdict_serialises_with_stable_names() {
        let cols = [categorical(
            "c",
            &[Some("a"), Some("b"), Some("a")],
            &[Some("a"), None],
        )];
        let v = detect(&cols, &DriftConfig::new(Preset::Petrel)).unwrap();
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["preset"], "petrel");
        assert_eq!(json["columns"][0]["method"], "z_test");
        assert_eq!(json["columns"][0]["kind"], "categorical");
        assert_eq!(json["columns"][0]["histogram"]["kind"], "categorical");
        let back: DatasetVerdict = serde_json::from_value(json).unwrap();
        assert_eq!(back, v);

        // An unseen category under Evidently's goodness of fit: an infinite statistic.
        let r: Vec<Option<&str>> = ["a", "b", "c"]
            .iter()
            .cycle()
            .take(30)
            .map(|s| Some(*s))
            .collect();
        let c = [Some("a"), Some("b"), Some("d")];
        let v = detect(
            &[categorical("c", &r, &c)],
            &DriftConfig::new(Preset::Evidently),
        )
        .unwrap();
        assert_eq!(v.columns[0].method, Method::ChiSquareGoodnessOfFit);
        assert!(v.columns[0].statistic.is_infinite());
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["columns"][0]["statistic"], "inf");
        let back: DatasetVerdict = serde_json::from_value(json).unwrap();
        assert_eq!(back, v);
    }
}
