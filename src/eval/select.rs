//! Choosing hyperparameters honestly: each method's best setting on a validation split
//! (a seeded share of the ID test rows against one held-out OOD set), never on the rows
//! it is then reported on.

use std::str::FromStr;

use super::EvalError;
use super::engine::Evaluation;
use super::neighbours::seeded_rows;

/// The seed of the validation split of the ID test rows.
pub const VALIDATION_SEED: u64 = 9;

/// What "best" means (flag `--select`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectMetric {
    /// Highest AUROC.
    Auroc,
    /// Lowest FPR95.
    Fpr95,
}

impl FromStr for SelectMetric {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auroc" => Ok(Self::Auroc),
            "fpr95" => Ok(Self::Fpr95),
            _ => Err(EvalError::Param {
                flag: "--select",
                value: s.to_owned(),
                reason: "expected auroc or fpr95",
            }),
        }
    }
}

/// The share of the ID test rows held out for validation, `0 < f < 1` (flag
/// `--val-fraction`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValFraction(f64);

impl ValFraction {
    /// The flag this parameter comes from.
    pub const FLAG: &'static str = "--val-fraction";

    /// Checks `0 < f < 1`.
    pub fn new(f: f64) -> Result<Self, EvalError> {
        if f > 0.0 && f < 1.0 {
            Ok(Self(f))
        } else {
            Err(EvalError::Param {
                flag: Self::FLAG,
                value: f.to_string(),
                reason: "the validation fraction must be in (0, 1)",
            })
        }
    }

    /// The validation rows and the remaining (test) rows of `0..n`, both ascending; each
    /// has at least one row (an error when `n < 2`).
    pub fn split(self, n: usize) -> Result<(Vec<usize>, Vec<usize>), EvalError> {
        if n < 2 {
            return Err(EvalError::Empty {
                what: "ID test rows to split into validation and test (need 2)",
            });
        }
        let k = ((self.0 * n as f64).round() as usize).clamp(1, n - 1);
        let val = seeded_rows(n, k, VALIDATION_SEED);
        let mut is_val = vec![false; n];
        val.iter().for_each(|&r| is_val[r] = true);
        let test = (0..n).filter(|&r| !is_val[r]).collect();
        Ok((val, test))
    }
}

impl FromStr for ValFraction {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let f = s.trim().parse::<f64>().map_err(|_| EvalError::Param {
            flag: Self::FLAG,
            value: s.to_owned(),
            reason: "not a number",
        })?;
        Self::new(f)
    }
}

/// For each evaluation (metrics against the validation OOD set, index 0), whether it is
/// its method's best setting by `metric` (ties: the first in sweep order).
pub fn best_per_method(validation: &[Evaluation], metric: SelectMetric) -> Vec<bool> {
    let key = |e: &Evaluation| {
        let m = e.metrics[0];
        match metric {
            SelectMetric::Auroc => m.auroc,
            SelectMetric::Fpr95 => -m.fpr95,
        }
    };
    let mut selected = vec![false; validation.len()];
    for (i, e) in validation.iter().enumerate() {
        let name = e.setting.method().as_str();
        let best = validation
            .iter()
            .enumerate()
            .filter(|(_, o)| o.setting.method().as_str() == name)
            .fold(None::<(usize, f64)>, |acc, (j, o)| match acc {
                Some((_, v)) if v >= key(o) => acc,
                _ => Some((j, key(o))),
            });
        selected[i] = best.map(|(j, _)| j) == Some(i);
    }
    selected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_split_is_seeded_disjoint_and_checked() {
        let f = ValFraction::new(0.2).unwrap();
        let (val, test) = f.split(100).unwrap();
        assert_eq!((val.len(), test.len()), (20, 80));
        assert_eq!(f.split(100).unwrap().0, val);
        assert!(val.iter().all(|r| !test.contains(r)));
        assert_eq!(
            "1".parse::<ValFraction>().unwrap_err().to_string(),
            "--val-fraction 1: the validation fraction must be in (0, 1)"
        );
        assert!("0".parse::<ValFraction>().is_err());
        assert!("auc".parse::<SelectMetric>().is_err());
    }
}
