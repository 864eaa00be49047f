//! `gradnorm`: GradNorm (Huang et al. NeurIPS 2021, `deeplearning-wisc/gradnorm_ood`),
//! the L1 norm of the gradient w.r.t. the head weights `W` of the paper's loss
//! `-sum_c log softmax(z / T)_c` (its `targets` are all ones). For a linear head that
//! gradient is `(1/T) (C p - 1) h^T`, `p = softmax(z / T)`, so the score is exactly
//! `(1/T) (sum_c |C p_c - 1|) (sum_i |h_i|)` and no network is needed. Default `T = 1`.
//!
//! `--variant pytorch-ood` is pytorch-ood 0.4.0's `GradNorm` on the head as the model:
//! its loss is the mean over classes (a factor `1/C`) and the gradient includes the
//! bias, so `(1/(C T)) (sum_c |C p_c - 1|) (sum_i |h_i| + 1)`.

use super::{FitContext, Method, Request, blockwise, logits_of, req};
use crate::eval::EvalError;
use crate::eval::head::{argmax, softmax};
use crate::eval::params::{Temperature, Variant};
use crate::eval::sweep::{Param, Params};

/// GradNorm.
pub struct GradNorm;

/// The score of one row (logits `z`, features `h`), see the module docs.
pub(crate) fn gradnorm(
    z: ndarray::ArrayView1<f64>,
    h: ndarray::ArrayView1<f32>,
    t: f64,
    pytorch_ood: bool,
) -> f64 {
    let c = z.len() as f64;
    let scaled = z.mapv(|v| v / t);
    let p = softmax(scaled.view());
    let dz: f64 = p.iter().map(|&p| (c * p - 1.0).abs()).sum();
    let dh: f64 = h.iter().map(|&v| f64::from(v).abs()).sum();
    if pytorch_ood {
        dz * (dh + 1.0) / (c * t)
    } else {
        dz * dh / t
    }
}

impl Method for GradNorm {
    fn name(&self) -> &'static str {
        "gradnorm"
    }
    fn params(&self) -> &'static [Param] {
        &[Param::Temperature, Param::Variant]
    }
    fn defaults(&self) -> Params {
        Params {
            temperature: Some(Temperature::ONE),
            ..Params::default()
        }
    }
    fn plan(&self, p: &Params, _: &mut FitContext) -> Result<Request, EvalError> {
        let t = req(p.temperature).get();
        let pytorch_ood = p.variant_or_paper() == Variant::PytorchOod;
        Ok(Request::custom(move |inputs, features| {
            inputs.head.check_features(features)?;
            Ok(blockwise(features, |block| {
                let logits = logits_of(inputs, block);
                block
                    .outer_iter()
                    .zip(logits.outer_iter())
                    .map(|(h, z)| (gradnorm(z, h, t, pytorch_ood), argmax(z)))
                    .collect()
            }))
        }))
    }
}
