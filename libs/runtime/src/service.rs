//! Running a service: parse config, start logging, cancel on signals, run the service's tasks
//! and report which one ended.

use std::future::Future;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::LogArgs;

/// A service config that carries the logging block.
pub trait ServiceConfig: clap::Parser {
    fn log(&self) -> &LogArgs;
}

/// The body of every service's `main`: parses `C` from flags and environment, installs
/// logging, and runs `body` with a token cancelled on SIGINT/SIGTERM. Exits non-zero with the
/// error chain if start-up or a task fails.
pub fn launch<C, F, Fut>(service: &'static str, body: F) -> anyhow::Result<()>
where
    C: ServiceConfig,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config = C::parse();
    let _telemetry = crate::telemetry::init(service, config.log());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let cancel = crate::shutdown::on_signal();
        body(config, cancel).await
    });
    match &result {
        Ok(()) => tracing::info!(service, "stopped"),
        Err(e) => tracing::error!(service, error = format!("{e:#}"), "failed"),
    }
    result
}

/// The long-running tasks of a service (HTTP server, consumers, outbox relay). When one fails,
/// the others are cancelled; when the token is cancelled, all are awaited so each can drain.
#[derive(Debug)]
pub struct Tasks {
    set: JoinSet<(&'static str, anyhow::Result<()>)>,
    cancel: CancellationToken,
}

impl Tasks {
    pub fn new(cancel: CancellationToken) -> Self {
        Self {
            set: JoinSet::new(),
            cancel,
        }
    }

    /// The token the tasks watch.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub fn spawn<Fut>(&mut self, name: &'static str, fut: Fut)
    where
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.set.spawn(async move { (name, fut.await) });
    }

    /// Waits for every task. Returns the first failure, naming the task.
    pub async fn join(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        while let Some(joined) = self.set.join_next().await {
            let (name, result) = match joined {
                Ok(r) => r,
                Err(e) => (
                    "task",
                    Err(anyhow::anyhow!("a task panicked or was aborted: {e}")),
                ),
            };
            match result {
                Ok(()) => {
                    if !self.cancel.is_cancelled() {
                        tracing::warn!(
                            task = name,
                            "task ended before shutdown; stopping the service"
                        );
                        self.cancel.cancel();
                    }
                }
                Err(e) => {
                    tracing::error!(
                        task = name,
                        error = format!("{e:#}"),
                        "task failed; stopping the service"
                    );
                    self.cancel.cancel();
                    first_error.get_or_insert(e.context(format!("{name} failed")));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
