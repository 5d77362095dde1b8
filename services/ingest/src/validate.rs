//! Validation of one file: the schema (through [`petrel_ml::parse_csv`]), the request's
//! [`Checks`], and the report that says what was found and how to fix it.
//!
//! Everything here is synchronous CPU work over the whole file; callers run it on the blocking
//! pool.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hasher as _;
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use petrel_api::ingest::{CategoryCount, Checks, ColumnSummary, ValidationReport};
use petrel_ml::{ColumnKind, CsvRows, FeatureRow, MlError, RowError, RowRead, Schema, Value};

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

/// Why validation could not finish (a file that breaks the rules is a report, not this).
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// Parsing or writing the accepted rows failed.
    #[error(transparent)]
    Parse(#[from] MlError),
    /// The scratch space duplicates are counted on past memory cannot be used.
    #[error("cannot use the scratch space for counting duplicate rows: {0}")]
    Scratch(std::io::Error),
}

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
#[cfg(test)]
#[derive(Debug)]
pub struct Validated {
    pub report: ValidationReport,
    /// The file without the rows a column rule rejected, when it rejected any: what training
    /// must read (rows the schema rejects are left out by every reader anyway).
    pub accepted_csv: Option<Vec<u8>>,
}

#[cfg(test)]
impl Validated {
    pub fn passed(&self) -> bool {
        self.report.problems.is_empty()
    }
}

/// Numeric values kept per column for quantiles; past this the quantiles come from a uniform
/// sample of this many (every other statistic stays exact), so memory stays flat.
pub const QUANTILE_SAMPLE: usize = 100_000;
/// Distinct values counted per categorical column (an identifier column would otherwise hold
/// every value); past it `distinct` and `top` cover the first ones seen.
const MAX_DISTINCT: usize = 100_000;
/// Distinct rows remembered in memory (as 64-bit fingerprints) to count duplicates; past it
/// they are counted on scratch disk (see [`Duplicates`]).
const DUPLICATE_MEMORY: usize = 500_000;

/// SplitMix64's increment (2^64 over the golden ratio).
pub(crate) const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finaliser: a fixed, well-mixed function of `z`, for reproducible draws.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fast 64-bit hash for the profile's maps and row fingerprints: each 8-byte word (and the
/// length, so that no input is a padded prefix of another) goes through [`mix64`]. Not
/// resistant to chosen collisions, which the maps' size caps make harmless; SipHash, the
/// standard library's, cost a fifth of validation's time here.
#[derive(Clone, Copy, Debug, Default)]
struct Fold(u64);

impl std::hash::Hasher for Fold {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for word in &mut chunks {
            self.write_u64(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        self.write_u64(u64::from_le_bytes(tail) ^ ((bytes.len() as u64) << 56));
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = mix64(self.0.wrapping_add(GOLDEN_GAMMA) ^ word);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Fast = std::hash::BuildHasherDefault<Fold>;

/// Whether any rule rejects single rows (so that training needs a copy without them).
pub fn has_row_rules(checks: &Checks) -> bool {
    checks
        .columns
        .values()
        .any(|r| r.min.is_some() || r.max.is_some() || r.categories.is_some())
}

/// The parsing side of [`validate_reader`]: reads the rows, applies the row rules, writes the
/// accepted rows and sends them on in batches.
fn parse_rows<R: std::io::Read>(
    mut rows: CsvRows<R>,
    schema: &Schema,
    checks: &Checks,
    accepted: Option<&mut (dyn std::io::Write + Send)>,
    full: std::sync::mpsc::SyncSender<Batch>,
    recycled: std::sync::mpsc::Receiver<Batch>,
) -> Result<Parsed, MlError> {
    let mut writer = accepted.map(|w| csv::WriterBuilder::new().flexible(true).from_writer(w));
    let fail = |e: csv::Error| MlError::Csv(format!("cannot write the accepted rows: {e}"));
    if let Some(w) = writer.as_mut() {
        w.write_byte_record(rows.header()).map_err(fail)?;
    }
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
    let mut out = Parsed::default();
    let mut batch = Batch::default();
    let mut row_errors = Vec::new();
    // One row's buffers, reused for every row: parsing allocates nothing per row.
    let mut row = FeatureRow::new();
    let mut target = String::new();
    while let Some(next) = rows.read_row(&mut row, &mut target) {
        row_errors.clear();
        let accepted_row = match next {
            RowRead::Rejected(e) => {
                row_errors = e;
                None
            }
            RowRead::Accepted { line } => {
                for &(i, name, rule) in &rules {
                    let problem = match &row[i] {
                        Some(Value::Num(v)) => match (rule.min, rule.max) {
                            (Some(lo), _) if *v < lo => {
                                Some(format!("{v} is below the minimum {lo}"))
                            }
                            (_, Some(hi)) if *v > hi => {
                                Some(format!("{v} is above the maximum {hi}"))
                            }
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
                        row_errors.push(RowError {
                            line,
                            column: Some(name.to_owned()),
                            message,
                        });
                    }
                }
                if let Some(allowed) = target_rule
                    && !allowed.contains(&target)
                {
                    row_errors.push(RowError {
                        line,
                        column: Some(schema.target.clone()),
                        message: not_one_of(&target, allowed),
                    });
                }
                out.dropped_by_rules |= !row_errors.is_empty();
                row_errors.is_empty().then(|| batch.push(&row, &target))
            }
        };
        match accepted_row {
            Some(()) => {
                if let Some(w) = writer.as_mut() {
                    w.write_byte_record(rows.record()).map_err(fail)?;
                }
                if batch.len() == BATCH {
                    let next = recycled.try_recv().unwrap_or_default();
                    if full.send(std::mem::replace(&mut batch, next)).is_err() {
                        break;
                    }
                }
            }
            None => {
                out.rejected += 1;
                let mut columns = BTreeSet::new();
                for e in &row_errors {
                    columns.insert(e.column.clone().unwrap_or_else(|| WHOLE_ROW.to_owned()));
                }
                for column in columns {
                    *out.rejected_by_column.entry(column).or_default() += 1;
                }
                let room = MAX_REPORTED_ERRORS.saturating_sub(out.errors.len());
                out.errors.extend(row_errors.drain(..).take(room));
            }
        }
    }
    if batch.len() > 0 {
        // The profiler only stops when this side hangs up, so it takes this batch.
        let _ = full.send(batch);
    }
    if let Some(mut w) = writer {
        w.flush()
            .map_err(|e| MlError::Csv(format!("cannot write the accepted rows: {e}")))?;
    }
    Ok(out)
}

/// The report of a file that cannot be read at all.
pub fn unreadable(why: &str) -> ValidationReport {
    ValidationReport {
        problems: vec![format!(
            "{why}; send a CSV or Parquet file with a header (or columns) naming the schema's \
             columns"
        )],
        ..ValidationReport::default()
    }
}

/// Validates `bytes` against `schema` and `checks`. Only a failure of the machinery is an
/// `Err`; a file that cannot be read as the schema says is a report with a problem.
#[cfg(test)]
pub fn validate(
    bytes: &[u8],
    schema: &Schema,
    checks: &Checks,
    default_max_rejected: f64,
) -> Result<Validated, ValidateError> {
    let mut accepted = Vec::new();
    let out = has_row_rules(checks).then_some(&mut accepted as &mut (dyn std::io::Write + Send));
    let scratch = std::env::temp_dir();
    let (report, dropped) =
        validate_reader(bytes, schema, checks, default_max_rejected, out, &scratch)?;
    let keep = dropped && report.problems.is_empty();
    Ok(Validated {
        report,
        accepted_csv: keep.then_some(accepted),
    })
}

/// Accepted rows handed from the parsing thread to the profiling one at a time.
const BATCH: usize = 4096;

/// Accepted rows in flat form: each row's values encoded one after another (see
/// [`Batch::push`]), so that rows cross from the parsing thread to the profiling one in
/// reused buffers, without an allocation per row (freeing on another thread than the one that
/// allocated is slow in the system allocator).
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

const MISSING: u8 = 0;
const NUM: u8 = 1;
const CAT: u8 = 2;
const PIXELS: u8 = 3;

impl Batch {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// Encodes a row: per feature a tag, then a number's 8 bytes, a text's length (4 bytes)
    /// and bytes, or an image's pixel count and pixels; then the target's length and bytes.
    /// The encoding is one-to-one, so equal rows are equal bytes.
    fn push(&mut self, row: &FeatureRow, target: &str) {
        let b = &mut self.bytes;
        for value in row {
            match value {
                None => b.push(MISSING),
                Some(Value::Num(x)) => {
                    b.push(NUM);
                    b.extend_from_slice(&x.to_le_bytes());
                }
                Some(Value::Cat(s)) => {
                    b.push(CAT);
                    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    b.extend_from_slice(s.as_bytes());
                }
                Some(Value::Pixels(p)) => {
                    b.push(PIXELS);
                    b.extend_from_slice(&(p.len() as u32).to_le_bytes());
                    for x in p {
                        b.extend_from_slice(&x.to_le_bytes());
                    }
                }
            }
        }
        b.extend_from_slice(&(target.len() as u32).to_le_bytes());
        b.extend_from_slice(target.as_bytes());
        self.ends.push(b.len());
    }

    /// The encoded rows.
    fn rows(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.bytes[a..b])
    }
}

/// Reads a 4-byte length and the bytes after it.
fn take_counted(row: &[u8], at: &mut usize, width: usize) -> std::ops::Range<usize> {
    let n = u32::from_le_bytes(row[*at..*at + 4].try_into().expect("4 bytes")) as usize;
    let start = *at + 4;
    *at = start + n * width;
    start..*at
}

/// What the parsing thread found besides the accepted rows.
#[derive(Default)]
struct Parsed {
    rejected: u64,
    rejected_by_column: BTreeMap<String, u64>,
    errors: Vec<RowError>,
    dropped_by_rules: bool,
}

/// Validates a file read from `reader`, one row at a time, with memory bounded whatever its
/// size. When `accepted` is given, the header and every accepted row are written to it (the
/// copy training reads when a row rule rejected rows). Returns the report and whether a row
/// rule rejected any row.
///
/// Two threads share the work: this one profiles the accepted rows (statistics, categories,
/// duplicates) while a second reads and parses the file, applies the row rules and writes the
/// accepted rows, handing them over in batches through a bounded queue.
pub fn validate_reader(
    reader: impl std::io::Read + Send,
    schema: &Schema,
    checks: &Checks,
    default_max_rejected: f64,
    accepted: Option<&mut (dyn std::io::Write + Send)>,
    scratch: &Path,
) -> Result<(ValidationReport, bool), ValidateError> {
    let rows = match CsvRows::new(reader, schema) {
        Ok(rows) => rows,
        Err(e @ (MlError::Schema(_) | MlError::Csv(_))) => {
            return Ok((unreadable(&e.to_string()), false));
        }
        Err(e) => return Err(e.into()),
    };
    let mut profile = Profile::new(schema, scratch);
    let (full, batches) = std::sync::mpsc::sync_channel::<Batch>(4);
    let (empty, recycled) = std::sync::mpsc::channel::<Batch>();
    let (parsed, profiled) = std::thread::scope(|scope| {
        let parser =
            scope.spawn(move || parse_rows(rows, schema, checks, accepted, full, recycled));
        let mut profiled = Ok(());
        'batches: for mut batch in batches {
            for row in batch.rows() {
                profiled = profile.observe(row);
                if profiled.is_err() {
                    // Hanging up stops the parser.
                    break 'batches;
                }
            }
            batch.clear();
            // The parser may have finished; a batch it will not reuse is dropped.
            let _ = empty.send(batch);
        }
        (
            parser.join().expect("the parsing thread does not panic"),
            profiled,
        )
    });
    profiled.map_err(ValidateError::Scratch)?;
    let parsed = parsed?;
    let Parsed {
        rejected,
        rejected_by_column,
        errors,
        dropped_by_rules,
    } = parsed;

    let accepted = profile.rows;
    let rows = accepted + rejected;
    let (columns, duplicates) = profile.finish(schema);
    let duplicates = duplicates.count().map_err(ValidateError::Scratch)?;
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
            let dup_share = duplicates as f64 / accepted as f64;
            if dup_share > limit {
                problems.push(format!(
                    "{duplicates} of {accepted} rows repeat an earlier row ({}%), more than the \
                     allowed {}%; remove the duplicates or raise checks.max_duplicate_share",
                    percent(dup_share),
                    percent(limit)
                ));
            }
        }
    }
    Ok((
        ValidationReport {
            rows,
            accepted,
            rejected,
            duplicates,
            problems,
            rejected_by_column,
            errors,
            columns,
        },
        dropped_by_rules,
    ))
}

/// Running statistics of the accepted rows, in memory bounded whatever the file's size.
struct Profile {
    rows: u64,
    columns: Vec<ColumnStats>,
    target: Categories,
    duplicates: Duplicates,
}

enum ColumnStats {
    Numeric(Numbers),
    Categorical { present: u64, values: Categories },
    Other { present: u64 },
}

#[derive(Default)]
struct Numbers {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    /// Every value up to [`QUANTILE_SAMPLE`], then a uniform reservoir of that many.
    sample: Vec<f64>,
    /// The reservoir's own generator (SplitMix64 from a fixed seed: reports are reproducible).
    state: u64,
}

/// Duplicate rows, counted exactly with bounded memory. Row fingerprints are remembered in a
/// set up to [`DUPLICATE_MEMORY`]; past it, every fingerprint (those remembered, then each new
/// one) goes to one of [`PARTITIONS`] scratch files by its top bits, and at the end each file
/// is sorted and its repeats counted: 8 bytes of scratch disk per row, and memory for one
/// file's share at a time (8 bytes per row over [`PARTITIONS`]).
struct Duplicates {
    seen: HashSet<u64, Fast>,
    /// Repeats found in `seen` before it was spilled.
    counted: u64,
    scratch: PathBuf,
    spilled: Vec<std::io::BufWriter<std::fs::File>>,
}

/// Scratch files fingerprints are spread over once they no longer fit in memory.
const PARTITIONS: usize = 256;

impl Duplicates {
    fn new(scratch: &Path) -> Self {
        Duplicates {
            seen: HashSet::default(),
            counted: 0,
            scratch: scratch.to_owned(),
            spilled: Vec::new(),
        }
    }

    fn observe(&mut self, fingerprint: u64) -> std::io::Result<()> {
        if !self.spilled.is_empty() {
            return self.spilled[partition(fingerprint)].write_all(&fingerprint.to_le_bytes());
        }
        if !self.seen.insert(fingerprint) {
            self.counted += 1;
        } else if self.seen.len() > DUPLICATE_MEMORY {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> std::io::Result<()> {
        for _ in 0..PARTITIONS {
            let file = tempfile::tempfile_in(&self.scratch)?;
            self.spilled
                .push(std::io::BufWriter::with_capacity(8 << 10, file));
        }
        for fingerprint in std::mem::take(&mut self.seen) {
            self.spilled[partition(fingerprint)].write_all(&fingerprint.to_le_bytes())?;
        }
        Ok(())
    }

    /// The number of rows equal to an earlier row.
    fn count(self) -> std::io::Result<u64> {
        let Duplicates {
            counted, spilled, ..
        } = self;
        let mut files = spilled
            .into_iter()
            .map(|w| w.into_inner().map_err(|e| e.into_error()))
            .collect::<std::io::Result<Vec<_>>>()?;
        // Two threads, each counting half of the files.
        let half = files.split_off(files.len() / 2);
        let repeats = |files: Vec<std::fs::File>| -> std::io::Result<u64> {
            let mut total = 0;
            let mut bytes = Vec::new();
            let mut prints = Vec::new();
            for mut file in files {
                file.seek(std::io::SeekFrom::Start(0))?;
                bytes.clear();
                file.read_to_end(&mut bytes)?;
                prints.clear();
                prints.extend(
                    bytes
                        .chunks_exact(8)
                        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))),
                );
                prints.sort_unstable();
                total += prints.windows(2).filter(|w| w[0] == w[1]).count() as u64;
            }
            Ok(total)
        };
        let (a, b) = std::thread::scope(|scope| {
            let other = scope.spawn(|| repeats(half));
            (
                repeats(files),
                other.join().expect("counting does not panic"),
            )
        });
        Ok(counted + a? + b?)
    }
}

/// The scratch file of a fingerprint (they are well mixed, so the top bits spread evenly).
fn partition(fingerprint: u64) -> usize {
    (fingerprint >> 56) as usize % PARTITIONS
}

/// A column's values with their counts, up to [`MAX_DISTINCT`] distinct ones.
#[derive(Default)]
struct Categories {
    /// The first [`FEW`] distinct values, searched in order: most columns hold a handful of
    /// categories, and comparing a few short values costs less than hashing one.
    few: Vec<(Box<[u8]>, u64)>,
    /// The rest.
    many: HashMap<Box<[u8]>, u64, Fast>,
}

const FEW: usize = 8;

impl Categories {
    fn observe(&mut self, value: &[u8]) {
        if let Some((_, n)) = self.few.iter_mut().find(|(v, _)| **v == *value) {
            *n += 1;
        } else if self.few.len() < FEW {
            self.few.push((value.into(), 1));
        } else if let Some(n) = self.many.get_mut(value) {
            *n += 1;
        } else if FEW + self.many.len() < MAX_DISTINCT {
            self.many.insert(value.into(), 1);
        }
    }

    fn fill(self, summary: &mut ColumnSummary) {
        summary.distinct = Some((self.few.len() + self.many.len()) as u64);
        // The values came from text, so they are UTF-8.
        let mut top: Vec<(String, u64)> = self
            .few
            .into_iter()
            .chain(self.many)
            .map(|(v, n)| (String::from_utf8_lossy(&v).into_owned(), n))
            .collect();
        // Most frequent first; ties in value order, so reports are stable.
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        summary.top = top
            .into_iter()
            .take(TOP_CATEGORIES)
            .map(|(value, count)| CategoryCount { value, count })
            .collect();
    }
}

impl Numbers {
    fn observe(&mut self, x: f64) {
        if self.count == 0 {
            (self.min, self.max) = (x, x);
        }
        self.count += 1;
        self.sum += x;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        if self.sample.len() < QUANTILE_SAMPLE {
            self.sample.push(x);
        } else {
            // Algorithm R: the n-th value replaces a random slot with probability k/n.
            self.state = self.state.wrapping_add(GOLDEN_GAMMA);
            let z = mix64(self.state);
            let slot = ((u128::from(z) * u128::from(self.count)) >> 64) as usize;
            if slot < QUANTILE_SAMPLE {
                self.sample[slot] = x;
            }
        }
    }

    fn fill(mut self, summary: &mut ColumnSummary) {
        if self.count == 0 {
            return;
        }
        self.sample.sort_by(f64::total_cmp);
        summary.min = Some(self.min);
        summary.max = Some(self.max);
        summary.mean = Some(self.sum / self.count as f64);
        summary.quantiles = QUANTILES
            .iter()
            .map(|&(name, q)| (name.to_owned(), quantile(&self.sample, q)))
            .collect();
        if self.count > QUANTILE_SAMPLE as u64 {
            summary.quantile_sample = Some(QUANTILE_SAMPLE as u64);
        }
    }
}

impl Profile {
    fn new(schema: &Schema, scratch: &Path) -> Self {
        let columns = schema
            .features
            .iter()
            .map(|c| match c.kind {
                ColumnKind::Numeric => ColumnStats::Numeric(Numbers::default()),
                ColumnKind::Categorical => ColumnStats::Categorical {
                    present: 0,
                    values: Categories::default(),
                },
                ColumnKind::Text | ColumnKind::Image => ColumnStats::Other { present: 0 },
            })
            .collect();
        Profile {
            rows: 0,
            columns,
            target: Categories::default(),
            duplicates: Duplicates::new(scratch),
        }
    }

    /// Observes one row encoded by [`Batch::push`].
    fn observe(&mut self, row: &[u8]) -> std::io::Result<()> {
        self.rows += 1;
        let mut at = 0;
        for stats in &mut self.columns {
            let tag = row[at];
            at += 1;
            match tag {
                NUM => {
                    let x = f64::from_le_bytes(row[at..at + 8].try_into().expect("8 bytes"));
                    at += 8;
                    if let ColumnStats::Numeric(n) = stats {
                        n.observe(x);
                    }
                }
                CAT => {
                    let text = take_counted(row, &mut at, 1);
                    match stats {
                        ColumnStats::Categorical { present, values } => {
                            *present += 1;
                            values.observe(&row[text]);
                        }
                        ColumnStats::Other { present } => *present += 1,
                        ColumnStats::Numeric(_) => {}
                    }
                }
                PIXELS => {
                    take_counted(row, &mut at, 4);
                    if let ColumnStats::Other { present } = stats {
                        *present += 1;
                    }
                }
                _ => {}
            }
        }
        let target = take_counted(row, &mut at, 1);
        self.target.observe(&row[target]);
        // The encoding is one-to-one: equal rows, equal bytes, equal fingerprints.
        let mut key = Fold::default();
        key.write(row);
        self.duplicates.observe(key.finish())
    }

    /// The per-column summary (features in schema order, then the target), and the
    /// duplicates left to count.
    fn finish(self, schema: &Schema) -> (Vec<ColumnSummary>, Duplicates) {
        let n = self.rows;
        let mut out = Vec::with_capacity(schema.features.len() + 1);
        for (column, stats) in schema.features.iter().zip(self.columns) {
            let mut summary = ColumnSummary {
                name: column.name.clone(),
                kind: column.kind.as_str().to_owned(),
                ..ColumnSummary::default()
            };
            let present = match stats {
                ColumnStats::Numeric(numbers) => {
                    let count = numbers.count;
                    numbers.fill(&mut summary);
                    count
                }
                ColumnStats::Categorical { present, values } => {
                    values.fill(&mut summary);
                    present
                }
                ColumnStats::Other { present } => present,
            };
            summary.count = present;
            summary.missing = n - present;
            summary.missing_share = share(n - present, n);
            out.push(summary);
        }
        let mut target = ColumnSummary {
            name: schema.target.clone(),
            kind: "target".to_owned(),
            count: n,
            ..ColumnSummary::default()
        };
        self.target.fill(&mut target);
        out.push(target);
        (out, self.duplicates)
    }
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

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The `q` quantile of sorted `xs`, interpolated linearly between the order statistics at
/// `(n - 1) q` (numpy's and pandas' default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

#[cfg(test)]
mod tests {
    use petrel_api::ingest::ColumnCheck;

    use super::*;

    #[test]
    fn duplicates_are_exact_in_memory_and_past_it_on_scratch_disk() {
        let scratch = tempfile::tempdir().unwrap();
        let mut small = Duplicates::new(scratch.path());
        for i in 0..1000u64 {
            small.observe(mix64(i % 700)).unwrap();
        }
        assert!(small.spilled.is_empty());
        assert_eq!(small.count().unwrap(), 300);

        // Three times more distinct rows than are remembered, a tenth of them seen twice
        // and one (as a generator's all-missing row does) 100,000 times, before and after
        // the memory fills.
        let distinct = 3 * DUPLICATE_MEMORY as u64;
        let mut large = Duplicates::new(scratch.path());
        for i in 0..distinct {
            large.observe(mix64(i)).unwrap();
            if i % 10 == 0 {
                large.observe(mix64(i)).unwrap();
            }
            if i % 15 == 0 {
                large.observe(mix64(u64::MAX)).unwrap();
            }
        }
        assert_eq!(large.spilled.len(), PARTITIONS);
        let heavy = distinct / 15 - 1;
        assert_eq!(large.count().unwrap(), distinct / 10 + heavy);
        // The scratch files are unnamed: nothing is left behind.
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
    }

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
        // The accepted rows, written back as CSV (quotes only where a value needs them).
        assert_eq!(
            accepted,
            (expected.join("\n") + "\n").replace("\"46.1\"", "46.1")
        );
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
    fn past_the_sample_size_quantiles_come_from_a_uniform_sample_and_the_rest_stays_exact() {
        let n = QUANTILE_SAMPLE as u64 * 3;
        let mut numbers = Numbers::default();
        // A shuffled 0..n (a multiplicative permutation), so order says nothing.
        for i in 0..n {
            numbers.observe(((i * 7_919) % n) as f64);
        }
        let mut summary = ColumnSummary::default();
        numbers.fill(&mut summary);
        assert_eq!(summary.quantile_sample, Some(QUANTILE_SAMPLE as u64));
        assert_eq!(
            (summary.min, summary.max),
            (Some(0.0), Some((n - 1) as f64))
        );
        assert_eq!(summary.mean, Some((n - 1) as f64 / 2.0));
        for (name, q) in QUANTILES {
            let exact = q * (n - 1) as f64;
            let got = summary.quantiles[name];
            // A uniform sample of 500,000 puts a quantile within about 0.1% of the range.
            assert!(
                (got - exact).abs() < 0.003 * n as f64,
                "{name}: {got} vs {exact}"
            );
        }
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
