//! `entropy`: minus the softmax entropy, `sum_c p_c log p_c`, `p = softmax(W h + b)`.
//!
//! No paper code defines it; the default is the exact value (`log p_c = z_c -
//! logsumexp(z)`); `--variant pytorch-ood` clips `p` to `[1e-7, 1]` before the
//! logarithm as pytorch-ood 0.4.0's `Entropy.score` does (it differs where a class
//! probability is below 1e-7).

use super::{FitContext, HeadChoice, Method, Request};
use crate::eval::EvalError;
use crate::eval::head::LogitScore;
use crate::eval::params::Variant;
use crate::eval::sweep::{Param, Params};

/// Entropy.
pub struct Entropy;

impl Method for Entropy {
    fn name(&self) -> &'static str {
        "entropy"
    }
    fn params(&self) -> &'static [Param] {
        &[Param::Variant]
    }
    fn defaults(&self) -> Params {
        Params::default()
    }
    fn plan(&self, p: &Params, _: &mut FitContext) -> Result<Request, EvalError> {
        Ok(Request::Linear {
            head: HeadChoice::Plain,
            shaping: None,
            score: LogitScore::Entropy {
                clamped: p.variant_or_paper() == Variant::PytorchOod,
            },
        })
    }
}
