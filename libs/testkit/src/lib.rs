//! The harness Petrel's integration tests share, so that every service's tests isolate, start,
//! wait and check things the same way.
//!
//! Each test gets its own world ([`TestEnv`]: a fresh database, NATS namespace and scratch
//! directory on the real local Postgres and NATS), so tests run in parallel without seeing each
//! other. Services are built by the test of their own crate (this crate depends on no service)
//! and handed to [`Service::spawn`], which runs them in-process and checks that they shut down
//! cleanly.

#![warn(missing_docs)]

mod env;
mod events;
mod http;
mod nats;
mod penguins;
mod postgres;
mod seaweed;
mod service;
mod tools;

use std::future::Future;
use std::time::Duration;

pub use env::TestEnv;
pub use events::{Events, next_event, stored_events, wait_consumer_caught_up};
pub use http::{assert_error, error_message, send};
pub use nats::ThrowawayNats;
pub use penguins::{
    PENGUINS_CSV, SPECIES, bundle, digits_bundle, digits_csv, penguin_rows, penguins_csv,
    register_model, reviews_bundle,
};
pub use postgres::ThrowawayPostgres;
pub use seaweed::{S3_ACCESS_KEY, S3_SECRET_KEY, SeaweedFs};
pub use service::{STOP_LIMIT, Service};
pub use tools::{docker_compose, pip_tool};

/// The NATS server the tests and the services under test use: the local one, so that an event
/// a service publishes is the one the test sees.
pub const NATS_URL: &str = "nats://127.0.0.1:4222";

/// How long a test waits for something asynchronous before failing: long enough for a busy CI
/// machine, short enough that a lost event fails the test rather than hanging it.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Polls `probe` every 100 ms until it yields a value, failing after [`PATIENCE`]: for state
/// that settles asynchronously (a report written, a consumer caught up) with no event to await.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
