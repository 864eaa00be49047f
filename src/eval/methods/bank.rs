//! What the nearest-neighbour methods (`knn`, `nnguide`) share: a bank of ID-train rows
//! (all, or a seeded fraction), fitted once per bank fraction and shared by every `k`,
//! and a scoring pass that takes, for each L2-normalised feature `q`, the `k` largest
//! `q . b_j + bias_j` over the bank rows `b_j` (tiled GEMMs with a per-tile top-k, never
//! an `N x bank` matrix in memory).

use ndarray::{Array2, ArrayView1, Axis};

use super::{FitContext, Request, TrainSet, blockwise, logits_of, req};
use crate::eval::EvalError;
use crate::eval::engine::EvalInputs;
use crate::eval::neighbours::{normalized_rows, seeded_rows, top_k};
use crate::eval::params::{BankFraction, Neighbours};
use crate::eval::sweep::{Param, Params};

/// The parameters of a bank method.
pub(crate) const PARAMS: &[Param] = &[Param::K, Param::BankFraction];

/// The seed of the bank's row selection.
pub(crate) const BANK_SEED: u64 = 0;

/// The defaults of a bank method: `k` and the whole ID-train split as the bank.
pub(crate) fn defaults(k: usize) -> Params {
    Params {
        k: Some(Neighbours::new(k).expect("a default k >= 1")),
        bank_fraction: Some(BankFraction::ALL),
        ..Params::default()
    }
}

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

/// A fitted bank: rows `b_j` (`f64`, one per bank row) and an optional bias per row.
pub(crate) struct Bank {
    /// The bank rows.
    pub rows: Array2<f64>,
    /// `bias_j`, added to `q . b_j` (none: zero).
    pub bias: Option<Vec<f64>>,
}

/// The plan of a bank method `method` at `p`: the bank `build` makes from the ID-train
/// rows of `p.bank_fraction` (fitted once per fraction), `p.k` checked against it, and
/// per feature row `score(q, top, z)` with `q` the normalised feature, `top` its `k`
/// largest `q . b_j + bias_j` (descending) and `z` its logits, giving `(score, class)`.
pub(crate) fn plan_bank_scores(
    method: &'static str,
    p: &Params,
    ctx: &mut FitContext,
    build: impl FnOnce(&EvalInputs, Array2<f32>) -> Result<Bank, EvalError>,
    score: impl Fn(ArrayView1<f64>, &[f64], ArrayView1<f64>) -> (f64, usize) + Send + Sync + 'static,
) -> Result<Request, EvalError> {
    let train = ctx.train(method)?;
    let (k, fraction) = (req(p.k), req(p.bank_fraction));
    let bank = ctx.fit(
        method,
        format!("bank_fraction={}", fraction.get()),
        |inputs| build(inputs, bank_rows(&train, fraction)),
    )?;
    check_k(k, bank.rows.nrows())?;
    Ok(Request::custom(move |inputs, features| {
        inputs.head.check_features(features)?;
        Ok(blockwise(features, |block| {
            let q = normalized_rows(block);
            let tops = top_k(q.view(), bank.rows.view(), bank.bias.as_deref(), k.get());
            let logits = logits_of(inputs, block);
            q.outer_iter()
                .zip(&tops)
                .zip(logits.outer_iter())
                .map(|((q, top), z)| score(q, top, z))
                .collect()
        }))
    }))
}
