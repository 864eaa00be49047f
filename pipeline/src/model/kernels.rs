//! CPU kernels of the inference engines ([`super::cpu::CpuDenseNet`], [`super::engine::CpuNet`]).
//!
//! Activations are stored channel-major for a group of `g` images: `[C][g * H * W]`, i.e.
//! row `c` holds channel `c` of every image of the group, image after image (CNHW). A
//! convolution is then one matrix product with the channels as the inner dimension.

/// `dst[0..m][0..n] (+)= lhs[m x k] * rhs[k x n]`, all row-major; `rhs` and `dst` rows are
/// `rhs_rs` / `dst_rs` apart (so a product can read or write a band of a wider buffer).
/// With `accumulate` the product is added to `dst`, otherwise it overwrites it.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    rhs: &[f32],
    rhs_rs: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        lhs.len() >= m * k,
        "matmul: lhs holds {} < {m} x {k}",
        lhs.len()
    );
    assert!(
        n <= rhs_rs && n <= dst_rs,
        "matmul: row stride below row length"
    );
    assert!(
        k == 0 || rhs.len() >= (k - 1) * rhs_rs + n,
        "matmul: rhs too short"
    );
    assert!(dst.len() >= (m - 1) * dst_rs + n, "matmul: dst too short");
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_rs).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: the asserts above keep every index the kernel touches, (i, j) -> i * rs + j
    // with i < rows and j < n, inside the three slices; `dst` does not alias the inputs
    // (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Runs `$call` compiled for the widest vector extension the CPU has (AVX-512, AVX2, or the
/// build's baseline): the kernels are plain loops that the compiler vectorises for the
/// enabled features. Every variant computes the same float operations in the same order
/// (no fused multiply-add is introduced), so results do not depend on the CPU.
macro_rules! with_widest_simd {
    ($call:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            #[target_feature(enable = "avx2")]
            unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F (checked at run time).
                unsafe { avx512(|| $call) }
            } else if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked at run time).
                unsafe { avx2(|| $call) }
            } else {
                $call
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $call
        }
    }};
}

/// Eval-mode BatchNorm followed by ReLU, folded into one per-channel affine map:
/// `relu(x * scale[c] + shift[c])` with `scale = gamma / sqrt(var + eps)` and
/// `shift = beta - mean * scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct AffineRelu {
    /// Per-channel factor `gamma / sqrt(running_var + eps)`.
    pub scale: Vec<f32>,
    /// Per-channel offset `beta - running_mean * scale`.
    pub shift: Vec<f32>,
}

impl AffineRelu {
    /// Folds BatchNorm parameters (computed in f64, rounded once to f32).
    pub fn from_batch_norm(
        gamma: &[f32],
        beta: &[f32],
        mean: &[f32],
        var: &[f32],
        eps: f64,
    ) -> Self {
        let c = gamma.len();
        assert!(beta.len() == c && mean.len() == c && var.len() == c);
        let mut scale = Vec::with_capacity(c);
        let mut shift = Vec::with_capacity(c);
        for i in 0..c {
            let s = gamma[i] as f64 / (var[i] as f64 + eps).sqrt();
            scale.push(s as f32);
            shift.push((beta[i] as f64 - mean[i] as f64 * s) as f32);
        }
        Self { scale, shift }
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.scale.len()
    }

    /// Applies the map to the first `channels()` rows of `src` (rows `src_rs` apart,
    /// `n` values each) and writes them densely (`n` apart) to `dst`.
    pub fn apply(&self, src: &[f32], src_rs: usize, n: usize, dst: &mut [f32]) {
        assert!(dst.len() >= self.channels() * n);
        assert!(self.channels() == 0 || src.len() >= (self.channels() - 1) * src_rs + n);
        with_widest_simd!(self.apply_rows(src, src_rs, n, dst))
    }

    #[inline(always)]
    fn apply_rows(&self, src: &[f32], src_rs: usize, n: usize, dst: &mut [f32]) {
        for (c, out) in dst.chunks_exact_mut(n).take(self.channels()).enumerate() {
            let (s, b) = (self.scale[c], self.shift[c]);
            let row = &src[c * src_rs..c * src_rs + n];
            for (o, &x) in out.iter_mut().zip(row) {
                *o = (x * s + b).max(0.0);
            }
        }
    }

    /// `relu(x * scale + shift)` followed by 2x2 average pooling with stride 2:
    /// `[C][g * h * w]` (rows `src_rs` apart) to `[C][g * (h / 2) * (w / 2)]` (dense);
    /// `h` and `w` must be even.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_avg_pool_2x2(
        &self,
        src: &[f32],
        src_rs: usize,
        g: usize,
        h: usize,
        w: usize,
        dst: &mut [f32],
    ) {
        assert!(
            h.is_multiple_of(2) && w.is_multiple_of(2),
            "2x2 pooling needs even sizes"
        );
        let (ho, wo) = (h / 2, w / 2);
        let n_out = g * ho * wo;
        assert!(dst.len() >= self.channels() * n_out);
        assert!(self.channels() == 0 || src.len() >= (self.channels() - 1) * src_rs + g * h * w);
        for c in 0..self.channels() {
            let (s, b) = (self.scale[c], self.shift[c]);
            let f = |x: f32| (x * s + b).max(0.0);
            let row = &src[c * src_rs..];
            let out = &mut dst[c * n_out..][..n_out];
            for img in 0..g {
                let plane = &row[img * h * w..][..h * w];
                let oplane = &mut out[img * ho * wo..][..ho * wo];
                for y in 0..ho {
                    let r0 = &plane[2 * y * w..][..w];
                    let r1 = &plane[(2 * y + 1) * w..][..w];
                    for x in 0..wo {
                        oplane[y * wo + x] =
                            (f(r0[2 * x]) + f(r0[2 * x + 1]) + f(r1[2 * x]) + f(r1[2 * x + 1]))
                                * 0.25;
                    }
                }
            }
        }
    }

    /// Mean over each `hw`-long run of `relu(x * scale + shift)`: for a `[C][g * hw]` input,
    /// `out[img * C + c]` is image `img`'s global average of channel `c`.
    pub fn mean_pool(&self, src: &[f32], src_rs: usize, g: usize, hw: usize, out: &mut [f32]) {
        let channels = self.channels();
        for c in 0..channels {
            let (s, b) = (self.scale[c], self.shift[c]);
            let row = &src[c * src_rs..c * src_rs + g * hw];
            for (img, plane) in row.chunks_exact(hw).enumerate() {
                let sum: f32 = plane.iter().map(|&x| (x * s + b).max(0.0)).sum();
                out[img * channels + c] = sum / hw as f32;
            }
        }
    }
}

/// Unfolds a 3x3, stride 1, zero-padding 1 convolution input: `src` is `[C][g * h * w]`,
/// `dst` becomes `[C * 9][g * h * w]` with row `c * 9 + ky * 3 + kx` holding channel `c`
/// shifted by `(ky - 1, kx - 1)` (zeros outside the image), the column order of a PyTorch
/// `[out, in, 3, 3]` weight.
pub fn im2col_3x3(src: &[f32], channels: usize, g: usize, h: usize, w: usize, dst: &mut [f32]) {
    let hw = h * w;
    let n = g * hw;
    assert!(src.len() >= channels * n && dst.len() >= channels * 9 * n);
    for img in 0..g {
        im2col_3x3_rows(
            &src[img * hw..],
            n,
            channels,
            h,
            w,
            0..h,
            &mut dst[img * hw..],
            n,
        );
    }
}

/// [`im2col_3x3`] for output rows `rows` of one image: channel `c` of the image is
/// `src[c * src_rs..][..h * w]`; row `c * 9 + ky * 3 + kx` of the result
/// (`rows.len() * w` values) starts at `dst[(c * 9 + ky * 3 + kx) * dst_rs]`.
#[allow(clippy::too_many_arguments)]
pub fn im2col_3x3_rows(
    src: &[f32],
    src_rs: usize,
    channels: usize,
    h: usize,
    w: usize,
    rows: std::ops::Range<usize>,
    dst: &mut [f32],
    dst_rs: usize,
) {
    let len = rows.len() * w;
    assert!(rows.end <= h && len <= dst_rs);
    for c in 0..channels {
        let plane = &src[c * src_rs..][..h * w];
        for ky in 0..3 {
            // Output row y reads input row y + ky - 1: valid for y in [y0, y1).
            let y0 = rows.start.max(usize::from(ky == 0));
            let y1 = rows.end.min(if ky == 2 { h - 1 } else { h });
            for kx in 0..3 {
                let out = &mut dst[(c * 9 + ky * 3 + kx) * dst_rs..][..len];
                if y0 >= y1 {
                    out.fill(0.0);
                    continue;
                }
                // Output pixel y * w + x reads input (y + ky - 1) * w + x + kx - 1: one
                // contiguous copy over the valid rows; the column that wrapped around a row
                // edge is zeroed afterwards.
                let (lo, hi) = ((y0 - rows.start) * w, (y1 - rows.start) * w);
                let src_lo = (y0 * w + ky * w + kx) as isize - (w + 1) as isize;
                out[..lo].fill(0.0);
                out[hi..].fill(0.0);
                match kx {
                    0 => {
                        // the first pixel of a row has no left neighbour
                        let s0 = (src_lo + 1) as usize;
                        out[lo + 1..hi].copy_from_slice(&plane[s0..s0 + hi - lo - 1]);
                        for y in (lo..hi).step_by(w) {
                            out[y] = 0.0;
                        }
                    }
                    1 => {
                        let s0 = src_lo as usize;
                        out[lo..hi].copy_from_slice(&plane[s0..s0 + hi - lo]);
                    }
                    _ => {
                        // the last pixel of a row has no right neighbour
                        let s0 = src_lo as usize;
                        out[lo..hi - 1].copy_from_slice(&plane[s0..s0 + hi - lo - 1]);
                        for y in (lo..hi).step_by(w) {
                            out[y + w - 1] = 0.0;
                        }
                    }
                }
            }
        }
    }
}

/// The element-wise function after a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x`.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)` (PyTorch `ReLU6`).
    Relu6,
}

impl Activation {
    #[inline(always)]
    fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
        }
    }
}

/// An optional residual input of an epilogue: its values and row stride.
pub type Residual<'a> = Option<(&'a [f32], usize)>;

/// The epilogue of a convolution on `rows` rows of `len` values, rows `rs` apart in `out`:
/// `out = act(out + bias[r] + residual)` where `bias` (one value per row) and `residual`
/// (rows `residual_rs` apart) are optional.
#[allow(clippy::too_many_arguments)]
pub fn bias_residual_act(
    out: &mut [f32],
    rs: usize,
    rows: usize,
    len: usize,
    bias: Option<&[f32]>,
    residual: Residual<'_>,
    act: Activation,
) {
    if rows == 0 || len == 0 {
        return;
    }
    assert!(len <= rs && out.len() >= (rows - 1) * rs + len);
    assert!(bias.is_none_or(|b| b.len() >= rows));
    if let Some((r, r_rs)) = residual {
        assert!(len <= r_rs && r.len() >= (rows - 1) * r_rs + len);
    }
    with_widest_simd!(bias_residual_act_rows(
        out,
        [rs, rows, len],
        (bias, residual, act)
    ))
}

#[inline(always)]
fn bias_residual_act_rows(
    out: &mut [f32],
    [rs, rows, len]: [usize; 3],
    (bias, residual, act): (Option<&[f32]>, Residual<'_>, Activation),
) {
    for r in 0..rows {
        let b = bias.map_or(0.0, |b| b[r]);
        let row = &mut out[r * rs..r * rs + len];
        match residual {
            Some((res, res_rs)) => {
                for (o, &x) in row.iter_mut().zip(&res[r * res_rs..r * res_rs + len]) {
                    *o = act.apply(*o + b + x);
                }
            }
            None => {
                for o in row.iter_mut() {
                    *o = act.apply(*o + b);
                }
            }
        }
    }
}

/// The shape of a 2-d convolution or pooling window on one `h x w` plane: `kh x kw`
/// kernel, `stride`, `dilation`, `pad_top` / `pad_left` zeros before the input (those
/// after it are implied by the output size `ho x wo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Dilation (both axes).
    pub dilation: usize,
    /// Zero rows before the input.
    pub pad_top: usize,
    /// Zero columns before the input.
    pub pad_left: usize,
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
}

impl Window {
    /// Output positions `o` whose tap `k` (`offset = k * dilation`) reads inside an input
    /// axis of length `len` with `pad` zeros before it: `0 <= o * stride + offset - pad < len`.
    fn valid(
        &self,
        offset: usize,
        pad: usize,
        len: usize,
        outputs: usize,
    ) -> std::ops::Range<usize> {
        let s = self.stride;
        let lo = pad.saturating_sub(offset).div_ceil(s);
        // o * s + offset - pad <= len - 1  <=>  o <= (len - 1 + pad - offset) / s
        let hi = if len + pad > offset {
            ((len - 1 + pad - offset) / s + 1).min(outputs)
        } else {
            0
        };
        lo.min(hi)..hi
    }

    /// Output rows whose every tap reads inside the input.
    fn rows_inside(&self) -> std::ops::Range<usize> {
        let (first, last) = (
            self.valid(0, self.pad_top, self.h, self.ho),
            self.valid((self.kh - 1) * self.dilation, self.pad_top, self.h, self.ho),
        );
        first.start.max(last.start)..first.end.min(last.end)
    }

    /// Output columns whose every tap reads inside the input.
    fn columns_inside(&self) -> std::ops::Range<usize> {
        let (first, last) = (self.columns(0), self.columns(self.kw - 1));
        first.start.max(last.start)..first.end.min(last.end)
    }

    /// Output columns of tap `kx` that read inside the input row.
    fn columns(&self, kx: usize) -> std::ops::Range<usize> {
        self.valid(kx * self.dilation, self.pad_left, self.w, self.wo)
    }

    /// The input row output row `oy` reads for tap `ky`, if inside the image.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky * self.dilation)
            .checked_sub(self.pad_top)
            .filter(|&iy| iy < self.h)
    }

    /// First input column of tap `kx` at output column `ox` (in range for `columns(kx)`).
    fn input_column(&self, ox: usize, kx: usize) -> usize {
        ox * self.stride + kx * self.dilation - self.pad_left
    }
}

/// Unfolds output rows `rows` of a convolution of one image: channel `c` of the input is
/// `src[c * src_rs..][..h * w]`; row `(c * kh + ky) * kw + kx` of the result (`rows.len() *
/// wo` values, zeros where the tap falls in the padding) starts at `dst[.. * dst_rs]`, the
/// column order of a PyTorch `[out, in, kh, kw]` weight.
pub fn im2col_rows(
    src: &[f32],
    src_rs: usize,
    channels: usize,
    win: &Window,
    rows: std::ops::Range<usize>,
    dst: &mut [f32],
    dst_rs: usize,
) {
    let (w, wo) = (win.w, win.wo);
    let len = rows.len() * wo;
    assert!(rows.end <= win.ho && len <= dst_rs);
    assert!(channels == 0 || src.len() >= (channels - 1) * src_rs + win.h * w);
    for c in 0..channels {
        let plane = &src[c * src_rs..][..win.h * w];
        for ky in 0..win.kh {
            for kx in 0..win.kw {
                let r = (c * win.kh + ky) * win.kw + kx;
                let out = &mut dst[r * dst_rs..][..len];
                let cols = win.columns(kx);
                for (i, oy) in rows.clone().enumerate() {
                    let o = &mut out[i * wo..(i + 1) * wo];
                    let Some(iy) = win.input_row(oy, ky) else {
                        o.fill(0.0);
                        continue;
                    };
                    let line = &plane[iy * w..(iy + 1) * w];
                    o[..cols.start].fill(0.0);
                    o[cols.end..].fill(0.0);
                    if cols.is_empty() {
                        continue;
                    }
                    let x0 = win.input_column(cols.start, kx);
                    if win.stride == 1 {
                        o[cols.clone()].copy_from_slice(&line[x0..x0 + cols.len()]);
                    } else {
                        for (j, v) in o[cols.clone()].iter_mut().enumerate() {
                            *v = line[x0 + j * win.stride];
                        }
                    }
                }
            }
        }
    }
}

/// One channel of a depthwise convolution: `dst[oy * wo + ox] = bias + sum over taps of
/// weight[ky * kw + kx] * src[iy * w + ix]` on the `h x w` plane `src` (zeros outside).
///
/// The padded input is split into `stride x stride` phase planes (`phase[py][px][y][x] =
/// padded[y * stride + py][x * stride + px]`), so every tap is a unit-stride shift of one
/// phase; the output is accumulated `wq` wide (the phase width, the extra columns
/// discarded), each tap one branch-free vector loop over a band of rows. `scratch` holds
/// the phases and the wide output.
pub fn depthwise_plane(
    src: &[f32],
    weight: &[f32],
    bias: f32,
    win: &Window,
    scratch: &mut Vec<f32>,
    dst: &mut [f32],
) {
    assert!(src.len() >= win.h * win.w && dst.len() >= win.ho * win.wo);
    assert!(weight.len() >= win.kh * win.kw);
    with_widest_simd!(depthwise_plane_impl(src, weight, bias, win, scratch, dst))
}

/// Output floats per band of the wide depthwise output (16 KiB: L1-resident).
const DEPTHWISE_BAND_FLOATS: usize = 4096;

#[inline(always)]
fn depthwise_plane_impl(
    src: &[f32],
    weight: &[f32],
    bias: f32,
    win: &Window,
    scratch: &mut Vec<f32>,
    dst: &mut [f32],
) {
    let (s, d) = (win.stride, win.dilation);
    let (reach_y, reach_x) = ((win.kh - 1) * d / s, (win.kw - 1) * d / s);
    let (hq, wq) = (win.ho + reach_y + 1, win.wo + reach_x);
    let phase_len = hq * wq;
    let phases = s * s;
    let wide_len = win.ho * wq;
    if scratch.len() < phases * phase_len + wide_len {
        scratch.resize(phases * phase_len + wide_len, 0.0);
    }
    let (phase_buf, wide) = scratch.split_at_mut(phases * phase_len);
    for py in 0..s {
        for px in 0..s {
            let q = &mut phase_buf[(py * s + px) * phase_len..][..phase_len];
            for y in 0..hq {
                let row = &mut q[y * wq..(y + 1) * wq];
                let iy = (y * s + py)
                    .checked_sub(win.pad_top)
                    .filter(|&iy| iy < win.h);
                let Some(iy) = iy else {
                    row.fill(0.0);
                    continue;
                };
                let line = &src[iy * win.w..(iy + 1) * win.w];
                for (x, v) in row.iter_mut().enumerate() {
                    let ix = (x * s + px)
                        .checked_sub(win.pad_left)
                        .filter(|&ix| ix < win.w);
                    *v = ix.map_or(0.0, |ix| line[ix]);
                }
            }
        }
    }
    let band_rows = (DEPTHWISE_BAND_FLOATS / wq).clamp(1, win.ho.max(1));
    for r0 in (0..win.ho).step_by(band_rows) {
        let rows = band_rows.min(win.ho - r0);
        let out = &mut wide[r0 * wq..(r0 + rows) * wq];
        out.fill(bias);
        for ky in 0..win.kh {
            for kx in 0..win.kw {
                let wv = weight[ky * win.kw + kx];
                let (oy, ox) = (ky * d, kx * d);
                let q = &phase_buf[((oy % s) * s + ox % s) * phase_len..][..phase_len];
                let start = (r0 + oy / s) * wq + ox / s;
                for (o, &x) in out.iter_mut().zip(&q[start..start + rows * wq]) {
                    *o += wv * x;
                }
            }
        }
    }
    for oy in 0..win.ho {
        dst[oy * win.wo..(oy + 1) * win.wo].copy_from_slice(&wide[oy * wq..oy * wq + win.wo]);
    }
}

/// Max pooling of one `h x w` plane over the window `win`. The padding is `-inf`
/// (PyTorch's: only input values are compared) or, with `zeros`, 0 (a window reaching into
/// it takes at least 0).
pub fn max_pool_plane(src: &[f32], win: &Window, zeros: bool, dst: &mut [f32]) {
    let (w, wo) = (win.w, win.wo);
    let (rows_in, cols_in) = (win.rows_inside(), win.columns_inside());
    for oy in 0..win.ho {
        let out = &mut dst[oy * wo..(oy + 1) * wo];
        for (ox, v) in out.iter_mut().enumerate() {
            let padded = !rows_in.contains(&oy) || !cols_in.contains(&ox);
            *v = if zeros && padded {
                0.0
            } else {
                f32::NEG_INFINITY
            };
        }
        for ky in 0..win.kh {
            let Some(iy) = win.input_row(oy, ky) else {
                continue;
            };
            let line = &src[iy * w..(iy + 1) * w];
            for kx in 0..win.kw {
                let cols = win.columns(kx);
                if cols.is_empty() {
                    continue;
                }
                let x0 = win.input_column(cols.start, kx);
                for (j, v) in out[cols].iter_mut().enumerate() {
                    *v = v.max(line[x0 + j * win.stride]);
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic values in [-0.5, 0.5) (xorshift).
    pub(crate) fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn matmul_matches_the_definition_with_strides() {
        let (m, n, k) = (5, 7, 9);
        let lhs = pseudo_random(m * k, 1);
        let rhs_rs = 11;
        let rhs = pseudo_random(k * rhs_rs, 2);
        let dst_rs = 8;
        let mut dst = vec![1.0; m * dst_rs];
        matmul(m, n, k, &lhs, &rhs, rhs_rs, &mut dst, dst_rs, true);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 1.0
                    + (0..k)
                        .map(|p| lhs[i * k + p] * rhs[p * rhs_rs + j])
                        .sum::<f32>();
                assert!((dst[i * dst_rs + j] - want).abs() < 1e-5);
            }
            assert_eq!(dst[i * dst_rs + n], 1.0, "column past n untouched");
        }
        matmul(m, n, k, &lhs, &rhs, rhs_rs, &mut dst, dst_rs, false);
        let want: f32 = (0..k).map(|p| lhs[p] * rhs[p * rhs_rs]).sum();
        assert!((dst[0] - want).abs() < 1e-5);
    }

    #[test]
    fn affine_relu_is_eval_batch_norm_then_relu() {
        let (gamma, beta, mean, var) = (
            [2.0f32, 0.5],
            [0.1f32, -1.0],
            [1.0f32, -2.0],
            [4.0f32, 0.25],
        );
        let f = AffineRelu::from_batch_norm(&gamma, &beta, &mean, &var, 1e-5);
        let src = [3.0f32, -1.0, 0.0, -3.0, 0.0, 9.0];
        let mut dst = [0.0f32; 4];
        f.apply(&src, 3, 2, &mut dst);
        for (c, (row_in, row_out)) in [(0, 0), (3, 2)].into_iter().enumerate() {
            for j in 0..2 {
                let x = src[row_in + j];
                let bn = (x - mean[c]) / (var[c] + 1e-5).sqrt() * gamma[c] + beta[c];
                assert!((dst[row_out + j] - bn.max(0.0)).abs() < 1e-6);
            }
        }
        let mut pooled = [0.0f32; 2];
        f.mean_pool(&src, 3, 1, 2, &mut pooled);
        assert!((pooled[0] - (dst[0] + dst[1]) / 2.0).abs() < 1e-6);
        assert!((pooled[1] - (dst[2] + dst[3]) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn im2col_then_matmul_is_a_padded_3x3_convolution() {
        for (g, h, w) in [(2, 5, 6), (1, 1, 1), (2, 2, 1), (1, 1, 3), (3, 4, 4)] {
            check_conv_3x3(3, 4, g, h, w);
        }
    }

    fn check_conv_3x3(cin: usize, cout: usize, g: usize, h: usize, w: usize) {
        let n = g * h * w;
        let x = pseudo_random(cin * n, 3);
        let wt = pseudo_random(cout * cin * 9, 4);
        let mut col = vec![f32::NAN; cin * 9 * n];
        im2col_3x3(&x, cin, g, h, w, &mut col);
        let mut y = vec![0.0; cout * n];
        matmul(cout, n, cin * 9, &wt, &col, n, &mut y, n, false);
        for o in 0..cout {
            for img in 0..g {
                for yy in 0..h {
                    for xx in 0..w {
                        let mut want = 0.0f32;
                        for c in 0..cin {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (sy, sx) = (yy as isize + ky - 1, xx as isize + kx - 1);
                                    if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                        continue;
                                    }
                                    let v = x[c * n + img * h * w + sy as usize * w + sx as usize];
                                    want +=
                                        v * wt[((o * cin + c) * 3 + ky as usize) * 3 + kx as usize];
                                }
                            }
                        }
                        let got = y[o * n + img * h * w + yy * w + xx];
                        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn row_bands_of_im2col_tile_the_full_unfolding() {
        let (c, h, w) = (2, 7, 5);
        let x = pseudo_random(c * h * w, 5);
        let mut full = vec![0.0; c * 9 * h * w];
        im2col_3x3(&x, c, 1, h, w, &mut full);
        for rows in [0..3, 3..7, 0..7, 6..7, 2..2] {
            let len = rows.len() * w;
            let mut band = vec![f32::NAN; c * 9 * len];
            im2col_3x3_rows(&x, h * w, c, h, w, rows.clone(), &mut band, len);
            for r in 0..c * 9 {
                assert_eq!(
                    band[r * len..(r + 1) * len],
                    full[r * h * w + rows.start * w..r * h * w + rows.end * w],
                    "row {r}, band {rows:?}"
                );
            }
        }
    }

    #[test]
    fn pooling_averages_each_2x2_window_after_the_affine_relu() {
        // one channel, two images of 2x4: relu(x - 1)
        let f = AffineRelu {
            scale: vec![1.0],
            shift: vec![-1.0],
        };
        let src: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let mut dst = [0.0f32; 4];
        f.apply_avg_pool_2x2(&src, 16, 2, 2, 4, &mut dst);
        // first window: relu(-1), relu(0), relu(3), relu(4)
        assert_eq!(dst, [7.0 / 4.0, 3.5, 9.5, 11.5]);
    }

    /// Direct convolution of one image `[cin][h][w]` with `[cout][cin][k][k]` over `win`.
    fn naive_conv(
        x: &[f32],
        wt: &[f32],
        cin: usize,
        cout: usize,
        win: &Window,
        depthwise: bool,
    ) -> Vec<f32> {
        let (k, s, d) = (win.kh, win.stride, win.dilation);
        let mut y = vec![0.0f32; cout * win.ho * win.wo];
        for o in 0..cout {
            for oy in 0..win.ho {
                for ox in 0..win.wo {
                    let mut acc = 0.0f32;
                    let chans = if depthwise { o..o + 1 } else { 0..cin };
                    for c in chans {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s + ky * d) as isize - win.pad_top as isize;
                                let ix = (ox * s + kx * d) as isize - win.pad_left as isize;
                                if iy < 0 || ix < 0 || iy >= win.h as isize || ix >= win.w as isize
                                {
                                    continue;
                                }
                                let ci = if depthwise { 0 } else { c };
                                let wv = wt[((o * if depthwise { 1 } else { cin } + ci) * k + ky)
                                    * k
                                    + kx];
                                acc += wv * x[(c * win.h + iy as usize) * win.w + ix as usize];
                            }
                        }
                    }
                    y[(o * win.ho + oy) * win.wo + ox] = acc;
                }
            }
        }
        y
    }

    fn windows() -> Vec<Window> {
        let win = |h, w, k, stride, dilation, pad_top, pad_left, pad_after| {
            let span = (k - 1) * dilation + 1;
            Window {
                h,
                w,
                kh: k,
                kw: k,
                stride,
                dilation,
                pad_top,
                pad_left,
                ho: (h + pad_top + pad_after - span) / stride + 1,
                wo: (w + pad_left + pad_after - span) / stride + 1,
            }
        };
        vec![
            win(9, 7, 3, 1, 1, 1, 1, 1),
            win(9, 8, 3, 2, 1, 0, 0, 1),
            win(11, 10, 7, 2, 1, 3, 3, 3),
            win(6, 7, 5, 1, 1, 2, 2, 2),
            win(9, 9, 5, 2, 1, 1, 1, 2),
            win(8, 9, 1, 2, 1, 0, 0, 0),
            win(7, 7, 3, 1, 2, 2, 2, 2),
            win(2, 3, 5, 1, 1, 2, 2, 2),
        ]
    }

    #[test]
    fn banded_im2col_then_matmul_is_the_direct_convolution() {
        let (cin, cout) = (3, 4);
        for (t, win) in windows().into_iter().enumerate() {
            let x = pseudo_random(cin * win.h * win.w, 7 + t as u64);
            let wt = pseudo_random(cout * cin * win.kh * win.kw, 8);
            let want = naive_conv(&x, &wt, cin, cout, &win, false);
            let k_dim = cin * win.kh * win.kw;
            let n = win.ho * win.wo;
            let mut y = vec![f32::NAN; cout * n];
            for y0 in (0..win.ho).step_by(2) {
                let rows = y0..(y0 + 2).min(win.ho);
                let len = rows.len() * win.wo;
                let mut col = vec![f32::NAN; k_dim * len];
                im2col_rows(&x, win.h * win.w, cin, &win, rows, &mut col, len);
                matmul(
                    cout,
                    len,
                    k_dim,
                    &wt,
                    &col,
                    len,
                    &mut y[y0 * win.wo..],
                    n,
                    false,
                );
            }
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{win:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn depthwise_and_max_pool_planes_are_the_direct_definitions() {
        for (t, win) in windows().into_iter().enumerate() {
            let x = pseudo_random(win.h * win.w, 9 + t as u64);
            let wt = pseudo_random(win.kh * win.kw, 10);
            let want = naive_conv(&x, &wt, 1, 1, &win, true);
            let mut y = vec![f32::NAN; win.ho * win.wo];
            depthwise_plane(&x, &wt, 0.5, &win, &mut Vec::new(), &mut y);
            for (a, b) in y.iter().zip(&want) {
                assert!((a - (b + 0.5)).abs() < 1e-5, "{win:?}: {a} vs {b}");
            }
            max_pool_plane(&x, &win, false, &mut y);
            let mut z = vec![f32::NAN; win.ho * win.wo];
            max_pool_plane(&x, &win, true, &mut z);
            for oy in 0..win.ho {
                for ox in 0..win.wo {
                    let mut m = f32::NEG_INFINITY;
                    let mut padded = false;
                    for ky in 0..win.kh {
                        for kx in 0..win.kw {
                            let iy = (oy * win.stride + ky * win.dilation) as isize
                                - win.pad_top as isize;
                            let ix = (ox * win.stride + kx * win.dilation) as isize
                                - win.pad_left as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < win.h && (ix as usize) < win.w
                            {
                                m = m.max(x[iy as usize * win.w + ix as usize]);
                            } else {
                                padded = true;
                            }
                        }
                    }
                    assert_eq!(y[oy * win.wo + ox], m, "{win:?}");
                    let with_zeros = if padded { m.max(0.0) } else { m };
                    assert_eq!(z[oy * win.wo + ox], with_zeros, "{win:?}, zero padding");
                }
            }
        }
    }

    #[test]
    fn the_epilogue_adds_bias_and_residual_before_the_activation() {
        let mut out = [1.0f32, -2.0, 9.0, 0.0, 3.0, -1.0];
        let res = [0.5f32, 0.5, 0.5, 9.0, -4.0, 1.0, 1.0, 1.0];
        bias_residual_act(
            &mut out,
            3,
            2,
            2,
            Some(&[1.0, -1.0]),
            Some((&res, 4)),
            Activation::Relu6,
        );
        // row 0: 1 + 1 + .5, -2 + 1 + .5 -> 2.5, 0; col 2 untouched; row 1: 0 - 1 - 4, 3 - 1 + 1
        assert_eq!(out, [2.5, 0.0, 9.0, 0.0, 3.0, -1.0]);
        bias_residual_act(&mut out, 3, 2, 3, None, None, Activation::Relu);
        assert_eq!(out, [2.5, 0.0, 9.0, 0.0, 3.0, 0.0]);
    }
}
