//! The single-blob model artefact passed from the trainer to the registry, predictor and monitor.

use serde::{Deserialize, Serialize};

use crate::{
    CnnWeights, HeldOut, LoadedModel, Metrics, MlError, MlpWeights, Preprocessor, ReferenceProfile,
    Schema, Scorer, TrainConfig, Trees,
};

/// The newest bundle layout this build writes and reads; bumped on any incompatible change so
/// an old predictor refuses a newer bundle instead of misreading it.
///
/// Version 2 added hidden layers beyond the first (`weights.deeper`). A network of one hidden
/// layer is still written as version 1, which every earlier build reads; a deeper one is
/// version 2, which a version-1 build refuses rather than serving it without its extra layers.
/// Version 3 holds gradient-boosted trees (`trees` instead of `weights`); MLP bundles are still
/// written as 1 or 2. Version 4 has a text column (hashed TF-IDF preprocessing and a text
/// reference), whatever its model. Version 5 has an image column or a CNN (`cnn`).
pub const BUNDLE_FORMAT_VERSION: u32 = 5;

/// The oldest bundle layout this build reads.
pub const MIN_BUNDLE_FORMAT_VERSION: u32 = 1;

/// The version a bundle is written as: the oldest that can hold its schema and its model.
#[must_use]
pub fn format_version_for(schema: &Schema, scorer: &Scorer) -> u32 {
    let has = |kind| schema.features.iter().any(|c| c.kind == kind);
    if has(crate::ColumnKind::Image) || matches!(scorer, Scorer::Cnn(_)) {
        return 5;
    }
    if has(crate::ColumnKind::Text) {
        return 4;
    }
    match scorer {
        Scorer::Mlp(w) if w.deeper.is_empty() => 1,
        Scorer::Mlp(_) => 2,
        Scorer::Trees(_) | Scorer::Cnn(_) => 3,
    }
}

/// Everything needed to serve, audit and monitor one trained model.
///
/// Encoded as one JSON document. Floating-point statistics survive exactly because this crate
/// enables serde_json's `float_roundtrip`, and weights are stored as hexadecimal bit patterns, so
/// a decoded bundle predicts exactly what the original did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelBundle {
    /// [`format_version_for`] its weights, for bundles written by this build.
    pub format_version: u32,
    /// The schema the model was trained on; requests are validated against it.
    pub schema: Schema,
    /// Preprocessing fitted on the training split.
    pub preprocessor: Preprocessor,
    /// Class labels, sorted; output `i` of the network is `class_names[i]`.
    pub class_names: Vec<String>,
    /// The configuration the model was trained with.
    pub config: TrainConfig,
    /// Held-out evaluation results.
    pub metrics: Metrics,
    /// Raw training-split feature profile, the monitor's drift reference.
    pub reference: ReferenceProfile,
    /// The model's outputs on its held-out split: the monitor's reference for prediction
    /// drift and its calibration for estimated accuracy. Absent in bundles written before it.
    #[serde(default)]
    pub held_out: Option<HeldOut>,
    /// The trained network's parameters (MLP bundles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<MlpWeights>,
    /// The trained ensemble (gradient-boosted-tree bundles, format 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trees: Option<Trees>,
    /// The trained convolutional network (CNN bundles, format 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnn: Option<CnnWeights>,
}

/// Just enough of a bundle to read its version before trusting the rest of the layout.
#[derive(Deserialize)]
struct VersionProbe {
    format_version: u32,
}

impl ModelBundle {
    /// One self-contained blob (JSON, weights as hex-encoded f32 arrays with shapes). Round-trips
    /// exactly: predictions from a decoded bundle equal the original's.
    pub fn to_bytes(&self) -> Result<Vec<u8>, MlError> {
        self.check()?;
        serde_json::to_vec(self).map_err(|e| MlError::Bundle(format!("cannot encode bundle: {e}")))
    }

    /// Decodes and checks a blob written by [`to_bytes`](Self::to_bytes); garbage, a bundle of
    /// another format version, and internally inconsistent bundles are refused with a clear error.
    pub fn from_bytes(bytes: &[u8]) -> Result<ModelBundle, MlError> {
        let probe: VersionProbe = serde_json::from_slice(bytes).map_err(|_| {
            MlError::Bundle(
                "not a Petrel model bundle (expected a JSON object with a format_version)".into(),
            )
        })?;
        if !(MIN_BUNDLE_FORMAT_VERSION..=BUNDLE_FORMAT_VERSION).contains(&probe.format_version) {
            return Err(MlError::Bundle(format!(
                "unsupported bundle format_version {} (this build reads versions {} to {})",
                probe.format_version, MIN_BUNDLE_FORMAT_VERSION, BUNDLE_FORMAT_VERSION
            )));
        }
        let bundle: ModelBundle = serde_json::from_slice(bytes)
            .map_err(|e| MlError::Bundle(format!("malformed model bundle: {e}")))?;
        bundle.check()?;
        Ok(bundle)
    }

    /// Builds the inference model.
    pub fn load(&self) -> Result<LoadedModel, MlError> {
        self.check()?;
        Ok(LoadedModel::new(
            self.schema.clone(),
            self.preprocessor.clone(),
            self.class_names.clone(),
            self.scorer()?,
        ))
    }

    /// The model's parameters, whichever kind it is.
    pub fn scorer(&self) -> Result<Scorer, MlError> {
        match (&self.weights, &self.trees, &self.cnn) {
            (Some(w), None, None) => Ok(Scorer::Mlp(w.clone())),
            (None, Some(t), None) => Ok(Scorer::Trees(t.clone())),
            (None, None, Some(c)) => Ok(Scorer::Cnn(c.clone())),
            _ => Err(MlError::Bundle(
                "inconsistent model bundle: it must hold exactly one of network weights, trees \
                 or a convolutional network"
                    .into(),
            )),
        }
    }

    /// The bundle fields that hold `scorer`: `(weights, trees, cnn)`, one of them set.
    pub fn model_fields(scorer: Scorer) -> (Option<MlpWeights>, Option<Trees>, Option<CnnWeights>) {
        match scorer {
            Scorer::Mlp(w) => (Some(w), None, None),
            Scorer::Trees(t) => (None, Some(t), None),
            Scorer::Cnn(c) => (None, None, Some(c)),
        }
    }

    /// What kind of model it holds.
    pub fn kind(&self) -> crate::ModelKind {
        if self.trees.is_some() {
            crate::ModelKind::Gbt
        } else if self.cnn.is_some() {
            crate::ModelKind::Cnn
        } else {
            crate::ModelKind::Mlp
        }
    }

    /// Checks that the parts agree with each other, since serving a bundle whose shapes disagree
    /// would either panic or silently mispredict.
    fn check(&self) -> Result<(), MlError> {
        let bad = |m: String| Err(MlError::Bundle(format!("inconsistent model bundle: {m}")));
        let scorer = self.scorer()?;
        let needed = format_version_for(&self.schema, &scorer);
        if self.format_version != needed {
            return bad(format!(
                "format_version is {} but its model needs version {needed}",
                self.format_version
            ));
        }
        self.schema
            .validate()
            .map_err(|e| MlError::Bundle(format!("inconsistent model bundle: {e}")))?;
        if let Err(m) = self.preprocessor.check_matches(&self.schema) {
            return bad(m);
        }
        if self.class_names.len() < 2 {
            return bad("fewer than 2 classes".into());
        }
        if !self.class_names.windows(2).all(|w| w[0] < w[1]) {
            return bad("class names are not sorted and unique".into());
        }
        if let Err(m) = scorer.validate() {
            return bad(m);
        }
        if let Some(h) = &self.held_out {
            let n = h.predicted.len();
            if h.confidence.len() != n || h.correct.len() != n {
                return bad(
                    "held-out predictions, confidences and outcomes differ in length".into(),
                );
            }
            if h.confidence.iter().any(|c| !(0.0..=1.0).contains(c)) {
                return bad("a held-out confidence is outside [0, 1]".into());
            }
        }
        if scorer.inputs() != self.preprocessor.width() {
            return bad(format!(
                "the model takes {} inputs but preprocessing produces {}",
                scorer.inputs(),
                self.preprocessor.width()
            ));
        }
        if let Scorer::Cnn(cnn) = &scorer {
            let image_only = matches!(
                self.preprocessor.columns.as_slice(),
                [crate::ColumnTransform::Image { height, width, .. }]
                    if (*height, *width) == (cnn.height, cnn.width)
            );
            if !image_only {
                return bad(format!(
                    "the convolutional network takes one {}x{} image column",
                    cnn.height, cnn.width
                ));
            }
        }
        if scorer.classes() != self.class_names.len() {
            return bad(format!(
                "the model has {} outputs for {} classes",
                scorer.classes(),
                self.class_names.len()
            ));
        }
        Ok(())
    }
}
