//! MLflow's artifact proxy (`/api/2.0/mlflow-artifacts/artifacts/...`): the routes behind
//! `mlflow-artifacts:/` URIs, which MLflow clients use for `log_artifact(s)`, `log_dict`,
//! `download_artifacts` and `list_artifacts`.
//!
//! Files live in the registry's artifact store under `mlflow/<path>`. Bodies stream to and
//! from the store in chunks, so a file of any size costs a fixed amount of memory; an upload
//! is written aside and renamed into place, so readers never see part of one. Each upload
//! records its path, size and SHA-256 in `artifact_files`.
//!
//! A path comes from the URL, so it is decoded exactly once and then must be relative, with
//! no `.`, `..` or empty parts, no backslash and no `%` left: `..`, `%2e%2e`, `%252e%252e`,
//! `/etc/passwd` and `%2Fetc` are all refused with 400 before anything touches the disk.

use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::TryStreamExt;
use petrel_store::Entry;
use serde_json::json;
use tokio_util::io::{ReaderStream, StreamReader};
use uuid::Uuid;

use super::{MlflowError, Msg, Result};
use crate::AppState;

/// Where MLflow's artifacts go in the store.
const PREFIX: &str = "mlflow";
/// The URI scheme of proxied artifacts.
const SCHEME: &str = "mlflow-artifacts:";

pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/artifacts", get(list_root))
        .route("/artifacts/{*path}", get(download).put(upload))
        .fallback(super::endpoint_not_found)
        .method_not_allowed_fallback(super::method_not_allowed)
        .with_state(state);
    Router::new()
        .nest("/api/2.0/mlflow-artifacts", routes.clone())
        .nest("/ajax-api/2.0/mlflow-artifacts", routes)
}

/// Refuses any path that could leave the artifact root or name something else once decoded
/// again.
pub fn check_path(path: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(MlflowError::invalid(format!(
            "Invalid artifact path {path:?}: {why}"
        )))
    };
    if path.is_empty() {
        return bad("it is empty");
    }
    if path.contains('%') {
        return bad("'%' is refused, so that no path can be decoded twice");
    }
    if path.starts_with('/') || path.contains('\\') {
        return bad("it must be relative, with '/' between parts");
    }
    let b = path.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return bad("it must be relative, not start with a drive letter");
    }
    if path.chars().any(char::is_control) {
        return bad("control characters are refused");
    }
    if path
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return bad("'.', '..' and empty parts are refused");
    }
    Ok(())
}

/// Decodes `%XX` escapes once, refusing malformed ones and anything that is not UTF-8.
fn percent_decode(raw: &str) -> Result<String> {
    crate::routes::percent_decode(raw).ok_or_else(|| {
        MlflowError::invalid(format!(
            "Invalid artifact path {raw:?}: bad percent-encoding"
        ))
    })
}

/// The artifact path of a request to `/artifacts/<path>`, decoded and checked.
fn request_path(uri: &Uri) -> Result<String> {
    let raw = uri
        .path()
        .split_once("/artifacts/")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let path = percent_decode(raw)?;
    check_path(&path)?;
    Ok(path)
}

/// The proxy path an artifact URI stands for: `mlflow-artifacts:/0/abc/artifacts` (or with a
/// host, `mlflow-artifacts://host:5000/0/abc/artifacts`) is `0/abc/artifacts`.
pub fn proxied_path(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix(SCHEME)?;
    let rest = match rest.strip_prefix("//") {
        Some(with_host) => with_host.split_once('/').map(|(_, p)| p)?,
        None => rest,
    };
    let rest = rest.trim_matches('/');
    (!rest.is_empty()).then(|| rest.to_owned())
}

/// The children of a proxied directory.
pub async fn list(s: &AppState, dir: &str) -> Result<Vec<Entry>> {
    check_path(dir)?;
    Ok(s.store.list(&format!("{PREFIX}/{dir}")).await?)
}

/// The run an artifact path belongs to, if it has the `<experiment>/<run>/artifacts/...`
/// shape of a run's artifact URI.
fn run_of(path: &str) -> Option<Uuid> {
    let mut parts = path.split('/');
    let (_, run, artifacts) = (parts.next()?, parts.next()?, parts.next()?);
    (artifacts == "artifacts")
        .then(|| Uuid::try_parse(run).ok())
        .flatten()
}

async fn upload(State(s): State<AppState>, uri: Uri, body: Body) -> Result<Response> {
    let path = request_path(&uri)?;
    let started = Instant::now();
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let mut reader = StreamReader::new(stream);
    let stored = s
        .store
        .put_stream(
            &format!("{PREFIX}/{path}"),
            &mut reader,
            s.max_artifact_bytes,
        )
        .await?;
    sqlx::query(
        "INSERT INTO artifact_files (path, run_id, uri, size_bytes, sha256) \
         VALUES ($1, (SELECT id FROM runs WHERE id = $2), $3, $4, $5) \
         ON CONFLICT (path) DO UPDATE SET run_id = EXCLUDED.run_id, uri = EXCLUDED.uri, \
         size_bytes = EXCLUDED.size_bytes, sha256 = EXCLUDED.sha256, updated_at = now()",
    )
    .bind(&path)
    .bind(run_of(&path))
    .bind(&stored.uri)
    .bind(i64::try_from(stored.size).unwrap_or(i64::MAX))
    .bind(&stored.sha256)
    .execute(&s.infra.pool)
    .await?;
    tracing::debug!(
        artifact.path = %path,
        artifact.bytes = stored.size,
        duration_ms = started.elapsed().as_millis() as u64,
        "artifact stored"
    );
    Ok(axum::Json(json!({})).into_response())
}

async fn download(State(s): State<AppState>, uri: Uri) -> Result<Response> {
    let path = request_path(&uri)?;
    let opened = s.store.open(&format!("{PREFIX}/{path}")).await?;
    let body = Body::from_stream(ReaderStream::with_capacity(opened.reader, 256 * 1024));
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(opened.size));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(resp)
}

/// `GET /artifacts?path=<dir>`: the directory's children, named relative to it.
async fn list_root(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let entries = match f.opt_nonempty("path")? {
        Some(p) => list(&s, p.trim_end_matches('/')).await?,
        None => s.store.list(PREFIX).await?,
    };
    let files: Vec<_> = entries
        .into_iter()
        .map(|e| {
            let mut file = json!({ "path": e.name, "is_dir": e.is_dir });
            if let Some(size) = e.size {
                file["file_size"] = json!(size);
            }
            file
        })
        .collect();
    Ok(axum::Json(json!({ "files": files })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_escape_are_refused() {
        for good in [
            "0/abc/artifacts/model/MLmodel",
            "a b/c.json",
            "plots/confusion matrix (1).png",
            "résumé/naïve.txt",
            "x",
            "deep/er/file.tar.gz",
        ] {
            assert!(check_path(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "..",
            "../etc/passwd",
            "a/../../b",
            "a/./b",
            "/etc/passwd",
            "a//b",
            "a/",
            "a\\b",
            "C:/x",
            "a%2e",
            "nul\0",
        ] {
            let e = check_path(bad).unwrap_err();
            assert_eq!(e.code, "INVALID_PARAMETER_VALUE", "{bad:?}");
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn urls_are_decoded_once() {
        let uri = |p: &str| -> Uri { format!("/artifacts/{p}").parse().unwrap() };
        assert_eq!(request_path(&uri("a%20b/c.txt")).unwrap(), "a b/c.txt");
        for bad in [
            "%2e%2e/secret",
            "..%2Fsecret",
            "%252e%252e/secret",
            "%2Fetc%2Fpasswd",
            "a/%2E/b",
            "%zz",
            "%c3",
            "a%00b",
        ] {
            assert!(request_path(&uri(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn artifact_uris_map_to_proxy_paths() {
        assert_eq!(
            proxied_path("mlflow-artifacts:/0/abc/artifacts").as_deref(),
            Some("0/abc/artifacts")
        );
        assert_eq!(
            proxied_path("mlflow-artifacts://host:5000/1/r/artifacts/").as_deref(),
            Some("1/r/artifacts")
        );
        assert_eq!(proxied_path("s3://bucket/x"), None);
        assert_eq!(proxied_path("mlflow-artifacts:/"), None);
        let id = Uuid::now_v7();
        assert_eq!(
            run_of(&format!("0/{}/artifacts/m.txt", id.simple())),
            Some(id)
        );
        assert_eq!(run_of("0/nope/artifacts/m.txt"), None);
        assert_eq!(run_of(&format!("0/{}/other/m.txt", id.simple())), None);
    }
}
