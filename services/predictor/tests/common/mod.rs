//! The predictor's part of its integration tests' harness (the rest is `petrel-testkit`): a
//! real registry and predictor per test, on the local Postgres and NATS.

use clap::Parser;
pub use petrel_testkit::*;
use tokio_util::sync::CancellationToken;

/// Starts a registry in the test's world, for the predictor to load models from.
pub async fn start_registry(env: &TestEnv) -> Service {
    let args = env.args_without_store("petrel-registry", &["--database-max-connections", "4"]);
    let cancel = CancellationToken::new();
    let app =
        petrel_registry::App::build(petrel_registry::Config::parse_from(args), cancel.clone())
            .await
            .unwrap();
    Service::spawn("the registry", app.port(), cancel, app.run())
}

/// Starts a predictor in the test's world, reading `registry`.
pub async fn start_predictor(env: &TestEnv, registry: &Service) -> Service {
    start_predictor_with(env, registry, &[]).await
}

/// The predictor's command line in the test's world, with `extra` options last (they override).
pub fn predictor_args(env: &TestEnv, registry: &Service, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--database-max-connections",
        "4",
        "--registry-url",
        &registry.base,
        // Long, so that a quick switch to a new version proves `model.promoted` triggered it.
        "--reconcile-secs",
        "30",
    ];
    args.extend_from_slice(extra);
    env.args("petrel-predictor", &args)
}

/// Starts a predictor with `extra` options.
pub async fn start_predictor_with(env: &TestEnv, registry: &Service, extra: &[&str]) -> Service {
    let args = predictor_args(env, registry, extra);
    let cancel = CancellationToken::new();
    let app =
        petrel_predictor::App::build(petrel_predictor::Config::parse_from(args), cancel.clone())
            .await
            .unwrap();
    Service::spawn("the predictor", app.port(), cancel, app.run())
}
