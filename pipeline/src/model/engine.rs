//! A generic CPU inference engine for eval-mode convolutional networks ([`CpuNet`]): a
//! straight-line sequence of fused operations built once from a loaded burn module (each
//! family says how its layers map onto it: [`NetBuilder`]), run on the CPU.
//!
//! - BatchNorm (running statistics) is folded into the preceding convolution's weights and
//!   bias: `w' = w * s`, `b' = beta - mean * s` with `s = gamma / sqrt(var + eps)`
//!   (computed in f64, rounded once);
//! - the bias, a residual input and the activation (ReLU / ReLU6) are one epilogue pass
//!   over the convolution's output while it is in cache;
//! - dense convolutions are matrix products (`[cout][cin k k] x [cin k k][pixels]`): 1x1
//!   stride-1 ones directly on the input, the others on an unfolding (im2col) of a band of
//!   output rows that stays in the L2 cache; depthwise convolutions have a direct kernel;
//! - activations are channel-major for a group of images (`[C][g * H * W]`, CNHW), and a
//!   buffer is reused as soon as no later operation reads its value;
//! - a batch is split across threads, each with its own scratch memory.
//!
//! Only float summation order differs from the burn forward.

use std::sync::Mutex;

use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, GroupNorm, Linear, PaddingConfig2d};

use super::densenet::tensor_values as values;
use super::kernels::{
    Activation, Window, bias_residual_act, depthwise_plane, im2col_rows, matmul, max_pool_plane,
};
use super::layers::linear_weights;

/// A value of the network: the output of one operation (0: the input image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Value(usize);

/// How a convolution or pooling window pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Zeros `(top, left, bottom, right)`.
    Explicit([usize; 4]),
    /// TensorFlow "SAME": per axis `total = max((ceil(i / s) - 1) * s + (k - 1) d + 1 - i,
    /// 0)`, `total / 2` before and the rest after, from the input's size.
    TfSame,
}

impl Padding {
    /// The window of a `k x k` kernel with `stride` and `dilation` on an `h x w` input.
    fn window(self, h: usize, w: usize, k: usize, stride: usize, dilation: usize) -> Window {
        let span = (k - 1) * dilation + 1;
        let (top, left, ho, wo) = match self {
            Padding::Explicit([t, l, b, r]) => {
                assert!(
                    h + t + b >= span && w + l + r >= span,
                    "a {k}x{k} window does not fit a padded {h}x{w} input"
                );
                (
                    t,
                    l,
                    (h + t + b - span) / stride + 1,
                    (w + l + r - span) / stride + 1,
                )
            }
            Padding::TfSame => {
                let before =
                    |i: usize| ((i.div_ceil(stride) - 1) * stride + span).saturating_sub(i) / 2;
                (before(h), before(w), h.div_ceil(stride), w.div_ceil(stride))
            }
        };
        Window {
            h,
            w,
            kh: k,
            kw: k,
            stride,
            dilation,
            pad_top: top,
            pad_left: left,
            ho,
            wo,
        }
    }
}

/// A convolution's parameters in PyTorch layout, before folding.
#[derive(Debug, Clone)]
pub struct ConvParams {
    /// `[cout][cin / groups][k][k]`, row-major.
    pub weight: Vec<f32>,
    /// Output channels.
    pub cout: usize,
    /// Input channels.
    pub cin: usize,
    /// Kernel size (square).
    pub kernel: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Dilation (both axes).
    pub dilation: usize,
    /// Padding.
    pub padding: Padding,
    /// Groups: 1 (dense) or `cin = cout` (depthwise).
    pub groups: usize,
    /// Bias `[cout]`, if any.
    pub bias: Option<Vec<f32>>,
}

impl ConvParams {
    /// The parameters of a burn convolution (square kernels and strides; an asymmetric
    /// kernel or stride is a programming error of the family mapping it).
    pub fn from_burn(conv: &Conv2d) -> Self {
        let [cout, cin_g, kh, kw] = conv.weight.dims();
        assert!(
            kh == kw && conv.stride[0] == conv.stride[1] && conv.dilation[0] == conv.dilation[1]
        );
        let padding = match conv.padding {
            PaddingConfig2d::Explicit(t, l, b, r) => Padding::Explicit([t, l, b, r]),
            PaddingConfig2d::Valid => Padding::Explicit([0; 4]),
            PaddingConfig2d::Same => Padding::TfSame,
        };
        Self {
            weight: values(conv.weight.val()),
            cout,
            cin: cin_g * conv.groups,
            kernel: kh,
            stride: conv.stride[0],
            dilation: conv.dilation[0],
            padding,
            groups: conv.groups,
            bias: conv.bias.as_ref().map(|b| values(b.val())),
        }
    }
}

/// An eval-mode BatchNorm's parameters: `gamma`, `beta`, running mean and variance, eps.
fn batch_norm_scale_shift(bn: &BatchNorm) -> (Vec<f64>, Vec<f64>) {
    let (gamma, beta) = (values(bn.gamma.val()), values(bn.beta.val()));
    let (mean, var) = (
        values(bn.running_mean.value()),
        values(bn.running_var.value()),
    );
    (0..gamma.len())
        .map(|c| {
            let s = f64::from(gamma[c]) / (f64::from(var[c]) + bn.epsilon).sqrt();
            (s, f64::from(beta[c]) - f64::from(mean[c]) * s)
        })
        .unzip()
}

/// A convolution with its BatchNorm folded, bias, residual and activation.
#[derive(Debug, Clone)]
struct ConvOp {
    input: Value,
    residual: Option<Value>,
    /// `[cout][cin / groups * k * k]`.
    weight: Vec<f32>,
    bias: Vec<f32>,
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    padding: Padding,
    depthwise: bool,
    act: Activation,
}

/// One operation; its output is the next [`Value`].
#[derive(Debug, Clone)]
enum Op {
    Conv(ConvOp),
    MaxPool {
        input: Value,
        kernel: usize,
        stride: usize,
        padding: [usize; 4],
        /// Whether the padding holds zeros (BiT's `ConstantPad2d` before a valid pool) rather
        /// than PyTorch's `-inf`.
        zeros: bool,
    },
    /// `act(group_norm(x) * gamma + beta)` per image, over `groups` channel groups.
    GroupNorm {
        input: Value,
        groups: usize,
        gamma: Vec<f32>,
        beta: Vec<f32>,
        eps: f64,
        act: Activation,
    },
}

impl Op {
    fn inputs(&self) -> impl Iterator<Item = Value> {
        let (a, b) = match self {
            Op::Conv(c) => (c.input, c.residual),
            Op::MaxPool { input, .. } | Op::GroupNorm { input, .. } => (*input, None),
        };
        std::iter::once(a).chain(b)
    }
}

/// Builds a [`CpuNet`]: operations are appended in execution order, each returning its
/// output [`Value`].
#[derive(Debug)]
pub struct NetBuilder {
    ops: Vec<Op>,
    channels: Vec<usize>,
}

impl NetBuilder {
    /// A network reading `channels`-channel images; returns the builder and the input.
    pub fn new(channels: usize) -> (Self, Value) {
        (
            Self {
                ops: Vec::new(),
                channels: vec![channels],
            },
            Value(0),
        )
    }

    fn push(&mut self, op: Op, channels: usize) -> Value {
        self.ops.push(op);
        self.channels.push(channels);
        Value(self.channels.len() - 1)
    }

    /// `act(bn(conv(x)) + residual)` (`bn`, `residual` optional) for a burn convolution.
    pub fn conv(
        &mut self,
        x: Value,
        conv: &Conv2d,
        bn: Option<&BatchNorm>,
        residual: Option<Value>,
        act: Activation,
    ) -> Value {
        self.conv_params(x, ConvParams::from_burn(conv), bn, residual, act)
    }

    /// [`Self::conv`] from raw parameters.
    ///
    /// # Panics
    /// If the channels do not chain, or `groups` is neither 1 nor depthwise.
    pub fn conv_params(
        &mut self,
        x: Value,
        p: ConvParams,
        bn: Option<&BatchNorm>,
        residual: Option<Value>,
        act: Activation,
    ) -> Value {
        assert_eq!(self.channels[x.0], p.cin, "convolution input channels");
        let depthwise = p.groups != 1;
        assert!(
            !depthwise || (p.groups == p.cin && p.cin == p.cout),
            "grouped convolutions: only depthwise ones"
        );
        if let Some(r) = residual {
            assert_eq!(self.channels[r.0], p.cout, "residual channels");
        }
        let per_out = p.weight.len() / p.cout;
        let (scale, shift) = match bn {
            Some(bn) => batch_norm_scale_shift(bn),
            None => (vec![1.0; p.cout], vec![0.0; p.cout]),
        };
        assert_eq!(scale.len(), p.cout, "BatchNorm channels");
        let bias0 = p.bias.unwrap_or_else(|| vec![0.0; p.cout]);
        let weight = p
            .weight
            .chunks_exact(per_out)
            .zip(&scale)
            .flat_map(|(row, &s)| row.iter().map(move |&v| (f64::from(v) * s) as f32))
            .collect();
        let bias = (0..p.cout)
            .map(|o| (f64::from(bias0[o]) * scale[o] + shift[o]) as f32)
            .collect();
        let op = ConvOp {
            input: x,
            residual,
            weight,
            bias,
            cin: p.cin,
            cout: p.cout,
            kernel: p.kernel,
            stride: p.stride,
            dilation: p.dilation,
            padding: p.padding,
            depthwise,
            act,
        };
        self.push(Op::Conv(op), p.cout)
    }

    /// A burn max pool (square window, no dilation, PyTorch's `-inf` padding).
    pub fn max_pool_burn(&mut self, x: Value, pool: &MaxPool2d) -> Value {
        let padding = match pool.padding {
            PaddingConfig2d::Explicit(t, l, b, r) => [t, l, b, r],
            PaddingConfig2d::Valid => [0; 4],
            PaddingConfig2d::Same => unimplemented!("max pooling with \"same\" padding"),
        };
        assert!(
            pool.kernel_size[0] == pool.kernel_size[1]
                && pool.stride[0] == pool.stride[1]
                && pool.dilation == [1, 1]
                && !pool.ceil_mode
        );
        self.max_pool(x, pool.kernel_size[0], pool.stride[0], padding, false)
    }

    /// `kernel x kernel` max pooling with `stride` and `padding` (`-inf`, PyTorch's; with
    /// `zeros`, zero padding as after a `ConstantPad2d(0)`).
    pub fn max_pool(
        &mut self,
        x: Value,
        kernel: usize,
        stride: usize,
        padding: [usize; 4],
        zeros: bool,
    ) -> Value {
        let c = self.channels[x.0];
        self.push(
            Op::MaxPool {
                input: x,
                kernel,
                stride,
                padding,
                zeros,
            },
            c,
        )
    }

    /// `act(gn(x))` for a burn GroupNorm: per image and group of channels,
    /// `(x - mean) / sqrt(var + eps) * gamma[c] + beta[c]` (biased variance).
    pub fn group_norm(&mut self, x: Value, gn: &GroupNorm, act: Activation) -> Value {
        let c = self.channels[x.0];
        assert_eq!(gn.num_channels, c, "GroupNorm channels");
        let param = |p: &Option<burn::module::Param<burn::tensor::Tensor<1>>>, default: f32| {
            p.as_ref()
                .filter(|_| gn.affine)
                .map_or_else(|| vec![default; c], |p| values(p.val()))
        };
        let op = Op::GroupNorm {
            input: x,
            groups: gn.num_groups,
            gamma: param(&gn.gamma, 1.0),
            beta: param(&gn.beta, 0.0),
            eps: gn.epsilon,
            act,
        };
        self.push(op, c)
    }

    /// The finished network: the feature is the global average pool of `x`, the logits
    /// `fc(feature)`.
    pub fn finish(self, x: Value, fc: &Linear) -> CpuNet {
        let (fc_weight, fc_bias) = linear_weights(fc);
        let m = self.channels[x.0];
        let classes = fc_bias.len();
        assert_eq!(fc_weight.len(), m * classes, "head input width");
        // `[m][C]` for the product `features x W^T`.
        let fc_t = (0..m)
            .flat_map(|i| (0..classes).map(move |c| (i, c)))
            .map(|(i, c)| fc_weight[c * m + i])
            .collect();
        let slots = assign_slots(&self.ops, x);
        CpuNet {
            ops: self.ops,
            channels: self.channels,
            slot_of: slots.0,
            slot_count: slots.1,
            feature: x,
            fc_t,
            fc_bias,
            workspaces: Mutex::new(Vec::new()),
        }
    }
}

/// A buffer per value such that no operation writes a buffer a live value is in: values are
/// given the first free slot, freed after their last reader. Returns the slot of each value
/// and the slot count.
fn assign_slots(ops: &[Op], feature: Value) -> (Vec<usize>, usize) {
    let n = ops.len() + 1;
    let mut last_use = vec![0usize; n];
    for (i, op) in ops.iter().enumerate() {
        for v in op.inputs() {
            last_use[v.0] = i + 1;
        }
    }
    last_use[feature.0] = usize::MAX;
    let mut slot_of = vec![0; n];
    let mut free: Vec<usize> = Vec::new();
    let mut count = 1;
    for (i, op) in ops.iter().enumerate() {
        let out = i + 1;
        slot_of[out] = free.pop().unwrap_or_else(|| {
            count += 1;
            count - 1
        });
        for v in op.inputs() {
            if last_use[v.0] == out && !free.contains(&slot_of[v.0]) {
                free.push(slot_of[v.0]);
            }
        }
        if last_use[out] <= out {
            free.push(slot_of[out]);
        }
    }
    (slot_of, count)
}

/// The geometry of every value and window for groups of `g` images of `h x w`.
#[derive(Debug)]
pub(crate) struct Workspace {
    g: usize,
    h: usize,
    w: usize,
    /// `(h, w)` of every value.
    sizes: Vec<(usize, usize)>,
    /// The window of every operation.
    windows: Vec<Window>,
    slots: Vec<Vec<f32>>,
    columns: Vec<f32>,
}

/// Target size (floats) of the unfolded input of one band of output rows: 512 KiB, so the
/// band stays in the L2 cache between unfolding and the matrix product.
const COLUMN_BAND_FLOATS: usize = 128 * 1024;

/// Output rows per band of a convolution whose unfolding has `k_dim` rows of `wo` values.
fn band_rows(k_dim: usize, wo: usize, ho: usize) -> usize {
    (COLUMN_BAND_FLOATS / (k_dim * wo).max(1)).clamp(1, ho.max(1))
}

/// A network compiled for the CPU by a [`NetBuilder`] (see the module documentation).
#[derive(Debug)]
pub struct CpuNet {
    ops: Vec<Op>,
    channels: Vec<usize>,
    slot_of: Vec<usize>,
    slot_count: usize,
    feature: Value,
    /// `[m][C]`.
    fc_t: Vec<f32>,
    fc_bias: Vec<f32>,
    workspaces: Mutex<Vec<Workspace>>,
}

impl CpuNet {
    /// Dimension `m` of the feature.
    pub fn feature_dim(&self) -> usize {
        self.channels[self.feature.0]
    }

    /// Number of classes `C`.
    pub fn num_classes(&self) -> usize {
        self.fc_bias.len()
    }

    /// Features `[n, m]` and logits `[n, C]` (row-major) of `n` normalised NCHW images of
    /// `c x h x w`, computed on `threads` threads in groups of up to `group` images per
    /// thread step.
    ///
    /// # Panics
    /// If `input.len() != n * c * h * w` or a window does not fit the input size.
    pub fn forward(
        &self,
        input: &[f32],
        n: usize,
        h: usize,
        w: usize,
        threads: usize,
        group: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        assert_eq!(
            input.len(),
            n * self.channels[0] * h * w,
            "input must be n x c x h x w"
        );
        forward_batch(self, input, n, [h, w], threads, group)
    }

    /// Time per operation kind (`conv 3x3 s2`, `depthwise 5x5 s1`, ..., `head`) of one
    /// image on one thread, best of `repeat` runs per operation: `(kind, seconds, count)`,
    /// in order of first appearance. `input` is one normalised `c x h x w` image.
    pub fn profile(
        &self,
        input: &[f32],
        h: usize,
        w: usize,
        repeat: usize,
    ) -> Vec<(String, f64, usize)> {
        let mut ws = self.make_workspace(1, h, w);
        let (mut f, mut l) = (vec![0.0; self.feature_dim()], vec![0.0; self.num_classes()]);
        let mut best = vec![f64::INFINITY; self.ops.len() + 1];
        for _ in 0..repeat.max(1) {
            self.load_input(input, 1, &mut ws);
            for (i, t) in best.iter_mut().enumerate() {
                let start = std::time::Instant::now();
                if i < self.ops.len() {
                    self.run_op(i, 1, &mut ws);
                } else {
                    self.head(1, &ws, &mut f, &mut l);
                }
                *t = t.min(start.elapsed().as_secs_f64());
            }
        }
        let mut kinds: Vec<(String, f64, usize)> = Vec::new();
        for (i, t) in best.into_iter().enumerate() {
            let kind = match self.ops.get(i) {
                Some(Op::Conv(c)) => format!(
                    "{} {k}x{k} s{}",
                    if c.depthwise { "depthwise" } else { "conv" },
                    c.stride,
                    k = c.kernel
                ),
                Some(Op::MaxPool { kernel, stride, .. }) => {
                    format!("max pool {kernel}x{kernel} s{stride}")
                }
                Some(Op::GroupNorm { .. }) => "group norm".to_owned(),
                None => "pool + linear head".to_owned(),
            };
            match kinds.iter_mut().find(|k| k.0 == kind) {
                Some(k) => {
                    k.1 += t;
                    k.2 += 1;
                }
                None => kinds.push((kind, t, 1)),
            }
        }
        kinds
    }

    fn make_workspace(&self, g: usize, h: usize, w: usize) -> Workspace {
        let mut sizes = vec![(h, w)];
        let mut windows = Vec::with_capacity(self.ops.len());
        let mut slot_len = vec![0usize; self.slot_count];
        slot_len[self.slot_of[0]] = self.channels[0] * g * h * w;
        let mut columns = 0;
        for (i, op) in self.ops.iter().enumerate() {
            let win = match op {
                Op::Conv(c) => {
                    let (ih, iw) = sizes[c.input.0];
                    let win = c.padding.window(ih, iw, c.kernel, c.stride, c.dilation);
                    if !c.depthwise && !win.is_identity() {
                        let k_dim = c.cin * c.kernel * c.kernel;
                        columns = columns.max(k_dim * band_rows(k_dim, win.wo, win.ho) * win.wo);
                    }
                    win
                }
                Op::MaxPool {
                    input,
                    kernel,
                    stride,
                    padding,
                    ..
                } => {
                    let (ih, iw) = sizes[input.0];
                    Padding::Explicit(*padding).window(ih, iw, *kernel, *stride, 1)
                }
                Op::GroupNorm { input, .. } => {
                    let (ih, iw) = sizes[input.0];
                    Padding::Explicit([0; 4]).window(ih, iw, 1, 1, 1)
                }
            };
            sizes.push((win.ho, win.wo));
            let s = self.slot_of[i + 1];
            slot_len[s] = slot_len[s].max(self.channels[i + 1] * g * win.ho * win.wo);
            windows.push(win);
        }
        Workspace {
            g,
            h,
            w,
            sizes,
            windows,
            slots: slot_len.into_iter().map(|n| vec![0.0; n]).collect(),
            columns: vec![0.0; columns],
        }
    }

    /// NCHW `input` of `g` images into the input value's buffer (CNHW).
    fn load_input(&self, input: &[f32], g: usize, ws: &mut Workspace) {
        let (h, w) = (ws.h, ws.w);
        let hw = h * w;
        let n0 = g * hw;
        let first = &mut ws.slots[self.slot_of[0]];
        for img in 0..g {
            for c in 0..self.channels[0] {
                first[c * n0 + img * hw..][..hw]
                    .copy_from_slice(&input[(img * self.channels[0] + c) * hw..][..hw]);
            }
        }
    }

    /// Operation `i` on the group of `g` images in `ws`.
    fn run_op(&self, i: usize, g: usize, ws: &mut Workspace) {
        let op = &self.ops[i];
        let out_slot = self.slot_of[i + 1];
        let mut out = std::mem::take(&mut ws.slots[out_slot]);
        let win = ws.windows[i];
        match op {
            Op::Conv(c) => {
                let x = &ws.slots[self.slot_of[c.input.0]];
                let res = c.residual.map(|r| ws.slots[self.slot_of[r.0]].as_slice());
                conv(c, &win, g, x, res, &mut ws.columns, &mut out);
            }
            Op::MaxPool { input, zeros, .. } => {
                let x = &ws.slots[self.slot_of[input.0]];
                let (n_in, n_out) = (g * win.h * win.w, g * win.ho * win.wo);
                for c in 0..self.channels[i + 1] {
                    for img in 0..g {
                        max_pool_plane(
                            &x[c * n_in + img * win.h * win.w..],
                            &win,
                            *zeros,
                            &mut out[c * n_out + img * win.ho * win.wo..],
                        );
                    }
                }
            }
            Op::GroupNorm {
                input,
                groups,
                gamma,
                beta,
                eps,
                act,
            } => {
                let x = &ws.slots[self.slot_of[input.0]];
                group_norm(
                    x,
                    g,
                    win.h * win.w,
                    *groups,
                    gamma,
                    beta,
                    *eps,
                    *act,
                    &mut out,
                );
            }
        }
        ws.slots[out_slot] = out;
    }

    /// Global average pool of the feature value and the linear head.
    fn head(&self, g: usize, ws: &Workspace, features: &mut [f32], logits: &mut [f32]) {
        let (fh, fw) = ws.sizes[self.feature.0];
        let fhw = fh * fw;
        let x = &ws.slots[self.slot_of[self.feature.0]];
        let m = self.feature_dim();
        for c in 0..m {
            let row = &x[c * g * fhw..(c + 1) * g * fhw];
            for (img, plane) in row.chunks_exact(fhw).enumerate() {
                features[img * m + c] = plane.iter().sum::<f32>() / fhw as f32;
            }
        }
        let classes = self.num_classes();
        matmul(
            g, classes, m, features, &self.fc_t, classes, logits, classes, false,
        );
        add_to_rows(logits, classes, &self.fc_bias);
    }
}

impl GroupEngine for CpuNet {
    type Workspace = Workspace;

    fn input_channels(&self) -> usize {
        self.channels[0]
    }

    fn widths(&self) -> [usize; 2] {
        [self.feature_dim(), self.num_classes()]
    }

    fn pool(&self) -> &Mutex<Vec<Workspace>> {
        &self.workspaces
    }

    fn fits(ws: &Workspace, g: usize, h: usize, w: usize) -> bool {
        ws.g >= g && ws.h == h && ws.w == w
    }

    fn new_workspace(&self, g: usize, h: usize, w: usize) -> Workspace {
        self.make_workspace(g.max(1), h, w)
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
        self.load_input(input, g, ws);
        for i in 0..self.ops.len() {
            self.run_op(i, g, ws);
        }
        self.head(g, ws, features, logits);
    }
}

/// `rows[r][c] += bias[c]` for every row of `width` values.
fn add_to_rows(rows: &mut [f32], width: usize, bias: &[f32]) {
    for row in rows.chunks_exact_mut(width) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

impl Window {
    /// Whether the window is a 1x1, stride-1, unpadded one (the input is its own unfolding).
    fn is_identity(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad_top == 0 && self.pad_left == 0
    }
}

/// GroupNorm + activation of `g` images: `x` and `out` are `[C][g * hw]`; statistics per
/// image and group of `C / groups` channels, accumulated in f64.
#[allow(clippy::too_many_arguments)]
fn group_norm(
    x: &[f32],
    g: usize,
    hw: usize,
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    act: Activation,
    out: &mut [f32],
) {
    let c = gamma.len();
    let per = c / groups;
    let n = g * hw;
    for img in 0..g {
        for q in 0..groups {
            let planes = || (q * per..(q + 1) * per).map(|ch| &x[ch * n + img * hw..][..hw]);
            let count = (per * hw) as f64;
            let mean = planes().flatten().map(|&v| f64::from(v)).sum::<f64>() / count;
            let var = planes()
                .flatten()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / count;
            let inv = 1.0 / (var + eps).sqrt();
            for ch in q * per..(q + 1) * per {
                let s = f64::from(gamma[ch]) * inv;
                let (scale, shift) = (s as f32, (f64::from(beta[ch]) - mean * s) as f32);
                let at = ch * n + img * hw;
                for (o, &v) in out[at..at + hw].iter_mut().zip(&x[at..at + hw]) {
                    *o = v * scale + shift;
                }
                bias_residual_act(&mut out[at..at + hw], hw, 1, hw, None, None, act);
            }
        }
    }
}

/// One convolution over `g` images: `x` is `[cin][g * h * w]`, `out` `[cout][g * ho * wo]`.
#[allow(clippy::too_many_arguments)]
fn conv(
    c: &ConvOp,
    win: &Window,
    g: usize,
    x: &[f32],
    residual: Option<&[f32]>,
    columns: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (hw, howo) = (win.h * win.w, win.ho * win.wo);
    let (n_in, n_out) = (g * hw, g * howo);
    let res = residual.map(|r| (r, n_out));
    if c.depthwise {
        let kk = c.kernel * c.kernel;
        for ch in 0..c.cout {
            for img in 0..g {
                let at = ch * n_out + img * howo;
                let plane = &mut out[at..at + howo];
                depthwise_plane(
                    &x[ch * n_in + img * hw..],
                    &c.weight[ch * kk..(ch + 1) * kk],
                    c.bias[ch],
                    win,
                    columns,
                    plane,
                );
                let r = res.map(|(r, _)| (&r[at..at + howo], howo));
                bias_residual_act(plane, howo, 1, howo, None, r, c.act);
            }
        }
        return;
    }
    if win.is_identity() {
        matmul(c.cout, n_out, c.cin, &c.weight, x, n_in, out, n_out, false);
        bias_residual_act(out, n_out, c.cout, n_out, Some(&c.bias), res, c.act);
        return;
    }
    let k_dim = c.cin * c.kernel * c.kernel;
    let band = band_rows(k_dim, win.wo, win.ho);
    for img in 0..g {
        for y0 in (0..win.ho).step_by(band) {
            let rows = y0..(y0 + band).min(win.ho);
            let len = rows.len() * win.wo;
            im2col_rows(&x[img * hw..], n_in, c.cin, win, rows, columns, len);
            let at = img * howo + y0 * win.wo;
            matmul(
                c.cout,
                len,
                k_dim,
                &c.weight,
                columns,
                len,
                &mut out[at..],
                n_out,
                false,
            );
            let r = res.map(|(r, rs)| (&r[at..], rs));
            bias_residual_act(&mut out[at..], n_out, c.cout, len, Some(&c.bias), r, c.act);
        }
    }
}

/// An engine that runs groups of images with per-thread scratch memory (its workspaces),
/// for [`forward_batch`].
pub(crate) trait GroupEngine: Sync {
    /// Scratch memory of one thread.
    type Workspace: Send;
    /// Channels of an input image.
    fn input_channels(&self) -> usize;
    /// `[m, C]`: feature and logit widths.
    fn widths(&self) -> [usize; 2];
    /// The pool of workspaces kept between calls.
    fn pool(&self) -> &Mutex<Vec<Self::Workspace>>;
    /// Whether `ws` serves groups of `g` images of `h x w`.
    fn fits(ws: &Self::Workspace, g: usize, h: usize, w: usize) -> bool;
    /// A workspace for groups of `g` images of `h x w`.
    fn new_workspace(&self, g: usize, h: usize, w: usize) -> Self::Workspace;
    /// The network on `g` images (NCHW `input`), writing `features` and `logits`.
    fn forward_group(
        &self,
        input: &[f32],
        g: usize,
        ws: &mut Self::Workspace,
        features: &mut [f32],
        logits: &mut [f32],
    );
}

/// Features `[n, m]` and logits `[n, C]` of `n` NCHW images of `h x w` on `engine`: the
/// batch split across `threads` threads, each running groups of up to `group` images with
/// a workspace from the engine's pool (made when none fits, handed back after).
pub(crate) fn forward_batch<E: GroupEngine>(
    engine: &E,
    input: &[f32],
    n: usize,
    [h, w]: [usize; 2],
    threads: usize,
    group: usize,
) -> (Vec<f32>, Vec<f32>) {
    let [m, classes] = engine.widths();
    let image = engine.input_channels() * h * w;
    let mut features = vec![0.0f32; n * m];
    let mut logits = vec![0.0f32; n * classes];
    if n == 0 {
        return (features, logits);
    }
    let threads = threads.clamp(1, n);
    let group = group.max(1);
    let per_thread = n.div_ceil(threads);
    let lock = || engine.pool().lock().unwrap_or_else(|e| e.into_inner());
    let run = |input: &[f32], features: &mut [f32], logits: &mut [f32]| {
        let count = input.len() / image;
        let g = group.min(count);
        let found = {
            let mut pool = lock();
            let i = pool.iter().position(|ws| E::fits(ws, g, h, w));
            i.map(|i| pool.swap_remove(i))
        };
        let mut ws = found.unwrap_or_else(|| engine.new_workspace(g, h, w));
        let mut start = 0;
        while start < count {
            let g = group.min(count - start);
            engine.forward_group(
                &input[start * image..(start + g) * image],
                g,
                &mut ws,
                &mut features[start * m..(start + g) * m],
                &mut logits[start * classes..(start + g) * classes],
            );
            start += g;
        }
        lock().push(ws);
    };
    if threads == 1 {
        run(input, &mut features, &mut logits);
    } else {
        std::thread::scope(|scope| {
            for ((x, f), l) in input
                .chunks(per_thread * image)
                .zip(features.chunks_mut(per_thread * m))
                .zip(logits.chunks_mut(per_thread * classes))
            {
                scope.spawn(|| run(x, f, l));
            }
        });
    }
    (features, logits)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use super::*;
    use crate::model::kernels::tests::pseudo_random;
    use crate::model::{Arch, Backbone};

    /// The engine against the burn forward of the same (randomly initialised) network on
    /// odd input sizes (asymmetric TF "SAME" padding, max-pool borders), in groups of 2
    /// images on 2 threads.
    fn engine_equals_burn(name: &str, n: usize, h: usize, w: usize) {
        let device = Device::flex();
        let arch: Arch = name.parse().unwrap();
        let model: Backbone = arch.init(7, &device).unwrap();
        let net = model.cpu_net().unwrap();
        let x: Vec<f32> = pseudo_random(n * 3 * h * w, 11)
            .into_iter()
            .map(|v| v * 4.0)
            .collect();
        let (f, l) = model.forward(Tensor::<4>::from_data(
            TensorData::new(x.clone(), [n, 3, h, w]),
            &device,
        ));
        let (f, l) = (values(f), values(l));
        let (ef, el) = net.forward(&x, n, h, w, 2, 2);
        for (what, ours, theirs) in [("features", &ef, &f), ("logits", &el, &l)] {
            let scale = theirs.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let diff = ours
                .iter()
                .zip(theirs)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff <= 1e-4 * scale,
                "{name} {what}: {diff} (scale {scale})"
            );
        }
        let (f1, _) = net.forward(&x[..3 * h * w], 1, h, w, 1, 1);
        assert_eq!(
            f1,
            ef[..net.feature_dim()],
            "{name}: a row does not depend on its batch"
        );
    }

    #[test]
    fn efficientnet_lite0_engine_equals_burn_on_odd_sizes() {
        engine_equals_burn("efficientnet-lite0", 3, 37, 45);
    }

    #[test]
    fn mobilenet_v2_engine_equals_burn_on_odd_sizes() {
        engine_equals_burn("mobilenet_v2", 3, 33, 40);
    }

    #[test]
    fn resnet_engines_equal_burn_on_odd_sizes() {
        engine_equals_burn("resnet18", 3, 35, 42);
        engine_equals_burn("resnet50", 2, 33, 33);
        engine_equals_burn("resnet18-cifar", 3, 15, 17);
    }

    #[test]
    fn tf_same_pads_asymmetrically_from_the_input_size() {
        // 224, k 3, s 2: total 1 -> 0 before, output 112.
        let win = Padding::TfSame.window(224, 225, 3, 2, 1);
        assert_eq!(
            (win.pad_top, win.ho, win.pad_left, win.wo),
            (0, 112, 1, 113)
        );
        // k 5, s 1: 2 before.
        let win = Padding::TfSame.window(7, 7, 5, 1, 1);
        assert_eq!((win.pad_top, win.ho), (2, 7));
        let win = Padding::Explicit([3, 3, 3, 3]).window(224, 224, 7, 2, 1);
        assert_eq!((win.ho, win.wo), (112, 112));
    }

    #[test]
    fn buffers_are_reused_once_values_are_dead() {
        let device = Device::flex();
        let model = Arch::ResNet(crate::model::ResNetSpec::RESNET50)
            .init(3, &device)
            .unwrap();
        let net = model.cpu_net().unwrap();
        // input, block input, shortcut, two branch values, block output
        assert!(net.slot_count <= 5, "{} slots", net.slot_count);
        for (i, op) in net.ops.iter().enumerate() {
            for v in op.inputs() {
                assert_ne!(
                    net.slot_of[v.0],
                    net.slot_of[i + 1],
                    "op {i} writes its input"
                );
            }
        }
    }
}
