//! A CPU inference engine for an eval-mode [`DenseNet`]: the same network, computed with
//! fused kernels instead of burn tensor operations.
//!
//! What it does differently from [`DenseNet::forward`] (all exact rewrites of the eval-mode
//! network; only float summation order changes):
//! - BatchNorm (running statistics) and ReLU are folded into one per-channel affine map
//!   applied in a single pass ([`AffineRelu`]);
//! - each dense block writes into one buffer holding the block's output channels, layer
//!   `i` appending its `growth_rate` channels in place (no concatenation copies);
//! - transition layers average-pool before their 1x1 convolution (both are linear, so
//!   `pool(conv(t)) = conv(pool(t))`), a quarter of the multiply-adds;
//! - convolutions are single matrix products on a channel-major (CNHW) layout;
//! - a batch is split across threads, each with its own scratch memory.
//!
//! Dropout does not exist here: the engine is inference only.

use std::sync::Mutex;

use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;

use super::config::DenseNetPlan;
use super::densenet::{DenseNet, tensor_values as values};
use super::engine::{GroupEngine, forward_batch};
use super::kernels::{AffineRelu, im2col_3x3_rows, matmul};

/// Target size (floats) of the unfolded 3x3 input of one band of image rows: 512 KiB, so
/// the band stays in the L2 cache between unfolding and the matrix product.
const COLUMN_BAND_FLOATS: usize = 128 * 1024;

/// Image rows per band of a 3x3 convolution over `channels` channels of width `w`.
fn band_rows(channels: usize, h: usize, w: usize) -> usize {
    (COLUMN_BAND_FLOATS / (channels * 9 * w)).clamp(1, h)
}

/// `out (+)= conv3x3(input)` for `g` images: `input` is `[cin][g * h * w]`, `weight`
/// `[cout][cin * 9]`, output channel `o` is written at `out[o * out_rs..]`. The input is
/// unfolded band by band of image rows into `columns`.
#[allow(clippy::too_many_arguments)]
fn conv_3x3(
    weight: &[f32],
    cout: usize,
    input: &[f32],
    cin: usize,
    g: usize,
    h: usize,
    w: usize,
    columns: &mut [f32],
    out: &mut [f32],
    out_rs: usize,
) {
    let hw = h * w;
    let n = g * hw;
    let band = band_rows(cin, h, w);
    for img in 0..g {
        for y0 in (0..h).step_by(band) {
            let rows = y0..(y0 + band).min(h);
            let len = rows.len() * w;
            im2col_3x3_rows(&input[img * hw..], n, cin, h, w, rows, columns, len);
            matmul(
                cout,
                len,
                cin * 9,
                weight,
                columns,
                len,
                &mut out[img * hw + y0 * w..],
                out_rs,
                false,
            );
        }
    }
}

/// Target size (floats) of one spatial tile of a normalised 1x1 convolution input: 256 KiB.
const TILE_FLOATS: usize = 64 * 1024;

/// Columns (pixels) per tile of a 1x1 convolution over `channels` channels.
fn tile_columns(channels: usize, n: usize) -> usize {
    (TILE_FLOATS / channels).max(16).min(n)
}

/// `out = conv1x1(relu(bn(src)))` over `n` pixels: `src` is `[cin][n]` (rows `src_rs`
/// apart), `weight` `[cout][cin]`, output channel `o` at `out[o * out_rs..]`. The
/// normalised input is produced tile by tile of pixels into `tile` (cache resident).
#[allow(clippy::too_many_arguments)]
fn conv_1x1_after(
    bn: &AffineRelu,
    weight: &[f32],
    cout: usize,
    src: &[f32],
    src_rs: usize,
    n: usize,
    tile: &mut [f32],
    out: &mut [f32],
    out_rs: usize,
) {
    let cin = bn.channels();
    let step = tile_columns(cin, n);
    for start in (0..n).step_by(step) {
        let len = step.min(n - start);
        bn.apply(&src[start..], src_rs, len, tile);
        matmul(
            cout,
            len,
            cin,
            weight,
            tile,
            len,
            &mut out[start..],
            out_rs,
            false,
        );
    }
}

/// One dense layer with BatchNorms folded.
#[derive(Debug, Clone)]
enum Layer {
    /// `conv2(relu(bn2(conv1(relu(bn1(x))))))`: `w1` is `[inter][c]`, `w2` `[k][inter * 9]`.
    Bottleneck {
        bn1: AffineRelu,
        w1: Vec<f32>,
        bn2: AffineRelu,
        w2: Vec<f32>,
    },
    /// `conv1(relu(bn1(x)))`: `w` is `[k][c * 9]`.
    Basic { bn1: AffineRelu, w: Vec<f32> },
}

/// A transition: `relu(bn(x))`, 2x2 average pool, 1x1 convolution `w` (`[out][in]`).
#[derive(Debug, Clone)]
struct Transition {
    bn: AffineRelu,
    w: Vec<f32>,
    out_channels: usize,
}

/// Scratch memory of one thread for groups of up to `g` images of `h x w`.
#[derive(Debug, Default)]
pub(crate) struct Workspace {
    g: usize,
    h: usize,
    w: usize,
    input: Vec<f32>,
    blocks: [Vec<f32>; 3],
    normed: Vec<f32>,
    bottleneck: Vec<f32>,
    bottleneck_normed: Vec<f32>,
    columns: Vec<f32>,
    pooled: Vec<f32>,
}

/// DenseNet-BC inference on the CPU from the weights of a [`DenseNet`] (see the module
/// documentation for the rewrites it applies).
#[derive(Debug)]
pub struct CpuDenseNet {
    plan: DenseNetPlan,
    /// `[stem][3 * 9]`.
    stem: Vec<f32>,
    blocks: [Vec<Layer>; 3],
    transitions: [Transition; 2],
    final_bn: AffineRelu,
    /// `[C][m]` (PyTorch layout).
    fc_weight: Vec<f32>,
    fc_bias: Vec<f32>,
    workspaces: Mutex<Vec<Workspace>>,
}

fn fold(bn: &BatchNorm) -> AffineRelu {
    AffineRelu::from_batch_norm(
        &values(bn.gamma.val()),
        &values(bn.beta.val()),
        &values(bn.running_mean.value()),
        &values(bn.running_var.value()),
        bn.epsilon,
    )
}

fn conv_weight(conv: &Conv2d) -> Vec<f32> {
    values(conv.weight.val())
}

impl CpuDenseNet {
    /// Copies the weights of `model` (built for `plan`) and folds its BatchNorms.
    pub fn from_model(model: &DenseNet, plan: &DenseNetPlan) -> Self {
        let block_layers = |block: &super::DenseBlock| -> Vec<Layer> {
            block
                .layer
                .iter()
                .map(|l| match (&l.bn2, &l.conv2) {
                    (Some(bn2), Some(conv2)) => Layer::Bottleneck {
                        bn1: fold(&l.bn1),
                        w1: conv_weight(&l.conv1),
                        bn2: fold(bn2),
                        w2: conv_weight(conv2),
                    },
                    _ => Layer::Basic {
                        bn1: fold(&l.bn1),
                        w: conv_weight(&l.conv1),
                    },
                })
                .collect()
        };
        let transition = |t: &super::TransitionBlock, out_channels: usize| Transition {
            bn: fold(&t.bn1),
            w: conv_weight(&t.conv1),
            out_channels,
        };
        let (fc_weight, fc_bias) = model.head_weights();
        Self {
            plan: plan.clone(),
            stem: conv_weight(&model.conv1),
            blocks: [
                block_layers(&model.block1),
                block_layers(&model.block2),
                block_layers(&model.block3),
            ],
            transitions: [
                transition(&model.trans1, plan.transitions[0].out_channels),
                transition(&model.trans2, plan.transitions[1].out_channels),
            ],
            final_bn: fold(&model.bn1),
            fc_weight,
            fc_bias,
            workspaces: Mutex::new(Vec::new()),
        }
    }

    /// The plan the engine was built for.
    pub fn plan(&self) -> &DenseNetPlan {
        &self.plan
    }

    /// Features `[n, m]` and logits `[n, C]` (row-major) of `n` normalised NCHW images of
    /// `3 x h x w` (`h`, `w` multiples of 4), computed on `threads` threads in groups of up to
    /// `group` images per thread step.
    ///
    /// # Panics
    /// If `input.len() != n * 3 * h * w`, or `h` / `w` is not a positive multiple of 4.
    pub fn forward(
        &self,
        input: &[f32],
        n: usize,
        h: usize,
        w: usize,
        threads: usize,
        group: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        assert_eq!(input.len(), n * 3 * h * w, "input must be n x 3 x h x w");
        assert!(
            h > 0 && w > 0 && h.is_multiple_of(4) && w.is_multiple_of(4),
            "h, w: multiples of 4"
        );
        forward_batch(self, input, n, [h, w], threads, group)
    }

    fn make_workspace(&self, g: usize, h: usize, w: usize) -> Workspace {
        let p = &self.plan;
        let hw = [h * w, h * w / 4, h * w / 16];
        let inter = p.bottleneck_channels();
        let mut normed = 0;
        let columns_for = |cin: usize, h: usize, w: usize| cin * 9 * band_rows(cin, h, w) * w;
        let mut columns = columns_for(3, h, w);
        let mut pooled = 0;
        for (b, (block, spatial)) in p.blocks.iter().zip(hw).enumerate() {
            let n = g * spatial;
            let (bh, bw) = (h >> (2 * b), w >> (2 * b));
            let widest = block.out_channels - p.config.growth_rate;
            normed = normed.max(if p.config.bottleneck {
                // c * tile_columns(c, n) for every c <= widest
                TILE_FLOATS.max(16 * widest).min(widest * n)
            } else {
                widest * n
            });
            let widest_3x3 = if p.config.bottleneck {
                inter
            } else {
                block.out_channels - p.config.growth_rate
            };
            columns = columns.max(columns_for(widest_3x3, bh, bw));
            if let Some(t) = p.transitions.get(b) {
                pooled = pooled.max(t.in_channels * n / 4);
            }
        }
        let (bottleneck, bottleneck_normed) = if p.config.bottleneck {
            (inter * g * hw[0], inter * g * hw[0])
        } else {
            (0, 0)
        };
        Workspace {
            g,
            h,
            w,
            input: vec![0.0; 3 * g * hw[0]],
            blocks: std::array::from_fn(|b| vec![0.0; p.blocks[b].out_channels * g * hw[b]]),
            normed: vec![0.0; normed],
            bottleneck: vec![0.0; bottleneck],
            bottleneck_normed: vec![0.0; bottleneck_normed],
            columns: vec![0.0; columns],
            pooled: vec![0.0; pooled],
        }
    }

    /// Layer of block `b` reading the first `c` channels of the block buffer and writing its
    /// `growth_rate` channels after them.
    #[allow(clippy::too_many_arguments)]
    fn dense_layer(
        &self,
        layer: &Layer,
        b: usize,
        c: usize,
        g: usize,
        h: usize,
        w: usize,
        ws: &mut Workspace,
    ) {
        let k = self.plan.config.growth_rate;
        let n = g * h * w;
        let Workspace {
            blocks,
            normed,
            bottleneck,
            bottleneck_normed,
            columns,
            ..
        } = ws;
        let buf = &mut blocks[b];
        match layer {
            Layer::Bottleneck { bn1, w1, bn2, w2 } => {
                let inter = bn2.channels();
                conv_1x1_after(bn1, w1, inter, buf, n, n, normed, bottleneck, n);
                bn2.apply(bottleneck, n, n, bottleneck_normed);
                conv_3x3(
                    w2,
                    k,
                    bottleneck_normed,
                    inter,
                    g,
                    h,
                    w,
                    columns,
                    &mut buf[c * n..],
                    n,
                );
            }
            Layer::Basic { bn1, w: wt } => {
                bn1.apply(buf, n, n, normed);
                conv_3x3(wt, k, normed, c, g, h, w, columns, &mut buf[c * n..], n);
            }
        }
    }
}

impl GroupEngine for CpuDenseNet {
    type Workspace = Workspace;

    fn input_channels(&self) -> usize {
        3
    }

    fn widths(&self) -> [usize; 2] {
        [self.plan.feature_dim, self.plan.config.num_classes]
    }

    fn pool(&self) -> &Mutex<Vec<Workspace>> {
        &self.workspaces
    }

    fn fits(ws: &Workspace, g: usize, h: usize, w: usize) -> bool {
        ws.g >= g && ws.h == h && ws.w == w
    }

    fn new_workspace(&self, g: usize, h: usize, w: usize) -> Workspace {
        self.make_workspace(g, h, w)
    }

    /// The network on `g` images (NCHW `input`), writing `features` (`[g][m]`) and `logits`.
    fn forward_group(
        &self,
        input: &[f32],
        g: usize,
        ws: &mut Workspace,
        features: &mut [f32],
        logits: &mut [f32],
    ) {
        let p = &self.plan;
        let (h, w) = (ws.h, ws.w);
        let hw = h * w;
        let n0 = g * hw;

        // NCHW -> CNHW.
        for img in 0..g {
            for c in 0..3 {
                ws.input[c * n0 + img * hw..][..hw]
                    .copy_from_slice(&input[(img * 3 + c) * hw..][..hw]);
            }
        }
        // Stem: 3x3 conv 3 -> 2k channels, written into block 1's buffer.
        conv_3x3(
            &self.stem,
            p.stem_channels,
            &ws.input,
            3,
            g,
            h,
            w,
            &mut ws.columns,
            &mut ws.blocks[0],
            n0,
        );

        let (mut bh, mut bw) = (h, w);
        for b in 0..3 {
            let n = g * bh * bw;
            let c_in = p.blocks[b].in_channels;
            for (i, layer) in self.blocks[b].iter().enumerate() {
                let c = c_in + i * p.config.growth_rate;
                self.dense_layer(layer, b, c, g, bh, bw, ws);
            }
            if b < 2 {
                let t = &self.transitions[b];
                let c = p.blocks[b].out_channels;
                let Workspace { blocks, pooled, .. } = ws;
                t.bn.apply_avg_pool_2x2(&blocks[b], n, g, bh, bw, pooled);
                let n_next = n / 4;
                matmul(
                    t.out_channels,
                    n_next,
                    c,
                    &t.w,
                    pooled,
                    n_next,
                    &mut blocks[b + 1],
                    n_next,
                    false,
                );
                bh /= 2;
                bw /= 2;
            }
        }

        // relu(bn1(.)), global average pool, linear head.
        let n3 = g * bh * bw;
        self.final_bn
            .mean_pool(&ws.blocks[2], n3, g, bh * bw, features);
        let (m, classes) = (p.feature_dim, p.config.num_classes);
        for img in 0..g {
            let f = &features[img * m..(img + 1) * m];
            for c in 0..classes {
                let wrow = &self.fc_weight[c * m..(c + 1) * m];
                let dot: f32 = f.iter().zip(wrow).map(|(a, b)| a * b).sum();
                logits[img * classes + c] = dot + self.fc_bias[c];
            }
        }
    }
}
