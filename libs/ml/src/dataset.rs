//! Parsing and validating raw rows (CSV files and JSON objects) against a [`Schema`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ColumnKind, MlError, Schema};

/// One feature value, already typed by its column's [`ColumnKind`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// A finite number, for a numeric column.
    Num(f64),
    /// A category label, for a categorical column (or a text, for a text column).
    Cat(String),
    /// An image's pixel values, row-major, in its column's units (see [`crate::image`]).
    Pixels(Vec<f32>),
}

/// One row of features in schema order; None = missing.
pub type FeatureRow = Vec<Option<Value>>;

/// Validated rows with their labels, ready for training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// The schema every row follows.
    pub schema: Schema,
    /// Feature rows in schema order.
    pub rows: Vec<FeatureRow>,
    /// The target label of each row, parallel to `rows`.
    pub targets: Vec<String>,
}

impl Table {
    /// The number of rows, for callers that report sizes.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table holds no row at all.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// How many rows carry each label, in label order; ingest shows this as a class summary.
    pub fn class_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for target in &self.targets {
            *counts.entry(target.clone()).or_insert(0) += 1;
        }
        counts
    }
}

/// A problem with one row of a file; the row is left out of the table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RowError {
    /// 1-based line number in the file, header is line 1.
    pub line: u64,
    /// The column at fault, when the problem is one value rather than the whole row.
    pub column: Option<String>,
    /// What is wrong, written for the person who uploaded the file.
    pub message: String,
}

/// The outcome of [`parse_csv`]: the good rows and a report of every rejected one.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseReport {
    /// The rows that passed validation.
    pub table: Table,
    /// One entry per problem found; a row may contribute several.
    pub errors: Vec<RowError>,
    /// The file line each row of `table` starts on (1-based, the header is line 1), so later
    /// checks can name the line of an accepted row.
    pub lines: Vec<u64>,
}

impl ParseReport {
    /// The number of distinct lines rejected, since one line can yield several errors.
    pub fn rejected_lines(&self) -> usize {
        let mut lines: Vec<u64> = self.errors.iter().map(|e| e.line).collect();
        lines.dedup();
        lines.len()
    }
}

/// Whether a raw token stands for a missing value; shared by CSV and JSON parsing and by
/// `petrel drift`, so all of them agree on what "missing" means.
pub fn is_missing_token(token: &str) -> bool {
    is_missing_trimmed(token.trim())
}

/// [`is_missing_token`] of a token already trimmed.
fn is_missing_trimmed(t: &str) -> bool {
    // Every missing spelling is at most four letters.
    if t.len() > 4 {
        return false;
    }
    t.is_empty()
        || t.eq_ignore_ascii_case("na")
        || t.eq_ignore_ascii_case("nan")
        || t.eq_ignore_ascii_case("null")
}

/// Parses a numeric token, refusing infinities and NaN spelled out as numbers because they would
/// poison the preprocessing statistics.
fn parse_number(token: &str) -> Result<f64, String> {
    let t = token.trim();
    match t.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(format!("'{t}' is not a finite number")),
        Err(_) => Err(format!("'{t}' is not a number")),
    }
}

/// Parses CSV bytes with a header row. Missing-value tokens: empty, "NA", "NaN", "null"
/// (case-insensitive). Numeric columns must parse as finite f64; a row with a bad value, a
/// missing target, or a wrong field count is reported in `errors` and left out of `table` (never
/// silently dropped). A header lacking a schema column is an Err (MlError::Schema); extra columns
/// are ignored. Fails with MlError if the file is not CSV at all.
///
/// Values are trimmed of surrounding whitespace, and a UTF-8 byte-order mark is skipped, because
/// spreadsheet exports add both and users cannot see them.
pub fn parse_csv(bytes: &[u8], schema: &Schema) -> Result<ParseReport, MlError> {
    schema.validate()?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(MlError::Csv(
            "the file is empty; a header row is required".into(),
        ));
    }
    if bytes.contains(&0) {
        return Err(MlError::Csv(
            "the file contains NUL bytes; it looks binary, not CSV text".into(),
        ));
    }

    let mut rows = CsvRows::new(bytes, schema)?;
    let mut table = Table {
        schema: schema.clone(),
        rows: Vec::new(),
        targets: Vec::new(),
    };
    let mut errors = Vec::new();
    let mut lines = Vec::new();
    while let Some(row) = rows.next_row() {
        match row {
            CsvRow::Accepted { line, row, target } => {
                table.rows.push(row);
                table.targets.push(target);
                lines.push(line);
            }
            CsvRow::Rejected(row_errors) => errors.extend(row_errors),
        }
    }
    Ok(ParseReport {
        table,
        errors,
        lines,
    })
}

/// One data row of a CSV file, as [`CsvRows`] reads it.
#[derive(Clone, Debug, PartialEq)]
pub enum CsvRow {
    /// A whole row: its first line, features in schema order and label.
    Accepted {
        line: u64,
        row: FeatureRow,
        target: String,
    },
    /// A row left out, with every problem found in it (or, last, the reason the rest of the
    /// file cannot be read).
    Rejected(Vec<RowError>),
}

/// Reads a CSV file row by row against a schema, holding one row at a time: what
/// [`parse_csv`] does, for files too large to hold (ingest validates a gigabyte this way with
/// flat memory). The rules are [`parse_csv`]'s.
pub struct CsvRows<R: std::io::Read> {
    reader: csv::Reader<R>,
    schema: Schema,
    header: csv::ByteRecord,
    feature_positions: Vec<usize>,
    target_position: usize,
    record: csv::ByteRecord,
    done: bool,
}

impl<R: std::io::Read> std::fmt::Debug for CsvRows<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsvRows")
            .field("schema", &self.schema)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<R: std::io::Read> CsvRows<R> {
    /// Reads the header and finds the schema's columns in it: a header lacking one is an
    /// [`MlError::Schema`], a file with no header an [`MlError::Csv`].
    pub fn new(reader: R, schema: &Schema) -> Result<Self, MlError> {
        schema.validate()?;
        // Flexible, so that a short or long row becomes a per-row error instead of aborting
        // the whole file.
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_reader(reader);
        let raw = reader
            .byte_headers()
            .map_err(|e| MlError::Csv(format!("cannot read the header row: {e}")))?
            .clone();
        if raw.as_slice().contains(&0) {
            return Err(MlError::Csv(
                "the file contains NUL bytes; it looks binary, not CSV text".into(),
            ));
        }
        let header: Vec<String> = raw
            .iter()
            .enumerate()
            .map(|(i, field)| {
                let field = if i == 0 {
                    field.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(field)
                } else {
                    field
                };
                std::str::from_utf8(field)
                    .map(|s| s.trim().to_string())
                    .map_err(|_| MlError::Csv("the header row is not valid UTF-8 text".into()))
            })
            .collect::<Result<_, _>>()?;
        if header.iter().all(|h| h.is_empty()) {
            return Err(MlError::Csv(
                "the file is empty; a header row is required".into(),
            ));
        }

        let position = |name: &str| -> Result<Option<usize>, MlError> {
            let mut hits = header.iter().enumerate().filter(|(_, h)| *h == name);
            let first = hits.next().map(|(i, _)| i);
            if hits.next().is_some() {
                return Err(MlError::Schema(format!(
                    "column '{name}' appears more than once in the header"
                )));
            }
            Ok(first)
        };
        let mut missing = Vec::new();
        let mut feature_positions = Vec::with_capacity(schema.features.len());
        for column in &schema.features {
            match position(&column.name)? {
                Some(i) => feature_positions.push(i),
                None => missing.push(column.name.clone()),
            }
        }
        let target_position = position(&schema.target)?;
        if target_position.is_none() {
            missing.push(schema.target.clone());
        }
        let Some(target_position) = target_position.filter(|_| missing.is_empty()) else {
            return Err(MlError::Schema(format!(
                "the header lacks required column(s): {}",
                missing.join(", ")
            )));
        };
        Ok(CsvRows {
            reader,
            schema: schema.clone(),
            header: raw,
            feature_positions,
            target_position,
            record: csv::ByteRecord::new(),
            done: false,
        })
    }

    /// The header row as read.
    pub fn header(&self) -> &csv::ByteRecord {
        &self.header
    }

    /// The raw record of the row [`CsvRows::next_row`] returned last.
    pub fn record(&self) -> &csv::ByteRecord {
        &self.record
    }

    /// The next row, or None at the end of the file (or after an unreadable stretch, which
    /// comes as a last [`CsvRow::Rejected`]).
    pub fn next_row(&mut self) -> Option<CsvRow> {
        let mut row = Vec::new();
        let mut target = String::new();
        self.read_row(&mut row, &mut target).map(|read| match read {
            RowRead::Accepted { line } => CsvRow::Accepted { line, row, target },
            RowRead::Rejected(errors) => CsvRow::Rejected(errors),
        })
    }

    /// [`CsvRows::next_row`] into buffers the caller keeps: an accepted row's features land in
    /// `row` and its label in `target`, reusing their allocations (a categorical value is
    /// copied into the `String` already in its slot), so that reading a file row after row
    /// allocates nothing per row. After a rejection their contents are unspecified.
    pub fn read_row(&mut self, row: &mut FeatureRow, target: &mut String) -> Option<RowRead> {
        if self.done {
            return None;
        }
        let line_before = self.reader.position().line();
        match self.reader.read_byte_record(&mut self.record) {
            Ok(false) => {
                self.done = true;
                return None;
            }
            Ok(true) => {}
            Err(e) => {
                // With flexible records the reader has no recoverable errors left; report the
                // line and stop rather than guess where the next row starts.
                self.done = true;
                let line = e.position().map(|p| p.line()).unwrap_or(line_before);
                return Some(RowRead::Rejected(vec![RowError {
                    line,
                    column: None,
                    message: format!("unreadable CSV from here on: {e}"),
                }]));
            }
        }
        let line = self
            .record
            .position()
            .map(|p| p.line())
            .unwrap_or(line_before);
        if self.record.as_slice().contains(&0) {
            self.done = true;
            return Some(RowRead::Rejected(vec![RowError {
                line,
                column: None,
                message: "binary data (NUL bytes) from here on; the file is not CSV text".into(),
            }]));
        }
        let mut errors = Vec::new();
        let fields = Fields {
            record: &self.record,
            line,
        };
        let whole = parse_record(
            &fields,
            &self.schema,
            self.header.len(),
            &self.feature_positions,
            self.target_position,
            &mut errors,
            row,
            target,
        );
        Some(if whole && errors.is_empty() {
            RowRead::Accepted { line }
        } else {
            RowRead::Rejected(errors)
        })
    }
}

/// What [`CsvRows::read_row`] found in one data row.
#[derive(Clone, Debug, PartialEq)]
pub enum RowRead {
    /// A whole row, starting on this line; its values are in the caller's buffers.
    Accepted { line: u64 },
    /// A row left out, as in [`CsvRow::Rejected`].
    Rejected(Vec<RowError>),
}

/// One record's fields as text.
struct Fields<'a> {
    record: &'a csv::ByteRecord,
    line: u64,
}

impl Fields<'_> {
    /// The field at `position`, trimmed, or None after reporting it is not text.
    fn text(&self, position: usize, column: &str, errors: &mut Vec<RowError>) -> Option<&str> {
        // ASCII spaces go first, cheaply; other Unicode white space only where it is there.
        let raw = self.record.get(position)?.trim_ascii();
        match std::str::from_utf8(raw) {
            Ok(s)
                if raw.first().is_some_and(|b| !b.is_ascii())
                    || raw.last().is_some_and(|b| !b.is_ascii()) =>
            {
                Some(s.trim())
            }
            Ok(s) => Some(s),
            Err(_) => {
                errors.push(RowError {
                    line: self.line,
                    column: Some(column.to_string()),
                    message: "the value is not valid UTF-8 text".to_string(),
                });
                None
            }
        }
    }
}

/// Puts a categorical value in `slot`, reusing the text already there.
fn set_text(slot: &mut Option<Value>, token: &str) {
    match slot {
        Some(Value::Cat(text)) => {
            text.clear();
            text.push_str(token);
        }
        _ => *slot = Some(Value::Cat(token.to_owned())),
    }
}

/// Validates one CSV record into `row` and `target`; pushes every problem found and returns
/// whether the row is whole.
#[allow(clippy::too_many_arguments)]
fn parse_record(
    fields: &Fields<'_>,
    schema: &Schema,
    header_len: usize,
    feature_positions: &[usize],
    target_position: usize,
    errors: &mut Vec<RowError>,
    row: &mut FeatureRow,
    target: &mut String,
) -> bool {
    let line = fields.line;
    let record = fields.record;
    if record.len() != header_len {
        errors.push(RowError {
            line,
            column: None,
            message: format!(
                "expected {header_len} fields as in the header, found {}",
                record.len()
            ),
        });
        return false;
    }
    let mut whole = match fields.text(target_position, &schema.target, errors) {
        Some(t) if !is_missing_trimmed(t) => {
            target.clear();
            target.push_str(t);
            true
        }
        Some(_) => {
            errors.push(RowError {
                line,
                column: Some(schema.target.clone()),
                message: "the target value is missing".to_string(),
            });
            false
        }
        None => false,
    };

    row.resize(schema.features.len(), None);
    for ((column, &position), slot) in schema.features.iter().zip(feature_positions).zip(row) {
        let Some(token) = fields.text(position, &column.name, errors) else {
            *slot = None;
            whole = false;
            continue;
        };
        if is_missing_trimmed(token) {
            *slot = None;
            continue;
        }
        let parsed = match column.kind {
            ColumnKind::Numeric => parse_number(token).map(Value::Num),
            ColumnKind::Categorical | ColumnKind::Text => {
                set_text(slot, token);
                continue;
            }
            ColumnKind::Image => column
                .image
                .as_ref()
                .ok_or_else(|| "the column declares no image shape".to_string())
                .and_then(|spec| crate::image::parse_image_text(token, spec))
                .map(Value::Pixels),
        };
        match parsed {
            Ok(value) => *slot = Some(value),
            Err(message) => {
                errors.push(RowError {
                    line,
                    column: Some(column.name.clone()),
                    message,
                });
                *slot = None;
                whole = false;
            }
        }
    }
    whole
}

/// Converts one JSON object (column name -> number | string | null) into a FeatureRow for
/// `schema`. Absent or null -> None (imputed later). A string for a numeric column that parses as
/// a number is accepted; otherwise a wrong type is an error naming the column. Unknown columns are
/// an error naming them (so typos are caught), except the target column, which is ignored.
///
/// Strings that CSV treats as missing ("NA", "", ...) are missing here too, so a row copied out
/// of a data file means the same thing in both places. A number given for a categorical column is
/// taken as its decimal text, as it would be read from CSV: a whole number is written without a
/// fraction (`1.0` -> "1", as a CSV cell "1" reads), other numbers as JSON writes them.
///
/// A NUL character (`\u0000`) anywhere in the object, in a feature's value or in the ignored
/// target's, is an error naming the column: callers store request rows as they came (Postgres
/// `jsonb` cannot hold a NUL), and nobody means to send one.
pub fn row_from_json(
    obj: &serde_json::Map<String, serde_json::Value>,
    schema: &Schema,
) -> Result<FeatureRow, MlError> {
    // Unknown names are checked first, so a typo is reported even when other values are bad too.
    if let Some(unknown) = obj
        .keys()
        .find(|k| **k != schema.target && schema.feature_index(k).is_none())
    {
        return Err(MlError::UnknownColumn(unknown.clone()));
    }
    if let Some((column, _)) = obj.iter().find(|(_, v)| holds_nul(v)) {
        return Err(MlError::InvalidValue {
            column: column.clone(),
            message: "the value holds a NUL character (\\u0000), which cannot be stored"
                .to_string(),
        });
    }
    schema
        .features
        .iter()
        .map(|column| {
            let invalid = |message: String| MlError::InvalidValue {
                column: column.name.clone(),
                message,
            };
            let value = match obj.get(&column.name) {
                None | Some(serde_json::Value::Null) => return Ok(None),
                Some(v) => v,
            };
            if column.kind == ColumnKind::Image {
                if value.as_str().is_some_and(is_missing_token) {
                    return Ok(None);
                }
                let spec = column
                    .image
                    .as_ref()
                    .ok_or_else(|| invalid("the column declares no image shape".to_string()))?;
                return crate::image::pixels_from_json(value, spec)
                    .map(|p| Some(Value::Pixels(p)))
                    .map_err(invalid);
            }
            match (column.kind, value) {
                (ColumnKind::Numeric, serde_json::Value::Number(n)) => match n.as_f64() {
                    Some(v) if v.is_finite() => Ok(Some(Value::Num(v))),
                    _ => Err(invalid(format!("{n} is not a finite number"))),
                },
                (ColumnKind::Numeric, serde_json::Value::String(s)) => {
                    if is_missing_token(s) {
                        Ok(None)
                    } else {
                        parse_number(s)
                            .map(|v| Some(Value::Num(v)))
                            .map_err(invalid)
                    }
                }
                (ColumnKind::Categorical | ColumnKind::Text, serde_json::Value::String(s)) => {
                    if is_missing_token(s) {
                        Ok(None)
                    } else {
                        Ok(Some(Value::Cat(s.trim().to_string())))
                    }
                }
                (ColumnKind::Categorical | ColumnKind::Text, serde_json::Value::Number(n)) => {
                    Ok(Some(Value::Cat(number_as_category(n))))
                }
                (ColumnKind::Numeric, other) => Err(invalid(format!(
                    "expected a number, got {}",
                    json_type_name(other)
                ))),
                (ColumnKind::Categorical | ColumnKind::Text | ColumnKind::Image, other) => Err(
                    invalid(format!("expected a string, got {}", json_type_name(other))),
                ),
            }
        })
        .collect()
}

/// Whether a NUL character appears anywhere in `value`: in a string, or in a key or string
/// nested at any depth.
fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {
            false
        }
    }
}

/// The category a JSON number stands for: the text a CSV cell would hold for it. Whole numbers
/// that an `f64` holds exactly (below 2^53) lose their fraction (`1.0` -> "1"), the way training
/// files write them; other numbers keep JSON's text.
fn number_as_category(n: &serde_json::Number) -> String {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match n.as_f64() {
        Some(v) if !n.is_u64() && !n.is_i64() && v.fract() == 0.0 && v.abs() < EXACT => {
            // Exact: |v| < 2^53 fits an i64 and has no fraction. `-0.0` becomes "0".
            format!("{}", v as i64)
        }
        _ => n.to_string(),
    }
}

/// Names a JSON value's type the way API clients think of it.
fn json_type_name(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Column;
    use serde_json::json;

    /// A reader that hands out a few bytes at a time, as a socket or a pipe does.
    struct Trickle<'a>(&'a [u8]);

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(7);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn rows_read_one_at_a_time_from_any_reader_match_the_whole_file_parse() {
        let csv = "x,c,y\n1,red,a\nbad,blue,b\n\"2\",\"multi\nline\",a\n3,green\n4,red,\n";
        let whole = parse_csv(csv.as_bytes(), &small_schema()).unwrap();
        let mut rows = CsvRows::new(Trickle(csv.as_bytes()), &small_schema()).unwrap();
        let (mut accepted, mut errors, mut lines) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(row) = rows.next_row() {
            match row {
                CsvRow::Accepted { line, row, target } => {
                    accepted.push(row);
                    lines.push((line, target));
                }
                CsvRow::Rejected(e) => errors.extend(e),
            }
        }
        assert_eq!(accepted, whole.table.rows);
        assert_eq!(errors, whole.errors);
        assert_eq!(lines.iter().map(|l| l.0).collect::<Vec<_>>(), whole.lines);
        assert_eq!(
            lines[1],
            (4, "a".to_owned()),
            "a quoted line break stays in its row"
        );
        assert_eq!(whole.rejected_lines(), 3);

        // Binary data after a good start ends the file with a row error, not a panic.
        let binary = b"x,c,y\n1,red,a\n2,\0\0,b\n";
        let mut rows = CsvRows::new(Trickle(binary), &small_schema()).unwrap();
        assert!(matches!(rows.next_row(), Some(CsvRow::Accepted { .. })));
        let Some(CsvRow::Rejected(e)) = rows.next_row() else {
            panic!("the NUL row is rejected")
        };
        assert!(e[0].message.contains("NUL"), "{e:?}");
        assert_eq!(rows.next_row(), None);
    }

    fn small_schema() -> Schema {
        Schema {
            features: vec![Column::numeric("x"), Column::categorical("c")],
            target: "y".into(),
        }
    }

    fn obj(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn parses_good_rows_and_missing_tokens() {
        let csv = b"y,x,c,extra\na,1.5,red,zzz\nb,NA,blue,\nb, nan ,NULL,1\na,,,\n";
        let report = parse_csv(csv, &small_schema()).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.table.targets, vec!["a", "b", "b", "a"]);
        assert_eq!(
            report.table.rows,
            vec![
                vec![Some(Value::Num(1.5)), Some(Value::Cat("red".into()))],
                vec![None, Some(Value::Cat("blue".into()))],
                vec![None, None],
                vec![None, None],
            ]
        );
    }

    #[test]
    fn bad_rows_are_reported_with_line_numbers_and_left_out() {
        let csv = "x,c,y\n\
                   1,red,a\n\
                   abc,red,a\n\
                   2,red\n\
                   3,blue,NA\n\
                   inf,blue,b\n\
                   \"4\",\"multi\nline\",b\n\
                   5,green,b,extra\n\
                   6,red,a\n";
        let report = parse_csv(csv.as_bytes(), &small_schema()).unwrap();
        let got: Vec<(u64, Option<&str>)> = report
            .errors
            .iter()
            .map(|e| (e.line, e.column.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                (3, Some("x")),
                (4, None),
                (5, Some("y")),
                (6, Some("x")),
                // The quoted field spans lines 7-8, so the long row starts on line 9.
                (9, None),
            ]
        );
        assert!(report.errors[0].message.contains("'abc' is not a number"));
        assert!(report.errors[1].message.contains("expected 3 fields"));
        assert!(report.errors[3].message.contains("finite"));
        assert_eq!(report.table.targets, vec!["a", "b", "a"]);
        assert_eq!(
            report.table.rows[1][1],
            Some(Value::Cat("multi\nline".into()))
        );
        assert_eq!(report.rejected_lines(), 5);
    }

    #[test]
    fn header_lacking_a_schema_column_is_a_schema_error() {
        let err = parse_csv(b"x,y\n1,a\n", &small_schema()).unwrap_err();
        assert!(
            matches!(err, MlError::Schema(ref m) if m.contains("c")),
            "{err}"
        );
        let err = parse_csv(b"x,c\n1,a\n", &small_schema()).unwrap_err();
        assert!(
            matches!(err, MlError::Schema(ref m) if m.contains("y")),
            "{err}"
        );
        let err = parse_csv(b"x,c,y,x\n1,a,b,2\n", &small_schema()).unwrap_err();
        assert!(matches!(err, MlError::Schema(ref m) if m.contains("more than once")));
    }

    #[test]
    fn non_csv_input_is_an_error() {
        assert!(matches!(
            parse_csv(b"", &small_schema()),
            Err(MlError::Csv(_))
        ));
        assert!(matches!(
            parse_csv(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", &small_schema()),
            Err(MlError::Csv(_))
        ));
        assert!(matches!(
            parse_csv(b"x,\xff\xfe,y\n", &small_schema()),
            Err(MlError::Csv(_))
        ));
        // Text that is not the declared table at all fails on the header.
        assert!(parse_csv(b"hello world\n", &small_schema()).is_err());
    }

    #[test]
    fn byte_order_mark_and_whitespace_are_tolerated() {
        let report = parse_csv(b"\xEF\xBB\xBFx , c ,y\n 2 , red , a \n", &small_schema()).unwrap();
        assert!(report.errors.is_empty());
        assert_eq!(
            report.table.rows[0],
            vec![Some(Value::Num(2.0)), Some(Value::Cat("red".into()))]
        );
        assert_eq!(report.table.targets, vec!["a"]);
    }

    #[test]
    fn penguins_file_parses_with_missing_values() {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/penguins.csv"
        ))
        .unwrap();
        let report = parse_csv(&bytes, &Schema::penguins()).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.table.len(), 344);
        // Line 5 of the file (the 4th data row) is all NA except island and year.
        let row = &report.table.rows[3];
        assert_eq!(row[0], Some(Value::Cat("Torgersen".into())));
        assert!(row[1..6].iter().all(Option::is_none));
        assert_eq!(row[6], Some(Value::Num(2007.0)));
        assert_eq!(report.table.class_counts().len(), 3);
    }

    #[test]
    fn row_from_json_accepts_good_rows() {
        let schema = small_schema();
        let row = row_from_json(&obj(json!({"x": 1.25, "c": "red"})), &schema).unwrap();
        assert_eq!(
            row,
            vec![Some(Value::Num(1.25)), Some(Value::Cat("red".into()))]
        );
        // Numeric strings, nulls, absent keys, missing tokens and the target are all fine.
        let row = row_from_json(&obj(json!({"x": " 3e2 ", "y": "ignored"})), &schema).unwrap();
        assert_eq!(row, vec![Some(Value::Num(300.0)), None]);
        let row = row_from_json(&obj(json!({"x": null, "c": "NA"})), &schema).unwrap();
        assert_eq!(row, vec![None, None]);
        let row = row_from_json(&obj(json!({"c": 7})), &schema).unwrap();
        assert_eq!(row, vec![None, Some(Value::Cat("7".into()))]);
    }

    #[test]
    fn whole_numbers_for_categories_read_as_csv_reads_them() {
        let schema = small_schema();
        // The training file's cells, as parse_csv reads them.
        let report = parse_csv(b"x,c,y\n1,1,a\n2,-3,b\n3,2.5,a\n", &schema).unwrap();
        let cells: Vec<_> = report.table.rows.iter().map(|r| r[1].clone()).collect();
        let cat = |v: serde_json::Value| {
            let text = serde_json::to_string(&json!({ "c": v })).unwrap();
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
            row_from_json(parsed.as_object().unwrap(), &schema).unwrap()[1].clone()
        };
        // A client's 1.0 is the file's "1", whichever way the number is spelled.
        assert_eq!(cat(json!(1.0)), cells[0]);
        assert_eq!(cat(json!(1)), cells[0]);
        let spelled: serde_json::Value = serde_json::from_str(r#"{"c": 1.0e0}"#).unwrap();
        assert_eq!(
            row_from_json(spelled.as_object().unwrap(), &schema).unwrap()[1],
            cells[0]
        );
        assert_eq!(cat(json!(-3.0)), cells[1]);
        assert_eq!(cat(json!(-3)), cells[1]);
        // A fraction is kept.
        assert_eq!(cat(json!(2.5)), cells[2]);
        assert_eq!(cat(json!(-0.0)), Some(Value::Cat("0".into())));
        // Past 2^53 a float is no longer an exact integer: JSON's own text is kept.
        assert_eq!(cat(json!(1e300)), Some(Value::Cat("1e+300".into())));
        assert_eq!(cat(json!(u64::MAX)), Some(Value::Cat(u64::MAX.to_string())));
    }

    #[test]
    fn row_from_json_refuses_nul_characters_anywhere() {
        let schema = small_schema();
        let nul = |v: serde_json::Value, column: &str| match row_from_json(&obj(v), &schema) {
            Err(e @ MlError::InvalidValue { .. }) => {
                let MlError::InvalidValue { column: c, message } = &e else {
                    unreachable!()
                };
                assert_eq!(c, column, "{e}");
                assert!(message.contains("NUL"), "{e}");
                assert!(!e.to_string().contains('\0'), "{e:?}");
            }
            other => panic!("{other:?}"),
        };
        nul(json!({"x": 1, "c": "Torg\u{0}ersen"}), "c");
        nul(json!({"c": "\u{0}"}), "c");
        nul(json!({"c": "NA\u{0}"}), "c");
        nul(json!({"x": "1\u{0}"}), "x");
        // The target is ignored, but it is stored with the row all the same.
        nul(json!({"x": 1, "y": "Ade\u{0}lie"}), "y");
        nul(json!({"y": {"nested": ["ok", "n\u{0}"]}}), "y");
        nul(json!({"y": {"k\u{0}": 1}}), "y");
        // Other control characters are only text.
        let row = row_from_json(&obj(json!({"c": "a\u{1}b", "y": ["\t"]})), &schema).unwrap();
        assert_eq!(row[1], Some(Value::Cat("a\u{1}b".into())));
    }

    #[test]
    fn row_from_json_names_the_bad_column() {
        let schema = small_schema();
        match row_from_json(&obj(json!({"x": "abc"})), &schema) {
            Err(MlError::InvalidValue { column, message }) => {
                assert_eq!(column, "x");
                assert!(message.contains("not a number"));
            }
            other => panic!("{other:?}"),
        }
        match row_from_json(&obj(json!({"x": true})), &schema) {
            Err(MlError::InvalidValue { column, message }) => {
                assert_eq!(column, "x");
                assert!(message.contains("boolean"));
            }
            other => panic!("{other:?}"),
        }
        match row_from_json(&obj(json!({"c": ["red"]})), &schema) {
            Err(MlError::InvalidValue { column, .. }) => assert_eq!(column, "c"),
            other => panic!("{other:?}"),
        }
        match row_from_json(&obj(json!({"x": 1, "colour": "red"})), &schema) {
            Err(e @ MlError::UnknownColumn(_)) => {
                assert_eq!(e.to_string(), "unknown column 'colour'")
            }
            other => panic!("{other:?}"),
        }
    }
}

/// [`row_from_json`] on a row's JSON text, without building a map of values first: the
/// predictor's hot path. Ordinary rows (column names without escapes are not required; values
/// that are numbers, strings or null) are read in one pass straight into a [`FeatureRow`];
/// anything else (a wrong type, an unknown column, a bad number, a NUL) is handed to
/// [`row_from_json`], so errors and edge cases are exactly its own.
pub fn row_from_json_str(text: &str, schema: &Schema) -> Result<FeatureRow, MlError> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_str(text);
    if let Ok(Some(row)) = FastRow(schema).deserialize(&mut de)
        && de.end().is_ok()
    {
        return Ok(row);
    }
    let obj: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|_| MlError::NotAnObject)?;
    row_from_json(&obj, schema)
}

/// The one-pass reader behind [`row_from_json_str`]: `Ok(None)` means "not an ordinary row,
/// take the slow path".
struct FastRow<'s>(&'s Schema);

impl<'de> serde::de::DeserializeSeed<'de> for FastRow<'_> {
    type Value = Option<FeatureRow>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FastRow<'_> {
    type Value = Option<FeatureRow>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object of column name to value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let schema = self.0;
        let mut row: FeatureRow = vec![None; schema.features.len()];
        let mut ok = true;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let column = schema.feature_index(&key);
            let Some(i) = column else {
                // The target is ignored, but must still be storable: a NUL or anything nested
                // takes the slow path, which checks it.
                let value = map.next_value::<Scalar<'de>>()?;
                let storable = *key == schema.target
                    && match value {
                        Scalar::Str(s) => !s.contains('\0'),
                        Scalar::Other => false,
                        _ => true,
                    };
                if !storable {
                    ok = false;
                }
                continue;
            };
            let kind = schema.features[i].kind;
            if kind == ColumnKind::Image {
                // Pixel arrays and PNGs are read, and checked, by the slow path.
                map.next_value::<serde::de::IgnoredAny>()?;
                ok = false;
                continue;
            }
            match map.next_value::<Scalar<'de>>()? {
                Scalar::Null => row[i] = None,
                Scalar::Int(text) => match kind {
                    ColumnKind::Numeric => match text.parse::<f64>() {
                        Ok(v) if v.is_finite() => row[i] = Some(Value::Num(v)),
                        _ => ok = false,
                    },
                    ColumnKind::Categorical | ColumnKind::Text => row[i] = Some(Value::Cat(text)),
                    ColumnKind::Image => ok = false,
                },
                Scalar::Float(v) => match kind {
                    ColumnKind::Numeric if v.is_finite() => row[i] = Some(Value::Num(v)),
                    // Whole numbers read as the CSV reads them; other floats take the slow path
                    // for the exact text.
                    ColumnKind::Categorical | ColumnKind::Text
                        if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 =>
                    {
                        row[i] = Some(Value::Cat(format!("{}", v as i64)))
                    }
                    _ => ok = false,
                },
                Scalar::Str(s) => {
                    if s.contains('\0') {
                        ok = false;
                    } else if is_missing_token(&s) {
                        row[i] = None;
                    } else {
                        match kind {
                            ColumnKind::Numeric => match parse_number(&s) {
                                Ok(v) => row[i] = Some(Value::Num(v)),
                                Err(_) => ok = false,
                            },
                            ColumnKind::Categorical | ColumnKind::Text => {
                                row[i] = Some(Value::Cat(s.trim().to_string()))
                            }
                            ColumnKind::Image => ok = false,
                        }
                    }
                }
                Scalar::Other => ok = false,
            }
        }
        Ok(ok.then_some(row))
    }
}

/// One JSON value as the fast path sees it.
enum Scalar<'a> {
    Null,
    /// An integer literal, as text (so a categorical column keeps its exact digits).
    Int(String),
    Float(f64),
    Str(std::borrow::Cow<'a, str>),
    /// A boolean, an array or an object: the slow path reports it.
    Other,
}

impl<'de> serde::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;
    use crate::Column;

    fn schema() -> Schema {
        Schema {
            features: vec![
                Column::numeric("x"),
                Column::categorical("c"),
                Column::numeric("y"),
            ],
            target: "t".into(),
        }
    }

    /// Every row answers exactly as the map-based reader does: the fast path and its fallback
    /// must never disagree, on good rows or bad ones.
    #[test]
    fn agrees_with_row_from_json_on_every_kind_of_row() {
        let s = schema();
        let rows = [
            r#"{"x": 1.5, "c": "a", "y": 2}"#,
            r#"{"x": "3.25", "c": " b ", "t": "ignored"}"#,
            r#"{"x": null, "c": null}"#,
            r#"{}"#,
            r#"{"c": 2007, "x": -0.0}"#,
            r#"{"c": 2007.0, "y": "NA"}"#,
            r#"{"c": 1.5}"#,
            r#"{"c": 12345678901234567890}"#,
            r#"{"x": "abc"}"#,
            r#"{"x": true}"#,
            r#"{"x": [1]}"#,
            r#"{"x": {"a": 1}}"#,
            r#"{"zzz": 1, "x": "bad"}"#,
            r#"{"c": "nul\u0000here"}"#,
            r#"{"x": 1, "x": 2}"#,
            r#"{"c": "caf\u00e9", "x\u0041": 1}"#,
            r#"{"x": "1e400"}"#,
            r#"{"y": 1e300, "x": "NaN"}"#,
            r#"{"t": "Ade\u0000lie", "x": 1}"#,
            r#"{"t": {"name": ["\u0000"]}, "x": 1}"#,
            r#"{"t": "Adelie", "x": 1}"#,
        ];
        for text in rows {
            let slow = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
                .map_err(|e| e.to_string())
                .and_then(|m| row_from_json(&m, &s).map_err(|e| e.to_string()));
            let fast = row_from_json_str(text, &s).map_err(|e| e.to_string());
            assert_eq!(fast, slow, "{text}");
        }
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused_in_words() {
        let err = row_from_json_str("[1, 2]", &schema()).unwrap_err();
        assert!(
            err.to_string().contains("object of column name to value"),
            "{err}"
        );
    }
}
