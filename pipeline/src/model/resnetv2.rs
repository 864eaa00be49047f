//! BiT's ResNet-v2 (`google-research/big_transfer` `bit_pytorch/models.py`) as a burn
//! module: pre-activation bottlenecks, weight-standardised convolutions and GroupNorm(32),
//! the stride on the 3x3 convolution. Module names follow bit_pytorch's, with units by
//! index (`body.block1.0` is `unit01`) and the classifier as `head.fc`; checkpoints are
//! BiT's `.npz` files, whose names [`bit_npz_key`] gives.
//!
//! - root: `conv` (7x7 stride 2 padding 3, weight-standardised), zero padding 1, 3x3
//!   stride-2 max-pool without padding (BiT pads with zeros, not -inf);
//! - `body.blockB.unitUU` ([`PreActUnit`]): `a = relu(gn1(x))`, shortcut `downsample(a)`
//!   when the stride or width changes (else `x`), `conv3(relu(gn3(conv2(relu(gn2(conv1(a)))))))`
//!   plus the shortcut;
//! - head: `relu(gn(.))`, global average pool (the feature, `2048 * width` wide), and the
//!   1x1 convolution with bias that BiT uses as its classifier (a linear layer here).
//!
//! A weight-standardised convolution uses `(w - mean) / sqrt(var + 1e-10)` per output
//! channel (mean and biased variance over input channels and kernel positions).

use burn::module::{Module, Param};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::module::conv2d;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Device, Tensor};

use super::densenet::{global_average_pool, tensor_values as values};
use super::engine::{ConvParams, CpuNet, NetBuilder, Padding, Value};
use super::kernels::Activation;
use super::layers::linear_weights;

/// GroupNorm groups of BiT (every norm layer).
pub const BIT_GROUPS: usize = 32;

/// The epsilon of BiT's weight standardisation.
pub const WS_EPS: f64 = 1e-10;

/// The shape of a BiT ResNet-v2: units per block and width factor (`R101x1`: `[3, 4, 23,
/// 3]`, 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResNetV2Spec {
    /// Units in `block1..block4`.
    pub block_units: [usize; 4],
    /// Width factor `wf` (root 64 wf channels, block `b` outputs `256 * 2^b * wf`).
    pub width_factor: usize,
}

impl ResNetV2Spec {
    /// `BiT-S-R50x1` / `BiT-M-R50x1`.
    pub const R50X1: Self = Self {
        block_units: [3, 4, 6, 3],
        width_factor: 1,
    };
    /// `BiT-S-R101x1` / `BiT-M-R101x1` (dice-neurips2022's ImageNet model).
    pub const R101X1: Self = Self {
        block_units: [3, 4, 23, 3],
        width_factor: 1,
    };

    /// Dimension of the feature: `2048 * wf`.
    pub fn feature_dim(&self) -> usize {
        2048 * self.width_factor
    }
}

/// A weight-standardised convolution without bias (BiT `StdConv2d`), `weight` `[out, in,
/// k, k]`.
#[derive(Module, Debug)]
pub struct StdConv2d {
    /// Raw (unstandardised) weight, as in the checkpoint.
    pub weight: Param<Tensor<4>>,
    /// Stride.
    pub stride: usize,
    /// Zeros per side.
    pub padding: usize,
}

impl StdConv2d {
    /// A `k x k` convolution `cin -> cout` (zero weights until loaded).
    pub fn new(cin: usize, cout: usize, k: usize, stride: usize, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::zeros([cout, cin, k, k], device)),
            stride,
            padding: (k - 1) / 2,
        }
    }

    /// The convolution of `x` with the standardised weight.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let w = self.weight.val();
        let [o, i, kh, kw] = w.dims();
        let flat = w.reshape([o, i * kh * kw]);
        let (var, mean) = flat.clone().var_mean_bias(1);
        let w = ((flat - mean) / (var + WS_EPS).sqrt()).reshape([o, i, kh, kw]);
        let options = ConvOptions::new(
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        );
        conv2d(x, w, None, options)
    }

    /// The standardised convolution's parameters for [`CpuNet`]: the weight standardised
    /// once (statistics in f64).
    pub fn cpu_params(&self) -> ConvParams {
        let [cout, cin, k, _] = self.weight.dims();
        let w = values(self.weight.val());
        let weight = w
            .chunks_exact(cin * k * k)
            .flat_map(|row| {
                let n = row.len() as f64;
                let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                let var = row
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>()
                    / n;
                let inv = 1.0 / (var + WS_EPS).sqrt();
                row.iter()
                    .map(move |&v| ((f64::from(v) - mean) * inv) as f32)
            })
            .collect();
        ConvParams {
            weight,
            cout,
            cin,
            kernel: k,
            stride: self.stride,
            dilation: 1,
            padding: Padding::Explicit([self.padding; 4]),
            groups: 1,
            bias: None,
        }
    }
}

fn group_norm(channels: usize, device: &Device) -> GroupNorm {
    GroupNormConfig::new(BIT_GROUPS, channels).init(device)
}

/// A pre-activation bottleneck (BiT `PreActBottleneck`).
#[derive(Module, Debug)]
pub struct PreActUnit {
    /// GroupNorm of the input (`cin`).
    pub gn1: GroupNorm,
    /// 1x1 `cin -> cmid`.
    pub conv1: StdConv2d,
    /// GroupNorm (`cmid`).
    pub gn2: GroupNorm,
    /// 3x3 `cmid -> cmid` with the unit's stride.
    pub conv2: StdConv2d,
    /// GroupNorm (`cmid`).
    pub gn3: GroupNorm,
    /// 1x1 `cmid -> cout`.
    pub conv3: StdConv2d,
    /// 1x1 projection `cin -> cout` with the stride, of the pre-activated input.
    pub downsample: Option<StdConv2d>,
}

impl PreActUnit {
    /// A unit `cin -> cout` with `cmid` bottleneck channels and `stride`.
    pub fn new(cin: usize, cout: usize, cmid: usize, stride: usize, device: &Device) -> Self {
        Self {
            gn1: group_norm(cin, device),
            conv1: StdConv2d::new(cin, cmid, 1, 1, device),
            gn2: group_norm(cmid, device),
            conv2: StdConv2d::new(cmid, cmid, 3, stride, device),
            gn3: group_norm(cmid, device),
            conv3: StdConv2d::new(cmid, cout, 1, 1, device),
            downsample: (stride != 1 || cin != cout)
                .then(|| StdConv2d::new(cin, cout, 1, stride, device)),
        }
    }

    /// The unit's output.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = relu(self.gn1.forward(x.clone()));
        let residual = match &self.downsample {
            Some(d) => d.forward(out.clone()),
            None => x,
        };
        let out = self.conv1.forward(out);
        let out = self.conv2.forward(relu(self.gn2.forward(out)));
        let out = self.conv3.forward(relu(self.gn3.forward(out)));
        out + residual
    }

    /// The unit as [`CpuNet`] operations on `x`.
    fn cpu_ops(&self, b: &mut NetBuilder, x: Value) -> Value {
        let conv = |b: &mut NetBuilder, x, c: &StdConv2d, residual| {
            b.conv_params(x, c.cpu_params(), None, residual, Activation::Identity)
        };
        let a = b.group_norm(x, &self.gn1, Activation::Relu);
        let shortcut = match &self.downsample {
            Some(d) => conv(b, a, d, None),
            None => x,
        };
        let out = conv(b, a, &self.conv1, None);
        let out = b.group_norm(out, &self.gn2, Activation::Relu);
        let out = conv(b, out, &self.conv2, None);
        let out = b.group_norm(out, &self.gn3, Activation::Relu);
        conv(b, out, &self.conv3, Some(shortcut))
    }
}

/// The stem: weight-standardised 7x7 stride-2 convolution, then (in the forward) zero
/// padding 1 and the max-pool.
#[derive(Module, Debug)]
pub struct RootBlock {
    /// 7x7 stride-2 convolution to `64 * wf` channels.
    pub conv: StdConv2d,
    /// 3x3 stride-2 max-pool, no padding.
    pub pool: MaxPool2d,
}

/// The four stages.
#[derive(Module, Debug)]
pub struct Body {
    /// `unit01..`: `64 wf -> 256 wf`, stride 1.
    pub block1: Vec<PreActUnit>,
    /// `256 wf -> 512 wf`, stride 2.
    pub block2: Vec<PreActUnit>,
    /// `512 wf -> 1024 wf`, stride 2.
    pub block3: Vec<PreActUnit>,
    /// `1024 wf -> 2048 wf`, stride 2.
    pub block4: Vec<PreActUnit>,
}

/// The head: final GroupNorm and the classifier (BiT's 1x1 `head.conv`).
#[derive(Module, Debug)]
pub struct Head {
    /// GroupNorm over `2048 wf` channels.
    pub gn: GroupNorm,
    /// Classifier `2048 wf -> C`.
    pub fc: Linear,
}

/// BiT's ResNet-v2 (`root`, `body`, `head`).
#[derive(Module, Debug)]
pub struct ResNetV2 {
    /// Stem.
    pub root: RootBlock,
    /// Stages.
    pub body: Body,
    /// Final norm and classifier.
    pub head: Head,
}

impl ResNetV2 {
    /// A network of shape `spec` with a `num_classes`-way head (zero weights until loaded).
    pub fn new(spec: &ResNetV2Spec, num_classes: usize, device: &Device) -> Self {
        let wf = spec.width_factor;
        let stage = |b: usize, cin: usize| {
            let (cmid, cout) = ((64 << b) * wf, (256 << b) * wf);
            (0..spec.block_units[b])
                .map(|u| {
                    let (cin, stride) = match u {
                        0 => (cin, if b == 0 { 1 } else { 2 }),
                        _ => (cout, 1),
                    };
                    PreActUnit::new(cin, cout, cmid, stride, device)
                })
                .collect()
        };
        Self {
            root: RootBlock {
                conv: StdConv2d::new(3, 64 * wf, 7, 2, device),
                pool: MaxPool2dConfig::new([3, 3])
                    .with_strides([2, 2])
                    .with_padding(PaddingConfig2d::Valid)
                    .init(),
            },
            body: Body {
                block1: stage(0, 64 * wf),
                block2: stage(1, 256 * wf),
                block3: stage(2, 512 * wf),
                block4: stage(3, 1024 * wf),
            },
            head: Head {
                gn: group_norm(spec.feature_dim(), device),
                fc: LinearConfig::new(spec.feature_dim(), num_classes).init(device),
            },
        }
    }

    /// Dimension of the feature.
    pub fn feature_dim(&self) -> usize {
        self.head.fc.weight.dims()[0]
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.head.fc.weight.dims()[1]
    }

    /// `relu(head.gn(body(root(x))))`, before pooling.
    pub fn feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        let out = self.root.conv.forward(x);
        let out = self
            .root
            .pool
            .forward(out.pad((1, 1, 1, 1), PadMode::Constant(0.0)));
        let b = &self.body;
        let out = [&b.block1, &b.block2, &b.block3, &b.block4]
            .into_iter()
            .flatten()
            .fold(out, |x, u| u.forward(x));
        relu(self.head.gn.forward(out))
    }

    /// Feature `[N, 2048 wf]` and logits `[N, C]`.
    pub fn forward(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let features = global_average_pool(self.feature_map(x));
        let logits = self.head.fc.forward(features.clone());
        (features, logits)
    }

    /// The network on the fused CPU engine (weights standardised once; GroupNorms are
    /// operations of their own).
    pub fn cpu_net(&self) -> CpuNet {
        let (mut b, x) = NetBuilder::new(3);
        let x = b.conv_params(
            x,
            self.root.conv.cpu_params(),
            None,
            None,
            Activation::Identity,
        );
        let pool = &self.root.pool;
        let x = b.max_pool(x, pool.kernel_size[0], pool.stride[0], [1; 4], true);
        let body = &self.body;
        let x = [&body.block1, &body.block2, &body.block3, &body.block4]
            .into_iter()
            .flatten()
            .fold(x, |x, u| u.cpu_ops(&mut b, x));
        let x = b.group_norm(x, &self.head.gn, Activation::Relu);
        b.finish(x, &self.head.fc)
    }

    /// The head in PyTorch layout (`head.conv` squeezed to `[C, 2048 wf]`).
    pub fn head_weights(&self) -> (Vec<f32>, Vec<f32>) {
        linear_weights(&self.head.fc)
    }
}

/// The `.npz` key of BiT's weights (`resnet/block1/unit01/a/standardized_conv2d/kernel`)
/// for a key of the module in PyTorch naming (`body.block1.0.conv1.weight`); `None` for a
/// key BiT's file has no name for.
pub fn bit_npz_key(module_key: &str) -> Option<String> {
    let parts: Vec<&str> = module_key.split('.').collect();
    let conv = "standardized_conv2d/kernel";
    let norm = |leaf: &str| match leaf {
        "weight" => Some("gamma"),
        "bias" => Some("beta"),
        _ => None,
    };
    let name = match parts.as_slice() {
        ["root", "conv", "weight"] => format!("root_block/{conv}"),
        ["head", "gn", leaf] => format!("group_norm/{}", norm(leaf)?),
        ["head", "fc", "weight"] => "head/conv2d/kernel".into(),
        ["head", "fc", "bias"] => "head/conv2d/bias".into(),
        ["body", block, unit, layer, leaf] => {
            let unit: usize = unit.parse().ok()?;
            let prefix = format!("{block}/unit{:02}", unit + 1);
            let sub = |n: &str| match n {
                "1" => Some("a"),
                "2" => Some("b"),
                "3" => Some("c"),
                _ => None,
            };
            match (*layer, *leaf) {
                ("downsample", "weight") => format!("{prefix}/a/proj/{conv}"),
                (l, "weight") if l.starts_with("conv") => {
                    format!("{prefix}/{}/{conv}", sub(&l[4..])?)
                }
                (l, leaf) if l.starts_with("gn") => {
                    format!("{prefix}/{}/group_norm/{}", sub(&l[2..])?, norm(leaf)?)
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(format!("resnet/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r101x1_has_bits_units_and_shapes() {
        let device = Device::flex();
        let net = ResNetV2::new(&ResNetV2Spec::R101X1, 7, &device);
        assert_eq!(net.body.block3.len(), 23);
        assert!(net.body.block1[0].downsample.is_some());
        assert!(net.body.block1[1].downsample.is_none());
        assert_eq!(net.body.block2[0].conv2.stride, 2);
        assert_eq!(net.body.block2[0].conv1.stride, 1);
        assert_eq!((net.feature_dim(), net.num_classes()), (2048, 7));
    }

    #[test]
    fn module_keys_map_to_bits_npz_names() {
        let k = |m: &str| bit_npz_key(m).unwrap();
        assert_eq!(
            k("root.conv.weight"),
            "resnet/root_block/standardized_conv2d/kernel"
        );
        assert_eq!(
            k("body.block1.0.conv1.weight"),
            "resnet/block1/unit01/a/standardized_conv2d/kernel"
        );
        assert_eq!(
            k("body.block3.22.gn3.bias"),
            "resnet/block3/unit23/c/group_norm/beta"
        );
        assert_eq!(
            k("body.block2.0.downsample.weight"),
            "resnet/block2/unit01/a/proj/standardized_conv2d/kernel"
        );
        assert_eq!(k("head.gn.weight"), "resnet/group_norm/gamma");
        assert_eq!(k("head.fc.weight"), "resnet/head/conv2d/kernel");
        assert_eq!(bit_npz_key("head.fc.scale"), None);
    }
}
