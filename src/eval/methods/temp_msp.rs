//! `temp-msp`: temperature-scaled MSP `max softmax((W h + b) / T)`, default
//! `T = 1000` (ODIN's temperature, without its input perturbation).

use super::{FitContext, HeadChoice, Method, Request, req};
use crate::eval::EvalError;
use crate::eval::head::LogitScore;
use crate::eval::params::Temperature;
use crate::eval::sweep::{Param, Params};

/// Temperature-scaled MSP.
pub struct TempMsp;

impl Method for TempMsp {
    fn name(&self) -> &'static str {
        "temp-msp"
    }
    fn params(&self) -> &'static [Param] {
        &[Param::Temperature]
    }
    fn defaults(&self) -> Params {
        Params {
            temperature: Some(Temperature::new(1000.0).expect("1000 > 0")),
            ..Params::default()
        }
    }
    fn plan(&self, p: &Params, _: &mut FitContext) -> Result<Request, EvalError> {
        Ok(Request::Linear {
            head: HeadChoice::Plain,
            shaping: None,
            score: LogitScore::TempMsp(req(p.temperature)),
        })
    }
}
