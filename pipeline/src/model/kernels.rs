//! CPU kernels of the inference engine ([`super::cpu::CpuDenseNet`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
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
}
