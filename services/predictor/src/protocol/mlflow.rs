//! MLflow's scoring protocol, as `mlflow models serve` and MLflow's SageMaker containers speak it
//! (`mlflow/pyfunc/scoring_server`), so MLflow clients and pandas users call Petrel unchanged.
//!
//! Requests (`POST /invocations`):
//! - `application/json` with exactly one of
//!   - `dataframe_split`: `{"columns": [..], "data": [[..], ..], "index"?: [..]}`, as pandas'
//!     `to_json(orient="split")` / `to_dict(orient="split")` writes it. The index is checked
//!     for length and otherwise ignored. Without `columns`, values follow the model schema's
//!     column order.
//!   - `dataframe_records`: a list of `{column: value}` objects (`orient="records"`).
//!   - `instances` or `inputs`: a list of records, a column-oriented `{column: [values]}` (all
//!     lists as long as each other), or a list of lists in schema order. MLflow reads both
//!     fields the same way for a model with named columns; so do we.
//! - an optional `params` object, accepted and ignored: this model takes no inference
//!   parameters, and MLflow too ignores params (with a warning) for a model whose signature has
//!   none. A `params` that is not an object is refused, as MLflow's client refuses it.
//! - `text/csv` with a header row; an empty first header cell is pandas' index column
//!   (`to_csv()` writes one by default) and is skipped.
//! - `application/json; format=pandas-split` or `format=pandas-records`: the MLflow 1.x bodies,
//!   the bare `to_json` output without a wrapping field.
//! - `charset` other than UTF-8, any other content-type parameter, or any other content type:
//!   415, as MLflow answers.
//!
//! Missing values: JSON `null` (what pandas writes for NaN and None), and in CSV an empty cell
//! or `NA`/`NaN`/`null`, exactly as Petrel's CSV ingest reads them.
//!
//! Response: `{"predictions": [row, ...]}`, one object per row in request order, as MLflow
//! returns a model's DataFrame output (`orient="records"`):
//!
//! ```json
//! {"predictions": [{"class": "Adelie",
//!                   "probabilities": {"Adelie": 0.97, "Chinstrap": 0.02, "Gentoo": 0.01},
//!                   "confidence": 0.97,
//!                   "inference_id": "0190c5e2-..."}]}
//! ```
//!
//! `class` is the most probable class, `probabilities` every class's probability (summing to
//! 1), `confidence` the probability of `class`, and `inference_id` the id to send ground truth
//! under (`POST /v1/labels`) where predictions are logged.
//!
//! Errors: MLflow's `{"error_code": "...", "message": "..."}`, see [`error_body`].

use serde_json::{Map, Value, json};

use super::{MediaType, Parsed, ProtocolError, Row, RowOrigin, ScoredRow, json_kind, parse_json};
use petrel_ml::Schema;

/// The input fields of MLflow's JSON body; a body holds exactly one.
pub const INPUT_FIELDS: [&str; 4] = [
    "dataframe_split",
    "dataframe_records",
    "instances",
    "inputs",
];

/// What MLflow adds to its errors about the input fields; kept short here.
const REQUIRED_INPUT: &str = "The input must be a JSON object with exactly one of the input \
     fields dataframe_split, dataframe_records, instances or inputs";

/// Parses an MLflow scoring request by its `Content-Type` (see the module docs).
pub fn parse(
    content_type: Option<&str>,
    body: &[u8],
    schema: &Schema,
) -> Result<Parsed, ProtocolError> {
    let Some(header) = content_type else {
        return Err(unsupported("none"));
    };
    let Some(media) = MediaType::parse(header) else {
        return Err(unsupported(header));
    };
    media.require_utf8()?;
    if let Some((name, _)) = media
        .params
        .iter()
        .find(|(k, _)| k != "charset" && !(k == "format" && media.essence == "application/json"))
    {
        return Err(ProtocolError::UnsupportedMediaType(format!(
            "unrecognized content type parameter {name:?}; only charset (and, for JSON, \
             format=pandas-split or format=pandas-records) are understood"
        )));
    }
    match media.essence.as_str() {
        "application/json" => match media.param("format") {
            None => parse_json_value(parse_json(body)?, schema),
            Some(f) if f.eq_ignore_ascii_case("pandas-split") => {
                split(parse_json(body)?, schema, "the body", RowOrigin::RawSplit)
            }
            Some(f) if f.eq_ignore_ascii_case("pandas-records") => {
                records(parse_json(body)?, "the body", RowOrigin::RawRecords)
            }
            Some(f) => Err(ProtocolError::UnsupportedMediaType(format!(
                "format={f:?} is not supported; use format=pandas-split, \
                 format=pandas-records, or no format with a dataframe_split, \
                 dataframe_records, instances or inputs field"
            ))),
        },
        "text/csv" => parse_csv_body(body),
        _ => Err(unsupported(header)),
    }
}

fn unsupported(got: &str) -> ProtocolError {
    ProtocolError::UnsupportedMediaType(format!(
        "this endpoint reads application/json and text/csv; got content type {got}"
    ))
}

/// Reads a decoded `application/json` body (MLflow 2.x and later): exactly one input field,
/// an optional `params` object; other fields are ignored, as MLflow ignores them.
pub fn parse_json_value(value: Value, schema: &Schema) -> Result<Parsed, ProtocolError> {
    let Value::Object(mut obj) = value else {
        return Err(ProtocolError::Malformed(format!(
            "{REQUIRED_INPUT}; got {}",
            json_kind(&value)
        )));
    };
    let present: Vec<&str> = INPUT_FIELDS
        .iter()
        .copied()
        .filter(|f| obj.contains_key(*f))
        .collect();
    let [field] = present[..] else {
        let keys: Vec<&String> = obj.keys().collect();
        return Err(ProtocolError::Malformed(format!(
            "{REQUIRED_INPUT}; got the fields {keys:?}"
        )));
    };
    match obj.get("params") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(other) => {
            return Err(ProtocolError::Malformed(format!(
                "params must be an object of parameter name to value; got {}",
                json_kind(other)
            )));
        }
    }
    let data = obj.remove(field).unwrap_or(Value::Null);
    match field {
        "dataframe_split" => split(data, schema, field, RowOrigin::DataframeSplit),
        "dataframe_records" => records(data, field, RowOrigin::DataframeRecords),
        "instances" => tensor_input(data, schema, field, RowOrigin::Instances),
        _ => tensor_input(data, schema, field, RowOrigin::Inputs),
    }
}

/// `{"columns"?, "data", "index"?}`: MLflow requires `data` and allows only these three keys.
fn split(
    value: Value,
    schema: &Schema,
    field: &str,
    origin: RowOrigin,
) -> Result<Parsed, ProtocolError> {
    let bad = |m: String| Err(ProtocolError::Malformed(m));
    let Value::Object(mut obj) = value else {
        return bad(format!(
            "{field} must be an object with data and optionally columns and index (pandas' \
             split orient); got {}",
            json_kind(&value)
        ));
    };
    if let Some(other) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "columns" | "data" | "index"))
    {
        return bad(format!(
            "{field} has an unknown field {other:?}; the split orient has data and \
             optionally columns and index"
        ));
    }
    let columns: Vec<String> = match obj.remove("columns") {
        None | Some(Value::Null) => schema.features.iter().map(|c| c.name.clone()).collect(),
        Some(Value::Array(names)) => names
            .into_iter()
            .enumerate()
            .map(|(i, n)| match n {
                Value::String(s) => Ok(s),
                other => Err(ProtocolError::Malformed(format!(
                    "{field}.columns[{i}] must be a column name (a string); got {}",
                    json_kind(&other)
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return bad(format!(
                "{field}.columns must be a list of column names; got {}",
                json_kind(&other)
            ));
        }
    };
    check_unique(&columns, &format!("{field}.columns"))?;
    let data = match obj.remove("data") {
        Some(Value::Array(data)) => data,
        Some(other) => {
            return bad(format!(
                "{field}.data must be a list of rows; got {}",
                json_kind(&other)
            ));
        }
        None => return bad(format!("{field} lacks data, the list of rows")),
    };
    match obj.remove("index") {
        None | Some(Value::Null) => {}
        Some(Value::Array(index)) if index.len() == data.len() => {}
        Some(Value::Array(index)) => {
            return bad(format!(
                "{field}.index has {} labels for {} rows of data",
                index.len(),
                data.len()
            ));
        }
        Some(other) => {
            return bad(format!(
                "{field}.index must be a list of row labels; got {}",
                json_kind(&other)
            ));
        }
    }
    let rows = data
        .into_iter()
        .enumerate()
        .map(|(i, row)| match row {
            Value::Array(values) if values.len() == columns.len() => {
                Ok(columns.iter().cloned().zip(values).collect::<Row>())
            }
            Value::Array(values) => Err(ProtocolError::Malformed(format!(
                "{} has {} values for {} columns",
                origin.name(i),
                values.len(),
                columns.len()
            ))),
            other => Err(ProtocolError::Malformed(format!(
                "{} must be a list of values, one per column; got {}",
                origin.name(i),
                json_kind(&other)
            ))),
        })
        .collect::<Result<_, _>>()?;
    Ok(Parsed::anonymous(origin, rows))
}

/// A list of `{column: value}` objects.
fn records(value: Value, field: &str, origin: RowOrigin) -> Result<Parsed, ProtocolError> {
    let Value::Array(items) = value else {
        return Err(ProtocolError::Malformed(format!(
            "{field} must be a list of records (objects of column name to value); got {}",
            json_kind(&value)
        )));
    };
    let rows = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(row) => Ok(row),
            other => Err(ProtocolError::Malformed(format!(
                "{} must be a record (an object of column name to value); got {}",
                origin.name(i),
                json_kind(&other)
            ))),
        })
        .collect::<Result<_, _>>()?;
    Ok(Parsed::anonymous(origin, rows))
}

/// `instances` and `inputs`: records, `{column: [values]}`, or lists in schema order.
fn tensor_input(
    value: Value,
    schema: &Schema,
    field: &str,
    origin: RowOrigin,
) -> Result<Parsed, ProtocolError> {
    match value {
        Value::Object(columns) => by_column(columns, field, origin),
        Value::Array(items) if items.iter().all(Value::is_object) => {
            records(Value::Array(items), field, origin)
        }
        Value::Array(items) if items.iter().all(Value::is_array) => {
            let names: Vec<String> = schema.features.iter().map(|c| c.name.clone()).collect();
            let rows = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let Value::Array(values) = item else {
                        unreachable!("checked above: every item is a list")
                    };
                    if values.len() != names.len() {
                        return Err(ProtocolError::Malformed(format!(
                            "{} has {} values; a row given as a list needs one value per \
                             model column, in order: {}",
                            origin.name(i),
                            values.len(),
                            names.join(", ")
                        )));
                    }
                    Ok(names.iter().cloned().zip(values).collect::<Row>())
                })
                .collect::<Result<_, _>>()?;
            Ok(Parsed::anonymous(origin, rows))
        }
        Value::Array(_) => Err(ProtocolError::Malformed(format!(
            "{field} must be a list of records or a list of rows (lists), not a mix of those \
             and other values"
        ))),
        other => Err(ProtocolError::Malformed(format!(
            "{field} must be an object of column name to list of values, a list of records, \
             or a list of rows; got {}",
            json_kind(&other)
        ))),
    }
}

/// `{column: [v0, v1, ...]}` to one row per position; every list must be as long as the others.
fn by_column(
    columns: Map<String, Value>,
    field: &str,
    origin: RowOrigin,
) -> Result<Parsed, ProtocolError> {
    let mut lists = Vec::with_capacity(columns.len());
    let mut len: Option<(usize, String)> = None;
    for (name, values) in columns {
        let Value::Array(values) = values else {
            return Err(ProtocolError::Malformed(format!(
                "{field}.{name} must be a list of values, one per row; got {}",
                json_kind(&values)
            )));
        };
        match &len {
            None => len = Some((values.len(), name.clone())),
            Some((n, first)) if *n != values.len() => {
                return Err(ProtocolError::Malformed(format!(
                    "{field}.{name} has {} values but {field}.{first} has {n}: every column \
                     needs one value per row",
                    values.len()
                )));
            }
            Some(_) => {}
        }
        lists.push((name, values.into_iter()));
    }
    let n = len.map_or(0, |(n, _)| n);
    let rows = (0..n)
        .map(|_| {
            lists
                .iter_mut()
                .map(|(name, values)| (name.clone(), values.next().unwrap_or(Value::Null)))
                .collect::<Row>()
        })
        .collect();
    Ok(Parsed::anonymous(origin, rows))
}

fn check_unique(names: &[String], what: &str) -> Result<(), ProtocolError> {
    let mut seen = std::collections::HashSet::new();
    match names.iter().find(|n| !seen.insert(n.as_str())) {
        Some(dup) => Err(ProtocolError::Malformed(format!(
            "{what} names {dup:?} twice"
        ))),
        None => Ok(()),
    }
}

/// CSV with a header row. Cells stay text: the model's schema decides whether a column is a
/// number, exactly as for Petrel's CSV ingest, and missing-value tokens become missing there.
fn parse_csv_body(body: &[u8]) -> Result<Parsed, ProtocolError> {
    let bad = |m: String| ProtocolError::Malformed(m);
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let text = std::str::from_utf8(body).map_err(|e| {
        bad(format!(
            "the CSV body is not UTF-8 text (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    if text.trim().is_empty() {
        return Err(bad("the CSV body is empty; a header row is required".into()));
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| bad(format!("cannot read the CSV header row: {e}")))?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    // pandas' `to_csv()` writes its index as a first column with an empty name.
    let skip = usize::from(header.len() > 1 && header[0].is_empty());
    if let Some(i) = header.iter().skip(skip).position(String::is_empty) {
        return Err(bad(format!(
            "CSV header column {} has no name",
            i + skip + 1
        )));
    }
    check_unique(&header[skip..], "the CSV header")?;
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| match e.kind() {
            csv::ErrorKind::UnequalLengths {
                len, expected_len, ..
            } => bad(format!(
                "{} has {len} fields; the header has {expected_len}",
                RowOrigin::Csv.name(i)
            )),
            _ => bad(format!("{} cannot be read: {e}", RowOrigin::Csv.name(i))),
        })?;
        rows.push(
            header
                .iter()
                .zip(record.iter())
                .skip(skip)
                .map(|(name, cell)| (name.clone(), Value::String(cell.trim().to_owned())))
                .collect::<Row>(),
        );
    }
    Ok(Parsed::anonymous(RowOrigin::Csv, rows))
}

/// MLflow's answer: `{"predictions": [...]}`, one object per row (see the module docs).
pub fn predictions(scored: &[ScoredRow]) -> Value {
    let rows: Vec<Value> = scored
        .iter()
        .map(|s| {
            json!({
                "class": s.prediction.class,
                "probabilities": s.prediction.probabilities,
                "confidence": s.prediction.confidence,
                "inference_id": s.inference_id,
            })
        })
        .collect();
    json!({ "predictions": rows })
}

/// MLflow's error body, `{"error_code": "...", "message": "..."}`, which MLflow's clients read.
/// The codes are MLflow's own (`databricks_pb2`): `BAD_REQUEST` for a body that cannot be read
/// (400, and 415 for a content type), `INVALID_PARAMETER_VALUE` for rows that do not fit the
/// model (422 here: Petrel keeps its status for invalid rows; MLflow answers 400),
/// `REQUEST_LIMIT_EXCEEDED` (413), `RESOURCE_DOES_NOT_EXIST` (404), `TEMPORARILY_UNAVAILABLE` (503) and `INTERNAL_ERROR` (500).
pub fn error_body(e: &ProtocolError) -> Value {
    let code = match e {
        ProtocolError::UnsupportedMediaType(_) | ProtocolError::Malformed(_) => "BAD_REQUEST",
        ProtocolError::Invalid(_) => "INVALID_PARAMETER_VALUE",
        ProtocolError::TooLarge(_) => "REQUEST_LIMIT_EXCEEDED",
        ProtocolError::NotFound(_) => "RESOURCE_DOES_NOT_EXIST",
        ProtocolError::Unavailable(_) => "TEMPORARILY_UNAVAILABLE",
        ProtocolError::Internal(_) => "INTERNAL_ERROR",
    };
    json!({ "error_code": code, "message": e.client_message() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::{fixture, model};
    use crate::protocol::{RowLimits, score};
    use axum::http::StatusCode;

    const JSON: Option<&str> = Some("application/json");

    fn schema() -> Schema {
        Schema::penguins()
    }

    fn rows(p: &Parsed) -> Vec<Row> {
        p.features().cloned().collect()
    }

    /// The six fixture rows as pandas wrote them in the records orient: the reference every
    /// other format must reproduce.
    fn reference() -> Vec<Row> {
        let v: Value = serde_json::from_slice(&fixture("raw-records.json")).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_object().unwrap().clone())
            .collect()
    }

    fn parse_ok(content_type: &str, body: &[u8]) -> Parsed {
        parse(Some(content_type), body, &schema()).unwrap_or_else(|e| panic!("{content_type}: {e}"))
    }

    #[track_caller]
    fn refused(content_type: Option<&str>, body: &[u8], status: StatusCode, needle: &str) {
        let err = parse(content_type, body, &schema()).unwrap_err();
        assert_eq!(err.status(), status, "{err}");
        assert!(err.to_string().contains(needle), "{err:?} lacks {needle:?}");
    }

    #[test]
    fn every_pandas_json_format_gives_the_same_rows() {
        let want = reference();
        assert_eq!(want.len(), 6);
        // pandas writes NaN (and an explicit None) as null.
        assert_eq!(want[1]["sex"], Value::Null);
        assert_eq!(want[2]["body_mass_g"], Value::Null);
        for (file, origin) in [
            ("split.json", RowOrigin::DataframeSplit),
            ("records.json", RowOrigin::DataframeRecords),
            ("inputs-columns.json", RowOrigin::Inputs),
            ("instances-records.json", RowOrigin::Instances),
        ] {
            let parsed = parse_ok("application/json", &fixture(file));
            assert_eq!(parsed.origin, origin, "{file}");
            assert_eq!(rows(&parsed), want, "{file}");
            assert!(parsed.rows.iter().all(|r| r.inference_id.is_none()));
        }
        let split = parse_ok(
            "application/json; format=pandas-split",
            &fixture("raw-split.json"),
        );
        assert_eq!(rows(&split), want);
        assert_eq!(split.origin, RowOrigin::RawSplit);
        let recs = parse_ok(
            "application/json; Format=Pandas-Records; charset=utf-8",
            &fixture("raw-records.json"),
        );
        assert_eq!(rows(&recs), want);
    }

    #[test]
    fn csv_from_pandas_reads_as_text_cells_the_model_accepts() {
        let parsed = parse_ok("text/csv; charset=utf-8", &fixture("frame.csv"));
        assert_eq!(parsed.origin, RowOrigin::Csv);
        let got = rows(&parsed);
        assert_eq!(got.len(), 6);
        // The pandas index column is skipped; cells are text, NaN an empty cell.
        assert!(!got[0].contains_key(""));
        assert_eq!(got[0]["bill_length_mm"], "39.1");
        assert_eq!(got[1]["sex"], "");
        // The model reads them as the JSON formats: same predictions.
        let limits = RowLimits {
            max_rows: 100,
            max_row_bytes: None,
        };
        let from_csv = score(model(), parsed, &limits).unwrap();
        let from_json = score(
            model(),
            parse_ok("application/json", &fixture("split.json")),
            &limits,
        )
        .unwrap();
        let classes =
            |s: &[ScoredRow]| -> Vec<_> { s.iter().map(|r| r.prediction.clone()).collect() };
        assert_eq!(classes(&from_csv), classes(&from_json));
    }

    #[test]
    fn csv_problems_name_the_row_or_header() {
        let csv = Some("text/csv");
        refused(csv, b"", StatusCode::BAD_REQUEST, "the CSV body is empty");
        refused(
            csv,
            b"a,b\n1,2,3\n",
            StatusCode::BAD_REQUEST,
            "CSV row 1 has 3 fields; the header has 2",
        );
        refused(
            csv,
            b"a,,b\n1,2,3\n",
            StatusCode::BAD_REQUEST,
            "CSV header column 2 has no name",
        );
        refused(
            csv,
            b"a,a\n1,2\n",
            StatusCode::BAD_REQUEST,
            "the CSV header names \"a\" twice",
        );
        refused(csv, b"a\n\xff\n", StatusCode::BAD_REQUEST, "not UTF-8");
        // A quoted newline is one cell, and rows are counted, not lines.
        let parsed = parse_ok("text/csv", b"island,sex\n\"Dre\nam\",male\nBiscoe,\n");
        assert_eq!(parsed.rows.len(), 2);
        assert_eq!(rows(&parsed)[1]["island"], "Biscoe");
    }

    #[test]
    fn content_types_are_checked_as_mlflow_checks_them() {
        let body = fixture("split.json");
        refused(
            None,
            &body,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "got content type none",
        );
        refused(
            Some("text/plain"),
            &body,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json and text/csv",
        );
        refused(
            Some("application/json; charset=latin-1"),
            &body,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "charset \"latin-1\"",
        );
        refused(
            Some("application/json; version=2"),
            &body,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "parameter \"version\"",
        );
        refused(
            Some("text/csv; format=pandas-split"),
            &body,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "parameter \"format\"",
        );
        refused(
            Some("application/json; format=tf-instances"),
            &body,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "format=\"tf-instances\" is not supported",
        );
        assert_eq!(
            parse_ok("Application/JSON; charset=UTF-8", &body)
                .rows
                .len(),
            6
        );
    }

    #[test]
    fn the_body_needs_exactly_one_input_field() {
        refused(
            JSON,
            b"[]",
            StatusCode::BAD_REQUEST,
            "exactly one of the input fields",
        );
        refused(
            JSON,
            b"{\"data\": []}",
            StatusCode::BAD_REQUEST,
            "got the fields [\"data\"]",
        );
        refused(
            JSON,
            br#"{"inputs": [], "instances": []}"#,
            StatusCode::BAD_REQUEST,
            "exactly one of the input fields",
        );
        refused(
            JSON,
            b"{\"inputs\": ",
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        );
    }

    #[test]
    fn params_are_accepted_and_ignored_but_must_be_an_object() {
        let body = br#"{"dataframe_records": [{"island": "Dream"}], "params": {"temperature": 0.5}, "extra": 1}"#;
        assert_eq!(parse_ok("application/json", body).rows.len(), 1);
        refused(
            JSON,
            br#"{"dataframe_records": [], "params": [1]}"#,
            StatusCode::BAD_REQUEST,
            "params must be an object of parameter name to value; got a list",
        );
    }

    #[test]
    fn split_bodies_are_checked_field_by_field() {
        let refuse = |body: Value, needle: &str| {
            refused(
                JSON,
                body.to_string().as_bytes(),
                StatusCode::BAD_REQUEST,
                needle,
            )
        };
        refuse(
            json!({"dataframe_split": []}),
            "dataframe_split must be an object with data",
        );
        refuse(
            json!({"dataframe_split": {"columns": ["a"]}}),
            "dataframe_split lacks data",
        );
        refuse(
            json!({"dataframe_split": {"data": [], "dtype": {}}}),
            "unknown field \"dtype\"",
        );
        refuse(
            json!({"dataframe_split": {"data": {}}}),
            "dataframe_split.data must be a list of rows; got an object",
        );
        refuse(
            json!({"dataframe_split": {"columns": "a", "data": []}}),
            "dataframe_split.columns must be a list",
        );
        refuse(
            json!({"dataframe_split": {"columns": [1], "data": []}}),
            "dataframe_split.columns[0] must be a column name",
        );
        refuse(
            json!({"dataframe_split": {"columns": ["a", "a"], "data": []}}),
            "dataframe_split.columns names \"a\" twice",
        );
        refuse(
            json!({"dataframe_split": {"columns": ["island", "sex"], "data": [["Dream", "male"], ["Dream"]]}}),
            "dataframe_split.data[1] has 1 values for 2 columns",
        );
        refuse(
            json!({"dataframe_split": {"columns": ["island"], "data": [["Dream"], "Biscoe"]}}),
            "dataframe_split.data[1] must be a list of values, one per column; got a string",
        );
        refuse(
            json!({"dataframe_split": {"columns": ["island"], "index": [0], "data": [["Dream"], ["Biscoe"]]}}),
            "dataframe_split.index has 1 labels for 2 rows of data",
        );
        // Without columns, values follow the schema's order.
        let body =
            json!({"dataframe_split": {"data": [["Dream", 40.0, 18.0, 190, 3800, "male", 2008]]}});
        let parsed = parse_ok("application/json", body.to_string().as_bytes());
        assert_eq!(rows(&parsed)[0]["island"], "Dream");
        assert_eq!(rows(&parsed)[0]["year"], 2008);
    }

    #[test]
    fn records_instances_and_inputs_accept_mlflows_shapes() {
        let refuse = |body: Value, needle: &str| {
            refused(
                JSON,
                body.to_string().as_bytes(),
                StatusCode::BAD_REQUEST,
                needle,
            )
        };
        refuse(
            json!({"dataframe_records": {"island": ["Dream"]}}),
            "dataframe_records must be a list of records",
        );
        refuse(
            json!({"dataframe_records": [{"island": "Dream"}, 3]}),
            "dataframe_records[1] must be a record",
        );
        refuse(
            json!({"inputs": {"island": ["Dream", "Biscoe"], "sex": ["male"]}}),
            "inputs.sex has 1 values but inputs.island has 2",
        );
        refuse(
            json!({"inputs": {"island": "Dream"}}),
            "inputs.island must be a list of values, one per row; got a string",
        );
        refuse(
            json!({"instances": [{"island": "Dream"}, ["Dream"]]}),
            "not a mix",
        );
        refuse(
            json!({"instances": "Dream"}),
            "instances must be an object of column name to list",
        );
        refuse(
            json!({"inputs": [["Dream", 1]]}),
            "inputs[0] has 2 values; a row given as a list needs one value per model column, in order: island, bill_length_mm",
        );
        let positional = json!({"instances": [["Biscoe", 45.0, 14.0, 215, 5000, "female", 2008]]});
        let parsed = parse_ok("application/json", positional.to_string().as_bytes());
        assert_eq!(parsed.origin, RowOrigin::Instances);
        assert_eq!(rows(&parsed)[0]["body_mass_g"], 5000);
        let columns = json!({"instances": {"island": ["Dream", "Biscoe"], "year": [2007, 2008]}});
        let parsed = parse_ok("application/json", columns.to_string().as_bytes());
        assert_eq!(
            rows(&parsed)[1],
            json!({"island": "Biscoe", "year": 2008})
                .as_object()
                .unwrap()
                .clone()
        );
        let empty = parse_ok("application/json", br#"{"inputs": {}}"#);
        assert!(empty.rows.is_empty());
    }

    #[test]
    fn predictions_and_errors_have_mlflows_shape() {
        let limits = RowLimits {
            max_rows: 10,
            max_row_bytes: None,
        };
        let scored = score(
            model(),
            parse_ok("application/json", &fixture("records.json")),
            &limits,
        )
        .unwrap();
        let body = predictions(&scored);
        let rows = body["predictions"].as_array().unwrap();
        assert_eq!(rows.len(), 6);
        let first = rows[0].as_object().unwrap();
        let mut keys: Vec<&str> = first.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["class", "confidence", "inference_id", "probabilities"]
        );
        assert_eq!(first["class"], scored[0].prediction.class.as_str());
        let probs = first["probabilities"].as_object().unwrap();
        assert_eq!(probs.len(), model().class_names().len());
        assert_eq!(
            first["confidence"].as_f64().unwrap(),
            probs[scored[0].prediction.class.as_str()].as_f64().unwrap()
        );

        let e = error_body(&ProtocolError::Invalid(
            "dataframe_records[1]: unknown column 'x'".into(),
        ));
        assert_eq!(
            e,
            json!({"error_code": "INVALID_PARAMETER_VALUE", "message": "dataframe_records[1]: unknown column 'x'"})
        );
        assert_eq!(
            error_body(&ProtocolError::Malformed("m".into()))["error_code"],
            "BAD_REQUEST"
        );
        assert_eq!(
            error_body(&ProtocolError::UnsupportedMediaType("m".into()))["error_code"],
            "BAD_REQUEST"
        );
        assert_eq!(
            error_body(&ProtocolError::TooLarge("m".into()))["error_code"],
            "REQUEST_LIMIT_EXCEEDED"
        );
        let internal = error_body(&ProtocolError::Internal("secret".into()));
        assert_eq!(internal["error_code"], "INTERNAL_ERROR");
        assert!(!internal["message"].as_str().unwrap().contains("secret"));
    }
}
