//! Activation shaping: a per-row change of the penultimate features `h` before the
//! head (ReAct's clip, ASH's prune / binarise / sharpen, SCALE's scaling). Any logit
//! score can follow it; the papers use energy.

use ndarray::{ArrayView1, ArrayViewMut1};

use super::EvalError;
use super::params::{ClipValue, Sparsity};

/// ASH's three ways of treating the kept units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AshVariant {
    /// ASH-P: keep the largest units as they are, zero the rest.
    Prune,
    /// ASH-B: set the kept units to `s1 / k` (`s1 = sum h`, `k` kept), zero the rest.
    Binarise,
    /// ASH-S: keep the largest units scaled by `exp(s1 / s2)` (`s2` = their sum).
    Sharpen,
}

/// One activation shaping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shaping {
    /// ReAct: `min(h, c)`.
    Clip(ClipValue),
    /// ASH with the `k` largest of the row's `m` units kept.
    Ash(AshVariant, Kept),
    /// SCALE: `h * exp(s1 / s2)`, `s2` the sum of the row's `k` largest units.
    Scale(Kept),
}

/// How many of a row's `m` units the percentile `p` keeps:
/// `k = m - round(m * p / 100)` (numpy's round half to even, as ASH's and SCALE's code
/// compute it), `1 <= k <= m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kept(usize);

impl Kept {
    /// `k` for `m` units at percentile `p`; an error when nothing would be kept.
    pub fn new(m: usize, p: Sparsity) -> Result<Self, EvalError> {
        let pruned = (m as f64 * (p.percent() / 100.0)).round_ties_even() as usize;
        let k = m.saturating_sub(pruned);
        if k == 0 {
            Err(EvalError::Param {
                flag: Sparsity::FLAG,
                value: p.to_string(),
                reason: "keeps none of the row's units (k = m - round(m * p / 100) = 0)",
            })
        } else {
            Ok(Self(k))
        }
    }

    /// `k`.
    pub fn get(self) -> usize {
        self.0
    }
}

/// The `k`-th largest value of `h` and how many values equal to it are kept (the `k`
/// largest, ties at the threshold going to the lowest indices, as a stable top-k).
fn threshold(h: &[f64], k: usize, scratch: &mut Vec<f64>) -> (f64, usize) {
    scratch.clear();
    scratch.extend_from_slice(h);
    let (_, t, _) = scratch.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let t = *t;
    let above = h.iter().filter(|&&v| v > t).count();
    (t, k - above)
}

impl Shaping {
    /// Shapes one row: `h` (`f32`) in, `x` (`f64`) out.
    pub fn apply(self, h: ArrayView1<f32>, mut x: ArrayViewMut1<f64>) {
        x.zip_mut_with(&h, |x, &h| *x = f64::from(h));
        match self {
            Shaping::Clip(c) => {
                let c = c.get();
                x.mapv_inplace(|v| if v > c { c } else { v });
            }
            Shaping::Ash(variant, k) => {
                let values = x.to_vec();
                let mut scratch = Vec::with_capacity(values.len());
                let (t, mut ties) = threshold(&values, k.get(), &mut scratch);
                let s1: f64 = values.iter().sum();
                let keep: Vec<bool> = values
                    .iter()
                    .map(|&v| {
                        let tie = v == t && ties > 0;
                        if tie {
                            ties -= 1;
                        }
                        v > t || tie
                    })
                    .collect();
                let s2: f64 = values
                    .iter()
                    .zip(&keep)
                    .filter(|(_, k)| **k)
                    .map(|(v, _)| v)
                    .sum();
                let fill = s1 / k.get() as f64;
                let sharpen = (s1 / s2).exp();
                for ((x, &v), &keep) in x.iter_mut().zip(&values).zip(&keep) {
                    *x = match (keep, variant) {
                        (false, _) => 0.0,
                        (true, AshVariant::Prune) => v,
                        (true, AshVariant::Binarise) => fill,
                        (true, AshVariant::Sharpen) => v * sharpen,
                    };
                }
            }
            Shaping::Scale(k) => {
                let values = x.to_vec();
                let mut scratch = Vec::with_capacity(values.len());
                let k = k.get();
                threshold(&values, k, &mut scratch);
                // After the selection the k largest values are scratch[..k].
                let s2: f64 = scratch[..k].iter().sum();
                let s1: f64 = values.iter().sum();
                let f = (s1 / s2).exp();
                x.mapv_inplace(|v| v * f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array1;

    fn shaped(s: Shaping, h: &[f32]) -> Vec<f64> {
        let mut x = Array1::zeros(h.len());
        s.apply(ArrayView1::from(h), x.view_mut());
        x.to_vec()
    }

    #[test]
    fn kept_counts_round_half_to_even() {
        let p = |v| Sparsity::new(v).unwrap();
        assert_eq!(Kept::new(342, p(65.0)).unwrap().get(), 120);
        assert_eq!(Kept::new(342, p(90.0)).unwrap().get(), 34);
        // 10 * 0.25 = 2.5 rounds to 2 (half to even): 8 kept.
        assert_eq!(Kept::new(10, p(25.0)).unwrap().get(), 8);
        assert!(Kept::new(10, p(99.0)).is_err());
    }

    #[test]
    fn ash_and_scale_follow_their_definitions() {
        let h = [1.0f32, 4.0, 2.0, 3.0];
        let k2 = Kept(2);
        assert_eq!(
            shaped(Shaping::Ash(AshVariant::Prune, k2), &h),
            vec![0.0, 4.0, 0.0, 3.0]
        );
        assert_eq!(
            shaped(Shaping::Ash(AshVariant::Binarise, k2), &h),
            vec![0.0, 5.0, 0.0, 5.0]
        );
        let f = (10.0f64 / 7.0).exp();
        assert_eq!(
            shaped(Shaping::Ash(AshVariant::Sharpen, k2), &h),
            vec![0.0, 4.0 * f, 0.0, 3.0 * f]
        );
        let got = shaped(Shaping::Scale(k2), &h);
        let want: Vec<f64> = h.iter().map(|&v| f64::from(v) * f).collect();
        assert_eq!(got, want);
        let c = ClipValue::new(2.5).unwrap();
        assert_eq!(shaped(Shaping::Clip(c), &h), vec![1.0, 2.5, 2.0, 2.5]);
        // Ties at the threshold: exactly k kept, the lowest indices first.
        let tied = [2.0f32, 1.0, 2.0, 2.0];
        assert_eq!(
            shaped(Shaping::Ash(AshVariant::Prune, k2), &tied),
            vec![2.0, 0.0, 2.0, 0.0]
        );
    }
}
