use petrel_ingest::{App, Config};

fn main() -> anyhow::Result<()> {
    petrel_runtime::service::launch("ingest", |config: Config, cancel| async move {
        App::build(config, cancel).await?.run().await
    })
}
