use petrel_trainer::{App, Config};

fn main() -> anyhow::Result<()> {
    petrel_runtime::service::launch("trainer", |config: Config, cancel| async move {
        App::build(config, cancel).await?.run().await
    })
}
