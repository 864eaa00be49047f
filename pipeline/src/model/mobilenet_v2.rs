//! torchvision `mobilenet_v2` (width 1.0) as a burn module.
//!
//! torchvision's `InvertedResidual` is lukemelas' MBConv without squeeze-excitation (1x1
//! expansion + BN + ReLU6 when `t > 1`, 3x3 depthwise + BN + ReLU6, 1x1 linear projection +
//! BN, the input added when the stride is 1 and the channel count is kept), so the network
//! is an [`MbNet`] with PyTorch padding (`(k - 1) / 2` per side) and BatchNorm eps 1e-5;
//! only the key names differ ([`mobilenet_v2_key_renames`]). The feature is the global
//! average pool of `features` (its last layer: 1x1 convolution to 1280 + BN + ReLU6), the
//! logits `classifier.1(feature)` (the dropout `classifier.0` is inactive at eval).

use burn::tensor::Device;

use super::efficientnet::{MbNet, MbNetSpec, MbPadding, MbStage};

/// torchvision's `inverted_residual_setting` `(t, c, n, s)` = `[1, 16, 1, 1], [6, 24, 2, 2],
/// [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]` as MBConv
/// stages (depthwise kernel 3 throughout).
pub const MOBILENET_V2_STAGES: [MbStage; 7] = [
    stage(1, 1, 1, 32, 16),
    stage(2, 2, 6, 16, 24),
    stage(3, 2, 6, 24, 32),
    stage(4, 2, 6, 32, 64),
    stage(3, 1, 6, 64, 96),
    stage(3, 2, 6, 96, 160),
    stage(1, 1, 6, 160, 320),
];

const fn stage(
    repeats: usize,
    stride: usize,
    expand: usize,
    in_channels: usize,
    out_channels: usize,
) -> MbStage {
    MbStage {
        repeats,
        kernel: 3,
        stride,
        expand,
        in_channels,
        out_channels,
    }
}

/// BatchNorm epsilon of torchvision's MobileNet-v2 (PyTorch's default).
pub const MOBILENET_V2_BN_EPS: f64 = 1e-5;

/// Stem output channels (`features.0`).
pub const MOBILENET_V2_STEM_CHANNELS: usize = 32;

/// Output channels of the last layer of `features` (`last_channel`): the feature dimension.
pub const MOBILENET_V2_FEATURE_DIM: usize = 1280;

/// MobileNet-v2 as an [`MbNet`].
pub(crate) const MOBILENET_V2: MbNetSpec = MbNetSpec {
    stages: &MOBILENET_V2_STAGES,
    stem_channels: MOBILENET_V2_STEM_CHANNELS,
    head_channels: MOBILENET_V2_FEATURE_DIM,
    padding: MbPadding::Symmetric,
    bn_eps: MOBILENET_V2_BN_EPS,
};

impl MbNet {
    /// A freshly initialised torchvision `mobilenet_v2` with a `num_classes`-way head.
    pub fn mobilenet_v2(num_classes: usize, device: &Device) -> Self {
        Self::from_spec(&MOBILENET_V2, num_classes, device)
    }
}

/// torchvision's key names to [`MbNet`]'s, as `(file fragment, module fragment)` pairs
/// applied in order (block renames first: they carry the full prefix, so the stem's and
/// head's `_bn0.` / `_bn1.` never touch a block's key).
///
/// `features.0.{0,1}` is the stem (`_conv_stem`, `_bn0`), `features.{i+1}` block `i`:
/// `conv.0.{0,1}` the expansion (`_expand_conv`, `_bn0`; the depthwise convolution when
/// `t = 1`), `conv.1.{0,1}` the depthwise convolution, `conv.2` / `conv.3` the projection
/// and its BatchNorm (`conv.1` / `conv.2` when `t = 1`); `features.18.{0,1}` the head
/// (`_conv_head`, `_bn1`), `classifier.1` the linear layer (`_fc`).
pub fn mobilenet_v2_key_renames() -> Vec<(String, String)> {
    let mut renames = Vec::new();
    let mut block = 0;
    for s in MOBILENET_V2_STAGES {
        for _ in 0..s.repeats {
            let file = format!("features.{}.conv.", block + 1);
            let module = format!("_blocks.{block}.");
            let parts: &[(&str, &str)] = if s.expand == 1 {
                &[
                    ("0.0.", "_depthwise_conv."),
                    ("0.1.", "_bn1."),
                    ("1.", "_project_conv."),
                    ("2.", "_bn2."),
                ]
            } else {
                &[
                    ("0.0.", "_expand_conv."),
                    ("0.1.", "_bn0."),
                    ("1.0.", "_depthwise_conv."),
                    ("1.1.", "_bn1."),
                    ("2.", "_project_conv."),
                    ("3.", "_bn2."),
                ]
            };
            renames.extend(
                parts
                    .iter()
                    .map(|(f, m)| (format!("{file}{f}"), format!("{module}{m}"))),
            );
            block += 1;
        }
    }
    let head = block + 1;
    renames.extend(
        [
            ("features.0.0.".to_owned(), "_conv_stem."),
            ("features.0.1.".to_owned(), "_bn0."),
            (format!("features.{head}.0."), "_conv_head."),
            (format!("features.{head}.1."), "_bn1."),
            ("classifier.1.".to_owned(), "_fc."),
        ]
        .map(|(f, m)| (f, m.to_owned())),
    );
    renames
}

#[cfg(test)]
mod tests {
    use burn::tensor::Tensor;

    use super::*;

    #[test]
    fn mobilenet_v2_has_17_blocks_and_torchvisions_shapes() {
        let device = Device::flex();
        let net = MbNet::mobilenet_v2(10, &device);
        assert_eq!(net._blocks.len(), 17);
        assert!(net._blocks[0]._expand_conv.is_none());
        assert!(net._blocks[2].residual && !net._blocks[1].residual);
        assert_eq!(net._blocks[1]._depthwise_conv.weight.dims(), [96, 1, 3, 3]);
        let acts = net.forward_activations(Tensor::<4>::zeros([1, 3, 64, 64], &device));
        assert_eq!(acts.stem.dims(), [1, 32, 32, 32]);
        assert_eq!(acts.blocks[16].dims(), [1, 320, 2, 2]);
        assert_eq!(acts.head.dims(), [1, 1280, 2, 2]);
        assert_eq!((net.feature_dim(), net.num_classes()), (1280, 10));
    }

    #[test]
    fn renames_name_the_first_block_stem_head_and_classifier() {
        let renames = mobilenet_v2_key_renames();
        // 1 block of 4 tensors-owners with t = 1, 16 of 6, stem, head, classifier.
        assert_eq!(renames.len(), 4 + 16 * 6 + 5);
        let find = |f: &str| {
            renames
                .iter()
                .find(|(a, _)| a == f)
                .map(|(_, m)| m.as_str())
        };
        assert_eq!(find("features.1.conv.1."), Some("_blocks.0._project_conv."));
        assert_eq!(find("features.17.conv.3."), Some("_blocks.16._bn2."));
        assert_eq!(find("features.18.1."), Some("_bn1."));
    }
}
