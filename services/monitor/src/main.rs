use petrel_monitor::{App, Config};

fn main() -> anyhow::Result<()> {
    petrel_runtime::service::launch("monitor", |config: Config, cancel| async move {
        App::build(config, cancel).await?.run().await
    })
}
