//! A service running in the test's process.

use std::future::Future;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::http::read;

/// How long [`Service::stop`] gives a service to shut down after cancellation, unless
/// [`Service::stop_limit`] says otherwise.
pub const STOP_LIMIT: Duration = Duration::from_secs(20);

/// A service running in this process, as its test started it:
///
/// ```ignore
/// let cancel = CancellationToken::new();
/// let config = petrel_x::Config::parse_from(env.args("petrel-x", &[]));
/// let app = petrel_x::App::build(config, cancel.clone()).await.expect("x starts");
/// let x = Service::spawn("x", app.port(), cancel, app.run());
/// ```
///
/// Stopping it with [`Service::stop`] checks that shutdown is clean and prompt, which every
/// test thereby tests too.
#[derive(Debug)]
pub struct Service {
    /// What the service is, for failure messages.
    pub name: String,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Cancels the service, as SIGTERM does.
    pub cancel: CancellationToken,
    /// The service's run, which must end with `Ok` once cancelled.
    pub handle: JoinHandle<anyhow::Result<()>>,
    stop_limit: Duration,
    http: reqwest::Client,
}

impl Service {
    /// Runs a built service (its `App::run()`) on a task: `port` is where it listens, `cancel`
    /// the token it was built with.
    pub fn spawn<F>(name: &str, port: u16, cancel: CancellationToken, run: F) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self {
            name: name.to_owned(),
            base: format!("http://127.0.0.1:{port}"),
            cancel,
            handle: tokio::spawn(run),
            stop_limit: STOP_LIMIT,
            http: reqwest::Client::new(),
        }
    }

    /// Gives the service `limit` instead of [`STOP_LIMIT`] to stop.
    pub fn stop_limit(mut self, limit: Duration) -> Self {
        self.stop_limit = limit;
        self
    }

    /// The URL of `path` on this service.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `body` as JSON (if any) and returns the status and the JSON answer (`null` when
    /// empty), failing if the answer is not JSON.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        read(req.send().await.unwrap_or_else(|e| {
            panic!("{} answers: {e}", self.name);
        }))
        .await
    }

    /// Sends a raw body with the given content type (if any): for requests that are not valid
    /// JSON, or not labelled as such.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: &'static str,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        read(req.send().await.unwrap_or_else(|e| {
            panic!("{} answers: {e}", self.name);
        }))
        .await
    }

    /// Cancels the service and checks that it stops cleanly (with `Ok`, no panic) and
    /// promptly.
    pub async fn stop(self) {
        self.cancel.cancel();
        let name = self.name;
        let limit = self.stop_limit;
        let result = tokio::time::timeout(limit, self.handle)
            .await
            .unwrap_or_else(|_| panic!("{name} did not stop within {limit:?} of cancellation"))
            .unwrap_or_else(|e| panic!("{name} panicked: {e}"));
        assert!(result.is_ok(), "{name} stopped with an error: {result:?}");
    }
}
