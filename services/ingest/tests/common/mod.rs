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
    let mut args = vec!["--data-dir", data_dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    spawn(env, env.args("petrel-ingest", &args)).await
}

/// The flags that point a service at `server` with the test credentials.
#[allow(dead_code, reason = "each test binary uses part of the harness")]
pub fn s3_flags(server: &SeaweedFs) -> Vec<String> {
    [
        "--s3-endpoint",
        &server.endpoint,
        "--s3-force-path-style",
        "--s3-region",
        "us-east-1",
        "--s3-access-key-id",
        S3_ACCESS_KEY,
        "--s3-secret-access-key",
        S3_SECRET_KEY,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Starts ingest with its artifact store at `root` (`s3://bucket/prefix` on `server`), able
/// to read `s3://` sources from `server`, and with more arguments.
#[allow(dead_code, reason = "each test binary uses part of the harness")]
pub async fn start_ingest_on_s3(
    env: &TestEnv,
    server: &SeaweedFs,
    root: &str,
    extra: &[&str],
) -> Service {
    let data_dir = data_dir(env).display().to_string();
    let mut args = vec!["--artifact-root", root, "--data-dir", &data_dir];
    let s3 = s3_flags(server);
    args.extend(s3.iter().map(String::as_str));
    args.extend_from_slice(extra);
    spawn(env, env.args_without_store("petrel-ingest", &args)).await
}

async fn spawn(env: &TestEnv, args: Vec<String>) -> Service {
    std::fs::create_dir_all(data_dir(env)).unwrap();
    let cancel = CancellationToken::new();
    let app = petrel_ingest::App::build(petrel_ingest::Config::parse_from(args), cancel.clone())
        .await
        .expect("ingest starts");
    Service::spawn("ingest", app.port(), cancel, app.run()).stop_limit(PATIENCE)
}
