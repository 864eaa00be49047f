//! DICE sweeps in one pass over the features. DICE masks of one `mu` and head are
//! nested (`p < p'` keeps a superset), so with the masks ordered from most to fewest
//! kept weights, `M_0 ⊇ M_1 ⊇ ... ⊇ M_K`, each is a sum of disjoint bands
//! `D_l = M_l \ M_{l+1}` (`D_K = M_K`): `(W * M_l) x = sum_{j >= l} (W * D_j) x`.
//!
//! [`NestedDice`] stores each class row `c` of the head as its kept weights ordered by
//! band, innermost band first. For a tile of [`LANES`] samples, the pass walks the
//! weights of class `c` once, accumulating `sum_j W[c, i_j] x[i_j]` for all samples of
//! the tile at once, and at the end of band `l` the running sum is logit `c` of mask
//! `M_l` for every sample. Each kept weight is touched once per tile instead of once
//! per mask. Energies and argmaxes are then reduced over classes for all samples of
//! the tile at once (one vector lane per sample).

use ndarray::ArrayView2;
use rayon::prelude::*;

use super::EvalError;
use super::expsum::exp_poly;
use super::head::Head64;
use super::masks::DiceMask;
use super::params::ClipValue;
use super::scores::Scored;

/// Samples per tile: the accumulators of one class are `LANES` values.
const LANES: usize = 64;
/// Features per chunk: the chunk of the transposed tile (`CHUNK x LANES` values) stays in
/// L1 while every class row of a band passes over it.
const CHUNK: usize = 64;

/// `LANES` values aligned to a cache line: one feature of a tile's samples, or one
/// logit of them.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Lanes([f64; LANES]);

impl Lanes {
    const ZERO: Lanes = Lanes([0.0; LANES]);
}

/// Nested DICE masks of one head, laid out for [`NestedDice::score`]: band by band
/// (innermost first), chunk by chunk, the non-empty class segments of the band sorted
/// by length (so that the loop over a segment ends predictably).
pub struct NestedDice {
    /// Mask indices (into the caller's list) from most to fewest kept weights.
    order: Vec<usize>,
    classes: usize,
    width: usize,
    /// `chunk_ends[band * chunks + q]`: end (in segments) of chunk `q` of band `band`
    /// (bands counted from the innermost).
    chunk_ends: Vec<usize>,
    /// Class and end (in `idx` / `val`) of each segment.
    seg_class: Vec<u32>,
    seg_end: Vec<usize>,
    idx: Vec<u32>,
    val: Vec<f64>,
    bias: Vec<f64>,
}

impl NestedDice {
    /// The layout of `masks` (nested, as [`DiceMask::sweep`] builds them) on `head`.
    pub fn new(head: &Head64, masks: &[DiceMask]) -> Result<Self, EvalError> {
        for mask in masks {
            head.check_shape("DICE mask (C x m) vs head", mask.mask().dim())?;
        }
        let order = nested_order(masks)?;
        let (classes, width, k) = (head.classes(), head.width(), masks.len());
        // How many masks keep each weight: its band, counted from the outermost.
        let mut level = vec![0u32; classes * width];
        for mask in masks {
            for (l, &keep) in level.iter_mut().zip(mask.mask()) {
                *l += u32::from(keep);
            }
        }
        let mut nested = NestedDice {
            order,
            classes,
            width,
            chunk_ends: Vec::new(),
            seg_class: Vec::new(),
            seg_end: Vec::new(),
            idx: Vec::new(),
            val: Vec::new(),
            bias: head.bias().to_vec(),
        };
        let w = head.weights();
        for band in (1..=k).rev() {
            for q in (0..width).step_by(CHUNK) {
                let chunk = q..(q + CHUNK).min(width);
                let mut segs: Vec<(usize, usize)> = (0..classes)
                    .map(|c| {
                        let n = level[c * width..][chunk.clone()]
                            .iter()
                            .filter(|&&l| l as usize == band)
                            .count();
                        (n, c)
                    })
                    .filter(|&(n, _)| n > 0)
                    .collect();
                segs.sort_unstable();
                for (_, c) in segs {
                    for i in chunk.clone() {
                        if level[c * width + i] as usize == band {
                            nested.idx.push((i - q) as u32);
                            nested.val.push(w[[c, i]]);
                        }
                    }
                    nested.seg_class.push(c as u32);
                    nested.seg_end.push(nested.idx.len());
                }
                nested.chunk_ends.push(nested.seg_class.len());
            }
        }
        Ok(nested)
    }

    /// DICE (energy, T = 1) of every mask: `energy((W * M) min(h, c) + b)` (no clip when
    /// `clip` is `None`), one [`Scored`] per mask in the order given to [`NestedDice::new`].
    pub fn score(
        &self,
        features: ArrayView2<f32>,
        clip: Option<ClipValue>,
    ) -> Result<Vec<Scored>, EvalError> {
        if features.ncols() != self.width {
            return Err(EvalError::Shape {
                what: "feature columns vs head width m",
                expected: self.width,
                found: features.ncols(),
            });
        }
        let features = features.as_standard_layout();
        let features = features.view();
        let (n, k) = (features.nrows(), self.order.len());
        let clip = clip.map(ClipValue::get);
        let tiles: Vec<TileResult> = (0..n.div_ceil(LANES))
            .into_par_iter()
            .map_init(
                || TileBuffers::new(self.width, self.classes),
                |buffers, tile| {
                    let rows = tile * LANES..((tile + 1) * LANES).min(n);
                    self.score_tile_dispatch(features, rows, clip, buffers)
                },
            )
            .collect();
        let mut out: Vec<Scored> = (0..k)
            .map(|_| Scored {
                scores: Vec::with_capacity(n),
                predicted: Vec::with_capacity(n),
            })
            .collect();
        for (tile, t) in tiles.iter().enumerate() {
            let rows = LANES.min(n - tile * LANES);
            for (band, &mask) in self.order.iter().enumerate() {
                out[mask]
                    .scores
                    .extend_from_slice(&t.energy[band].0[..rows]);
                out[mask]
                    .predicted
                    .extend(t.argmax[band][..rows].iter().map(|&c| c as usize));
            }
        }
        Ok(out)
    }

    /// [`NestedDice::score_tile`] with the widest vector instructions this CPU has.
    fn score_tile_dispatch(
        &self,
        features: ArrayView2<f32>,
        rows: std::ops::Range<usize>,
        clip: Option<f64>,
        buffers: &mut TileBuffers,
    ) -> TileResult {
        with_fused_simd!(|FUSED| self.score_tile::<FUSED>(features, rows, clip, buffers))
    }

    /// Energies and argmaxes of every mask for the samples `rows` (at most `LANES`).
    #[inline(always)]
    fn score_tile<const FUSED: bool>(
        &self,
        features: ArrayView2<f32>,
        rows: std::ops::Range<usize>,
        clip: Option<f64>,
        buffers: &mut TileBuffers,
    ) -> TileResult {
        let TileBuffers { xt, zsum } = buffers;
        transpose_clipped(features, rows, clip, xt);
        let k = self.order.len();
        let chunks = self.width.div_ceil(CHUNK);
        zsum.fill(Lanes::ZERO);
        let mut result = TileResult {
            energy: vec![Lanes::ZERO; k],
            argmax: vec![[0; LANES]; k],
        };
        let (mut seg, mut e) = (0, 0);
        for from_inner in 0..k {
            let band = k - 1 - from_inner;
            for q in 0..chunks {
                let xq = &xt[q * CHUNK..((q + 1) * CHUNK).min(self.width)];
                let seg_end = self.chunk_ends[from_inner * chunks + q];
                for s in seg..seg_end {
                    let c = self.seg_class[s] as usize;
                    let end = self.seg_end[s];
                    segment_times_tile::<FUSED>(
                        &self.idx[e..end],
                        &self.val[e..end],
                        xq,
                        &mut zsum[c],
                    );
                    e = end;
                }
                seg = seg_end;
            }
            (result.energy[band], result.argmax[band]) = energy_argmax::<FUSED>(zsum, &self.bias);
        }
        result
    }
}

/// Per-thread scratch of the sweep: a tile's features transposed (`m` x [`Lanes`]) and
/// the running logits, which after band `l` are those of mask `M_l` (`C` x [`Lanes`]).
struct TileBuffers {
    xt: Vec<Lanes>,
    zsum: Vec<Lanes>,
}

impl TileBuffers {
    fn new(width: usize, classes: usize) -> Self {
        TileBuffers {
            xt: vec![Lanes::ZERO; width],
            zsum: vec![Lanes::ZERO; classes],
        }
    }
}

/// Energies and predicted classes of one tile, per band (mask in nested order).
struct TileResult {
    energy: Vec<Lanes>,
    argmax: Vec<[u32; LANES]>,
}

/// `xt[i][j] = min(h[rows[j], i], clip)` in `f64` (no clip when `None`); lanes past the
/// last row are 0.
fn transpose_clipped(
    features: ArrayView2<f32>,
    rows: std::ops::Range<usize>,
    clip: Option<f64>,
    xt: &mut [Lanes],
) {
    if rows.len() < LANES {
        xt.fill(Lanes::ZERO);
    }
    // Feature-outer: the tile's rows (at most 64 x m floats) stay in L1 while each
    // `xt[i]` is written whole, once.
    let tile: Vec<&[f32]> = rows
        .map(|r| {
            features
                .row(r)
                .to_slice()
                .expect("standard-layout features")
        })
        .collect();
    let c = clip.unwrap_or(f64::INFINITY);
    for (i, x) in xt.iter_mut().enumerate() {
        for (lane, row) in x.0.iter_mut().zip(&tile) {
            let v = f64::from(row[i]);
            *lane = if v > c { c } else { v };
        }
    }
}

/// `acc[j] += sum_e val[e] * xq[idx[e]][j]` over one segment.
#[inline(always)]
fn segment_times_tile<const FUSED: bool>(idx: &[u32], val: &[f64], xq: &[Lanes], acc: &mut Lanes) {
    let mut sum = acc.0;
    for (&i, &w) in idx.iter().zip(val) {
        let x = &xq[i as usize].0;
        for j in 0..LANES {
            sum[j] = if FUSED {
                w.mul_add(x[j], sum[j])
            } else {
                sum[j] + w * x[j]
            };
        }
    }
    acc.0 = sum;
}

/// Per lane `j`: with `z_c = logits[c][j] + bias[c]`, the energy
/// `logsumexp_c z_c = max z + ln sum_c exp(z_c - max z)` and `argmax_c z_c` (ties to the
/// lowest class; a NaN max or an infinite one is the energy itself, as in
/// [`energy_of`](super::head::energy_of)).
// Index loops over the lanes are what the compiler vectorises (one lane per sample).
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn energy_argmax<const FUSED: bool>(logits: &[Lanes], bias: &[f64]) -> (Lanes, [u32; LANES]) {
    let mut max = Lanes([f64::NEG_INFINITY; LANES]);
    let mut best = [0.0; LANES];
    let mut arg = [0u32; LANES];
    for (c, (z, &b)) in logits.iter().zip(bias).enumerate() {
        for j in 0..LANES {
            let v = z.0[j] + b;
            // max_of: NaN propagates; argmax: strictly greater wins, NaN never does
            // (except at class 0, where it stays).
            max.0[j] = if v > max.0[j] || v.is_nan() {
                v
            } else {
                max.0[j]
            };
            let better = c == 0 || v > best[j];
            best[j] = if better { v } else { best[j] };
            arg[j] = if better { c as u32 } else { arg[j] };
        }
    }
    let mut sum = [0.0; LANES];
    for (z, &b) in logits.iter().zip(bias) {
        for j in 0..LANES {
            sum[j] += exp_poly::<FUSED>(z.0[j] + b - max.0[j]);
        }
    }
    let mut energy = Lanes::ZERO;
    for j in 0..LANES {
        let m = max.0[j];
        energy.0[j] = if m == f64::INFINITY || m.is_nan() {
            m
        } else {
            m + sum[j].ln()
        };
    }
    (energy, arg)
}

/// Masks ordered from most to fewest kept weights; an error unless nested.
fn nested_order(masks: &[DiceMask]) -> Result<Vec<usize>, EvalError> {
    let mut order: Vec<usize> = (0..masks.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(masks[k].kept()));
    for pair in order.windows(2) {
        let (outer, inner) = (masks[pair[0]].mask(), masks[pair[1]].mask());
        if outer.iter().zip(inner).any(|(&o, &i)| i && !o) {
            return Err(EvalError::NotNested {
                outer: masks[pair[0]].sparsity().percent(),
                inner: masks[pair[1]].sparsity().percent(),
            });
        }
    }
    Ok(order)
}

/// DICE (energy, T = 1) of every mask in `masks` (nested, as [`DiceMask::sweep`] builds
/// them) in one pass: `energy((W * M) min(h, c) + b)` (no clip when `clip` is `None`),
/// one [`Scored`] per mask in the order given. Equal to calling
/// [`dice`](super::scores::dice) / [`dice_react`](super::scores::dice_react) per mask up
/// to rounding. Build a [`NestedDice`] once to score several sets.
pub fn dice_sweep(
    features: ArrayView2<f32>,
    head: &Head64,
    masks: &[DiceMask],
    clip: Option<ClipValue>,
) -> Result<Vec<Scored>, EvalError> {
    head.check_features(features)?;
    NestedDice::new(head, masks)?.score(features, clip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::params::Sparsity;
    use crate::eval::scores::{dice, dice_react};
    use ndarray::{Array1, Array2};

    fn setup() -> (Array2<f32>, Head64, Array1<f64>) {
        // 100 rows: three full tiles and a partial one.
        let feats =
            Array2::from_shape_fn((100, 37), |(r, i)| ((r * 13 + i * 5) % 17) as f32 * 0.15);
        let w = Array2::from_shape_fn((7, 37), |(c, i)| ((c * 37 + i) as f64 * 0.77).sin());
        let b = Array1::from_shape_fn(7, |c| c as f64 * 0.1 - 0.3);
        let mu = Array1::from_shape_fn(37, |i| 0.05 + ((i * 7) % 11) as f64 * 0.1);
        (feats, Head64::new(w, b).unwrap(), mu)
    }

    #[test]
    fn sweep_equals_one_pass_per_mask() {
        let (f, head, mu) = setup();
        let ps: Vec<Sparsity> = [70.0, 0.0, 10.0, 50.0, 90.0, 95.0]
            .map(|p| Sparsity::new(p).unwrap())
            .to_vec();
        let masks = DiceMask::sweep(mu.view(), &head, &ps).unwrap();
        let clip = ClipValue::new(1.1).unwrap();
        let swept = dice_sweep(f.view(), &head, &masks, None).unwrap();
        let swept_clipped = dice_sweep(f.view(), &head, &masks, Some(clip)).unwrap();
        for ((mask, got), got_c) in masks.iter().zip(&swept).zip(&swept_clipped) {
            let want = dice(f.view(), &head, mask).unwrap();
            let want_c = dice_react(f.view(), &head, mask, clip).unwrap();
            for r in 0..f.nrows() {
                assert!((got.scores[r] - want.scores[r]).abs() < 1e-12);
                assert!((got_c.scores[r] - want_c.scores[r]).abs() < 1e-12);
            }
            assert_eq!(got.predicted, want.predicted);
            assert_eq!(got_c.predicted, want_c.predicted);
        }
    }

    #[test]
    fn masks_that_are_not_nested_are_an_error() {
        let (f, head, mu) = setup();
        let p = Sparsity::new(50.0).unwrap();
        let a = DiceMask::new(mu.view(), &head, p).unwrap();
        let other_mu = mu.mapv(|v| 1.0 / v);
        let b = DiceMask::new(other_mu.view(), &head, Sparsity::new(60.0).unwrap()).unwrap();
        let e = dice_sweep(f.view(), &head, &[a, b], None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "DICE masks p = 50 and p = 60 are not nested (built from different statistics?)"
        );
    }
}
