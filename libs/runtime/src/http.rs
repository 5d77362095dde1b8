//! HTTP plumbing every service shares.

use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// An error as clients see it: a status and a JSON body
/// `{"error": {"code": "...", "message": "..."}}`. Client errors say what to fix; internal
/// errors are logged once, with their whole chain, and reach the client only as
/// `internal_error`, so no internals leak.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// The error code of [`ApiError::conflict_retry`].
pub const CONFLICT_RETRY: &str = "retry";

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// A 409 that a retry resolves: a concurrent request won a race for the same resource.
    /// Its code, `retry`, tells clients apart from a [`conflict`](Self::conflict) that
    /// retrying cannot fix.
    pub fn conflict_retry(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, CONFLICT_RETRY, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    /// Logs `error` (with its source chain) and hides it from the client.
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        let error = error.into();
        tracing::error!(error = format!("{error:#}"), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; see the service log",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let code = match r.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            _ => "invalid_json",
        };
        Self::new(r.status(), code, plain_words(&r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            plain_words(&r.body_text()),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            plain_words(&r.body_text()),
        )
    }
}

/// Rewrites serde's wording of an expected type in the API's own words: clients send JSON, so
/// `expected struct CreateExperiment` or `expected u32` would name our Rust types.
pub fn plain_words(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("expected ") {
        let (head, tail) = rest.split_at(i + "expected ".len());
        out.push_str(head);
        let word_end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let word = &tail[..word_end];
        let after = &tail[word_end..];
        let (replacement, consumed) = match word {
            "struct" | "enum" | "tuple" => {
                // `struct Name` / `enum Name`: drop the type's name too.
                let name = after.trim_start();
                let name_end = name
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(name.len());
                let skipped = after.len() - name.len() + name_end;
                let r = match word {
                    "struct" => "a JSON object",
                    "enum" => "one of the allowed values",
                    _ => "a JSON array",
                };
                (r, word_end + skipped)
            }
            "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "u8" | "u16" | "u32" | "u64"
            | "u128" | "usize" => ("an integer", word_end),
            "f32" | "f64" => ("a number", word_end),
            _ => ("", 0),
        };
        out.push_str(replacement);
        rest = &tail[consumed..];
    }
    out.push_str(rest);
    out
}

/// `axum::Json`, but a body that is not valid JSON for `T` gets a JSON error.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` with JSON errors.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `axum::extract::Query` with JSON errors.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// A service's own readiness conditions, beyond its connections: each returns why it is not
/// ready, or `None`.
pub type ReadyCheck = std::sync::Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// What `/readyz` checks.
#[derive(Clone)]
pub struct Readiness {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    /// Whether an unreachable Postgres makes the service unready. The predictor answers
    /// without it (its log is JetStream), so it only reports it.
    pub needs_postgres: bool,
    pub checks: Vec<ReadyCheck>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("needs_postgres", &self.needs_postgres)
            .field("checks", &self.checks.len())
            .finish()
    }
}

impl Readiness {
    /// Ready when Postgres answers and NATS is connected.
    pub fn new(pool: PgPool, nats: async_nats::Client) -> Self {
        Self {
            pool,
            nats,
            needs_postgres: true,
            checks: Vec::new(),
        }
    }

    /// `Ok` when Postgres answers a query (if needed), NATS is connected and every check
    /// passes.
    pub async fn check(&self) -> Result<(), Vec<String>> {
        let mut failures = Vec::new();
        if self.needs_postgres {
            let pg = tokio::time::timeout(
                Duration::from_secs(2),
                sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.pool),
            )
            .await;
            if !matches!(pg, Ok(Ok(1))) {
                failures.push("postgres: not reachable".to_owned());
            }
        }
        failures.extend(self.checks.iter().filter_map(|c| c()));
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            failures.push("nats: not connected".to_owned());
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures)
        }
    }
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "alive" }))
}

async fn readyz(State(r): State<Readiness>) -> Response {
    match r.check().await {
        Ok(()) => axum::Json(json!({ "status": "ready" })).into_response(),
        Err(failures) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "not_ready", "failures": failures })),
        )
            .into_response(),
    }
}

/// `GET /healthz` (the process is alive) and `GET /readyz` (its Postgres and NATS work).
pub fn health_routes(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Adds what every service's router needs: JSON 404/405, request tracing and metrics,
/// `GET /metrics`, a body size limit.
pub fn finish(router: Router, body_limit: usize) -> Router {
    crate::metrics::handle();
    router
        .route("/metrics", get(crate::metrics::render))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// Binds `addr` (use port 0 in tests) and returns the listener and the port it got.
pub async fn bind(addr: &str) -> std::io::Result<(TcpListener, u16)> {
    let listener = TcpListener::bind(addr).await?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}

/// Serves until `cancel` fires, then stops accepting and lets requests in flight finish, for at
/// most `drain` before giving up on them.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
    drain: Duration,
) -> std::io::Result<()> {
    let graceful =
        axum::serve(listener, router).with_graceful_shutdown(cancel.clone().cancelled_owned());
    let server = tokio::spawn(async move { graceful.await });
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r.map_err(std::io::Error::other)?,
        _ = cancel.cancelled() => {}
    }
    match tokio::time::timeout(drain, &mut server).await {
        Ok(r) => r.map_err(std::io::Error::other)?,
        Err(_) => {
            tracing::warn!(
                drain_s = drain.as_secs(),
                "requests still in flight after the drain period; closing"
            );
            server.abort();
            Ok(())
        }
    }
}

#[cfg(test)]
mod plain_words_tests {
    use super::plain_words;

    #[test]
    fn rust_type_names_become_json_words() {
        assert_eq!(
            plain_words("invalid type: string \"x\", expected struct CreateExperiment at line 1"),
            "invalid type: string \"x\", expected a JSON object at line 1"
        );
        assert_eq!(
            plain_words("invalid type: string \"a\", expected i32"),
            "invalid type: string \"a\", expected an integer"
        );
        assert_eq!(
            plain_words("expected f64 and expected u8"),
            "expected a number and expected an integer"
        );
        assert_eq!(
            plain_words("expected enum RunStatus"),
            "expected one of the allowed values"
        );
        assert_eq!(
            plain_words("missing field `name`, expected a string"),
            "missing field `name`, expected a string"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::post;
    use tower::ServiceExt;

    #[derive(serde::Deserialize)]
    struct In {
        #[allow(dead_code)]
        n: u32,
    }

    async fn echo(Json(_): Json<In>) -> &'static str {
        "ok"
    }

    async fn body(resp: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn app() -> Router {
        finish(Router::new().route("/echo", post(echo)), 1024)
    }

    #[tokio::test]
    async fn bad_json_gets_a_json_error() {
        let resp = app()
            .oneshot(
                Request::post("/echo")
                    .header("content-type", "application/json")
                    .body(Body::from("{\"n\": \"x\"}"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let v = body(resp).await;
        assert_eq!(v["error"]["code"], "invalid_json");
        assert!(v["error"]["message"].as_str().unwrap().contains("n"));
    }

    #[tokio::test]
    async fn missing_content_type_and_unknown_routes_are_json() {
        let resp = app()
            .oneshot(Request::post("/echo").body(Body::from("{}")).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(body(resp).await["error"]["code"], "unsupported_media_type");

        let resp = app()
            .oneshot(Request::get("/nope").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(body(resp).await["error"]["code"], "not_found");

        let resp = app()
            .oneshot(Request::get("/echo").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body(resp).await["error"]["code"], "method_not_allowed");
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused() {
        let big = format!("{{\"n\": 1, \"pad\": \"{}\"}}", "x".repeat(4096));
        let resp = app()
            .oneshot(
                Request::post("/echo")
                    .header("content-type", "application/json")
                    .body(Body::from(big))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn internal_errors_hide_details() {
        let e = ApiError::internal(anyhow::anyhow!("password=hunter2"));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message.contains("hunter2"));
    }
}
