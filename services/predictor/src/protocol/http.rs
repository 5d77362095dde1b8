//! HTTP pieces both servers of the protocols share: the container mode ([`crate::container`])
//! and the full service ([`crate::serving`]) answer health checks, read bodies and render
//! errors the same way.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ProtocolError;
use crate::Served;

/// A JSON response.
pub fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// The body, or the error a client should see: 413 past `limit`, 400 for a broken upload.
pub fn read_body(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ProtocolError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ProtocolError::TooLarge(format!(
                "the body is larger than the limit of {limit} bytes"
            ))
        } else {
            ProtocolError::Malformed(format!("cannot read the body: {}", r.body_text()))
        }
    })
}

/// SageMaker's and MLflow's health check: 200 once a model is served, 503 before.
pub fn ping(served: Option<&Served>) -> Response {
    match served {
        Some(m) => reply(
            StatusCode::OK,
            json!({"status": "ready", "model_name": m.model_name, "model_version": m.version}),
        ),
        None => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "loading"}),
        ),
    }
}

/// `GET /v2/health/live`.
pub fn live() -> Response {
    reply(StatusCode::OK, json!({"live": true}))
}

/// `GET /v2/health/ready`.
pub fn v2_ready(ready: bool) -> Response {
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    reply(status, json!({"ready": ready}))
}

/// The code Petrel's own error shape uses for a protocol error, as `POST /v1/predict` does.
pub fn native_code(e: &ProtocolError) -> &'static str {
    match e {
        ProtocolError::UnsupportedMediaType(_) => "unsupported_media_type",
        ProtocolError::Malformed(_) => "bad_request",
        ProtocolError::Invalid(_) => "invalid",
        ProtocolError::TooLarge(_) => "payload_too_large",
        ProtocolError::NotFound(_) => "not_found",
        ProtocolError::Unavailable(_) => "unavailable",
        ProtocolError::Internal(_) => "internal_error",
    }
}
