//! The labeler's part of its integration tests' harness (the rest is `petrel-testkit`): a real
//! labeler per test on the local Postgres and NATS; events are published the way the predictor
//! would.

use clap::Parser;
pub use petrel_testkit::*;
use tokio_util::sync::CancellationToken;

/// Starts a labeler in the test's world (with a pool of 4 database connections).
pub async fn start_labeler(env: &TestEnv) -> Service {
    start_labeler_with(env, &[]).await
}

/// Starts a labeler in the test's world with `extra` flags. Several may run at once, as
/// replicas sharing the database and the durable consumer.
pub async fn start_labeler_with(env: &TestEnv, extra: &[&str]) -> Service {
    let mut flags = vec!["--database-max-connections", "4"];
    flags.extend_from_slice(extra);
    let args = env.args_without_store("petrel-labeler", &flags);
    let cancel = CancellationToken::new();
    let app = petrel_labeler::App::build(petrel_labeler::Config::parse_from(args), cancel.clone())
        .await
        .unwrap();
    Service::spawn("the labeler", app.port(), cancel, app.run())
}

/// A small pool on the test's database, for checking what the labeler stored (tables are
/// named with their schema, `labeler.joins`).
pub async fn db(env: &TestEnv) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&env.db)
        .await
        .unwrap()
}
