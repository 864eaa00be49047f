//! ID-train statistics: means, class means, contributions, activation percentiles,
//! cross-entropy and accuracy of the cached logits, and their two Parquet files.
//!
//! Everything is accumulated in f64 in row order (the file's order, sorted by `index`),
//! one row after the other, so results do not depend on the number of threads.

use std::path::Path;
use std::sync::Arc;

use arrow_array::types::Float64Type;
use arrow_array::{
    ArrayRef, FixedSizeListArray, Float32Array, Float64Array, Int32Array, RecordBatch, UInt64Array,
};
use arrow_buffer::NullBuffer;
use ndarray::{Array1, Array2};

use crate::error::{CacheError, Result};
use crate::manifest::{FileEntry, PERCENTILES_FILE, Role, STATS_FILE};
use crate::percentile::{self, PercentileFloat, RadixSelect};
use crate::schema::{self, col};

/// Footer key of the percentile file: number of activation values (N x m).
pub const KEY_NUM_VALUES: &str = "posthoc.num_values";
/// Footer key of the percentile file: number of zero activation values.
pub const KEY_NUM_ZEROS: &str = "posthoc.num_zeros";

/// Exact percentiles of all ID-train activation values (N x m values, flattened) on the
/// grid `q = 0, 0.1, ..., 100` (see [`percentile::grid`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationPercentiles {
    /// The grid, in percent.
    pub q: Vec<f64>,
    /// `np.percentile(h, q)` on the float32 features (numpy interpolates in float32);
    /// e.g. the ReAct threshold of the reference code.
    pub numpy_f32: Vec<f32>,
    /// `np.percentile(h.astype(np.float64), q)`: the same ranks, interpolated in f64.
    pub numpy_f64: Vec<f64>,
    /// Number of values, N x m.
    pub num_values: u64,
    /// How many of them are zero.
    pub num_zeros: u64,
}

impl ActivationPercentiles {
    /// `(numpy_f32, numpy_f64)` at percentile `q`, when `q` lies on the grid.
    pub fn at(&self, q: f64) -> Option<(f32, f64)> {
        percentile::grid_position(q).map(|k| (self.numpy_f32[k], self.numpy_f64[k]))
    }
}

/// Statistics of the ID-train split that the scores need (see `docs/methods.md`).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainStats {
    /// Number of ID-train rows N.
    pub n_train: u64,
    /// `mu[i] = (1/N) sum_n h_n[i]` (f64 accumulation), length m.
    pub mean: Array1<f64>,
    /// `mu_c[c, i]` = mean of `h[i]` over rows labelled c (zeros for an empty class), C x m.
    pub class_means: Array2<f64>,
    /// Rows per class, length C.
    pub class_counts: Vec<u64>,
    /// DICE contribution `V[c, i] = mu[i] * W[c, i]`, C x m.
    pub dice_contribution: Array2<f64>,
    /// LINe contribution `S[c, i] = mu_c[c, i] * W[c, i]`, C x m.
    pub line_contribution: Array2<f64>,
    /// Mean cross-entropy of the cached logits, `(1/N) sum_n (logsumexp(z_n) - z_n[y_n])`, f64.
    pub mean_ce: f64,
    /// Share of rows whose logits' argmax (lowest index on ties) equals the label.
    pub accuracy: f64,
    /// Mean cross-entropy per class (`None` for an empty class).
    pub class_mean_ce: Vec<Option<f64>>,
    /// Accuracy per class (`None` for an empty class).
    pub class_accuracy: Vec<Option<f64>>,
    /// Percentiles of all activation values.
    pub activation_percentiles: ActivationPercentiles,
}

/// Receives one batch: labels, features (rows x m), logits (rows x C).
pub(crate) type BatchFn<'a> = dyn FnMut(&[i32], &[f32], &[f32]) -> Result<()> + 'a;

/// A source of ID-train rows that can be read several times in the same order.
pub(crate) trait RowSource {
    /// Calls `f(labels, features, logits)` on consecutive batches of all rows
    /// (features row-major `rows x m`, logits `rows x C`).
    fn for_each_batch(&mut self, f: &mut BatchFn<'_>) -> Result<()>;
}

impl RowSource for &crate::SplitData {
    fn for_each_batch(&mut self, f: &mut BatchFn<'_>) -> Result<()> {
        let features = self.features.as_standard_layout();
        let logits = self.logits.as_standard_layout();
        f(
            &self.labels,
            features.as_slice().expect("standard layout"),
            logits.as_slice().expect("standard layout"),
        )
    }
}

/// Cross-entropy `logsumexp(z) - z[y]` in f64.
fn cross_entropy(z: &[f32], y: usize) -> f64 {
    let max = z
        .iter()
        .fold(f64::NEG_INFINITY, |a, &v| a.max(f64::from(v)));
    let sum: f64 = z.iter().map(|&v| (f64::from(v) - max).exp()).sum();
    max + sum.ln() - f64::from(z[y])
}

/// Index of the largest value, lowest index on ties.
fn argmax(z: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in z.iter().enumerate() {
        if v > z[best] {
            best = i;
        }
    }
    best
}

/// Computes [`TrainStats`] from the rows of `source` and the head `W` (C x m): one pass
/// for sums, counts, cross-entropy and the first counting pass of the percentile
/// selection, two more passes over the features to pin the percentile ranks exactly.
pub(crate) fn compute_train_stats(
    source: &mut dyn RowSource,
    weight: &Array2<f32>,
    context: &Path,
) -> Result<TrainStats> {
    let (c, m) = weight.dim();
    let mut n = 0u64;
    let mut sum = vec![0f64; m];
    let mut class_sum = vec![0f64; c * m];
    let mut counts = vec![0u64; c];
    let mut ce_sum = 0f64;
    let mut class_ce = vec![0f64; c];
    let mut class_correct = vec![0u64; c];
    let mut select = RadixSelect::new();
    source.for_each_batch(&mut |labels, features, logits| {
        for (r, &label) in labels.iter().enumerate() {
            if label < 0 || label as usize >= c {
                return Err(CacheError::BadLabel {
                    file: context.to_path_buf(),
                    row: n + r as u64,
                    label: i64::from(label),
                    role: Role::IdTrain.to_string(),
                    num_classes: c,
                });
            }
            let y = label as usize;
            let h = &features[r * m..(r + 1) * m];
            for (s, &v) in sum.iter_mut().zip(h) {
                *s += f64::from(v);
            }
            for (s, &v) in class_sum[y * m..(y + 1) * m].iter_mut().zip(h) {
                *s += f64::from(v);
            }
            counts[y] += 1;
            let z = &logits[r * c..(r + 1) * c];
            let ce = cross_entropy(z, y);
            ce_sum += ce;
            class_ce[y] += ce;
            class_correct[y] += u64::from(argmax(z) == y);
        }
        n += labels.len() as u64;
        select.observe(features);
        Ok(())
    })?;
    if n == 0 {
        return Err(CacheError::InvalidInput {
            context: context.display().to_string(),
            reason: "no ID-train rows to compute statistics from".into(),
        });
    }
    let grid = percentile::grid();
    let total = select.count();
    let interp: Vec<_> = grid
        .iter()
        .map(|&q| percentile::interpolation(total, q))
        .collect();
    let ranks: Vec<u64> = interp.iter().flat_map(|i| [i.lower, i.upper]).collect();
    select.want(&ranks);
    while !select.done() {
        source.for_each_batch(&mut |_, features, _| {
            select.observe(features);
            Ok(())
        })?;
        select.end_pass();
    }
    let numpy_f32 = interp
        .iter()
        .map(|i| f32::numpy_lerp(select.value(i.lower), select.value(i.upper), i.gamma))
        .collect();
    let numpy_f64 = interp
        .iter()
        .map(|i| {
            let (a, b) = (
                f64::from(select.value(i.lower)),
                f64::from(select.value(i.upper)),
            );
            f64::numpy_lerp(a, b, i.gamma)
        })
        .collect();

    let mean = Array1::from_iter(sum.iter().map(|s| s / n as f64));
    let class_means = Array2::from_shape_fn((c, m), |(k, i)| {
        if counts[k] == 0 {
            0.0
        } else {
            class_sum[k * m + i] / counts[k] as f64
        }
    });
    let w = weight.mapv(f64::from);
    let dice_contribution = &w * &mean.view().insert_axis(ndarray::Axis(0));
    let line_contribution = &w * &class_means;
    let per_class = |k: usize, x: f64| (counts[k] > 0).then(|| x / counts[k] as f64);
    Ok(TrainStats {
        n_train: n,
        mean_ce: ce_sum / n as f64,
        accuracy: class_correct.iter().sum::<u64>() as f64 / n as f64,
        class_mean_ce: (0..c).map(|k| per_class(k, class_ce[k])).collect(),
        class_accuracy: (0..c)
            .map(|k| per_class(k, class_correct[k] as f64))
            .collect(),
        mean,
        class_means,
        class_counts: counts,
        dice_contribution,
        line_contribution,
        activation_percentiles: ActivationPercentiles {
            q: grid,
            numpy_f32,
            numpy_f64,
            num_values: total,
            num_zeros: select.zeros(),
        },
    })
}

fn f64_vectors(rows: impl IntoIterator<Item = Option<Vec<f64>>>, m: usize) -> ArrayRef {
    let mut values = Vec::new();
    let mut valid = Vec::new();
    for row in rows {
        valid.push(row.is_some());
        values.extend(row.unwrap_or_else(|| vec![0.0; m]));
    }
    let child: ArrayRef = Arc::new(Float64Array::from(values));
    let nulls = valid.iter().any(|v| !v).then(|| NullBuffer::from(valid));
    Arc::new(FixedSizeListArray::new(
        schema::item_field(arrow_schema::DataType::Float64),
        m as i32,
        child,
        nulls,
    ))
}

impl TrainStats {
    /// Feature width m.
    pub fn feature_dim(&self) -> usize {
        self.mean.len()
    }

    /// Number of classes C.
    pub fn num_classes(&self) -> usize {
        self.class_counts.len()
    }

    /// Checks shapes against `m`, `c` and that every stored number is finite.
    pub fn validate(&self, file: &Path, m: usize, c: usize) -> Result<()> {
        let dim = |column: &str, expected: usize, found: usize| CacheError::DimMismatch {
            file: file.to_path_buf(),
            column: column.to_string(),
            expected,
            found,
        };
        let checks = [
            ("mean", m, self.mean.len()),
            ("mean (classes)", c, self.class_means.nrows()),
            ("mean (class width)", m, self.class_means.ncols()),
            ("count", c, self.class_counts.len()),
            ("dice_contribution", c * m, self.dice_contribution.len()),
            ("line_contribution", c * m, self.line_contribution.len()),
            ("mean_ce (classes)", c, self.class_mean_ce.len()),
            ("accuracy (classes)", c, self.class_accuracy.len()),
            (
                "q",
                percentile::GRID_LEN,
                self.activation_percentiles.q.len(),
            ),
            (
                "value_f32",
                percentile::GRID_LEN,
                self.activation_percentiles.numpy_f32.len(),
            ),
            (
                "value_f64",
                percentile::GRID_LEN,
                self.activation_percentiles.numpy_f64.len(),
            ),
        ];
        for (column, expected, found) in checks {
            if expected != found {
                return Err(dim(column, expected, found));
            }
        }
        let non_finite = |column: &str, row: usize| CacheError::NonFinite {
            file: file.to_path_buf(),
            column: column.to_string(),
            row: row as u64,
        };
        let vectors = [
            ("mean", self.mean.as_slice(), 1),
            ("mean", self.class_means.as_slice(), m),
            ("dice_contribution", self.dice_contribution.as_slice(), m),
            ("line_contribution", self.line_contribution.as_slice(), m),
        ];
        for (column, values, width) in vectors {
            let values = values.expect("standard layout");
            if let Some(row) = schema::first_non_finite_f64(values, width) {
                return Err(non_finite(column, row));
            }
        }
        let p = &self.activation_percentiles;
        if let Some(row) = p.numpy_f32.iter().position(|v| !v.is_finite()) {
            return Err(non_finite("value_f32", row));
        }
        if let Some(row) = p.numpy_f64.iter().position(|v| !v.is_finite()) {
            return Err(non_finite("value_f64", row));
        }
        if !self.mean_ce.is_finite() {
            return Err(non_finite("mean_ce", 0));
        }
        Ok(())
    }

    /// The record batch of `stats.parquet`: row 0 is class -1 (all rows: `mean` = mu,
    /// overall CE and accuracy, null contributions), rows 1..=C the classes.
    fn stats_batch(&self) -> Result<RecordBatch> {
        let (c, m) = (self.num_classes(), self.feature_dim());
        let row_vec = |a: &Array2<f64>, k: usize| a.row(k).to_vec();
        let class: Vec<i32> = std::iter::once(-1).chain(0..c as i32).collect();
        let count: Vec<u64> = std::iter::once(self.n_train)
            .chain(self.class_counts.iter().copied())
            .collect();
        let mean = f64_vectors(
            std::iter::once(Some(self.mean.to_vec()))
                .chain((0..c).map(|k| Some(row_vec(&self.class_means, k)))),
            m,
        );
        let dice = f64_vectors(
            std::iter::once(None).chain((0..c).map(|k| Some(row_vec(&self.dice_contribution, k)))),
            m,
        );
        let line = f64_vectors(
            std::iter::once(None).chain((0..c).map(|k| Some(row_vec(&self.line_contribution, k)))),
            m,
        );
        let ce: Float64Array = std::iter::once(Some(self.mean_ce))
            .chain(self.class_mean_ce.iter().copied())
            .collect();
        let acc: Float64Array = std::iter::once(Some(self.accuracy))
            .chain(self.class_accuracy.iter().copied())
            .collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from(class)),
            Arc::new(UInt64Array::from(count)),
            mean,
            dice,
            line,
            Arc::new(ce),
            Arc::new(acc),
        ];
        RecordBatch::try_new(schema::stats_schema(m), columns).map_err(|source| CacheError::Arrow {
            file: STATS_FILE.into(),
            source,
        })
    }

    fn percentiles_batch(&self) -> Result<RecordBatch> {
        let p = &self.activation_percentiles;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Float64Array::from(p.q.clone())),
            Arc::new(Float32Array::from(p.numpy_f32.clone())),
            Arc::new(Float64Array::from(p.numpy_f64.clone())),
        ];
        RecordBatch::try_new(schema::percentiles_schema(), columns).map_err(|source| {
            CacheError::Arrow {
                file: PERCENTILES_FILE.into(),
                source,
            }
        })
    }

    /// Writes `stats.parquet` and `activation_percentiles.parquet` into `dir`
    /// atomically and returns their manifest entries.
    pub(crate) fn write(&self, dir: &Path) -> Result<Vec<FileEntry>> {
        let (c, m) = (self.num_classes(), self.feature_dim());
        self.validate(&dir.join(STATS_FILE), m, c)?;
        let mut entries = Vec::new();
        let kv = schema::footer(Role::Stats, None, m, c);
        let stats = crate::writer::write_parquet_atomic(
            &dir.join(STATS_FILE),
            schema::stats_schema(m),
            schema::writer_properties(c + 1, kv.clone()),
            [self.stats_batch()?],
        )?;
        entries.push(stats.entry(STATS_FILE, Role::Stats, None));
        let mut kv = kv;
        kv.push((
            KEY_NUM_VALUES.into(),
            self.activation_percentiles.num_values.to_string(),
        ));
        kv.push((
            KEY_NUM_ZEROS.into(),
            self.activation_percentiles.num_zeros.to_string(),
        ));
        let pct = crate::writer::write_parquet_atomic(
            &dir.join(PERCENTILES_FILE),
            schema::percentiles_schema(),
            schema::writer_properties(percentile::GRID_LEN, kv),
            [self.percentiles_batch()?],
        )?;
        entries.push(pct.entry(PERCENTILES_FILE, Role::Stats, None));
        Ok(entries)
    }

    /// Reads both statistics files of a cache, checking hashes (when `verify`), footers,
    /// schemas and dims.
    pub(crate) fn read(
        dir: &Path,
        stats: &FileEntry,
        pct: &FileEntry,
        m: usize,
        c: usize,
        verify: bool,
    ) -> Result<TrainStats> {
        let stats_path = dir.join(&stats.name);
        let (batches, _) =
            crate::reader::read_small_file(dir, stats, &schema::stats_schema(m), m, c, verify)?;
        let mut class = Vec::new();
        let mut count = Vec::new();
        let mut mean = Vec::new();
        let mut dice = Vec::new();
        let mut line = Vec::new();
        let mut ce = Vec::new();
        let mut acc = Vec::new();
        for b in &batches {
            class.extend_from_slice(schema::i32_values(b, &stats_path, col::CLASS)?);
            count.extend_from_slice(schema::u64_values(b, &stats_path, "count")?);
            mean.extend_from_slice(schema::vector_values::<Float64Type>(
                b,
                &stats_path,
                "mean",
                m,
            )?);
            let (d, dv) = schema::nullable_vector_values::<Float64Type>(
                b,
                &stats_path,
                "dice_contribution",
                m,
            )?;
            let (l, lv) = schema::nullable_vector_values::<Float64Type>(
                b,
                &stats_path,
                "line_contribution",
                m,
            )?;
            for (r, (dv, lv)) in dv.iter().zip(&lv).enumerate() {
                if *dv {
                    dice.extend_from_slice(&d[r * m..(r + 1) * m]);
                }
                if *lv {
                    line.extend_from_slice(&l[r * m..(r + 1) * m]);
                }
            }
            ce.extend(schema::opt_f64_values(b, &stats_path, "mean_ce")?);
            acc.extend(schema::opt_f64_values(b, &stats_path, "accuracy")?);
        }
        let expected_class: Vec<i32> = std::iter::once(-1).chain(0..c as i32).collect();
        if class != expected_class {
            return Err(CacheError::InvalidInput {
                context: stats_path.display().to_string(),
                reason: format!("column `class` must be -1, 0, ..., {} in order", c - 1),
            });
        }
        for (column, len) in [
            ("dice_contribution", dice.len()),
            ("line_contribution", line.len()),
        ] {
            if len != c * m {
                return Err(CacheError::DimMismatch {
                    file: stats_path.clone(),
                    column: column.into(),
                    expected: c * m,
                    found: len,
                });
            }
        }
        let (Some(mean_ce), Some(accuracy)) = (ce[0], acc[0]) else {
            return Err(CacheError::Nulls {
                file: stats_path,
                column: "mean_ce/accuracy (row class = -1)".into(),
            });
        };

        let pct_path = dir.join(&pct.name);
        let (batches, kv) =
            crate::reader::read_small_file(dir, pct, &schema::percentiles_schema(), m, c, verify)?;
        let mut q = Vec::new();
        let mut v32 = Vec::new();
        let mut v64 = Vec::new();
        for b in &batches {
            q.extend(
                b.column(0)
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .expect("schema checked")
                    .values()
                    .iter(),
            );
            v32.extend_from_slice(schema::f32_values(b, &pct_path, "value_f32")?);
            v64.extend(
                b.column(2)
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .expect("schema checked")
                    .values()
                    .iter(),
            );
        }
        if q != percentile::grid() {
            return Err(CacheError::InvalidInput {
                context: pct_path.display().to_string(),
                reason: "column `q` is not the grid 0, 0.1, ..., 100".into(),
            });
        }
        let kv_u64 = |key: &str| -> Result<u64> {
            kv.get(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| CacheError::FooterMetadata {
                    file: pct_path.clone(),
                    key: key.into(),
                    reason: "missing or not an integer".into(),
                })
        };
        let stats = TrainStats {
            n_train: count[0],
            mean: Array1::from(mean[..m].to_vec()),
            class_means: Array2::from_shape_vec((c, m), mean[m..].to_vec())
                .expect("length checked"),
            class_counts: count[1..].to_vec(),
            dice_contribution: Array2::from_shape_vec((c, m), dice).expect("length checked"),
            line_contribution: Array2::from_shape_vec((c, m), line).expect("length checked"),
            mean_ce,
            accuracy,
            class_mean_ce: ce[1..].to_vec(),
            class_accuracy: acc[1..].to_vec(),
            activation_percentiles: ActivationPercentiles {
                q,
                numpy_f32: v32,
                numpy_f64: v64,
                num_values: kv_u64(KEY_NUM_VALUES)?,
                num_zeros: kv_u64(KEY_NUM_ZEROS)?,
            },
        };
        stats.validate(&stats_path, m, c)?;
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SplitData;

    #[test]
    fn cross_entropy_and_argmax() {
        let z = [1.0f32, 3.0, 3.0, -2.0];
        assert_eq!(argmax(&z), 1);
        let lse = (1f64.exp() + 2.0 * 3f64.exp() + (-2f64).exp()).ln();
        assert!((cross_entropy(&z, 0) - (lse - 1.0)).abs() < 1e-14);
        // Large logits do not overflow.
        assert!((cross_entropy(&[1000.0, 1000.0], 0) - 2f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn stats_of_a_tiny_split() {
        let data = SplitData {
            index: vec![0, 1, 2],
            paths: vec!["a".into(), "b".into(), "c".into()],
            labels: vec![0, 1, 1],
            features: ndarray::array![[1.0f32, 0.0], [3.0, 2.0], [5.0, 4.0]],
            logits: ndarray::array![[2.0f32, 0.0], [0.0, 1.0], [3.0, 1.0]],
        };
        let w = ndarray::array![[1.0f32, -1.0], [0.5, 2.0]];
        let s = compute_train_stats(&mut &data, &w, Path::new("t")).unwrap();
        assert_eq!(s.n_train, 3);
        assert_eq!(s.mean, ndarray::array![3.0, 2.0]);
        assert_eq!(s.class_means, ndarray::array![[1.0, 0.0], [4.0, 3.0]]);
        assert_eq!(s.class_counts, vec![1, 2]);
        assert_eq!(
            s.dice_contribution,
            ndarray::array![[3.0, -2.0], [1.5, 4.0]]
        );
        assert_eq!(s.line_contribution, ndarray::array![[1.0, 0.0], [2.0, 6.0]]);
        assert!((s.accuracy - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(s.class_accuracy, vec![Some(1.0), Some(0.5)]);
        let values = [1.0f32, 0.0, 3.0, 2.0, 5.0, 4.0];
        for (k, &q) in s.activation_percentiles.q.iter().enumerate() {
            assert_eq!(
                s.activation_percentiles.numpy_f32[k],
                percentile::percentile(&mut values.clone(), q).expect("non-empty")
            );
        }
        assert_eq!(s.activation_percentiles.num_zeros, 1);
        assert_eq!(s.activation_percentiles.at(50.0), Some((2.5, 2.5)));
    }
}
