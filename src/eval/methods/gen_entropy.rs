//! `gen`: GEN (Liu et al. CVPR 2023), `-sum over the M largest p_j of
//! p_j^gamma (1 - p_j)^gamma`, `p = softmax(W h + b)`; defaults `gamma = 0.1`, `M` = all
//! classes (flag `--top-m`; the paper uses 100 on ImageNet).
//!
//! The default follows the GEN repository (`XixiLiu95/GEN`, `generalized_entropy`: a
//! sum, no clamp); `--variant pytorch-ood` is pytorch-ood 0.4.0's `GEN.score` (the mean
//! over the `M` terms, `p` clamped to `[1e-7, 1 - 1e-7]`): the two differ by the factor
//! `M` (same ranking, same metrics) and by the clamp.

use super::{FitContext, HeadChoice, Method, Request, req};
use crate::eval::EvalError;
use crate::eval::head::LogitScore;
use crate::eval::params::{Gamma, Variant};
use crate::eval::sweep::{Param, Params};

/// GEN.
pub struct Gen;

impl Method for Gen {
    fn name(&self) -> &'static str {
        "gen"
    }
    fn params(&self) -> &'static [Param] {
        &[Param::Gamma, Param::TopM, Param::Variant]
    }
    fn defaults(&self) -> Params {
        Params {
            gamma: Some(Gamma::new(0.1).expect("0.1 > 0")),
            ..Params::default()
        }
    }
    fn plan(&self, p: &Params, _: &mut FitContext) -> Result<Request, EvalError> {
        Ok(Request::Linear {
            head: HeadChoice::Plain,
            shaping: None,
            score: LogitScore::Gen {
                gamma: req(p.gamma),
                top_m: p.top_m,
                pytorch_ood: p.variant_or_paper() == Variant::PytorchOod,
            },
        })
    }
}
