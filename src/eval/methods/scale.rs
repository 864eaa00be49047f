//! `scale`: SCALE (Xu et al. ICLR 2024, `kai422/SCALE`), `h' = h * exp(s1 / s2)`,
//! `s1 = sum(h)`, `s2` = the sum of the row's `k = m - round(m p / 100)` largest units
//! (nothing pruned), then the head and energy (or `--score`). Default `p = 85` (the
//! paper's CIFAR setting). pytorch-ood 0.4.0 computes the same.

use super::{FitContext, HeadChoice, Method, Request, req};
use crate::eval::EvalError;
use crate::eval::head::LogitScore;
use crate::eval::params::Sparsity;
use crate::eval::shaping::{Kept, Shaping};
use crate::eval::sweep::{Param, Params};

/// SCALE.
pub struct Scale;

impl Method for Scale {
    fn name(&self) -> &'static str {
        "scale"
    }
    fn params(&self) -> &'static [Param] {
        &[Param::P, Param::Score]
    }
    fn defaults(&self) -> Params {
        Params {
            p: Some(Sparsity::new(85.0).expect("85 < 100")),
            ..Params::default()
        }
    }
    fn plan(&self, p: &Params, ctx: &mut FitContext) -> Result<Request, EvalError> {
        let kept = Kept::new(ctx.inputs().head.width(), req(p.p))?;
        Ok(Request::Linear {
            head: HeadChoice::Plain,
            shaping: Some(Shaping::Scale(kept)),
            score: LogitScore::of_kind(p.score_kind()),
        })
    }
}
