//! The architecture registry: `[model] arch = "<name>"` to a network, and [`Backbone`], any
//! of them loaded, mapping a normalised batch to (feature, logits).

use burn::tensor::{Device, Tensor};

use super::densenet::DenseNet;
use super::efficientnet::MbNet;
use super::engine::CpuNet;
use super::mobilenet_v2::mobilenet_v2_key_renames;
use super::resnet::{ResNet, ResNetSpec};
use super::resnetv2::{ResNetV2, ResNetV2Spec};
use crate::error::ModelConfigError;

/// A network family and variant, by its config name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// DICE's CIFAR DenseNet-BC (`densenet-bc`; depth, growth rate, reduction in the config).
    DenseNetBc,
    /// EfficientNet-Lite0 (`efficientnet-lite0`), lukemelas key names.
    EfficientNetLite0,
    /// torchvision `mobilenet_v2` (`mobilenet_v2`).
    MobileNetV2,
    /// A torchvision ResNet (`resnet18`, ..., `wide_resnet50_2`) or OpenOOD's CIFAR
    /// `ResNet18_32x32` (`resnet18-cifar`).
    ResNet(ResNetSpec),
    /// BiT's ResNet-v2 (`resnetv2-50x1`, `resnetv2-101x1`), `bit_pytorch` names, `.npz`
    /// weights.
    ResNetV2(ResNetV2Spec),
}

impl Arch {
    /// Every architecture with its config name, in the order error messages list them.
    pub const ALL: [(&'static str, Arch); 12] = [
        ("densenet-bc", Arch::DenseNetBc),
        ("efficientnet-lite0", Arch::EfficientNetLite0),
        ("mobilenet_v2", Arch::MobileNetV2),
        ("resnet18", Arch::ResNet(ResNetSpec::RESNET18)),
        ("resnet34", Arch::ResNet(ResNetSpec::RESNET34)),
        ("resnet50", Arch::ResNet(ResNetSpec::RESNET50)),
        ("resnet101", Arch::ResNet(ResNetSpec::RESNET101)),
        ("resnet152", Arch::ResNet(ResNetSpec::RESNET152)),
        ("wide_resnet50_2", Arch::ResNet(ResNetSpec::WIDE_RESNET50_2)),
        ("resnet18-cifar", Arch::ResNet(ResNetSpec::RESNET18_CIFAR)),
        ("resnetv2-50x1", Arch::ResNetV2(ResNetV2Spec::R50X1)),
        ("resnetv2-101x1", Arch::ResNetV2(ResNetV2Spec::R101X1)),
    ];

    /// Renames between the checkpoint's keys and the burn module's where they differ, as
    /// `(file fragment, module fragment)` substring pairs applied in order (torchvision's
    /// `downsample.0` Sequential index is the module's `downsample.conv`; MobileNet-v2's
    /// `features.N` see [`mobilenet_v2_key_renames`]).
    pub fn key_renames(self) -> Vec<(String, String)> {
        let pairs = |p: &[(&str, &str)]| {
            p.iter()
                .map(|(f, m)| ((*f).to_owned(), (*m).to_owned()))
                .collect()
        };
        match self {
            Arch::ResNet(spec) if !spec.imagenet_stem => pairs(&[
                ("shortcut.0.", "downsample.conv."),
                ("shortcut.1.", "downsample.bn."),
            ]),
            Arch::ResNet(_) => pairs(&[
                ("downsample.0.", "downsample.conv."),
                ("downsample.1.", "downsample.bn."),
            ]),
            Arch::MobileNetV2 => mobilenet_v2_key_renames(),
            Arch::DenseNetBc | Arch::EfficientNetLite0 | Arch::ResNetV2(_) => Vec::new(),
        }
    }

    /// The config name (`efficientnet-lite0`); for a BiT shape not in [`Self::ALL`] (a
    /// reduced test network) `resnetv2-<3 * units + 2>x<width>`.
    pub fn name(self) -> String {
        if let Some((n, _)) = Self::ALL.iter().find(|(_, a)| *a == self) {
            return (*n).to_owned();
        }
        match self {
            Arch::ResNetV2(s) => format!(
                "resnetv2-{}x{}",
                3 * s.block_units.iter().sum::<usize>() + 2,
                s.width_factor
            ),
            _ => unreachable!("every other arch is listed in Arch::ALL"),
        }
    }

    /// The comma-separated list of known names.
    pub fn known_names() -> String {
        Self::ALL
            .iter()
            .map(|(n, _)| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A freshly initialised network of this architecture with a `num_classes`-way head;
    /// DenseNet-BC needs its hyperparameters and is built by [`DenseNet::new`] instead.
    pub fn init(self, num_classes: usize, device: &Device) -> Result<Backbone, ModelConfigError> {
        if num_classes == 0 {
            return Err(ModelConfigError {
                field: "num_classes",
                reason: "must be at least 1".into(),
            });
        }
        match self {
            Arch::DenseNetBc => Err(ModelConfigError {
                field: "arch",
                reason: "densenet-bc is built from its depth, growth rate and reduction".into(),
            }),
            Arch::EfficientNetLite0 => Ok(Backbone::EfficientNetLite(Box::new(MbNet::lite0(
                num_classes,
                device,
            )))),
            Arch::MobileNetV2 => Ok(Backbone::MobileNetV2(Box::new(MbNet::mobilenet_v2(
                num_classes,
                device,
            )))),
            Arch::ResNet(spec) => Ok(Backbone::ResNet(Box::new(ResNet::new(
                &spec,
                num_classes,
                device,
            )))),
            Arch::ResNetV2(spec) => Ok(Backbone::ResNetV2(Box::new(ResNetV2::new(
                &spec,
                num_classes,
                device,
            )))),
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = ModelConfigError;

    /// Parses a config name; an unknown one is an error listing the known ones.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
            .ok_or_else(|| ModelConfigError {
                field: "arch",
                reason: format!(
                    "{name:?} is not a known architecture (known: {})",
                    Arch::known_names()
                ),
            })
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// A loaded network of any registered architecture: a normalised NCHW batch in,
/// (penultimate feature = the input of the final linear layer, logits) out. Runs on any
/// burn device.
#[derive(Debug)]
pub enum Backbone {
    /// DenseNet-BC.
    DenseNet(Box<DenseNet>),
    /// EfficientNet-Lite.
    EfficientNetLite(Box<MbNet>),
    /// torchvision MobileNet-v2 (the same network in torchvision's names).
    MobileNetV2(Box<MbNet>),
    /// A ResNet.
    ResNet(Box<ResNet>),
    /// A BiT ResNet-v2.
    ResNetV2(Box<ResNetV2>),
}

impl Backbone {
    /// Feature `[N, m]` and logits `[N, C]` of a normalised batch `[N, 3, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        match self {
            Backbone::DenseNet(m) => m.forward(x),
            Backbone::EfficientNetLite(m) | Backbone::MobileNetV2(m) => m.forward(x),
            Backbone::ResNet(m) => m.forward(x),
            Backbone::ResNetV2(m) => m.forward(x),
        }
    }

    /// Dimension `m` of the feature.
    pub fn feature_dim(&self) -> usize {
        match self {
            Backbone::DenseNet(m) => m.feature_dim(),
            Backbone::EfficientNetLite(m) | Backbone::MobileNetV2(m) => m.feature_dim(),
            Backbone::ResNet(m) => m.feature_dim(),
            Backbone::ResNetV2(m) => m.feature_dim(),
        }
    }

    /// Number of classes `C`.
    pub fn num_classes(&self) -> usize {
        match self {
            Backbone::DenseNet(m) => m.num_classes(),
            Backbone::EfficientNetLite(m) | Backbone::MobileNetV2(m) => m.num_classes(),
            Backbone::ResNet(m) => m.num_classes(),
            Backbone::ResNetV2(m) => m.num_classes(),
        }
    }

    /// The network on the fused CPU engine [`CpuNet`], where its family maps onto it
    /// (ResNets, MobileNet-v2, EfficientNet-Lite, BiT; DenseNet-BC has
    /// [`super::CpuDenseNet`]).
    pub fn cpu_net(&self) -> Option<CpuNet> {
        match self {
            Backbone::EfficientNetLite(m) | Backbone::MobileNetV2(m) => Some(m.cpu_net()),
            Backbone::ResNet(m) => Some(m.cpu_net()),
            Backbone::ResNetV2(m) => Some(m.cpu_net()),
            Backbone::DenseNet(_) => None,
        }
    }

    /// The final linear layer in PyTorch layout: weight `[C, m]` (row-major), bias `[C]`.
    pub fn head_weights(&self) -> (Vec<f32>, Vec<f32>) {
        match self {
            Backbone::DenseNet(m) => m.head_weights(),
            Backbone::EfficientNetLite(m) | Backbone::MobileNetV2(m) => m.head_weights(),
            Backbone::ResNet(m) => m.head_weights(),
            Backbone::ResNetV2(m) => m.head_weights(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known_ones() {
        for (name, arch) in Arch::ALL {
            assert_eq!(name.parse::<Arch>().unwrap(), arch);
            assert_eq!(arch.to_string(), name);
        }
        let e = "resnet9000".parse::<Arch>().unwrap_err();
        assert_eq!(e.field, "arch");
        assert!(
            e.reason
                .contains("\"resnet9000\" is not a known architecture (known: \"densenet-bc\", \"efficientnet-lite0\""),
            "{e}"
        );
    }

    #[test]
    fn renames_differ_for_torchvision_and_openood_resnets() {
        let tv: Arch = "resnet50".parse().unwrap();
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            tv.key_renames()[0],
            pair("downsample.0.", "downsample.conv.")
        );
        let cifar: Arch = "resnet18-cifar".parse().unwrap();
        assert_eq!(
            cifar.key_renames()[1],
            pair("shortcut.1.", "downsample.bn.")
        );
        assert!(Arch::EfficientNetLite0.key_renames().is_empty());
    }

    #[test]
    fn init_checks_the_class_count() {
        let device = Device::flex();
        let e = Arch::EfficientNetLite0.init(0, &device).unwrap_err();
        assert_eq!(e.field, "num_classes");
        let net = Arch::EfficientNetLite0.init(7, &device).unwrap();
        assert_eq!((net.feature_dim(), net.num_classes()), (1280, 7));
    }
}
