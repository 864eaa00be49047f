//! The post-hoc scores of `docs/methods.md`, one function each, built on the blockwise
//! head pass. Every function takes the cached `f32` features (`N x m`) and computes in
//! `f64`; it returns the scores (higher = more in-distribution) and, per row, the class
//! predicted by the logits that score uses (for the ID accuracy).

use ndarray::{ArrayView1, ArrayView2};
use rayon::prelude::*;

use super::EvalError;
use super::head::{Head64, LogitScore, argmax, cast_clipped, energy_of, linear_pass, logit_scores};
use super::masks::{DiceMask, HimplosMask, LineMasks};
use super::params::{ClipValue, Temperature};

/// Per-row scores and predicted classes of one method.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The score of each row.
    pub scores: Vec<f64>,
    /// `argmax` of the logits the score uses (ties to the lowest index).
    pub predicted: Vec<usize>,
}

impl FromIterator<(f64, usize)> for Scored {
    fn from_iter<I: IntoIterator<Item = (f64, usize)>>(iter: I) -> Self {
        let (scores, predicted) = iter.into_iter().unzip();
        Self { scores, predicted }
    }
}

/// `score(W min(h, c) + b)` for every row (no clip when `clip` is `None`).
fn head_score(
    features: ArrayView2<f32>,
    head: &Head64,
    clip: Option<ClipValue>,
    score: LogitScore,
) -> Result<Scored, EvalError> {
    Ok(logit_scores(features, head, clip, &[score])?.remove(0))
}

/// MSP: `max softmax(W h + b)`.
pub fn msp(features: ArrayView2<f32>, head: &Head64) -> Result<Scored, EvalError> {
    head_score(features, head, None, LogitScore::Msp)
}

/// MaxLogit: `max (W h + b)`.
pub fn maxlogit(features: ArrayView2<f32>, head: &Head64) -> Result<Scored, EvalError> {
    head_score(features, head, None, LogitScore::MaxLogit)
}

/// Energy: `T * logsumexp((W h + b) / T)`.
pub fn energy(
    features: ArrayView2<f32>,
    head: &Head64,
    t: Temperature,
) -> Result<Scored, EvalError> {
    head_score(features, head, None, LogitScore::Energy(t))
}

/// Temperature-scaled MSP: `max softmax((W h + b) / T)`.
pub fn temp_msp(
    features: ArrayView2<f32>,
    head: &Head64,
    t: Temperature,
) -> Result<Scored, EvalError> {
    head_score(features, head, None, LogitScore::TempMsp(t))
}

/// ReAct: energy (T = 1) of `W min(h, c) + b`.
pub fn react(
    features: ArrayView2<f32>,
    head: &Head64,
    clip: ClipValue,
) -> Result<Scored, EvalError> {
    head_score(
        features,
        head,
        Some(clip),
        LogitScore::Energy(Temperature::ONE),
    )
}

/// DICE: energy (T = 1) of `(W * M) h + b`.
pub fn dice(
    features: ArrayView2<f32>,
    head: &Head64,
    mask: &DiceMask,
) -> Result<Scored, EvalError> {
    head.check_shape("DICE mask (C x m) vs head", mask.mask().dim())?;
    energy(features, &mask.apply(head), Temperature::ONE)
}

/// DICE + ReAct: ReAct's clipping with DICE's masked head, energy of
/// `(W * M) min(h, c) + b`.
pub fn dice_react(
    features: ArrayView2<f32>,
    head: &Head64,
    mask: &DiceMask,
    clip: ClipValue,
) -> Result<Scored, EvalError> {
    head.check_shape("DICE mask (C x m) vs head", mask.mask().dim())?;
    react(features, &mask.apply(head), clip)
}

/// Row indices grouped by predicted class: `groups[k]` holds the rows with `k`.
fn rows_by_class(predicted: &[usize], classes: usize) -> Vec<Vec<usize>> {
    let mut groups = vec![Vec::new(); classes];
    for (r, &k) in predicted.iter().enumerate() {
        groups[k].push(r);
    }
    groups
}

/// Runs `per_class(k, rows)` for each non-empty class group (in parallel) and puts the
/// results back in row order.
fn scatter_by_class(
    n: usize,
    groups: &[Vec<usize>],
    per_class: impl Fn(usize, &[usize]) -> Vec<(f64, usize)> + Sync,
) -> Scored {
    let results: Vec<Vec<(f64, usize)>> = groups
        .par_iter()
        .enumerate()
        .map(|(k, rows)| {
            if rows.is_empty() {
                Vec::new()
            } else {
                per_class(k, rows)
            }
        })
        .collect();
    let mut out = vec![(f64::NAN, 0); n];
    for (rows, values) in groups.iter().zip(results) {
        for (&r, v) in rows.iter().zip(values) {
            out[r] = v;
        }
    }
    out.into_iter().collect()
}

/// LINe: `h' = min(h, clip)`, `k = argmax(W h' + b)`,
/// `z = (W * B[k]) (h' * A[k]) + b`, energy (T = 1). Samples are grouped by `k`, so
/// only one class head `W * B[k] * A[k]` exists at a time.
pub fn line(
    features: ArrayView2<f32>,
    head: &Head64,
    clip: ClipValue,
    masks: &LineMasks,
) -> Result<Scored, EvalError> {
    head.check_shape("LINe masks (C x m) vs head", masks.activation_mask().dim())?;
    let first = react(features, head, clip)?;
    let groups = rows_by_class(&first.predicted, head.classes());
    Ok(scatter_by_class(features.nrows(), &groups, |k, rows| {
        let class_head = masks.class_head(head, k);
        linear_pass(
            features,
            Some(rows),
            &class_head,
            |_, h, x| cast_clipped(h, Some(clip), x),
            |_, z| (energy_of(z, 1.0), argmax(z)),
        )
    }))
}

/// Cosine similarity `a . b / (max(|a|, eps) * max(|b|, eps))`, `eps = 1e-8` (PyTorch's
/// `F.cosine_similarity`).
fn cosine(a: ArrayView1<f32>, b: ArrayView1<f64>) -> f64 {
    const EPS: f64 = 1e-8;
    let (mut dot, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let x = f64::from(x);
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    dot / (aa.sqrt().max(EPS) * bb.sqrt().max(EPS))
}

/// HIMPLoS: `k = argmax(W h + b)` (plain head, unclipped), `g = min(h * Mh[k], clip)`,
/// `z = (W g + b) * cos(h, mu_k)`, score `T * logsumexp(z / T)`; `prototypes` are the
/// ID-train class means `mu_c` (`C x m`).
pub fn himplos(
    features: ArrayView2<f32>,
    head: &Head64,
    mask: &HimplosMask,
    clip: ClipValue,
    t: Temperature,
    prototypes: ArrayView2<f64>,
) -> Result<Scored, EvalError> {
    head.check_shape("HIMPLoS prototypes (C x m) vs head", prototypes.dim())?;
    head.check_shape("HIMPLoS mask (C x m) vs head", mask.mask().dim())?;
    let plain = maxlogit(features, head)?;
    let k_of = &plain.predicted;
    let mh = mask.mask();
    // min(h * Mh[k], c) = Mh[k] * min(h, c) because c >= 0.
    Ok(linear_pass(
        features,
        None,
        head,
        |r, h, mut x| {
            cast_clipped(h, Some(clip), x.view_mut());
            x.zip_mut_with(&mh.row(k_of[r]), |x, &keep| {
                if !keep {
                    *x = 0.0;
                }
            });
        },
        |r, z| {
            let z = &z * cosine(features.row(r), prototypes.row(k_of[r]));
            (energy_of(z.view(), t.get()), argmax(z.view()))
        },
    )
    .into_iter()
    .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::params::{LinePercentile, Sparsity};
    use ndarray::{Array1, Array2, array};

    fn setup() -> (Array2<f32>, Head64) {
        let feats = Array2::from_shape_fn((40, 6), |(r, i)| ((r * 5 + i * 7) % 13) as f32 * 0.2);
        let w = Array2::from_shape_fn((4, 6), |(c, i)| ((c * 6 + i) as f64 * 1.3).sin());
        let head = Head64::new(w, array![0.1, -0.2, 0.3, 0.0]).unwrap();
        (feats, head)
    }

    fn logits(head: &Head64, x: &Array1<f64>) -> Array1<f64> {
        head.weights().dot(x) + head.bias()
    }

    fn clip(c: f64) -> ClipValue {
        ClipValue::new(c).unwrap()
    }

    #[test]
    fn simple_scores_match_their_formulas() {
        let (f, head) = setup();
        let t10 = Temperature::new(10.0).unwrap();
        let (e, m, s, tm, r) = (
            energy(f.view(), &head, Temperature::ONE).unwrap(),
            maxlogit(f.view(), &head).unwrap(),
            msp(f.view(), &head).unwrap(),
            temp_msp(f.view(), &head, t10).unwrap(),
            react(f.view(), &head, clip(1.0)).unwrap(),
        );
        for row in 0..f.nrows() {
            let x = f.row(row).mapv(f64::from);
            let z = logits(&head, &x);
            let lse = z.mapv(f64::exp).sum().ln();
            assert!((e.scores[row] - lse).abs() < 1e-12);
            assert!(
                (s.scores[row] - (z.fold(f64::MIN, |a, &b| a.max(b)) - lse).exp()).abs() < 1e-12
            );
            assert!((m.scores[row] - z.fold(f64::MIN, |a, &b| a.max(b))).abs() < 1e-12);
            let lse10 = (&z / 10.0).mapv(f64::exp).sum().ln();
            let zmax = z.fold(f64::MIN, |a, &b| a.max(b));
            assert!((tm.scores[row] - (zmax / 10.0 - lse10).exp()).abs() < 1e-12);
            assert_eq!(e.predicted[row], argmax(z.view()));
            let zc = logits(&head, &x.mapv(|v| v.min(1.0)));
            assert!((r.scores[row] - zc.mapv(f64::exp).sum().ln()).abs() < 1e-12);
            assert_eq!(r.predicted[row], argmax(zc.view()));
        }
    }

    #[test]
    fn dice_and_dice_react_use_the_masked_head() {
        let (f, head) = setup();
        let mu = Array1::from_shape_fn(6, |i| 0.2 + 0.1 * i as f64);
        let mask = DiceMask::new(mu.view(), &head, Sparsity::new(50.0).unwrap()).unwrap();
        let masked = mask.apply(&head);
        let d = dice(f.view(), &head, &mask).unwrap();
        let dr = dice_react(f.view(), &head, &mask, clip(0.8)).unwrap();
        for row in 0..f.nrows() {
            let x = f.row(row).mapv(f64::from);
            let z = logits(&masked, &x);
            assert!((d.scores[row] - z.mapv(f64::exp).sum().ln()).abs() < 1e-12);
            let zc = logits(&masked, &x.mapv(|v| v.min(0.8)));
            assert!((dr.scores[row] - zc.mapv(f64::exp).sum().ln()).abs() < 1e-12);
            assert_eq!(dr.predicted[row], argmax(zc.view()));
        }
        let plain = DiceMask::new(mu.view(), &head, Sparsity::new(0.0).unwrap()).unwrap();
        assert_eq!(
            dice(f.view(), &head, &plain).unwrap(),
            energy(f.view(), &head, Temperature::ONE).unwrap()
        );
    }

    #[test]
    fn mismatched_masks_are_errors() {
        let (f, head) = setup();
        let other = Head64::new(Array2::ones((3, 6)), Array1::zeros(3)).unwrap();
        let mask = HimplosMask::new(&other, Sparsity::new(50.0).unwrap()).unwrap();
        let protos = Array2::zeros((4, 6));
        let e = himplos(
            f.view(),
            &head,
            &mask,
            clip(1.0),
            Temperature::ONE,
            protos.view(),
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "HIMPLoS mask (C x m) vs head: expected 4, found 3"
        );
        let mu = Array1::ones(6);
        let dmask = DiceMask::new(mu.view(), &other, Sparsity::new(50.0).unwrap()).unwrap();
        assert!(dice(f.view(), &head, &dmask).is_err());
    }

    #[test]
    fn line_matches_the_per_sample_definition() {
        let (f, head) = setup();
        let s = Array2::from_shape_fn((4, 6), |(c, i)| ((c + 2 * i) as f64 * 0.9).cos() * 0.5);
        let pa = LinePercentile::activation(50.0).unwrap();
        let pw = LinePercentile::weight(40.0).unwrap();
        let masks = LineMasks::new(s.view(), &head, pa, pw).unwrap();
        let got = line(f.view(), &head, clip(1.2), &masks).unwrap();
        let a = masks.activation_mask();
        for row in 0..f.nrows() {
            let x = f.row(row).mapv(|v| f64::from(v).min(1.2));
            let k = argmax(logits(&head, &x).view());
            let b = masks.weight_mask(k);
            let wb = ndarray::Zip::from(head.weights())
                .and(&b)
                .map_collect(|&w, &keep| if keep { w } else { 0.0 });
            let xa = ndarray::Zip::from(&x)
                .and(a.row(k))
                .map_collect(|&v, &keep| if keep { v } else { 0.0 });
            let z = wb.dot(&xa) + head.bias();
            assert!((got.scores[row] - z.mapv(f64::exp).sum().ln()).abs() < 1e-12);
            assert_eq!(got.predicted[row], argmax(z.view()));
        }
    }

    #[test]
    fn himplos_matches_the_per_sample_definition() {
        let (f, head) = setup();
        let mask = HimplosMask::new(&head, Sparsity::new(60.0).unwrap()).unwrap();
        let protos = Array2::from_shape_fn((4, 6), |(c, i)| 0.5 + ((c * 3 + i) % 5) as f64 * 0.3);
        let t = Temperature::new(2.0).unwrap();
        let got = himplos(f.view(), &head, &mask, clip(1.6), t, protos.view()).unwrap();
        for row in 0..f.nrows() {
            let h = f.row(row).mapv(f64::from);
            let k = argmax(logits(&head, &h).view());
            let g = ndarray::Zip::from(&h)
                .and(mask.mask().row(k))
                .map_collect(|&v, &keep| (if keep { v } else { 0.0 }).min(1.6));
            let mu = protos.row(k);
            let cos = h.dot(&mu) / (h.dot(&h).sqrt() * mu.dot(&mu).sqrt());
            let z = logits(&head, &g) * cos;
            let want = 2.0 * (&z / 2.0).mapv(f64::exp).sum().ln();
            assert!((got.scores[row] - want).abs() < 1e-12, "row {row}");
            assert_eq!(got.predicted[row], argmax(z.view()));
        }
    }
}
