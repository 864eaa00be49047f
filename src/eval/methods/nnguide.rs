//! `nnguide`: NNGuide (Park et al. ICCV 2023, `roomo7time/nnguide`),
//! `energy(z) * mean of the k largest cosine similarities of h with the bank`, bank =
//! L2-normalised ID-train features each scaled by its energy; defaults `k = 10`
//! (pytorch-ood's), bank = all ID-train rows (`--bank-fraction`, seeded). The bank is
//! fitted once per bank fraction; similarities come from tiled GEMMs with a per-tile
//! top-k. pytorch-ood 0.4.0 computes the same (in float32 on the fixture).

use ndarray::Array2;

use super::knn::{bank_rows, check_k};
use super::{FitContext, Method, Request, blockwise, logits_of, req};
use crate::eval::EvalError;
use crate::eval::head::{argmax, energy_of};
use crate::eval::neighbours::{normalized_rows, top_k};
use crate::eval::params::{BankFraction, Neighbours};
use crate::eval::sweep::{Param, Params};

/// NNGuide.
pub struct NnGuide;

impl Method for NnGuide {
    fn name(&self) -> &'static str {
        "nnguide"
    }
    fn params(&self) -> &'static [Param] {
        &[Param::K, Param::BankFraction]
    }
    fn defaults(&self) -> Params {
        Params {
            k: Some(Neighbours::new(10).expect("10 >= 1")),
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
            |inputs| {
                let rows = bank_rows(&train, fraction);
                let logits = logits_of(inputs, rows.view());
                let mut b: Array2<f64> = normalized_rows(rows.view());
                for (mut row, z) in b.outer_iter_mut().zip(logits.outer_iter()) {
                    let e = energy_of(z, 1.0);
                    row.mapv_inplace(|v| v * e);
                }
                Ok(b)
            },
        )?;
        check_k(k, bank.nrows())?;
        Ok(Request::custom(move |inputs, features| {
            inputs.head.check_features(features)?;
            Ok(blockwise(features, |block| {
                let q = normalized_rows(block);
                let tops = top_k(q.view(), bank.view(), None, k.get());
                let logits = logits_of(inputs, block);
                logits
                    .outer_iter()
                    .zip(&tops)
                    .map(|(z, top)| {
                        let guidance = top.iter().sum::<f64>() / k.get() as f64;
                        (energy_of(z, 1.0) * guidance, argmax(z))
                    })
                    .collect()
            }))
        }))
    }
}
