//! Reading a finished cache: [`FeatureCache`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_array::types::Float32Type;
use arrow_schema::Schema;
use ndarray::{Array1, Array2};
use std::fs::File;

use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};
use rayon::prelude::*;

use crate::data::{Head, SplitData, SplitFeatures};
use crate::error::io_err;
use crate::error::{CacheError, Result};
use crate::io::{BackgroundHash, file_size};
use crate::manifest::{
    FileEntry, HEAD_FILE, MANIFEST_FILE, Manifest, PARTIAL_DIR, PERCENTILES_FILE, Role, STATS_FILE,
};
use crate::schema::{self, OpenedParquet, col, first_non_finite_f32};
use crate::stats::TrainStats;

/// Rows decoded at a time by whole-split loads: small enough that the decode buffers
/// (rows x (m + C) x 4 bytes) stay below the allocator's mmap threshold and are reused
/// instead of being faulted in afresh for every batch.
const LOAD_BATCH_ROWS: usize = 1024;

/// A finished cache directory, opened and checked: the manifest is valid, no write is
/// pending, and every listed file exists with its recorded size. Data are read lazily.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    dir: PathBuf,
    manifest: Manifest,
    verify_hashes: bool,
}

/// Markers of an unfinished write: the `.partial` directory, a staged manifest.
pub(crate) fn check_not_partial(dir: &Path) -> Result<()> {
    if dir.join(PARTIAL_DIR).exists() {
        return Err(CacheError::Unfinished {
            dir: dir.to_path_buf(),
            reason: format!(
                "`{PARTIAL_DIR}` is present: a write was interrupted or not finished (resume it with CacheWriter::open_resume)"
            ),
        });
    }
    let staged = crate::io::tmp_path(&dir.join(MANIFEST_FILE));
    if staged.exists() {
        return Err(CacheError::Unfinished {
            dir: dir.to_path_buf(),
            reason: format!(
                "`{}` is present: a finish was interrupted",
                staged.display()
            ),
        });
    }
    Ok(())
}

impl FeatureCache {
    /// Opens `dir`, checking sha256 of every file as it is read.
    pub fn open(dir: impl AsRef<Path>) -> Result<FeatureCache> {
        Self::open_with(dir, true)
    }

    /// Opens `dir`; `verify_hashes = false` skips the sha256 checks on reads (sizes,
    /// schemas, dims and finiteness are still checked).
    pub fn open_with(dir: impl AsRef<Path>, verify_hashes: bool) -> Result<FeatureCache> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::read(&dir)?;
        check_not_partial(&dir)?;
        for f in &manifest.files {
            let path = dir.join(&f.name);
            match file_size(&path)? {
                None => {
                    return Err(CacheError::MissingFile {
                        file: path,
                        what: format!("{} file listed in the manifest", f.role),
                    });
                }
                Some(size) if size != f.bytes => {
                    return Err(CacheError::SizeMismatch {
                        file: path,
                        expected: f.bytes,
                        found: size,
                    });
                }
                Some(_) => {}
            }
        }
        Ok(FeatureCache {
            dir,
            manifest,
            verify_hashes,
        })
    }

    /// Opens the cache at `location`: a directory path, or a URL (`file://`, `s3://`,
    /// `gs://`, `az://`, `http(s)://`; see [`crate::store`]). A remote cache is made
    /// local through the content-addressed download cache first (each file's sha256
    /// checked on arrival); `dir()` is then that local copy.
    pub fn open_url(location: &str, verify_hashes: bool) -> Result<FeatureCache> {
        match crate::store::CacheLocation::parse(location)? {
            crate::store::CacheLocation::Local(dir) => Self::open_with(dir, verify_hashes),
            crate::store::CacheLocation::Remote(url) => {
                let dir = crate::store::fetch_remote(&url)?;
                Self::open_with(dir, verify_hashes)
            }
        }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Feature width m.
    pub fn feature_dim(&self) -> usize {
        self.manifest.model.feature_dim
    }

    /// Number of classes C.
    pub fn num_classes(&self) -> usize {
        self.manifest.model.num_classes
    }

    /// Names of the sets with `role`, in manifest order.
    pub fn sets(&self, role: Role) -> Vec<String> {
        self.manifest.split_names(Some(role))
    }

    /// The ID-train split name, if any.
    pub fn id_train(&self) -> Option<String> {
        self.sets(Role::IdTrain).into_iter().next()
    }

    /// The ID-test split name, if any.
    pub fn id_test(&self) -> Option<String> {
        self.sets(Role::IdTest).into_iter().next()
    }

    /// The linear head (`W`: C x m, `b`: C), checked against the manifest.
    pub fn head(&self) -> Result<Head> {
        let entry = self
            .manifest
            .file(HEAD_FILE)
            .expect("manifest validated: one head");
        read_head(&self.dir, entry, &self.manifest, self.verify_hashes)
    }

    /// The ID-train statistics, or [`CacheError::MissingStats`].
    pub fn stats(&self) -> Result<TrainStats> {
        let (Some(stats), Some(pct)) = (
            self.manifest.file(STATS_FILE),
            self.manifest.file(PERCENTILES_FILE),
        ) else {
            return Err(CacheError::MissingStats {
                dir: self.dir.clone(),
            });
        };
        TrainStats::read(
            &self.dir,
            stats,
            pct,
            self.feature_dim(),
            self.num_classes(),
            self.verify_hashes,
        )
    }

    /// Loads set `set` whole into preallocated arrays, decoding row groups in parallel
    /// (rayon). Peak memory is the result plus one 1024-row batch per thread.
    pub fn split(&self, set: &str) -> Result<SplitData> {
        self.load_checked(set, Columns::All)
    }

    /// Loads what scoring needs of set `set` (index, label, feature) whole, without
    /// decoding its `path` and `logits` columns: for an ImageNet-size set the logits are
    /// half the feature bytes again. Checked like [`FeatureCache::split`] (the hash covers
    /// the whole file; the skipped columns are not checked for finite values).
    pub fn split_features(&self, set: &str) -> Result<SplitFeatures> {
        let data = self.load_checked(set, Columns::Scoring)?;
        Ok(SplitFeatures {
            index: data.index,
            labels: data.labels,
            features: data.features,
        })
    }

    /// [`load_split`] of `set`, its sha256 checked on a background thread meanwhile.
    fn load_checked(&self, set: &str, columns: Columns) -> Result<SplitData> {
        let entry = self.manifest.split_entry(set)?;
        let path = self.dir.join(&entry.name);
        let sha = self.verify_hashes.then_some(entry.sha256.as_str());
        let hash = sha.map(|_| BackgroundHash::spawn(&path));
        let (m, c) = (self.feature_dim(), self.num_classes());
        match load_split(&path, set, entry.role, m, c, entry.rows, columns) {
            Ok(data) => {
                if let (Some(h), Some(sha)) = (hash, sha) {
                    h.check(sha)?;
                }
                Ok(data)
            }
            Err(e) => Err(prefer_hash_error(e, hash, sha)),
        }
    }

    /// Streams set `set` in batches of at most `rows_per_batch` rows. The sha256 verdict
    /// (and the row count check) arrive with the end of the stream: read it to the end.
    pub fn stream_split(&self, set: &str, rows_per_batch: usize) -> Result<SplitStream> {
        let entry = self.manifest.split_entry(set)?;
        let reader = SplitReader::open(
            &self.dir,
            entry,
            self.feature_dim(),
            self.num_classes(),
            self.verify_hashes,
            rows_per_batch.max(1),
        )?;
        Ok(SplitStream {
            reader,
            done: false,
        })
    }
}

/// Batches of a split, in file order (ascending `index`); see [`FeatureCache::stream_split`].
pub struct SplitStream {
    reader: SplitReader,
    done: bool,
}

impl Iterator for SplitStream {
    type Item = Result<SplitData>;

    fn next(&mut self) -> Option<Result<SplitData>> {
        if self.done {
            return None;
        }
        let (m, c) = (self.reader.m, self.reader.c);
        match self.reader.next_checked() {
            Ok(Some(b)) => {
                let rows = b.index.len();
                Some(Ok(SplitData {
                    index: b.index.to_vec(),
                    paths: b
                        .full_paths()
                        .iter()
                        .map(|p| p.unwrap_or_default().to_string())
                        .collect(),
                    labels: b.labels.to_vec(),
                    features: Array2::from_shape_vec((rows, m), b.features.to_vec())
                        .expect("checked width"),
                    logits: Array2::from_shape_vec((rows, c), b.full_logits().to_vec())
                        .expect("checked width"),
                }))
            }
            Ok(None) => {
                self.done = true;
                self.reader.finish().err().map(Err)
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// One decoded batch of a split, borrowed from its Arrow arrays, checked (`paths` and
/// `logits` are `None` when the reader skips them, [`Columns::Scoring`]).
pub(crate) struct BatchView<'a> {
    pub(crate) index: &'a [u64],
    pub(crate) paths: Option<&'a arrow_array::StringArray>,
    pub(crate) labels: &'a [i32],
    pub(crate) features: &'a [f32],
    pub(crate) logits: Option<&'a [f32]>,
}

impl<'a> BatchView<'a> {
    /// The paths of a reader of [`Columns::All`].
    pub(crate) fn full_paths(&self) -> &'a arrow_array::StringArray {
        self.paths.expect("a reader of every column decodes paths")
    }

    /// The logits of a reader of [`Columns::All`].
    pub(crate) fn full_logits(&self) -> &'a [f32] {
        self.logits
            .expect("a reader of every column decodes logits")
    }
}

/// Which columns of a split file a reader decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Columns {
    /// Every column.
    All,
    /// `index`, `label` and `feature` only.
    Scoring,
}

/// Decodes a split file batch by batch and checks every batch: schema and dims against
/// the manifest, no nulls, finite values, labels suiting the role, strictly increasing
/// `index`; at the end the row count and (optionally) sha256.
pub(crate) struct SplitReader {
    pub(crate) path: PathBuf,
    role: Role,
    m: usize,
    c: usize,
    reader: ParquetRecordBatchReader,
    columns: Columns,
    hash: Option<BackgroundHash>,
    expected_sha: String,
    expected_rows: Option<u64>,
    rows: u64,
    last_index: Option<u64>,
    current: Option<RecordBatch>,
}

impl SplitReader {
    /// Opens a split listed in a manifest.
    pub(crate) fn open(
        dir: &Path,
        entry: &FileEntry,
        m: usize,
        c: usize,
        verify: bool,
        batch_rows: usize,
    ) -> Result<SplitReader> {
        let set = entry.set.as_deref().expect("split entries carry a set");
        Self::open_path(
            &dir.join(&entry.name),
            set,
            entry.role,
            m,
            c,
            verify.then_some(entry.sha256.as_str()),
            Some(entry.rows),
            batch_rows,
        )
    }

    /// Opens any split file (also writer parts); `sha256`/`rows` when known.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open_path(
        path: &Path,
        set: &str,
        role: Role,
        m: usize,
        c: usize,
        sha256: Option<&str>,
        rows: Option<u64>,
        batch_rows: usize,
    ) -> Result<SplitReader> {
        let hash = sha256.map(|_| BackgroundHash::spawn(path));
        let opened = match open_checked(path, set, role, m, c, rows) {
            Ok(o) => o,
            Err(e) => return Err(prefer_hash_error(e, hash, sha256)),
        };
        let reader = match opened.builder.with_batch_size(batch_rows).build() {
            Ok(r) => r,
            Err(source) => {
                let e = CacheError::Corrupt {
                    file: path.to_path_buf(),
                    source,
                };
                return Err(prefer_hash_error(e, hash, sha256));
            }
        };
        Ok(SplitReader {
            path: path.to_path_buf(),
            role,
            m,
            c,
            reader,
            columns: Columns::All,
            hash,
            expected_sha: sha256.unwrap_or_default().to_string(),
            expected_rows: rows,
            rows: 0,
            last_index: None,
            current: None,
        })
    }

    /// A reader of row group `group` only, whose rows are numbered from `first_row`
    /// (no hash, no row count check: the caller does both for the whole file).
    #[allow(clippy::too_many_arguments)]
    fn for_row_group(
        path: &Path,
        role: Role,
        m: usize,
        c: usize,
        meta: &ArrowReaderMetadata,
        group: usize,
        first_row: u64,
        batch_rows: usize,
        columns: Columns,
    ) -> Result<SplitReader> {
        let file = File::open(path).map_err(io_err(path))?;
        let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta.clone())
            .with_row_groups(vec![group])
            .with_batch_size(batch_rows);
        if columns == Columns::Scoring {
            // The schema was checked on open: these roots exist.
            let roots: Vec<usize> = [col::INDEX, col::LABEL, col::FEATURE]
                .iter()
                .filter_map(|name| meta.schema().index_of(name).ok())
                .collect();
            let mask = ProjectionMask::roots(meta.parquet_schema(), roots);
            builder = builder.with_projection(mask);
        }
        let reader = builder.build().map_err(|source| CacheError::Corrupt {
            file: path.to_path_buf(),
            source,
        })?;
        Ok(SplitReader {
            path: path.to_path_buf(),
            role,
            m,
            c,
            reader,
            columns,
            hash: None,
            expected_sha: String::new(),
            expected_rows: None,
            rows: first_row,
            last_index: None,
            current: None,
        })
    }

    /// Turns an error into a hash mismatch when the file's hash is wrong (the better
    /// explanation of a decode failure or an odd value).
    pub(crate) fn fail(&mut self, e: CacheError) -> CacheError {
        let expected = (!self.expected_sha.is_empty()).then_some(self.expected_sha.as_str());
        prefer_hash_error(e, self.hash.take(), expected)
    }

    /// The next batch, checked, or `None` at the end.
    pub(crate) fn next_checked(&mut self) -> Result<Option<BatchView<'_>>> {
        self.current = match self.reader.next() {
            None => None,
            Some(Ok(b)) => Some(b),
            Some(Err(source)) => {
                let e = CacheError::Arrow {
                    file: self.path.clone(),
                    source,
                };
                return Err(self.fail(e));
            }
        };
        if self.current.is_none() {
            return Ok(None);
        }
        if let Err(e) = self.check_current() {
            return Err(self.fail(e));
        }
        let batch = self.current.as_ref().expect("set above");
        let p = &self.path;
        let all = self.columns == Columns::All;
        Ok(Some(BatchView {
            index: schema::u64_values(batch, p, col::INDEX)?,
            paths: if all {
                Some(schema::str_values(batch, p, col::PATH)?)
            } else {
                None
            },
            labels: schema::i32_values(batch, p, col::LABEL)?,
            features: schema::vector_values::<Float32Type>(batch, p, col::FEATURE, self.m)?,
            logits: if all {
                Some(schema::vector_values::<Float32Type>(
                    batch,
                    p,
                    col::LOGITS,
                    self.c,
                )?)
            } else {
                None
            },
        }))
    }

    fn check_current(&mut self) -> Result<()> {
        let batch = self.current.as_ref().expect("a current batch");
        let p = &self.path;
        let index = schema::u64_values(batch, p, col::INDEX)?;
        let labels = schema::i32_values(batch, p, col::LABEL)?;
        let features = schema::vector_values::<Float32Type>(batch, p, col::FEATURE, self.m)?;
        let mut floats = vec![(col::FEATURE, features, self.m)];
        if self.columns == Columns::All {
            schema::str_values(batch, p, col::PATH)?;
            let logits = schema::vector_values::<Float32Type>(batch, p, col::LOGITS, self.c)?;
            floats.push((col::LOGITS, logits, self.c));
        }
        for (column, values, width) in floats {
            if let Some(r) = first_non_finite_f32(values, width) {
                return Err(CacheError::NonFinite {
                    file: p.clone(),
                    column: column.to_string(),
                    row: self.rows + r as u64,
                });
            }
        }
        for (r, &label) in labels.iter().enumerate() {
            let ok = if self.role.is_id() {
                label >= 0 && (label as usize) < self.c
            } else {
                label == -1
            };
            if !ok {
                return Err(CacheError::BadLabel {
                    file: p.clone(),
                    row: self.rows + r as u64,
                    label: i64::from(label),
                    role: self.role.to_string(),
                    num_classes: self.c,
                });
            }
        }
        for (r, &i) in index.iter().enumerate() {
            if let Some(prev) = self.last_index
                && i <= prev
            {
                return Err(CacheError::UnsortedIndex {
                    file: p.clone(),
                    row: self.rows + r as u64,
                    index: i,
                    previous: prev,
                });
            }
            self.last_index = Some(i);
        }
        self.rows += index.len() as u64;
        Ok(())
    }

    /// Checks the row count and the sha256 after the last batch.
    pub(crate) fn finish(&mut self) -> Result<u64> {
        if let Some(expected) = self.expected_rows
            && expected != self.rows
        {
            let e = CacheError::RowCount {
                file: self.path.clone(),
                expected,
                found: self.rows,
            };
            return Err(self.fail(e));
        }
        if let Some(h) = self.hash.take() {
            h.check(&self.expected_sha)?;
        }
        Ok(self.rows)
    }
}

/// Opens a split file and checks its footer, schema and (when given) row count.
fn open_checked(
    path: &Path,
    set: &str,
    role: Role,
    m: usize,
    c: usize,
    rows: Option<u64>,
) -> Result<OpenedParquet> {
    let opened = schema::open_parquet(path)?;
    opened.expect_footer(path, role, Some(set), m, c)?;
    opened.expect_schema(path, &schema::split_schema(m, c))?;
    match rows {
        Some(r) if r != opened.num_rows => Err(CacheError::RowCount {
            file: path.to_path_buf(),
            expected: r,
            found: opened.num_rows,
        }),
        _ => Ok(opened),
    }
}

/// Index, path and label columns of one row group.
struct GroupRows {
    index: Vec<u64>,
    paths: Vec<String>,
    labels: Vec<i32>,
}

/// Decodes row group `group` into `features`/`logits` (its rows of the preallocated
/// arrays), checking every batch.
#[allow(clippy::too_many_arguments)]
fn read_group(
    path: &Path,
    role: Role,
    (m, c): (usize, usize),
    meta: &ArrowReaderMetadata,
    group: usize,
    first_row: u64,
    features: &mut [f32],
    mut logits: Option<&mut [f32]>,
) -> Result<GroupRows> {
    let rows = features.len() / m;
    let columns = if logits.is_some() {
        Columns::All
    } else {
        Columns::Scoring
    };
    let mut reader = SplitReader::for_row_group(
        path,
        role,
        m,
        c,
        meta,
        group,
        first_row,
        LOAD_BATCH_ROWS,
        columns,
    )?;
    let mut out = GroupRows {
        index: Vec::with_capacity(rows),
        paths: Vec::with_capacity(rows),
        labels: Vec::with_capacity(rows),
    };
    let mut at = 0;
    while let Some(b) = reader.next_checked()? {
        let r = b.index.len();
        if at + r > rows {
            break;
        }
        features[at * m..(at + r) * m].copy_from_slice(b.features);
        if let (Some(logits), Some(l)) = (logits.as_deref_mut(), b.logits) {
            logits[at * c..(at + r) * c].copy_from_slice(l);
        }
        out.index.extend_from_slice(b.index);
        out.labels.extend_from_slice(b.labels);
        if let Some(paths) = b.paths {
            out.paths
                .extend(paths.iter().map(|p| p.unwrap_or_default().to_string()));
        }
        at += r;
    }
    if at != rows || reader.reader.next().is_some() {
        return Err(CacheError::RowCount {
            file: path.to_path_buf(),
            expected: first_row + rows as u64,
            found: first_row + at as u64,
        });
    }
    Ok(out)
}

/// Loads a whole split file into preallocated arrays, decoding its row groups in
/// parallel (each into its own rows of the result). With [`Columns::Scoring`] the
/// result has no paths and `rows x 0` logits.
fn load_split(
    path: &Path,
    set: &str,
    role: Role,
    m: usize,
    c: usize,
    rows: u64,
    columns: Columns,
) -> Result<SplitData> {
    let opened = open_checked(path, set, role, m, c, Some(rows))?;
    let group_rows: Vec<usize> = opened
        .meta
        .metadata()
        .row_groups()
        .iter()
        .map(|g| usize::try_from(g.num_rows()).unwrap_or(0))
        .collect();
    let n = usize::try_from(rows).expect("row count fits in memory");
    if group_rows.iter().sum::<usize>() != n {
        return Err(CacheError::RowCount {
            file: path.to_path_buf(),
            expected: rows,
            found: group_rows.iter().sum::<usize>() as u64,
        });
    }
    let mut features = Array2::<f32>::zeros((n, m));
    let logit_cols = if columns == Columns::All { c } else { 0 };
    let mut logits = Array2::<f32>::zeros((n, logit_cols));
    let mut chunks = Vec::with_capacity(group_rows.len());
    {
        let (mut f_rest, mut l_rest) = (
            features.as_slice_mut().expect("standard layout"),
            logits.as_slice_mut().expect("standard layout"),
        );
        let mut first = 0u64;
        for (g, &r) in group_rows.iter().enumerate() {
            let (f, fr) = f_rest.split_at_mut(r * m);
            let (l, lr) = l_rest.split_at_mut(r * logit_cols);
            chunks.push((g, first, f, (logit_cols > 0).then_some(l)));
            (f_rest, l_rest) = (fr, lr);
            first += r as u64;
        }
        let meta = &opened.meta;
        let results: Vec<Result<GroupRows>> = chunks
            .into_par_iter()
            .map(|(g, first, f, l)| read_group(path, role, (m, c), meta, g, first, f, l))
            .collect();
        let mut out = SplitData {
            index: Vec::with_capacity(n),
            paths: Vec::with_capacity(n),
            labels: Vec::with_capacity(n),
            features: Array2::zeros((0, m)),
            logits: Array2::zeros((0, c)),
        };
        for group in results {
            let group = group?; // the first failing group in file order
            if let (Some(&prev), Some(&next)) = (out.index.last(), group.index.first())
                && next <= prev
            {
                return Err(CacheError::UnsortedIndex {
                    file: path.to_path_buf(),
                    row: out.index.len() as u64,
                    index: next,
                    previous: prev,
                });
            }
            out.index.extend(group.index);
            out.paths.extend(group.paths);
            out.labels.extend(group.labels);
        }
        drop(opened);
        out.features = features;
        out.logits = logits;
        Ok(out)
    }
}

/// When `hash` says the file differs from the manifest, that is the error to report.
fn prefer_hash_error(
    e: CacheError,
    hash: Option<BackgroundHash>,
    expected: Option<&str>,
) -> CacheError {
    match (hash, expected) {
        (Some(h), Some(sha)) => match h.check(sha) {
            Err(mismatch @ CacheError::HashMismatch { .. }) => mismatch,
            _ => e,
        },
        _ => e,
    }
}

/// Reads a small file (head, stats) whole, checking size, hash, footer and schema.
/// Returns its batches and footer key/values.
pub(crate) fn read_small_file(
    dir: &Path,
    entry: &FileEntry,
    expected: &Schema,
    m: usize,
    c: usize,
    verify: bool,
) -> Result<(Vec<RecordBatch>, BTreeMap<String, String>)> {
    let path = dir.join(&entry.name);
    let hash = verify.then(|| BackgroundHash::spawn(&path));
    let sha = verify.then_some(entry.sha256.as_str());
    let result = (|| {
        let opened = schema::open_parquet(&path)?;
        opened.expect_footer(&path, entry.role, None, m, c)?;
        opened.expect_schema(&path, expected)?;
        if opened.num_rows != entry.rows {
            return Err(CacheError::RowCount {
                file: path.clone(),
                expected: entry.rows,
                found: opened.num_rows,
            });
        }
        let kv = opened.kv.clone();
        let reader = opened
            .builder
            .build()
            .map_err(|source| CacheError::Corrupt {
                file: path.clone(),
                source,
            })?;
        let batches = reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|source| CacheError::Arrow {
                file: path.clone(),
                source,
            })?;
        Ok((batches, kv))
    })();
    match result {
        Ok(r) => {
            if let (Some(h), Some(sha)) = (hash, sha) {
                h.check(sha)?;
            }
            Ok(r)
        }
        Err(e) => Err(prefer_hash_error(e, hash, sha)),
    }
}

/// Reads and checks `head.parquet`: C rows, classes `0..C` in order, names as in the
/// manifest, `weight` m wide, finite values.
pub(crate) fn read_head(
    dir: &Path,
    entry: &FileEntry,
    manifest: &Manifest,
    verify: bool,
) -> Result<Head> {
    let (m, c) = (manifest.model.feature_dim, manifest.model.num_classes);
    let path = dir.join(&entry.name);
    let (batches, _) = read_small_file(dir, entry, &schema::head_schema(m), m, c, verify)?;
    let mut classes = Vec::with_capacity(c);
    let mut names = Vec::with_capacity(c);
    let mut weight = Vec::with_capacity(c * m);
    let mut bias = Vec::with_capacity(c);
    for b in &batches {
        classes.extend_from_slice(schema::u32_values(b, &path, col::CLASS)?);
        names.extend(
            schema::str_values(b, &path, col::NAME)?
                .iter()
                .map(|s| s.unwrap_or_default().to_string()),
        );
        weight.extend_from_slice(schema::vector_values::<Float32Type>(
            b,
            &path,
            col::WEIGHT,
            m,
        )?);
        bias.extend_from_slice(schema::f32_values(b, &path, col::BIAS)?);
    }
    if classes.len() != c {
        return Err(CacheError::DimMismatch {
            file: path,
            column: col::CLASS.into(),
            expected: c,
            found: classes.len(),
        });
    }
    if classes.iter().enumerate().any(|(i, &k)| k as usize != i) {
        return Err(CacheError::InvalidInput {
            context: path.display().to_string(),
            reason: "column `class` must be 0, 1, ..., C-1 in order".into(),
        });
    }
    if names != manifest.model.class_names {
        return Err(CacheError::InvalidInput {
            context: path.display().to_string(),
            reason: "column `name` differs from the manifest's class_names".into(),
        });
    }
    let head = Head {
        weight: Array2::from_shape_vec((c, m), weight).expect("checked dims"),
        bias: Array1::from(bias),
    };
    head.validate(&path, m, c)?;
    Ok(head)
}
