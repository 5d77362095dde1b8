//! The one conversion from CSV rows to JSON feature rows, shared by the CLI (traffic, bench,
//! batch), the predictor's batch jobs and the tests, so that a row means the same thing whether
//! it is read from a file or sent as JSON.

use serde_json::{Map, Value};

use crate::MlError;
use crate::dataset::is_missing_token;

/// A CSV file read as JSON rows: its header and one entry per data row.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonRows {
    /// The header's column names, trimmed.
    pub columns: Vec<String>,
    /// One entry per data row, in file order: the row as column name to value, or why it could
    /// not be read (a wrong number of fields, text that is not UTF-8), so that one bad row never
    /// hides the others.
    pub rows: Vec<Result<Map<String, Value>, String>>,
}

/// Converts one CSV cell to JSON as a client would send it: a missing-value token (empty, `NA`,
/// `NaN`, `null`, any case) becomes null, a finite number a JSON number, anything else a string.
/// Cells are trimmed, as [`crate::parse_csv`] trims them.
pub fn csv_cell_to_json(cell: &str) -> Value {
    let t = cell.trim();
    if is_missing_token(t) {
        return Value::Null;
    }
    match t.parse::<f64>() {
        Ok(x) if x.is_finite() => serde_json::Number::from_f64(x)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(t.to_owned())),
        _ => Value::String(t.to_owned()),
    }
}

/// Reads CSV bytes with a header row into JSON rows ([`csv_cell_to_json`] per cell). A UTF-8
/// byte-order mark is skipped. Fails only when the file as a whole is unreadable (empty, binary,
/// a broken or repeated header); a bad row is reported in its place in [`JsonRows::rows`].
pub fn csv_to_json_rows(bytes: &[u8]) -> Result<JsonRows, MlError> {
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
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(bytes);
    let columns: Vec<String> = reader
        .headers()
        .map_err(|_| MlError::Csv("the header row is not valid UTF-8 CSV text".into()))?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    for (i, c) in columns.iter().enumerate() {
        if columns[..i].contains(c) {
            return Err(MlError::Schema(format!(
                "column '{c}' appears more than once in the header"
            )));
        }
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let row = match record {
            Ok(r) if r.len() != columns.len() => Err(format!(
                "the row has {} fields; the header has {}",
                r.len(),
                columns.len()
            )),
            Ok(r) => Ok(columns
                .iter()
                .zip(r.iter())
                .map(|(c, v)| (c.clone(), csv_cell_to_json(v)))
                .collect()),
            Err(_) => Err("the row is not valid UTF-8 CSV text".to_owned()),
        };
        rows.push(row);
    }
    Ok(JsonRows { columns, rows })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cells_become_numbers_strings_and_nulls() {
        assert_eq!(csv_cell_to_json(" 3.5 "), json!(3.5));
        assert_eq!(csv_cell_to_json("Biscoe"), json!("Biscoe"));
        for missing in ["", "NA", "na", "NaN", "null", "  "] {
            assert_eq!(csv_cell_to_json(missing), Value::Null, "{missing:?}");
        }
        assert_eq!(
            csv_cell_to_json("inf"),
            json!("inf"),
            "never a non-finite number"
        );
    }

    #[test]
    fn rows_keep_their_place_and_bad_ones_say_why() {
        let csv = b"\xEF\xBB\xBFx, c\n1,red\n2\n,blue\n";
        let got = csv_to_json_rows(csv).unwrap();
        assert_eq!(got.columns, ["x", "c"]);
        assert_eq!(got.rows.len(), 3);
        assert_eq!(
            got.rows[0].as_ref().unwrap(),
            json!({"x": 1.0, "c": "red"}).as_object().unwrap()
        );
        assert!(
            got.rows[1].as_ref().unwrap_err().contains("1 fields"),
            "{:?}",
            got.rows[1]
        );
        assert_eq!(got.rows[2].as_ref().unwrap()["x"], Value::Null);
    }

    #[test]
    fn unreadable_files_are_refused() {
        assert!(csv_to_json_rows(b"  \n").is_err());
        assert!(csv_to_json_rows(b"a,b\n\0,1\n").is_err());
        assert!(csv_to_json_rows(b"a,a\n1,2\n").is_err());
    }
}
