//! The served model and how it is replaced.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwapOption;
use petrel_api::registry::RegistryClient;
use petrel_events::payloads::ModelPromoted;
use petrel_ml::{LoadedModel, ModelBundle};
use petrel_store::ArtifactStore;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// A loaded model and where it came from.
#[derive(Debug)]
pub struct Served {
    pub model_name: String,
    pub version: i32,
    pub artifact_uri: String,
    pub model: LoadedModel,
}

/// The model being served, swapped atomically: a request takes a snapshot and keeps it for its
/// whole life, so a reload never changes a model under a request.
#[derive(Clone, Debug, Default)]
pub struct ServedSlot(Arc<ArcSwapOption<Served>>);

impl ServedSlot {
    pub fn current(&self) -> Option<Arc<Served>> {
        self.0.load_full()
    }

    pub fn replace(&self, served: Served) {
        self.0.store(Some(Arc::new(served)));
    }
}

/// Loads the version an alias names.
#[derive(Clone, Debug)]
pub struct Loader {
    registry: RegistryClient,
    store: Arc<dyn ArtifactStore>,
    slot: ServedSlot,
    model_name: String,
    alias: String,
    /// One load at a time, so an event and the reconcile loop never race to swap.
    lock: Arc<Mutex<()>>,
}

impl Loader {
    pub fn new(
        registry: RegistryClient,
        store: Arc<dyn ArtifactStore>,
        slot: ServedSlot,
        model_name: &str,
        alias: &str,
    ) -> Self {
        Self {
            registry,
            store,
            slot,
            model_name: model_name.to_owned(),
            alias: alias.to_owned(),
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// Asks the registry which version the alias names and loads it if it is not served yet.
    pub async fn reconcile(&self) -> anyhow::Result<()> {
        let target = self
            .registry
            .get_alias(&self.model_name, &self.alias)
            .await
            .context("cannot ask the registry for the served alias")?;
        match target {
            Some(v) => self.load(v.version, &v.artifact_uri, "reconcile").await,
            None => {
                tracing::debug!(model.name = %self.model_name, alias = %self.alias, "alias not set yet");
                Ok(())
            }
        }
    }

    /// Reacts to an alias move announced on the bus. The event says *that* the alias moved; the
    /// registry says where it points now, so events that arrive out of order (or a retried old
    /// one) can never bring back an older version.
    pub async fn on_promoted(&self, event: &ModelPromoted) -> anyhow::Result<()> {
        if event.model_name != self.model_name || event.alias != self.alias {
            return Ok(());
        }
        self.reconcile().await
    }

    async fn load(&self, version: i32, uri: &str, why: &str) -> anyhow::Result<()> {
        let _one_at_a_time = self.lock.lock().await;
        if self.slot.current().is_some_and(|s| s.version == version) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let bytes = self
            .store
            .get(uri)
            .await
            .with_context(|| format!("cannot read bundle {uri}"))?;
        let model = tokio::task::spawn_blocking(move || -> anyhow::Result<LoadedModel> {
            Ok(ModelBundle::from_bytes(&bytes)?.load()?)
        })
        .await??;
        let previous = self.slot.current().map(|s| s.version);
        self.slot.replace(Served {
            model_name: self.model_name.clone(),
            version,
            artifact_uri: uri.to_owned(),
            model,
        });
        tracing::info!(
            model.name = %self.model_name,
            model.version = version,
            previous = ?previous,
            trigger = why,
            duration_ms = started.elapsed().as_millis() as u64,
            "now serving"
        );
        Ok(())
    }

    /// Reconciles every `every` until cancelled (every second while nothing is served).
    pub async fn reconcile_loop(&self, every: Duration, cancel: CancellationToken) {
        loop {
            let wait = if self.slot.current().is_some() {
                every
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = format!("{e:#}"), "reconcile failed");
            }
        }
    }
}
