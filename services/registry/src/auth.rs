//! Bearer-token authentication with scopes.
//!
//! With `--auth on`, every write (POST, PUT, PATCH, DELETE, except searches, which only read)
//! needs a token of scope `write` or `admin` (401 without one, 403 with a `read` token), token
//! administration needs `admin`, and reads need a token too when `--auth-reads token`. Tokens
//! are random 32-byte strings shown once when issued; only their SHA-256 is stored. The
//! `--admin-token` from configuration is the bootstrap admin. The `mlflow` client sends
//! `MLFLOW_TRACKING_TOKEN` as the same bearer header, so it works unchanged.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use petrel_runtime::config::Secret;
use petrel_runtime::http::{ApiError, Json, Path};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;

use crate::AppState;

/// What a token may do; each scope includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// Authentication settings.
#[derive(clap::Args, Clone, Debug)]
pub struct AuthArgs {
    /// `off` (no tokens needed) or `on`.
    #[arg(long, env = "PETREL_REGISTRY_AUTH", default_value = "off", value_parser = ["off", "on"])]
    pub auth: String,
    /// With auth on: `open` (reads need no token) or `token` (reads need a `read` token).
    #[arg(long, env = "PETREL_REGISTRY_AUTH_READS", default_value = "open", value_parser = ["open", "token"])]
    pub auth_reads: String,
    /// A bootstrap token of scope `admin`, to issue the others (`POST /api/v1/tokens`).
    #[arg(long, env = "PETREL_REGISTRY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
}

/// The settings in effect.
#[derive(Clone, Debug)]
pub struct Auth {
    pub enabled: bool,
    pub protect_reads: bool,
    /// SHA-256 of the bootstrap admin token.
    admin_hash: Option<String>,
}

impl Auth {
    pub fn from_args(a: &AuthArgs) -> anyhow::Result<Auth> {
        let enabled = a.auth == "on";
        if let Some(t) = &a.admin_token {
            anyhow::ensure!(
                t.expose().len() >= 16,
                "--admin-token must be at least 16 characters"
            );
        }
        Ok(Auth {
            enabled,
            protect_reads: a.auth_reads == "token",
            admin_hash: a.admin_token.as_ref().map(|t| hash(t.expose())),
        })
    }
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The scope a request needs, or `None` for none.
fn required(method: &Method, path: &str, protect_reads: bool) -> Option<Scope> {
    if path == "/healthz" || path == "/readyz" || path == "/health" || path == "/version" {
        return None;
    }
    if path.starts_with("/api/v1/tokens") {
        return Some(Scope::Admin);
    }
    let reads = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        // MLflow's searches and lookups by POST change nothing.
        || (*method == Method::POST && path.ends_with("/search"));
    if reads {
        protect_reads.then_some(Scope::Read)
    } else {
        Some(Scope::Write)
    }
}

/// A refusal in the caller's API's own words: MLflow's error shape on MLflow routes (so its
/// client reports `UNAUTHENTICATED` or `PERMISSION_DENIED`), Petrel's elsewhere.
fn deny(status: StatusCode, message: &str, path: &str) -> Response {
    let unauthorized = status == StatusCode::UNAUTHORIZED;
    let mlflow = path.starts_with("/api/2.0/mlflow") || path.starts_with("/ajax-api/");
    let mut r = if mlflow {
        let code = if unauthorized {
            "UNAUTHENTICATED"
        } else {
            "PERMISSION_DENIED"
        };
        (
            status,
            axum::Json(serde_json::json!({ "error_code": code, "message": message })),
        )
            .into_response()
    } else {
        let code = if unauthorized {
            "unauthorized"
        } else {
            "forbidden"
        };
        ApiError::new(status, code, message).into_response()
    };
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

/// The middleware: checks the bearer token against the request's needs.
pub async fn check(State(s): State<AppState>, req: Request<Body>, next: Next) -> Response {
    let auth = &s.auth;
    if !auth.enabled {
        return next.run(req).await;
    }
    let path = req.uri().path().to_owned();
    let Some(needed) = required(req.method(), &path, auth.protect_reads) else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = presented.filter(|t| !t.is_empty()) else {
        return deny(
            StatusCode::UNAUTHORIZED,
            "this call needs a bearer token (Authorization: Bearer <token>)",
            &path,
        );
    };
    let h = hash(token);
    let scope = if auth.admin_hash.as_deref() == Some(h.as_str()) {
        Some(Scope::Admin)
    } else {
        match sqlx::query_scalar::<_, String>(
            "SELECT scope FROM api_tokens WHERE hash = $1 AND revoked_at IS NULL",
        )
        .bind(&h)
        .fetch_optional(&s.infra.pool)
        .await
        {
            Ok(s) => s.and_then(|s| Scope::parse(&s)),
            Err(e) => return ApiError::internal(e).into_response(),
        }
    };
    match scope {
        None => deny(
            StatusCode::UNAUTHORIZED,
            "the bearer token is not valid",
            &path,
        ),
        Some(have) if have < needed => deny(
            StatusCode::FORBIDDEN,
            &format!(
                "this call needs a token of scope {}; this one is {}",
                needed.as_str(),
                have.as_str()
            ),
            &path,
        ),
        Some(_) => next.run(req).await,
    }
}

#[derive(Debug, Deserialize)]
pub struct IssueToken {
    pub name: String,
    pub scope: Scope,
}

/// A token as listed (never its secret).
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: Uuid,
    pub name: String,
    pub scope: Scope,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `POST /api/v1/tokens`: issues a token, shown in this answer only.
pub async fn issue(
    State(s): State<AppState>,
    Json(req): Json<IssueToken>,
) -> Result<impl IntoResponse, ApiError> {
    if req.name.trim().is_empty() || req.name.len() > 128 || req.name.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(
            "name must be 1 to 128 characters without control characters",
        ));
    }
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = format!("ptr_{}", hex::encode(raw));
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO api_tokens (id, name, scope, hash) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(&req.name)
        .bind(req.scope.as_str())
        .bind(hash(&token))
        .execute(&s.infra.pool)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(token.id = %id, token.name = %req.name, token.scope = req.scope.as_str(), "token issued");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "id": id, "name": req.name, "scope": req.scope, "token": token,
        })),
    ))
}

/// `GET /api/v1/tokens`.
pub async fn list(State(s): State<AppState>) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    let rows = sqlx::query(
        "SELECT id, name, scope, created_at, revoked_at FROM api_tokens ORDER BY created_at",
    )
    .fetch_all(&s.infra.pool)
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(
        rows.iter()
            .map(|r| TokenInfo {
                id: r.get("id"),
                name: r.get("name"),
                scope: Scope::parse(r.get::<&str, _>("scope")).unwrap_or(Scope::Read),
                created_at: r.get("created_at"),
                revoked_at: r.get("revoked_at"),
            })
            .collect(),
    ))
}

/// `DELETE /api/v1/tokens/{id}`: revokes a token at once.
pub async fn revoke(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let done = sqlx::query(
        "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .execute(&s.infra.pool)
    .await
    .map_err(ApiError::internal)?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("no live token {id}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_the_method_and_path() {
        assert_eq!(required(&Method::GET, "/api/v1/models", false), None);
        assert_eq!(
            required(&Method::GET, "/api/v1/models", true),
            Some(Scope::Read)
        );
        assert_eq!(
            required(&Method::POST, "/api/v1/runs", false),
            Some(Scope::Write)
        );
        assert_eq!(
            required(&Method::POST, "/api/2.0/mlflow/runs/search", true),
            Some(Scope::Read)
        );
        assert_eq!(
            required(&Method::GET, "/api/v1/tokens", false),
            Some(Scope::Admin)
        );
        assert_eq!(required(&Method::GET, "/readyz", true), None);
        assert!(Scope::Admin > Scope::Write && Scope::Write > Scope::Read);
    }
}
