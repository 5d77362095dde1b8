//! What every Petrel service shares at runtime.
//!
//! * [`config`]: the flag/env blocks each service flattens into its own `clap` config.
//! * [`telemetry`]: logging set-up, returning a guard to keep for the life of `main`.
//! * [`shutdown`]: the one shutdown primitive, a `CancellationToken` cancelled on SIGINT/SIGTERM.
//! * [`http`]: JSON errors, a JSON extractor whose rejections are JSON too, health and readiness
//!   routes, and a server that drains on cancellation.
//! * [`metrics`]: the Prometheus recorder, `GET /metrics` and the per-route HTTP metrics.

pub mod config;
pub mod http;
pub mod infra;
pub mod metrics;
pub mod service;
pub mod shutdown;
pub mod telemetry;
