//! `line`: LINe (Ahn et al. 2023), clip then class-wise activation and weight masks
//! from Shapley-value approximations `S = mu_c * W`; defaults (CIFAR-10) clip 1.0,
//! `p_a = 90`, `p_w = 90`. The masks are fitted once per `(p_a, p_w)`.

use super::{FitContext, Method, Request, req};
use crate::eval::EvalError;
use crate::eval::masks::LineMasks;
use crate::eval::params::{Clip, LinePercentile};
use crate::eval::scores;
use crate::eval::sweep::{Param, Params};

/// LINe.
pub struct Line;

impl Method for Line {
    fn name(&self) -> &'static str {
        "line"
    }
    fn params(&self) -> &'static [Param] {
        &[Param::Clip, Param::PA, Param::PW]
    }
    fn defaults(&self) -> Params {
        Params {
            clip: Some(Clip::Value(1.0)),
            p_a: Some(LinePercentile::activation(90.0).expect("90 < 100")),
            p_w: Some(LinePercentile::weight(90.0).expect("90 < 100")),
            ..Params::default()
        }
    }
    fn plan(&self, p: &Params, ctx: &mut FitContext) -> Result<Request, EvalError> {
        let clip = ctx.clip(req(p.clip))?;
        let (p_a, p_w) = (req(p.p_a), req(p.p_w));
        let key = format!("p_a={} p_w={}", p_a.percent(), p_w.percent());
        let masks = ctx.fit(self.name(), key, |i| {
            let s = &i.class_means * &i.head.weights();
            LineMasks::new(s.view(), i.head, p_a, p_w)
        })?;
        Ok(Request::custom(move |i, f| {
            scores::line(f, i.head, clip, &masks)
        }))
    }
}
