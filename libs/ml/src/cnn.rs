//! The image classifier: a small convolutional network as a burn module for training, and a
//! plain-Rust copy of its weights (batch norm folded into the convolutions) for serving.
//!
//! Two blocks of `conv 3x3 (padding 1) -> batch norm -> ReLU -> max pool 2x2`, the second with
//! twice the channels of the first, then `Linear -> ReLU -> (dropout) -> Linear` to class
//! logits. On scikit-learn's 8x8 digits that is 8x8 -> 4x4 -> 2x2; on 28x28 Fashion-MNIST,
//! 28 -> 14 -> 7.

use crate::rng::SeededRng;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::Int;
use rand::seq::SliceRandom;

use crate::model::{dense_from, hex_f32, linear_from, read_tensor, uniform};
use crate::train::{EarlyStop, FitSplit, Fitted, Stop, adam, dropout, log_loss, training_device};
use crate::{ColumnKind, DenseLayer, FeatureRow, MlError, Schema, Scorer, TrainConfig};

/// Convolution blocks, each halving the image.
pub const CNN_BLOCKS: usize = 2;

/// The smallest side a CNN takes: each block halves it, and the last must keep a pixel.
pub const MIN_CNN_SIDE: usize = 1 << CNN_BLOCKS;

/// Batch norm's epsilon, as burn's default and PyTorch's.
const BN_EPSILON: f64 = 1e-5;

/// One convolution block of [`Cnn`].
#[derive(Module, Debug)]
pub struct ConvBlock {
    pub conv: Conv2d,
    pub norm: BatchNorm,
    pub pool: MaxPool2d,
}

/// The image classifier trained with burn.
#[derive(Module, Debug)]
pub struct Cnn {
    pub blocks: Vec<ConvBlock>,
    /// Flattened features to the hidden layer.
    pub hidden: Linear,
    /// Hidden layer to class logits.
    pub output: Linear,
}

/// The side of an image after `blocks` 2x2 poolings (floor, as burn and PyTorch pool).
fn pooled(side: usize) -> usize {
    side >> CNN_BLOCKS
}

impl Cnn {
    /// A fresh network for `height x width` single-channel images: `channels` in the first
    /// block, twice that in the second, a hidden layer `hidden` wide. The weights depend only on
    /// the sizes and `seed` (our generator, never burn's global one).
    pub fn init(
        (height, width): (usize, usize),
        channels: usize,
        hidden: usize,
        classes: usize,
        seed: u64,
        device: &Device,
    ) -> Cnn {
        let mut rng = SeededRng::seed_from_u64(seed);
        let mut blocks = Vec::with_capacity(CNN_BLOCKS);
        let mut c_in = 1;
        for b in 0..CNN_BLOCKS {
            let c_out = channels << b;
            let fan_in = c_in * 9;
            let weight = uniform(&mut rng, c_out * fan_in, fan_in);
            let bias = uniform(&mut rng, c_out, fan_in);
            let mut conv = Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device);
            conv.weight = Param::from_tensor(Tensor::<4>::from_data(
                TensorData::new(weight, [c_out, c_in, 3, 3]),
                device,
            ));
            conv.bias = Some(Param::from_tensor(Tensor::<1>::from_data(
                TensorData::new(bias, [c_out]),
                device,
            )));
            blocks.push(ConvBlock {
                conv,
                norm: BatchNormConfig::new(c_out)
                    .with_epsilon(BN_EPSILON)
                    .init(device),
                pool: MaxPool2dConfig::new([2, 2]).init(),
            });
            c_in = c_out;
        }
        let flat = c_in * pooled(height) * pooled(width);
        let mut dense = |inputs, outputs| DenseLayer::uniform(&mut rng, inputs, outputs);
        let (h, o) = (dense(flat, hidden), dense(hidden, classes));
        Cnn {
            blocks,
            hidden: linear_from(&h, device),
            output: linear_from(&o, device),
        }
    }

    /// Class logits for a `[batch, 1, height, width]` tensor; `after` is applied to the hidden
    /// layer's activations after the ReLU (the training loop's dropout).
    pub fn forward_with(
        &self,
        input: Tensor<4>,
        after: &mut dyn FnMut(Tensor<2>) -> Tensor<2>,
    ) -> Tensor<2> {
        let mut x = input;
        for block in &self.blocks {
            x = block
                .pool
                .forward(relu(block.norm.forward(block.conv.forward(x))));
        }
        let [n, c, h, w] = x.dims();
        let flat = x.reshape([n, c * h * w]);
        self.output.forward(after(relu(self.hidden.forward(flat))))
    }

    /// Class logits, without dropout.
    pub fn forward(&self, input: Tensor<4>) -> Tensor<2> {
        self.forward_with(input, &mut |h| h)
    }

    /// Copies the parameters out of burn, folding each batch norm's running statistics into
    /// the convolution before it: `w' = w * g / sqrt(var + eps)`, `b' = (b - mean) * g /
    /// sqrt(var + eps) + beta`, the network burn evaluates in inference mode.
    pub fn to_weights(&self, (height, width): (usize, usize)) -> Result<CnnWeights, MlError> {
        let mut conv = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let weight = block.conv.weight.val();
            let [c_out, c_in, kh, kw] = weight.dims();
            let mut weight = read_tensor(weight.into_data())?;
            let mut bias = match &block.conv.bias {
                Some(b) => read_tensor(b.val().into_data())?,
                None => vec![0.0; c_out],
            };
            let gamma = read_tensor(block.norm.gamma.val().into_data())?;
            let beta = read_tensor(block.norm.beta.val().into_data())?;
            let mean = read_tensor(block.norm.running_mean.value_sync().into_data())?;
            let var = read_tensor(block.norm.running_var.value_sync().into_data())?;
            let per_out = c_in * kh * kw;
            for o in 0..c_out {
                let scale = f64::from(gamma[o]) / (f64::from(var[o]) + block.norm.epsilon).sqrt();
                for w in &mut weight[o * per_out..(o + 1) * per_out] {
                    *w = (f64::from(*w) * scale) as f32;
                }
                bias[o] =
                    ((f64::from(bias[o]) - f64::from(mean[o])) * scale + f64::from(beta[o])) as f32;
            }
            conv.push(ConvLayer {
                in_channels: c_in,
                out_channels: c_out,
                weight,
                bias,
            });
        }
        Ok(CnnWeights {
            height,
            width,
            conv,
            hidden: dense_from(&self.hidden)?,
            output: dense_from(&self.output)?,
        })
    }
}

/// One 3x3 convolution (padding 1) with its batch norm folded in, `[out, in, 3, 3]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvLayer {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Row-major `[out_channels, in_channels, 3, 3]`, as burn and PyTorch lay it out.
    #[serde(with = "hex_f32")]
    pub weight: Vec<f32>,
    #[serde(with = "hex_f32")]
    pub bias: Vec<f32>,
}

/// The weights of a [`Cnn`] as plain data: what a bundle stores and what serving runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CnnWeights {
    /// Input image rows.
    pub height: usize,
    /// Input image columns.
    pub width: usize,
    /// The convolution blocks, each followed by ReLU and a 2x2 max pool.
    pub conv: Vec<ConvLayer>,
    /// Flattened features (channel, row, column order) to the hidden layer.
    pub hidden: DenseLayer,
    /// Hidden layer to class logits.
    pub output: DenseLayer,
}

impl CnnWeights {
    pub fn inputs(&self) -> usize {
        self.height * self.width
    }

    pub fn classes(&self) -> usize {
        self.output.outputs
    }

    /// Checks that shapes chain up and values are finite, because a bundle may come from
    /// anywhere.
    pub fn validate(&self) -> Result<(), String> {
        if self.height < MIN_CNN_SIDE || self.width < MIN_CNN_SIDE {
            return Err(format!(
                "the network takes {}x{} images, smaller than {MIN_CNN_SIDE}x{MIN_CNN_SIDE}",
                self.height, self.width
            ));
        }
        if self.conv.len() != CNN_BLOCKS {
            return Err(format!(
                "the network has {} convolution blocks; this build runs {CNN_BLOCKS}",
                self.conv.len()
            ));
        }
        let mut c = 1;
        for (i, layer) in self.conv.iter().enumerate() {
            if layer.in_channels != c || layer.out_channels == 0 {
                return Err(format!("convolution {} does not connect", i + 1));
            }
            if layer.weight.len() != layer.out_channels * layer.in_channels * 9
                || layer.bias.len() != layer.out_channels
            {
                return Err(format!(
                    "convolution {} weights do not match their shape",
                    i + 1
                ));
            }
            if !layer
                .weight
                .iter()
                .chain(&layer.bias)
                .all(|v| v.is_finite())
            {
                return Err(format!("convolution {} holds non-finite weights", i + 1));
            }
            c = layer.out_channels;
        }
        let flat = c * pooled(self.height) * pooled(self.width);
        self.hidden.validate("hidden")?;
        if self.hidden.inputs != flat {
            return Err(format!(
                "the hidden layer takes {} inputs but the convolutions give {flat}",
                self.hidden.inputs
            ));
        }
        self.output.validate("output")?;
        if self.output.inputs != self.hidden.outputs {
            return Err("hidden and output layers do not connect".into());
        }
        Ok(())
    }

    /// Scratch space one image needs: the first block's activations, twice.
    pub fn scratch_len(&self) -> usize {
        let widest = self.conv.iter().map(|l| l.out_channels).max().unwrap_or(1);
        2 * widest * self.height * self.width + self.hidden.outputs
    }

    /// Class probabilities for one encoded image (`height * width` standardised pixels), the
    /// computation of [`Cnn::forward`] in inference mode followed by a softmax.
    pub fn probabilities_into(&self, x: &[f32], scratch: &mut Vec<f32>, probs: &mut [f32]) {
        let (mut h, mut w) = (self.height, self.width);
        let plane = h * w;
        let widest = self.conv.iter().map(|l| l.out_channels).max().unwrap_or(1);
        scratch.resize(self.scratch_len(), 0.0);
        let (act, rest) = scratch.split_at_mut(widest * plane);
        let (conv_out, hidden) = rest.split_at_mut(widest * plane);
        act[..plane].copy_from_slice(&x[..plane]);
        let mut channels = 1;
        for layer in &self.conv {
            conv3x3(&act[..channels * h * w], (h, w), layer, conv_out);
            let (h2, w2) = (h / 2, w / 2);
            // ReLU then 2x2 max pool is the max of the four, floored at 0.
            for c in 0..layer.out_channels {
                let src = &conv_out[c * h * w..(c + 1) * h * w];
                for y in 0..h2 {
                    for x in 0..w2 {
                        let at = |yy: usize, xx: usize| src[yy * w + xx];
                        let m = at(2 * y, 2 * x)
                            .max(at(2 * y, 2 * x + 1))
                            .max(at(2 * y + 1, 2 * x))
                            .max(at(2 * y + 1, 2 * x + 1));
                        act[c * h2 * w2 + y * w2 + x] = m.max(0.0);
                    }
                }
            }
            channels = layer.out_channels;
            (h, w) = (h2, w2);
        }
        let flat = &act[..channels * h * w];
        let hidden = &mut hidden[..self.hidden.outputs];
        self.hidden.apply(flat, hidden);
        for v in hidden.iter_mut() {
            *v = v.max(0.0);
        }
        self.output.apply(hidden, probs);
        crate::model::softmax_in_place(probs);
    }

    /// Class probabilities for a row-major `[n, inputs()]` matrix, row-major `[n, classes()]`.
    pub fn probabilities(&self, matrix: &[f32]) -> Vec<f32> {
        crate::model::probabilities_by_row(
            matrix,
            self.inputs(),
            self.classes(),
            |x, scratch, probs| self.probabilities_into(x, scratch, probs),
        )
    }
}

/// `out[o, y, x] = b[o] + sum_i sum_ky sum_kx in[i, y+ky-1, x+kx-1] * w[o, i, ky, kx]`, zero
/// outside the image; `out` holds at least `out_channels * h * w`.
fn conv3x3(input: &[f32], (h, w): (usize, usize), layer: &ConvLayer, out: &mut [f32]) {
    let plane = h * w;
    for o in 0..layer.out_channels {
        let dst = &mut out[o * plane..(o + 1) * plane];
        dst.fill(layer.bias[o]);
        for i in 0..layer.in_channels {
            let src = &input[i * plane..(i + 1) * plane];
            let k = &layer.weight[(o * layer.in_channels + i) * 9..][..9];
            for ky in 0..3 {
                for kx in 0..3 {
                    let weight = k[ky * 3 + kx];
                    if weight == 0.0 {
                        continue;
                    }
                    // Output rows/columns whose tap (y + ky - 1, x + kx - 1) is inside.
                    let (y0, y1) = (usize::from(ky == 0), h - usize::from(ky == 2));
                    let (x0, x1) = (usize::from(kx == 0), w - usize::from(kx == 2));
                    for y in y0..y1 {
                        let sy = y + ky - 1;
                        let row = &src[sy * w..(sy + 1) * w];
                        let out_row = &mut dst[y * w..(y + 1) * w];
                        for x in x0..x1 {
                            out_row[x] += weight * row[x + kx - 1];
                        }
                    }
                }
            }
        }
    }
}

/// Rows per step when `batch_size` is 0.
pub const DEFAULT_CNN_BATCH: usize = 64;

/// Fits preprocessing and the CNN on `rows` (a schema of one image column): Adam on shuffled
/// minibatches, with `config`'s dropout, weight decay and early stopping. `progress(epoch,
/// loss)` hears every epoch, with the mean training loss of its batches.
pub(crate) fn fit_cnn(
    schema: &Schema,
    rows: &[FeatureRow],
    labels: &[usize],
    classes: usize,
    config: &TrainConfig,
    progress: &mut dyn FnMut(usize, f64),
    stop: &Stop,
) -> Result<Fitted, MlError> {
    let spec = match schema.features.as_slice() {
        [column] if column.kind == ColumnKind::Image => column.image,
        _ => None,
    }
    .ok_or_else(|| {
        MlError::Training(
            "kind cnn takes a schema of exactly one image column; train other columns with \
             kind mlp or gbt"
                .into(),
        )
    })?;
    let (h, w) = (spec.height, spec.width);
    if h < MIN_CNN_SIDE || w < MIN_CNN_SIDE {
        return Err(MlError::Training(format!(
            "kind cnn needs images of at least {MIN_CNN_SIDE}x{MIN_CNN_SIDE} pixels, not {h}x{w}"
        )));
    }
    let FitSplit {
        labels: fit_labels,
        preprocessor,
        width,
        matrix: x,
        validation,
    } = FitSplit::new(schema, rows, labels, config)?;
    let device = training_device().autodiff();
    let mut model = Cnn::init(
        (h, w),
        config.channels,
        config.hidden_size,
        classes,
        config.seed,
        &device,
    );
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optimizer = adam(config).init();
    let n = fit_labels.len();
    let batch = match config.batch_size {
        0 => DEFAULT_CNN_BATCH,
        b => b,
    }
    .clamp(1, n.max(1));
    let mut order: Vec<usize> = (0..n).collect();
    let mut shuffle_rng = SeededRng::seed_from_u64(config.seed ^ 0xBA7C_0000);
    let mut mask_rng = SeededRng::seed_from_u64(config.seed ^ 0xD809_0000);
    let keep = 1.0 - config.dropout;
    let mut best = EarlyStop::new(config.patience);
    let mut epochs_run = 0;
    for epoch in 1..=config.epochs {
        stop.check()?;
        epochs_run = epoch;
        order.shuffle(&mut shuffle_rng);
        let (mut total, mut seen) = (0.0f64, 0usize);
        for chunk in order.chunks(batch) {
            // Batch norm needs two rows to have a spread; a last lone row waits for the next
            // epoch's shuffle.
            if chunk.len() < 2 && n > 1 {
                continue;
            }
            let b = chunk.len();
            let xb: Vec<f32> = chunk
                .iter()
                .flat_map(|&r| &x[r * width..(r + 1) * width])
                .copied()
                .collect();
            let yb: Vec<i64> = chunk.iter().map(|&r| fit_labels[r] as i64).collect();
            let input = Tensor::<4>::from_data(TensorData::new(xb, [b, 1, h, w]), &device);
            let target = Tensor::<1, Int>::from_data(TensorData::new(yb, [b]), &device);
            let logits = if config.dropout > 0.0 {
                model.forward_with(input, &mut |a| dropout(a, &mut mask_rng, keep))
            } else {
                model.forward(input)
            };
            let loss = loss_fn.forward(logits, target);
            let value = loss.clone().into_scalar::<f32>();
            if !value.is_finite() {
                return Err(MlError::Training(format!(
                    "training diverged at epoch {epoch} (loss is {value}); lower learning_rate"
                )));
            }
            total += f64::from(value) * b as f64;
            seen += b;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(config.learning_rate, model, grads);
        }
        progress(epoch, total / seen.max(1) as f64);
        if let Some((val_x, val_y)) = &validation {
            let weights = model.to_weights((h, w))?;
            let val_loss = log_loss(&weights.probabilities(val_x), val_y, classes);
            if best.stop_after(epoch, val_loss, weights) {
                break;
            }
        }
    }
    let (weights, best_epoch) = match best.into_best() {
        Some((epoch, weights)) => (weights, Some(epoch)),
        None => (model.to_weights((h, w))?, None),
    };
    weights.validate().map_err(|e| {
        MlError::Training(format!(
            "training produced unusable weights ({e}); lower learning_rate"
        ))
    })?;
    Ok(Fitted {
        preprocessor,
        scorer: Scorer::Cnn(weights),
        fit_rows: n,
        epochs_run,
        best_epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::AdamConfig;
    use burn::tensor::activation::softmax;
    use rand::Rng;

    #[test]
    fn plain_forward_matches_burn_inference_after_training_steps() {
        let device = training_device().autodiff();
        let (h, w) = (8, 6);
        let mut model = Cnn::init((h, w), 4, 12, 3, 7, &device);
        let mut rng = SeededRng::seed_from_u64(1);
        let n = 16;
        let input: Vec<f32> = (0..n * h * w)
            .map(|_| rng.random_range(-2.0..2.0))
            .collect();
        let labels: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
        let x = Tensor::<4>::from_data(TensorData::new(input.clone(), [n, 1, h, w]), &device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), &device);
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        let mut optimizer = AdamConfig::new().init();
        // A few steps move the weights and the batch norms' running statistics off their
        // initial values, so the fold is actually exercised.
        for _ in 0..5 {
            let loss = loss_fn.forward(model.forward(x.clone()), y.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(0.01, model, grads);
        }
        let weights = model.to_weights((h, w)).unwrap();
        weights.validate().unwrap();
        let running = read_tensor(model.blocks[0].norm.running_mean.value().into_data()).unwrap();
        assert!(running.iter().any(|m| m.abs() > 1e-4), "{running:?}");

        let valid = model.valid();
        let plain_device = training_device();
        let x = Tensor::<4>::from_data(TensorData::new(input.clone(), [n, 1, h, w]), &plain_device);
        let burn_probs = softmax(valid.forward(x), 1)
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        let plain = weights.probabilities(&input);
        assert_eq!(plain.len(), burn_probs.len());
        for (a, b) in plain.iter().zip(&burn_probs) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // The weights survive JSON exactly.
        let json = serde_json::to_string(&weights).unwrap();
        assert_eq!(serde_json::from_str::<CnnWeights>(&json).unwrap(), weights);
    }

    #[test]
    fn validate_refuses_shapes_that_do_not_chain() {
        let device = training_device();
        let weights = Cnn::init((8, 8), 2, 5, 2, 1, &device)
            .to_weights((8, 8))
            .unwrap();
        weights.validate().unwrap();
        let mut small = weights.clone();
        small.height = 2;
        assert!(small.validate().unwrap_err().contains("smaller than 4x4"));
        let mut wrong = weights.clone();
        wrong.width = 16;
        assert!(wrong.validate().unwrap_err().contains("convolutions give"));
        let mut nan = weights;
        nan.conv[1].bias[0] = f32::NAN;
        assert!(nan.validate().unwrap_err().contains("non-finite"));
    }
}
