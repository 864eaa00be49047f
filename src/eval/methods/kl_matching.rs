//! `kl-matching`: KL matching (Hendrycks et al. ICML 2022), `-KL(p || d_k)` with
//! `p = softmax(z)`, `k = argmax z` and `d_k` the mean softmax of the ID-train rows the
//! head predicts as `k` (the paper fits `d_k` on held-out ID data; the ID-train split
//! is what the cache has). pytorch-ood 0.4.0 instead takes the minimum KL over every
//! class's `d_c`; that reading is `--variant pytorch-ood`.

use ndarray::Array2;

use super::{FitContext, Method, Request, blockwise, logits_of};
use crate::eval::EvalError;
use crate::eval::head::{argmax, softmax};
use crate::eval::params::Variant;
use crate::eval::sweep::{Param, Params};

/// KL matching.
pub struct KlMatching;

/// `KL(p || d) = sum_c p_c (log p_c - log d_c)` (terms with `p_c = 0` are 0).
pub(crate) fn kl(p: &[f64], d: ndarray::ArrayView1<f64>) -> f64 {
    p.iter()
        .zip(d)
        .map(|(&p, &d)| if p > 0.0 { p * (p.ln() - d.ln()) } else { 0.0 })
        .sum()
}

impl Method for KlMatching {
    fn name(&self) -> &'static str {
        "kl-matching"
    }
    fn params(&self) -> &'static [Param] {
        &[Param::Variant]
    }
    fn defaults(&self) -> Params {
        Params::default()
    }
    fn needs_train(&self) -> bool {
        true
    }
    fn plan(&self, p: &Params, ctx: &mut FitContext) -> Result<Request, EvalError> {
        let train = ctx.train(self.name())?;
        let any_class = p.variant_or_paper() == Variant::PytorchOod;
        let dists = ctx.fit(self.name(), String::new(), |inputs| {
            let c = inputs.head.classes();
            let logits = logits_of(inputs, train.features);
            let mut sums = Array2::<f64>::zeros((c, c));
            let mut counts = vec![0usize; c];
            for z in logits.outer_iter() {
                let k = argmax(z);
                sums.row_mut(k)
                    .iter_mut()
                    .zip(softmax(z))
                    .for_each(|(s, p)| *s += p);
                counts[k] += 1;
            }
            for (mut row, &n) in sums.outer_iter_mut().zip(&counts) {
                // A class no train row is predicted as has no template (NaN): rows
                // predicted as it score NaN, which the metrics refuse by name.
                row /= n as f64;
            }
            Ok((sums, counts))
        })?;
        Ok(Request::custom(move |inputs, features| {
            inputs.head.check_features(features)?;
            let (d, counts) = (&dists.0, &dists.1);
            Ok(blockwise(features, |block| {
                let logits = logits_of(inputs, block);
                logits
                    .outer_iter()
                    .map(|z| {
                        let p = softmax(z);
                        let k = argmax(z);
                        let score = if any_class {
                            -(0..d.nrows())
                                .filter(|&c| counts[c] > 0)
                                .map(|c| kl(&p, d.row(c)))
                                .fold(f64::INFINITY, f64::min)
                        } else {
                            -kl(&p, d.row(k))
                        };
                        (score, k)
                    })
                    .collect()
            }))
        }))
    }
}
