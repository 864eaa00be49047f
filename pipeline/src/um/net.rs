//! The DenseNet-BC of UM / UMAP fine-tuning: DICE's `DenseNet3` with the repository's
//! training-time parts — dropout after every convolution, BatchNorm in training mode with
//! PyTorch's running-statistics update, and (UMAP) weights masked by learnable scores.
//!
//! Parameters live on the host in PyTorch's state-dict naming ([`ParamEntry`]); every pass
//! uploads them to the device, so the optimiser, the checkpoints and the export are plain
//! Rust over named `f32` buffers, and the device (burn `flex`, or any burn device) only
//! runs the network and its backward pass.

use std::collections::{BTreeMap, HashMap};

use burn::nn::pool::{AvgPool2d, AvgPool2dConfig};
use burn::tensor::activation::relu;
use burn::tensor::module::{batch_norm, batch_norm_train, conv2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::UmError;
use super::mask::{KeepFraction, kaiming_uniform_bound, straight_through, subnet_mask};
use super::rng::{Purpose, StreamKey};
use crate::checkpoint::{StateDictEntry, densenet_state_dict_layout};
use crate::model::{DenseNet, DenseNetPlan, global_average_pool, tensor_values};

/// BatchNorm epsilon and momentum of `nn.BatchNorm2d` (PyTorch defaults, as DenseNet3).
pub const BN_EPSILON: f64 = 1e-5;
/// See [`BN_EPSILON`].
pub const BN_MOMENTUM: f64 = 0.1;

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// Unleashing Mask: every convolution and linear weight (and the head bias) is trained
    /// (`configs/smallscale/densenet_cifar10.yaml`: `DenseConv`, `DenseLinear`).
    Um,
    /// Unleashing Mask Adopt Pruning: the weights are frozen; a learnable score per weight
    /// selects the kept fraction by `|score|` (`densenet_cifar10_UMAP.yaml`: `SubnetConv`,
    /// `SubnetLinear`, `freeze_weights`).
    Umap,
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Variant::Um => "um",
            Variant::Umap => "umap",
        })
    }
}

impl std::str::FromStr for Variant {
    type Err = UmError;
    fn from_str(s: &str) -> Result<Self, UmError> {
        match s {
            "um" => Ok(Variant::Um),
            "umap" => Ok(Variant::Umap),
            _ => Err(UmError::config(
                "variant",
                format!("expected um or umap, got `{s}`"),
            )),
        }
    }
}

/// How BatchNorm's affine parameters (`weight` = gamma, `bias` = beta) are treated.
///
/// The repository's configs use `NonAffineBatchNorm` (`nn.BatchNorm2d(affine=False)`):
/// normalisation without learnable gamma/beta. Its `pretrained()` loads a checkpoint
/// with `strict` key matching off, so the affine values of a checkpoint trained with
/// affine BatchNorm (DICE's) are dropped ("IGNORE: ...bn1.weight"), which changes the
/// network. [`BatchNormMode::FrozenAffine`] keeps the checkpoint's gamma/beta as constants
/// instead: no learnable BatchNorm parameter, as in the repository, and the pretrained
/// function intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchNormMode {
    /// Learnable gamma/beta (`nn.BatchNorm2d()`), trained with weight decay as every other
    /// parameter (`no_bn_decay` is false in the configs).
    Affine,
    /// The checkpoint's gamma/beta, frozen.
    FrozenAffine,
    /// The repository literally: gamma = 1, beta = 0 (the checkpoint's values ignored).
    NonAffine,
}

impl std::fmt::Display for BatchNormMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BatchNormMode::Affine => "affine",
            BatchNormMode::FrozenAffine => "frozen-affine",
            BatchNormMode::NonAffine => "non-affine",
        })
    }
}

impl std::str::FromStr for BatchNormMode {
    type Err = UmError;
    fn from_str(s: &str) -> Result<Self, UmError> {
        match s {
            "affine" => Ok(Self::Affine),
            "frozen-affine" => Ok(Self::FrozenAffine),
            "non-affine" => Ok(Self::NonAffine),
            _ => Err(UmError::config(
                "batch_norm",
                format!("expected affine, frozen-affine or non-affine, got `{s}`"),
            )),
        }
    }
}

/// The network's training-time structure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetSpec {
    /// UM or UMAP.
    pub variant: Variant,
    /// BatchNorm treatment.
    pub batch_norm: BatchNormMode,
    /// Dropout probability after every convolution of the dense and transition layers
    /// (`droprate`, 0.3 in the configs), training passes only.
    pub dropout: f64,
    /// UMAP's kept fraction (`prune_rate`); ignored for UM.
    pub keep: KeepFraction,
}

/// One named tensor in PyTorch's state-dict naming, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamEntry {
    /// State-dict key (`block1.layer.0.conv1.weight`; UMAP scores: `...conv1.scores`).
    pub key: String,
    /// Shape (PyTorch layout: convolutions `[out, in, kh, kw]`, `fc.weight` `[C, m]`).
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

impl ParamEntry {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Debug, Clone, Copy)]
struct ConvIx {
    weight: usize,
    padding: usize,
}

#[derive(Debug, Clone, Copy)]
struct BnIx {
    weight: usize,
    bias: usize,
    mean: usize,
    var: usize,
}

#[derive(Debug, Clone, Copy)]
struct LayerIx {
    bn1: BnIx,
    conv1: ConvIx,
    second: Option<(BnIx, ConvIx)>,
}

#[derive(Debug, Clone)]
struct Layout {
    conv1: ConvIx,
    blocks: [Vec<LayerIx>; 3],
    trans: [(BnIx, ConvIx); 2],
    bn: BnIx,
    fc_weight: ConvIx,
    fc_bias: usize,
}

/// Batch statistics of one BatchNorm in a training pass, for the running-statistics update.
#[derive(Debug, Clone)]
pub struct BatchStats {
    bn: BnIx,
    mean: Tensor<1>,
    variance: Tensor<1>,
    count: usize,
}

/// How a pass runs.
#[derive(Debug, Clone, Copy)]
pub enum Pass {
    /// Training mode (`model.train()`): batch statistics, dropout drawn from `dropout`
    /// (one sub-stream per dropout site), gradients to the trainable parameters. Needs an
    /// autodiff device.
    Train {
        /// The dropout stream of this iteration.
        dropout: StreamKey,
    },
    /// Eval mode (`model.eval()`): running statistics, no dropout, no gradients.
    Eval,
}

/// What a pass returns.
#[derive(Debug)]
pub struct PassOutput {
    /// `[N, C]`.
    pub logits: Tensor<2>,
    /// The trainable parameters of a training pass: entry index and its leaf tensor
    /// (flat), to read gradients from.
    pub leaves: Vec<(usize, Tensor<1>)>,
    /// BatchNorm batch statistics of a training pass.
    pub batch_stats: Vec<BatchStats>,
}

/// DenseNet-BC with UM / UMAP training parts, parameters on the host.
#[derive(Debug, Clone)]
pub struct UmNet {
    plan: DenseNetPlan,
    spec: NetSpec,
    entries: Vec<ParamEntry>,
    index: HashMap<String, usize>,
    layout: Layout,
}

/// The key of the scores of the weight `weight_key` (`x.weight` -> `x.scores`).
pub fn scores_key(weight_key: &str) -> String {
    format!("{}.scores", weight_key.trim_end_matches(".weight"))
}

fn is_bn_affine(key: &str, layout_bn: &[String]) -> bool {
    layout_bn.iter().any(|k| k == key)
}

impl UmNet {
    /// The network for `plan` and `spec` with the values of `state` (PyTorch keys; every key
    /// of [`densenet_state_dict_layout`] must be present with its shape). UMAP scores are
    /// taken from `state` when present (`<prefix>.scores`), else drawn as the repository's
    /// `kaiming_uniform_(a = sqrt(5))`, i.e. `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, from
    /// `seed`. For [`BatchNormMode::NonAffine`] gamma is set to 1 and beta to 0.
    pub fn from_state(
        plan: &DenseNetPlan,
        spec: NetSpec,
        state: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
        seed: u64,
    ) -> Result<Self, UmError> {
        if !(spec.dropout.is_finite() && (0.0..1.0).contains(&spec.dropout)) {
            return Err(UmError::config(
                "dropout",
                format!("must lie in [0, 1), got {}", spec.dropout),
            ));
        }
        let layout = densenet_state_dict_layout(plan);
        let bn_affine: Vec<String> = layout
            .iter()
            .filter(|e| is_bn_param(&e.key))
            .map(|e| e.key.clone())
            .collect();
        let mut entries = Vec::with_capacity(layout.len() * 2);
        for StateDictEntry { key, shape } in &layout {
            let (found_shape, values) = state
                .get(key)
                .ok_or_else(|| UmError::state(format!("missing tensor {key}")))?;
            if found_shape != shape || values.len() != shape.iter().product::<usize>() {
                return Err(UmError::state(format!(
                    "{key}: shape {found_shape:?} ({} values), expected {shape:?}",
                    values.len()
                )));
            }
            let mut values = values.clone();
            if spec.batch_norm == BatchNormMode::NonAffine && is_bn_affine(key, &bn_affine) {
                let fill = if key.ends_with(".weight") { 1.0 } else { 0.0 };
                values.iter_mut().for_each(|v| *v = fill);
            }
            entries.push(ParamEntry {
                key: key.clone(),
                shape: shape.clone(),
                values,
            });
        }
        if spec.variant == Variant::Umap {
            let scores_root = StreamKey::new(seed).purpose(Purpose::Scores);
            let weights: Vec<ParamEntry> = entries
                .iter()
                .filter(|e| is_masked_weight(&e.key))
                .cloned()
                .collect();
            for (layer, w) in weights.iter().enumerate() {
                let key = scores_key(&w.key);
                let values = match state.get(&key) {
                    Some((shape, values)) if *shape == w.shape && values.len() == w.numel() => {
                        values.clone()
                    }
                    Some((shape, _)) => {
                        return Err(UmError::state(format!(
                            "{key}: shape {shape:?}, expected {:?}",
                            w.shape
                        )));
                    }
                    None => {
                        let fan_in: usize = w.shape[1..].iter().product();
                        let bound = kaiming_uniform_bound(fan_in) as f32;
                        let stream = scores_root.derive(layer as u64);
                        (0..w.numel() as u64)
                            .map(|i| (2.0 * stream.uniform(i) - 1.0) * bound)
                            .collect()
                    }
                };
                entries.push(ParamEntry {
                    key,
                    shape: w.shape.clone(),
                    values,
                });
            }
        }
        let index: HashMap<String, usize> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.key.clone(), i))
            .collect();
        let layout = build_layout(plan, &index, spec.variant == Variant::Umap)?;
        Ok(Self {
            plan: plan.clone(),
            spec,
            entries,
            index,
            layout,
        })
    }

    /// The network of a loaded burn [`DenseNet`] (e.g. [`crate::checkpoint::load_densenet`]).
    pub fn from_densenet(
        model: &DenseNet,
        plan: &DenseNetPlan,
        spec: NetSpec,
        seed: u64,
    ) -> Result<Self, UmError> {
        Self::from_state(plan, spec, &densenet_state(model), seed)
    }

    /// The checked model plan.
    pub fn plan(&self) -> &DenseNetPlan {
        &self.plan
    }

    /// The training structure.
    pub fn spec(&self) -> NetSpec {
        self.spec
    }

    /// Every tensor: the state dict in PyTorch order, then UMAP scores.
    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    /// The tensor named `key`.
    pub fn entry(&self, key: &str) -> Option<&ParamEntry> {
        self.index.get(key).map(|&i| &self.entries[i])
    }

    /// Mutable access to the tensor at `index` (the optimiser's update).
    pub fn values_mut(&mut self, index: usize) -> &mut [f32] {
        &mut self.entries[index].values
    }

    /// Replaces every tensor's values with those of `state` (same keys and shapes), e.g.
    /// from a training checkpoint.
    pub fn load_values(
        &mut self,
        state: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    ) -> Result<(), UmError> {
        for e in &mut self.entries {
            let (shape, values) = state
                .get(&e.key)
                .ok_or_else(|| UmError::state(format!("missing tensor {}", e.key)))?;
            if *shape != e.shape || values.len() != e.values.len() {
                return Err(UmError::state(format!(
                    "{}: shape {shape:?}, expected {:?}",
                    e.key, e.shape
                )));
            }
            e.values.clone_from(values);
        }
        Ok(())
    }

    /// Whether entry `index` is trained: UM — convolution and linear weights, the head
    /// bias, and gamma/beta with [`BatchNormMode::Affine`]; UMAP — the scores only.
    pub fn is_trainable(&self, index: usize) -> bool {
        let key = &self.entries[index].key;
        match self.spec.variant {
            Variant::Um => {
                is_masked_weight(key)
                    || key == "fc.bias"
                    || (self.spec.batch_norm == BatchNormMode::Affine && is_bn_param(key))
            }
            Variant::Umap => key.ends_with(".scores"),
        }
    }

    /// Names of the trained tensors, in entry order.
    pub fn trainable_keys(&self) -> Vec<&str> {
        (0..self.entries.len())
            .filter(|&i| self.is_trainable(i))
            .map(|i| self.entries[i].key.as_str())
            .collect()
    }

    /// The 0/1 UMAP mask of the weight `weight_key` from its current scores.
    pub fn mask_of(&self, weight_key: &str) -> Option<Vec<f32>> {
        let scores = self.entry(&scores_key(weight_key))?;
        Some(subnet_mask(&scores.values, self.spec.keep))
    }

    /// The state dict of the network as PyTorch would use it for inference, in PyTorch key
    /// order and naming: UMAP weights multiplied by their masks (`W * m`), scores left
    /// out, BatchNorm gamma/beta as the forward pass uses them (ones/zeros for
    /// [`BatchNormMode::NonAffine`]), running statistics as updated by training.
    pub fn effective_state(&self) -> Vec<ParamEntry> {
        densenet_state_dict_layout(&self.plan)
            .iter()
            .map(|e| {
                let entry = &self.entries[self.index[&e.key]];
                match self.mask_of(&e.key) {
                    Some(mask) if self.spec.variant == Variant::Umap => ParamEntry {
                        key: entry.key.clone(),
                        shape: entry.shape.clone(),
                        values: entry.values.iter().zip(&mask).map(|(w, m)| w * m).collect(),
                    },
                    _ => entry.clone(),
                }
            })
            .collect()
    }

    /// Runs the network on a normalised NCHW batch `x` (on `x`'s device).
    pub fn forward(&self, x: Tensor<4>, pass: Pass) -> PassOutput {
        let device = x.device();
        let train = matches!(pass, Pass::Train { .. });
        let mut leaves = Vec::new();
        let mut tensors: Vec<Option<Tensor<1>>> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let t = upload(&e.values, &device);
                if train && self.is_trainable(i) {
                    let leaf = t.require_grad();
                    leaves.push((i, leaf.clone()));
                    Some(leaf)
                } else {
                    Some(t)
                }
            })
            .collect();
        // UMAP: effective weights W * m (straight-through to the scores while training).
        if self.spec.variant == Variant::Umap {
            for i in 0..self.entries.len() {
                let key = &self.entries[i].key;
                if !is_masked_weight(key) {
                    continue;
                }
                let s = self.index[&scores_key(key)];
                let mask = upload(
                    &subnet_mask(&self.entries[s].values, self.spec.keep),
                    &device,
                );
                let m = if train {
                    straight_through(tensors[s].clone().expect("scores uploaded"), mask)
                } else {
                    mask
                };
                tensors[i] = Some(tensors[i].take().expect("weight uploaded") * m);
            }
        }
        let mut run = Run {
            net: self,
            tensors,
            pass,
            site: 0,
            batch_stats: Vec::new(),
            pool: AvgPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
        };
        let logits = run.network(x);
        PassOutput {
            logits,
            leaves,
            batch_stats: run.batch_stats,
        }
    }

    /// PyTorch's running-statistics update after a training pass, per BatchNorm:
    /// `running_mean = m * mean + (1 - m) * running_mean`,
    /// `running_var = m * var * n / (n - 1) + (1 - m) * running_var` with `m = 0.1`,
    /// the biased batch variance `var` and `n` values per channel.
    pub fn update_running_stats(&mut self, stats: Vec<BatchStats>) {
        for s in stats {
            let mean = tensor_values(s.mean);
            let var = tensor_values(s.variance);
            let n = s.count as f64;
            let unbias = if s.count > 1 { n / (n - 1.0) } else { 1.0 };
            let m = BN_MOMENTUM;
            for (r, b) in self.entries[s.bn.mean].values.iter_mut().zip(&mean) {
                *r = (m * f64::from(*b) + (1.0 - m) * f64::from(*r)) as f32;
            }
            for (r, b) in self.entries[s.bn.var].values.iter_mut().zip(&var) {
                *r = (m * f64::from(*b) * unbias + (1.0 - m) * f64::from(*r)) as f32;
            }
        }
    }
}

/// The values of a burn [`DenseNet`] by PyTorch key.
pub fn densenet_state(model: &DenseNet) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot};
    model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
        .into_iter()
        .map(|t| {
            let bytes = t.to_bytes().expect("a DenseNet tensor reads back");
            let values = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (t.name.clone(), (t.shape.to_vec(), values))
        })
        .collect()
}

fn upload(values: &[f32], device: &Device) -> Tensor<1> {
    Tensor::<1>::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

/// Convolution and linear weights (what UMAP masks and UM trains).
fn is_masked_weight(key: &str) -> bool {
    key.ends_with(".weight") && (key.contains("conv") || key.starts_with("fc."))
}

/// BatchNorm gamma and beta.
fn is_bn_param(key: &str) -> bool {
    let last = key.rsplit('.').nth(1).unwrap_or("");
    last.starts_with("bn") && (key.ends_with(".weight") || key.ends_with(".bias"))
}

fn build_layout(
    plan: &DenseNetPlan,
    index: &HashMap<String, usize>,
    scores: bool,
) -> Result<Layout, UmError> {
    let ix = |k: &str| {
        index
            .get(k)
            .copied()
            .ok_or_else(|| UmError::state(format!("missing tensor {k}")))
    };
    let bn = |p: &str| -> Result<BnIx, UmError> {
        Ok(BnIx {
            weight: ix(&format!("{p}.weight"))?,
            bias: ix(&format!("{p}.bias"))?,
            mean: ix(&format!("{p}.running_mean"))?,
            var: ix(&format!("{p}.running_var"))?,
        })
    };
    let conv = |p: &str, padding: usize| -> Result<ConvIx, UmError> {
        let key = format!("{p}.weight");
        if scores {
            ix(&scores_key(&key))?;
        }
        Ok(ConvIx {
            weight: ix(&key)?,
            padding,
        })
    };
    let mut blocks: [Vec<LayerIx>; 3] = Default::default();
    for (b, block) in blocks.iter_mut().enumerate() {
        for i in 0..plan.layers_per_block {
            let p = format!("block{}.layer.{i}", b + 1);
            let (first_pad, second) = if plan.config.bottleneck {
                (
                    0,
                    Some((bn(&format!("{p}.bn2"))?, conv(&format!("{p}.conv2"), 1)?)),
                )
            } else {
                (1, None)
            };
            block.push(LayerIx {
                bn1: bn(&format!("{p}.bn1"))?,
                conv1: conv(&format!("{p}.conv1"), first_pad)?,
                second,
            });
        }
    }
    Ok(Layout {
        conv1: conv("conv1", 1)?,
        blocks,
        trans: [
            (bn("trans1.bn1")?, conv("trans1.conv1", 0)?),
            (bn("trans2.bn1")?, conv("trans2.conv1", 0)?),
        ],
        bn: bn("bn1")?,
        fc_weight: conv("fc", 0)?,
        fc_bias: ix("fc.bias")?,
    })
}

/// The state of one pass through the network.
struct Run<'a> {
    net: &'a UmNet,
    tensors: Vec<Option<Tensor<1>>>,
    pass: Pass,
    site: u64,
    batch_stats: Vec<BatchStats>,
    pool: AvgPool2d,
}

impl Run<'_> {
    fn t(&self, i: usize) -> Tensor<1> {
        self.tensors[i].clone().expect("every tensor is uploaded")
    }

    fn shape4(&self, i: usize) -> [usize; 4] {
        let s = &self.net.entries[i].shape;
        [s[0], s[1], s[2], s[3]]
    }

    fn conv(&self, x: Tensor<4>, c: ConvIx) -> Tensor<4> {
        let w = self.t(c.weight).reshape(self.shape4(c.weight));
        let p = c.padding;
        conv2d(x, w, None, ConvOptions::new([1, 1], [p, p], [1, 1], 1))
    }

    fn bn(&mut self, x: Tensor<4>, b: BnIx) -> Tensor<4> {
        let (gamma, beta) = (self.t(b.weight), self.t(b.bias));
        match self.pass {
            Pass::Train { .. } => {
                let [n, _, h, w] = x.dims();
                let out = batch_norm_train(x, gamma, beta, BN_EPSILON);
                self.batch_stats.push(BatchStats {
                    bn: b,
                    mean: out.mean,
                    variance: out.variance,
                    count: n * h * w,
                });
                out.output
            }
            Pass::Eval => batch_norm(x, gamma, beta, self.t(b.mean), self.t(b.var), BN_EPSILON),
        }
    }

    /// `F.dropout(x, p, training)`: zero with probability p, scale the rest by 1/(1-p).
    fn dropout(&mut self, x: Tensor<4>) -> Tensor<4> {
        let p = self.net.spec.dropout;
        let Pass::Train { dropout } = self.pass else {
            return x;
        };
        if p == 0.0 {
            return x;
        }
        let stream = dropout.derive(self.site);
        self.site += 1;
        let dims = x.dims();
        let n: usize = dims.iter().product();
        let scale = (1.0 / (1.0 - p)) as f32;
        let threshold = p as f32;
        let mut mask = vec![0.0f32; n];
        mask.par_chunks_mut(1 << 16)
            .enumerate()
            .for_each(|(c, chunk)| {
                let base = (c << 16) as u64;
                for (j, m) in chunk.iter_mut().enumerate() {
                    if stream.uniform(base + j as u64) >= threshold {
                        *m = scale;
                    }
                }
            });
        let mask = Tensor::<4>::from_data(TensorData::new(mask, dims), &x.device());
        x * mask
    }

    fn network(&mut self, x: Tensor<4>) -> Tensor<2> {
        let layout = self.net.layout.clone();
        let mut out = self.conv(x, layout.conv1);
        for b in 0..3 {
            for layer in &layout.blocks[b] {
                let bn1 = self.bn(out.clone(), layer.bn1);
                let h = self.conv(relu(bn1), layer.conv1);
                let mut h = self.dropout(h);
                if let Some((bn2, conv2)) = layer.second {
                    let bn2 = self.bn(h, bn2);
                    let g = self.conv(relu(bn2), conv2);
                    h = self.dropout(g);
                }
                out = Tensor::cat(vec![out, h], 1);
            }
            if b < 2 {
                let (bn, conv) = layout.trans[b];
                let t = self.bn(out, bn);
                let t = self.conv(relu(t), conv);
                let t = self.dropout(t);
                out = self.pool.forward(t);
            }
        }
        let out = self.bn(out, layout.bn);
        let h = global_average_pool(relu(out));
        let [classes, m] = {
            let s = &self.net.entries[layout.fc_weight.weight].shape;
            [s[0], s[1]]
        };
        let w = self.t(layout.fc_weight.weight).reshape([classes, m]);
        let b = self.t(layout.fc_bias).reshape([1, classes]);
        h.matmul(w.transpose()) + b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DenseNetConfig;
    use crate::um::UmLoss;
    use crate::um::optim::{CosineSchedule, Sgd, SgdState};
    use crate::um::train::{TrainSettings, train_step};

    fn tiny(variant: Variant, batch_norm: BatchNormMode) -> (UmNet, TrainSettings) {
        let config = DenseNetConfig {
            depth: 10,
            growth_rate: 4,
            reduction: 0.5,
            bottleneck: true,
            num_classes: 3,
            dropout: 0.0,
        };
        let plan = config.plan().unwrap();
        let model = DenseNet::from_plan(&plan, &Device::flex());
        let spec = NetSpec {
            variant,
            batch_norm,
            dropout: 0.2,
            keep: KeepFraction::new(0.8).unwrap(),
        };
        let net = UmNet::from_densenet(&model, &plan, spec, 1).unwrap();
        let settings = TrainSettings {
            net: spec,
            loss: UmLoss::new(1.0, 0.0).unwrap(),
            schedule: CosineSchedule::new(0.1, 1, 0).unwrap(),
            sgd: Sgd::new(0.9, 1e-4).unwrap(),
            batch_size: 4,
            seed: 1,
            augment: false,
            checkpoint_every: 0,
        };
        (net, settings)
    }

    fn step(net: &mut UmNet, settings: &TrainSettings) {
        let pixels: Vec<f32> = (0..4 * 3 * 32 * 32)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let mut opt = SgdState::default();
        let r = train_step(
            net,
            settings,
            &mut opt,
            0.1,
            &pixels,
            &[0, 1, 2, 1],
            StreamKey::new(9),
            &Device::flex().autodiff(),
        );
        assert!(r.loss.is_finite());
        assert_eq!(opt.momentum.len(), net.trainable_keys().len());
    }

    fn changed(before: &UmNet, after: &UmNet) -> Vec<String> {
        before
            .entries()
            .iter()
            .zip(after.entries())
            .filter(|(a, b)| a.values != b.values)
            .map(|(a, _)| a.key.clone())
            .collect()
    }

    /// UMAP trains the scores only: weights, gamma/beta and the head bias stay, the
    /// effective weights are `W * m` with exactly `int(0.2 n)` zeros per layer.
    #[test]
    fn umap_step_moves_scores_not_weights() {
        let (mut net, settings) = tiny(Variant::Umap, BatchNormMode::FrozenAffine);
        let before = net.clone();
        step(&mut net, &settings);
        let moved = changed(&before, &net);
        assert!(moved.iter().any(|k| k.ends_with(".scores")));
        assert!(
            moved
                .iter()
                .all(|k| k.ends_with(".scores") || k.contains("running_")),
            "{moved:?}"
        );
        assert_eq!(
            net.trainable_keys().len(),
            net.entries()
                .iter()
                .filter(|e| e.key.ends_with(".scores"))
                .count()
        );
        for e in net.effective_state() {
            if e.key.ends_with(".weight") && (e.key.contains("conv") || e.key.starts_with("fc.")) {
                let zeros = e.values.iter().filter(|v| **v == 0.0).count();
                assert_eq!(
                    zeros,
                    KeepFraction::new(0.8).unwrap().pruned_count(e.values.len()),
                    "{}",
                    e.key
                );
            }
        }
    }

    /// UM trains convolution/linear weights and the head bias; gamma/beta move only with
    /// affine BatchNorm; non-affine sets them to 1 / 0.
    #[test]
    fn um_step_trains_weights_and_respects_the_batch_norm_mode() {
        for bn in [
            BatchNormMode::FrozenAffine,
            BatchNormMode::Affine,
            BatchNormMode::NonAffine,
        ] {
            let (mut net, settings) = tiny(Variant::Um, bn);
            if bn == BatchNormMode::NonAffine {
                assert!(
                    net.entry("bn1.weight")
                        .unwrap()
                        .values
                        .iter()
                        .all(|v| *v == 1.0)
                );
                assert!(
                    net.entry("bn1.bias")
                        .unwrap()
                        .values
                        .iter()
                        .all(|v| *v == 0.0)
                );
            }
            let before = net.clone();
            step(&mut net, &settings);
            let moved = changed(&before, &net);
            assert!(
                moved.contains(&"conv1.weight".to_string())
                    && moved.contains(&"fc.bias".to_string())
            );
            let bn_moved = moved.iter().any(|k| is_bn_param(k));
            assert_eq!(bn_moved, bn == BatchNormMode::Affine, "{bn}: {moved:?}");
        }
    }

    #[test]
    fn key_classes() {
        assert!(is_masked_weight("block1.layer.0.conv2.weight"));
        assert!(is_masked_weight("fc.weight"));
        assert!(!is_masked_weight("fc.bias"));
        assert!(!is_masked_weight("block1.layer.0.bn1.weight"));
        assert!(is_bn_param("block1.layer.0.bn1.weight") && is_bn_param("bn1.bias"));
        assert!(!is_bn_param("bn1.running_mean") && !is_bn_param("conv1.weight"));
        assert_eq!(scores_key("trans1.conv1.weight"), "trans1.conv1.scores");
        assert_eq!("umap".parse::<Variant>().unwrap(), Variant::Umap);
        assert!("x".parse::<Variant>().is_err());
        assert_eq!(
            "frozen-affine".parse::<BatchNormMode>().unwrap(),
            BatchNormMode::FrozenAffine
        );
    }
}
