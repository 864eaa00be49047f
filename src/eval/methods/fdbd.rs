//! `fdbd`: fDBD (Liu & Qin ICML 2024, `litianliu/fDBD-OOD`),
//! `mean over c != k of |z_k - z_c| / ||W_k - W_c||`, divided by `||h - mu||`
//! (`mu` the ID-train feature mean, `k = argmax z`). pytorch-ood 0.4.0 computes the
//! same (it clamps `||h - mu||` at 1e-8, as here).

use ndarray::Array2;

use super::{FitContext, Method, Request, blockwise, logits_of};
use crate::eval::EvalError;
use crate::eval::head::argmax;
use crate::eval::sweep::{Param, Params};

/// fDBD.
pub struct Fdbd;

impl Method for Fdbd {
    fn name(&self) -> &'static str {
        "fdbd"
    }
    fn params(&self) -> &'static [Param] {
        &[]
    }
    fn defaults(&self) -> Params {
        Params::default()
    }
    fn plan(&self, _: &Params, ctx: &mut FitContext) -> Result<Request, EvalError> {
        let denominators = ctx.fit(self.name(), String::new(), |inputs| {
            let w = inputs.head.weights();
            let c = w.nrows();
            Ok(Array2::from_shape_fn((c, c), |(a, b)| {
                if a == b {
                    1.0
                } else {
                    let d = &w.row(a) - &w.row(b);
                    d.dot(&d).sqrt()
                }
            }))
        })?;
        Ok(Request::custom(move |inputs, features| {
            inputs.head.check_features(features)?;
            let mu = inputs.train_mean;
            Ok(blockwise(features, |block| {
                let logits = logits_of(inputs, block);
                block
                    .outer_iter()
                    .zip(logits.outer_iter())
                    .map(|(h, z)| {
                        let k = argmax(z);
                        let c = z.len();
                        let boundary: f64 = z
                            .iter()
                            .zip(denominators.row(k))
                            .map(|(&zc, &d)| (z[k] - zc).abs() / d)
                            .sum();
                        let dist = h
                            .iter()
                            .zip(mu)
                            .map(|(&h, &m)| (f64::from(h) - m).powi(2))
                            .sum::<f64>()
                            .sqrt()
                            .max(1e-8);
                        (boundary / ((c - 1) as f64 * dist), k)
                    })
                    .collect()
            }))
        }))
    }
}
