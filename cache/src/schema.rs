//! Arrow schemas of the format-v1 files, their Parquet writer settings and footer
//! metadata, and checked column access for reading.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Float64Array, Int32Array, RecordBatch,
    StringArray, UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, FieldRef, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::error::{CacheError, Result, io_err};
use crate::manifest::{FORMAT_VERSION, Role};

/// Footer key: format version (`"1"`).
pub const KEY_FORMAT_VERSION: &str = "posthoc.format_version";
/// Footer key: role (`id_train`, `id_test`, `ood`, `head`, `stats`).
pub const KEY_ROLE: &str = "posthoc.role";
/// Footer key: set name (splits only).
pub const KEY_SET: &str = "posthoc.set";
/// Footer key: feature width `m`.
pub const KEY_FEATURE_DIM: &str = "posthoc.feature_dim";
/// Footer key: number of classes `C`.
pub const KEY_NUM_CLASSES: &str = "posthoc.num_classes";

/// Rows per Parquet row group in split files (also the commit unit of writers).
pub const DEFAULT_ROW_GROUP_ROWS: usize = 8192;
/// zstd level of every file of a finished cache.
pub const ZSTD_LEVEL: i32 = 3;
/// zstd level of a writer's temporary parts (rewritten at finish: speed over size).
pub(crate) const PART_ZSTD_LEVEL: i32 = 1;

/// Column names of split files.
pub mod col {
    /// Dataset order of the row (u64).
    pub const INDEX: &str = "index";
    /// Path relative to the set root (utf8).
    pub const PATH: &str = "path";
    /// Class label, -1 for OOD (i32).
    pub const LABEL: &str = "label";
    /// Penultimate feature `h` (fixed-size list of f32, width m).
    pub const FEATURE: &str = "feature";
    /// Logits `z` (fixed-size list of f32, width C).
    pub const LOGITS: &str = "logits";
    /// Class index (u32 in the head, i32 in stats with -1 = all rows).
    pub const CLASS: &str = "class";
    /// Class name (utf8).
    pub const NAME: &str = "name";
    /// Head row `W[c]` (f32 x m).
    pub const WEIGHT: &str = "weight";
    /// Head bias `b[c]` (f32).
    pub const BIAS: &str = "bias";
}

fn fsl(item: DataType, width: usize) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new("item", item, false)), width as i32)
}

/// The item field of vector columns.
pub(crate) fn item_field(item: DataType) -> FieldRef {
    Arc::new(Field::new("item", item, false))
}

/// Schema of a split file: `index` u64, `path` utf8, `label` i32, `feature` `f32[m]`,
/// `logits` `f32[C]`, all non-nullable.
pub fn split_schema(m: usize, c: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::INDEX, DataType::UInt64, false),
        Field::new(col::PATH, DataType::Utf8, false),
        Field::new(col::LABEL, DataType::Int32, false),
        Field::new(col::FEATURE, fsl(DataType::Float32, m), false),
        Field::new(col::LOGITS, fsl(DataType::Float32, c), false),
    ]))
}

/// Schema of `head.parquet`: `class` u32, `name` utf8, `weight` `f32[m]`, `bias` f32.
pub fn head_schema(m: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::CLASS, DataType::UInt32, false),
        Field::new(col::NAME, DataType::Utf8, false),
        Field::new(col::WEIGHT, fsl(DataType::Float32, m), false),
        Field::new(col::BIAS, DataType::Float32, false),
    ]))
}

/// Schema of `stats.parquet` (C + 1 rows; see the crate docs).
pub fn stats_schema(m: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::CLASS, DataType::Int32, false),
        Field::new("count", DataType::UInt64, false),
        Field::new("mean", fsl(DataType::Float64, m), false),
        Field::new("dice_contribution", fsl(DataType::Float64, m), true),
        Field::new("line_contribution", fsl(DataType::Float64, m), true),
        Field::new("mean_ce", DataType::Float64, true),
        Field::new("accuracy", DataType::Float64, true),
    ]))
}

/// Schema of `activation_percentiles.parquet`: `q` f64, `value_f32` f32, `value_f64` f64.
pub fn percentiles_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("q", DataType::Float64, false),
        Field::new("value_f32", DataType::Float32, false),
        Field::new("value_f64", DataType::Float64, false),
    ]))
}

/// Footer key/value pairs naming version, role, set and dims.
pub(crate) fn footer(role: Role, set: Option<&str>, m: usize, c: usize) -> Vec<(String, String)> {
    let mut kv = vec![
        (KEY_FORMAT_VERSION.to_string(), FORMAT_VERSION.to_string()),
        (KEY_ROLE.to_string(), role.as_str().to_string()),
        (KEY_FEATURE_DIM.to_string(), m.to_string()),
        (KEY_NUM_CLASSES.to_string(), c.to_string()),
    ];
    if let Some(set) = set {
        kv.push((KEY_SET.to_string(), set.to_string()));
    }
    kv
}

/// Writer settings of every file: zstd, no dictionary (vectors of floats do not repeat),
/// BYTE_STREAM_SPLIT encoding for the f32 vectors of splits (about 9% smaller files on
/// real DenseNet features; read by pyarrow, polars and duckdb), `row_group_rows` rows
/// per row group, footer metadata `kv`.
pub(crate) fn writer_properties(
    row_group_rows: usize,
    kv: Vec<(String, String)>,
) -> WriterProperties {
    writer_properties_at(ZSTD_LEVEL, row_group_rows, kv)
}

/// [`writer_properties`] with zstd level `level`.
pub(crate) fn writer_properties_at(
    level: i32,
    row_group_rows: usize,
    kv: Vec<(String, String)>,
) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(level).expect("valid zstd level"),
        ))
        .set_dictionary_enabled(false)
        .set_max_row_group_row_count(Some(row_group_rows))
        .set_key_value_metadata(Some(
            kv.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect(),
        ));
    for column in [col::FEATURE, col::LOGITS] {
        let leaf = ColumnPath::from(vec![column.to_string(), "list".into(), "item".into()]);
        builder = builder.set_column_encoding(leaf, Encoding::BYTE_STREAM_SPLIT);
    }
    builder.build()
}

/// A Parquet file opened for reading: the builder, its footer key/values and schema.
pub(crate) struct OpenedParquet {
    pub(crate) builder: ParquetRecordBatchReaderBuilder<File>,
    /// The decoded footer, shareable by further readers of the same file.
    pub(crate) meta: ArrowReaderMetadata,
    pub(crate) kv: BTreeMap<String, String>,
    pub(crate) schema: SchemaRef,
    pub(crate) num_rows: u64,
}

/// Opens `path` as Parquet and reads its footer.
pub(crate) fn open_parquet(path: &Path) -> Result<OpenedParquet> {
    let file = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            CacheError::MissingFile {
                file: path.to_path_buf(),
                what: "listed in the manifest".into(),
            }
        } else {
            io_err(path)(e)
        }
    })?;
    let meta = ArrowReaderMetadata::load(&file, Default::default()).map_err(|source| {
        CacheError::Corrupt {
            file: path.to_path_buf(),
            source,
        }
    })?;
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta.clone());
    let file_meta = meta.metadata().file_metadata();
    let kv = file_meta
        .key_value_metadata()
        .map(|kvs| {
            kvs.iter()
                .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?)))
                .collect()
        })
        .unwrap_or_default();
    let num_rows = u64::try_from(file_meta.num_rows()).unwrap_or(0);
    let schema = builder.schema().clone();
    Ok(OpenedParquet {
        builder,
        meta,
        kv,
        schema,
        num_rows,
    })
}

impl OpenedParquet {
    /// Checks that footer key `key` equals `expected`.
    pub(crate) fn expect_kv(&self, file: &Path, key: &str, expected: &str) -> Result<()> {
        match self.kv.get(key) {
            Some(v) if v == expected => Ok(()),
            Some(v) => Err(CacheError::FooterMetadata {
                file: file.to_path_buf(),
                key: key.to_string(),
                reason: format!("`{v}`, expected `{expected}`"),
            }),
            None => Err(CacheError::FooterMetadata {
                file: file.to_path_buf(),
                key: key.to_string(),
                reason: format!("missing, expected `{expected}`"),
            }),
        }
    }

    /// Checks the footer's version, role, set and dims.
    pub(crate) fn expect_footer(
        &self,
        file: &Path,
        role: Role,
        set: Option<&str>,
        m: usize,
        c: usize,
    ) -> Result<()> {
        for (k, v) in footer(role, set, m, c) {
            self.expect_kv(file, &k, &v)?;
        }
        Ok(())
    }

    /// Checks that the file's Arrow schema carries every column of `expected` with the
    /// same type; a vector column of another width is a [`CacheError::DimMismatch`].
    pub(crate) fn expect_schema(&self, file: &Path, expected: &Schema) -> Result<()> {
        for field in expected.fields() {
            let found = self.schema.field_with_name(field.name()).map_err(|_| {
                CacheError::MissingColumn {
                    file: file.to_path_buf(),
                    column: field.name().clone(),
                }
            })?;
            check_type(file, field.name(), field.data_type(), found.data_type())?;
        }
        Ok(())
    }
}

fn check_type(file: &Path, column: &str, expected: &DataType, found: &DataType) -> Result<()> {
    if let (DataType::FixedSizeList(ei, ew), DataType::FixedSizeList(fi, fw)) = (expected, found)
        && ei.data_type() == fi.data_type()
    {
        if ew != fw {
            return Err(CacheError::DimMismatch {
                file: file.to_path_buf(),
                column: column.to_string(),
                expected: *ew as usize,
                found: *fw as usize,
            });
        }
        return Ok(());
    }
    if expected != found {
        return Err(CacheError::SchemaMismatch {
            file: file.to_path_buf(),
            column: column.to_string(),
            expected: expected.to_string(),
            found: found.to_string(),
        });
    }
    Ok(())
}

fn column<'a, T: Array + 'static>(
    batch: &'a RecordBatch,
    file: &Path,
    name: &str,
) -> Result<&'a T> {
    let array = batch
        .column_by_name(name)
        .ok_or_else(|| CacheError::MissingColumn {
            file: file.to_path_buf(),
            column: name.to_string(),
        })?;
    if array.null_count() > 0 {
        return Err(CacheError::Nulls {
            file: file.to_path_buf(),
            column: name.to_string(),
        });
    }
    array
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| CacheError::SchemaMismatch {
            file: file.to_path_buf(),
            column: name.to_string(),
            expected: std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("")
                .to_string(),
            found: array.data_type().to_string(),
        })
}

/// The non-null u64 values of column `name`.
pub(crate) fn u64_values<'a>(batch: &'a RecordBatch, file: &Path, name: &str) -> Result<&'a [u64]> {
    Ok(column::<UInt64Array>(batch, file, name)?.values())
}

/// The non-null u32 values of column `name`.
pub(crate) fn u32_values<'a>(batch: &'a RecordBatch, file: &Path, name: &str) -> Result<&'a [u32]> {
    Ok(column::<UInt32Array>(batch, file, name)?.values())
}

/// The non-null i32 values of column `name`.
pub(crate) fn i32_values<'a>(batch: &'a RecordBatch, file: &Path, name: &str) -> Result<&'a [i32]> {
    Ok(column::<Int32Array>(batch, file, name)?.values())
}

/// The non-null f32 values of column `name`.
pub(crate) fn f32_values<'a>(batch: &'a RecordBatch, file: &Path, name: &str) -> Result<&'a [f32]> {
    Ok(column::<Float32Array>(batch, file, name)?.values())
}

/// The f64 values of column `name`, `None` for nulls.
pub(crate) fn opt_f64_values(
    batch: &RecordBatch,
    file: &Path,
    name: &str,
) -> Result<Vec<Option<f64>>> {
    let array = batch
        .column_by_name(name)
        .ok_or_else(|| CacheError::MissingColumn {
            file: file.to_path_buf(),
            column: name.to_string(),
        })?;
    let a = array
        .as_any()
        .downcast_ref::<Float64Array>()
        .ok_or_else(|| CacheError::SchemaMismatch {
            file: file.to_path_buf(),
            column: name.to_string(),
            expected: "Float64".into(),
            found: array.data_type().to_string(),
        })?;
    Ok(a.iter().collect())
}

/// The strings of column `name`.
pub(crate) fn str_values<'a>(
    batch: &'a RecordBatch,
    file: &Path,
    name: &str,
) -> Result<&'a StringArray> {
    column::<StringArray>(batch, file, name)
}

/// The flattened values (row-major, `rows x width`) of a non-null fixed-size-list column
/// of primitive type `T`.
pub(crate) fn vector_values<'a, T>(
    batch: &'a RecordBatch,
    file: &Path,
    name: &str,
    width: usize,
) -> Result<&'a [T::Native]>
where
    T: arrow_array::types::ArrowPrimitiveType,
{
    let list = column::<FixedSizeListArray>(batch, file, name)?;
    vector_slice::<T>(list, file, name, width, false)
}

/// Like [`vector_values`] for a list column that may hold null rows; returns the values
/// (null rows hold arbitrary values) and the validity of each row.
pub(crate) fn nullable_vector_values<'a, T>(
    batch: &'a RecordBatch,
    file: &Path,
    name: &str,
    width: usize,
) -> Result<(&'a [T::Native], Vec<bool>)>
where
    T: arrow_array::types::ArrowPrimitiveType,
{
    let array = batch
        .column_by_name(name)
        .ok_or_else(|| CacheError::MissingColumn {
            file: file.to_path_buf(),
            column: name.to_string(),
        })?;
    let list = array
        .as_any()
        .downcast_ref::<FixedSizeListArray>()
        .ok_or_else(|| CacheError::SchemaMismatch {
            file: file.to_path_buf(),
            column: name.to_string(),
            expected: "FixedSizeList".into(),
            found: array.data_type().to_string(),
        })?;
    let valid = (0..list.len()).map(|i| list.is_valid(i)).collect();
    // Null rows come back with null children; only the row validity matters here.
    Ok((vector_slice::<T>(list, file, name, width, true)?, valid))
}

fn vector_slice<'a, T>(
    list: &'a FixedSizeListArray,
    file: &Path,
    name: &str,
    width: usize,
    child_nulls_ok: bool,
) -> Result<&'a [T::Native]>
where
    T: arrow_array::types::ArrowPrimitiveType,
{
    if list.value_length() as usize != width {
        return Err(CacheError::DimMismatch {
            file: file.to_path_buf(),
            column: name.to_string(),
            expected: width,
            found: list.value_length() as usize,
        });
    }
    let values = list
        .values()
        .as_any()
        .downcast_ref::<arrow_array::PrimitiveArray<T>>()
        .ok_or_else(|| CacheError::SchemaMismatch {
            file: file.to_path_buf(),
            column: name.to_string(),
            expected: format!("FixedSizeList of {}", T::DATA_TYPE),
            found: list.data_type().to_string(),
        })?;
    if !child_nulls_ok && values.null_count() > 0 {
        return Err(CacheError::Nulls {
            file: file.to_path_buf(),
            column: name.to_string(),
        });
    }
    let start = list.value_offset_at(0);
    let all = values.values();
    all.get(start..start + list.len() * width)
        .ok_or_else(|| CacheError::DimMismatch {
            file: file.to_path_buf(),
            column: name.to_string(),
            expected: list.len() * width,
            found: all.len().saturating_sub(start),
        })
}

/// A non-null fixed-size-list column of `values` (`rows x width`, row-major).
pub(crate) fn vector_array<T>(values: Vec<T::Native>, width: usize) -> ArrayRef
where
    T: arrow_array::types::ArrowPrimitiveType,
{
    let child: ArrayRef = Arc::new(arrow_array::PrimitiveArray::<T>::from_iter_values(values));
    Arc::new(FixedSizeListArray::new(
        item_field(T::DATA_TYPE),
        width as i32,
        child,
        None,
    ))
}

/// Row of the first non-finite value of `values` (row-major, `width` per row).
pub(crate) fn first_non_finite_f32(values: &[f32], width: usize) -> Option<usize> {
    // NaN and infinities are the values whose exponent bits are all ones; the maximum of
    // the masked exponents is a vectorised pass that finds whether any exists.
    const EXP: u32 = 0x7f80_0000;
    let max_exp = values
        .iter()
        .fold(0u32, |acc, v| acc.max(v.to_bits() & EXP));
    if max_exp != EXP {
        return None;
    }
    values
        .iter()
        .position(|v| !v.is_finite())
        .map(|p| p / width.max(1))
}

/// Like [`first_non_finite_f32`] for f64.
pub(crate) fn first_non_finite_f64(values: &[f64], width: usize) -> Option<usize> {
    values
        .iter()
        .position(|v| !v.is_finite())
        .map(|p| p / width.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_rows_are_found() {
        let mut v = vec![0.5f32; 30];
        assert_eq!(first_non_finite_f32(&v, 3), None);
        v[17] = f32::NAN;
        assert_eq!(first_non_finite_f32(&v, 3), Some(5));
        v[17] = 0.0;
        v[4] = f32::NEG_INFINITY;
        assert_eq!(first_non_finite_f32(&v, 3), Some(1));
        assert_eq!(first_non_finite_f64(&[1.0, f64::INFINITY], 1), Some(1));
    }

    #[test]
    fn schemas_use_plain_types() {
        let s = split_schema(342, 10);
        assert_eq!(s.field(0).data_type(), &DataType::UInt64);
        assert_eq!(s.field(3).data_type(), &fsl(DataType::Float32, 342));
        assert!(s.fields().iter().all(|f| !f.is_nullable()));
    }
}
