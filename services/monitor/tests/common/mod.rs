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

/// Length of the test monitor's windows, in seconds.
pub const WINDOW_SECS: i64 = 10;

/// Starts a monitor in the test's world, with windows of [`WINDOW_SECS`], alerts confirmed
/// over 2 windows and resolved after 2 clean ones; `extra` flags are appended.
pub async fn start_monitor_with(env: &TestEnv, registry: &Service, extra: &[&str]) -> Service {
    let window = WINDOW_SECS.to_string();
    let mut flags = vec![
        "--database-max-connections",
        "4",
        "--registry-url",
        &registry.base,
        "--window-secs",
        &window,
        "--window-lateness-secs",
        "1",
        "--window-idle-secs",
        "2",
        "--min-window",
        "20",
        "--min-labels",
        "10",
        "--confirm-windows",
        "2",
        "--resolve-after",
        "2",
    ];
    flags.extend_from_slice(extra);
    let args = env.args("petrel-monitor", &flags);
    let cancel = CancellationToken::new();
    let app = petrel_monitor::App::build(petrel_monitor::Config::parse_from(args), cancel.clone())
        .await
        .unwrap();
    Service::spawn("the monitor", app.port(), cancel, app.run())
}
