//! Reading the body of `POST /v1/labels`: JSON (`{"labels": [...], "overwrite": false}`) or
//! CSV (a header `inference_id,label`, then one label per line), checked the same way and
//! turned into one batch sorted by inference id.

use axum::http::StatusCode;
use petrel_api::labeler::{LabelInput, LabelsRequest};
use petrel_runtime::http::ApiError;

/// Longest inference id, in bytes (the predictor's limit, so every served id can be labelled).
const MAX_ID_BYTES: usize = 128;
/// Longest label, in bytes: a class name, with room to spare, that keeps a `labels.joined`
/// event of [`crate::join::JOIN_CHUNK`] labels far below the NATS payload limit.
const MAX_LABEL_BYTES: usize = 256;

/// A request's labels, checked, one per inference id, sorted by id (bytewise, as Rust orders
/// strings). Both upserts take their row locks in this order, so concurrent batches never
/// deadlock on each other.
#[derive(Debug, Default, PartialEq)]
pub struct Batch {
    pub ids: Vec<String>,
    pub labels: Vec<String>,
}

/// The body's media type, as far as this endpoint cares.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Format {
    Json,
    Csv,
}

impl Format {
    /// The format a `Content-Type` names: `application/json` (or `+json`) or `text/csv`, with
    /// any parameters. Anything else is `415`.
    pub fn of(content_type: Option<&str>) -> Result<Self, ApiError> {
        let essence = content_type
            .and_then(|c| c.split(';').next())
            .map(|e| e.trim().to_ascii_lowercase());
        match essence.as_deref() {
            Some("application/json") => Ok(Self::Json),
            Some(e) if e.starts_with("application/") && e.ends_with("+json") => Ok(Self::Json),
            Some("text/csv") => Ok(Self::Csv),
            _ => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "send Content-Type: application/json or text/csv; got {}",
                    content_type.unwrap_or("none")
                ),
            )),
        }
    }
}

/// Where a label came from, for error messages that point at it.
#[derive(Clone, Copy, Debug)]
enum Origin {
    /// Index into the JSON `labels` array.
    Json(usize),
    /// Line of the CSV body (1 is the header).
    Csv(u64),
}

impl Origin {
    fn field(self, name: &str) -> String {
        match self {
            Origin::Json(i) => format!("labels[{i}].{name}"),
            Origin::Csv(line) => format!("line {line}: {name}"),
        }
    }

    fn whole(self) -> String {
        match self {
            Origin::Json(i) => format!("labels[{i}]"),
            Origin::Csv(line) => format!("line {line}"),
        }
    }
}

/// Reads `body` as `format`, with at most `max_labels` labels. Returns the batch and whether
/// the body asked to overwrite (JSON's `overwrite`; CSV has no field for it, the query does).
pub fn parse(format: Format, body: &[u8], max_labels: usize) -> Result<(Batch, bool), ApiError> {
    let (labels, overwrite) = match format {
        Format::Json => {
            let axum::Json(req) =
                axum::Json::<LabelsRequest>::from_bytes(body).map_err(ApiError::from)?;
            let labels = req
                .labels
                .into_iter()
                .enumerate()
                .map(|(i, l)| (l, Origin::Json(i)))
                .collect();
            (labels, req.overwrite)
        }
        Format::Csv => (read_csv(body, max_labels)?, false),
    };
    Ok((check(labels, max_labels)?, overwrite))
}

fn bad_csv(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_csv", message)
}

fn read_csv(body: &[u8], max_labels: usize) -> Result<Vec<(LabelInput, Origin)>, ApiError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(body);
    let header = reader
        .byte_headers()
        .map_err(|e| bad_csv(format!("line 1: cannot read the header: {e}")))?
        .clone();
    let names: Vec<&str> = header
        .iter()
        .map(|h| std::str::from_utf8(h).unwrap_or("").trim())
        .collect();
    let (id_col, label_col) = match names[..] {
        ["inference_id", "label"] => (0, 1),
        ["label", "inference_id"] => (1, 0),
        [] | [""] => {
            return Err(bad_csv(
                "the CSV body is empty; it needs the header inference_id,label".into(),
            ));
        }
        _ => {
            return Err(bad_csv(format!(
                "line 1: the header must be inference_id,label; got {}",
                String::from_utf8_lossy(header.as_slice()).trim()
            )));
        }
    };
    let mut labels = Vec::new();
    let mut record = csv::ByteRecord::new();
    let mut lines = LineCounter::new(body);
    loop {
        let more = reader.read_byte_record(&mut record).map_err(|e| {
            let line = e.position().map_or(0, |p| lines.line_at(p.byte()));
            bad_csv(format!("line {line}: cannot be read: {e}"))
        })?;
        if !more {
            break;
        }
        let line = record.position().map_or(0, |p| lines.line_at(p.byte()));
        if record.len() != 2 {
            return Err(bad_csv(format!(
                "line {line}: has {} fields; expected 2 (inference_id,label)",
                record.len()
            )));
        }
        if labels.len() == max_labels {
            return Err(too_many(max_labels));
        }
        let text = |col: usize, name: &str| {
            std::str::from_utf8(&record[col])
                .map(str::to_owned)
                .map_err(|_| bad_csv(format!("line {line}: {name} is not UTF-8 text")))
        };
        let label = LabelInput {
            inference_id: text(id_col, "inference_id")?,
            label: text(label_col, "label")?,
        };
        labels.push((label, Origin::Csv(line)));
    }
    Ok(labels)
}

/// Line numbers of records, read in order. The csv reader's positions start before the empty
/// lines it skips (and its line count leaves them out), so it would point people at the wrong
/// line.
struct LineCounter<'a> {
    body: &'a [u8],
    offset: usize,
    line: u64,
}

impl<'a> LineCounter<'a> {
    fn new(body: &'a [u8]) -> Self {
        Self {
            body,
            offset: 0,
            line: 1,
        }
    }

    /// The 1-based line of the record the reader says starts at `byte` (never before the last
    /// one asked about): the first line from there that is not empty.
    fn line_at(&mut self, byte: u64) -> u64 {
        let mut byte = usize::try_from(byte)
            .unwrap_or(usize::MAX)
            .min(self.body.len());
        while matches!(self.body.get(byte), Some(b'\r' | b'\n')) {
            byte += 1;
        }
        if byte > self.offset {
            let newlines = self.body[self.offset..byte]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            self.line += newlines as u64;
            self.offset = byte;
        }
        self.line
    }
}

fn too_many(max_labels: usize) -> ApiError {
    ApiError::invalid(format!(
        "more than {max_labels} labels in one request (--max-labels); split them"
    ))
}

/// Checks each label, and folds repeats of an id with the same label into one.
fn check(mut labels: Vec<(LabelInput, Origin)>, max_labels: usize) -> Result<Batch, ApiError> {
    if labels.is_empty() {
        return Err(ApiError::invalid("labels is empty: send at least one"));
    }
    if labels.len() > max_labels {
        return Err(ApiError::invalid(format!(
            "{} labels in one request; the limit is {max_labels}",
            labels.len()
        )));
    }
    for (l, at) in &labels {
        if l.inference_id.is_empty() || l.inference_id.len() > MAX_ID_BYTES {
            return Err(ApiError::invalid(format!(
                "{} must be 1 to {MAX_ID_BYTES} characters",
                at.field("inference_id")
            )));
        }
        // Postgres TEXT cannot hold NUL; an id is a key, so no control character at all.
        if l.inference_id.chars().any(char::is_control) {
            return Err(ApiError::invalid(format!(
                "{} must not contain control characters",
                at.field("inference_id")
            )));
        }
        if l.label.is_empty() || l.label.len() > MAX_LABEL_BYTES {
            return Err(ApiError::invalid(format!(
                "{} must be 1 to {MAX_LABEL_BYTES} characters",
                at.field("label")
            )));
        }
        if l.label.contains('\0') {
            return Err(ApiError::invalid(format!(
                "{} must not contain NUL characters",
                at.field("label")
            )));
        }
    }
    // Stable: repeats of an id stay in request order, so the message names the later one.
    labels.sort_by(|a, b| a.0.inference_id.cmp(&b.0.inference_id));
    let mut batch = Batch {
        ids: Vec::with_capacity(labels.len()),
        labels: Vec::with_capacity(labels.len()),
    };
    for (l, at) in labels {
        if batch.ids.last() == Some(&l.inference_id) {
            if batch.labels.last() != Some(&l.label) {
                return Err(ApiError::invalid(format!(
                    "{}: inference id {:?} is given two different labels",
                    at.whole(),
                    l.inference_id
                )));
            }
            continue;
        }
        batch.ids.push(l.inference_id);
        batch.labels.push(l.label);
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(body: &str) -> Result<Batch, ApiError> {
        parse(Format::Csv, body.as_bytes(), 10).map(|(b, _)| b)
    }

    fn failure(body: &str) -> (StatusCode, &'static str, String) {
        let e = csv(body).unwrap_err();
        (e.status, e.code, e.message)
    }

    #[test]
    fn csv_and_json_give_the_same_sorted_batch() {
        let from_csv =
            csv("inference_id,label\nb,Gentoo\na,Adelie\n\"c,1\",\"Chin\"\"strap\"\n").unwrap();
        let json = br#"{"labels": [{"inference_id": "b", "label": "Gentoo"},
            {"inference_id": "a", "label": "Adelie"},
            {"inference_id": "c,1", "label": "Chin\"strap"}]}"#;
        let (from_json, overwrite) = parse(Format::Json, json, 10).unwrap();
        assert!(!overwrite);
        assert_eq!(from_csv, from_json);
        assert_eq!(from_csv.ids, ["a", "b", "c,1"]);
        assert_eq!(from_csv.labels, ["Adelie", "Gentoo", "Chin\"strap"]);
    }

    #[test]
    fn csv_columns_may_come_in_either_order_after_a_bom_and_without_a_final_newline() {
        let b = csv("\u{feff}label,inference_id\r\nAdelie,x1\r\nGentoo,x2").unwrap();
        assert_eq!(b.ids, ["x1", "x2"]);
        assert_eq!(b.labels, ["Adelie", "Gentoo"]);
    }

    #[test]
    fn repeats_fold_and_contradictions_name_the_line() {
        let b = csv("inference_id,label\nx,A\nx,A\n").unwrap();
        assert_eq!((b.ids.len(), b.labels.len()), (1, 1));
        let (status, code, msg) = failure("inference_id,label\nx,A\ny,B\nx,C\n");
        assert_eq!(
            (status, code),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid")
        );
        assert!(
            msg.starts_with("line 4:") && msg.contains("two different labels"),
            "{msg}"
        );
    }

    #[test]
    fn malformed_csv_is_refused_naming_the_line() {
        let (status, code, msg) = failure("id,label\nx,A\n");
        assert_eq!((status, code), (StatusCode::BAD_REQUEST, "invalid_csv"));
        assert!(
            msg.starts_with("line 1:") && msg.contains("inference_id,label"),
            "{msg}"
        );

        let (status, code, msg) = failure("inference_id,label\nx,A\ny,B,extra\n");
        assert_eq!((status, code), (StatusCode::BAD_REQUEST, "invalid_csv"));
        assert!(
            msg.starts_with("line 3:") && msg.contains("3 fields"),
            "{msg}"
        );

        let (_, code, msg) = failure("inference_id,label\nx,A\n\ny\n");
        assert_eq!(code, "invalid_csv");
        assert!(
            msg.starts_with("line 4:") && msg.contains("1 fields"),
            "{msg}"
        );

        // A quoted line break and CRLF line ends count as lines too.
        let (_, _, msg) = failure("inference_id,label\r\n\"x\ny\",A\r\n\r\nz\r\n");
        assert!(msg.starts_with("line 5:"), "{msg}");

        let (_, code, msg) = failure("");
        assert_eq!(code, "invalid_csv");
        assert!(msg.contains("empty"), "{msg}");

        let e = parse(Format::Csv, b"inference_id,label\nx,\xff\n", 10).unwrap_err();
        assert_eq!(e.code, "invalid_csv");
        assert!(e.message.starts_with("line 2: label"), "{}", e.message);
    }

    #[test]
    fn bad_values_name_the_line_or_the_index() {
        let (status, code, msg) = failure("inference_id,label\nx,A\n,B\n");
        assert_eq!(
            (status, code),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid")
        );
        assert_eq!(msg, "line 3: inference_id must be 1 to 128 characters");
        let long = "L".repeat(257);
        let (_, _, msg) = failure(&format!("inference_id,label\nx,{long}\n"));
        assert_eq!(msg, "line 2: label must be 1 to 256 characters");
        let (_, _, msg) = failure("inference_id,label\n\"x\ty\",A\n");
        assert!(msg.starts_with("line 2: inference_id must not"), "{msg}");
        let json = br#"{"labels": [{"inference_id": "x", "label": "A"}, {"inference_id": "y", "label": ""}]}"#;
        let e = parse(Format::Json, json, 10).unwrap_err();
        assert_eq!(e.message, "labels[1].label must be 1 to 256 characters");
    }

    #[test]
    fn limits_and_empty_bodies() {
        let rows: String = (0..11).map(|i| format!("id{i},A\n")).collect();
        let (status, _, msg) = failure(&format!("inference_id,label\n{rows}"));
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(msg.contains("more than 10 labels"), "{msg}");
        let (status, _, msg) = failure("inference_id,label\n");
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(msg.contains("empty"), "{msg}");
        let (_, overwrite) = parse(
            Format::Json,
            br#"{"labels": [{"inference_id": "x", "label": "A"}], "overwrite": true}"#,
            10,
        )
        .unwrap();
        assert!(overwrite);
    }

    #[test]
    fn content_types() {
        assert_eq!(Format::of(Some("application/json")).unwrap(), Format::Json);
        assert_eq!(
            Format::of(Some("Text/CSV; charset=utf-8")).unwrap(),
            Format::Csv
        );
        assert_eq!(
            Format::of(Some("application/merge+json")).unwrap(),
            Format::Json
        );
        let e = Format::of(Some("text/plain")).unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(e.message.contains("text/plain"));
        assert_eq!(Format::of(None).unwrap_err().code, "unsupported_media_type");
    }
}
