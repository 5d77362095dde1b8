//! A seeded generator of penguins: the simulated feed of the tabular model.
//!
//! It resamples the bundled Palmer Penguins rows with replacement, then perturbs the four body
//! measurements: `drift` moves every measurement by that many of its standard deviations (how a
//! population or a sensor drifts: the monitor's drift tests see it and accuracy falls), `noise`
//! adds Gaussian jitter of that many standard deviations (measurement error), and `missing`
//! blanks that share of measurement values (a flaky sensor). Labels, islands, sexes and years are
//! copied from the sampled row. Values are rounded to the precision of the original data (a
//! tenth of a millimetre for bills, whole millimetres and grams for flippers and mass).
//!
//! Draws come from ChaCha8 through [`Draw`](crate::rng::Draw), so a spec gives the same CSV on
//! every platform and with every version of `rand`.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::rng::Draw;
use crate::{MlError, Schema, Value, parse_csv};

/// The bundled Palmer Penguins data (344 rows), as in `data/penguins.csv`.
pub const PENGUINS_CSV: &str = include_str!("../../../data/penguins.csv");

/// The most rows one call generates.
pub const MAX_PENGUIN_ROWS: usize = 1_000_000;

/// The perturbed measurements and the number of decimals each is written with.
const MEASUREMENTS: [(&str, i32); 4] = [
    ("bill_length_mm", 1),
    ("bill_depth_mm", 1),
    ("flipper_length_mm", 0),
    ("body_mass_g", 0),
];

/// What to generate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PenguinSpec {
    /// Rows to generate (1 to 1,000,000).
    pub rows: usize,
    /// The seed: the same spec gives the same rows.
    #[serde(default)]
    pub seed: u64,
    /// Shift of every measurement, in its standard deviations (-5 to 5; 0: none).
    #[serde(default)]
    pub drift: f64,
    /// Standard deviation of the Gaussian noise added to each measurement, in the
    /// measurement's standard deviations (0 to 2; 0: none).
    #[serde(default)]
    pub noise: f64,
    /// Share of measurement values left blank, in [0, 0.5] (0: only those missing in the
    /// original rows).
    #[serde(default)]
    pub missing: f64,
}

impl PenguinSpec {
    /// A spec of `rows` rows with the given seed, no drift, noise or extra missing values.
    pub fn new(rows: usize, seed: u64) -> PenguinSpec {
        PenguinSpec {
            rows,
            seed,
            drift: 0.0,
            noise: 0.0,
            missing: 0.0,
        }
    }

    /// Refuses settings outside their ranges, naming the setting; a feed generated in a
    /// service holds at most a million rows.
    pub fn validate(&self) -> Result<(), MlError> {
        if !(1..=MAX_PENGUIN_ROWS).contains(&self.rows) {
            return Err(MlError::Setting(
                "rows must be between 1 and 1000000".to_owned(),
            ));
        }
        self.validate_shape()
    }

    /// [`PenguinSpec::validate`] without the cap on rows (files written by [`write_penguins`]).
    fn validate_shape(&self) -> Result<(), MlError> {
        let bad = |m: &str| Err(MlError::Setting(m.to_owned()));
        if self.rows == 0 {
            return bad("rows must be at least 1");
        }
        if !(self.drift.is_finite() && (-5.0..=5.0).contains(&self.drift)) {
            return bad("drift must be between -5 and 5 standard deviations");
        }
        if !(self.noise.is_finite() && (0.0..=2.0).contains(&self.noise)) {
            return bad("noise must be between 0 and 2 standard deviations");
        }
        if !(self.missing.is_finite() && (0.0..=0.5).contains(&self.missing)) {
            return bad("missing must be a share in [0, 0.5]");
        }
        Ok(())
    }
}

/// Generates `spec.rows` penguins as CSV with the header of `data/penguins.csv`, the columns of
/// [`Schema::penguins`].
pub fn generate_penguins(spec: &PenguinSpec) -> Result<String, MlError> {
    spec.validate()?;
    let mut out = Vec::with_capacity(spec.rows * 48);
    write_penguins(spec, &mut out)?;
    String::from_utf8(out).map_err(|e| MlError::Csv(e.to_string()))
}

/// Writes what [`generate_penguins`] generates to `out`, a row at a time, with no cap on the
/// rows (for files of any size).
pub fn write_penguins(spec: &PenguinSpec, out: impl std::io::Write) -> Result<(), MlError> {
    spec.validate_shape()?;
    let schema = Schema::penguins();
    let base = parse_csv(PENGUINS_CSV.as_bytes(), &schema)?;
    if !base.errors.is_empty() || base.table.is_empty() {
        return Err(MlError::Csv(
            "the bundled penguins data does not parse".into(),
        ));
    }
    let table = base.table;
    let columns: Vec<(usize, i32, f64)> = MEASUREMENTS
        .iter()
        .map(|&(name, decimals)| {
            let i = schema.feature_index(name).ok_or_else(|| {
                MlError::Schema(format!("no column {name} in the penguins schema"))
            })?;
            Ok((i, decimals, std_dev(table.rows.iter().map(|r| &r[i]))))
        })
        .collect::<Result<_, MlError>>()?;

    // The decimals each feature is written with: those of the measurements, none for the year.
    let mut decimals = vec![0usize; schema.features.len()];
    for &(i, d, _) in &columns {
        decimals[i] = d as usize;
    }

    let mut draw = Draw(ChaCha8Rng::seed_from_u64(spec.seed));
    let mut out = csv::Writer::from_writer(out);
    let fail = |e: csv::Error| MlError::Csv(e.to_string());
    let mut header = vec![schema.target.clone()];
    header.extend(schema.features.iter().map(|c| c.name.clone()));
    out.write_record(&header).map_err(fail)?;
    let mut record: Vec<String> = Vec::with_capacity(header.len());
    for _ in 0..spec.rows {
        let k = draw.index(table.len());
        let mut row = table.rows[k].clone();
        for &(i, decimals, sd) in &columns {
            // Every draw is made whatever the value, so one row's values never shift the
            // stream of the next.
            let jitter = draw.normal();
            let blank = draw.share() < spec.missing;
            if let Some(Value::Num(v)) = row[i] {
                let scale = 10f64.powi(decimals);
                let moved = v + (spec.drift + spec.noise * jitter) * sd;
                row[i] = (!blank).then(|| Value::Num((moved * scale).round() / scale));
            }
        }
        record.clear();
        record.push(table.targets[k].clone());
        for (value, &decimals) in row.iter().zip(&decimals) {
            record.push(match value {
                None => "NA".to_owned(),
                Some(Value::Num(v)) => format!("{v:.decimals$}"),
                Some(Value::Cat(s)) => s.clone(),
                Some(Value::Pixels(_)) => {
                    return Err(MlError::Schema("penguins have no image column".into()));
                }
            });
        }
        out.write_record(&record).map_err(fail)?;
    }
    out.flush().map_err(|e| MlError::Csv(e.to_string()))
}

/// The population standard deviation of the present numeric values.
fn std_dev<'a>(values: impl Iterator<Item = &'a Option<Value>>) -> f64 {
    let xs: Vec<f64> = values
        .filter_map(|v| match v {
            Some(Value::Num(x)) => Some(*x),
            _ => None,
        })
        .collect();
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_of(csv: &str, column: &str) -> f64 {
        let schema = Schema::penguins();
        let report = parse_csv(csv.as_bytes(), &schema).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors.first());
        let i = schema.feature_index(column).unwrap();
        let xs: Vec<f64> = report
            .table
            .rows
            .iter()
            .filter_map(|r| match &r[i] {
                Some(Value::Num(x)) => Some(*x),
                _ => None,
            })
            .collect();
        xs.iter().sum::<f64>() / xs.len() as f64
    }

    #[test]
    fn the_same_spec_gives_the_same_rows_and_another_seed_others() {
        let spec = PenguinSpec::new(100, 3);
        let a = generate_penguins(&spec).unwrap();
        assert_eq!(a, generate_penguins(&spec).unwrap());
        assert_ne!(a, generate_penguins(&PenguinSpec::new(100, 4)).unwrap());
        assert_eq!(a.lines().next(), PENGUINS_CSV.lines().next());
        assert_eq!(a.lines().count(), 101);
        // Pinned: a change to the generator or its stream changes every seeded feed.
        let first = a.lines().nth(1).unwrap();
        assert_eq!(first, PINNED_FIRST_ROW, "{first}");
    }

    const PINNED_FIRST_ROW: &str = "Gentoo,Biscoe,45.7,13.9,214,4400,female,2008";

    #[test]
    fn without_perturbation_every_row_is_an_original_row() {
        let schema = Schema::penguins();
        let generated = generate_penguins(&PenguinSpec::new(500, 1)).unwrap();
        let generated = parse_csv(generated.as_bytes(), &schema).unwrap();
        let original = parse_csv(PENGUINS_CSV.as_bytes(), &schema).unwrap();
        assert!(generated.errors.is_empty());
        let rows: Vec<_> = original
            .table
            .rows
            .iter()
            .zip(&original.table.targets)
            .collect();
        for row in generated.table.rows.iter().zip(&generated.table.targets) {
            assert!(rows.contains(&row), "{row:?} is not a bundled row");
        }
    }

    #[test]
    fn drift_moves_the_measurements_by_that_many_standard_deviations() {
        let plain = generate_penguins(&PenguinSpec::new(4000, 9)).unwrap();
        let drifted = generate_penguins(&PenguinSpec {
            drift: 1.0,
            ..PenguinSpec::new(4000, 9)
        })
        .unwrap();
        // Same seed, so the same rows are sampled: the shift is exactly one standard deviation
        // (about 5.46 mm of bill length), up to rounding to a tenth.
        let shift = mean_of(&drifted, "bill_length_mm") - mean_of(&plain, "bill_length_mm");
        assert!((shift - 5.46).abs() < 0.05, "{shift}");
    }

    #[test]
    fn missing_blanks_about_that_share_of_measurements() {
        let csv = generate_penguins(&PenguinSpec {
            missing: 0.2,
            ..PenguinSpec::new(5000, 2)
        })
        .unwrap();
        let blanks = csv
            .lines()
            .skip(1)
            .filter(|l| l.split(',').nth(2) == Some("NA"))
            .count() as f64
            / 5000.0;
        assert!((0.18..0.23).contains(&blanks), "{blanks}");
    }

    #[test]
    fn settings_out_of_range_are_refused_by_name() {
        for (spec, word) in [
            (PenguinSpec::new(0, 0), "rows"),
            (
                PenguinSpec {
                    drift: 9.0,
                    ..PenguinSpec::new(1, 0)
                },
                "drift",
            ),
            (
                PenguinSpec {
                    noise: -1.0,
                    ..PenguinSpec::new(1, 0)
                },
                "noise",
            ),
            (
                PenguinSpec {
                    missing: f64::NAN,
                    ..PenguinSpec::new(1, 0)
                },
                "missing",
            ),
        ] {
            let err = generate_penguins(&spec).unwrap_err().to_string();
            assert!(err.contains(word), "{err}");
        }
    }
}
