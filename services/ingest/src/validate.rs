//! Validation of one file: the schema (through [`petrel_ml::parse_csv`]), the request's
//! [`Checks`], and the report that says what was found and how to fix it.
//!
//! Everything here is synchronous CPU work over the whole file; callers run it on the blocking
//! pool.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use petrel_api::ingest::{CategoryCount, Checks, ColumnSummary, ValidationReport};
use petrel_ml::{ColumnKind, MlError, RowError, Schema, Value, parse_csv};

/// Rejected rows kept in a report (the counts cover them all).
pub const MAX_REPORTED_ERRORS: usize = 100;
/// Categories listed per column in a report.
const TOP_CATEGORIES: usize = 10;
/// The percentiles every numeric column reports.
const QUANTILES: [(&str, f64); 5] = [
    ("p05", 0.05),
    ("p25", 0.25),
    ("p50", 0.5),
    ("p75", 0.75),
    ("p95", 0.95),
];
/// The `rejected_by_column` key of a problem with a whole row.
pub const WHOLE_ROW: &str = "(row)";

/// Refuses checks that cannot apply to `schema`, in the request's words.
pub fn check_rules(checks: &Checks, schema: &Schema) -> Result<(), String> {
    let share = |name: &str, v: Option<f64>| match v {
        Some(v) if !(v.is_finite() && (0.0..=1.0).contains(&v)) => {
            Err(format!("checks.{name} must be a share in [0, 1]"))
        }
        _ => Ok(()),
    };
    share("max_rejected_share", checks.max_rejected_share)?;
    share("max_duplicate_share", checks.max_duplicate_share)?;
    for (name, rule) in &checks.columns {
        let kind = if *name == schema.target {
            None
        } else {
            Some(
                schema
                    .features
                    .iter()
                    .find(|c| c.name == *name)
                    .ok_or_else(|| {
                        format!("checks.columns names {name:?}, which the schema lacks")
                    })?
                    .kind,
            )
        };
        let at = |what: &str| format!("checks.columns.{name}.{what}");
        share(
            &format!("columns.{name}.max_missing_share"),
            rule.max_missing_share,
        )?;
        if rule.min.is_some() || rule.max.is_some() {
            if kind != Some(ColumnKind::Numeric) {
                return Err(format!("{} applies to numeric columns only", at("min/max")));
            }
            if rule.min.is_some_and(|v| !v.is_finite()) || rule.max.is_some_and(|v| !v.is_finite())
            {
                return Err(format!("{} must be finite numbers", at("min/max")));
            }
            if let (Some(lo), Some(hi)) = (rule.min, rule.max)
                && lo > hi
            {
                return Err(format!("{} is above its max", at("min")));
            }
        }
        if let Some(categories) = &rule.categories {
            if !matches!(kind, None | Some(ColumnKind::Categorical)) {
                return Err(format!(
                    "{} applies to categorical columns and the target only",
                    at("categories")
                ));
            }
            if categories.is_empty() {
                return Err(format!("{} must list at least one value", at("categories")));
            }
        }
    }
    Ok(())
}

/// What validating one file gave.
#[derive(Debug)]
pub struct Validated {
    pub report: ValidationReport,
    /// The file without the rows a column rule rejected, when it rejected any: what training
    /// must read (rows the schema rejects are left out by every reader anyway).
    pub accepted_csv: Option<Vec<u8>>,
}

impl Validated {
    pub fn passed(&self) -> bool {
        self.report.problems.is_empty()
    }
}

/// Validates `bytes` against `schema` and `checks`. Only a failure of the machinery is an
/// `Err`; a file that cannot be read as the schema says is a report with a problem.
pub fn validate(
    bytes: &[u8],
    schema: &Schema,
    checks: &Checks,
    default_max_rejected: f64,
) -> Result<Validated, MlError> {
    let parsed = match parse_csv(bytes, schema) {
        Ok(parsed) => parsed,
        Err(e @ (MlError::Schema(_) | MlError::Csv(_))) => {
            return Ok(Validated {
                report: ValidationReport {
                    problems: vec![format!(
                        "{e}; send a CSV file with a header row naming the schema's columns"
                    )],
                    ..ValidationReport::default()
                },
                accepted_csv: None,
            });
        }
        Err(e) => return Err(e),
    };
    let mut errors = parsed.errors;
    let parse_rejected: BTreeSet<u64> = errors.iter().map(|e| e.line).collect();

    // Column rules, row by row.
    let mut keep = vec![true; parsed.table.len()];
    let mut dropped_lines = HashSet::new();
    let rules: Vec<_> = schema
        .features
        .iter()
        .enumerate()
        .filter_map(|(i, c)| checks.columns.get(&c.name).map(|r| (i, c.name.as_str(), r)))
        .collect();
    let target_rule = checks
        .columns
        .get(&schema.target)
        .and_then(|r| r.categories.as_ref());
    for (r, row) in parsed.table.rows.iter().enumerate() {
        let line = parsed.lines[r];
        let before = errors.len();
        for &(i, name, rule) in &rules {
            let problem = match &row[i] {
                Some(Value::Num(v)) => match (rule.min, rule.max) {
                    (Some(lo), _) if *v < lo => Some(format!("{v} is below the minimum {lo}")),
                    (_, Some(hi)) if *v > hi => Some(format!("{v} is above the maximum {hi}")),
                    _ => None,
                },
                Some(Value::Cat(s)) => rule
                    .categories
                    .as_ref()
                    .filter(|allowed| !allowed.iter().any(|a| a == s))
                    .map(|allowed| not_one_of(s, allowed)),
                _ => None,
            };
            if let Some(message) = problem {
                errors.push(RowError {
                    line,
                    column: Some(name.to_owned()),
                    message,
                });
            }
        }
        if let Some(allowed) = target_rule {
            let label = &parsed.table.targets[r];
            if !allowed.iter().any(|a| a == label) {
                errors.push(RowError {
                    line,
                    column: Some(schema.target.clone()),
                    message: not_one_of(label, allowed),
                });
            }
        }
        if errors.len() > before {
            keep[r] = false;
            dropped_lines.insert(line);
        }
    }
    errors.sort_by_key(|e| e.line);

    let mut rejected_by_column: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen = HashSet::new();
    for e in &errors {
        // Count each row once per column at fault.
        let column = e.column.clone().unwrap_or_else(|| WHOLE_ROW.to_owned());
        if seen.insert((e.line, column.clone())) {
            *rejected_by_column.entry(column).or_default() += 1;
        }
    }
    let rejected = (parse_rejected.len() + dropped_lines.len()) as u64;
    let accepted = keep.iter().filter(|k| **k).count() as u64;
    let rows = accepted + rejected;

    let kept: Vec<usize> = (0..keep.len()).filter(|&r| keep[r]).collect();
    let duplicates = count_duplicates(&parsed.table.rows, &parsed.table.targets, &kept);
    let columns = summarize(schema, &parsed.table.rows, &parsed.table.targets, &kept);

    let mut problems = Vec::new();
    let first = || first_problems(&errors);
    if accepted == 0 {
        if rows == 0 {
            problems
                .push("the file has a header but no data rows; send at least one row".to_owned());
        } else {
            problems.push(format!(
                "no valid rows (of {rows}); first problems: {}",
                first()
            ));
        }
    } else {
        let max = checks.max_rejected_share.unwrap_or(default_max_rejected);
        if rejected as f64 > max * rows as f64 {
            problems.push(format!(
                "{rejected} of {rows} rows are invalid, more than the allowed {}%; fix the rows \
                 reported (first problems: {}) or raise checks.max_rejected_share",
                percent(max),
                first()
            ));
        }
        for summary in &columns {
            let limit = checks
                .columns
                .get(&summary.name)
                .and_then(|r| r.max_missing_share);
            if let Some(limit) = limit
                && summary.missing_share > limit
            {
                problems.push(format!(
                    "{}% of {} is missing, more than the allowed {}%; fill the column in or \
                     raise checks.columns.{}.max_missing_share",
                    percent(summary.missing_share),
                    summary.name,
                    percent(limit),
                    summary.name
                ));
            }
        }
        if let Some(limit) = checks.max_duplicate_share {
            let share = duplicates as f64 / accepted as f64;
            if share > limit {
                problems.push(format!(
                    "{duplicates} of {accepted} rows repeat an earlier row ({}%), more than the \
                     allowed {}%; remove the duplicates or raise checks.max_duplicate_share",
                    percent(share),
                    percent(limit)
                ));
            }
        }
    }

    let accepted_csv = if dropped_lines.is_empty() || !problems.is_empty() {
        None
    } else {
        Some(without_lines(bytes, &dropped_lines))
    };
    errors.truncate(MAX_REPORTED_ERRORS);
    Ok(Validated {
        report: ValidationReport {
            rows,
            accepted,
            rejected,
            duplicates,
            problems,
            rejected_by_column,
            errors,
            columns,
        },
        accepted_csv,
    })
}

fn not_one_of(value: &str, allowed: &[String]) -> String {
    let shown: Vec<&str> = allowed.iter().take(10).map(String::as_str).collect();
    let more = if allowed.len() > 10 { ", ..." } else { "" };
    format!(
        "'{value}' is not one of the allowed values ({}{more})",
        shown.join(", ")
    )
}

fn percent(share: f64) -> String {
    let p = share * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0}")
    } else {
        format!("{p:.1}")
    }
}

/// The first three problems, for messages.
pub fn first_problems(errors: &[RowError]) -> String {
    errors
        .iter()
        .take(3)
        .map(|e| format!("line {}: {}", e.line, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Accepted rows equal in every column to an earlier accepted row.
fn count_duplicates(rows: &[petrel_ml::FeatureRow], targets: &[String], kept: &[usize]) -> u64 {
    let mut seen = HashSet::with_capacity(kept.len());
    let mut duplicates = 0;
    let mut key = String::new();
    for &r in kept {
        key.clear();
        for value in &rows[r] {
            match value {
                None => key.push('\u{1}'),
                Some(Value::Num(v)) => key.push_str(&v.to_bits().to_string()),
                Some(Value::Cat(s)) => key.push_str(s),
                Some(Value::Pixels(p)) => {
                    for x in p {
                        key.push_str(&x.to_bits().to_string());
                        key.push(',');
                    }
                }
            }
            key.push('\u{0}');
        }
        key.push_str(&targets[r]);
        if !seen.insert(key.clone()) {
            duplicates += 1;
        }
    }
    duplicates
}

/// The per-column summary of the kept rows: features in schema order, then the target.
fn summarize(
    schema: &Schema,
    rows: &[petrel_ml::FeatureRow],
    targets: &[String],
    kept: &[usize],
) -> Vec<ColumnSummary> {
    let n = kept.len() as u64;
    let mut out = Vec::with_capacity(schema.features.len() + 1);
    for (i, column) in schema.features.iter().enumerate() {
        let present: Vec<&Value> = kept.iter().filter_map(|&r| rows[r][i].as_ref()).collect();
        let mut summary = ColumnSummary {
            name: column.name.clone(),
            kind: column.kind.as_str().to_owned(),
            count: present.len() as u64,
            missing: n - present.len() as u64,
            missing_share: share(n - present.len() as u64, n),
            ..ColumnSummary::default()
        };
        match column.kind {
            ColumnKind::Numeric => {
                let mut xs: Vec<f64> = present
                    .iter()
                    .filter_map(|v| match v {
                        Value::Num(x) => Some(*x),
                        _ => None,
                    })
                    .collect();
                numeric_summary(&mut summary, &mut xs);
            }
            ColumnKind::Categorical => {
                categorical_summary(
                    &mut summary,
                    present.iter().filter_map(|v| match v {
                        Value::Cat(s) => Some(s.as_str()),
                        _ => None,
                    }),
                );
            }
            ColumnKind::Text | ColumnKind::Image => {}
        }
        out.push(summary);
    }
    let mut target = ColumnSummary {
        name: schema.target.clone(),
        kind: "target".to_owned(),
        count: n,
        ..ColumnSummary::default()
    };
    categorical_summary(&mut target, kept.iter().map(|&r| targets[r].as_str()));
    out.push(target);
    out
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn numeric_summary(summary: &mut ColumnSummary, xs: &mut [f64]) {
    if xs.is_empty() {
        return;
    }
    xs.sort_by(f64::total_cmp);
    summary.min = xs.first().copied();
    summary.max = xs.last().copied();
    summary.mean = Some(xs.iter().sum::<f64>() / xs.len() as f64);
    summary.quantiles = QUANTILES
        .iter()
        .map(|&(name, q)| (name.to_owned(), quantile(xs, q)))
        .collect();
}

/// The `q` quantile of sorted `xs`, interpolated linearly between the order statistics at
/// `(n - 1) q` (numpy's and pandas' default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

fn categorical_summary<'a>(summary: &mut ColumnSummary, values: impl Iterator<Item = &'a str>) {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for v in values {
        *counts.entry(v).or_default() += 1;
    }
    summary.distinct = Some(counts.len() as u64);
    let mut top: Vec<(&str, u64)> = counts.into_iter().collect();
    // Most frequent first; ties in value order, so reports are stable.
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    summary.top = top
        .into_iter()
        .take(TOP_CATEGORIES)
        .map(|(value, count)| CategoryCount {
            value: value.to_owned(),
            count,
        })
        .collect();
}

/// `bytes` without the records that start on `lines` (1-based file lines, as
/// [`petrel_ml::parse_csv`] counts them). Records are copied byte for byte, quoting and
/// line breaks inside fields included.
fn without_lines(bytes: &[u8], lines: &HashSet<u64>) -> Vec<u8> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut record = csv::ByteRecord::new();
    let mut out = Vec::with_capacity(bytes.len());
    // (start byte, line) of every record; the header is the first.
    let mut starts: Vec<(usize, u64)> = Vec::new();
    loop {
        let at = reader.position().clone();
        match reader.read_byte_record(&mut record) {
            Ok(true) => {
                let pos = record.position().unwrap_or(&at);
                starts.push((pos.byte() as usize, pos.line()));
            }
            // The rest is unreadable: keep it as it is, every reader rejects it the same way.
            Ok(false) | Err(_) => break,
        }
    }
    let mut copied = 0;
    for (k, &(start, line)) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(bytes.len(), |s| s.0);
        if lines.contains(&line) {
            out.extend_from_slice(&bytes[copied..start]);
            copied = end;
        }
    }
    out.extend_from_slice(&bytes[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use petrel_api::ingest::ColumnCheck;

    use super::*;

    const CSV: &str = "species,island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,sex,year\n\
Adelie,Torgersen,39.1,18.7,181,3750,male,2007\n\
Adelie,Torgersen,39.1,18.7,181,3750,male,2007\n\
Gentoo,Biscoe,999,13.2,211,4500,female,2007\n\
Chinstrap,Atlantis,46.5,17.9,192,3500,female,2007\n\
Gentoo,Biscoe,\"46.1\",13.2,211,NA,female,2008\n";

    fn checks() -> Checks {
        let mut columns = BTreeMap::new();
        columns.insert(
            "bill_length_mm".to_owned(),
            ColumnCheck {
                min: Some(25.0),
                max: Some(70.0),
                ..ColumnCheck::default()
            },
        );
        columns.insert(
            "island".to_owned(),
            ColumnCheck {
                categories: Some(vec!["Biscoe".into(), "Dream".into(), "Torgersen".into()]),
                ..ColumnCheck::default()
            },
        );
        Checks {
            columns,
            max_rejected_share: Some(0.5),
            max_duplicate_share: None,
        }
    }

    #[test]
    fn column_rules_reject_rows_by_line_and_the_accepted_file_leaves_them_out() {
        let v = validate(CSV.as_bytes(), &Schema::penguins(), &checks(), 0.1).unwrap();
        assert!(v.passed(), "{:?}", v.report.problems);
        let r = &v.report;
        assert_eq!((r.rows, r.accepted, r.rejected, r.duplicates), (5, 3, 2, 1));
        let lines: Vec<u64> = r.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![4, 5]);
        assert!(
            r.errors[0].message.contains("above the maximum 70"),
            "{:?}",
            r.errors
        );
        assert!(r.errors[1].message.contains("'Atlantis'"), "{:?}", r.errors);
        assert_eq!(r.rejected_by_column["bill_length_mm"], 1);
        assert_eq!(r.rejected_by_column["island"], 1);
        let accepted = String::from_utf8(v.accepted_csv.unwrap()).unwrap();
        let expected: Vec<&str> = CSV
            .lines()
            .enumerate()
            .filter(|(i, _)| ![3, 4].contains(i))
            .map(|(_, l)| l)
            .collect();
        assert_eq!(accepted, expected.join("\n") + "\n");
        // The accepted file passes the same rules untouched.
        let again = validate(accepted.as_bytes(), &Schema::penguins(), &checks(), 0.1).unwrap();
        assert_eq!(again.report.rejected, 0);
        assert!(again.accepted_csv.is_none());
    }

    #[test]
    fn the_summary_counts_missing_values_and_interpolates_quantiles_as_pandas_does() {
        let v = validate(CSV.as_bytes(), &Schema::penguins(), &Checks::default(), 0.1).unwrap();
        let mass = v
            .report
            .columns
            .iter()
            .find(|c| c.name == "body_mass_g")
            .unwrap();
        assert_eq!((mass.count, mass.missing), (4, 1));
        assert_eq!(mass.missing_share, 0.2);
        assert_eq!((mass.min, mass.max), (Some(3500.0), Some(4500.0)));
        assert_eq!(mass.mean, Some(3875.0));
        // pandas.Series([3750, 3750, 4500, 3500]).quantile([.05, .25, .5, .75, .95])
        let q = &mass.quantiles;
        assert_eq!(
            [q["p05"], q["p25"], q["p50"], q["p75"], q["p95"]],
            [3537.5, 3687.5, 3750.0, 3937.5, 4387.5]
        );
        let species = v.report.columns.last().unwrap();
        assert_eq!(species.kind, "target");
        assert_eq!(species.distinct, Some(3));
        assert_eq!(species.top[0].value, "Adelie");
        assert_eq!(species.top[0].count, 2);
    }

    #[test]
    fn file_rules_reject_the_file_and_say_how_to_fix_it() {
        let mut strict = checks();
        strict.max_rejected_share = Some(0.1);
        strict.max_duplicate_share = Some(0.0);
        strict.columns.insert(
            "body_mass_g".into(),
            ColumnCheck {
                max_missing_share: Some(0.1),
                ..ColumnCheck::default()
            },
        );
        let v = validate(CSV.as_bytes(), &Schema::penguins(), &strict, 0.1).unwrap();
        assert!(!v.passed());
        let all = v.report.problems.join("\n");
        assert!(all.contains("2 of 5 rows are invalid"), "{all}");
        assert!(all.contains("max_rejected_share"), "{all}");
        assert!(all.contains("of body_mass_g is missing"), "{all}");
        assert!(all.contains("repeat an earlier row"), "{all}");
        assert!(v.accepted_csv.is_none());

        let header_only = validate(b"species,island\n", &Schema::penguins(), &strict, 0.1).unwrap();
        assert!(header_only.report.problems[0].contains("lacks required column"));
        let empty = validate(
            CSV.lines().next().unwrap().as_bytes(),
            &Schema::penguins(),
            &Checks::default(),
            0.1,
        )
        .unwrap();
        assert!(
            empty.report.problems[0].contains("no data rows"),
            "{:?}",
            empty.report
        );
    }

    #[test]
    fn rules_that_cannot_apply_are_refused_by_name() {
        let schema = Schema::penguins();
        let rule = |column: &str, check: ColumnCheck| Checks {
            columns: [(column.to_owned(), check)].into(),
            ..Checks::default()
        };
        for (checks, words) in [
            (rule("beak", ColumnCheck::default()), "lacks"),
            (
                rule(
                    "island",
                    ColumnCheck {
                        min: Some(1.0),
                        ..ColumnCheck::default()
                    },
                ),
                "numeric columns only",
            ),
            (
                rule(
                    "year",
                    ColumnCheck {
                        min: Some(3.0),
                        max: Some(1.0),
                        ..ColumnCheck::default()
                    },
                ),
                "above its max",
            ),
            (
                rule(
                    "year",
                    ColumnCheck {
                        categories: Some(vec!["2007".into()]),
                        ..ColumnCheck::default()
                    },
                ),
                "categorical columns and the target only",
            ),
            (
                Checks {
                    max_duplicate_share: Some(1.5),
                    ..Checks::default()
                },
                "max_duplicate_share",
            ),
        ] {
            let err = check_rules(&checks, &schema).unwrap_err();
            assert!(err.contains(words), "{err}");
        }
        check_rules(&checks(), &schema).unwrap();
    }
}
