//! `dice-react`: DICE's head on ReAct's clipped features, energy of
//! `(W * M) min(h, c) + b`; defaults `p = 90`, `c` = the 90th ID-train percentile.

use super::{FitContext, HeadChoice, Method, Request, req};
use crate::eval::EvalError;
use crate::eval::head::LogitScore;
use crate::eval::params::{Clip, Sparsity, Temperature};
use crate::eval::shaping::Shaping;
use crate::eval::sweep::{Param, Params};

/// DICE + ReAct.
pub struct DiceReact;

impl Method for DiceReact {
    fn name(&self) -> &'static str {
        "dice-react"
    }
    fn params(&self) -> &'static [Param] {
        &[Param::P, Param::Clip]
    }
    fn defaults(&self) -> Params {
        Params {
            p: Some(Sparsity::new(90.0).expect("90 < 100")),
            clip: Some(Clip::Percentile(90.0)),
            ..Params::default()
        }
    }
    fn plan(&self, p: &Params, ctx: &mut FitContext) -> Result<Request, EvalError> {
        Ok(Request::Linear {
            head: HeadChoice::Dice(req(p.p)),
            shaping: Some(Shaping::Clip(ctx.clip(req(p.clip))?)),
            score: LogitScore::Energy(Temperature::ONE),
        })
    }
}
