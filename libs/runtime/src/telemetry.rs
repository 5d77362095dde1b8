//! Logging set-up. Returns a guard so that later exporters (OpenTelemetry) can flush on drop.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

use crate::config::LogArgs;

/// Keep this alive for the life of `main`.
#[derive(Debug)]
#[must_use = "dropping the guard stops telemetry"]
pub struct TelemetryGuard {
    _private: (),
}

/// Installs the global subscriber: `RUST_LOG` levels (default `info`), text or JSON lines on
/// stderr, each line tagged with the service name. Safe to call twice (the second is a no-op),
/// which tests that start several services in one process rely on.
pub fn init(service: &'static str, args: &LogArgs) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if args.log_format == "json" {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_target(false).with_writer(std::io::stderr))
            .try_init()
    };
    if result.is_ok() {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
    }
    TelemetryGuard { _private: () }
}
