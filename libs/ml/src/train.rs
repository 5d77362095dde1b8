//! Training a classifier from a validated [`Table`] into a [`ModelBundle`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::rng::SeededRng;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::bundle::format_version_for;
use crate::preprocess::as_category;
use crate::text::TextProfile;
use crate::{
    ColumnKind, FeatureRow, MlError, Mlp, ModelBundle, Preprocessor, Schema, Scorer, Table, Value,
    stratified_split,
};

/// Fewest rows worth training on; below this, a test split says nothing.
pub const MIN_TRAINING_ROWS: usize = 10;

/// Most numeric values kept per column in the [`ReferenceProfile`], so bundles stay small.
pub const REFERENCE_SAMPLE_CAP: usize = 10_000;

/// Asks training in progress to stop. Checked before every epoch, so training ends within one
/// epoch of [`stop`](Self::stop) with [`MlError::Cancelled`]; clones share one flag, so a
/// sweep's concurrent trials all stop.
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// A flag nobody has set yet.
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Asks every training watching this flag to stop.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn check(&self) -> Result<(), MlError> {
        if self.is_stopped() {
            Err(MlError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// Which kind of model [`train_classifier`] fits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// The burn MLP (`hidden_size`, `depth`, `dropout`, `epochs`, ...).
    #[default]
    Mlp,
    /// Gradient-boosted trees (`rounds`, `max_depth`, `eta`), through `forust-ml`.
    Gbt,
    /// The burn convolutional network for one image column (`channels`, `hidden_size`,
    /// `dropout`, `epochs`, `batch_size`, ...).
    Cnn,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Mlp => "mlp",
            ModelKind::Gbt => "gbt",
            ModelKind::Cnn => "cnn",
        }
    }
}

/// Hyperparameters of [`train_classifier`].
///
/// Missing fields take their defaults when deserialising, so clients may send only what they
/// want to change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// The kind of model: `mlp` (the default) or `gbt`.
    pub kind: ModelKind,
    /// Gradient-boosted trees: boosting rounds (trees per booster).
    pub rounds: usize,
    /// Gradient-boosted trees: the deepest a tree grows.
    pub max_depth: usize,
    /// Gradient-boosted trees: the learning rate (XGBoost's `eta`).
    pub eta: f64,
    /// Hidden units of each hidden layer of the MLP.
    pub hidden_size: usize,
    /// Hidden layers (1 is the classic two-layer perceptron).
    pub depth: usize,
    /// Share of hidden activations dropped in each training step (0 disables dropout).
    pub dropout: f64,
    /// Full-batch optimisation steps (the most, when early stopping is on).
    pub epochs: usize,
    /// Early stopping: stop after this many epochs without a lower validation loss and keep
    /// the weights of the best epoch (0 disables it and trains every epoch).
    pub patience: usize,
    /// Share of the training split (per class) set aside to measure the validation loss when
    /// early stopping is on.
    pub validation_fraction: f64,
    /// Adam step size.
    pub learning_rate: f64,
    /// L2 penalty added to the gradients (0 disables it).
    pub weight_decay: f64,
    /// Share of each class held out for evaluation, strictly between 0 and 1.
    pub test_fraction: f64,
    /// Seeds the split, the weight initialisation and the reference sampling.
    pub seed: u64,
    /// Buckets each text column hashes into (its TF-IDF width).
    pub text_buckets: usize,
    /// Text terms join up to this many consecutive words (1: words, 2: words and pairs).
    pub text_ngrams: usize,
    /// CNN: channels of the first convolution block (the second has twice as many).
    pub channels: usize,
    /// Rows per optimisation step; 0 is automatic: the whole split for the MLP (full-batch),
    /// 64 for the CNN. An epoch is one pass over the rows in shuffled batches.
    pub batch_size: usize,
}

impl Default for TrainConfig {
    /// Settings that reach ~98% test accuracy on the penguins data in well under a second.
    fn default() -> TrainConfig {
        TrainConfig {
            kind: ModelKind::Mlp,
            rounds: 100,
            max_depth: 5,
            eta: 0.3,
            hidden_size: 32,
            depth: 1,
            dropout: 0.0,
            epochs: 200,
            patience: 0,
            validation_fraction: 0.1,
            learning_rate: 0.01,
            weight_decay: 1e-4,
            test_fraction: 0.2,
            seed: 42,
            text_buckets: crate::text::DEFAULT_TEXT_BUCKETS,
            text_ngrams: crate::text::DEFAULT_NGRAMS,
            channels: 8,
            batch_size: 0,
        }
    }
}

impl TrainConfig {
    /// How text columns are encoded under this configuration.
    pub fn text_encoding(&self) -> crate::TextEncoding {
        crate::TextEncoding {
            buckets: self.text_buckets,
            ngrams: self.text_ngrams,
        }
    }

    /// Rejects settings that would make training meaningless or unbounded, with a message that
    /// names the setting.
    pub fn validate(&self) -> Result<(), MlError> {
        let bad = |m: &str| Err(MlError::Training(m.to_string()));
        if !(1..=100_000).contains(&self.rounds) {
            return bad("rounds must be between 1 and 100000");
        }
        if !(1..=64).contains(&self.max_depth) {
            return bad("max_depth must be between 1 and 64");
        }
        if !(self.eta.is_finite() && self.eta > 0.0 && self.eta <= 1.0) {
            return bad("eta must be a number in (0, 1]");
        }
        if !(1..=4096).contains(&self.hidden_size) {
            return bad("hidden_size must be between 1 and 4096");
        }
        if !(1..=8).contains(&self.depth) {
            return bad("depth must be between 1 and 8 hidden layers");
        }
        if !(self.dropout.is_finite() && (0.0..0.95).contains(&self.dropout)) {
            return bad("dropout must be a share in [0, 0.95)");
        }
        if !(1..=100_000).contains(&self.epochs) {
            return bad("epochs must be between 1 and 100000");
        }
        if self.patience > 100_000 {
            return bad("patience must be at most 100000 epochs");
        }
        if self.patience > 0
            && !(self.validation_fraction.is_finite()
                && self.validation_fraction > 0.0
                && self.validation_fraction < 1.0)
        {
            return bad(
                "validation_fraction must be strictly between 0 and 1 when patience is set",
            );
        }
        if !(self.learning_rate.is_finite()
            && self.learning_rate > 0.0
            && self.learning_rate <= 10.0)
        {
            return bad("learning_rate must be a number in (0, 10]");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay must be a finite number >= 0");
        }
        if !(self.test_fraction.is_finite() && self.test_fraction > 0.0 && self.test_fraction < 1.0)
        {
            return bad("test_fraction must be strictly between 0 and 1");
        }
        if !(1..=crate::text::MAX_TEXT_BUCKETS).contains(&self.text_buckets) {
            return bad("text_buckets must be between 1 and 65536");
        }
        if !(1..=crate::text::MAX_NGRAMS).contains(&self.text_ngrams) {
            return bad("text_ngrams must be between 1 and 3");
        }
        if !(1..=256).contains(&self.channels) {
            return bad("channels must be between 1 and 256");
        }
        if self.batch_size > 1_000_000 {
            return bad("batch_size must be at most 1000000 (0 picks one)");
        }
        Ok(())
    }
}

/// Evaluation results on the held-out split (plus training accuracy, to spot overfitting).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Share of test rows whose most probable class is right.
    pub test_accuracy: f64,
    /// Share of training rows whose most probable class is right.
    pub train_accuracy: f64,
    /// Mean negative log-probability of the true class on the test split (probabilities are
    /// clamped at 1e-15 so one confident mistake cannot make it infinite).
    pub test_log_loss: f64,
    /// Unweighted mean of per-class F1 over the classes that occur in the test labels or
    /// predictions.
    pub test_macro_f1: f64,
    /// Rows in the training split.
    pub n_train: usize,
    /// Rows in the test split.
    pub n_test: usize,
    /// Epochs trained (fewer than `epochs` when early stopping ended training).
    #[serde(default)]
    pub epochs_run: usize,
    /// The epoch whose weights were kept, when early stopping was on.
    #[serde(default)]
    pub best_epoch: Option<usize>,
}

/// Training-split raw feature profile used by the monitor as drift reference: numeric column ->
/// non-missing values (cap at 10_000 by deterministic sampling); categorical column -> counts per
/// category.
///
/// Raw rather than preprocessed values, so the monitor compares like with like when it profiles
/// incoming requests. Missing values are not counted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct ReferenceProfile {
    /// Numeric column name -> its non-missing training values, in row order.
    pub numeric: BTreeMap<String, Vec<f64>>,
    /// Categorical column name -> count of training rows per category.
    pub categorical: BTreeMap<String, BTreeMap<String, u64>>,
    /// Column name -> training rows where it was missing (every column is listed, zeros
    /// included). Absent in bundles written before it, where missing values were not counted.
    #[serde(default)]
    pub missing: BTreeMap<String, u64>,
    /// Rows in the training split (0 in bundles written before it).
    #[serde(default)]
    pub rows: u64,
    /// Text column name -> the reference of its derived features.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub text: BTreeMap<String, TextProfile>,
    /// Image column name -> the intensity statistics of its training images.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub image: BTreeMap<String, crate::image::ImageProfile>,
}

/// What the model predicted for each row of its held-out split, and whether it was right.
///
/// The monitor compares live predicted classes and confidences with these (prediction drift)
/// and calibrates confidence into an accuracy estimate on them (confidence-based performance
/// estimation), so they come from held-out rows: on training rows a model is more confident
/// and more often right than it will be on new data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldOut {
    /// Predicted class per held-out row.
    pub predicted: Vec<String>,
    /// Top-class probability per held-out row.
    pub confidence: Vec<f32>,
    /// Whether the prediction matched the label, per held-out row.
    pub correct: Vec<bool>,
}

impl HeldOut {
    fn from_probabilities(probs: &[f32], labels: &[usize], class_names: &[String]) -> HeldOut {
        let k = class_names.len();
        let mut out = HeldOut {
            predicted: Vec::with_capacity(labels.len()),
            confidence: Vec::with_capacity(labels.len()),
            correct: Vec::with_capacity(labels.len()),
        };
        for (p, &label) in probs.chunks_exact(k).zip(labels) {
            let best = argmax(p);
            out.predicted.push(class_names[best].clone());
            out.confidence.push(p[best]);
            out.correct.push(best == label);
        }
        out
    }
}

impl ReferenceProfile {
    /// Profiles `rows` (the training split); numeric columns beyond `REFERENCE_SAMPLE_CAP`
    /// values are subsampled with `seed`, keeping row order.
    pub fn from_rows(schema: &Schema, rows: &[FeatureRow], seed: u64) -> ReferenceProfile {
        let mut profile = ReferenceProfile {
            rows: rows.len() as u64,
            ..ReferenceProfile::default()
        };
        for (i, column) in schema.features.iter().enumerate() {
            let present = rows
                .iter()
                .filter_map(|r| r.get(i).and_then(Option::as_ref));
            match column.kind {
                ColumnKind::Numeric => {
                    let mut values: Vec<f64> = present
                        .filter_map(|v| match v {
                            Value::Num(x) => Some(*x),
                            Value::Cat(s) => s.trim().parse().ok(),
                            Value::Pixels(_) => None,
                        })
                        .filter(|x: &f64| x.is_finite())
                        .collect();
                    profile
                        .missing
                        .insert(column.name.clone(), (rows.len() - values.len()) as u64);
                    cap_sample(&mut values, seed, i);
                    profile.numeric.insert(column.name.clone(), values);
                }
                ColumnKind::Categorical => {
                    let mut counts = BTreeMap::new();
                    let mut n = 0u64;
                    for value in present {
                        *counts.entry(as_category(value)).or_insert(0) += 1;
                        n += 1;
                    }
                    profile
                        .missing
                        .insert(column.name.clone(), rows.len() as u64 - n);
                    profile.categorical.insert(column.name.clone(), counts);
                }
                ColumnKind::Text => {
                    let texts: Vec<String> = present.map(as_category).collect();
                    profile
                        .missing
                        .insert(column.name.clone(), (rows.len() - texts.len()) as u64);
                    let (mut text, mut lengths) =
                        TextProfile::from_texts(texts.iter().map(String::as_str));
                    cap_sample(&mut lengths, seed, i);
                    text.lengths = lengths;
                    profile.text.insert(column.name.clone(), text);
                }
                ColumnKind::Image => {
                    let max = column.image.map_or(1.0, |s| s.max_value);
                    let (mut means, mut contrasts) = (Vec::new(), Vec::new());
                    for value in present {
                        if let Value::Pixels(pixels) = value {
                            let (m, c) = crate::image::intensity(pixels, max);
                            means.push(m);
                            contrasts.push(c);
                        }
                    }
                    profile
                        .missing
                        .insert(column.name.clone(), (rows.len() - means.len()) as u64);
                    // The same seed and column keep both samples at the same rows.
                    cap_sample(&mut means, seed, i);
                    cap_sample(&mut contrasts, seed, i);
                    profile.image.insert(
                        column.name.clone(),
                        crate::image::ImageProfile {
                            mean_intensity: means,
                            contrast: contrasts,
                        },
                    );
                }
            }
        }
        profile
    }

    /// Records, for each text column, the out-of-vocabulary share of `rows` (the held-out
    /// split) against the vocabulary of the training split, capped as numeric samples are.
    pub fn observe_held_out_text(&mut self, schema: &Schema, rows: &[FeatureRow], seed: u64) {
        for (i, column) in schema.features.iter().enumerate() {
            let Some(text) = self.text.get_mut(&column.name) else {
                continue;
            };
            let mut shares: Vec<f64> = rows
                .iter()
                .filter_map(|r| r.get(i).and_then(Option::as_ref))
                .filter_map(|v| crate::text::oov_share(&as_category(v), &text.vocabulary))
                .collect();
            cap_sample(&mut shares, seed ^ 0x5EED, i);
            text.oov_shares = shares;
        }
    }
}

/// Keeps at most [`REFERENCE_SAMPLE_CAP`] of `values`, drawn with `seed` mixed with the column
/// index `column` (so columns are not sampled at the same rows), in their original order.
fn cap_sample(values: &mut Vec<f64>, seed: u64, column: usize) {
    if values.len() > REFERENCE_SAMPLE_CAP {
        let mut rng =
            SeededRng::seed_from_u64(seed ^ (column as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut keep = sample(&mut rng, values.len(), REFERENCE_SAMPLE_CAP).into_vec();
        keep.sort_unstable();
        *values = keep.into_iter().map(|k| values[k]).collect();
    }
}

/// The CPU device every model trains on: burn's Flex backend, single-threaded (burn's `rayon`
/// feature is off), so training stays a function of the seed. NdArray, which burn 0.22
/// deprecates, allocated per operation and copied through `ndarray` views, and its direct-loop
/// convolutions spent 70% of a digits CNN epoch in `conv2d` and its transpose; Flex's im2col and
/// gemm kernels fit the same penguins MLP (the same test accuracy) about 4x faster.
pub(crate) fn training_device() -> Device {
    Device::flex()
}

/// A table checked for training, with its classes and each row's label index.
pub(crate) struct Prepared<'a> {
    pub table: &'a Table,
    pub class_names: Vec<String>,
    pub labels: Vec<usize>,
}

impl<'a> Prepared<'a> {
    /// Checks that `table` can be learnt from: enough rows, two classes or more.
    pub fn new(table: &'a Table) -> Result<Prepared<'a>, MlError> {
        let schema = &table.schema;
        schema.validate()?;
        if table.rows.len() != table.targets.len() {
            return Err(MlError::Training(format!(
                "the table has {} rows but {} targets",
                table.rows.len(),
                table.targets.len()
            )));
        }
        if table.rows.len() < MIN_TRAINING_ROWS {
            return Err(MlError::Training(format!(
                "need at least {MIN_TRAINING_ROWS} rows to train, got {}",
                table.rows.len()
            )));
        }
        let class_names: Vec<String> = table
            .targets
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if class_names.len() < 2 {
            return Err(MlError::Training(format!(
                "need at least 2 classes in '{}', found {}",
                schema.target,
                class_names.len()
            )));
        }
        let labels: Vec<usize> = table
            .targets
            .iter()
            .map(|t| class_names.binary_search(t).unwrap_or(0))
            .collect();
        Ok(Prepared {
            table,
            class_names,
            labels,
        })
    }

    /// The stratified (train, test) split of `config`, refusing one with no test row.
    pub fn split(&self, config: &TrainConfig) -> Result<(Vec<usize>, Vec<usize>), MlError> {
        let (train, test) = stratified_split(&self.labels, config.test_fraction, config.seed);
        if test.is_empty() {
            return Err(MlError::Training(
                "no class has 2 or more rows, so nothing can be held out for evaluation".into(),
            ));
        }
        Ok((train, test))
    }

    pub fn rows(&self, idx: &[usize]) -> Vec<FeatureRow> {
        idx.iter().map(|&i| self.table.rows[i].clone()).collect()
    }

    pub fn labels_of(&self, idx: &[usize]) -> Vec<usize> {
        idx.iter().map(|&i| self.labels[i]).collect()
    }

    pub fn classes(&self) -> usize {
        self.class_names.len()
    }
}

/// A network fitted on some rows: its preprocessing, weights and how training went.
pub(crate) struct Fitted {
    pub preprocessor: Preprocessor,
    pub scorer: Scorer,
    /// The rows the preprocessing and weights were fitted on (without the early-stopping
    /// validation rows).
    pub fit_rows: usize,
    pub epochs_run: usize,
    pub best_epoch: Option<usize>,
}

/// Accuracy, log loss and macro F1 of probabilities against labels.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub accuracy: f64,
    pub log_loss: f64,
    pub macro_f1: f64,
}

impl Scores {
    pub(crate) fn of(probs: &[f32], labels: &[usize], k: usize) -> Scores {
        Scores {
            accuracy: accuracy(probs, labels, k),
            log_loss: log_loss(probs, labels, k),
            macro_f1: macro_f1(probs, labels, k),
        }
    }
}

/// Fits preprocessing and the MLP on `rows`: Adam, full batch, on burn's autodiff NdArray
/// backend, with `config`'s dropout, weight decay and early stopping. `progress(epoch, loss)`
/// is called about 20 times and for the last epoch.
pub(crate) fn fit(
    schema: &Schema,
    rows: &[FeatureRow],
    labels: &[usize],
    classes: usize,
    config: &TrainConfig,
    progress: &mut dyn FnMut(usize, f64),
    stop: &Stop,
) -> Result<Fitted, MlError> {
    match config.kind {
        ModelKind::Gbt => return fit_trees(schema, rows, labels, classes, config, progress, stop),
        ModelKind::Cnn => {
            return crate::cnn::fit_cnn(schema, rows, labels, classes, config, progress, stop);
        }
        ModelKind::Mlp => {}
    }
    let FitSplit {
        labels: fit_labels,
        preprocessor,
        width,
        matrix,
        validation,
    } = FitSplit::new(schema, rows, labels, config)?;
    let device = training_device().autodiff();
    let n = fit_labels.len();
    let tensors = |idx: Option<&[usize]>| -> (Tensor<2>, Tensor<1, Int>) {
        let (xs, ys): (Vec<f32>, Vec<i64>) = match idx {
            None => (
                matrix.clone(),
                fit_labels.iter().map(|&l| l as i64).collect(),
            ),
            Some(idx) => (
                idx.iter()
                    .flat_map(|&r| &matrix[r * width..(r + 1) * width])
                    .copied()
                    .collect(),
                idx.iter().map(|&r| fit_labels[r] as i64).collect(),
            ),
        };
        let len = ys.len();
        (
            Tensor::<2>::from_data(TensorData::new(xs, [len, width]), &device),
            Tensor::<1, Int>::from_data(TensorData::new(ys, [len]), &device),
        )
    };
    // Full batch (the default) builds its tensors once; minibatches are drawn every epoch.
    let minibatch = (config.batch_size > 0 && config.batch_size < n).then_some(config.batch_size);
    let full = minibatch.is_none().then(|| tensors(None));
    let mut order: Vec<usize> = (0..n).collect();
    let mut shuffle_rng = SeededRng::seed_from_u64(config.seed ^ 0xBA7C_0000);
    let mut model = Mlp::init(
        width,
        config.hidden_size,
        config.depth,
        classes,
        config.seed,
        &device,
    );
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optimizer = adam(config).init();
    // Dropout masks come from our own generator, so training stays a function of the seed.
    let mut mask_rng = SeededRng::seed_from_u64(config.seed ^ 0xD809_0000);
    let keep = 1.0 - config.dropout;
    let report_every = (config.epochs / 20).max(1);
    let mut best = EarlyStop::new(config.patience);
    let mut epochs_run = 0;
    for epoch in 1..=config.epochs {
        stop.check()?;
        epochs_run = epoch;
        let last = epoch == config.epochs;
        let report = epoch % report_every == 0 || last;
        // The loss is read (a synchronisation) only when it is reported or may end training.
        let want_loss = report || validation.is_some();
        let batches: Vec<(Tensor<2>, Tensor<1, Int>)> = match (&full, minibatch) {
            (Some(all), _) => vec![all.clone()],
            (None, Some(b)) => {
                order.shuffle(&mut shuffle_rng);
                order.chunks(b).map(|chunk| tensors(Some(chunk))).collect()
            }
            (None, None) => unreachable!("full batch is built when there are no minibatches"),
        };
        let mut total = 0.0f64;
        for (x, y) in batches {
            let rows = y.dims()[0];
            let logits = if config.dropout > 0.0 {
                model.forward_with(x, &mut |_, h| dropout(h, &mut mask_rng, keep))
            } else {
                model.forward(x)
            };
            let loss = loss_fn.forward(logits, y);
            if want_loss {
                let value = loss.clone().into_scalar::<f32>();
                if !value.is_finite() {
                    return Err(MlError::Training(format!(
                        "training diverged at epoch {epoch} (loss is {value}); lower learning_rate"
                    )));
                }
                total += f64::from(value) * rows as f64;
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(config.learning_rate, model, grads);
        }
        let epoch_loss = total / n as f64;
        if report {
            progress(epoch, epoch_loss);
        }
        if let Some((val_x, val_y)) = &validation {
            let weights = model.to_weights()?;
            let val_loss = log_loss(&weights.probabilities(val_x), val_y, classes);
            if best.stop_after(epoch, val_loss, weights) {
                if !report {
                    progress(epoch, epoch_loss);
                }
                break;
            }
        }
    }
    let (weights, best_epoch) = match best.into_best() {
        Some((epoch, weights)) => (weights, Some(epoch)),
        None => (model.to_weights()?, None),
    };
    weights.validate().map_err(|e| {
        MlError::Training(format!(
            "training produced unusable weights ({e}); lower learning_rate"
        ))
    })?;
    Ok(Fitted {
        preprocessor,
        scorer: Scorer::Mlp(weights),
        fit_rows: n,
        epochs_run,
        best_epoch,
    })
}

/// The rows a network is fitted on: the split's rows less the early-stopping validation rows
/// (a stratified share of them, when `patience` is set), preprocessing fitted on those, their
/// encoded matrix, and the encoded validation rows with their labels.
pub(crate) struct FitSplit {
    pub labels: Vec<usize>,
    pub preprocessor: Preprocessor,
    pub width: usize,
    /// Row-major `[labels.len(), width]`.
    pub matrix: Vec<f32>,
    pub validation: Option<(Vec<f32>, Vec<usize>)>,
}

impl FitSplit {
    pub fn new(
        schema: &Schema,
        rows: &[FeatureRow],
        labels: &[usize],
        config: &TrainConfig,
    ) -> Result<FitSplit, MlError> {
        // Early stopping measures the loss on rows set aside from this split.
        let (fit_idx, val_idx) = if config.patience > 0 {
            stratified_split(labels, config.validation_fraction, config.seed ^ 0x5EED)
        } else {
            ((0..rows.len()).collect(), Vec::new())
        };
        let pick_rows = |idx: &[usize]| idx.iter().map(|&i| rows[i].clone()).collect::<Vec<_>>();
        let pick_labels = |idx: &[usize]| idx.iter().map(|&i| labels[i]).collect::<Vec<_>>();
        let fit_rows = pick_rows(&fit_idx);
        let (preprocessor, width) = fit_preprocessor(schema, &fit_rows, config.text_encoding())?;
        let validation = (!val_idx.is_empty()).then(|| {
            (
                preprocessor.transform(&pick_rows(&val_idx)),
                pick_labels(&val_idx),
            )
        });
        Ok(FitSplit {
            labels: pick_labels(&fit_idx),
            matrix: preprocessor.transform(&fit_rows),
            preprocessor,
            width,
            validation,
        })
    }
}

/// Adam with `config`'s L2 weight decay, as every network here trains.
pub(crate) fn adam(config: &TrainConfig) -> AdamConfig {
    let weight_decay =
        (config.weight_decay > 0.0).then(|| WeightDecayConfig::new(config.weight_decay as f32));
    AdamConfig::new().with_weight_decay(weight_decay)
}

/// Early stopping: keeps the weights of the epoch with the lowest validation loss and says
/// when `patience` epochs have passed without a lower one.
pub(crate) struct EarlyStop<W> {
    patience: usize,
    best: Option<(f64, usize, W)>,
}

impl<W> EarlyStop<W> {
    pub fn new(patience: usize) -> EarlyStop<W> {
        EarlyStop {
            patience,
            best: None,
        }
    }

    /// Records `epoch`'s validation loss and weights; true when training should stop.
    pub fn stop_after(&mut self, epoch: usize, val_loss: f64, weights: W) -> bool {
        match &self.best {
            // A NaN loss is no improvement.
            Some((best, at, _)) if val_loss.partial_cmp(best) != Some(std::cmp::Ordering::Less) => {
                epoch - at >= self.patience
            }
            _ => {
                self.best = Some((val_loss, epoch, weights));
                false
            }
        }
    }

    /// The best epoch and its weights, if any epoch was validated.
    pub fn into_best(self) -> Option<(usize, W)> {
        self.best.map(|(_, epoch, weights)| (epoch, weights))
    }
}

/// Inverted dropout: each activation kept with probability `keep` and scaled by `1 / keep`,
/// with the mask drawn from `rng` (training stays a function of the seed).
pub(crate) fn dropout(h: Tensor<2>, rng: &mut SeededRng, keep: f64) -> Tensor<2> {
    let [rows, cols] = h.dims();
    let mask: Vec<f32> = (0..rows * cols)
        .map(|_| {
            if rng.random::<f64>() < keep {
                (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect();
    let device = h.device();
    h * Tensor::<2>::from_data(TensorData::new(mask, [rows, cols]), &device)
}

/// Preprocessing fitted on `rows`, and its width, refusing one that leaves no input.
pub(crate) fn fit_preprocessor(
    schema: &Schema,
    rows: &[FeatureRow],
    text: crate::TextEncoding,
) -> Result<(Preprocessor, usize), MlError> {
    let preprocessor = Preprocessor::fit_with(schema, rows, text)?;
    let width = preprocessor.width();
    if width == 0 {
        return Err(MlError::Training(
            "no usable features: every feature column is empty in the training split".into(),
        ));
    }
    Ok((preprocessor, width))
}

/// Fits preprocessing and gradient-boosted trees on `rows`. `progress` hears of each booster
/// fitted (as "epoch" `i` of one per class), with the training log loss so far.
fn fit_trees(
    schema: &Schema,
    rows: &[FeatureRow],
    labels: &[usize],
    classes: usize,
    config: &TrainConfig,
    progress: &mut dyn FnMut(usize, f64),
    stop: &Stop,
) -> Result<Fitted, MlError> {
    let (preprocessor, width) = fit_preprocessor(schema, rows, config.text_encoding())?;
    let x = preprocessor.transform(rows);
    let trees = crate::Trees::fit(&x, width, labels, classes, config, stop)?;
    let loss = log_loss(&trees.probabilities(&x), labels, classes);
    let boosters = trees.boosters.len();
    progress(boosters, loss);
    Ok(Fitted {
        preprocessor,
        scorer: Scorer::Trees(trees),
        fit_rows: rows.len(),
        epochs_run: boosters,
        best_epoch: None,
    })
}

/// Splits (stratified), fits preprocessing on the train split, trains the MLP ([`fit`]),
/// evaluates on the test split, and returns the bundle. Calls `progress(epoch, train_loss)`
/// every so often so callers can report progress. Error if < 2 classes or too few rows.
///
/// Determinism: the split, the weight initialisation, the dropout masks and the reference
/// sampling all derive from `config.seed` through our own generators, and burn's own RNG is
/// never used, so two runs with the same table and config give identical weights and metrics,
/// even when several trainings run concurrently in one process. `progress` is called about 20
/// times, with 1-based epochs, and always for the last epoch trained.
pub fn train_classifier(
    table: &Table,
    config: &TrainConfig,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<ModelBundle, MlError> {
    train_classifier_until(table, config, progress, &Stop::new())
}

/// [`train_classifier`] that ends with [`MlError::Cancelled`] within an epoch of `stop` being
/// set.
pub fn train_classifier_until(
    table: &Table,
    config: &TrainConfig,
    progress: &mut dyn FnMut(usize, f64),
    stop: &Stop,
) -> Result<ModelBundle, MlError> {
    config.validate()?;
    let data = Prepared::new(table)?;
    let schema = &table.schema;
    let (train_idx, test_idx) = data.split(config)?;
    let (train_rows, test_rows) = (data.rows(&train_idx), data.rows(&test_idx));
    let (train_labels, test_labels) = (data.labels_of(&train_idx), data.labels_of(&test_idx));
    let k = data.classes();
    let fitted = fit(
        schema,
        &train_rows,
        &train_labels,
        k,
        config,
        progress,
        stop,
    )?;
    let mut reference = ReferenceProfile::from_rows(schema, &train_rows, config.seed);
    reference.observe_held_out_text(schema, &test_rows, config.seed);

    let preprocessor = fitted.preprocessor;
    let scorer = fitted.scorer;
    let train_probs = scorer.probabilities(&preprocessor.transform(&train_rows));
    let test_probs = scorer.probabilities(&preprocessor.transform(&test_rows));
    let test = Scores::of(&test_probs, &test_labels, k);
    let metrics = Metrics {
        test_accuracy: test.accuracy,
        train_accuracy: accuracy(&train_probs, &train_labels, k),
        test_log_loss: test.log_loss,
        test_macro_f1: test.macro_f1,
        n_train: fitted.fit_rows,
        n_test: test_rows.len(),
        epochs_run: fitted.epochs_run,
        best_epoch: fitted.best_epoch,
    };
    let held_out = HeldOut::from_probabilities(&test_probs, &test_labels, &data.class_names);

    let format_version = format_version_for(schema, &scorer);
    let (weights, trees, cnn) = ModelBundle::model_fields(scorer);
    Ok(ModelBundle {
        format_version,
        schema: schema.clone(),
        preprocessor,
        class_names: data.class_names,
        config: config.clone(),
        metrics,
        reference,
        held_out: Some(held_out),
        weights,
        trees,
        cnn,
    })
}

/// Index of the largest probability; the first one on ties, matching [`crate::LoadedModel`].
pub(crate) fn argmax(probs: &[f32]) -> usize {
    let mut best = 0;
    for (i, p) in probs.iter().enumerate() {
        if *p > probs[best] {
            best = i;
        }
    }
    best
}

fn accuracy(probs: &[f32], labels: &[usize], k: usize) -> f64 {
    let right = probs
        .chunks_exact(k)
        .zip(labels)
        .filter(|(p, l)| argmax(p) == **l)
        .count();
    right as f64 / labels.len().max(1) as f64
}

pub(crate) fn log_loss(probs: &[f32], labels: &[usize], k: usize) -> f64 {
    let total: f64 = probs
        .chunks_exact(k)
        .zip(labels)
        .map(|(p, &l)| -f64::from(p[l]).max(1e-15).ln())
        .sum();
    total / labels.len().max(1) as f64
}

fn macro_f1(probs: &[f32], labels: &[usize], k: usize) -> f64 {
    let mut tp = vec![0usize; k];
    let mut predicted = vec![0usize; k];
    let mut actual = vec![0usize; k];
    for (p, &l) in probs.chunks_exact(k).zip(labels) {
        let guess = argmax(p);
        predicted[guess] += 1;
        actual[l] += 1;
        if guess == l {
            tp[l] += 1;
        }
    }
    let scores: Vec<f64> = (0..k)
        .filter(|&c| predicted[c] + actual[c] > 0)
        .map(|c| 2.0 * tp[c] as f64 / (predicted[c] + actual[c]) as f64)
        .collect();
    scores.iter().sum::<f64>() / scores.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Column;

    #[test]
    fn metric_helpers_compute_what_they_claim() {
        // Three rows, two classes: predictions 0, 1, 1; truth 0, 0, 1.
        let probs = [0.9, 0.1, 0.4, 0.6, 0.2, 0.8];
        let labels = [0, 0, 1];
        assert!((accuracy(&probs, &labels, 2) - 2.0 / 3.0).abs() < 1e-12);
        let expected_ll = -(0.9f32.ln() as f64 + 0.4f32.ln() as f64 + 0.8f32.ln() as f64) / 3.0;
        assert!((log_loss(&probs, &labels, 2) - expected_ll).abs() < 1e-6);
        // F1(class 0) = 2*1/(1+2) = 2/3, F1(class 1) = 2*1/(2+1) = 2/3.
        assert!((macro_f1(&probs, &labels, 2) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(argmax(&[0.2, 0.4, 0.4]), 1);
    }

    #[test]
    fn config_validation_names_the_setting() {
        TrainConfig::default().validate().unwrap();
        for (config, needle) in [
            (
                TrainConfig {
                    hidden_size: 0,
                    ..Default::default()
                },
                "hidden_size",
            ),
            (
                TrainConfig {
                    epochs: 0,
                    ..Default::default()
                },
                "epochs",
            ),
            (
                TrainConfig {
                    learning_rate: f64::NAN,
                    ..Default::default()
                },
                "learning_rate",
            ),
            (
                TrainConfig {
                    weight_decay: -1.0,
                    ..Default::default()
                },
                "weight_decay",
            ),
            (
                TrainConfig {
                    test_fraction: 1.0,
                    ..Default::default()
                },
                "test_fraction",
            ),
        ] {
            let err = config.validate().unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
        let partial: TrainConfig = serde_json::from_str(r#"{"epochs": 5}"#).unwrap();
        assert_eq!(
            partial,
            TrainConfig {
                epochs: 5,
                ..Default::default()
            }
        );
    }

    #[test]
    fn reference_profile_counts_and_caps() {
        let schema = Schema {
            features: vec![Column::numeric("x"), Column::categorical("c")],
            target: "y".into(),
        };
        let rows: Vec<FeatureRow> = (0..REFERENCE_SAMPLE_CAP * 2)
            .map(|i| {
                vec![
                    (i % 7 != 0).then_some(Value::Num(i as f64)),
                    Some(Value::Cat(if i % 3 == 0 { "a" } else { "b" }.into())),
                ]
            })
            .collect();
        let p = ReferenceProfile::from_rows(&schema, &rows, 1);
        let xs = &p.numeric["x"];
        assert_eq!(xs.len(), REFERENCE_SAMPLE_CAP);
        assert!(xs.windows(2).all(|w| w[0] < w[1]), "row order kept");
        assert!(
            xs.iter().all(|x| !(*x as usize).is_multiple_of(7)),
            "missing values left out"
        );
        assert_eq!(p, ReferenceProfile::from_rows(&schema, &rows, 1));
        let counts = &p.categorical["c"];
        assert_eq!(counts["a"] + counts["b"], rows.len() as u64);
        assert_eq!(counts["a"], rows.len().div_ceil(3) as u64);
    }

    #[test]
    fn refuses_tables_it_cannot_learn_from() {
        let schema = Schema {
            features: vec![Column::numeric("x")],
            target: "y".into(),
        };
        let table = |n: usize, classes: usize| Table {
            schema: schema.clone(),
            rows: (0..n).map(|i| vec![Some(Value::Num(i as f64))]).collect(),
            targets: (0..n).map(|i| format!("c{}", i % classes)).collect(),
        };
        let mut quiet = |_: usize, _: f64| {};
        let err = train_classifier(&table(50, 1), &TrainConfig::default(), &mut quiet).unwrap_err();
        assert!(err.to_string().contains("at least 2 classes"), "{err}");
        let err = train_classifier(&table(5, 2), &TrainConfig::default(), &mut quiet).unwrap_err();
        assert!(err.to_string().contains("at least 10 rows"), "{err}");
        let mut mismatched = table(20, 2);
        mismatched.targets.pop();
        assert!(train_classifier(&mismatched, &TrainConfig::default(), &mut quiet).is_err());
        // A categorical column with no value at all in training expands to zero inputs.
        let empty_feature = Table {
            schema: Schema {
                features: vec![Column::categorical("c")],
                target: "y".into(),
            },
            rows: vec![vec![None]; 20],
            targets: (0..20).map(|i| format!("c{}", i % 2)).collect(),
        };
        let err =
            train_classifier(&empty_feature, &TrainConfig::default(), &mut quiet).unwrap_err();
        assert!(err.to_string().contains("no usable features"), "{err}");
    }
}
