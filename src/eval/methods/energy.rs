//! `energy`: `T * logsumexp((W h + b) / T)` (Liu et al. 2020), default `T = 1`.

use super::{FitContext, HeadChoice, Method, Request, req};
use crate::eval::EvalError;
use crate::eval::head::LogitScore;
use crate::eval::params::Temperature;
use crate::eval::sweep::{Param, Params};

/// Energy.
pub struct Energy;

impl Method for Energy {
    fn name(&self) -> &'static str {
        "energy"
    }
    fn params(&self) -> &'static [Param] {
        &[Param::Temperature]
    }
    fn defaults(&self) -> Params {
        Params {
            temperature: Some(Temperature::ONE),
            ..Params::default()
        }
    }
    fn plan(&self, p: &Params, _: &mut FitContext) -> Result<Request, EvalError> {
        Ok(Request::Linear {
            head: HeadChoice::Plain,
            shaping: None,
            score: LogitScore::Energy(req(p.temperature)),
        })
    }
}
