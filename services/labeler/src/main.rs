use petrel_labeler::{App, Config};

fn main() -> anyhow::Result<()> {
    petrel_runtime::service::launch("labeler", |config: Config, cancel| async move {
        App::build(config, cancel).await?.run().await
    })
}
