//! `react`: ReAct (Sun et al. 2021), the head on `min(h, c)`; default `c` = the 90th
//! percentile of all ID-train activations; energy unless `--score` says otherwise.

use super::{FitContext, HeadChoice, Method, Request, req};
use crate::eval::EvalError;
use crate::eval::head::LogitScore;
use crate::eval::params::Clip;
use crate::eval::shaping::Shaping;
use crate::eval::sweep::{Param, Params};

/// ReAct.
pub struct React;

impl Method for React {
    fn name(&self) -> &'static str {
        "react"
    }
    fn params(&self) -> &'static [Param] {
        &[Param::Clip, Param::Score]
    }
    fn defaults(&self) -> Params {
        Params {
            clip: Some(Clip::Percentile(90.0)),
            ..Params::default()
        }
    }
    fn plan(&self, p: &Params, ctx: &mut FitContext) -> Result<Request, EvalError> {
        Ok(Request::Linear {
            head: HeadChoice::Plain,
            shaping: Some(Shaping::Clip(ctx.clip(req(p.clip))?)),
            score: LogitScore::of_kind(p.score_kind()),
        })
    }
}
