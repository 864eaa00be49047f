//! Building blocks shared by the backbones: BatchNorm and convolution ([`ConvSpec`]) constructors with
//! PyTorch's conventions, ReLU6, and the linear head in PyTorch layout.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use super::densenet::tensor_values;

/// A `BatchNorm2d` over `channels` channels with epsilon `eps` (PyTorch's default 1e-5;
/// EfficientNet 1e-3) and momentum 0.1 (only used while training).
pub(crate) fn batch_norm_eps(channels: usize, eps: f64, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels)
        .with_epsilon(eps)
        .with_momentum(0.1)
        .init(device)
}

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pad {
    /// `p` zeros on every side (PyTorch `padding=p`).
    Symmetric(usize),
    /// TensorFlow "SAME": `total = max((ceil(i / s) - 1) * s + k - i, 0)` zeros per axis,
    /// `total / 2` before and the rest after (bottom/right), from the input's size.
    TfSame,
}

/// The shape of a convolution apart from its channels (torch.nn.Conv2d's arguments):
/// `kernel x kernel`, `stride`, `padding`, `dilation`, `groups` (`groups = cin = cout`:
/// depthwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvSpec {
    /// Kernel size (square).
    pub kernel: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Padding.
    pub padding: Pad,
    /// Dilation (both axes).
    pub dilation: usize,
    /// Groups.
    pub groups: usize,
}

impl ConvSpec {
    /// A `kernel x kernel` convolution with stride 1, no padding, dilation 1, one group.
    pub const fn new(kernel: usize) -> Self {
        Self {
            kernel,
            stride: 1,
            padding: Pad::Symmetric(0),
            dilation: 1,
            groups: 1,
        }
    }

    /// With stride `stride`.
    pub const fn stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }

    /// With padding `padding`.
    pub const fn pad(self, padding: Pad) -> Self {
        Self { padding, ..self }
    }

    /// With `groups` groups.
    pub const fn groups(self, groups: usize) -> Self {
        Self { groups, ..self }
    }
}

/// A convolution `cin -> cout` of shape `spec`, without bias (every backbone convolution
/// feeds a norm layer).
pub(crate) fn conv2d(cin: usize, cout: usize, spec: ConvSpec, device: &Device) -> Conv2d {
    let padding = match spec.padding {
        Pad::Symmetric(p) => PaddingConfig2d::Explicit(p, p, p, p),
        // burn's `Same` computes exactly TF's asymmetric padding from the input size.
        Pad::TfSame => PaddingConfig2d::Same,
    };
    Conv2dConfig::new([cin, cout], [spec.kernel, spec.kernel])
        .with_stride([spec.stride, spec.stride])
        .with_padding(padding)
        .with_dilation([spec.dilation, spec.dilation])
        .with_groups(spec.groups)
        .with_bias(false)
        .init(device)
}

/// `min(max(x, 0), 6)` (PyTorch `ReLU6`).
pub fn relu6<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clamp(0.0, 6.0)
}

/// A linear layer's weight `[out, in]` (PyTorch layout, row-major; burn stores `[in, out]`)
/// and bias `[out]` (zeros without one).
pub fn linear_weights(fc: &Linear) -> (Vec<f32>, Vec<f32>) {
    let w = tensor_values(fc.weight.val());
    let [m, classes] = fc.weight.dims();
    let weight = (0..classes)
        .flat_map(|c| (0..m).map(move |i| (c, i)))
        .map(|(c, i)| w[i * classes + c])
        .collect();
    let bias = fc
        .bias
        .as_ref()
        .map_or_else(|| vec![0.0; classes], |b| tensor_values(b.val()));
    (weight, bias)
}
