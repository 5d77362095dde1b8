//! The Open Inference Protocol ("V2", spoken by KServe, Triton, MLServer and Seldon) over REST:
//! `POST /v2/models/{name}/infer` and `GET /v2/models/{name}`.
//!
//! A tabular model takes its rows as tensors, in either of two layouts:
//! - one tensor per column, named after it, of shape `[n]` or `[n, 1]`; missing columns are
//!   missing values, as in a JSON row;
//! - one tensor of shape `[n, k]`, named anything but a column, whose k columns follow the
//!   model's schema order (see [`model_metadata`]).
//!
//! An image column's tensor is either `[n, height, width]` (or `[n, 1, height, width]`, or
//! `[n, height * width]`) of pixel values in the column's range, or BYTES `[n]` of base64 PNGs.
//!
//! `data` is row-major, flat or nested. Elements must match the declared `datatype`: strings
//! for `BYTES`, whole numbers for the `INT`/`UINT` types, numbers for `FP16`/`FP32`/`FP64`,
//! `true`/`false` for `BOOL` (read as 1/0 for a numeric column, `"true"`/`"false"` for a
//! categorical one). JSON has no NaN, so `null` stands for a missing value in any tensor; the
//! binary tensor extension is not supported.
//!
//! The response has four tensors (or those named in the request's `outputs`): `class` (BYTES
//! `[n]`), `probabilities` (FP32 `[n, c]`, columns in the order of the tensor's
//! `parameters.classes`), `confidence` (FP32 `[n]`) and `inference_id` (BYTES `[n]`).
//! Errors are `{"error": "..."}`, as the protocol specifies.

use serde_json::{Map, Value, json};

use super::{Parsed, ProtocolError, Row, RowOrigin, ScoredRow, json_kind, parse_json};
use petrel_ml::{ColumnKind, Schema};

/// The tensor datatypes of the protocol that JSON can carry (FP16 as JSON numbers).
const DATATYPES: [&str; 13] = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "FP32", "FP64", "BYTES",
];

/// The output tensors, in the order a response lists them.
pub const OUTPUTS: [&str; 4] = ["class", "probabilities", "confidence", "inference_id"];

/// What the model's platform is called in metadata: Petrel's own MLP bundle.
pub const PLATFORM: &str = "petrel_mlp";

/// A parsed inference request.
#[derive(Clone, Debug, PartialEq)]
pub struct InferRequest {
    /// The request's `id`, echoed in the response.
    pub id: Option<String>,
    /// One row per position along the tensors' first dimension.
    pub rows: Parsed,
    /// The outputs asked for, in the request's order; `None` for all of them.
    pub outputs: Option<Vec<String>>,
}

/// One input tensor after its header is checked, with its data flattened.
struct Tensor {
    name: String,
    rows: usize,
    cols: usize,
    /// Dimensions of its shape: beyond 2 only for an image column's tensor.
    rank: usize,
    datatype: String,
    data: Vec<Value>,
}

/// Parses an inference request body against the model's schema.
pub fn parse_infer(body: &[u8], schema: &Schema) -> Result<InferRequest, ProtocolError> {
    let bad = |m: String| Err(ProtocolError::Malformed(m));
    let value = parse_json(body)?;
    let Value::Object(mut obj) = value else {
        return bad(format!(
            "the body must be an inference request object with inputs; got {}",
            json_kind(&value)
        ));
    };
    let id = match obj.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => return bad(format!("id must be a string; got {}", json_kind(&other))),
    };
    match obj.get("parameters") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(other) => {
            return bad(format!(
                "parameters must be an object; got {}",
                json_kind(other)
            ));
        }
    }
    let outputs = match obj.remove("outputs") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(requested_outputs(items)?),
        Some(other) => {
            return bad(format!(
                "outputs must be a list of {{\"name\": ...}} objects; got {}",
                json_kind(&other)
            ));
        }
    };
    let inputs = match obj.remove("inputs") {
        Some(Value::Array(inputs)) if !inputs.is_empty() => inputs,
        Some(Value::Array(_)) => return bad("inputs is empty: send at least one tensor".into()),
        Some(other) => {
            return bad(format!(
                "inputs must be a list of tensors; got {}",
                json_kind(&other)
            ));
        }
        None => return bad("the request lacks inputs, its list of tensors".into()),
    };
    let tensors = inputs
        .into_iter()
        .enumerate()
        .map(|(i, t)| tensor(i, t))
        .collect::<Result<Vec<_>, _>>()?;
    let rows = if let [only] = &tensors[..]
        && schema.feature_index(&only.name).is_none()
        && only.name != schema.target
        && only.cols > 1
    {
        matrix(only, schema)?
    } else {
        by_column(&tensors, schema)?
    };
    Ok(InferRequest {
        id,
        rows: Parsed::anonymous(RowOrigin::Tensors, rows),
        outputs,
    })
}

fn requested_outputs(items: Vec<Value>) -> Result<Vec<String>, ProtocolError> {
    let mut names = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let name = item.get("name").and_then(Value::as_str).ok_or_else(|| {
            ProtocolError::Malformed(format!("outputs[{i}] must be an object with a name"))
        })?;
        if !OUTPUTS.contains(&name) {
            return Err(ProtocolError::Malformed(format!(
                "outputs[{i}] asks for {name:?}; this model's outputs are {}",
                OUTPUTS.join(", ")
            )));
        }
        if names.iter().any(|n| n == name) {
            return Err(ProtocolError::Malformed(format!(
                "outputs[{i}] asks for {name:?} a second time"
            )));
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

/// Checks one input tensor's header and data against each other.
fn tensor(i: usize, value: Value) -> Result<Tensor, ProtocolError> {
    let bad = |m: String| ProtocolError::Malformed(format!("inputs[{i}]{m}"));
    let Value::Object(mut t) = value else {
        return Err(bad(format!(
            " must be a tensor object (name, shape, datatype, data); got {}",
            json_kind(&value)
        )));
    };
    let name = match t.remove("name") {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => return Err(bad(".name must be a non-empty string".into())),
    };
    let at = |m: String| ProtocolError::Malformed(format!("inputs[{i}] ({name}){m}"));
    let shape: Vec<usize> = match t.remove("shape") {
        Some(Value::Array(dims)) => dims
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| at(".shape must be a list of non-negative whole numbers".into()))?,
        _ => {
            return Err(at(
                ".shape must be a list of dimensions, like [3] or [3, 1]".into(),
            ));
        }
    };
    // Beyond two dimensions, the rest is one image per row: [rows, height, width] or
    // [rows, 1, height, width].
    let (rows, cols) = match shape[..] {
        [n] => (n, 1),
        [n, k] => (n, k),
        [n, ref rest @ ..] if rest.len() <= 3 => (
            n,
            rest.iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| at(format!(".shape {shape:?} is too large")))?,
        ),
        _ => {
            return Err(at(format!(
                ".shape is {shape:?}; a tabular model takes [rows] or [rows, columns], an \
                 image column [rows, height, width]"
            )));
        }
    };
    let datatype = match t.remove("datatype") {
        Some(Value::String(s)) if DATATYPES.contains(&s.as_str()) => s,
        Some(Value::String(s)) => {
            return Err(at(format!(
                ".datatype {s:?} is not one of {}",
                DATATYPES.join(", ")
            )));
        }
        _ => return Err(at(".datatype must be a string such as FP32 or BYTES".into())),
    };
    let mut data = Vec::new();
    match t.remove("data") {
        Some(Value::Array(items)) => flatten(items, &mut data),
        Some(other) => {
            return Err(at(format!(
                ".data must be a list (flat or nested, row-major); got {}",
                json_kind(&other)
            )));
        }
        None => return Err(at(" lacks data".into())),
    }
    let expected = rows.saturating_mul(cols);
    if data.len() != expected {
        return Err(at(format!(
            " has {} values for shape {shape:?}, which needs {expected}",
            data.len()
        )));
    }
    for (j, v) in data.iter().enumerate() {
        if let Err(m) = check_element(&datatype, v) {
            return Err(at(format!(".data[{j}] {m}")));
        }
    }
    Ok(Tensor {
        name,
        rows,
        cols,
        rank: shape.len(),
        datatype,
        data,
    })
}

/// Row-major flattening of nested lists.
fn flatten(items: Vec<Value>, out: &mut Vec<Value>) {
    for item in items {
        match item {
            Value::Array(inner) => flatten(inner, out),
            other => out.push(other),
        }
    }
}

/// Whether an element fits its tensor's datatype (`null` always does: a missing value).
fn check_element(datatype: &str, v: &Value) -> Result<(), String> {
    let ok = match (datatype, v) {
        (_, Value::Null) => true,
        ("BYTES", Value::String(_)) => true,
        ("BOOL", Value::Bool(_)) => true,
        ("FP16" | "FP32" | "FP64", Value::Number(_)) => true,
        (t, Value::Number(n)) if t.starts_with("UINT") => n.is_u64(),
        (t, Value::Number(n)) if t.starts_with("INT") => n.is_i64() || n.is_u64(),
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let want = match datatype {
        "BYTES" => "a string",
        "BOOL" => "true or false",
        "FP16" | "FP32" | "FP64" => "a number",
        t if t.starts_with("UINT") => "a non-negative whole number",
        _ => "a whole number",
    };
    Err(format!(
        "is {} but a {datatype} tensor holds {want}",
        describe(v)
    ))
}

fn describe(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        other => json_kind(other).to_owned(),
    }
}

/// A BOOL element as the column's kind reads it; everything else is passed on as it is, for
/// [`petrel_ml::LoadedModel::row_from_json`] to check against the column.
fn cell(v: &Value, datatype: &str, kind: Option<ColumnKind>) -> Value {
    match (datatype, v, kind) {
        ("BOOL", Value::Bool(b), Some(ColumnKind::Numeric)) => json!(u8::from(*b)),
        ("BOOL", Value::Bool(b), _) => Value::String(b.to_string()),
        _ => v.clone(),
    }
}

/// One tensor per column.
fn by_column(tensors: &[Tensor], schema: &Schema) -> Result<Vec<Row>, ProtocolError> {
    let names: Vec<&str> = schema.features.iter().map(|c| c.name.as_str()).collect();
    let first = &tensors[0];
    for (i, t) in tensors.iter().enumerate() {
        let kind = schema
            .feature_index(&t.name)
            .map(|c| schema.features[c].kind);
        if kind.is_none() && t.name != schema.target {
            return Err(ProtocolError::Malformed(format!(
                "inputs[{i}] is named {:?}, which is not a column of this model; name each \
                 tensor after a column ({}), or send one [rows, {}] tensor with the columns \
                 in that order",
                t.name,
                names.join(", "),
                names.len()
            )));
        }
        let pixels = schema
            .feature_index(&t.name)
            .and_then(|c| schema.features[c].image)
            .map(|spec| spec.pixels());
        if t.rank > 2 && pixels.is_none() {
            return Err(ProtocolError::Malformed(format!(
                "inputs[{i}] ({}) has {} dimensions; a tabular model takes [rows] or [rows, \
                 columns], and only an image column [rows, height, width]",
                t.name, t.rank
            )));
        }
        if t.cols != 1 && Some(t.cols) != pixels {
            if let Some(pixels) = pixels {
                return Err(ProtocolError::Malformed(format!(
                    "inputs[{i}] ({}) has {} values per row; an image column takes {pixels} \
                     pixels per row (shape [rows, height, width]) or one base64 PNG per row \
                     (BYTES, shape [rows])",
                    t.name, t.cols
                )));
            }
            return Err(ProtocolError::Malformed(format!(
                "inputs[{i}] ({}) has {} columns; a tensor named after a column has shape \
                 [rows] or [rows, 1]",
                t.name, t.cols
            )));
        }
        if let Some(j) = tensors[..i].iter().position(|o| o.name == t.name) {
            return Err(ProtocolError::Malformed(format!(
                "inputs[{i}] and inputs[{j}] are both named {:?}",
                t.name
            )));
        }
        if t.rows != first.rows {
            return Err(ProtocolError::Malformed(format!(
                "inputs[{i}] ({}) has {} rows but inputs[0] ({}) has {}: every tensor needs \
                 one value per row",
                t.name, t.rows, first.name, first.rows
            )));
        }
    }
    Ok((0..first.rows)
        .map(|r| {
            tensors
                .iter()
                .map(|t| {
                    let kind = schema
                        .feature_index(&t.name)
                        .map(|c| schema.features[c].kind);
                    let value = if t.cols == 1 {
                        cell(&t.data[r], &t.datatype, kind)
                    } else {
                        Value::Array(t.data[r * t.cols..(r + 1) * t.cols].to_vec())
                    };
                    (t.name.clone(), value)
                })
                .collect()
        })
        .collect())
}

/// One `[n, k]` tensor whose columns follow the schema.
fn matrix(t: &Tensor, schema: &Schema) -> Result<Vec<Row>, ProtocolError> {
    let k = schema.features.len();
    if t.rank > 2 {
        return Err(ProtocolError::Malformed(format!(
            "inputs[0] ({}) has {} dimensions; a tabular model takes [rows] or [rows, columns], \
             and only a tensor named after an image column [rows, height, width]",
            t.name, t.rank
        )));
    }
    if t.cols != k {
        let names: Vec<&str> = schema.features.iter().map(|c| c.name.as_str()).collect();
        return Err(ProtocolError::Malformed(format!(
            "inputs[0] ({}) has {} columns; a single [rows, columns] tensor needs the model's \
             {k} columns, in order: {}",
            t.name,
            t.cols,
            names.join(", ")
        )));
    }
    Ok(t.data
        .chunks(k)
        .map(|row| {
            schema
                .features
                .iter()
                .zip(row)
                .map(|(c, v)| (c.name.clone(), cell(v, &t.datatype, Some(c.kind))))
                .collect::<Map<_, _>>()
        })
        .collect())
}

/// The inference response for `scored` (see the module docs). `class_names` gives the order of
/// the probabilities' columns; `outputs` limits the tensors to those asked for.
pub fn infer_response(
    model_name: &str,
    model_version: &str,
    id: &str,
    class_names: &[String],
    scored: &[ScoredRow],
    outputs: Option<&[String]>,
) -> Value {
    let n = scored.len();
    let output = |name: &str| -> Value {
        match name {
            "class" => json!({
                "name": "class", "shape": [n], "datatype": "BYTES",
                "data": scored.iter().map(|s| s.prediction.class.as_str()).collect::<Vec<_>>(),
            }),
            "probabilities" => json!({
                "name": "probabilities", "shape": [n, class_names.len()], "datatype": "FP32",
                "parameters": { "classes": class_names },
                "data": scored
                    .iter()
                    .flat_map(|s| {
                        class_names
                            .iter()
                            .map(|c| s.prediction.probabilities.get(c).copied().unwrap_or(0.0))
                    })
                    .collect::<Vec<f32>>(),
            }),
            "confidence" => json!({
                "name": "confidence", "shape": [n], "datatype": "FP32",
                "data": scored.iter().map(|s| s.prediction.confidence).collect::<Vec<_>>(),
            }),
            _ => json!({
                "name": "inference_id", "shape": [n], "datatype": "BYTES",
                "data": scored.iter().map(|s| s.inference_id.as_str()).collect::<Vec<_>>(),
            }),
        }
    };
    let names: Vec<&str> = match outputs {
        Some(asked) => asked.iter().map(String::as_str).collect(),
        None => OUTPUTS.to_vec(),
    };
    json!({
        "model_name": model_name,
        "model_version": model_version,
        "id": id,
        "outputs": names.into_iter().map(output).collect::<Vec<_>>(),
    })
}

/// `GET /v2/models/{name}`: the model's name, versions, platform, and its input and output
/// tensors. Inputs are the schema's columns, in order (the order of a single `[n, k]` tensor):
/// numeric columns as FP64, categorical ones as BYTES, each of shape `[-1]` (any number of
/// rows).
pub fn model_metadata(
    model_name: &str,
    versions: &[String],
    schema: &Schema,
    class_names: &[String],
) -> Value {
    let inputs: Vec<Value> = schema
        .features
        .iter()
        .map(|c| {
            let datatype = match c.kind {
                ColumnKind::Numeric => "FP64",
                ColumnKind::Categorical | ColumnKind::Text => "BYTES",
                ColumnKind::Image => "FP32",
            };
            match c.image {
                Some(spec) => json!({
                    "name": c.name, "datatype": datatype,
                    "shape": [-1, spec.height, spec.width],
                    "parameters": { "max_value": spec.max_value,
                                    "also": "BYTES of shape [-1]: one base64 PNG per row" },
                }),
                None => json!({ "name": c.name, "datatype": datatype, "shape": [-1] }),
            }
        })
        .collect();
    json!({
        "name": model_name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": [
            { "name": "class", "datatype": "BYTES", "shape": [-1] },
            { "name": "probabilities", "datatype": "FP32", "shape": [-1, class_names.len()],
              "parameters": { "classes": class_names } },
            { "name": "confidence", "datatype": "FP32", "shape": [-1] },
            { "name": "inference_id", "datatype": "BYTES", "shape": [-1] },
        ],
    })
}

/// The protocol's error body, `{"error": "..."}`.
pub fn error_body(e: &ProtocolError) -> Value {
    json!({ "error": e.client_message() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::{fixture, model};
    use crate::protocol::{RowLimits, score};
    use axum::http::StatusCode;

    fn schema() -> Schema {
        Schema::penguins()
    }

    fn parse(body: Value) -> Result<InferRequest, ProtocolError> {
        parse_infer(body.to_string().as_bytes(), &schema())
    }

    #[track_caller]
    fn refused(body: Value, needle: &str) {
        let err = parse(body).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{err}");
        assert!(err.to_string().contains(needle), "{err:?} lacks {needle:?}");
    }

    fn reference() -> Vec<Row> {
        let v: Value = serde_json::from_slice(&fixture("raw-records.json")).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_object().unwrap().clone())
            .collect()
    }

    #[test]
    fn one_tensor_per_column_gives_the_pandas_rows() {
        let req = parse_infer(&fixture("v2-columns.json"), &schema()).unwrap();
        assert_eq!(req.id.as_deref(), Some("fixture-1"));
        assert_eq!(req.outputs, None);
        assert_eq!(req.rows.origin, RowOrigin::Tensors);
        let rows: Vec<Row> = req.rows.features().cloned().collect();
        assert_eq!(rows, reference());
    }

    #[test]
    fn one_matrix_tensor_follows_the_schema_order() {
        let req = parse(json!({"inputs": [{
            "name": "input-0", "shape": [2, 7], "datatype": "BYTES",
            "data": [["Biscoe", "45.2", "14.8", "212", "5200", "female", "2009"],
                     ["Dream", null, null, null, null, null, "2008"]]
        }]}))
        .unwrap();
        let rows: Vec<Row> = req.rows.features().cloned().collect();
        assert_eq!(rows[0]["island"], "Biscoe");
        assert_eq!(rows[0]["body_mass_g"], "5200");
        assert_eq!(rows[1]["sex"], Value::Null);
        let limits = RowLimits {
            max_rows: 10,
            max_row_bytes: None,
        };
        let scored = score(model(), req.rows, &limits).unwrap();
        assert_eq!(scored.len(), 2);
        // Flat data is the same tensor.
        let flat = parse(json!({"inputs": [{
            "name": "x", "shape": [1, 7], "datatype": "FP64",
            "data": [1, 2, 3, 4, 5, 6, 7]
        }]}))
        .unwrap();
        assert_eq!(flat.rows.rows[0].features["year"], 7);
    }

    #[test]
    fn column_tensors_take_n_by_1_shapes_and_bools() {
        let req = parse(json!({"inputs": [
            {"name": "island", "shape": [2, 1], "datatype": "BYTES", "data": [["Dream"], ["Biscoe"]]},
            {"name": "year", "shape": [2], "datatype": "BOOL", "data": [true, false]},
            {"name": "sex", "shape": [2], "datatype": "BOOL", "data": [true, null]},
        ], "outputs": [{"name": "class"}], "parameters": {"content_type": "pd"}}))
        .unwrap();
        let rows: Vec<Row> = req.rows.features().cloned().collect();
        assert_eq!(rows[1]["island"], "Biscoe");
        assert_eq!(rows[0]["year"], 1);
        assert_eq!(rows[1]["year"], 0);
        assert_eq!(rows[0]["sex"], "true");
        assert_eq!(rows[1]["sex"], Value::Null);
        assert_eq!(req.outputs, Some(vec!["class".to_owned()]));
    }

    #[test]
    fn bad_requests_name_the_tensor_and_the_fix() {
        let col = |name: &str, shape: Value, dt: &str, data: Value| json!({"name": name, "shape": shape, "datatype": dt, "data": data});
        refused(
            json!([]),
            "inference request object with inputs; got a list",
        );
        refused(json!({}), "lacks inputs");
        refused(json!({"inputs": []}), "inputs is empty");
        refused(
            json!({"inputs": {}}),
            "inputs must be a list of tensors; got an object",
        );
        refused(json!({"id": 3, "inputs": []}), "id must be a string");
        refused(
            json!({"inputs": [], "parameters": []}),
            "parameters must be an object",
        );
        refused(json!({"inputs": [3]}), "inputs[0] must be a tensor object");
        refused(
            json!({"inputs": [{"shape": [1]}]}),
            "inputs[0].name must be a non-empty string",
        );
        refused(
            json!({"inputs": [col("island", json!([-1]), "BYTES", json!([]))]}),
            "inputs[0] (island).shape must be a list of non-negative whole numbers",
        );
        refused(
            json!({"inputs": [col("island", json!([1, 1, 1]), "BYTES", json!(["a"]))]}),
            "a tabular model takes [rows] or [rows, columns]",
        );
        refused(
            json!({"inputs": [col("island", json!([1]), "STRING", json!(["a"]))]}),
            "inputs[0] (island).datatype \"STRING\" is not one of BOOL",
        );
        refused(
            json!({"inputs": [col("island", json!([2]), "BYTES", json!(["a"]))]}),
            "inputs[0] (island) has 1 values for shape [2], which needs 2",
        );
        refused(
            json!({"inputs": [col("island", json!([1]), "BYTES", json!("a"))]}),
            "inputs[0] (island).data must be a list",
        );
        refused(
            json!({"inputs": [col("island", json!([1]), "BYTES", json!([1]))]}),
            "inputs[0] (island).data[0] is the number 1 but a BYTES tensor holds a string",
        );
        refused(
            json!({"inputs": [col("year", json!([1]), "INT64", json!([1.5]))]}),
            "is the number 1.5 but a INT64 tensor holds a whole number",
        );
        refused(
            json!({"inputs": [col("year", json!([1]), "UINT8", json!([-1]))]}),
            "a non-negative whole number",
        );
        refused(
            json!({"inputs": [col("body_mass_g", json!([1]), "FP32", json!(["x"]))]}),
            "is the string \"x\" but a FP32 tensor holds a number",
        );
        refused(
            json!({"inputs": [col("island", json!([1]), "BYTES", json!(["a"])), col("weight", json!([1]), "FP32", json!([1]))]}),
            "inputs[1] is named \"weight\", which is not a column of this model; name each tensor after a column (island, bill_length_mm",
        );
        refused(
            json!({"inputs": [col("island", json!([1]), "BYTES", json!(["a"])), col("island", json!([1]), "BYTES", json!(["b"]))]}),
            "inputs[1] and inputs[0] are both named \"island\"",
        );
        refused(
            json!({"inputs": [col("island", json!([2]), "BYTES", json!(["a", "b"])), col("year", json!([1]), "INT32", json!([1]))]}),
            "inputs[1] (year) has 1 rows but inputs[0] (island) has 2",
        );
        refused(
            json!({"inputs": [col("island", json!([1, 2]), "BYTES", json!(["a", "b"]))]}),
            "inputs[0] (island) has 2 columns; a tensor named after a column has shape [rows] or [rows, 1]",
        );
        refused(
            json!({"inputs": [col("x", json!([1, 3]), "FP32", json!([1, 2, 3]))]}),
            "a single [rows, columns] tensor needs the model's 7 columns, in order: island,",
        );
        refused(
            json!({"inputs": [col("island", json!([1]), "BYTES", json!(["a"]))], "outputs": [{"name": "logits"}]}),
            "outputs[0] asks for \"logits\"; this model's outputs are class, probabilities, confidence, inference_id",
        );
        refused(
            json!({"inputs": [col("island", json!([1]), "BYTES", json!(["a"]))], "outputs": [{"name": "class"}, {"name": "class"}]}),
            "a second time",
        );
        refused(
            json!({"inputs": [col("island", json!([1]), "BYTES", json!(["a"]))], "outputs": ["class"]}),
            "outputs[0] must be an object with a name",
        );
    }

    #[test]
    fn responses_carry_every_output_or_those_asked_for() {
        let req = parse_infer(&fixture("v2-columns.json"), &schema()).unwrap();
        let limits = RowLimits {
            max_rows: 10,
            max_row_bytes: None,
        };
        let scored = score(model(), req.rows, &limits).unwrap();
        let classes = model().class_names();
        let body = infer_response("penguins", "3", "fixture-1", classes, &scored, None);
        assert_eq!(body["model_name"], "penguins");
        assert_eq!(body["model_version"], "3");
        assert_eq!(body["id"], "fixture-1");
        let outputs = body["outputs"].as_array().unwrap();
        let names: Vec<&str> = outputs
            .iter()
            .map(|o| o["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, OUTPUTS);
        assert_eq!(outputs[0]["shape"], json!([6]));
        assert_eq!(outputs[0]["data"][0], scored[0].prediction.class.as_str());
        assert_eq!(outputs[1]["shape"], json!([6, classes.len()]));
        assert_eq!(outputs[1]["parameters"]["classes"], json!(classes));
        let probs = outputs[1]["data"].as_array().unwrap();
        assert_eq!(probs.len(), 6 * classes.len());
        // Row-major: row 4's probabilities follow the class order.
        for (c, name) in classes.iter().enumerate() {
            let got = probs[4 * classes.len() + c].as_f64().unwrap() as f32;
            assert_eq!(got, scored[4].prediction.probabilities[name]);
        }
        assert_eq!(outputs[2]["datatype"], "FP32");
        assert_eq!(outputs[3]["data"][5], scored[5].inference_id.as_str());

        let asked = ["confidence".to_owned(), "class".to_owned()];
        let body = infer_response("penguins", "3", "x", classes, &scored, Some(&asked));
        let names: Vec<&str> = body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["confidence", "class"]);
    }

    #[test]
    fn metadata_lists_the_schema_in_order() {
        let classes = vec!["a".to_owned(), "b".to_owned()];
        let meta = model_metadata("penguins", &["2".to_owned()], &schema(), &classes);
        assert_eq!(meta["name"], "penguins");
        assert_eq!(meta["versions"], json!(["2"]));
        assert_eq!(meta["platform"], PLATFORM);
        let inputs = meta["inputs"].as_array().unwrap();
        assert_eq!(inputs.len(), 7);
        assert_eq!(
            inputs[0],
            json!({"name": "island", "datatype": "BYTES", "shape": [-1]})
        );
        assert_eq!(inputs[1]["datatype"], "FP64");
        assert_eq!(meta["outputs"][1]["shape"], json!([-1, 2]));
        assert_eq!(
            error_body(&ProtocolError::Malformed("bad".into())),
            json!({"error": "bad"})
        );
    }
}
