//! `knn`: deep nearest neighbours (Sun et al. ICML 2022, `deeplearning-wisc/knn-ood`),
//! `-||h/|h| - b_(k)||`, the distance to the `k`-th nearest L2-normalised ID-train
//! feature; defaults `k = 50` (the paper's CIFAR-10 setting), bank = all ID-train rows
//! (`--bank-fraction`, seeded; the paper uses 1 % on ImageNet). The bank is fitted once
//! per bank fraction and shared by every `k`. Distances come from tiled GEMMs
//! (`|q|^2 + |b|^2 - 2 q.b`, as scikit-learn's brute-force search computes them).
//! pytorch-ood 0.4.0 (scikit-learn `NearestNeighbors`) computes the same.

use super::bank::{self, plan_bank_scores};
use super::{FitContext, Method, Request};
use crate::eval::EvalError;
use crate::eval::head::argmax;
use crate::eval::neighbours::RowAffine;
use crate::eval::sweep::{Param, Params};

/// KNN.
pub struct Knn;

impl Method for Knn {
    fn name(&self) -> &'static str {
        "knn"
    }
    fn params(&self) -> &'static [Param] {
        bank::PARAMS
    }
    fn defaults(&self) -> Params {
        bank::defaults(50)
    }
    fn needs_train(&self) -> bool {
        true
    }
    /// The bank rows are weighted `2 g - |b|^2` (`g = q . b`), so that the largest values
    /// are the nearest rows: `|q - b|^2 = |q|^2 - top`.
    fn plan(&self, p: &Params, ctx: &mut FitContext) -> Result<Request, EvalError> {
        plan_bank_scores(
            self.name(),
            p,
            ctx,
            |_, _, bank| RowAffine {
                scale: vec![2.0; bank.nrows()],
                bias: bank.outer_iter().map(|r| -r.dot(&r)).collect(),
            },
            |q, top, z| {
                let d2 = q.dot(&q) - top[top.len() - 1];
                (-d2.max(0.0).sqrt(), argmax(z))
            },
        )
    }
}
