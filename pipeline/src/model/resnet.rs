//! ResNets as burn modules: torchvision `resnet18/34/50/101/152` and `wide_resnet50_2`
//! (BasicBlock / Bottleneck, torchvision key names), and OpenOOD's CIFAR `ResNet18_32x32`
//! (3x3 stem, no max-pool, `shortcut` instead of `downsample`).
//!
//! The feature is the flattened global average pool of `layer4` (512-d for BasicBlock
//! nets, 2048-d for Bottleneck nets), the logits `fc(feature)`.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::densenet::global_average_pool;
use super::engine::{CpuNet, NetBuilder, Value};
use super::kernels::Activation;
use super::layers::{ConvSpec, Pad, batch_norm_eps, conv2d, linear_weights};

/// Which residual block a ResNet stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3x3 convolutions (expansion 1).
    Basic,
    /// 1x1 (to `width`), 3x3 (stride), 1x1 (to `4 * planes`) (expansion 4).
    Bottleneck,
}

impl BlockKind {
    /// Output channels per `planes`.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// The shape of a ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResNetSpec {
    /// Block type.
    pub block: BlockKind,
    /// Blocks in `layer1..layer4`.
    pub layers: [usize; 4],
    /// Bottleneck width per 64 planes (torchvision `width_per_group`: 64, 128 for wide).
    pub width_per_group: usize,
    /// ImageNet stem (7x7 stride-2 convolution + 3x3 stride-2 max-pool) or the CIFAR one
    /// (3x3 stride-1 convolution, no pool).
    pub imagenet_stem: bool,
}

impl ResNetSpec {
    /// torchvision `resnet18`.
    pub const RESNET18: Self = Self::torchvision(BlockKind::Basic, [2, 2, 2, 2], 64);
    /// torchvision `resnet34`.
    pub const RESNET34: Self = Self::torchvision(BlockKind::Basic, [3, 4, 6, 3], 64);
    /// torchvision `resnet50`.
    pub const RESNET50: Self = Self::torchvision(BlockKind::Bottleneck, [3, 4, 6, 3], 64);
    /// torchvision `resnet101`.
    pub const RESNET101: Self = Self::torchvision(BlockKind::Bottleneck, [3, 4, 23, 3], 64);
    /// torchvision `resnet152`.
    pub const RESNET152: Self = Self::torchvision(BlockKind::Bottleneck, [3, 8, 36, 3], 64);
    /// torchvision `wide_resnet50_2` (bottlenecks twice as wide).
    pub const WIDE_RESNET50_2: Self = Self::torchvision(BlockKind::Bottleneck, [3, 4, 6, 3], 128);
    /// OpenOOD `ResNet18_32x32`.
    pub const RESNET18_CIFAR: Self = Self {
        block: BlockKind::Basic,
        layers: [2, 2, 2, 2],
        width_per_group: 64,
        imagenet_stem: false,
    };

    const fn torchvision(block: BlockKind, layers: [usize; 4], width_per_group: usize) -> Self {
        Self {
            block,
            layers,
            width_per_group,
            imagenet_stem: true,
        }
    }

    /// Dimension of the feature: `512 * expansion`.
    pub fn feature_dim(&self) -> usize {
        512 * self.block.expansion()
    }
}

/// The projection shortcut of a block: 1x1 convolution with the block's stride + BatchNorm
/// (torchvision `downsample.0` / `.1`, OpenOOD `shortcut.0` / `.1`).
#[derive(Module, Debug)]
pub struct Downsample {
    /// 1x1 convolution.
    pub conv: Conv2d,
    /// BatchNorm.
    pub bn: BatchNorm,
}

/// One residual block: `relu(branch(x) + shortcut(x))` with
/// basic `branch = bn2(conv2(relu(bn1(conv1(x)))))`, bottleneck
/// `branch = bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))))`; the shortcut is the
/// identity or [`Downsample`].
#[derive(Module, Debug)]
pub struct ResBlock {
    /// First convolution (3x3 with the stride; bottleneck: 1x1).
    pub conv1: Conv2d,
    /// Its BatchNorm.
    pub bn1: BatchNorm,
    /// Second convolution (3x3; bottleneck: 3x3 with the stride).
    pub conv2: Conv2d,
    /// Its BatchNorm.
    pub bn2: BatchNorm,
    /// Bottleneck only: the 1x1 expansion to `4 * planes`.
    pub conv3: Option<Conv2d>,
    /// Its BatchNorm.
    pub bn3: Option<BatchNorm>,
    /// Projection shortcut (when the stride or the channel count changes).
    pub downsample: Option<Downsample>,
}

fn bn(c: usize, device: &Device) -> BatchNorm {
    batch_norm_eps(c, 1e-5, device)
}

impl ResBlock {
    /// A block reading `cin` channels with `planes` planes, `stride` and bottleneck `width`.
    pub fn new(
        kind: BlockKind,
        cin: usize,
        planes: usize,
        width: usize,
        stride: usize,
        device: &Device,
    ) -> Self {
        let cout = planes * kind.expansion();
        let downsample = (stride != 1 || cin != cout).then(|| Downsample {
            conv: conv2d(cin, cout, ConvSpec::new(1).stride(stride), device),
            bn: bn(cout, device),
        });
        let c3 = |cin, cout, stride| {
            conv2d(
                cin,
                cout,
                ConvSpec::new(3).stride(stride).pad(Pad::Symmetric(1)),
                device,
            )
        };
        let c1 = |cin, cout| conv2d(cin, cout, ConvSpec::new(1), device);
        match kind {
            BlockKind::Basic => Self {
                conv1: c3(cin, planes, stride),
                bn1: bn(planes, device),
                conv2: c3(planes, planes, 1),
                bn2: bn(planes, device),
                conv3: None,
                bn3: None,
                downsample,
            },
            BlockKind::Bottleneck => Self {
                conv1: c1(cin, width),
                bn1: bn(width, device),
                conv2: c3(width, width, stride),
                bn2: bn(width, device),
                conv3: Some(c1(width, cout)),
                bn3: Some(bn(cout, device)),
                downsample,
            },
        }
    }

    /// The block's output.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = relu(self.bn1.forward(self.conv1.forward(x.clone())));
        let mut out = self.bn2.forward(self.conv2.forward(out));
        if let (Some(conv3), Some(bn3)) = (&self.conv3, &self.bn3) {
            out = bn3.forward(conv3.forward(relu(out)));
        }
        let shortcut = match &self.downsample {
            Some(d) => d.bn.forward(d.conv.forward(x)),
            None => x,
        };
        relu(out + shortcut)
    }

    /// The block as [`CpuNet`] operations on `x`: the last convolution adds the shortcut
    /// before its ReLU.
    fn cpu_ops(&self, b: &mut NetBuilder, x: Value) -> Value {
        let shortcut = match &self.downsample {
            Some(d) => b.conv(x, &d.conv, Some(&d.bn), None, Activation::Identity),
            None => x,
        };
        let out = b.conv(x, &self.conv1, Some(&self.bn1), None, Activation::Relu);
        match (&self.conv3, &self.bn3) {
            (Some(conv3), Some(bn3)) => {
                let out = b.conv(out, &self.conv2, Some(&self.bn2), None, Activation::Relu);
                b.conv(out, conv3, Some(bn3), Some(shortcut), Activation::Relu)
            }
            _ => b.conv(
                out,
                &self.conv2,
                Some(&self.bn2),
                Some(shortcut),
                Activation::Relu,
            ),
        }
    }
}

/// A ResNet: stem `relu(bn1(conv1(x)))` (then `maxpool` for ImageNet nets), `layer1..4`,
/// global average pool, `fc`.
#[derive(Module, Debug)]
pub struct ResNet {
    /// Stem convolution (7x7 stride 2 padding 3; CIFAR: 3x3 stride 1 padding 1).
    pub conv1: Conv2d,
    /// Stem BatchNorm.
    pub bn1: BatchNorm,
    /// 3x3 stride-2 max-pool with padding 1 (ImageNet stem only).
    pub maxpool: Option<MaxPool2d>,
    /// Stage 1 (64 planes, stride 1).
    pub layer1: Vec<ResBlock>,
    /// Stage 2 (128 planes, stride 2).
    pub layer2: Vec<ResBlock>,
    /// Stage 3 (256 planes, stride 2).
    pub layer3: Vec<ResBlock>,
    /// Stage 4 (512 planes, stride 2).
    pub layer4: Vec<ResBlock>,
    /// Linear classifier.
    pub fc: Linear,
}

impl ResNet {
    /// A freshly initialised network of shape `spec` with a `num_classes`-way head.
    pub fn new(spec: &ResNetSpec, num_classes: usize, device: &Device) -> Self {
        let (conv1, maxpool) = if spec.imagenet_stem {
            (
                conv2d(
                    3,
                    64,
                    ConvSpec::new(7).stride(2).pad(Pad::Symmetric(3)),
                    device,
                ),
                Some(
                    MaxPool2dConfig::new([3, 3])
                        .with_strides([2, 2])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .init(),
                ),
            )
        } else {
            (
                conv2d(3, 64, ConvSpec::new(3).pad(Pad::Symmetric(1)), device),
                None,
            )
        };
        let mut cin = 64;
        let mut stage = |i: usize| {
            let planes = 64 << i;
            let width = planes * spec.width_per_group / 64;
            (0..spec.layers[i])
                .map(|b| {
                    let stride = if b == 0 && i > 0 { 2 } else { 1 };
                    let block = ResBlock::new(spec.block, cin, planes, width, stride, device);
                    cin = planes * spec.block.expansion();
                    block
                })
                .collect::<Vec<_>>()
        };
        let (layer1, layer2, layer3, layer4) = (stage(0), stage(1), stage(2), stage(3));
        Self {
            conv1,
            bn1: bn(64, device),
            maxpool,
            layer1,
            layer2,
            layer3,
            layer4,
            fc: LinearConfig::new(spec.feature_dim(), num_classes).init(device),
        }
    }

    /// Dimension of the feature.
    pub fn feature_dim(&self) -> usize {
        self.fc.weight.dims()[0]
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.fc.weight.dims()[1]
    }

    /// The output of `layer4` (before pooling).
    pub fn feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        let mut out = relu(self.bn1.forward(self.conv1.forward(x)));
        if let Some(pool) = &self.maxpool {
            out = pool.forward(out);
        }
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .flatten()
            .fold(out, |x, b| b.forward(x))
    }

    /// Feature `[N, 512 * expansion]` and logits `[N, C]`.
    pub fn forward(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let features = global_average_pool(self.feature_map(x));
        let logits = self.fc.forward(features.clone());
        (features, logits)
    }

    /// The head in PyTorch layout.
    pub fn head_weights(&self) -> (Vec<f32>, Vec<f32>) {
        linear_weights(&self.fc)
    }

    /// The network on the fused CPU engine (BatchNorms folded into the convolutions).
    pub fn cpu_net(&self) -> CpuNet {
        let (mut b, x) = NetBuilder::new(3);
        let mut x = b.conv(x, &self.conv1, Some(&self.bn1), None, Activation::Relu);
        if let Some(pool) = &self.maxpool {
            x = b.max_pool_burn(x, pool);
        }
        let blocks = [&self.layer1, &self.layer2, &self.layer3, &self.layer4];
        let x = blocks
            .into_iter()
            .flatten()
            .fold(x, |x, block| block.cpu_ops(&mut b, x));
        b.finish(x, &self.fc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_of_the_resnets() {
        let device = Device::flex();
        let x = Tensor::<4>::zeros([1, 3, 64, 64], &device);
        let net = ResNet::new(&ResNetSpec::RESNET50, 5, &device);
        assert_eq!(net.layer3.len(), 6);
        assert!(net.layer1[0].downsample.is_some() && net.layer1[1].downsample.is_none());
        assert_eq!(net.feature_map(x.clone()).dims(), [1, 2048, 2, 2]);
        let wide = ResNet::new(&ResNetSpec::WIDE_RESNET50_2, 5, &device);
        assert_eq!(wide.layer1[0].conv1.weight.dims(), [128, 64, 1, 1]);
        let cifar = ResNet::new(&ResNetSpec::RESNET18_CIFAR, 10, &device);
        assert!(cifar.maxpool.is_none() && cifar.layer1[0].downsample.is_none());
        let (f, l) = cifar.forward(Tensor::<4>::zeros([2, 3, 32, 32], &device));
        assert_eq!((f.dims(), l.dims()), ([2, 512], [2, 10]));
    }
}
