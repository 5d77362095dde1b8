//! Ingest's part of its integration tests' harness (the rest is `petrel-testkit`): an ingest
//! service started in-process against the real Postgres and NATS, in the test's own world, with
//! a data directory of its own.

use std::path::PathBuf;

use clap::Parser;
pub use petrel_testkit::*;
use tokio_util::sync::CancellationToken;

/// The directory requests may ingest from by `path`: `<scratch>/data`, in the test's scratch
/// directory.
pub fn data_dir(env: &TestEnv) -> PathBuf {
    env.dir.join("data")
}

/// Starts ingest with its data directory at [`data_dir`] (created, empty).
#[allow(dead_code, reason = "each test binary uses part of the harness")]
pub async fn start_ingest(env: &TestEnv) -> Service {
    start_ingest_with(env, &[]).await
}

/// Starts ingest as [`start_ingest`] does, with more arguments.
pub async fn start_ingest_with(env: &TestEnv, extra: &[&str]) -> Service {
    let data_dir = data_dir(env);
    std::fs::create_dir_all(&data_dir).unwrap();
    let mut args = vec!["--data-dir", data_dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let args = env.args("petrel-ingest", &args);
    let cancel = CancellationToken::new();
    let app = petrel_ingest::App::build(petrel_ingest::Config::parse_from(args), cancel.clone())
        .await
        .expect("ingest starts");
    Service::spawn("ingest", app.port(), cancel, app.run()).stop_limit(PATIENCE)
}
