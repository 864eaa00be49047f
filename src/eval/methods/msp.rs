//! `msp`: maximum softmax probability `max softmax(W h + b)` (Hendrycks & Gimpel 2017).

use super::{FitContext, HeadChoice, Method, Request};
use crate::eval::EvalError;
use crate::eval::head::LogitScore;
use crate::eval::sweep::{Param, Params};

/// MSP.
pub struct Msp;

impl Method for Msp {
    fn name(&self) -> &'static str {
        "msp"
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
            score: LogitScore::Msp,
        })
    }
}
