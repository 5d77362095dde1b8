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
    pub model_name: Arc<str>,
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

    /// Serves `served` from now on; `petrel_served_model_version{model}` says which.
    pub fn replace(&self, served: Served) {
        metrics::gauge!("petrel_served_model_version", "model" => served.model_name.to_string())
            .set(f64::from(served.version));
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
    /// One reconcile at a time, from reading the alias to swapping, so an event and the
    /// reconcile loop never race: a read of the alias is applied before any later read is.
    lock: Arc<Mutex<()>>,
    /// Versions asked for by reference (`name/3`, `name@alias`), loaded on demand.
    pinned: Arc<Mutex<Pinned>>,
}

/// A bounded cache of pinned versions, least recently used evicted first, and of aliases
/// resolved for pinning (for a few seconds, so a pinned alias does not cost a registry call per
/// request).
#[derive(Debug)]
struct Pinned {
    capacity: usize,
    versions: Vec<(String, i32, Arc<Served>)>,
    aliases: Vec<(String, String, i32, String, std::time::Instant)>,
}

/// How long a pinned alias is trusted before the registry is asked again.
const PINNED_ALIAS_TTL: Duration = Duration::from_secs(5);

/// A request's choice of model: a version (`name/3`) or an alias (`name@challenger`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelRef {
    Version(String, i32),
    Alias(String, String),
}

impl ModelRef {
    /// Parses `name/VERSION` or `name@ALIAS`; the message says what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "model {s:?} must be NAME/VERSION (penguins/3) or NAME@ALIAS (penguins@challenger)"
            )
        };
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.len() <= 256
                && !n.chars().any(|c| c.is_control() || c == '/' || c == '@')
        };
        if let Some((name, version)) = s.rsplit_once('/') {
            let version: i32 = version.parse().map_err(|_| bad())?;
            if !valid_name(name) || version < 1 {
                return Err(bad());
            }
            return Ok(Self::Version(name.to_owned(), version));
        }
        if let Some((name, alias)) = s.split_once('@') {
            if !valid_name(name) || !valid_name(alias) {
                return Err(bad());
            }
            return Ok(Self::Alias(name.to_owned(), alias.to_owned()));
        }
        Err(bad())
    }
}

/// Why a pinned model could not be served.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{0}")]
    NotFound(String),
    #[error("cannot load the requested model")]
    Unavailable(#[source] anyhow::Error),
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
            pinned: Arc::new(Mutex::new(Pinned {
                capacity: 4,
                versions: Vec::new(),
                aliases: Vec::new(),
            })),
        }
    }

    /// Keeps at most `n` pinned versions loaded (at least one).
    pub fn with_pinned_capacity(self, n: usize) -> Self {
        if let Ok(mut p) = self.pinned.try_lock() {
            p.capacity = n.max(1);
        }
        self
    }

    /// The model a request pinned, loading it if needed. The served version is reused when the
    /// reference names it.
    pub async fn pinned(&self, reference: &ModelRef) -> Result<Arc<Served>, PinError> {
        let (name, version, uri) = match reference {
            ModelRef::Version(name, version) => (name.clone(), *version, None),
            ModelRef::Alias(name, alias) => {
                let cached = {
                    let p = self.pinned.lock().await;
                    p.aliases
                        .iter()
                        .find(|(n, a, ..)| n == name && a == alias)
                        .filter(|(.., at)| at.elapsed() < PINNED_ALIAS_TTL)
                        .map(|(_, _, v, uri, _)| (*v, uri.clone()))
                };
                let (version, uri) = match cached {
                    Some(hit) => hit,
                    None => {
                        let found = self
                            .registry
                            .get_alias(name, alias)
                            .await
                            .map_err(|e| PinError::Unavailable(e.into()))?
                            .ok_or_else(|| {
                                PinError::NotFound(format!("model {name:?} has no alias {alias:?}"))
                            })?;
                        let mut p = self.pinned.lock().await;
                        p.aliases.retain(|(n, a, ..)| !(n == name && a == alias));
                        p.aliases.push((
                            name.clone(),
                            alias.clone(),
                            found.version,
                            found.artifact_uri.clone(),
                            std::time::Instant::now(),
                        ));
                        (found.version, found.artifact_uri)
                    }
                };
                (name.clone(), version, Some(uri))
            }
        };
        if let Some(s) = self.slot.current()
            && *s.model_name == *name
            && s.version == version
        {
            return Ok(s);
        }
        let mut p = self.pinned.lock().await;
        if let Some(i) = p
            .versions
            .iter()
            .position(|(n, v, _)| *n == name && *v == version)
        {
            // Most recently used last.
            let hit = p.versions.remove(i);
            let served = hit.2.clone();
            p.versions.push(hit);
            return Ok(served);
        }
        let uri = match uri {
            Some(uri) => uri,
            None => match self.registry.get_version(&name, version).await {
                Ok(v) => v.artifact_uri,
                Err(petrel_api::client::ClientError::Api { status: 404, .. }) => {
                    return Err(PinError::NotFound(format!(
                        "model {name:?} has no version {version}"
                    )));
                }
                Err(e) => return Err(PinError::Unavailable(e.into())),
            },
        };
        let model = self
            .read_bundle(&uri)
            .await
            .map_err(PinError::Unavailable)?;
        let served = Arc::new(Served {
            model_name: name.as_str().into(),
            version,
            artifact_uri: uri,
            model,
        });
        if p.versions.len() >= p.capacity {
            p.versions.remove(0);
        }
        p.versions.push((name, version, served.clone()));
        tracing::info!(model.name = %served.model_name, model.version = version, "pinned version loaded");
        Ok(served)
    }

    async fn read_bundle(&self, uri: &str) -> anyhow::Result<LoadedModel> {
        let bytes = self
            .store
            .get(uri)
            .await
            .with_context(|| format!("cannot read bundle {uri}"))?;
        tokio::task::spawn_blocking(move || -> anyhow::Result<LoadedModel> {
            Ok(ModelBundle::from_bytes(&bytes)?.load()?)
        })
        .await?
    }

    /// Asks the registry which version the alias names and loads it if it is not served yet.
    ///
    /// The whole of it runs under one lock: an answer read before another is always applied
    /// before it, so an older reading can never be installed after a newer one.
    pub async fn reconcile(&self) -> anyhow::Result<()> {
        let _one_at_a_time = self.lock.lock().await;
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

    /// Loads and swaps in `version`; the caller holds `lock`.
    async fn load(&self, version: i32, uri: &str, why: &str) -> anyhow::Result<()> {
        if self.slot.current().is_some_and(|s| s.version == version) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let model = self.read_bundle(uri).await?;
        let previous = self.slot.current().map(|s| s.version);
        self.slot.replace(Served {
            model_name: self.model_name.as_str().into(),
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
