//! `dice`: DICE (Sun & Li 2022), energy of the head `W * M` keeping the weights whose
//! contribution `mu * W` is above its `p`-th percentile; default `p = 90`.

use super::{FitContext, HeadChoice, Method, Request, req};
use crate::eval::EvalError;
use crate::eval::head::LogitScore;
use crate::eval::params::{Sparsity, Temperature};
use crate::eval::sweep::{Param, Params};

/// DICE.
pub struct Dice;

impl Method for Dice {
    fn name(&self) -> &'static str {
        "dice"
    }
    fn params(&self) -> &'static [Param] {
        &[Param::P]
    }
    fn defaults(&self) -> Params {
        Params {
            p: Some(Sparsity::new(90.0).expect("90 < 100")),
            ..Params::default()
        }
    }
    fn plan(&self, p: &Params, _: &mut FitContext) -> Result<Request, EvalError> {
        Ok(Request::Linear {
            head: HeadChoice::Dice(req(p.p)),
            shaping: None,
            score: LogitScore::Energy(Temperature::ONE),
        })
    }
}
