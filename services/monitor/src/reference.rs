//! The drift reference of a model version: its training-split profile, read from the bundle.

use std::collections::HashMap;
use std::sync::Arc;

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

/// A cache of references, loaded on first use (bundles are immutable, so entries never expire).
#[derive(Clone, Debug)]
pub struct References {
    registry: RegistryClient,
    store: Arc<dyn ArtifactStore>,
    cache: Cache,
}

impl References {
    pub fn new(registry: RegistryClient, store: Arc<dyn ArtifactStore>) -> Self {
        Self {
            registry,
            store,
            cache: Arc::default(),
        }
    }

    pub async fn get(&self, model: &str, version: i32) -> anyhow::Result<Arc<Reference>> {
        let key = (model.to_owned(), version);
        if let Some(r) = self.cache.lock().await.get(&key) {
            return Ok(r.clone());
        }
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
        self.cache.lock().await.insert(key, reference.clone());
        Ok(reference)
    }
}
