//! `nnguide`: NNGuide (Park et al. ICCV 2023, `roomo7time/nnguide`),
//! `energy(z) * mean of the k largest cosine similarities of h with the bank`, bank =
//! L2-normalised ID-train features each scaled by its energy; defaults `k = 10`
//! (pytorch-ood's), bank = all ID-train rows (`--bank-fraction`, seeded). The bank is
//! fitted once per bank fraction (the normalised rows shared with `knn`, weighted by the
//! energies: `energy_j * (q . b_j)`); similarities come from tiled GEMMs with a per-tile
//! top-k. pytorch-ood 0.4.0 computes the same (in float32 on the fixture).

use super::bank::{self, plan_bank_scores};
use super::{FitContext, Method, Request, logits_of};
use crate::eval::EvalError;
use crate::eval::head::{argmax, energy_of};
use crate::eval::neighbours::RowAffine;
use crate::eval::sweep::{Param, Params};

/// NNGuide.
pub struct NnGuide;

impl Method for NnGuide {
    fn name(&self) -> &'static str {
        "nnguide"
    }
    fn params(&self) -> &'static [Param] {
        bank::PARAMS
    }
    fn defaults(&self) -> Params {
        bank::defaults(10)
    }
    fn needs_train(&self) -> bool {
        true
    }
    fn plan(&self, p: &Params, ctx: &mut FitContext) -> Result<Request, EvalError> {
        plan_bank_scores(
            self.name(),
            p,
            ctx,
            |inputs, rows, bank| RowAffine {
                scale: logits_of(inputs, rows().view())
                    .outer_iter()
                    .map(|z| energy_of(z, 1.0))
                    .collect(),
                bias: vec![0.0; bank.nrows()],
            },
            |_, top, z| {
                let guidance = top.iter().sum::<f64>() / top.len() as f64;
                (energy_of(z, 1.0) * guidance, argmax(z))
            },
        )
    }
}
