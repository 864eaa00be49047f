//! DICE sweeps in one pass over the features. DICE masks of one `mu` and head are
//! nested (`p < p'` keeps a superset), so with the masks ordered from most to fewest
//! kept weights, `M_0 ⊇ M_1 ⊇ ... ⊇ M_K`, each is a sum of disjoint bands
//! `D_l = M_l \ M_{l+1}` (`D_K = M_K`): `(W * M_l) x = sum_{j >= l} (W * D_j) x`. The
//! pass computes the sparse band products from the innermost band outwards and reads
//! the logits of every mask off the running sum, touching each kept weight once per
//! row instead of once per mask.

use ndarray::ArrayView2;
use rayon::prelude::*;

use super::EvalError;
use super::head::{Head64, argmax, energy_of};
use super::masks::DiceMask;
use super::params::ClipValue;
use super::scores::Scored;

/// Samples per kernel tile: the accumulators of one class row of a band (8 AVX-512
/// registers).
const LANES: usize = 64;

/// Features per chunk: a chunk of the transposed tile (`CHUNK x LANES` values, 32 KiB)
/// stays in L1 while every class row of a band passes over it.
const CHUNK: usize = 64;

/// One band `W * D` in compressed rows, split by feature chunk: segment
/// `s = chunk * C + c` holds the weights `val[ptr[s]..ptr[s + 1]]` of class `c` at the
/// feature indices `idx[ptr[s]..ptr[s + 1]]` (all in that chunk).
struct Band {
    ptr: Vec<usize>,
    idx: Vec<u32>,
    val: Vec<f64>,
}

impl Band {
    /// The weights of `head` kept by `keep(c, i)`.
    fn new(head: &Head64, keep: impl Fn(usize, usize) -> bool) -> Self {
        let w = head.weights();
        let mut band = Band {
            ptr: vec![0],
            idx: Vec::new(),
            val: Vec::new(),
        };
        for start in (0..head.width()).step_by(CHUNK) {
            let chunk = start..(start + CHUNK).min(head.width());
            for (c, row) in w.outer_iter().enumerate() {
                for i in chunk.clone().filter(|&i| keep(c, i)) {
                    band.idx
                        .push(u32::try_from(i).expect("feature width fits u32"));
                    band.val.push(row[i]);
                }
                band.ptr.push(band.idx.len());
            }
        }
        band
    }
}

/// `acc[j] += sum_k val[k] * xt[idx[k]][j]` over one class row of a band (`xt`: the
/// block's features transposed, `LANES` samples per feature).
#[inline(always)]
fn row_times_tile<const FUSED: bool>(idx: &[u32], val: &[f64], xt: &[f64], acc: &mut [f64; LANES]) {
    // A local copy keeps the accumulators in registers across the loop.
    let mut sum = *acc;
    for (&i, &w) in idx.iter().zip(val) {
        let x: &[f64; LANES] = xt[i as usize * LANES..][..LANES]
            .try_into()
            .expect("a tile row has LANES values");
        for (a, &x) in sum.iter_mut().zip(x) {
            *a = if FUSED { w.mul_add(x, *a) } else { *a + w * x };
        }
    }
    *acc = sum;
}

/// `zsum[c] += (band row c) . xt` for every class (`zsum`: `C x LANES`), one feature
/// chunk at a time.
#[inline(always)]
fn band_times_tile<const FUSED: bool>(band: &Band, xt: &[f64], zsum: &mut [f64]) {
    let classes = zsum.len() / LANES;
    for (s, segment) in band.ptr.windows(2).enumerate() {
        let c = s % classes;
        let acc: &mut [f64; LANES] = (&mut zsum[c * LANES..(c + 1) * LANES])
            .try_into()
            .expect("LANES accumulators");
        let (a, b) = (segment[0], segment[1]);
        row_times_tile::<FUSED>(&band.idx[a..b], &band.val[a..b], xt, acc);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn band_times_tile_avx512(band: &Band, xt: &[f64], zsum: &mut [f64]) {
    band_times_tile::<true>(band, xt, zsum);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn band_times_tile_avx2(band: &Band, xt: &[f64], zsum: &mut [f64]) {
    band_times_tile::<true>(band, xt, zsum);
}

/// [`band_times_tile`] with the widest vector instructions this CPU has.
fn band_times_tile_dispatch(band: &Band, xt: &[f64], zsum: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected at run time.
            return unsafe { band_times_tile_avx512(band, xt, zsum) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected at run time.
            return unsafe { band_times_tile_avx2(band, xt, zsum) };
        }
    }
    band_times_tile::<false>(band, xt, zsum);
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
/// to rounding.
pub fn dice_sweep(
    features: ArrayView2<f32>,
    head: &Head64,
    masks: &[DiceMask],
    clip: Option<ClipValue>,
) -> Result<Vec<Scored>, EvalError> {
    head.check_features(features)?;
    for mask in masks {
        head.check_shape("DICE mask (C x m) vs head", mask.mask().dim())?;
    }
    let order = nested_order(masks)?;
    let bands: Vec<Band> = order
        .iter()
        .enumerate()
        .map(|(l, &k)| {
            let here = masks[k].mask();
            let next = order.get(l + 1).map(|&k| masks[k].mask());
            Band::new(head, |c, i| {
                here[[c, i]] && !next.is_some_and(|n| n[[c, i]])
            })
        })
        .collect();

    let (n, m, classes) = (features.nrows(), head.width(), head.classes());
    let bias = head.bias();
    let clip = clip.map(ClipValue::get);
    let tiles: Vec<Vec<Vec<(f64, usize)>>> = (0..n.div_ceil(LANES))
        .into_par_iter()
        .map(|tile| {
            let rows = tile * LANES..((tile + 1) * LANES).min(n);
            let mut xt = vec![0.0; m * LANES];
            for (j, r) in rows.clone().enumerate() {
                for (i, &h) in features.row(r).iter().enumerate() {
                    let v = f64::from(h);
                    xt[i * LANES + j] = match clip {
                        Some(c) if v > c => c,
                        _ => v,
                    };
                }
            }
            let mut zsum = vec![0.0; classes * LANES];
            let mut z = ndarray::Array1::<f64>::zeros(classes);
            let mut per_mask = vec![Vec::new(); masks.len()];
            for (band, &k) in bands.iter().zip(&order).rev() {
                band_times_tile_dispatch(band, &xt, &mut zsum);
                per_mask[k] = (0..rows.len())
                    .map(|j| {
                        for (c, zc) in z.iter_mut().enumerate() {
                            *zc = zsum[c * LANES + j] + bias[c];
                        }
                        (energy_of(z.view(), 1.0), argmax(z.view()))
                    })
                    .collect();
            }
            per_mask
        })
        .collect();

    let mut out: Vec<Scored> = (0..masks.len())
        .map(|_| Scored {
            scores: Vec::with_capacity(n),
            predicted: Vec::with_capacity(n),
        })
        .collect();
    for tile in tiles {
        for (scored, rows) in out.iter_mut().zip(tile) {
            for (s, k) in rows {
                scored.scores.push(s);
                scored.predicted.push(k);
            }
        }
    }
    Ok(out)
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
