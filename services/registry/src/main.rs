use petrel_registry::{App, Config};

fn main() -> anyhow::Result<()> {
    petrel_runtime::service::launch("registry", |config: Config, cancel| async move {
        App::build(config, cancel).await?.run().await
    })
}
