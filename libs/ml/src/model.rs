//! The classifier network: a burn module for training and a plain-Rust copy of its weights for
//! serving and storage.

use crate::rng::SeededRng;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::MlError;

/// A multilayer perceptron, `Linear -> ReLU` once per hidden layer, then `Linear` to class
/// logits.
///
/// Burn 0.22 modules carry their backend in the [`Device`] rather than a type parameter, so the
/// same struct trains on an autodiff device and runs inference on a plain one. Dropout is
/// applied in training only, by [`Mlp::forward_with`], with masks drawn from the trainer's own
/// seeded generator.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Input features to the first hidden layer.
    pub hidden: Linear,
    /// Further hidden layers, each as wide as the first (empty for one hidden layer).
    pub deeper: Vec<Linear>,
    /// Last hidden layer to class logits.
    pub output: Linear,
}

/// Uniform `(-k, k)` values with `k = 1/sqrt(fan_in)`, burn's default `Linear` initialisation,
/// drawn from our own seeded generator so initialisation never touches burn's process-global RNG
/// (which concurrent trainings in one process would otherwise race on).
pub(crate) fn uniform(rng: &mut SeededRng, len: usize, fan_in: usize) -> Vec<f32> {
    let k = 1.0 / (fan_in.max(1) as f32).sqrt();
    (0..len).map(|_| rng.random_range(-k..k)).collect()
}

/// Builds a `Linear` layer holding exactly the given row-major `[inputs, outputs]` weights.
pub(crate) fn linear_from(layer: &DenseLayer, device: &Device) -> Linear {
    let weight = Tensor::<2>::from_data(
        TensorData::new(layer.weight.clone(), [layer.inputs, layer.outputs]),
        device,
    );
    let bias = Tensor::<1>::from_data(TensorData::new(layer.bias.clone(), [layer.outputs]), device);
    Linear {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(bias)),
    }
}

/// A trained tensor's values.
pub(crate) fn read_tensor(data: TensorData) -> Result<Vec<f32>, MlError> {
    data.try_into_vec_as::<f32>()
        .map_err(|e| MlError::Training(format!("cannot read trained weights: {e:?}")))
}

/// Logits to probabilities, in place, shifted by the largest for stability.
pub(crate) fn softmax_in_place(values: &mut [f32]) {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for p in values.iter_mut() {
        *p = (*p - max).exp();
        sum += *p;
    }
    for p in values.iter_mut() {
        *p /= sum;
    }
}

/// A row-major `[n, classes]` matrix of `row(x, scratch, probs)` over each `inputs`-wide row
/// of `matrix`, with one scratch buffer for all rows.
pub(crate) fn probabilities_by_row(
    matrix: &[f32],
    inputs: usize,
    classes: usize,
    mut row: impl FnMut(&[f32], &mut Vec<f32>, &mut [f32]),
) -> Vec<f32> {
    let inputs = inputs.max(1);
    let mut out = vec![0.0; matrix.len() / inputs * classes];
    let mut scratch = Vec::new();
    for (x, probs) in matrix
        .chunks_exact(inputs)
        .zip(out.chunks_exact_mut(classes.max(1)))
    {
        row(x, &mut scratch, probs);
    }
    out
}

/// Copies a `Linear` layer's parameters out of burn.
pub(crate) fn dense_from(linear: &Linear) -> Result<DenseLayer, MlError> {
    let weight = linear.weight.val();
    let [inputs, outputs] = weight.dims();
    let weight = read_tensor(weight.into_data())?;
    let bias = match &linear.bias {
        Some(b) => read_tensor(b.val().into_data())?,
        None => vec![0.0; outputs],
    };
    Ok(DenseLayer {
        inputs,
        outputs,
        weight,
        bias,
    })
}

impl Mlp {
    /// A freshly initialised network of `depth` hidden layers `hidden` wide, whose weights
    /// depend only on the sizes and `seed`. With `depth` 1 the draws are those of the
    /// two-layer network earlier versions trained.
    pub fn init(
        inputs: usize,
        hidden: usize,
        depth: usize,
        classes: usize,
        seed: u64,
        device: &Device,
    ) -> Mlp {
        let mut rng = SeededRng::seed_from_u64(seed);
        let mut dense = |inputs, outputs| DenseLayer::uniform(&mut rng, inputs, outputs);
        let first = dense(inputs, hidden);
        let deeper: Vec<DenseLayer> = (1..depth.max(1)).map(|_| dense(hidden, hidden)).collect();
        let output = dense(hidden, classes);
        let weights = MlpWeights {
            hidden: first,
            deeper,
            output,
        };
        Mlp::from_weights(&weights, device)
    }

    /// Rebuilds the burn module from stored weights, e.g. to cross-check the plain forward pass.
    pub fn from_weights(weights: &MlpWeights, device: &Device) -> Mlp {
        Mlp {
            hidden: linear_from(&weights.hidden, device),
            deeper: weights
                .deeper
                .iter()
                .map(|l| linear_from(l, device))
                .collect(),
            output: linear_from(&weights.output, device),
        }
    }

    /// Class logits for a `[batch, inputs]` matrix.
    pub fn forward(&self, input: Tensor<2>) -> Tensor<2> {
        self.forward_with(input, &mut |_, h| h)
    }

    /// [`forward`](Self::forward) with `after(layer, activations)` applied to each hidden
    /// layer's activations after the ReLU: the training loop's dropout.
    pub fn forward_with(
        &self,
        input: Tensor<2>,
        after: &mut dyn FnMut(usize, Tensor<2>) -> Tensor<2>,
    ) -> Tensor<2> {
        let mut h = after(0, relu(self.hidden.forward(input)));
        for (i, layer) in self.deeper.iter().enumerate() {
            h = after(i + 1, relu(layer.forward(h)));
        }
        self.output.forward(h)
    }

    /// Copies the parameters out of burn into plain vectors for storage and serving.
    pub fn to_weights(&self) -> Result<MlpWeights, MlError> {
        Ok(MlpWeights {
            hidden: dense_from(&self.hidden)?,
            deeper: self
                .deeper
                .iter()
                .map(dense_from)
                .collect::<Result<_, _>>()?,
            output: dense_from(&self.output)?,
        })
    }
}

/// One dense layer's parameters, `y = x W + b`.
///
/// Values are stored as hexadecimal IEEE-754 bit patterns rather than JSON numbers so a bundle
/// round-trips bit for bit, whatever float parser reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DenseLayer {
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// Row-major `[inputs, outputs]`, the layout of burn's default `Linear`.
    #[serde(with = "hex_f32")]
    pub weight: Vec<f32>,
    /// `[outputs]`.
    #[serde(with = "hex_f32")]
    pub bias: Vec<f32>,
}

impl DenseLayer {
    /// A layer of burn's default `Linear` initialisation ([`uniform`]), weights drawn before
    /// the bias.
    pub(crate) fn uniform(rng: &mut SeededRng, inputs: usize, outputs: usize) -> DenseLayer {
        DenseLayer {
            inputs,
            outputs,
            weight: uniform(rng, inputs * outputs, inputs),
            bias: uniform(rng, outputs, inputs),
        }
    }

    /// Checks shapes and finiteness, because a bundle may come from anywhere.
    pub(crate) fn validate(&self, what: &str) -> Result<(), String> {
        if self.inputs == 0 || self.outputs == 0 {
            return Err(format!("{what} layer has a zero dimension"));
        }
        let expected = self.inputs.checked_mul(self.outputs);
        if expected != Some(self.weight.len()) || self.bias.len() != self.outputs {
            return Err(format!(
                "{what} layer weights do not match their shape {}x{}",
                self.inputs, self.outputs
            ));
        }
        if !self.weight.iter().chain(&self.bias).all(|v| v.is_finite()) {
            return Err(format!("{what} layer holds non-finite weights"));
        }
        Ok(())
    }

    /// `out = x W + b`; `out` must be `outputs` long.
    pub(crate) fn apply(&self, x: &[f32], out: &mut [f32]) {
        out.copy_from_slice(&self.bias);
        for (xi, w_row) in x.iter().zip(self.weight.chunks_exact(self.outputs)) {
            if *xi != 0.0 {
                for (o, w) in out.iter_mut().zip(w_row) {
                    *o += xi * w;
                }
            }
        }
    }
}

/// The weights of an [`Mlp`] as plain data: what a bundle stores and what serving runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlpWeights {
    /// Input to first hidden layer.
    pub hidden: DenseLayer,
    /// Further hidden layers, in order; absent from bundles of one hidden layer (and from
    /// every bundle written before deeper networks existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deeper: Vec<DenseLayer>,
    /// Last hidden to output layer.
    pub output: DenseLayer,
}

impl MlpWeights {
    /// Checks that layer shapes chain up and the values are usable.
    pub fn validate(&self) -> Result<(), String> {
        self.hidden.validate("hidden")?;
        let mut width = self.hidden.outputs;
        for (i, layer) in self.deeper.iter().enumerate() {
            layer.validate(&format!("hidden layer {}", i + 2))?;
            if layer.inputs != width {
                return Err(format!(
                    "hidden layer {} does not connect to the one before",
                    i + 2
                ));
            }
            width = layer.outputs;
        }
        self.output.validate("output")?;
        if width != self.output.inputs {
            return Err("hidden and output layers do not connect".to_string());
        }
        Ok(())
    }

    /// Widest hidden layer, the scratch space one row needs.
    pub fn widest_hidden(&self) -> usize {
        self.deeper
            .iter()
            .map(|l| l.outputs)
            .fold(self.hidden.outputs, usize::max)
    }

    /// Input width.
    pub fn inputs(&self) -> usize {
        self.hidden.inputs
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.output.outputs
    }

    /// Class probabilities for one encoded row, the same computation as [`Mlp::forward`]
    /// followed by a softmax, in plain Rust.
    ///
    /// `hidden` is scratch space reused across rows to avoid an allocation per row; `probs`
    /// must be `classes()` long.
    pub fn probabilities_into(&self, x: &[f32], hidden: &mut Vec<f32>, probs: &mut [f32]) {
        // Two halves of one scratch buffer, for a layer's input and its output.
        let wide = self.widest_hidden();
        hidden.resize(2 * wide, 0.0);
        let (mut a, mut b) = hidden.split_at_mut(wide);
        let mut width = self.hidden.outputs;
        self.hidden.apply(x, &mut a[..width]);
        for h in a[..width].iter_mut() {
            *h = h.max(0.0);
        }
        for layer in &self.deeper {
            layer.apply(&a[..width], &mut b[..layer.outputs]);
            width = layer.outputs;
            for h in b[..width].iter_mut() {
                *h = h.max(0.0);
            }
            std::mem::swap(&mut a, &mut b);
        }
        self.output.apply(&a[..width], probs);
        softmax_in_place(probs);
    }

    /// Class probabilities for a row-major `[n, inputs()]` matrix, row-major `[n, classes()]`.
    pub fn probabilities(&self, matrix: &[f32]) -> Vec<f32> {
        probabilities_by_row(
            matrix,
            self.inputs(),
            self.classes(),
            |x, scratch, probs| self.probabilities_into(x, scratch, probs),
        )
    }
}

/// Serde helpers storing `Vec<f32>` as one hex string of little-endian bit patterns.
pub(crate) mod hex_f32 {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    const HEX: &[u8; 16] = b"0123456789abcdef";

    pub fn serialize<S: Serializer>(values: &[f32], serializer: S) -> Result<S::Ok, S::Error> {
        let mut text = String::with_capacity(values.len() * 8);
        for value in values {
            for byte in value.to_le_bytes() {
                text.push(HEX[usize::from(byte >> 4)] as char);
                text.push(HEX[usize::from(byte & 0xf)] as char);
            }
        }
        serializer.serialize_str(&text)
    }

    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f32>, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = text.as_bytes();
        if bytes.len() % 8 != 0 {
            return Err(D::Error::custom(
                "weight data length is not a multiple of 8 hex digits",
            ));
        }
        bytes
            .chunks_exact(8)
            .map(|chunk| {
                let mut le = [0u8; 4];
                for (b, pair) in le.iter_mut().zip(chunk.chunks_exact(2)) {
                    let (Some(hi), Some(lo)) = (nibble(pair[0]), nibble(pair[1])) else {
                        return Err(D::Error::custom("weight data is not hexadecimal"));
                    };
                    *b = (hi << 4) | lo;
                }
                Ok(f32::from_le_bytes(le))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::softmax;

    fn device() -> Device {
        crate::train::training_device()
    }

    #[test]
    fn plain_forward_matches_burn_forward() {
        let device = device();
        let model = Mlp::init(7, 16, 1, 4, 3, &device);
        let weights = model.to_weights().unwrap();
        weights.validate().unwrap();
        let mut rng = SeededRng::seed_from_u64(9);
        let input: Vec<f32> = (0..7 * 25).map(|_| rng.random_range(-3.0..3.0)).collect();
        let burn_probs = softmax(
            model.forward(Tensor::<2>::from_data(
                TensorData::new(input.clone(), [25, 7]),
                &device,
            )),
            1,
        )
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
        let plain = weights.probabilities(&input);
        assert_eq!(plain.len(), burn_probs.len());
        for (a, b) in plain.iter().zip(&burn_probs) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // Rebuilding the module from the weights gives back the same weights.
        assert_eq!(
            Mlp::from_weights(&weights, &device).to_weights().unwrap(),
            weights
        );
    }

    #[test]
    fn deeper_networks_forward_the_same_in_burn_and_plain_rust() {
        let device = device();
        let model = Mlp::init(6, 10, 3, 4, 11, &device);
        let weights = model.to_weights().unwrap();
        weights.validate().unwrap();
        assert_eq!(weights.deeper.len(), 2);
        let mut rng = SeededRng::seed_from_u64(2);
        let input: Vec<f32> = (0..6 * 9).map(|_| rng.random_range(-2.0..2.0)).collect();
        let burn_probs = softmax(
            model.forward(Tensor::<2>::from_data(
                TensorData::new(input.clone(), [9, 6]),
                &device,
            )),
            1,
        )
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
        for (a, b) in weights.probabilities(&input).iter().zip(&burn_probs) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // One hidden layer stores no `deeper` field, so older bundles read as before.
        let shallow = Mlp::init(6, 10, 1, 4, 11, &device).to_weights().unwrap();
        let json = serde_json::to_value(&shallow).unwrap();
        assert!(json.get("deeper").is_none(), "{json}");
        let mut broken = weights.clone();
        broken.deeper[1].inputs = 3;
        assert!(broken.validate().is_err());
    }

    #[test]
    fn init_is_a_function_of_the_seed() {
        let device = device();
        let a = Mlp::init(5, 8, 1, 3, 1, &device).to_weights().unwrap();
        let b = Mlp::init(5, 8, 1, 3, 1, &device).to_weights().unwrap();
        let c = Mlp::init(5, 8, 1, 3, 2, &device).to_weights().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn weights_round_trip_through_json_bit_for_bit() {
        let layer = DenseLayer {
            inputs: 2,
            outputs: 2,
            weight: vec![0.1, -0.0, f32::MIN_POSITIVE, 1.0e-45],
            bias: vec![123.456, -7.0],
        };
        let json = serde_json::to_string(&layer).unwrap();
        let back: DenseLayer = serde_json::from_str(&json).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.weight), bits(&layer.weight));
        assert_eq!(bits(&back.bias), bits(&layer.bias));
        assert!(
            serde_json::from_str::<DenseLayer>(&json.replace("cdcc", "zzzz")).is_err(),
            "non-hex accepted"
        );
    }

    #[test]
    fn validate_rejects_bad_shapes_and_values() {
        let device = device();
        let good = Mlp::init(3, 4, 1, 2, 0, &device).to_weights().unwrap();
        let mut bad = good.clone();
        bad.hidden.weight.pop();
        assert!(bad.validate().is_err());
        let mut bad = good.clone();
        bad.output.inputs = 5;
        assert!(bad.validate().is_err());
        let mut bad = good;
        bad.output.bias[0] = f32::NAN;
        assert!(bad.validate().is_err());
    }
}
