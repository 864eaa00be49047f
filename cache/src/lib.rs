//! The posthoc feature cache: penultimate features, logits, labels, the linear head and
//! ID-train statistics of one model, on disk as Parquet (zstd) with a hashed manifest.
//!
//! This crate knows nothing about networks, images or scores.
//!
//! # Format v1 (one directory per experiment)
//!
//! | file | rows | columns |
//! |---|---|---|
//! | `manifest.json` | | [`Manifest`]: version, model (id, checkpoint sha256, m, C, class names), preprocessing, tool, created, provenance, skipped inputs, and name/role/set/rows/bytes/sha256 of every file below |
//! | `head.parquet` | C | `class` u32, `name` utf8, `weight` `fixed_size_list<f32>[m]`, `bias` f32 |
//! | `id_train.parquet`, `id_test.parquet` (ID sets: `<set>.parquet`), `ood-<set>.parquet` | one per input | `index` u64 (dataset order, strictly increasing), `path` utf8 (relative to the set root), `label` i32 (-1 for OOD), `feature` `fixed_size_list<f32>[m]`, `logits` `fixed_size_list<f32>[C]` |
//! | `stats.parquet` | C + 1 | `class` i32 (-1 = all ID-train rows, then 0..C-1), `count` u64, `mean` `f64[m]` (mu on row -1, mu_c on class rows), `dice_contribution` `f64[m]` (`V[c] = mu * W[c]`; null on row -1), `line_contribution` `f64[m]` (`S[c] = mu_c * W[c]`; null on row -1), `mean_ce` f64, `accuracy` f64 (null for an empty class) |
//! | `activation_percentiles.parquet` | 1001 | `q` f64 (0, 0.1, ..., 100), `value_f32` f32 (`np.percentile` of the float32 ID-train features, interpolated in float32 as numpy does), `value_f64` f64 (same ranks interpolated in f64) |
//!
//! All columns are non-nullable plain Arrow types except the documented nulls of
//! `stats.parquet` (pandas, polars, duckdb read them as they are). Every Parquet file is
//! zstd-compressed without dictionaries, and its footer key/value metadata names
//! `posthoc.format_version`, `posthoc.role`, `posthoc.feature_dim`, `posthoc.num_classes`
//! and, for splits, `posthoc.set`, so a lone file is self-describing. Split files have
//! row groups of 8192 rows (streaming unit) and are sorted by `index`.
//!
//! Statistics are accumulated in f64 row by row in file order (deterministic, independent
//! of threads). The percentiles are exact order statistics of all N x m values, found in
//! three streaming passes that count 16 + 8 + 8 bits of each value's order-preserving
//! bit pattern (no sort, no stored values, a few MB of counters; see
//! [`percentile`]), then interpolated exactly as numpy does.
//!
//! A directory is a cache only once `manifest.json` exists and no `.partial` directory
//! (unfinished write) or `manifest.json.tmp` (interrupted finish) is left over; see
//! [`CacheWriter`] for the write protocol and resume.

#![warn(missing_docs)]

mod data;
mod error;
pub mod fault;
mod import;
mod io;
pub mod lock;
mod manifest;
mod merge;
pub mod percentile;
mod reader;
pub mod schema;
mod stats;
pub mod store;
mod verify;
mod writer;

pub use data::{Head, SplitData, SplitFeatures};
pub use error::{CacheError, Result};
pub use import::{ImportOptions, import_npy, logits_from_head};
pub use lock::{LOCK_FILE, LockOptions, LockOwner, WriteLock};
pub use manifest::{
    FORMAT_VERSION, FileEntry, HEAD_FILE, MANIFEST_FILE, Manifest, ManifestInit, ModelInfo,
    PARTIAL_DIR, PERCENTILES_FILE, Role, STATS_FILE, Skipped, ToolInfo, split_file_name,
    validate_set_name,
};
pub use merge::{merge, merge_locations};
pub use reader::{FeatureCache, SplitStream};
pub use stats::{ActivationPercentiles, TrainStats};
pub use store::{CacheLocation, CopyAction, CopyReport, RemoteStore, RemoteUrl, StoreKind};
pub use verify::{FileCheck, Report, verify};
pub use writer::{CacheWriter, ResumePoint, SplitWriter, WriterOptions};
