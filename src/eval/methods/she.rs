//! `she`: SHE (Zhang et al. ICLR 2023), `<h, s_k>` with `k = argmax z` and `s_k` the
//! mean of the ID-train features that the head classifies correctly as `k`. pytorch-ood
//! 0.4.0 computes the same.

use ndarray::Array2;

use super::{FitContext, Method, Request, blockwise, logits_of};
use crate::eval::EvalError;
use crate::eval::head::argmax;
use crate::eval::sweep::{Param, Params};

/// SHE.
pub struct She;

impl Method for She {
    fn name(&self) -> &'static str {
        "she"
    }
    fn params(&self) -> &'static [Param] {
        &[]
    }
    fn defaults(&self) -> Params {
        Params::default()
    }
    fn needs_train(&self) -> bool {
        true
    }
    fn plan(&self, _: &Params, ctx: &mut FitContext) -> Result<Request, EvalError> {
        let train = ctx.train(self.name())?;
        let patterns = ctx.fit(self.name(), String::new(), |inputs| {
            let c = inputs.head.classes();
            let logits = logits_of(inputs, train.features);
            let mut sums = Array2::<f64>::zeros((c, train.features.ncols()));
            let mut counts = vec![0usize; c];
            for ((h, z), &label) in train
                .features
                .outer_iter()
                .zip(logits.outer_iter())
                .zip(train.labels)
            {
                let k = argmax(z);
                if i64::try_from(k).ok() == Some(label) {
                    sums.row_mut(k).zip_mut_with(&h, |s, &v| *s += f64::from(v));
                    counts[k] += 1;
                }
            }
            if let Some(class) = counts.iter().position(|&n| n == 0) {
                return Err(EvalError::EmptyClass {
                    method: "she",
                    class,
                });
            }
            for (mut row, &n) in sums.outer_iter_mut().zip(&counts) {
                row /= n as f64;
            }
            Ok(sums)
        })?;
        Ok(Request::custom(move |inputs, features| {
            inputs.head.check_features(features)?;
            Ok(blockwise(features, |block| {
                let logits = logits_of(inputs, block);
                block
                    .outer_iter()
                    .zip(logits.outer_iter())
                    .map(|(h, z)| {
                        let k = argmax(z);
                        let s: f64 = h
                            .iter()
                            .zip(patterns.row(k))
                            .map(|(&h, &p)| f64::from(h) * p)
                            .sum();
                        (s, k)
                    })
                    .collect()
            }))
        }))
    }
}
