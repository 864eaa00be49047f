//! `maxlogit`: the largest logit `max (W h + b)` (Hendrycks et al. 2022).

use super::{FitContext, HeadChoice, Method, Request};
use crate::eval::EvalError;
use crate::eval::head::LogitScore;
use crate::eval::sweep::{Param, Params};

/// MaxLogit.
pub struct MaxLogit;

impl Method for MaxLogit {
    fn name(&self) -> &'static str {
        "maxlogit"
    }
    fn params(&self) -> &'static [Param] {
        &[]
    }
    fn defaults(&self) -> Params {
        Params::default()
    }
    fn plan(&self, _: &Params, _: &mut FitContext) -> Result<Request, EvalError> {
        Ok(Request::Linear {
            head: HeadChoice::Plain,
            shaping: None,
            score: LogitScore::MaxLogit,
        })
    }
}
