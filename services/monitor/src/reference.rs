//! The reference of a model version, read once from its bundle: the training split's feature
//! samples (sorted once, for every window's drift tests), the ranges and categories training
//! saw, and the model's outputs on its held-out split (prediction drift and calibration).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use petrel_api::registry::RegistryClient;
use petrel_drift::{CategoricalSample, NumericSample};
use petrel_ml::{ColumnKind, ModelBundle, Schema};
use petrel_store::ArtifactStore;
use tokio::sync::Mutex;

use crate::calibration::Calibration;

/// A numeric feature's training values.
#[derive(Debug)]
pub struct NumericReference {
    pub sample: NumericSample,
    /// Smallest and largest training value: live values outside are out of range.
    pub min: f64,
    pub max: f64,
}

/// A text column's derived features in training.
#[derive(Debug)]
pub struct TextReference {
    /// Tokens per training text, with the training split's missing texts.
    pub length: NumericSample,
    /// Out-of-vocabulary share of each held-out text.
    pub oov_share: NumericSample,
    /// Mean of `oov_share`: the share of unknown words new data of the training kind shows.
    pub mean_oov_share: f64,
    /// The training vocabulary, sorted.
    pub vocabulary: Vec<String>,
    /// Counts of the most frequent training tokens (the rest as one category).
    pub tokens: CategoricalSample,
    /// The same counts, as the current window's tokens are bucketed against them.
    pub top_tokens: std::collections::BTreeMap<String, u64>,
}

/// An image column's intensity statistics in training.
#[derive(Debug)]
pub struct ImageReference {
    /// Mean intensity (share of the column's range) of each training image, with the missing.
    pub mean_intensity: NumericSample,
    /// Contrast (standard deviation, share of the range) of each training image.
    pub contrast: NumericSample,
    /// The column's pixel range, to read live images in the same units.
    pub max_value: f64,
}

/// The model's outputs on its held-out split.
#[derive(Debug)]
pub struct PredictionReference {
    pub classes: CategoricalSample,
    pub confidence: NumericSample,
    /// Confidence to probability of being right, fitted on the held-out split.
    pub calibration: Calibration,
}

/// What the monitor needs of a model version.
#[derive(Debug)]
pub struct Reference {
    pub schema: Schema,
    pub numeric: std::collections::BTreeMap<String, NumericReference>,
    pub categorical: std::collections::BTreeMap<String, CategoricalSample>,
    pub text: std::collections::BTreeMap<String, TextReference>,
    pub image: std::collections::BTreeMap<String, ImageReference>,
    /// Absent for bundles written before held-out outputs were kept.
    pub predictions: Option<PredictionReference>,
    /// Accuracy on the held-out split at training time.
    pub test_accuracy: f64,
}

impl Reference {
    /// Prepares a bundle's profile for windows: samples sorted once, missing counts scaled
    /// to subsampled numeric columns so the missing share is the training split's.
    pub fn from_bundle(bundle: ModelBundle) -> Reference {
        let profile = bundle.reference;
        let mut numeric = std::collections::BTreeMap::new();
        let mut categorical = std::collections::BTreeMap::new();
        let mut text = std::collections::BTreeMap::new();
        let mut image = std::collections::BTreeMap::new();
        for col in &bundle.schema.features {
            let missing = profile.missing.get(&col.name).copied().unwrap_or(0);
            match col.kind {
                ColumnKind::Numeric => {
                    let Some(values) = profile.numeric.get(&col.name) else {
                        continue;
                    };
                    let missing = scaled_missing(missing, values.len(), profile.rows);
                    let sample = NumericSample::new(values).with_missing(missing);
                    let (min, max) = match (sample.values().first(), sample.values().last()) {
                        (Some(a), Some(b)) => (*a, *b),
                        _ => (f64::NAN, f64::NAN),
                    };
                    numeric.insert(col.name.clone(), NumericReference { sample, min, max });
                }
                ColumnKind::Categorical => {
                    let Some(counts) = profile.categorical.get(&col.name) else {
                        continue;
                    };
                    categorical.insert(
                        col.name.clone(),
                        CategoricalSample::from_counts(counts.clone(), missing),
                    );
                }
                ColumnKind::Text => {
                    let Some(t) = profile.text.get(&col.name) else {
                        continue;
                    };
                    let missing = scaled_missing(missing, t.lengths.len(), profile.rows);
                    let oov = &t.oov_shares;
                    text.insert(
                        col.name.clone(),
                        TextReference {
                            length: NumericSample::new(&t.lengths).with_missing(missing),
                            oov_share: NumericSample::new(oov),
                            mean_oov_share: oov.iter().sum::<f64>() / oov.len().max(1) as f64,
                            vocabulary: t.vocabulary.clone(),
                            tokens: CategoricalSample::from_counts(t.tokens.clone(), 0),
                            top_tokens: t.tokens.clone(),
                        },
                    );
                }
                ColumnKind::Image => {
                    let Some(p) = profile.image.get(&col.name) else {
                        continue;
                    };
                    let missing = scaled_missing(missing, p.mean_intensity.len(), profile.rows);
                    image.insert(
                        col.name.clone(),
                        ImageReference {
                            mean_intensity: NumericSample::new(&p.mean_intensity)
                                .with_missing(missing),
                            contrast: NumericSample::new(&p.contrast).with_missing(missing),
                            max_value: col.image.map_or(1.0, |s| s.max_value),
                        },
                    );
                }
            }
        }
        let predictions = bundle
            .held_out
            .filter(|h| !h.predicted.is_empty())
            .map(|h| PredictionReference {
                classes: CategoricalSample::from_values(
                    h.predicted.iter().map(|c| Some(c.as_str())),
                ),
                confidence: NumericSample::new(
                    &h.confidence
                        .iter()
                        .map(|&c| f64::from(c))
                        .collect::<Vec<_>>(),
                ),
                calibration: Calibration::fit(
                    &h.confidence
                        .iter()
                        .map(|&c| f64::from(c))
                        .collect::<Vec<_>>(),
                    &h.correct,
                ),
            });
        Reference {
            schema: bundle.schema,
            numeric,
            categorical,
            text,
            image,
            predictions,
            test_accuracy: bundle.metrics.test_accuracy,
        }
    }
}

/// The missing count to pair with a sample of `kept` values out of the training split's
/// present ones, so a subsampled column keeps the training split's missing share.
fn scaled_missing(missing: u64, kept: usize, rows: u64) -> u64 {
    let present = rows.saturating_sub(missing).max(1);
    let kept = kept as u64;
    if kept < present {
        ((missing as f64) * (kept as f64) / (present as f64)).round() as u64
    } else {
        missing
    }
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
        Ok(Arc::new(Reference::from_bundle(bundle)))
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
