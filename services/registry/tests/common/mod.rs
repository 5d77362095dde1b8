//! The registry's part of its integration tests' harness (the rest is `petrel-testkit`): a
//! registry started in-process against the real Postgres and NATS, in the test's own world.

use clap::Parser;
use petrel_api::registry::RegistryClient;
pub use petrel_testkit::*;
use tokio_util::sync::CancellationToken;

/// Starts the registry under test in the test's world.
pub async fn start_registry(env: &TestEnv) -> Service {
    start_registry_with(env, &[]).await
}

/// Starts the registry with extra flags; its artifact root is the test's.
pub async fn start_registry_with(env: &TestEnv, extra: &[&str]) -> Service {
    let args = env.args("petrel-registry", extra);
    let cancel = CancellationToken::new();
    let app =
        petrel_registry::App::build(petrel_registry::Config::parse_from(args), cancel.clone())
            .await
            .expect("the registry starts");
    Service::spawn("the registry", app.port(), cancel, app.run()).stop_limit(PATIENCE)
}

/// A typed client for the registry under test.
pub trait TypedClient {
    fn client(&self) -> RegistryClient;
}

impl TypedClient for Service {
    fn client(&self) -> RegistryClient {
        RegistryClient::new(&self.base)
    }
}
