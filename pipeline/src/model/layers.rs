//! Building blocks shared by the backbones: BatchNorm and convolution constructors with
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

/// A `k x k` convolution `cin -> cout` with `stride`, padding `pad`, `groups` groups
/// (`groups = cin = cout`: depthwise) and an optional bias.
#[allow(clippy::too_many_arguments)] // torch.nn.Conv2d's own argument list; a ConvSpec struct is the follow-up
pub(crate) fn conv2d(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: Pad,
    groups: usize,
    bias: bool,
    device: &Device,
) -> Conv2d {
    let padding = match pad {
        Pad::Symmetric(p) => PaddingConfig2d::Explicit(p, p, p, p),
        // burn's `Same` computes exactly TF's asymmetric padding from the input size.
        Pad::TfSame => PaddingConfig2d::Same,
    };
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(padding)
        .with_groups(groups)
        .with_bias(bias)
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
