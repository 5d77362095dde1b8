//! The monitor's part of its integration tests' harness (the rest is `petrel-testkit`): a real
//! registry and monitor per test, on the local Postgres and NATS.

use clap::Parser;
pub use petrel_testkit::*;
use tokio_util::sync::CancellationToken;

/// Starts a registry in the test's world, for the monitor to find models in.
pub async fn start_registry(env: &TestEnv) -> Service {
    let args = env.args_without_store("petrel-registry", &["--database-max-connections", "4"]);
    let cancel = CancellationToken::new();
    let app =
        petrel_registry::App::build(petrel_registry::Config::parse_from(args), cancel.clone())
            .await
            .unwrap();
    Service::spawn("the registry", app.port(), cancel, app.run())
}

/// Starts a monitor in the test's world, with windows small and short enough for a test.
pub async fn start_monitor(env: &TestEnv, registry: &Service) -> Service {
    let args = env.args(
        "petrel-monitor",
        &[
            "--database-max-connections",
            "4",
            "--registry-url",
            &registry.base,
            "--window-size",
            "50",
            "--min-window",
            "20",
            "--min-labels",
            "10",
            "--window-max-secs",
            "2",
        ],
    );
    let cancel = CancellationToken::new();
    let app = petrel_monitor::App::build(petrel_monitor::Config::parse_from(args), cancel.clone())
        .await
        .unwrap();
    Service::spawn("the monitor", app.port(), cancel, app.run())
}
