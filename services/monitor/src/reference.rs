//! The drift reference of a model version: its training-split profile, read from the bundle.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use petrel_api::registry::RegistryClient;
use petrel_ml::{ModelBundle, ReferenceProfile, Schema};
use petrel_store::ArtifactStore;
use tokio::sync::Mutex;

/// What the monitor needs of a model version.
#[derive(Debug)]
pub struct Reference {
    pub schema: Schema,
    pub profile: ReferenceProfile,
}

/// Loaded references by model name and version.
type Cache = Arc<Mutex<HashMap<(String, i32), Arc<Reference>>>>;

/// When loading a version's reference last failed, by model name and version.
type Failures = Arc<Mutex<HashMap<(String, i32), Instant>>>;

/// How long a failed load is not retried, so a missing bundle costs one registry call per
/// interval rather than one per window check.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Why no reference is available.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// A load failed recently; it is retried after [`RETRY_AFTER`].
    #[error("loading it failed less than {}s ago", RETRY_AFTER.as_secs())]
    RecentlyFailed,
    #[error(transparent)]
    Load(#[from] anyhow::Error),
}

/// A cache of references, loaded on first use (bundles are immutable, so entries never expire).
#[derive(Clone, Debug)]
pub struct References {
    registry: RegistryClient,
    store: Arc<dyn ArtifactStore>,
    cache: Cache,
    failures: Failures,
}

impl References {
    pub fn new(registry: RegistryClient, store: Arc<dyn ArtifactStore>) -> Self {
        Self {
            registry,
            store,
            cache: Arc::default(),
            failures: Arc::default(),
        }
    }

    /// The reference of `model` `version`, loaded once and cached.
    pub async fn get(&self, model: &str, version: i32) -> Result<Arc<Reference>, ReferenceError> {
        let key = (model.to_owned(), version);
        if let Some(r) = self.cache.lock().await.get(&key) {
            return Ok(r.clone());
        }
        if let Some(at) = self.failures.lock().await.get(&key)
            && at.elapsed() < RETRY_AFTER
        {
            return Err(ReferenceError::RecentlyFailed);
        }
        match self.load(model, version).await {
            Ok(reference) => {
                self.failures.lock().await.remove(&key);
                self.cache.lock().await.insert(key, reference.clone());
                Ok(reference)
            }
            Err(e) => {
                self.failures.lock().await.insert(key, Instant::now());
                Err(e.into())
            }
        }
    }

    async fn load(&self, model: &str, version: i32) -> anyhow::Result<Arc<Reference>> {
        let v = self
            .registry
            .get_version(model, version)
            .await
            .with_context(|| format!("cannot look up {model} version {version} in the registry"))?;
        let bytes = self
            .store
            .get(&v.artifact_uri)
            .await
            .context("cannot read the model bundle")?;
        let bundle = ModelBundle::from_bytes(&bytes)?;
        let reference = Arc::new(Reference {
            schema: bundle.schema,
            profile: bundle.reference,
        });
        Ok(reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_load_is_not_retried_at_once() {
        // Port 1 refuses connections: the registry is unreachable.
        let store = petrel_store::open(std::env::temp_dir().to_str().unwrap()).unwrap();
        let refs = References::new(RegistryClient::new("http://127.0.0.1:1"), store);
        assert!(matches!(
            refs.get("m", 1).await,
            Err(ReferenceError::Load(_))
        ));
        assert!(matches!(
            refs.get("m", 1).await,
            Err(ReferenceError::RecentlyFailed)
        ));
        // Another version is tried on its own.
        assert!(matches!(
            refs.get("m", 2).await,
            Err(ReferenceError::Load(_))
        ));
    }
}
