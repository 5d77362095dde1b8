use petrel_predictor::App;
use petrel_predictor::container::{Cli, Command, ContainerApp};

fn main() -> anyhow::Result<()> {
    petrel_runtime::service::launch("predictor", |cli: Cli, cancel| async move {
        match cli.command {
            // SageMaker starts inference containers with the argument `serve`.
            Some(Command::Serve(config)) => ContainerApp::build(config, cancel).await?.run().await,
            None => App::build(cli.service, cancel).await?.run().await,
        }
    })
}
