//! The request and response shapes other serving tools speak, translated to and from Petrel's
//! rows, so that clients written for MLflow, SageMaker or KServe call Petrel unchanged.
//!
//! Everything here is pure: bytes and a schema in, rows or JSON out, no I/O. The HTTP layers
//! (the full service's routes and the container mode in [`crate::container`]) choose the
//! protocol by route and content type, call [`score`] between parsing and formatting, and render
//! a [`ProtocolError`] in the protocol's own error shape.
//!
//! - [`mlflow`]: MLflow's scoring protocol (`dataframe_split`, `dataframe_records`, `instances`,
//!   `inputs`, CSV) and its `{"predictions": [...]}` answer.
//! - [`v2`]: the Open Inference Protocol (KServe / Triton "V2"): tensors in, tensors out, and
//!   the model metadata document.
//! - [`parse_invocation`]: SageMaker's `POST /invocations`, which takes MLflow bodies and
//!   Petrel's native `{"rows": [...]}` body alike.
//!
//! Every parser yields [`Parsed`] rows (column name to JSON value, the shape
//! [`petrel_ml::LoadedModel::row_from_json`] checks) and remembers where they came from, so an
//! error about a row names it as the client wrote it (`dataframe_split.data[3]`, `CSV row 5`,
//! `rows[2]`) instead of by an internal position.

pub mod http;
pub mod mlflow;
pub mod v2;

use std::collections::HashSet;

use axum::http::StatusCode;
use petrel_api::predictor::{PredictRequest, PredictRow, RowPrediction};
use petrel_ml::{LoadedModel, MlError, Prediction};
use serde_json::{Map, Value};

/// One input row: column name to number, string or null, as [`LoadedModel::row_from_json`]
/// takes it.
pub type Row = Map<String, Value>;

/// Longest inference id a caller may choose, as `POST /v1/predict` allows.
pub const MAX_INFERENCE_ID_LEN: usize = 128;

/// Why a request cannot be answered. Each variant is one HTTP status; messages are written for
/// the client and name the field, row or header at fault, never an internal type.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    /// The content type is not one this protocol reads (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body cannot be read as this protocol's shape: not JSON, a field of the wrong type,
    /// no input field or two of them (400).
    #[error("{0}")]
    Malformed(String),
    /// The body is well formed but its rows do not fit the model: an unknown column, a value
    /// of the wrong type, too many rows (422).
    #[error("{0}")]
    Invalid(String),
    /// The body is larger than the server accepts (413).
    #[error("{0}")]
    TooLarge(String),
    /// The request names a model or version this server does not serve (404).
    #[error("{0}")]
    NotFound(String),
    /// No model is loaded yet (503).
    #[error("{0}")]
    Unavailable(String),
    /// A model or server fault the client cannot fix (500). The message is for the log only;
    /// the renderers show the client a generic one.
    #[error("{0}")]
    Internal(String),
}

impl ProtocolError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client may read: the message, except for internal errors, whose details stay
    /// in the log.
    pub fn client_message(&self) -> &str {
        match self {
            Self::Internal(_) => "internal error; see the service log",
            Self::UnsupportedMediaType(m)
            | Self::Malformed(m)
            | Self::Invalid(m)
            | Self::TooLarge(m)
            | Self::NotFound(m)
            | Self::Unavailable(m) => m,
        }
    }
}

/// Where a request's rows came from, so that errors name a row the way the client wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowOrigin {
    /// Petrel's native `{"rows": [...]}`: `rows[i]`.
    Native,
    /// MLflow's `dataframe_split`: `dataframe_split.data[i]`.
    DataframeSplit,
    /// MLflow's `dataframe_records`: `dataframe_records[i]`.
    DataframeRecords,
    /// MLflow's `instances`: `instances[i]` (for column-oriented instances, row i of each list).
    Instances,
    /// MLflow's `inputs`: `inputs[i]` (for column-oriented inputs, row i of each list).
    Inputs,
    /// An MLflow 1.x body sent with `format=pandas-split`: `data[i]`.
    RawSplit,
    /// An MLflow 1.x body sent with `format=pandas-records`: `[i]`, the list's element.
    RawRecords,
    /// A CSV body: `CSV row n`, counting data rows from 1 after the header (not lines, which a
    /// quoted newline would shift).
    Csv,
    /// Open Inference Protocol tensors: `row i of the inputs`.
    Tensors,
}

impl RowOrigin {
    /// How an error names row `i` (0-based) of a request.
    pub fn name(self, i: usize) -> String {
        match self {
            Self::Native => format!("rows[{i}]"),
            Self::DataframeSplit => format!("dataframe_split.data[{i}]"),
            Self::DataframeRecords => format!("dataframe_records[{i}]"),
            Self::Instances => format!("instances[{i}]"),
            Self::Inputs => format!("inputs[{i}]"),
            Self::RawSplit => format!("data[{i}]"),
            Self::RawRecords => format!("record [{i}]"),
            Self::Csv => format!("CSV row {}", i + 1),
            Self::Tensors => format!("row {i} of the inputs"),
        }
    }
}

/// Rows parsed from a request, with their origin for error messages and the caller's inference
/// ids (only the native body carries them; other protocols have none and get fresh ones).
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub origin: RowOrigin,
    pub rows: Vec<PredictRow>,
}

impl Parsed {
    /// Rows without inference ids, as every protocol but the native one produces them.
    pub fn anonymous(origin: RowOrigin, rows: Vec<Row>) -> Self {
        Self {
            origin,
            rows: rows
                .into_iter()
                .map(|features| PredictRow {
                    inference_id: None,
                    features,
                })
                .collect(),
        }
    }

    /// The feature maps alone, in order.
    pub fn features(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().map(|r| &r.features)
    }
}

/// Per-request limits the caller enforces in [`score`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowLimits {
    /// Most rows one request may carry.
    pub max_rows: usize,
    /// Largest row, as JSON bytes of its features. The full service passes the prediction
    /// log's limit (a logged row must fit one event); the container mode logs nothing and
    /// passes `None`, leaving the body limit to bound rows.
    pub max_row_bytes: Option<usize>,
}

/// One answered row: its inference id (the caller's, or a fresh UUID v7), the features as sent
/// (for the prediction log) and the model's prediction.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredRow {
    pub inference_id: String,
    pub features: Row,
    pub prediction: Prediction,
}

impl ScoredRow {
    /// The native API's answer for this row.
    pub fn to_native(&self, model_name: &str, model_version: i32) -> RowPrediction {
        RowPrediction {
            inference_id: self.inference_id.clone(),
            class: self.prediction.class.clone(),
            probabilities: self.prediction.probabilities.clone(),
            confidence: self.prediction.confidence,
            model_name: model_name.to_owned(),
            model_version,
        }
    }
}

/// Validates every row against `model`'s schema and the limits, assigns inference ids and
/// predicts, with the semantics of `POST /v1/predict`: no rows or too many is refused; a row
/// that does not fit the schema, a bad or repeated inference id, or values too far out for the
/// model's arithmetic is refused naming the row; all rows are answered or none.
///
/// Takes one model snapshot so every row is answered by the same version. Prediction is a few
/// microseconds per row, cheap enough to run on the request's task.
pub fn score(
    model: &LoadedModel,
    parsed: Parsed,
    limits: &RowLimits,
) -> Result<Vec<ScoredRow>, ProtocolError> {
    let Parsed { origin, rows } = parsed;
    if rows.is_empty() {
        return Err(ProtocolError::Invalid(
            "the request holds no rows: send at least one".into(),
        ));
    }
    if rows.len() > limits.max_rows {
        return Err(ProtocolError::Invalid(format!(
            "{} rows in one request; the limit is {}",
            rows.len(),
            limits.max_rows
        )));
    }
    let mut features = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    let mut seen = HashSet::new();
    for (i, row) in rows.iter().enumerate() {
        if let Some(limit) = limits.max_row_bytes {
            let size = serde_json::to_vec(&row.features).map_or(usize::MAX, |v| v.len());
            if size > limit {
                return Err(ProtocolError::Invalid(format!(
                    "{} is {size} bytes of JSON; the limit is {limit} bytes",
                    origin.name(i)
                )));
            }
        }
        let parsed = model
            .row_from_json(&row.features)
            .map_err(|e| ProtocolError::Invalid(format!("{}: {e}", origin.name(i))))?;
        features.push(parsed);
        let id = match &row.inference_id {
            Some(id) => {
                check_inference_id(id)
                    .map_err(|m| ProtocolError::Invalid(format!("{}.{m}", origin.name(i))))?;
                id.clone()
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        if !seen.insert(id.clone()) {
            return Err(ProtocolError::Invalid(format!(
                "{}.inference_id {id:?} appears twice in the request",
                origin.name(i)
            )));
        }
        ids.push(id);
    }
    let predictions = model.try_predict(&features).map_err(|e| match e {
        MlError::OutOfRange { row } => ProtocolError::Invalid(format!("{}: {e}", origin.name(row))),
        other => ProtocolError::Internal(format!("prediction failed: {other}")),
    })?;
    Ok(rows
        .into_iter()
        .zip(ids)
        .zip(predictions)
        .map(|((row, inference_id), prediction)| ScoredRow {
            inference_id,
            features: row.features,
            prediction,
        })
        .collect())
}

/// Checks a caller's inference id: 1 to [`MAX_INFERENCE_ID_LEN`] printable characters, since
/// it is stored, logged and joined on later.
fn check_inference_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_INFERENCE_ID_LEN || id.chars().any(char::is_control) {
        return Err(format!(
            "inference_id must be 1 to {MAX_INFERENCE_ID_LEN} printable characters"
        ));
    }
    Ok(())
}

/// A `Content-Type` split into its lower-cased essence (`application/json`) and parameters
/// (`charset=utf-8`), names lower-cased and values unquoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaType {
    pub essence: String,
    pub params: Vec<(String, String)>,
}

impl MediaType {
    /// Parses a header value; `None` when it has no `type/subtype`.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.split(';');
        let essence = parts.next()?.trim().to_ascii_lowercase();
        let (kind, sub) = essence.split_once('/')?;
        if kind.is_empty() || sub.is_empty() {
            return None;
        }
        let params = parts
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (
                    k.trim().to_ascii_lowercase(),
                    v.trim().trim_matches('"').to_owned(),
                )
            })
            .collect();
        Some(Self { essence, params })
    }

    /// The value of parameter `name`, if given.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Refuses a charset other than UTF-8 (the only one JSON allows, and all we decode).
    fn require_utf8(&self) -> Result<(), ProtocolError> {
        match self.param("charset") {
            None => Ok(()),
            Some(c) if c.eq_ignore_ascii_case("utf-8") || c.eq_ignore_ascii_case("utf8") => Ok(()),
            Some(c) => Err(ProtocolError::UnsupportedMediaType(format!(
                "charset {c:?} is not supported; send UTF-8 text"
            ))),
        }
    }
}

/// What a SageMaker-style `POST /invocations` body turned out to be.
#[derive(Clone, Debug, PartialEq)]
pub enum Invocation {
    /// Petrel's native `{"rows": [{"inference_id"?, "features": {...}}]}`: answer with
    /// [`petrel_api::predictor::PredictResponse`], and errors, reading ones included, in
    /// Petrel's shape, which the native client reads.
    Native(Result<Parsed, ProtocolError>),
    /// An MLflow scoring body: answer with [`mlflow::predictions`].
    Mlflow(Parsed),
}

/// Reads an `/invocations` body. A JSON object with a `rows` key and none of MLflow's input
/// fields is Petrel's native body; everything else is read as MLflow's scoring protocol (see
/// [`mlflow::parse`]), including CSV and its 415 for other content types. An `Err` is an error
/// of MLflow's protocol (the endpoint's own), so render it with [`mlflow::error_body`].
pub fn parse_invocation(
    content_type: Option<&str>,
    body: &[u8],
    schema: &petrel_ml::Schema,
) -> Result<Invocation, ProtocolError> {
    let media = content_type.and_then(MediaType::parse);
    if let Some(m) = &media
        && m.essence == "application/json"
        && m.param("format").is_none()
    {
        m.require_utf8()?;
        let value = parse_json(body)?;
        if let Value::Object(obj) = &value
            && obj.contains_key("rows")
            && !mlflow::INPUT_FIELDS.iter().any(|f| obj.contains_key(*f))
        {
            return Ok(Invocation::Native(native(value)));
        }
        return mlflow::parse_json_value(value, schema).map(Invocation::Mlflow);
    }
    mlflow::parse(content_type, body, schema).map(Invocation::Mlflow)
}

/// Parses JSON text, with an error that says where it broke.
pub(crate) fn parse_json(body: &[u8]) -> Result<Value, ProtocolError> {
    serde_json::from_slice(body)
        .map_err(|e| ProtocolError::Malformed(format!("the body is not valid JSON: {e}")))
}

/// Reads Petrel's native body by hand rather than through serde, so that every mistake is named
/// by its path (`rows[2].features`) in words, and unknown fields are refused instead of
/// silently dropped.
pub fn native(value: Value) -> Result<Parsed, ProtocolError> {
    let bad = |m: String| Err(ProtocolError::Malformed(m));
    let Value::Object(mut obj) = value else {
        return bad(format!(
            "the body must be a JSON object with a rows list; got {}",
            json_kind(&value)
        ));
    };
    if let Some(other) = obj.keys().find(|k| *k != "rows") {
        return bad(format!("unknown field {other:?}: the body holds only rows"));
    }
    let rows = match obj.remove("rows") {
        Some(Value::Array(rows)) => rows,
        Some(other) => return bad(format!("rows must be a list; got {}", json_kind(&other))),
        None => return bad("the body lacks rows".into()),
    };
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.into_iter().enumerate() {
        let Value::Object(mut row) = row else {
            return bad(format!(
                "rows[{i}] must be an object with features; got {}",
                json_kind(&row)
            ));
        };
        if let Some(other) = row
            .keys()
            .find(|k| *k != "features" && *k != "inference_id")
        {
            return bad(format!(
                "rows[{i}] has unknown field {other:?}: a row holds features and optionally \
                 inference_id"
            ));
        }
        let features = match row.remove("features") {
            Some(Value::Object(f)) => f,
            Some(other) => {
                return bad(format!(
                    "rows[{i}].features must be an object of column name to value; got {}",
                    json_kind(&other)
                ));
            }
            None => return bad(format!("rows[{i}] lacks features")),
        };
        let inference_id = match row.remove("inference_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                return bad(format!(
                    "rows[{i}].inference_id must be a string; got {}",
                    json_kind(&other)
                ));
            }
        };
        out.push(PredictRow {
            inference_id,
            features,
        });
    }
    Ok(Parsed {
        origin: RowOrigin::Native,
        rows: out,
    })
}

/// The native body parsed by [`native`], for callers that hold a typed request already.
impl From<PredictRequest> for Parsed {
    fn from(req: PredictRequest) -> Self {
        Self {
            origin: RowOrigin::Native,
            rows: req.rows,
        }
    }
}

/// A JSON value's kind in words, for error messages.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use petrel_ml::{ModelBundle, Schema};
    use serde_json::json;
    use std::sync::OnceLock;

    /// A small model on the penguins schema, trained once for this crate's unit tests.
    pub(crate) fn model() -> &'static LoadedModel {
        static MODEL: OnceLock<LoadedModel> = OnceLock::new();
        MODEL.get_or_init(|| {
            let csv = std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../data/penguins.csv"
            ))
            .unwrap();
            let report = petrel_ml::parse_csv(&csv, &Schema::penguins()).unwrap();
            let config = petrel_ml::TrainConfig {
                epochs: 5,
                ..Default::default()
            };
            let bundle: ModelBundle =
                petrel_ml::train_classifier(&report.table, &config, &mut |_, _| {}).unwrap();
            bundle.load().unwrap()
        })
    }

    /// Reads a fixture written by `scripts/protocol-fixtures.py`.
    pub(crate) fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn limits() -> RowLimits {
        RowLimits {
            max_rows: 3,
            max_row_bytes: Some(200),
        }
    }

    fn row(v: Value) -> Row {
        v.as_object().unwrap().clone()
    }

    fn adelie() -> Row {
        row(
            json!({"island": "Torgersen", "bill_length_mm": 39.1, "bill_depth_mm": 18.7,
            "flipper_length_mm": 181, "body_mass_g": 3750, "sex": "male", "year": 2007}),
        )
    }

    #[test]
    fn score_answers_every_row_and_keeps_callers_ids() {
        let parsed = Parsed {
            origin: RowOrigin::Native,
            rows: vec![
                PredictRow {
                    inference_id: Some("a-1".into()),
                    features: adelie(),
                },
                PredictRow {
                    inference_id: None,
                    features: row(json!({"island": "Biscoe"})),
                },
            ],
        };
        let scored = score(model(), parsed, &limits()).unwrap();
        assert_eq!(scored.len(), 2);
        assert_eq!(scored[0].inference_id, "a-1");
        assert_eq!(scored[0].features, adelie());
        assert!(uuid::Uuid::parse_str(&scored[1].inference_id).is_ok());
        for s in &scored {
            let total: f32 = s.prediction.probabilities.values().sum();
            assert!((total - 1.0).abs() < 1e-4, "{s:?}");
        }
        let native = scored[0].to_native("penguins", 3);
        assert_eq!(native.model_version, 3);
        assert_eq!(native.class, scored[0].prediction.class);
    }

    #[test]
    fn score_refuses_what_predict_refuses_naming_the_row() {
        let refuse = |origin, rows: Vec<PredictRow>, needle: &str| {
            let err = score(model(), Parsed { origin, rows }, &limits()).unwrap_err();
            assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY, "{err}");
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        };
        let anon = |f: Row| PredictRow {
            inference_id: None,
            features: f,
        };
        refuse(RowOrigin::Native, vec![], "no rows");
        refuse(
            RowOrigin::Native,
            vec![anon(adelie()); 4],
            "4 rows in one request; the limit is 3",
        );
        refuse(
            RowOrigin::DataframeSplit,
            vec![anon(adelie()), anon(row(json!({"islnd": "Dream"})))],
            "dataframe_split.data[1]: unknown column 'islnd'",
        );
        refuse(
            RowOrigin::Csv,
            vec![anon(row(json!({"body_mass_g": "heavy"})))],
            "CSV row 1: invalid value for column 'body_mass_g': 'heavy' is not a number",
        );
        refuse(
            RowOrigin::Inputs,
            vec![anon(adelie()), anon(row(json!({"body_mass_g": 1e300})))],
            "inputs[1]: feature values are outside the range",
        );
        refuse(
            RowOrigin::Native,
            vec![anon(row(json!({"sex": "x".repeat(300)})))],
            "rows[0] is 310 bytes of JSON; the limit is 200 bytes",
        );
        let with_id = |id: &str| PredictRow {
            inference_id: Some(id.into()),
            features: adelie(),
        };
        refuse(
            RowOrigin::Native,
            vec![with_id("")],
            "rows[0].inference_id must be 1 to 128 printable characters",
        );
        refuse(
            RowOrigin::Native,
            vec![with_id("x"), with_id("x")],
            "rows[1].inference_id \"x\" appears twice",
        );
    }

    #[test]
    fn native_bodies_are_read_with_clear_errors() {
        let parsed = native(json!({"rows": [
            {"inference_id": "q", "features": {"island": "Dream"}},
            {"features": {}}
        ]}))
        .unwrap();
        assert_eq!(parsed.origin, RowOrigin::Native);
        assert_eq!(parsed.rows[0].inference_id.as_deref(), Some("q"));
        assert_eq!(parsed.rows[1].features, Row::new());
        let typed: Parsed = PredictRequest {
            rows: parsed.rows.clone(),
        }
        .into();
        assert_eq!(typed, parsed);

        let refuse = |v: Value, needle: &str| {
            let err = native(v).unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        };
        refuse(
            json!([]),
            "must be a JSON object with a rows list; got a list",
        );
        refuse(json!({"rows": 1}), "rows must be a list; got a number");
        refuse(json!({"rows": [], "x": 1}), "unknown field \"x\"");
        refuse(json!({"rows": [3]}), "rows[0] must be an object");
        refuse(json!({"rows": [{}]}), "rows[0] lacks features");
        refuse(
            json!({"rows": [{"features": []}]}),
            "rows[0].features must be an object of column name to value; got a list",
        );
        refuse(
            json!({"rows": [{"features": {}, "inference_id": 7}]}),
            "rows[0].inference_id must be a string; got a number",
        );
        refuse(
            json!({"rows": [{"features": {}, "id": "x"}]}),
            "rows[0] has unknown field \"id\"",
        );
    }

    #[test]
    fn invocations_tell_native_bodies_from_mlflow_ones() {
        let schema = Schema::penguins();
        let json = Some("application/json");
        let body = br#"{"rows": [{"features": {"island": "Dream"}}]}"#;
        assert!(matches!(
            parse_invocation(json, body, &schema).unwrap(),
            Invocation::Native(Ok(p)) if p.rows.len() == 1
        ));
        // A native body's own mistakes stay native, for Petrel's error shape.
        let bad = parse_invocation(json, br#"{"rows": 3}"#, &schema).unwrap();
        assert!(
            matches!(bad, Invocation::Native(Err(ProtocolError::Malformed(_)))),
            "{bad:?}"
        );
        let parsed = parse_invocation(json, &fixture("split.json"), &schema).unwrap();
        assert!(matches!(&parsed, Invocation::Mlflow(p) if p.rows.len() == 6));
        let csv = parse_invocation(Some("text/csv"), &fixture("frame.csv"), &schema).unwrap();
        assert!(matches!(csv, Invocation::Mlflow(p) if p.rows.len() == 6));
        // `rows` next to an MLflow field is MLflow's problem of two fields, not a native body.
        let both = parse_invocation(
            json,
            br#"{"rows": [], "inputs": {"island": ["Dream"]}}"#,
            &schema,
        );
        assert!(matches!(both, Ok(Invocation::Mlflow(_))), "{both:?}");
        let err = parse_invocation(Some("application/xml"), b"<x/>", &schema).unwrap_err();
        assert_eq!(err.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let err = parse_invocation(json, b"{", &schema).unwrap_err();
        assert!(
            err.to_string().starts_with("the body is not valid JSON"),
            "{err}"
        );
        let err =
            parse_invocation(Some("application/json; charset=latin-1"), body, &schema).unwrap_err();
        assert_eq!(err.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn media_types_parse_case_and_parameters() {
        let m = MediaType::parse("Text/CSV; Charset=\"UTF-8\" ;").unwrap();
        assert_eq!(m.essence, "text/csv");
        assert_eq!(m.param("charset"), Some("UTF-8"));
        assert!(m.require_utf8().is_ok());
        assert!(MediaType::parse("json").is_none());
        assert!(MediaType::parse("/json").is_none());
    }

    #[test]
    fn internal_errors_hide_their_details() {
        let e = ProtocolError::Internal("weights are NaN".into());
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.client_message().contains("NaN"));
        let e = ProtocolError::Invalid("rows[0]: bad".into());
        assert_eq!(e.client_message(), "rows[0]: bad");
    }

    #[test]
    fn row_origins_name_rows_as_clients_wrote_them() {
        assert_eq!(RowOrigin::Csv.name(0), "CSV row 1");
        assert_eq!(RowOrigin::RawRecords.name(4), "record [4]");
        assert_eq!(RowOrigin::Tensors.name(1), "row 1 of the inputs");
    }
}
