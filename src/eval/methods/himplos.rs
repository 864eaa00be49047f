//! `himplos`: HIMPLoS (head mask per class, clip, cosine to the class prototype);
//! defaults (CIFAR) `p = 60`, clip 1.6, `T = 1`. The mask is fitted once per `p`.

use super::{FitContext, Method, Request, req};
use crate::eval::EvalError;
use crate::eval::masks::HimplosMask;
use crate::eval::params::{Clip, Sparsity, Temperature};
use crate::eval::scores;
use crate::eval::sweep::{Param, Params};

/// HIMPLoS.
pub struct Himplos;

impl Method for Himplos {
    fn name(&self) -> &'static str {
        "himplos"
    }
    fn params(&self) -> &'static [Param] {
        &[Param::P, Param::Clip, Param::Temperature]
    }
    fn defaults(&self) -> Params {
        Params {
            p: Some(Sparsity::new(60.0).expect("60 < 100")),
            clip: Some(Clip::Value(1.6)),
            temperature: Some(Temperature::ONE),
            ..Params::default()
        }
    }
    fn plan(&self, p: &Params, ctx: &mut FitContext) -> Result<Request, EvalError> {
        let clip = ctx.clip(req(p.clip))?;
        let (sparsity, t) = (req(p.p), req(p.temperature));
        let mask = ctx.fit(self.name(), format!("p={sparsity}"), |i| {
            HimplosMask::new(i.head, sparsity)
        })?;
        Ok(Request::custom(move |i, f| {
            scores::himplos(f, i.head, &mask, clip, t, i.class_means)
        }))
    }
}
