//! `petrel drift`: compare two CSV files column by column, offline.
//!
//! The same computation the monitor runs on live windows, pointed at two files, so a user can
//! check a new batch against the training data before sending it anywhere, and so the numbers
//! can be compared with Evidently on identical input (see `scripts/bench-drift.sh`).
//!
//! Exit status: 0 when the comparison ran, whether or not drift was found (drift is a finding,
//! not a failure; read the verdict, or `drifted` in `--json`), 2 when the input is unusable
//! (unreadable file, bad schema, a column missing from one file, a column with no value).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use petrel_drift::{
    CategoricalSample, Column, ColumnData, ColumnVerdict, DatasetVerdict, DriftConfig, Kind,
    NumericSample, Preset,
};
use petrel_ml::{ColumnKind, Schema, is_missing_token, text};
use serde::Serialize;

#[derive(clap::Args, Debug)]
pub struct DriftArgs {
    /// The reference CSV (for example the training data).
    reference: PathBuf,
    /// The CSV to compare against it (for example a window of live traffic).
    current: PathBuf,
    /// JSON schema file ({"features":[{"name":..,"kind":"numeric"|"categorical"}],"target":..});
    /// only its feature columns are compared. Without it every column of the reference is
    /// compared, numeric if every non-missing value in both files parses as a finite number.
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Method choice and decision rule: `petrel` (two-sample tests, Benjamini-Hochberg) or
    /// `evidently` (Evidently 0.7's DataDriftPreset defaults).
    #[arg(long, value_enum, default_value_t = PresetArg::Petrel)]
    preset: PresetArg,
    /// False discovery rate of the petrel preset.
    #[arg(long, default_value_t = petrel_drift::DEFAULT_THRESHOLD)]
    fdr: f64,
    /// Share of drifted columns at which the evidently preset calls the dataset drifted.
    #[arg(long, default_value_t = 0.5)]
    drift_share: f64,
    /// Print the machine-readable result (per-column results with histograms, and timings).
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PresetArg {
    Petrel,
    Evidently,
}

/// What `--json` prints.
#[derive(Serialize)]
struct JsonReport<'a> {
    reference: &'a str,
    current: &'a str,
    reference_rows: usize,
    current_rows: usize,
    /// Milliseconds spent reading and parsing the two files, and in the drift computation
    /// itself (building the sorted samples and every statistic), measured apart so a benchmark
    /// can report either.
    timing_ms: Timing,
    verdict: &'a DatasetVerdict,
}

#[derive(Serialize)]
struct Timing {
    read: f64,
    drift: f64,
}

/// Runs the subcommand; any error is bad input, reported on stderr with exit status 2.
pub fn run(args: DriftArgs) -> anyhow::Result<()> {
    match execute(&args) {
        Ok(out) => {
            print!("{out}");
            Ok(())
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn execute(args: &DriftArgs) -> anyhow::Result<String> {
    let started = Instant::now();
    let read =
        |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let schema = match &args.schema {
        Some(p) => {
            let s: Schema = serde_json::from_slice(&read(p)?)
                .with_context(|| format!("{} is not a valid schema", p.display()))?;
            s.validate()
                .with_context(|| format!("{} is not a valid schema", p.display()))?;
            Some(s)
        }
        None => None,
    };
    let reference = RawTable::parse(&read(&args.reference)?)
        .with_context(|| format!("cannot parse {}", args.reference.display()))?;
    let current = RawTable::parse(&read(&args.current)?)
        .with_context(|| format!("cannot parse {}", args.current.display()))?;
    let plan = plan_columns(&reference, &current, schema.as_ref())?;
    let typed = parse_columns(&reference, &current, &plan, schema.as_ref())?;
    let read_ms = started.elapsed().as_secs_f64() * 1e3;

    let drift_started = Instant::now();
    let columns = to_columns(typed);
    let config = DriftConfig {
        fdr: args.fdr,
        drift_share: args.drift_share,
        ..DriftConfig::new(match args.preset {
            PresetArg::Petrel => Preset::Petrel,
            PresetArg::Evidently => Preset::Evidently,
        })
    };
    let verdict = petrel_drift::detect(&columns, &config)?;
    let drift_ms = drift_started.elapsed().as_secs_f64() * 1e3;

    if args.json {
        let report = JsonReport {
            reference: &args.reference.to_string_lossy(),
            current: &args.current.to_string_lossy(),
            reference_rows: reference.rows,
            current_rows: current.rows,
            timing_ms: Timing {
                read: read_ms,
                drift: drift_ms,
            },
            verdict: &verdict,
        };
        Ok(serde_json::to_string_pretty(&report)? + "\n")
    } else {
        Ok(render_table(&verdict))
    }
}

/// A CSV file as columns of raw text, so each column can be typed once both files are seen.
struct RawTable {
    header: Vec<String>,
    /// One vector of cells per header column; `None` for a missing-value token.
    cells: Vec<Vec<Option<String>>>,
    rows: usize,
}

impl RawTable {
    /// Reads CSV with a header row. A row with the wrong number of fields is an error rather
    /// than skipped, because silently dropping rows would bias the comparison.
    fn parse(bytes: &[u8]) -> anyhow::Result<RawTable> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(bytes);
        let header: Vec<String> = reader
            .headers()
            .context("cannot read the header row")?
            .iter()
            .map(|h| h.trim().to_owned())
            .collect();
        if header.is_empty() || header.iter().all(String::is_empty) {
            bail!("the file has no header row");
        }
        let mut cells: Vec<Vec<Option<String>>> = vec![Vec::new(); header.len()];
        let mut record = csv::StringRecord::new();
        let mut rows = 0;
        while reader
            .read_record(&mut record)
            .with_context(|| format!("line {}", rows + 2))?
        {
            for (col, field) in cells.iter_mut().zip(record.iter()) {
                col.push((!is_missing_token(field)).then(|| field.trim().to_owned()));
            }
            rows += 1;
        }
        Ok(RawTable {
            header,
            cells,
            rows,
        })
    }

    fn column(&self, name: &str) -> Option<&[Option<String>]> {
        self.header
            .iter()
            .position(|h| h == name)
            .map(|i| self.cells[i].as_slice())
    }
}

/// The columns to compare and their kinds: the schema's features, or every reference column
/// with its kind inferred from both files. A text column (only a schema can say one is) is
/// compared through its derived features, as the monitor compares it: `NAME.length` (tokens per
/// text) and `NAME.tokens` (the distribution of the reference's most frequent tokens).
fn plan_columns(
    reference: &RawTable,
    current: &RawTable,
    schema: Option<&Schema>,
) -> anyhow::Result<Vec<(String, ColumnKind)>> {
    let wanted: Vec<(String, Option<ColumnKind>)> = match schema {
        Some(s) => s
            .features
            .iter()
            .map(|c| (c.name.clone(), Some(c.kind)))
            .collect(),
        None => reference.header.iter().map(|h| (h.clone(), None)).collect(),
    };
    let mut out = Vec::with_capacity(wanted.len());
    for (name, kind) in wanted {
        let (Some(r), Some(c)) = (reference.column(&name), current.column(&name)) else {
            let which = if reference.column(&name).is_none() {
                "reference"
            } else {
                "current"
            };
            bail!("column '{name}' is missing from the {which} file");
        };
        let kind = kind.unwrap_or_else(|| infer_kind(r, c));
        out.push((name, kind));
    }
    if out.is_empty() {
        bail!("there is no column to compare");
    }
    Ok(out)
}

/// Numeric when there is at least one value and every non-missing value on both sides parses
/// as a finite number; categorical otherwise.
fn infer_kind(reference: &[Option<String>], current: &[Option<String>]) -> ColumnKind {
    let mut values = reference.iter().chain(current).flatten().peekable();
    if values.peek().is_none() {
        return ColumnKind::Categorical;
    }
    if values.all(|v| v.parse::<f64>().is_ok_and(f64::is_finite)) {
        ColumnKind::Numeric
    } else {
        ColumnKind::Categorical
    }
}

/// A column's values typed by its kind, both sides. Numbers are parsed here, with the file
/// reading, so that the drift timing measures the drift computation only.
enum Typed<'a> {
    Numeric(Vec<Option<f64>>, Vec<Option<f64>>),
    Categorical(&'a [Option<String>], &'a [Option<String>]),
    /// Counts per category, both sides (a text column's token distribution).
    Counts(BTreeMap<String, u64>, BTreeMap<String, u64>),
}

fn parse_columns<'a>(
    reference: &'a RawTable,
    current: &'a RawTable,
    plan: &[(String, ColumnKind)],
    schema: Option<&Schema>,
) -> anyhow::Result<Vec<(String, Typed<'a>)>> {
    let mut out = Vec::with_capacity(plan.len());
    for (name, kind) in plan {
        // Both lookups succeeded in `plan_columns`.
        let (r, c) = (
            reference.column(name).unwrap_or_default(),
            current.column(name).unwrap_or_default(),
        );
        let typed = match kind {
            ColumnKind::Numeric => Typed::Numeric(
                numbers(r).with_context(|| format!("reference column '{name}'"))?,
                numbers(c).with_context(|| format!("current column '{name}'"))?,
            ),
            ColumnKind::Categorical => Typed::Categorical(r, c),
            ColumnKind::Text => {
                let lengths = |cells: &[Option<String>]| -> Vec<Option<f64>> {
                    cells
                        .iter()
                        .map(|t| t.as_deref().map(|t| text::tokens(t).count() as f64))
                        .collect()
                };
                out.push((
                    text::derived_name(name, "length"),
                    Typed::Numeric(lengths(r), lengths(c)),
                ));
                let present =
                    |cells: &'a [Option<String>]| cells.iter().flatten().map(String::as_str);
                let (profile, _) = text::TextProfile::from_texts(present(r));
                Typed::Counts(
                    text::token_counts(present(r), &profile.tokens),
                    text::token_counts(present(c), &profile.tokens),
                )
            }
            ColumnKind::Image => {
                // Only a schema says a column is an image, and it declares the shape.
                let spec = schema
                    .and_then(|s| s.feature_index(name).map(|i| &s.features[i]))
                    .and_then(|c| c.image)
                    .with_context(|| format!("image column '{name}' declares no shape"))?;
                let stats = |cells: &[Option<String>], side: &str| {
                    cells
                        .iter()
                        .enumerate()
                        .map(|(row, cell)| {
                            cell.as_deref()
                                .map(|t| {
                                    petrel_ml::image::parse_image_text(t, &spec)
                                        .map(|p| petrel_ml::image::intensity(&p, spec.max_value))
                                        .map_err(|e| {
                                            anyhow::anyhow!(
                                                "{side} column '{name}', row {}: {e}",
                                                row + 1
                                            )
                                        })
                                })
                                .transpose()
                        })
                        .collect::<anyhow::Result<Vec<_>>>()
                };
                let (r, c) = (stats(r, "reference")?, stats(c, "current")?);
                let pick = |v: &[Option<(f64, f64)>], f: fn((f64, f64)) -> f64| {
                    v.iter().map(|s| s.map(f)).collect::<Vec<_>>()
                };
                out.push((
                    text::derived_name(name, "mean_intensity"),
                    Typed::Numeric(pick(&r, |s| s.0), pick(&c, |s| s.0)),
                ));
                out.push((
                    text::derived_name(name, "contrast"),
                    Typed::Numeric(pick(&r, |s| s.1), pick(&c, |s| s.1)),
                ));
                continue;
            }
        };
        let name = if *kind == ColumnKind::Text {
            text::derived_name(name, "tokens")
        } else {
            name.clone()
        };
        out.push((name, typed));
    }
    Ok(out)
}

/// Builds the samples the statistics need (sorting numeric values, counting categories), one
/// column per core at a time: the sorts dominate the drift time of large files.
fn to_columns(typed: Vec<(String, Typed<'_>)>) -> Vec<Column> {
    let build = |(name, t): (String, Typed<'_>)| Column {
        name,
        data: match t {
            Typed::Numeric(r, c) => ColumnData::Numeric {
                reference: NumericSample::from_options(r),
                current: NumericSample::from_options(c),
            },
            Typed::Categorical(r, c) => ColumnData::Categorical {
                reference: categorical(r),
                current: categorical(c),
            },
            Typed::Counts(r, c) => ColumnData::Categorical {
                reference: CategoricalSample::from_counts(r, 0),
                current: CategoricalSample::from_counts(c, 0),
            },
        },
    };
    let rows: usize = typed
        .iter()
        .map(|(_, t)| match t {
            Typed::Numeric(r, c) => r.len() + c.len(),
            Typed::Categorical(r, c) => r.len() + c.len(),
            Typed::Counts(r, c) => r.len() + c.len(),
        })
        .sum();
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    if workers <= 1 || rows < 200_000 {
        return typed.into_iter().map(build).collect();
    }
    let n = typed.len();
    let queue = std::sync::Mutex::new(typed.into_iter().enumerate());
    let done = std::sync::Mutex::new(Vec::with_capacity(n));
    std::thread::scope(|scope| {
        for _ in 0..workers.min(n) {
            scope.spawn(|| {
                loop {
                    let Some((i, item)) = queue.lock().unwrap_or_else(|e| e.into_inner()).next()
                    else {
                        break;
                    };
                    let col = build(item);
                    done.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((i, col));
                }
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, c)| c).collect()
}

fn numbers(cells: &[Option<String>]) -> anyhow::Result<Vec<Option<f64>>> {
    let mut values = Vec::with_capacity(cells.len());
    for (row, cell) in cells.iter().enumerate() {
        values.push(match cell {
            None => None,
            Some(s) => match s.parse::<f64>() {
                Ok(v) if v.is_finite() => Some(v),
                _ => bail!("row {}: '{s}' is not a finite number", row + 1),
            },
        });
    }
    Ok(values)
}

fn categorical(cells: &[Option<String>]) -> CategoricalSample {
    CategoricalSample::from_values(cells.iter().map(Option::as_deref))
}

fn fmt_num(x: f64) -> String {
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if (1e-4..1e5).contains(&a) {
        format!("{x:.4}")
    } else {
        format!("{x:.3e}")
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), fmt_num)
}

fn missing_cell(c: &ColumnVerdict) -> String {
    match &c.missing {
        None => "-".to_owned(),
        Some(m) => format!(
            "{}/{} -> {}/{}{}",
            m.reference_missing,
            m.reference_rows,
            m.current_missing,
            m.current_rows,
            if m.drifted { " (changed)" } else { "" }
        ),
    }
}

/// The human-readable report: an aligned table, one row per column, then the dataset verdict.
fn render_table(v: &DatasetVerdict) -> String {
    let header = [
        "column",
        "kind",
        "method",
        "statistic",
        "p-value",
        "adj. p",
        "distance",
        "threshold",
        "drift",
        "missing (ref -> cur)",
    ];
    let rows: Vec<[String; 10]> = v
        .columns
        .iter()
        .map(|c| {
            [
                c.column.clone(),
                match c.kind {
                    Kind::Numeric => "numeric".into(),
                    Kind::Categorical => "categorical".into(),
                },
                c.method.name().to_owned(),
                fmt_num(c.statistic),
                opt(c.p_value),
                opt(c.adjusted_p_value),
                opt(c.distance),
                fmt_num(c.threshold),
                if c.drifted {
                    "DRIFT".into()
                } else {
                    "ok".into()
                },
                missing_cell(c),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            // Text left-aligned, numbers right-aligned.
            if (3..=7).contains(&i) {
                let _ = write!(s, "{cell:>w$}");
            } else {
                let _ = write!(s, "{cell:<w$}");
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut out, &header);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&mut out, &cells);
    }
    let _ = writeln!(
        out,
        "\ndataset: {} ({} of {} columns drifted; preset {}; rule: {})",
        if v.drifted { "DRIFT" } else { "no drift" },
        v.n_drifted,
        v.n_columns,
        match v.preset {
            Preset::Petrel => "petrel",
            Preset::Evidently => "evidently",
        },
        v.rule
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PENGUINS: &str = include_str!("../../../data/penguins.csv");

    /// The penguins file is sorted by species, so its first and second halves differ: Adelie
    /// against Gentoo and Chinstrap.
    fn halves() -> (String, String) {
        let mut lines = PENGUINS.lines();
        let header = lines.next().unwrap();
        let rows: Vec<&str> = lines.collect();
        let (a, b) = rows.split_at(rows.len() / 2);
        let join = |part: &[&str]| format!("{header}\n{}\n", part.join("\n"));
        (join(a), join(b))
    }

    fn run_on(reference: &str, current: &str, preset: Preset) -> DatasetVerdict {
        let r = RawTable::parse(reference.as_bytes()).unwrap();
        let c = RawTable::parse(current.as_bytes()).unwrap();
        let plan = plan_columns(&r, &c, None).unwrap();
        let columns = to_columns(parse_columns(&r, &c, &plan, None).unwrap());
        petrel_drift::detect(&columns, &DriftConfig::new(preset)).unwrap()
    }

    /// A text column is compared through its length and token distribution, named as the
    /// monitor names them: a new seed of the same feed does not drift, slang does.
    #[test]
    fn text_columns_are_compared_through_derived_features() {
        let feed = |seed, shift| {
            petrel_ml::generate_reviews(&petrel_ml::ReviewSpec {
                shift,
                ..petrel_ml::ReviewSpec::new(800, seed)
            })
            .unwrap()
        };
        let schema = Schema::reviews();
        let verdict = |current: &str| {
            let r = RawTable::parse(feed(1, 0.0).as_bytes()).unwrap();
            let c = RawTable::parse(current.as_bytes()).unwrap();
            let plan = plan_columns(&r, &c, Some(&schema)).unwrap();
            let columns = to_columns(parse_columns(&r, &c, &plan, Some(&schema)).unwrap());
            petrel_drift::detect(&columns, &DriftConfig::new(Preset::Petrel)).unwrap()
        };
        let same = verdict(&feed(2, 0.0));
        let names: Vec<&str> = same.columns.iter().map(|c| c.column.as_str()).collect();
        assert_eq!(names, ["product", "review.length", "review.tokens"]);
        assert!(!same.drifted, "{:?}", same.columns);
        let slang = verdict(&feed(2, 0.7));
        let tokens = slang
            .columns
            .iter()
            .find(|c| c.column == "review.tokens")
            .unwrap();
        assert!(tokens.drifted, "{tokens:?}");
    }

    #[test]
    fn infers_penguin_column_kinds() {
        let t = RawTable::parse(PENGUINS.as_bytes()).unwrap();
        assert_eq!(t.rows, 344);
        let plan = plan_columns(&t, &t, None).unwrap();
        let kinds: Vec<(&str, ColumnKind)> = plan.iter().map(|(n, k)| (n.as_str(), *k)).collect();
        assert_eq!(
            kinds,
            [
                ("species", ColumnKind::Categorical),
                ("island", ColumnKind::Categorical),
                ("bill_length_mm", ColumnKind::Numeric),
                ("bill_depth_mm", ColumnKind::Numeric),
                ("flipper_length_mm", ColumnKind::Numeric),
                ("body_mass_g", ColumnKind::Numeric),
                ("sex", ColumnKind::Categorical),
                ("year", ColumnKind::Numeric),
            ]
        );
        // "NA" is a missing value, not a category.
        let plan = plan_columns(&t, &t, Some(&Schema::penguins())).unwrap();
        assert_eq!(plan.len(), 7);
        let sex = t.column("sex").unwrap();
        assert!(sex.iter().any(Option::is_none));
    }

    #[test]
    fn a_file_against_itself_has_no_drift() {
        for preset in [Preset::Petrel, Preset::Evidently] {
            let v = run_on(PENGUINS, PENGUINS, preset);
            assert!(!v.drifted, "{preset:?}");
            assert_eq!(v.n_drifted, 0);
            assert_eq!(v.n_columns, 8);
        }
    }

    #[test]
    fn the_two_halves_of_penguins_drift() {
        let (a, b) = halves();
        let v = run_on(&a, &b, Preset::Petrel);
        assert!(v.drifted);
        let species = &v.columns[0];
        assert_eq!(species.column, "species");
        assert!(species.drifted);
        let v = run_on(&a, &b, Preset::Evidently);
        assert!(v.drifted, "most penguin columns differ between species");
        let table = render_table(&v);
        assert!(table.starts_with("column"));
        assert!(table.contains("species"));
        assert!(table.contains("dataset: DRIFT"));
        // Every body row has the same column layout as the header (aligned).
        let first = table.lines().next().unwrap();
        let at = first.find("method").unwrap();
        for row in table.lines().skip(1).take(8) {
            assert!(
                row.len() > at && !row[..at].ends_with(char::is_alphanumeric),
                "{row}"
            );
        }
    }

    #[test]
    fn category_counting_switches_to_a_map() {
        let cells: Vec<Option<String>> = (0..500)
            .map(|i| (i % 7 != 0).then(|| format!("v{}", i % 40)))
            .collect();
        let s = categorical(&cells);
        let mut want: std::collections::BTreeMap<String, u64> = Default::default();
        for c in cells.iter().flatten() {
            *want.entry(c.clone()).or_insert(0) += 1;
        }
        assert_eq!(s.counts(), &want);
        assert_eq!(
            s.missing(),
            cells.iter().filter(|c| c.is_none()).count() as u64
        );
    }

    #[test]
    fn bad_input_is_reported() {
        assert!(RawTable::parse(b"").is_err());
        let r = RawTable::parse(b"a,b\n1,x\n").unwrap();
        let c = RawTable::parse(b"a\n1\n").unwrap();
        let err = plan_columns(&r, &c, None).unwrap_err();
        assert!(
            err.to_string()
                .contains("'b' is missing from the current file")
        );
        assert!(RawTable::parse(b"a,b\n1,2\n3\n").is_err());

        // A schema that declares a text column numeric.
        let schema = Schema {
            features: vec![petrel_ml::Column::numeric("b")],
            target: "a".into(),
        };
        let plan = plan_columns(&r, &r, Some(&schema)).unwrap();
        let err = parse_columns(&r, &r, &plan, None).err().unwrap();
        assert!(format!("{err:#}").contains("'x' is not a finite number"));
    }

    #[test]
    fn image_columns_are_compared_through_intensity_and_contrast() {
        let digits = include_str!("../../../data/digits.csv");
        let schema = Schema::digits();
        let mut lines = digits.lines();
        let header = lines.next().unwrap();
        let rows: Vec<&str> = lines.collect();
        let (a, b) = rows.split_at(rows.len() / 2);
        let join = |part: &[String]| format!("{header}\n{}\n", part.join("\n"));
        let plain = |part: &[&str]| part.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>();
        // Every pixel +5, capped at the range's 16.
        let brighter: Vec<String> = b
            .iter()
            .map(|r| {
                let (image, digit) = r.rsplit_once(',').unwrap();
                let bright: Vec<String> = image
                    .split(' ')
                    .map(|p| (p.parse::<f64>().unwrap() + 5.0).min(16.0).to_string())
                    .collect();
                format!("{},{digit}", bright.join(" "))
            })
            .collect();
        let verdict = |current: &str| {
            let r = RawTable::parse(join(&plain(a)).as_bytes()).unwrap();
            let c = RawTable::parse(current.as_bytes()).unwrap();
            let plan = plan_columns(&r, &c, Some(&schema)).unwrap();
            let columns = to_columns(parse_columns(&r, &c, &plan, Some(&schema)).unwrap());
            petrel_drift::detect(&columns, &DriftConfig::new(Preset::Petrel)).unwrap()
        };
        let same = verdict(&join(&plain(b)));
        let names: Vec<&str> = same.columns.iter().map(|c| c.column.as_str()).collect();
        assert_eq!(names, ["image.mean_intensity", "image.contrast"]);
        assert!(!same.drifted, "{:?}", same.columns);
        let bright = verdict(&join(&brighter));
        assert!(
            bright.drifted && bright.columns[0].drifted,
            "{:?}",
            bright.columns
        );
        // A broken image names its side, column and row.
        let r = RawTable::parse(join(&plain(a)).as_bytes()).unwrap();
        let c = RawTable::parse(format!("{header}\n1 2 3,0\n").as_bytes()).unwrap();
        let plan = plan_columns(&r, &c, Some(&schema)).unwrap();
        let err = parse_columns(&r, &c, &plan, Some(&schema)).err().unwrap();
        assert!(
            format!("{err:#}").contains("current column 'image', row 1: the image has 3 pixel"),
            "{err:#}"
        );
    }

    #[test]
    fn json_report_is_machine_readable() {
        let dir = std::env::temp_dir().join(format!("petrel-drift-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = halves();
        let (pa, pb) = (dir.join("a.csv"), dir.join("b.csv"));
        std::fs::write(&pa, a).unwrap();
        std::fs::write(&pb, b).unwrap();
        let args = DriftArgs {
            reference: pa,
            current: pb,
            schema: None,
            preset: PresetArg::Evidently,
            fdr: 0.05,
            drift_share: 0.5,
            json: true,
        };
        let out = execute(&args).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["verdict"]["preset"], "evidently");
        assert_eq!(v["reference_rows"], 172);
        assert!(v["timing_ms"]["drift"].as_f64().unwrap() >= 0.0);
        assert_eq!(v["verdict"]["columns"].as_array().unwrap().len(), 8);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
