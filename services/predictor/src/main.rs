use petrel_predictor::{App, Config};

fn main() -> anyhow::Result<()> {
    petrel_runtime::service::launch("predictor", |config: Config, cancel| async move {
        App::build(config, cancel).await?.run().await
    })
}
