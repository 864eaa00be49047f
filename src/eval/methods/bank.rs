//! What the nearest-neighbour methods (`knn`, `nnguide`) share: a bank of L2-normalised
//! ID-train rows `b_j` (all, or a seeded fraction), made once per bank fraction and
//! shared by every `k` and by both methods (at ImageNet size one bank is 200 MiB), a
//! per-method weighting of its rows (fitted once per fraction), and a scoring pass that
//! takes, for each L2-normalised feature `q`, the `k` largest `scale_j * (q . b_j) +
//! bias_j` (tiled GEMMs with a per-tile top-k, never an `N x bank` matrix in memory).

use ndarray::{Array2, ArrayView1, ArrayView2, Axis};

use super::{FitContext, Request, TrainSet, blockwise, logits_of, req};
use crate::eval::EvalError;
use crate::eval::engine::EvalInputs;
use crate::eval::neighbours::{RowAffine, normalized_rows, seeded_rows, top_k};
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

/// The plan of a bank method `method` at `p`: the shared bank of `p.bank_fraction` (the
/// normalised ID-train rows, made once per fraction for every bank method), `p.k` checked
/// against it, the method's weighting `weigh(inputs, rows, bank)` of the bank rows (`rows()`
/// gives the selected ID-train rows as stored, copied only for a method that calls it;
/// fitted once per fraction), and per feature row
/// `score(q, top, z)` with `q` the normalised feature, `top` its `k` largest weighted
/// similarities (descending) and `z` its logits, giving `(score, class)`.
pub(crate) fn plan_bank_scores(
    method: &'static str,
    p: &Params,
    ctx: &mut FitContext,
    weigh: impl FnOnce(&EvalInputs, &dyn Fn() -> Array2<f32>, ArrayView2<f64>) -> RowAffine,
    score: impl Fn(ArrayView1<f64>, &[f64], ArrayView1<f64>) -> (f64, usize) + Send + Sync + 'static,
) -> Result<Request, EvalError> {
    let train = ctx.train(method)?;
    let (k, fraction) = (req(p.k), req(p.bank_fraction));
    let key = format!("bank_fraction={}", fraction.get());
    let bank = ctx.fit("bank", key.clone(), |_| {
        Ok(normalized_rows(bank_rows(&train, fraction).view()))
    })?;
    check_k(k, bank.nrows())?;
    let affine = ctx.fit(method, key, |inputs| {
        Ok(weigh(inputs, &|| bank_rows(&train, fraction), bank.view()))
    })?;
    Ok(Request::custom(move |inputs, features| {
        inputs.head.check_features(features)?;
        Ok(blockwise(features, |block| {
            let q = normalized_rows(block);
            let tops = top_k(q.view(), bank.view(), &affine, k.get());
            let logits = logits_of(inputs, block);
            q.outer_iter()
                .zip(&tops)
                .zip(logits.outer_iter())
                .map(|((q, top), z)| score(q, top, z))
                .collect()
        }))
    }))
}
