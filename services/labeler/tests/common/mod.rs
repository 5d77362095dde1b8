//! The labeler's part of its integration tests' harness (the rest is `petrel-testkit`): a real
//! labeler per test on the local Postgres and NATS; events are published the way the predictor
//! would.

use clap::Parser;
pub use petrel_testkit::*;
use tokio_util::sync::CancellationToken;

/// Starts a labeler in the test's world (with a pool of 4 database connections).
pub async fn start_labeler(env: &TestEnv) -> Service {
    let args = env.args_without_store("petrel-labeler", &["--database-max-connections", "4"]);
    let cancel = CancellationToken::new();
    let app = petrel_labeler::App::build(petrel_labeler::Config::parse_from(args), cancel.clone())
        .await
        .unwrap();
    Service::spawn("the labeler", app.port(), cancel, app.run())
}
