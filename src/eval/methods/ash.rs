//! `ash-p`, `ash-b`, `ash-s`: ASH (Djurisic et al. ICLR 2023, `andrijazz/ash`), per row
//! keep the `k = m - round(m p / 100)` largest units and zero the rest (ASH-P), set the
//! kept ones to `sum(h) / k` (ASH-B) or scale them by `exp(sum(h) / sum(kept))`
//! (ASH-S); then the head and energy (or `--score`). Default `p = 65` (the paper's
//! CIFAR settings range over 65-90). pytorch-ood 0.4.0 computes the same.

use super::{FitContext, HeadChoice, Method, Request, req};
use crate::eval::EvalError;
use crate::eval::head::LogitScore;
use crate::eval::params::Sparsity;
use crate::eval::shaping::{AshVariant, Kept, Shaping};
use crate::eval::sweep::{Param, Params};

/// One ASH variant.
pub struct Ash {
    name: &'static str,
    variant: AshVariant,
}

/// ASH-P.
pub static ASH_P: Ash = Ash {
    name: "ash-p",
    variant: AshVariant::Prune,
};
/// ASH-B.
pub static ASH_B: Ash = Ash {
    name: "ash-b",
    variant: AshVariant::Binarise,
};
/// ASH-S.
pub static ASH_S: Ash = Ash {
    name: "ash-s",
    variant: AshVariant::Sharpen,
};

impl Method for Ash {
    fn name(&self) -> &'static str {
        self.name
    }
    fn params(&self) -> &'static [Param] {
        &[Param::P, Param::Score]
    }
    fn defaults(&self) -> Params {
        Params {
            p: Some(Sparsity::new(65.0).expect("65 < 100")),
            ..Params::default()
        }
    }
    fn plan(&self, p: &Params, ctx: &mut FitContext) -> Result<Request, EvalError> {
        let kept = Kept::new(ctx.inputs().head.width(), req(p.p))?;
        Ok(Request::Linear {
            head: HeadChoice::Plain,
            shaping: Some(Shaping::Ash(self.variant, kept)),
            score: LogitScore::of_kind(p.score_kind()),
        })
    }
}
