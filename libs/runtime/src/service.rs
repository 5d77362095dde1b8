//! Running a service: parse config, start logging, cancel on signals, run the service's tasks
//! and report which one ended.

use std::future::Future;

use std::time::Duration;

use anyhow::Context;
use axum::Router;
use petrel_events::consumer::{self, ConsumerSpec, Outcome};
use petrel_events::outbox::Relay;
use petrel_events::{Bus, Envelope, Event};
use tokio::net::TcpListener;
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

    /// Serves `router` on `listener` until cancelled, then drains requests in flight for up to
    /// 30 seconds.
    pub fn spawn_http(&mut self, listener: TcpListener, router: Router) {
        let cancel = self.cancel.clone();
        self.spawn("http", async move {
            crate::http::serve(listener, router, cancel, Duration::from_secs(30)).await?;
            Ok(())
        });
    }

    /// Runs the outbox relay until cancelled (it publishes what is pending once more on the way
    /// out).
    pub fn spawn_outbox(&mut self, relay: Relay) {
        let cancel = self.cancel.clone();
        self.spawn("outbox", async move {
            relay.run(cancel).await;
            Ok(())
        });
    }

    /// Runs a JetStream consumer until cancelled; see [`petrel_events::consumer::run`].
    pub fn spawn_consumer<E, H, Fut>(
        &mut self,
        name: &'static str,
        bus: Bus,
        spec: ConsumerSpec,
        handler: H,
    ) where
        E: Event,
        H: Fn(Envelope<E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.spawn(name, async move {
            consumer::run(bus, spec, cancel, handler).await?;
            Ok(())
        });
    }

    /// Runs a batch consumer ([`consumer::run_batch`]) as a task: its handler gets every event
    /// of a fetch at once.
    pub fn spawn_batch_consumer<E, H, Fut>(
        &mut self,
        name: &'static str,
        bus: Bus,
        spec: ConsumerSpec,
        handler: H,
    ) where
        E: Event,
        H: Fn(Vec<Envelope<E>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = consumer::BatchOutcome> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.spawn(name, async move {
            consumer::run_batch(bus, spec, cancel, handler).await?;
            Ok(())
        });
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
