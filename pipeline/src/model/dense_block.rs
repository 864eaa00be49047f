//! Dense layers, dense blocks and transition layers of DenseNet-BC (`BottleneckBlock`,
//! `BasicBlock`, `DenseBlock`, `TransitionBlock` of the DICE `densenet.py`).
//!
//! Field names follow the PyTorch modules so that a state dict maps onto them one to one
//! (`block1.layer.3.bn2.running_var`, `trans1.conv1.weight`, ...).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig};
use burn::nn::{BatchNorm, Dropout, DropoutConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

/// BatchNorm as DenseNet3 uses it: eps 1e-5, momentum 0.1 (PyTorch defaults).
pub(crate) fn batch_norm(channels: usize, device: &Device) -> BatchNorm {
    super::layers::batch_norm_eps(channels, 1e-5, device)
}

/// A bias-free `k x k` convolution with stride 1 and "same" padding.
pub(crate) fn conv(in_channels: usize, out_channels: usize, k: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([in_channels, out_channels], [k, k])
        .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
        .with_bias(false)
        .init(device)
}

/// One dense layer. It maps `x` (`c` channels) to `growth_rate` new channels; the block
/// appends them to `x`.
///
/// - bottleneck: `conv2(relu(bn2(conv1(relu(bn1(x))))))`, `conv1` 1x1 to `4 * growth_rate`
///   channels, `conv2` 3x3 to `growth_rate` channels;
/// - basic: `conv1(relu(bn1(x)))`, `conv1` 3x3 to `growth_rate` channels.
///
/// Dropout (training only) follows every convolution.
#[derive(Module, Debug)]
pub struct DenseLayer {
    /// BatchNorm over the `c` input channels.
    pub bn1: BatchNorm,
    /// 1x1 (bottleneck) or 3x3 (basic) convolution.
    pub conv1: Conv2d,
    /// BatchNorm over the bottleneck channels (bottleneck layers only).
    pub bn2: Option<BatchNorm>,
    /// 3x3 convolution to `growth_rate` channels (bottleneck layers only).
    pub conv2: Option<Conv2d>,
    /// Dropout after each convolution (active only while training on an autodiff device).
    pub dropout: Dropout,
}

impl DenseLayer {
    /// A layer reading `in_channels` channels and producing `growth_rate` new ones.
    pub fn new(
        in_channels: usize,
        growth_rate: usize,
        bottleneck: bool,
        dropout: f64,
        device: &Device,
    ) -> Self {
        let dropout = DropoutConfig::new(dropout).init();
        if bottleneck {
            let inter = 4 * growth_rate;
            Self {
                bn1: batch_norm(in_channels, device),
                conv1: conv(in_channels, inter, 1, device),
                bn2: Some(batch_norm(inter, device)),
                conv2: Some(conv(inter, growth_rate, 3, device)),
                dropout,
            }
        } else {
            Self {
                bn1: batch_norm(in_channels, device),
                conv1: conv(in_channels, growth_rate, 3, device),
                bn2: None,
                conv2: None,
                dropout,
            }
        }
    }

    /// The `growth_rate` new channels computed from `x`.
    pub fn new_features(&self, x: Tensor<4>) -> Tensor<4> {
        let out = self.conv1.forward(relu(self.bn1.forward(x)));
        let out = self.dropout.forward(out);
        match (&self.bn2, &self.conv2) {
            (Some(bn2), Some(conv2)) => {
                let out = conv2.forward(relu(bn2.forward(out)));
                self.dropout.forward(out)
            }
            _ => out,
        }
    }

    /// `cat([x, new_features(x)], channels)`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let new = self.new_features(x.clone());
        Tensor::cat(vec![x, new], 1)
    }
}

/// A dense block: its layers applied in turn, each appending `growth_rate` channels.
#[derive(Module, Debug)]
pub struct DenseBlock {
    /// The layers (PyTorch: `blockN.layer.<i>`).
    pub layer: Vec<DenseLayer>,
}

impl DenseBlock {
    /// `layers` dense layers starting from `in_channels` channels.
    pub fn new(
        in_channels: usize,
        layers: usize,
        growth_rate: usize,
        bottleneck: bool,
        dropout: f64,
        device: &Device,
    ) -> Self {
        let layer = (0..layers)
            .map(|i| {
                DenseLayer::new(
                    in_channels + i * growth_rate,
                    growth_rate,
                    bottleneck,
                    dropout,
                    device,
                )
            })
            .collect();
        Self { layer }
    }

    /// The block output: `x` followed by every layer's new channels (layer `i` reads the
    /// first `c_in + i * k` channels).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.layer.iter().fold(x, |x, layer| layer.forward(x))
    }
}

/// A transition layer: `avg_pool2d(conv1(relu(bn1(x))), 2)` with a 1x1 convolution that
/// compresses the channels (dropout after the convolution while training).
#[derive(Module, Debug)]
pub struct TransitionBlock {
    /// BatchNorm over the input channels.
    pub bn1: BatchNorm,
    /// 1x1 convolution to `floor(c * reduction)` channels.
    pub conv1: Conv2d,
    /// Dropout after the convolution (training only).
    pub dropout: Dropout,
    /// 2x2 average pooling with stride 2.
    pub pool: AvgPool2d,
}

impl TransitionBlock {
    /// A transition from `in_channels` to `out_channels`.
    pub fn new(in_channels: usize, out_channels: usize, dropout: f64, device: &Device) -> Self {
        Self {
            bn1: batch_norm(in_channels, device),
            conv1: conv(in_channels, out_channels, 1, device),
            dropout: DropoutConfig::new(dropout).init(),
            pool: AvgPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
        }
    }

    /// `avg_pool2d(dropout(conv1(relu(bn1(x)))), 2)`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = self.conv1.forward(relu(self.bn1.forward(x)));
        self.pool.forward(self.dropout.forward(out))
    }
}
