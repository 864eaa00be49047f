//! The backbones as burn modules, and their registry ([`Arch`], [`Backbone`]).
//!
//! - DenseNet-BC (the DICE / Unleashing-Mask CIFAR network) with its checked configuration
//!   and [`CpuDenseNet`], a fused eval-mode CPU engine;
//! - EfficientNet-Lite0 and torchvision MobileNet-v2 ([`MbNet`]);
//! - torchvision ResNets and OpenOOD's CIFAR ResNet-18 ([`ResNet`]);
//! - BiT's ResNet-v2 ([`ResNetV2`]).

mod arch;
mod config;
mod cpu;
mod dense_block;
mod densenet;
mod efficientnet;
mod engine;
pub mod kernels;
mod layers;
mod mobilenet_v2;
mod resnet;
mod resnetv2;

pub use arch::{Arch, Backbone};
pub use config::{BlockPlan, DenseNetConfig, DenseNetPlan, TransitionPlan};
pub use cpu::CpuDenseNet;
pub use dense_block::{DenseBlock, DenseLayer, TransitionBlock};
pub use densenet::{DenseNet, DenseNetActivations, global_average_pool, tensor_values};
pub use efficientnet::{
    EFFICIENTNET_BN_EPS, EfficientNetActivations, LITE_HEAD_CHANNELS, LITE_STEM_CHANNELS,
    LITE0_STAGES, MbConvBlock, MbNet, MbStage,
};
pub use engine::{ConvParams, CpuNet, NetBuilder, Padding, Value};
pub use kernels::Activation;
pub use layers::{linear_weights, relu6};
pub use mobilenet_v2::{
    MOBILENET_V2_BN_EPS, MOBILENET_V2_FEATURE_DIM, MOBILENET_V2_STAGES, MOBILENET_V2_STEM_CHANNELS,
    mobilenet_v2_key_renames,
};
pub use resnet::{BlockKind, Downsample, ResBlock, ResNet, ResNetSpec};
pub use resnetv2::{
    BIT_GROUPS, Body, Head, PreActUnit, ResNetV2, ResNetV2Spec, RootBlock, StdConv2d, WS_EPS,
    bit_npz_key,
};
