//! Head masks (all statistics in `f64`, percentiles as numpy's linear `np.percentile`):
//! DICE's contribution mask, LINe's activation and weight masks, HIMPLoS's row-wise head
//! mask.

use ndarray::{Array2, ArrayView1, ArrayView2, Axis, Zip};
use rayon::prelude::*;

use super::EvalError;
use super::head::Head64;
use super::params::{LinePercentile, Sparsity};
use posthoc_cache::percentile::{percentile, percentile_sorted, sort_for_percentiles};

fn check_dim(what: &'static str, expected: usize, found: usize) -> Result<(), EvalError> {
    if expected == found {
        Ok(())
    } else {
        Err(EvalError::Shape {
            what,
            expected,
            found,
        })
    }
}

/// `percentile(values, q)` of a non-empty set named `what`.
fn percentile_of(what: &'static str, mut values: Vec<f64>, q: f64) -> Result<f64, EvalError> {
    percentile(&mut values, q).ok_or(EvalError::Empty { what })
}

/// DICE (Sun & Li, ECCV 2022): `V = mu[None, :] * W`, `t = percentile(V, p)` over all
/// `C * m` entries, `M = V > t`. `p = 0` is the plain head (every weight kept, no `t`).
#[derive(Debug, Clone, PartialEq)]
pub struct DiceMask {
    sparsity: Sparsity,
    mask: Array2<bool>,
    threshold: Option<f64>,
    kept: usize,
}

impl DiceMask {
    /// The mask for sparsity `p` from the ID-train feature mean `mu` (length `m`).
    pub fn new(mu: ArrayView1<f64>, head: &Head64, p: Sparsity) -> Result<Self, EvalError> {
        Ok(Self::sweep(mu, head, &[p])?.remove(0))
    }

    /// The masks for several sparsities, sorting the contributions `V` once.
    pub fn sweep(
        mu: ArrayView1<f64>,
        head: &Head64,
        ps: &[Sparsity],
    ) -> Result<Vec<Self>, EvalError> {
        check_dim(
            "DICE feature mean length vs head width m",
            head.width(),
            mu.len(),
        )?;
        let v = contributions(mu, head.weights());
        let mut sorted: Vec<f64> = v.iter().copied().collect();
        let finite = sort_for_percentiles(&mut sorted);
        Ok(ps
            .iter()
            .map(|&p| {
                let threshold = (!p.is_plain()).then(|| {
                    if finite {
                        percentile_sorted(&sorted, p.percent()).expect("C * m > 0 values")
                    } else {
                        f64::NAN
                    }
                });
                let mask = match threshold {
                    None => Array2::from_elem(v.dim(), true),
                    Some(t) => v.mapv(|x| x > t),
                };
                let kept = mask.iter().filter(|&&k| k).count();
                Self {
                    sparsity: p,
                    mask,
                    threshold,
                    kept,
                }
            })
            .collect())
    }

    /// The sparsity `p` this mask was built for.
    pub fn sparsity(&self) -> Sparsity {
        self.sparsity
    }

    /// `M` (`C x m`, true = weight kept).
    pub fn mask(&self) -> ArrayView2<'_, bool> {
        self.mask.view()
    }

    /// `t = percentile(V, p)`; `None` for the plain head (`p = 0`).
    pub fn threshold(&self) -> Option<f64> {
        self.threshold
    }

    /// Number of kept weights (`C * m` for the plain head).
    pub fn kept(&self) -> usize {
        self.kept
    }

    /// The head with weights `W * M`.
    pub fn apply(&self, head: &Head64) -> Head64 {
        head.masked(self.mask.view())
    }
}

/// `V = mu[None, :] * W`.
fn contributions(mu: ArrayView1<f64>, w: ArrayView2<f64>) -> Array2<f64> {
    &w * &mu.insert_axis(Axis(0))
}

/// LINe (Ahn et al., CVPR 2023) masks from the class-wise Shapley approximation
/// `S = mu_c * W` (`C x m`): activation masks `A[c] = S[c, :] > percentile(S[c, :], p_a)`
/// and weight masks `B[c] = P_c > percentile(P_c, p_w)` with `P_c = |S[c, :]|[None, :] * W`
/// (`C x m`, percentile over all `C * m` entries). `B[c]` is built on demand
/// ([`LineMasks::weight_mask`]); only its thresholds are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct LineMasks {
    activation: Array2<bool>,
    a_thresholds: Vec<f64>,
    abs_s: Array2<f64>,
    w: Array2<f64>,
    b_thresholds: Vec<f64>,
}

impl LineMasks {
    /// The masks from `S` (`C x m`) and the head `W` it was derived from.
    pub fn new(
        s: ArrayView2<f64>,
        head: &Head64,
        p_a: LinePercentile,
        p_w: LinePercentile,
    ) -> Result<Self, EvalError> {
        check_dim("LINe S rows vs head classes C", head.classes(), s.nrows())?;
        check_dim("LINe S columns vs head width m", head.width(), s.ncols())?;
        let a_thresholds = s
            .outer_iter()
            .map(|row| percentile_of("percentile of a LINe S row", row.to_vec(), p_a.percent()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut activation = Array2::from_elem(s.dim(), false);
        for ((mut a, row), &t) in activation
            .outer_iter_mut()
            .zip(s.outer_iter())
            .zip(&a_thresholds)
        {
            a.zip_mut_with(&row, |a, &v| *a = v > t);
        }
        let abs_s = s.mapv(f64::abs);
        let w = head.weights().to_owned();
        let b_thresholds = (0..head.classes())
            .into_par_iter()
            .map(|c| {
                let p = weight_products(abs_s.row(c), w.view());
                percentile_of(
                    "percentile of a LINe weight product",
                    p.into_raw_vec_and_offset().0,
                    p_w.percent(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            activation,
            a_thresholds,
            abs_s,
            w,
            b_thresholds,
        })
    }

    /// `A` (`C x m`): row `c` is the activation mask `A[c]`.
    pub fn activation_mask(&self) -> ArrayView2<'_, bool> {
        self.activation.view()
    }

    /// `B[c]` (`C x m`): the weight mask used for samples predicted as class `c`.
    pub fn weight_mask(&self, c: usize) -> Array2<bool> {
        let t = self.b_thresholds[c];
        weight_products(self.abs_s.row(c), self.w.view()).mapv(|v| v > t)
    }

    /// The head LINe applies to samples predicted as class `c`: weights
    /// `W * B[c] * A[c][None, :]` (the activation mask folded into the columns), bias `b`.
    pub fn class_head(&self, head: &Head64, c: usize) -> Head64 {
        let t = self.b_thresholds[c];
        let a = self.activation.row(c);
        let w = Zip::from(&weight_products(self.abs_s.row(c), self.w.view()))
            .and(head.weights())
            .and_broadcast(a.insert_axis(Axis(0)))
            .map_collect(|&p, &w, &a| if p > t && a { w } else { 0.0 });
        Head64::new(w, head.bias().to_owned()).expect("same shapes as the head")
    }

    /// Per class `c`: `percentile(S[c, :], p_a)`.
    pub fn activation_thresholds(&self) -> &[f64] {
        &self.a_thresholds
    }

    /// Per class `c`: `percentile(|S[c, :]|[None, :] * W, p_w)`.
    pub fn weight_thresholds(&self) -> &[f64] {
        &self.b_thresholds
    }
}

/// `P_c = |S[c, :]|[None, :] * W`.
fn weight_products(abs_s_row: ArrayView1<f64>, w: ArrayView2<f64>) -> Array2<f64> {
    &w * &abs_s_row.insert_axis(Axis(0))
}

/// HIMPLoS head mask, row-wise: `Mh[c, i] = W[c, i] >= percentile(W[c, :], p)`.
#[derive(Debug, Clone, PartialEq)]
pub struct HimplosMask {
    mask: Array2<bool>,
    thresholds: Vec<f64>,
}

impl HimplosMask {
    /// The mask of `head` for percentile `p`.
    pub fn new(head: &Head64, p: Sparsity) -> Result<Self, EvalError> {
        let w = head.weights();
        let thresholds = w
            .outer_iter()
            .map(|row| percentile_of("percentile of a head weight row", row.to_vec(), p.percent()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut mask = Array2::from_elem(w.dim(), false);
        for ((mut m, row), &t) in mask.outer_iter_mut().zip(w.outer_iter()).zip(&thresholds) {
            m.zip_mut_with(&row, |m, &v| *m = v >= t);
        }
        Ok(Self { mask, thresholds })
    }

    /// `Mh` (`C x m`).
    pub fn mask(&self) -> ArrayView2<'_, bool> {
        self.mask.view()
    }

    /// Per class `c`: `percentile(W[c, :], p)`.
    pub fn thresholds(&self) -> &[f64] {
        &self.thresholds
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn head(w: Array2<f64>) -> Head64 {
        let c = w.nrows();
        Head64::new(w, Array1::zeros(c)).unwrap()
    }
    use ndarray::Array1;

    #[test]
    fn dice_mask_keeps_contributions_strictly_above_the_percentile() {
        let h = head(array![[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]]);
        let mu = array![2.0, 0.5, 1.0];
        // V = [[2, -1, 3], [1, 2, -1]]; sorted -1 -1 1 2 2 3; p = 50: v = 2.5 -> 1 + 0.5 = 1.5.
        let m = DiceMask::new(mu.view(), &h, Sparsity::new(50.0).unwrap()).unwrap();
        assert_eq!(m.threshold(), Some(1.5));
        assert_eq!(m.mask(), array![[true, false, true], [false, true, false]]);
        assert_eq!(m.kept(), 3);
        // p = 60: v = 3 -> t = 2 exactly; ties with t are dropped (strict >).
        let m = DiceMask::new(mu.view(), &h, Sparsity::new(60.0).unwrap()).unwrap();
        assert_eq!(m.threshold(), Some(2.0));
        assert_eq!(m.kept(), 1);
        let plain = DiceMask::new(mu.view(), &h, Sparsity::new(0.0).unwrap()).unwrap();
        assert_eq!((plain.threshold(), plain.kept()), (None, 6));
        assert_eq!(plain.apply(&h), h);
        let bad = array![1.0, 2.0];
        assert!(DiceMask::new(bad.view(), &h, Sparsity::new(0.0).unwrap()).is_err());
    }

    #[test]
    fn dice_sweep_masks_are_nested() {
        let h = head(Array2::from_shape_fn((4, 9), |(c, i)| {
            ((c * 9 + i) as f64 * 0.7).sin()
        }));
        let mu = Array1::from_shape_fn(9, |i| 0.1 + i as f64 * 0.2);
        let ps: Vec<Sparsity> = [0.0, 10.0, 50.0, 90.0]
            .map(|p| Sparsity::new(p).unwrap())
            .to_vec();
        let masks = DiceMask::sweep(mu.view(), &h, &ps).unwrap();
        for pair in masks.windows(2) {
            assert!(pair[0].kept() >= pair[1].kept());
            Zip::from(pair[0].mask())
                .and(pair[1].mask())
                .for_each(|&a, &b| assert!(a || !b));
        }
        assert_eq!(masks[2], DiceMask::new(mu.view(), &h, ps[2]).unwrap());
    }

    #[test]
    fn line_masks_follow_the_definition() {
        let w = array![[1.0, -2.0, 0.5], [0.25, 1.0, -1.0]];
        let h = Head64::new(w.clone(), array![0.0, 0.0]).unwrap();
        let s = array![[0.5, 2.0, -1.0], [3.0, -0.5, 1.0]];
        let pa = LinePercentile::activation(50.0).unwrap();
        let pw = LinePercentile::weight(50.0).unwrap();
        let m = LineMasks::new(s.view(), &h, pa, pw).unwrap();
        // A: row medians 0.5 and 1.0, strict >.
        assert_eq!(m.activation_thresholds(), &[0.5, 1.0]);
        assert_eq!(
            m.activation_mask(),
            array![[false, true, false], [true, false, false]]
        );
        // B[0]: |S[0]| = [0.5, 2, 1]; P = [[0.5, -4, 0.5], [0.125, 2, -1]];
        // sorted -4 -1 0.125 0.5 0.5 2 -> median (0.125 + 0.5) / 2 = 0.3125.
        assert_eq!(m.weight_thresholds()[0], 0.3125);
        assert_eq!(
            m.weight_mask(0),
            array![[true, false, true], [false, true, false]]
        );
        // The class head folds B[0] and A[0] = [F, T, F] into W.
        assert_eq!(
            m.class_head(&h, 0).weights(),
            array![[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
        );
    }

    #[test]
    fn himplos_mask_is_row_wise_and_inclusive() {
        let h = head(array![[1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 5.0, 1.0, 1.0, 1.0]]);
        let m = HimplosMask::new(&h, Sparsity::new(50.0).unwrap()).unwrap();
        assert_eq!(m.thresholds(), &[3.0, 1.0]);
        assert_eq!(
            m.mask(),
            array![
                [false, false, true, true, true],
                [true, true, true, true, true]
            ]
        );
    }
}
