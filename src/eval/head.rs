//! The linear head in `f64` and the one blockwise pass every score is built on:
//! features (`N x m`, `f32`) -> per row `z = W x + b` -> a few numbers per row, where `x`
//! is the row prepared in `f64` (cast, optionally clipped or masked). Rows go in blocks
//! of 256 through a GEMM, in parallel over blocks, so the `N x C` logits of a
//! whole set never exist at once.

use std::borrow::Cow;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, Zip};
use rayon::prelude::*;

use super::EvalError;
use super::expsum::sum_exp;
use super::params::{ClipValue, Gamma, ScoreKind, Temperature, TopM};
use super::scores::Scored;
use super::shaping::Shaping;

/// Rows per block of the scoring pass (`benches/head_gemm.rs`: 256 is the fastest of
/// 64..512 for m = 2048, C = 1000).
const BLOCK_ROWS: usize = 256;

/// The linear head `z = W h + b` in `f64` (`W`: `C x m`, `b`: `C`).
#[derive(Debug, Clone, PartialEq)]
pub struct Head64 {
    w: Array2<f64>,
    b: Array1<f64>,
}

impl Head64 {
    /// The head from its stored `f32` weights (`fc.weight`, `C x m`) and bias (`C`).
    pub fn from_f32(w: ArrayView2<f32>, b: ArrayView1<f32>) -> Result<Self, EvalError> {
        Self::new(w.mapv(f64::from), b.mapv(f64::from))
    }

    /// The head from `f64` weights and bias.
    pub fn new(w: Array2<f64>, b: Array1<f64>) -> Result<Self, EvalError> {
        if w.nrows() != b.len() {
            return Err(EvalError::Shape {
                what: "head bias length vs weight rows (classes C)",
                expected: w.nrows(),
                found: b.len(),
            });
        }
        Ok(Self {
            w: w.as_standard_layout().into_owned(),
            b,
        })
    }

    /// The weights `W` (`C x m`).
    pub fn weights(&self) -> ArrayView2<'_, f64> {
        self.w.view()
    }

    /// The bias `b` (`C`).
    pub fn bias(&self) -> ArrayView1<'_, f64> {
        self.b.view()
    }

    /// Number of classes `C`.
    pub fn classes(&self) -> usize {
        self.w.nrows()
    }

    /// Feature width `m`.
    pub fn width(&self) -> usize {
        self.w.ncols()
    }

    /// The head with weights `W * M` (`M`: `C x m`, true = kept), same bias.
    ///
    /// # Panics
    /// When `mask` is not `C x m`.
    pub fn masked(&self, mask: ArrayView2<bool>) -> Self {
        assert_eq!(mask.dim(), self.w.dim(), "mask shape vs head shape");
        let w = Zip::from(&self.w)
            .and(mask)
            .map_collect(|&w, &keep| if keep { w } else { 0.0 });
        Self {
            w,
            b: self.b.clone(),
        }
    }

    /// Checks that a mask (or other `C x m` array) named `what` matches this head.
    pub(crate) fn check_shape(
        &self,
        what: &'static str,
        dim: (usize, usize),
    ) -> Result<(), EvalError> {
        for (expected, found) in [(self.classes(), dim.0), (self.width(), dim.1)] {
            if expected != found {
                return Err(EvalError::Shape {
                    what,
                    expected,
                    found,
                });
            }
        }
        Ok(())
    }

    /// Checks that `features` are `N x m` for this head.
    pub fn check_features(&self, features: ArrayView2<f32>) -> Result<(), EvalError> {
        if features.ncols() == self.width() {
            Ok(())
        } else {
            Err(EvalError::Shape {
                what: "feature columns vs head width m",
                expected: self.width(),
                found: features.ncols(),
            })
        }
    }
}

/// A score of one logit row `z` (`C` values); higher = more in-distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LogitScore {
    /// `max softmax(z)`.
    Msp,
    /// `max z`.
    MaxLogit,
    /// `T * logsumexp(z / T)`.
    Energy(Temperature),
    /// `max softmax(z / T)` (ODIN's temperature scaling without input perturbation).
    TempMsp(Temperature),
    /// Minus the entropy, `sum_c p_c log p_c`, `p = softmax(z)`; `clamped` clips `p` to
    /// `[1e-7, 1]` first (pytorch-ood's reading).
    Entropy {
        /// Clip `p` to `[1e-7, 1]` before the logarithm.
        clamped: bool,
    },
    /// GEN: `-sum over the M largest p_j of p_j^gamma (1 - p_j)^gamma` (the GEN
    /// repository); `pytorch_ood` takes the mean instead of the sum and clamps `p` to
    /// `[1e-7, 1 - 1e-7]` (pytorch-ood 0.4.0).
    Gen {
        /// The exponent.
        gamma: Gamma,
        /// How many of the largest probabilities (`None` = all `C`).
        top_m: Option<TopM>,
        /// pytorch-ood's reading.
        pytorch_ood: bool,
    },
}

impl LogitScore {
    /// The score of logits `z`.
    pub fn of(self, z: ArrayView1<f64>) -> f64 {
        match self {
            Self::Msp => max_softmax(z, 1.0),
            Self::MaxLogit => max_of(z),
            Self::Energy(t) => energy_of(z, t.get()),
            Self::TempMsp(t) => max_softmax(z, t.get()),
            Self::Entropy { clamped } => neg_entropy(z, clamped),
            Self::Gen {
                gamma,
                top_m,
                pytorch_ood,
            } => generalized_entropy(z, gamma.get(), top_m, pytorch_ood),
        }
    }

    /// The logit score a [`ScoreKind`] names (after activation shaping): energy at
    /// `T = 1`, MSP, MaxLogit, or GEN with `gamma = 0.1` over all classes.
    pub fn of_kind(kind: ScoreKind) -> Self {
        match kind {
            ScoreKind::Energy => Self::Energy(Temperature::ONE),
            ScoreKind::Msp => Self::Msp,
            ScoreKind::MaxLogit => Self::MaxLogit,
            ScoreKind::Gen => Self::Gen {
                gamma: Gamma::new(0.1).expect("0.1 > 0"),
                top_m: None,
                pytorch_ood: false,
            },
        }
    }
}

/// `softmax(z)` in `f64`, shifted by `max z`.
pub(crate) fn softmax(z: ArrayView1<f64>) -> Vec<f64> {
    let zmax = max_of(z);
    let e: Vec<f64> = z.iter().map(|&v| (v - zmax).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// `sum_c p_c log p_c` with `log p_c = z_c - logsumexp(z)` (exact for tiny `p_c`), or
/// with `p` clipped to `[1e-7, 1]` and `log` of the clipped value.
fn neg_entropy(z: ArrayView1<f64>, clamped: bool) -> f64 {
    if clamped {
        softmax(z)
            .into_iter()
            .map(|p| {
                let p = p.clamp(1e-7, 1.0);
                p * p.ln()
            })
            .sum()
    } else {
        let lse = energy_of(z, 1.0);
        z.iter()
            .map(|&v| {
                let lp = v - lse;
                lp.exp() * lp
            })
            .sum()
    }
}

/// GEN's score, see [`LogitScore::Gen`].
fn generalized_entropy(
    z: ArrayView1<f64>,
    gamma: f64,
    top_m: Option<TopM>,
    pytorch_ood: bool,
) -> f64 {
    let mut p = softmax(z);
    if pytorch_ood {
        p.iter_mut().for_each(|v| *v = v.clamp(1e-7, 1.0 - 1e-7));
    }
    let m = top_m.map_or(p.len(), |m| m.get().min(p.len()));
    p.sort_unstable_by(|a, b| b.total_cmp(a));
    let terms = p[..m]
        .iter()
        .map(|&v| v.powf(gamma) * (1.0 - v).powf(gamma));
    if pytorch_ood {
        -terms.sum::<f64>() / m as f64
    } else {
        -terms.sum::<f64>()
    }
}

/// `max z`; NaN when any value is NaN.
fn max_of(z: ArrayView1<f64>) -> f64 {
    z.fold(
        f64::NEG_INFINITY,
        |m, &v| if v > m || v.is_nan() { v } else { m },
    )
}

/// The values of `z` as one slice (copied only when `z` is strided).
fn contiguous<'a>(z: ArrayView1<'a, f64>) -> Cow<'a, [f64]> {
    match z.to_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(z.to_vec()),
    }
}

/// `T * logsumexp(z / T)`, shifted by `max z` for range safety.
pub(crate) fn energy_of(z: ArrayView1<f64>, t: f64) -> f64 {
    let zmax = max_of(z);
    if zmax == f64::INFINITY || zmax.is_nan() {
        return zmax;
    }
    let scaled_max = zmax / t;
    let z = contiguous(z);
    let sum = if t == 1.0 {
        sum_exp(&z, |v| v - scaled_max)
    } else {
        sum_exp(&z, |v| v / t - scaled_max)
    };
    t * (scaled_max + sum.ln())
}

/// `max softmax(z / T) = 1 / sum_j exp((z_j - max z) / T)`.
fn max_softmax(z: ArrayView1<f64>, t: f64) -> f64 {
    let zmax = max_of(z);
    let z = contiguous(z);
    let sum = if t == 1.0 {
        sum_exp(&z, |v| v - zmax)
    } else {
        sum_exp(&z, |v| (v - zmax) / t)
    };
    1.0 / sum
}

/// Index of the largest value; ties go to the lowest index (NaN never wins).
pub fn argmax(z: ArrayView1<f64>) -> usize {
    let mut best = 0;
    for (j, &v) in z.iter().enumerate() {
        if v > z[best] {
            best = j;
        }
    }
    best
}

/// `x = min(h, c)` elementwise in `f64` (NaN stays NaN); `x = h` without a clip.
pub(crate) fn cast_clipped(h: ArrayView1<f32>, clip: Option<ClipValue>, mut x: ArrayViewMut1<f64>) {
    let c = clip.map_or(f64::INFINITY, ClipValue::get);
    let clipped = |h: f32| {
        let v = f64::from(h);
        if v > c { c } else { v }
    };
    match (h.to_slice(), x.as_slice_mut()) {
        // Contiguous (the usual case): a loop the compiler vectorises.
        (Some(h), Some(x)) => x.iter_mut().zip(h).for_each(|(x, &h)| *x = clipped(h)),
        _ => x.zip_mut_with(&h, |x, &h| *x = clipped(h)),
    }
}

/// `out = x W^T + b` for one block (`x`: `B x m`, `out`: `B x C`).
fn block_logits(x: ArrayView2<f64>, head: &Head64, mut out: ArrayViewMut2<f64>) {
    let dim = out.dim();
    out.assign(&head.b.broadcast(dim).expect("bias broadcasts over rows"));
    let (rows, m) = x.dim();
    let c = head.classes();
    debug_assert_eq!(out.dim(), (rows, c));
    debug_assert!(x.is_standard_layout() && out.is_standard_layout());
    // SAFETY: `x` (rows x m) and `out` (rows x C) are standard-layout views of the sizes
    // and strides given; `W^T` (m x C) is read through `W`'s standard layout (C x m) with
    // row stride 1 and column stride m. `out` does not alias `x` or `W`.
    unsafe {
        gemm::gemm(
            rows,
            c,
            m,
            out.as_mut_ptr(),
            1,
            c as isize,
            true,
            x.as_ptr(),
            1,
            m as isize,
            head.w.as_ptr(),
            m as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The scoring pass: for each feature row `r` in `rows` (all rows when `None`), prepare
/// `x = prepare(r, h_r)` in `f64`, compute `z = W x + b` with `head`, and return
/// `reduce(r, z)`, in the order of `rows`. Blocks of [`BLOCK_ROWS`] rows run in parallel.
pub(crate) fn linear_pass<T, P, R>(
    features: ArrayView2<f32>,
    rows: Option<&[usize]>,
    head: &Head64,
    prepare: P,
    reduce: R,
) -> Vec<T>
where
    T: Send,
    P: Fn(usize, ArrayView1<f32>, ArrayViewMut1<f64>) + Sync,
    R: Fn(usize, ArrayView1<f64>) -> T + Sync,
{
    let n = rows.map_or(features.nrows(), <[usize]>::len);
    let row_at = |i: usize| rows.map_or(i, |r| r[i]);
    let blocks: Vec<std::ops::Range<usize>> = (0..n)
        .step_by(BLOCK_ROWS)
        .map(|s| s..(s + BLOCK_ROWS).min(n))
        .collect();
    let per_block: Vec<Vec<T>> = blocks
        .into_par_iter()
        .map(|range| {
            let mut x = Array2::<f64>::zeros((range.len(), head.width()));
            for (i, xr) in range.clone().zip(x.outer_iter_mut()) {
                let r = row_at(i);
                prepare(r, features.row(r), xr);
            }
            let mut z = Array2::<f64>::zeros((range.len(), head.classes()));
            block_logits(x.view(), head, z.view_mut());
            range
                .zip(z.axis_iter(Axis(0)))
                .map(|(i, zr)| reduce(row_at(i), zr))
                .collect()
        })
        .collect();
    per_block.into_iter().flatten().collect()
}

/// Several logit scores of `z = W shape(h) + b` for every row in one pass, one
/// [`Scored`] per entry of `scores` (with the predicted class `argmax z`). A clip (or
/// no shaping) is [`logit_scores`] itself.
pub fn shaped_logit_scores(
    features: ArrayView2<f32>,
    head: &Head64,
    shaping: Option<Shaping>,
    scores: &[LogitScore],
) -> Result<Vec<Scored>, EvalError> {
    match shaping {
        None => logit_scores(features, head, None, scores),
        Some(Shaping::Clip(c)) => logit_scores(features, head, Some(c), scores),
        Some(shaping) => {
            head.check_features(features)?;
            let rows = linear_pass(
                features,
                None,
                head,
                |_, h, x| shaping.apply(h, x),
                |_, z| {
                    let values: Vec<f64> = scores.iter().map(|s| s.of(z)).collect();
                    (values, argmax(z))
                },
            );
            Ok(split_scores(rows, scores.len()))
        }
    }
}

/// Per-row `(values, predicted)` into one [`Scored`] per score.
fn split_scores(rows: Vec<(Vec<f64>, usize)>, n: usize) -> Vec<Scored> {
    let predicted: Vec<usize> = rows.iter().map(|r| r.1).collect();
    (0..n)
        .map(|j| Scored {
            scores: rows.iter().map(|r| r.0[j]).collect(),
            predicted: predicted.clone(),
        })
        .collect()
}

/// Several logit scores of `z = W min(h, c) + b` (no clip when `clip` is `None`) for
/// every row in one pass over the features: one [`Scored`] per entry of `scores`, each
/// with the rows' predicted class `argmax z`.
pub fn logit_scores(
    features: ArrayView2<f32>,
    head: &Head64,
    clip: Option<ClipValue>,
    scores: &[LogitScore],
) -> Result<Vec<Scored>, EvalError> {
    head.check_features(features)?;
    let rows = linear_pass(
        features,
        None,
        head,
        |_, h, x| cast_clipped(h, clip, x),
        |_, z| {
            let values: Vec<f64> = scores.iter().map(|s| s.of(z)).collect();
            (values, argmax(z))
        },
    );
    Ok(split_scores(rows, scores.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, s};

    fn t(v: f64) -> Temperature {
        Temperature::new(v).unwrap()
    }

    #[test]
    fn logit_scores_of_one_row() {
        let z = array![1.0, 3.0, 2.0];
        let lse = (1f64.exp() + 3f64.exp() + 2f64.exp()).ln();
        assert!((LogitScore::Energy(t(1.0)).of(z.view()) - lse).abs() < 1e-15);
        assert!((LogitScore::Msp.of(z.view()) - (3.0 - lse).exp()).abs() < 1e-15);
        assert_eq!(LogitScore::MaxLogit.of(z.view()), 3.0);
        let lse10 = (0.1f64.exp() + 0.3f64.exp() + 0.2f64.exp()).ln();
        assert!((LogitScore::Energy(t(10.0)).of(z.view()) - 10.0 * lse10).abs() < 1e-14);
        assert!((LogitScore::TempMsp(t(10.0)).of(z.view()) - (0.3 - lse10).exp()).abs() < 1e-15);
        // Energy is shift-safe: huge logits do not overflow.
        let big = array![1000.0, 1000.0];
        assert!((LogitScore::Energy(t(1.0)).of(big.view()) - (1000.0 + 2f64.ln())).abs() < 1e-12);
        assert_eq!(LogitScore::Msp.of(big.view()), 0.5);
    }

    #[test]
    fn argmax_ties_go_to_the_lowest_index() {
        assert_eq!(argmax(array![0.0, 2.0, 2.0, 1.0].view()), 1);
        assert_eq!(argmax(array![5.0, 5.0].view()), 0);
        assert_eq!(argmax(array![f64::NAN, 1.0].view()), 0);
        assert!(
            LogitScore::MaxLogit
                .of(array![1.0, f64::NAN].view())
                .is_nan()
        );
        assert!(
            LogitScore::Energy(t(1.0))
                .of(array![f64::NAN, 1.0].view())
                .is_nan()
        );
    }

    #[test]
    fn head_pass_matches_naive_logits_and_clip() {
        // 300 rows (more than one block) x 5 features, 3 classes.
        let w = Array2::from_shape_fn((3, 5), |(c, i)| (c as f64 - 1.0) * 0.3 + i as f64 * 0.11);
        let b = array![0.5, -0.25, 0.0];
        let head = Head64::new(w.clone(), b.clone()).unwrap();
        let feats = Array2::from_shape_fn((300, 5), |(r, i)| ((r * 7 + i * 3) % 11) as f32 * 0.25);
        let clip = ClipValue::new(1.5).unwrap();
        let got = logit_scores(
            feats.view(),
            &head,
            Some(clip),
            &[LogitScore::MaxLogit, LogitScore::Energy(t(1.0))],
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        for r in 0..300 {
            let x = feats.row(r).mapv(|v| f64::from(v).min(1.5));
            let z = w.dot(&x) + &b;
            assert!((got[0].scores[r] - z.fold(f64::MIN, |m, &v| m.max(v))).abs() < 1e-12);
            assert!((got[1].scores[r] - energy_of(z.view(), 1.0)).abs() < 1e-12);
            assert_eq!(got[0].predicted[r], argmax(z.view()));
            assert_eq!(got[1].predicted[r], argmax(z.view()));
        }
        let bad = Array2::<f32>::zeros((2, 4));
        assert!(logit_scores(bad.view(), &head, None, &[]).is_err());
    }

    #[test]
    fn masked_head_zeroes_weights() {
        let head = Head64::new(array![[1.0, 2.0], [3.0, 4.0]], array![0.0, 1.0]).unwrap();
        let m = array![[true, false], [false, true]];
        let masked = head.masked(m.view());
        assert_eq!(masked.weights(), array![[1.0, 0.0], [0.0, 4.0]]);
        assert_eq!(masked.bias(), head.bias());
        assert_eq!(head.weights().slice(s![.., 0]), array![1.0, 3.0]);
    }
}
