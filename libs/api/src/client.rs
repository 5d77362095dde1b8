//! A small JSON-over-HTTP client that turns Petrel's error bodies back into typed errors.

use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service answered with an error body.
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("request to {url} failed")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("unexpected response from {url}: {message}")]
    Decode { url: String, message: String },
}

impl ClientError {
    /// The HTTP status, when the service answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether retrying later may help: the service is down, overloaded or failed internally,
    /// or answered a 409 with code `retry` (a concurrent request won a race for the same
    /// resource).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Api { status, code, .. } => {
                *status >= 500 || *status == 429 || (*status == 409 && code == "retry")
            }
            ClientError::Transport { .. } => true,
            ClientError::Decode { .. } => false,
        }
    }
}

/// A client for one service's base URL, e.g. `http://127.0.0.1:8081`.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    /// Sent as `Authorization: Bearer <token>` when set.
    token: Option<std::sync::Arc<str>>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl ApiClient {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            token: None,
        }
    }

    /// The same client, authenticating every call with a bearer token.
    #[must_use]
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.token = token.filter(|t| !t.is_empty()).map(std::sync::Arc::from);
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `body` (if any) as JSON and decodes a JSON answer.
    pub async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(path, req).await
    }

    /// Sends a multipart form (a file streamed from disk, for instance) and decodes a JSON
    /// answer. The whole-call timeout is lifted to `timeout`, since an upload takes as long as
    /// the file needs.
    pub async fn post_multipart<T: DeserializeOwned>(
        &self,
        path: &str,
        form: reqwest::multipart::Form,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let req = self
            .request(Method::POST, path)
            .multipart(form)
            .timeout(timeout);
        self.send(path, req).await
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req
    }

    async fn send<T: DeserializeOwned>(
        &self,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let resp = req.send().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
        if !status.is_success() {
            let parsed: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
            let field = |k: &str| {
                parsed
                    .as_ref()
                    .and_then(|v| v["error"][k].as_str())
                    .map(str::to_owned)
            };
            return Err(ClientError::Api {
                status: status.as_u16(),
                code: field("code").unwrap_or_else(|| "http_error".to_owned()),
                message: field("message")
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(500).collect()),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url,
            message: e.to_string(),
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, None).await
    }

    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn patch<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::PATCH, path, Some(body)).await
    }
}

/// Percent-encodes one path segment (model and alias names are user-chosen).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::ClientError;

    #[test]
    fn only_a_retry_conflict_is_transient() {
        let api = |status, code: &str| ClientError::Api {
            status,
            code: code.into(),
            message: String::new(),
        };
        assert!(api(409, "retry").is_transient());
        assert!(!api(409, "conflict").is_transient());
        assert!(api(503, "unavailable").is_transient());
        assert!(api(429, "too_many_requests").is_transient());
        assert!(!api(422, "invalid").is_transient());
    }

    #[test]
    fn encodes_segments() {
        assert_eq!(super::segment("pen guins/1"), "pen%20guins%2F1");
        assert_eq!(super::segment("a-b_c.d"), "a-b_c.d");
    }
}
