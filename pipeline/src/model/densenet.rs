//! DenseNet-BC for 32x32 inputs (`DenseNet3` of the DICE code) as a burn module.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::config::{DenseNetConfig, DenseNetPlan};
use super::dense_block::{DenseBlock, TransitionBlock, batch_norm, conv};
use crate::error::ModelConfigError;

/// DenseNet-BC: 3x3 stem convolution, three dense blocks joined by two transition layers,
/// BN-ReLU, global average pooling and a linear head.
///
/// Runs on any burn device (CPU `flex`, or `tch` / `cuda` with the crate features of the same
/// names). On a plain (non-autodiff) device BatchNorm uses its running statistics and
/// dropout is off, i.e. PyTorch's eval mode.
#[derive(Module, Debug)]
pub struct DenseNet {
    /// 3x3 convolution from RGB to `2 * growth_rate` channels.
    pub conv1: Conv2d,
    /// First dense block (32x32).
    pub block1: DenseBlock,
    /// Transition to 16x16.
    pub trans1: TransitionBlock,
    /// Second dense block (16x16).
    pub block2: DenseBlock,
    /// Transition to 8x8.
    pub trans2: TransitionBlock,
    /// Third dense block (8x8).
    pub block3: DenseBlock,
    /// Final BatchNorm before the ReLU and the pooling.
    pub bn1: BatchNorm,
    /// Linear head `m -> C` (burn stores the weight as `[m, C]`, PyTorch as `[C, m]`).
    pub fc: Linear,
}

/// Every intermediate output of [`DenseNet::forward_activations`] (the module outputs of
/// DenseNet3, named like the parity fixtures' `act_*.npy`).
#[derive(Debug, Clone)]
pub struct DenseNetActivations {
    /// `conv1(x)`: `[N, 2k, H, W]`.
    pub conv1: Tensor<4>,
    /// `block1(...)`.
    pub block1: Tensor<4>,
    /// `trans1(...)`.
    pub trans1: Tensor<4>,
    /// `block2(...)`.
    pub block2: Tensor<4>,
    /// `trans2(...)`.
    pub trans2: Tensor<4>,
    /// `block3(...)`.
    pub block3: Tensor<4>,
    /// `relu(bn1(block3(...)))`.
    pub bn_relu: Tensor<4>,
    /// Penultimate feature `h`: spatial mean of `bn_relu`, `[N, m]`.
    pub features: Tensor<2>,
    /// `fc(h)`: `[N, C]`.
    pub logits: Tensor<2>,
}

impl DenseNet {
    /// A freshly initialised network for `config` (burn's default initialisers; load a
    /// checkpoint with [`crate::checkpoint::load_densenet`] for the papers' weights).
    pub fn new(config: &DenseNetConfig, device: &Device) -> Result<Self, ModelConfigError> {
        Ok(Self::from_plan(&config.plan()?, device))
    }

    /// A freshly initialised network for a checked plan.
    pub fn from_plan(plan: &DenseNetPlan, device: &Device) -> Self {
        let c = &plan.config;
        let block = |b: usize| {
            DenseBlock::new(
                plan.blocks[b].in_channels,
                plan.layers_per_block,
                c.growth_rate,
                c.bottleneck,
                c.dropout,
                device,
            )
        };
        let trans = |t: usize| {
            TransitionBlock::new(
                plan.transitions[t].in_channels,
                plan.transitions[t].out_channels,
                c.dropout,
                device,
            )
        };
        Self {
            conv1: conv(3, plan.stem_channels, 3, device),
            block1: block(0),
            trans1: trans(0),
            block2: block(1),
            trans2: trans(1),
            block3: block(2),
            bn1: batch_norm(plan.feature_dim, device),
            fc: LinearConfig::new(plan.feature_dim, c.num_classes).init(device),
        }
    }

    /// Dimension `m` of the penultimate feature.
    pub fn feature_dim(&self) -> usize {
        self.fc.weight.dims()[0]
    }

    /// Number of classes `C`.
    pub fn num_classes(&self) -> usize {
        self.fc.weight.dims()[1]
    }

    /// `relu(bn1(block3(trans2(block2(trans1(block1(conv1(x))))))))`, DenseNet3's `features`.
    pub fn feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        let out = self
            .trans1
            .forward(self.block1.forward(self.conv1.forward(x)));
        let out = self.trans2.forward(self.block2.forward(out));
        relu(self.bn1.forward(self.block3.forward(out)))
    }

    /// Penultimate feature `h` (global average pool of [`Self::feature_map`], `[N, m]`) and
    /// logits `fc(h)` (`[N, C]`) of a normalised NCHW batch.
    pub fn forward(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let features = global_average_pool(self.feature_map(x));
        let logits = self.fc.forward(features.clone());
        (features, logits)
    }

    /// The linear head in PyTorch layout: weight `[C, m]` (row-major) and bias `[C]`.
    pub fn head_weights(&self) -> (Vec<f32>, Vec<f32>) {
        super::layers::linear_weights(&self.fc)
    }

    /// Logits of `h`: `h W^T + b`.
    pub fn head(&self, features: Tensor<2>) -> Tensor<2> {
        self.fc.forward(features)
    }

    /// Like [`Self::forward`], keeping every stage's output (for parity tests).
    pub fn forward_activations(&self, x: Tensor<4>) -> DenseNetActivations {
        let conv1 = self.conv1.forward(x);
        let block1 = self.block1.forward(conv1.clone());
        let trans1 = self.trans1.forward(block1.clone());
        let block2 = self.block2.forward(trans1.clone());
        let trans2 = self.trans2.forward(block2.clone());
        let block3 = self.block3.forward(trans2.clone());
        let bn_relu = relu(self.bn1.forward(block3.clone()));
        let features = global_average_pool(bn_relu.clone());
        let logits = self.fc.forward(features.clone());
        DenseNetActivations {
            conv1,
            block1,
            trans1,
            block2,
            trans2,
            block3,
            bn_relu,
            features,
            logits,
        }
    }
}

/// Mean over the spatial grid: `[N, C, H, W] -> [N, C]` (PyTorch `avg_pool2d(x, 8)` on the
/// 8x8 map of a 32x32 input).
pub fn global_average_pool(x: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
}

/// The values of a float tensor as f32, row-major (read back from its device).
pub fn tensor_values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("a float tensor converted to f32 reads back as f32")
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    fn small_config(dropout: f64) -> DenseNetConfig {
        DenseNetConfig {
            depth: 10,
            growth_rate: 4,
            reduction: 0.5,
            bottleneck: true,
            num_classes: 3,
            dropout,
        }
    }

    /// On an autodiff device a module in training mode applies dropout (p from the config)
    /// and BatchNorm batch statistics, and gradients reach the first convolution; its
    /// validation snapshot is deterministic.
    #[test]
    fn dropout_is_active_only_while_training() {
        let device = Device::flex().autodiff();
        device.seed(7);
        let model = DenseNet::new(&small_config(0.5), &device).unwrap();
        let x = Tensor::<4>::random([2, 3, 8, 8], Distribution::Default, &device);

        let (_, a) = model.forward(x.clone());
        let (_, b) = model.forward(x.clone());
        assert_ne!(
            a.to_data(),
            b.to_data(),
            "dropout draws differ between passes"
        );

        let grads = a.sum().backward();
        let g = model
            .conv1
            .weight
            .grad(&grads)
            .expect("conv1 gets a gradient");
        assert_eq!(g.dims(), [8, 3, 3, 3]);

        let eval = model.valid();
        let (_, c) = eval.forward(x.clone().inner());
        let (_, d) = eval.forward(x.inner());
        assert_eq!(c.to_data(), d.to_data());
    }

    #[test]
    fn without_dropout_training_passes_agree() {
        let device = Device::flex().autodiff();
        let model = DenseNet::new(&small_config(0.0), &device).unwrap();
        let x = Tensor::<4>::from_data(
            TensorData::new(
                (0..2 * 3 * 8 * 8).map(|v| (v % 7) as f32).collect(),
                [2, 3, 8, 8],
            ),
            &device,
        );
        let (fa, _) = model.forward(x.clone());
        let (fb, _) = model.forward(x);
        assert_eq!(fa.to_data(), fb.to_data());
        assert_eq!(fa.dims(), [2, model.feature_dim()]);
    }
}
