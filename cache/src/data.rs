//! In-memory forms of the head and of a split (or a batch of one).

use ndarray::{Array1, Array2, s};

use crate::error::{CacheError, Result};
use crate::schema::{col, first_non_finite_f32};

/// The linear head of the network: logits `z = W h + b`.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// `W`, C x m (`fc.weight`).
    pub weight: Array2<f32>,
    /// `b`, C (`fc.bias`).
    pub bias: Array1<f32>,
}

impl Head {
    /// Number of classes C.
    pub fn num_classes(&self) -> usize {
        self.weight.nrows()
    }

    /// Feature width m.
    pub fn feature_dim(&self) -> usize {
        self.weight.ncols()
    }

    /// Checks `W` is `c x m`, `b` has `c` entries and every value is finite; `file` names
    /// the head file in errors.
    pub fn validate(&self, file: &std::path::Path, m: usize, c: usize) -> Result<()> {
        let file = file.to_path_buf();
        let dim = |column: &str, expected, found| CacheError::DimMismatch {
            file: file.clone(),
            column: column.to_string(),
            expected,
            found,
        };
        if self.weight.ncols() != m {
            return Err(dim("weight", m, self.weight.ncols()));
        }
        if self.weight.nrows() != c {
            return Err(dim("weight (rows)", c, self.weight.nrows()));
        }
        if self.bias.len() != c {
            return Err(dim("bias", c, self.bias.len()));
        }
        let w = self.weight.as_standard_layout();
        if let Some(row) = first_non_finite_f32(w.as_slice().expect("standard layout"), m) {
            return Err(CacheError::NonFinite {
                file: file.clone(),
                column: "weight".into(),
                row: row as u64,
            });
        }
        if let Some(row) = self.bias.iter().position(|v| !v.is_finite()) {
            return Err(CacheError::NonFinite {
                file,
                column: "bias".into(),
                row: row as u64,
            });
        }
        Ok(())
    }
}

/// What scoring needs of one set: row `i` is dataset item `index[i]` with its label (-1
/// for OOD sets) and feature `h` ([`FeatureCache::split_features`](crate::FeatureCache::split_features)).
#[derive(Debug, Clone, PartialEq)]
pub struct SplitFeatures {
    /// Dataset order of each row.
    pub index: Vec<u64>,
    /// Class label of each row (-1 for OOD sets).
    pub labels: Vec<i32>,
    /// Features, rows x m.
    pub features: Array2<f32>,
}

impl SplitFeatures {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.index.len()
    }
}

/// Rows of one set (a whole split, or a batch of one): row `i` is dataset item
/// `index[i]`, with its path, label (-1 for OOD), feature `h` and logits `z`.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitData {
    /// Dataset order of each row.
    pub index: Vec<u64>,
    /// Path of each row's input, relative to the set root.
    pub paths: Vec<String>,
    /// Class label of each row (-1 for OOD sets).
    pub labels: Vec<i32>,
    /// Features, rows x m.
    pub features: Array2<f32>,
    /// Logits, rows x C.
    pub logits: Array2<f32>,
}

impl SplitData {
    /// An empty split of width `m` and `c` classes.
    pub fn empty(m: usize, c: usize) -> SplitData {
        SplitData {
            index: Vec::new(),
            paths: Vec::new(),
            labels: Vec::new(),
            features: Array2::zeros((0, m)),
            logits: Array2::zeros((0, c)),
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.index.len()
    }

    /// Rows `start..end` as a new `SplitData`.
    pub fn slice(&self, start: usize, end: usize) -> SplitData {
        SplitData {
            index: self.index[start..end].to_vec(),
            paths: self.paths[start..end].to_vec(),
            labels: self.labels[start..end].to_vec(),
            features: self.features.slice(s![start..end, ..]).to_owned(),
            logits: self.logits.slice(s![start..end, ..]).to_owned(),
        }
    }

    /// Checks that all columns have the same number of rows, features are `m` wide,
    /// logits `c` wide, every value is finite and labels suit `role`
    /// (`0..c` for ID, -1 for OOD). `file` names the destination in errors; a row is
    /// named by its dataset index.
    pub fn validate(
        &self,
        file: &std::path::Path,
        m: usize,
        c: usize,
        role: crate::Role,
    ) -> Result<()> {
        let n = self.index.len();
        let dim = |column: &str, expected, found| CacheError::DimMismatch {
            file: file.to_path_buf(),
            column: column.to_string(),
            expected,
            found,
        };
        if self.paths.len() != n {
            return Err(dim("path (rows)", n, self.paths.len()));
        }
        if self.labels.len() != n {
            return Err(dim("label (rows)", n, self.labels.len()));
        }
        if self.features.nrows() != n {
            return Err(dim("feature (rows)", n, self.features.nrows()));
        }
        if self.logits.nrows() != n {
            return Err(dim("logits (rows)", n, self.logits.nrows()));
        }
        if self.features.ncols() != m {
            return Err(dim(col::FEATURE, m, self.features.ncols()));
        }
        if self.logits.ncols() != c {
            return Err(dim(col::LOGITS, c, self.logits.ncols()));
        }
        for (column, values, width) in [
            (col::FEATURE, &self.features, m),
            (col::LOGITS, &self.logits, c),
        ] {
            let v = values.as_standard_layout();
            if let Some(row) = first_non_finite_f32(v.as_slice().expect("standard layout"), width) {
                return Err(CacheError::NonFinite {
                    file: file.to_path_buf(),
                    column: column.to_string(),
                    row: self.index[row],
                });
            }
        }
        for (i, &label) in self.labels.iter().enumerate() {
            let ok = if role.is_id() {
                label >= 0 && (label as usize) < c
            } else {
                label == -1
            };
            if !ok {
                return Err(CacheError::BadLabel {
                    file: file.to_path_buf(),
                    row: self.index[i],
                    label: i64::from(label),
                    role: role.to_string(),
                    num_classes: c,
                });
            }
        }
        Ok(())
    }
}
