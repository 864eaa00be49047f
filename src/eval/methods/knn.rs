//! `knn`: deep nearest neighbours (Sun et al. ICML 2022, `deeplearning-wisc/knn-ood`),
//! `-||h/|h| - b_(k)||`, the distance to the `k`-th nearest L2-normalised ID-train
//! feature; defaults `k = 50` (the paper's CIFAR-10 setting), bank = all ID-train rows
//! (`--bank-fraction`, seeded; the paper uses 1 % on ImageNet). The bank is fitted once
//! per bank fraction and shared by every `k`. Distances come from tiled GEMMs
//! (`|q|^2 + |b|^2 - 2 q.b`, as scikit-learn's brute-force search computes them).
//! pytorch-ood 0.4.0 (scikit-learn `NearestNeighbors`) computes the same.

use ndarray::{Array2, Axis};

use super::{FitContext, Method, Request, TrainSet, blockwise, logits_of, req};
use crate::eval::EvalError;
use crate::eval::head::argmax;
use crate::eval::neighbours::{normalized_rows, seeded_rows, top_k};
use crate::eval::params::{BankFraction, Neighbours};
use crate::eval::sweep::{Param, Params};

/// KNN.
pub struct Knn;

/// The seed of the bank's row selection.
pub(crate) const BANK_SEED: u64 = 0;

/// The ID-train rows a bank fraction selects.
pub(crate) fn bank_rows(train: &TrainSet, fraction: BankFraction) -> Array2<f32> {
    let n = train.features.nrows();
    if fraction == BankFraction::ALL {
        return train.features.to_owned();
    }
    let count = ((fraction.get() * n as f64).round() as usize).max(1);
    train
        .features
        .select(Axis(0), &seeded_rows(n, count, BANK_SEED))
}

/// `k <= bank rows`, else an error naming both.
pub(crate) fn check_k(k: Neighbours, bank: usize) -> Result<(), EvalError> {
    if k.get() <= bank {
        Ok(())
    } else {
        Err(EvalError::TooFewRows {
            flag: Neighbours::FLAG,
            value: k.get(),
            what: "the nearest-neighbour bank",
            rows: bank,
        })
    }
}

/// The normalised bank, stored as `2 b` with bias `-|b|^2` so that the largest values
/// of `q . (2 b) - |b|^2` are the nearest rows.
struct Bank {
    twice: Array2<f64>,
    bias: Vec<f64>,
}

impl Method for Knn {
    fn name(&self) -> &'static str {
        "knn"
    }
    fn params(&self) -> &'static [Param] {
        &[Param::K, Param::BankFraction]
    }
    fn defaults(&self) -> Params {
        Params {
            k: Some(Neighbours::new(50).expect("50 >= 1")),
            bank_fraction: Some(BankFraction::ALL),
            ..Params::default()
        }
    }
    fn needs_train(&self) -> bool {
        true
    }
    fn plan(&self, p: &Params, ctx: &mut FitContext) -> Result<Request, EvalError> {
        let train = ctx.train(self.name())?;
        let (k, fraction) = (req(p.k), req(p.bank_fraction));
        let bank = ctx.fit(
            self.name(),
            format!("bank_fraction={}", fraction.get()),
            |_| {
                let b = normalized_rows(bank_rows(&train, fraction).view());
                let bias = b.outer_iter().map(|r| -r.dot(&r)).collect();
                Ok(Bank {
                    twice: b * 2.0,
                    bias,
                })
            },
        )?;
        check_k(k, bank.bias.len())?;
        Ok(Request::custom(move |inputs, features| {
            inputs.head.check_features(features)?;
            Ok(blockwise(features, |block| {
                let q = normalized_rows(block);
                let tops = top_k(q.view(), bank.twice.view(), Some(&bank.bias), k.get());
                let logits = logits_of(inputs, block);
                q.outer_iter()
                    .zip(&tops)
                    .zip(logits.outer_iter())
                    .map(|((q, top), z)| {
                        let d2 = q.dot(&q) - top[k.get() - 1];
                        (-d2.max(0.0).sqrt(), argmax(z))
                    })
                    .collect()
            }))
        }))
    }
}
