//! DenseNet hyperparameters, checked once and turned into a channel plan.

use serde::{Deserialize, Serialize};

use crate::error::ModelConfigError;

/// Hyperparameters of a CIFAR DenseNet (`DenseNet3` of the DICE code).
///
/// The papers' CIFAR model is DenseNet-BC-100: depth 100, growth rate 12, reduction 0.5,
/// bottleneck layers, which gives a 342-dimensional penultimate feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseNetConfig {
    /// Network depth `L`; each of the 3 dense blocks has `(L - 4) / 3` layers, halved with
    /// bottleneck layers (each bottleneck layer holds two convolutions).
    pub depth: usize,
    /// Growth rate `k`: channels added by every dense layer.
    pub growth_rate: usize,
    /// Compression factor of the transition layers: `out = floor(in * reduction)`.
    pub reduction: f64,
    /// Bottleneck layers (BN-ReLU-1x1 conv to `4k` channels, then BN-ReLU-3x3 conv) instead
    /// of basic layers (BN-ReLU-3x3 conv).
    pub bottleneck: bool,
    /// Number of classes of the linear head.
    pub num_classes: usize,
    /// Dropout probability after every convolution of the dense and transition layers,
    /// applied only while training (DenseNet3's `dropRate`); 0 disables it.
    #[serde(default)]
    pub dropout: f64,
}

impl DenseNetConfig {
    /// The DICE / Unleashing-Mask CIFAR model: DenseNet-BC-100, growth 12, reduction 0.5.
    pub fn densenet_bc_100(num_classes: usize) -> Self {
        Self {
            depth: 100,
            growth_rate: 12,
            reduction: 0.5,
            bottleneck: true,
            num_classes,
            dropout: 0.0,
        }
    }

    /// Checks every field and computes the channel plan of the network.
    pub fn plan(&self) -> Result<DenseNetPlan, ModelConfigError> {
        let invalid = |field: &'static str, reason: String| ModelConfigError { field, reason };
        if self.growth_rate == 0 {
            return Err(invalid("growth_rate", "must be at least 1".into()));
        }
        if self.num_classes == 0 {
            return Err(invalid("num_classes", "must be at least 1".into()));
        }
        if !(self.reduction.is_finite() && self.reduction > 0.0 && self.reduction <= 1.0) {
            return Err(invalid(
                "reduction",
                format!("must lie in (0, 1], got {}", self.reduction),
            ));
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(invalid(
                "dropout",
                format!("must lie in [0, 1), got {}", self.dropout),
            ));
        }
        // DenseNet3: n = (depth - 4) / 3, halved (integer) for bottleneck layers.
        let per_layer = if self.bottleneck { 6 } else { 3 };
        if self.depth < 4 + per_layer || !(self.depth - 4).is_multiple_of(per_layer) {
            return Err(invalid(
                "depth",
                format!(
                    "must be 4 + {per_layer} * n with n >= 1 for {} layers, got {}",
                    if self.bottleneck {
                        "bottleneck"
                    } else {
                        "basic"
                    },
                    self.depth
                ),
            ));
        }
        let layers_per_block = (self.depth - 4) / per_layer;
        let compress = |c: usize| (c as f64 * self.reduction).floor() as usize;

        let stem_channels = 2 * self.growth_rate;
        let mut blocks = [BlockPlan {
            in_channels: 0,
            out_channels: 0,
        }; 3];
        let mut transitions = [TransitionPlan {
            in_channels: 0,
            out_channels: 0,
        }; 2];
        let mut channels = stem_channels;
        for (b, block) in blocks.iter_mut().enumerate() {
            let out = channels + layers_per_block * self.growth_rate;
            *block = BlockPlan {
                in_channels: channels,
                out_channels: out,
            };
            channels = out;
            if b < 2 {
                let t_out = compress(channels);
                if t_out == 0 {
                    return Err(invalid(
                        "reduction",
                        format!("compresses {channels} channels to 0"),
                    ));
                }
                transitions[b] = TransitionPlan {
                    in_channels: channels,
                    out_channels: t_out,
                };
                channels = t_out;
            }
        }
        Ok(DenseNetPlan {
            config: self.clone(),
            stem_channels,
            layers_per_block,
            blocks,
            transitions,
            feature_dim: channels,
        })
    }
}

/// Channels in and out of one dense block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockPlan {
    /// Channels entering the block.
    pub in_channels: usize,
    /// Channels leaving it: `in + layers * growth_rate`.
    pub out_channels: usize,
}

/// Channels in and out of one transition layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransitionPlan {
    /// Channels entering the transition.
    pub in_channels: usize,
    /// `floor(in * reduction)`.
    pub out_channels: usize,
}

/// A checked [`DenseNetConfig`] with every layer's channel count.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseNetPlan {
    /// The configuration this plan was computed from.
    pub config: DenseNetConfig,
    /// Output channels of the 3x3 stem convolution: `2 * growth_rate`.
    pub stem_channels: usize,
    /// Dense layers per block.
    pub layers_per_block: usize,
    /// The three dense blocks.
    pub blocks: [BlockPlan; 3],
    /// The two transition layers (after block 1 and block 2).
    pub transitions: [TransitionPlan; 2],
    /// Dimension `m` of the penultimate feature (channels of block 3).
    pub feature_dim: usize,
}

impl DenseNetPlan {
    /// Input channels of layer `layer` of a block that starts with `block_in` channels.
    pub fn layer_in_channels(&self, block_in: usize, layer: usize) -> usize {
        block_in + layer * self.config.growth_rate
    }

    /// Channels of the bottleneck (1x1 conv output): `4 * growth_rate`.
    pub fn bottleneck_channels(&self) -> usize {
        4 * self.config.growth_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn densenet_bc_100_has_the_papers_channel_plan() {
        let plan = DenseNetConfig::densenet_bc_100(10).plan().unwrap();
        assert_eq!(plan.layers_per_block, 16);
        assert_eq!(plan.stem_channels, 24);
        assert_eq!(plan.blocks[0].out_channels, 216);
        assert_eq!(plan.transitions[0].out_channels, 108);
        assert_eq!(plan.blocks[1].out_channels, 300);
        assert_eq!(plan.transitions[1].out_channels, 150);
        assert_eq!(plan.blocks[2].out_channels, 342);
        assert_eq!(plan.feature_dim, 342);
    }

    #[test]
    fn depth_must_fit_the_layer_kind() {
        let mut c = DenseNetConfig::densenet_bc_100(10);
        c.depth = 40;
        // 36 is divisible by 6: valid.
        assert_eq!(c.plan().unwrap().layers_per_block, 6);
        c.depth = 41;
        let err = c.plan().unwrap_err();
        assert_eq!(err.field, "depth");
        c.bottleneck = false;
        c.depth = 40;
        assert_eq!(c.plan().unwrap().layers_per_block, 12);
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let mut c = DenseNetConfig::densenet_bc_100(10);
        c.dropout = 1.0;
        assert_eq!(c.plan().unwrap_err().field, "dropout");
        let mut c = DenseNetConfig::densenet_bc_100(0);
        assert_eq!(c.plan().unwrap_err().field, "num_classes");
        c.num_classes = 10;
        c.reduction = 0.0;
        assert_eq!(c.plan().unwrap_err().field, "reduction");
    }
}
