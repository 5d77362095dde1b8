//! Prometheus metrics: one process-wide recorder behind the `metrics` facade (so libraries
//! record with `metrics::counter!` and friends, knowing nothing of the exporter), the
//! `GET /metrics` route that renders it, and the HTTP middleware every router gets from
//! [`crate::http::finish`].
//!
//! Names follow Prometheus' conventions: `petrel_` first, base units (`_seconds`, `_bytes`),
//! `_total` on counters. Labels carry only bounded values (a route's template, never its path;
//! a consumer's name, never an event id), so that a scrape stays small whatever the traffic.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets (seconds) for every `_seconds` histogram: from 100 µs, where an in-process
/// prediction answers, to a minute, where a training job or a large upload does.
const SECONDS_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 60.0,
];

/// Size buckets for `_rows` histograms (batch sizes).
const ROWS_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 10000.0,
];

/// The route label of a request that matched no route (its path would be unbounded).
pub const UNMATCHED: &str = "(unmatched)";

/// The process's recorder, installed on first use. Every service in a process (tests start
/// several in one) shares it, as they would share one scrape target.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_rows".into()), &ROWS_BUCKETS))
            .expect("the bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (by an embedding program); then ours
        // renders what this process records through it, which is nothing, and says so.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
        }
        describe();
        handle
    })
}

/// Installs the recorder (if need be) and registers a service's own help texts with it.
pub fn describe_with(describe_service: fn()) {
    handle();
    describe_service();
}

/// Help texts for the metrics every service records.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "petrel_http_requests_total",
        "HTTP requests answered, by method, route template and status code"
    );
    describe_histogram!(
        "petrel_http_request_duration_seconds",
        Unit::Seconds,
        "Time from a request's arrival to its response headers, by method and route template"
    );
    describe_gauge!(
        "petrel_http_requests_in_flight",
        "HTTP requests being answered now"
    );
    petrel_events::metrics::describe();
}

/// `GET /metrics`: every metric of this process in Prometheus' text format.
pub async fn render() -> Response {
    let body = handle().render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Counts and times every request by its route template; `/metrics` itself is left out so
/// that scrapes do not fill the numbers they read.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    if route.as_deref() == Some("/metrics") {
        return next.run(request).await;
    }
    let route = route.unwrap_or_else(|| UNMATCHED.to_owned());
    let method = request.method().as_str().to_owned();
    let _in_flight = InFlight::start();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(
        "petrel_http_request_duration_seconds",
        "method" => method.clone(),
        "route" => route.clone(),
    )
    .record(started.elapsed().as_secs_f64());
    metrics::counter!(
        "petrel_http_requests_total",
        "method" => method,
        "route" => route,
        "status" => status,
    )
    .increment(1);
    response
}

/// One request in `petrel_http_requests_in_flight`, until dropped (also when the client goes
/// away and the handler is cancelled).
struct InFlight(metrics::Gauge);

impl InFlight {
    fn start() -> Self {
        let gauge = metrics::gauge!("petrel_http_requests_in_flight");
        gauge.increment(1.0);
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt as _;

    async fn get_path(router: &Router, path: &str) -> (StatusCode, String) {
        let response = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn requests_are_counted_by_route_template_never_by_path() {
        let router = crate::http::finish(
            Router::new().route("/v1/metered/{id}", get(|| async { "ok" })),
            1024,
        );
        for id in ["a", "b", "c"] {
            assert_eq!(get_path(&router, &format!("/v1/metered/{id}")).await.0, 200);
        }
        assert_eq!(get_path(&router, "/v1/unmetered-path-xyz").await.0, 404);
        let (status, text) = get_path(&router, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            text.contains(
                r#"petrel_http_requests_total{method="GET",route="/v1/metered/{id}",status="200"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"petrel_http_request_duration_seconds_bucket{method="GET",route="/v1/metered/{id}",le="0.0001"}"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"petrel_http_request_duration_seconds_count{method="GET",route="/v1/metered/{id}"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"route="(unmatched)",status="404""#),
            "{text}"
        );
        assert!(!text.contains("unmetered-path-xyz"), "{text}");
        assert!(
            !text.contains(r#"route="/metrics""#),
            "scrapes are not counted: {text}"
        );
        assert!(text.contains("# HELP petrel_http_requests_total HTTP requests answered"));
        assert!(text.contains("# TYPE petrel_http_request_duration_seconds histogram"));
    }
}
