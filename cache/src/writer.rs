//! Writing a cache: [`CacheWriter`] and [`SplitWriter`], with durable chunks and resume.
//!
//! Layout of an unfinished cache directory:
//!
//! ```text
//! <dir>/.partial/init.json             ManifestInit + writer options
//! <dir>/.partial/head.parquet          the head, once written
//! <dir>/.partial/stats.parquet, activation_percentiles.parquet   producer-given stats (optional)
//! <dir>/.partial/<set>/role            the set's role
//! <dir>/.partial/<set>/part-NNNNNN.parquet   committed chunks (one row group each, sorted by index)
//! <dir>/.partial/<set>/closed          written by SplitWriter::close
//! ```
//!
//! Each part is written as `<name>.tmp`, fsynced and renamed, so a part that exists is
//! complete. [`CacheWriter::finish`] joins the parts of every set into `<set file>` (k-way
//! merge by `index`, temp + rename), computes the statistics if none were given, stages
//! `manifest.json.tmp`, removes `.partial`, and renames the manifest into place last.
//! `FeatureCache::open` and `verify` reject a directory without `manifest.json` or with
//! `.partial` / `manifest.json.tmp` left over.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::types::Float32Type;
use arrow_array::{ArrayRef, Int32Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::data::{Head, SplitData};
use crate::error::{CacheError, Result, io_err};
use crate::io::{self, HashingWriter, commit_tmp, fsync_dir, tmp_path};
use crate::manifest::{
    FORMAT_VERSION, FileEntry, HEAD_FILE, MANIFEST_FILE, Manifest, ManifestInit, PARTIAL_DIR,
    PERCENTILES_FILE, Role, STATS_FILE, Skipped, split_file_name, validate_set_name,
};
use crate::reader::SplitReader;
use crate::schema::{self, col};
use crate::stats::{RowSource, TrainStats};

const INIT_FILE: &str = "init.json";
const ROLE_FILE: &str = "role";
const CLOSED_FILE: &str = "closed";
/// Footer key of writer parts: JSON list of the [`Skipped`] entries committed with it.
const KEY_SKIPPED: &str = "posthoc.skipped";

/// Writer settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterOptions {
    /// Rows per row group of the finished split files (the layout readers see).
    pub row_group_rows: usize,
    /// Rows per durable commit (a part file) while a split is written: what a killed run
    /// keeps. `None`: `row_group_rows`. The finished files do not depend on it, so a run
    /// that commits often, a sharded run and its merge give the same bytes.
    #[serde(default)]
    pub commit_rows: Option<usize>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            row_group_rows: schema::DEFAULT_ROW_GROUP_ROWS,
            commit_rows: None,
        }
    }
}

impl WriterOptions {
    /// Rows per durable commit.
    pub fn commit_rows(&self) -> usize {
        self.commit_rows.unwrap_or(self.row_group_rows)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct InitState {
    init: ManifestInit,
    options: WriterOptions,
}

/// Size, row count and sha256 of a file just written.
#[derive(Debug, Clone)]
pub(crate) struct FileSummary {
    pub(crate) sha256: String,
    pub(crate) bytes: u64,
    pub(crate) rows: u64,
}

impl FileSummary {
    pub(crate) fn entry(&self, name: &str, role: Role, set: Option<&str>) -> FileEntry {
        FileEntry {
            name: name.to_string(),
            role,
            set: set.map(str::to_string),
            rows: self.rows,
            bytes: self.bytes,
            sha256: self.sha256.clone(),
        }
    }
}

/// An Arrow writer whose bytes go through sha256 into `<path>.tmp`; the temporary file is
/// removed when the writer is dropped before [`AtomicParquet::commit`] (a failed write
/// leaves nothing behind, and frees the space it took).
struct AtomicParquet {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<ArrowWriter<HashingWriter<File>>>,
    rows: u64,
}

impl AtomicParquet {
    fn create(path: &Path, schema: SchemaRef, props: WriterProperties) -> Result<AtomicParquet> {
        let tmp = tmp_path(path);
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w = AtomicParquet {
            path: path.to_path_buf(),
            tmp,
            writer: None,
            rows: 0,
        };
        let writer = ArrowWriter::try_new(HashingWriter::new(file), schema, Some(props))
            .map_err(|source| w.failed(source))?;
        w.writer = Some(writer);
        Ok(w)
    }

    fn failed(&self, source: parquet::errors::ParquetError) -> CacheError {
        CacheError::WriteFailed {
            file: self.tmp.clone(),
            source,
        }
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        let result = self
            .writer
            .as_mut()
            .expect("open until commit")
            .write(batch);
        result.map_err(|source| self.failed(source))
    }

    /// Writes the footer, fsyncs, renames into place.
    fn commit(mut self) -> Result<FileSummary> {
        let writer = self.writer.take().expect("open until commit");
        let hashing = match writer.into_inner() {
            Ok(h) => h,
            Err(source) => {
                let _ = std::fs::remove_file(&self.tmp);
                return Err(self.failed(source));
            }
        };
        let (file, sha256, bytes) = hashing.finish();
        let synced = file.sync_all().map_err(io_err(&self.tmp));
        drop(file);
        if let Err(e) = synced.and_then(|()| commit_tmp(&self.tmp, &self.path)) {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(e);
        }
        Ok(FileSummary {
            sha256,
            bytes,
            rows: self.rows,
        })
    }
}

impl Drop for AtomicParquet {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `batches` to `path` as one Parquet file, atomically, and returns its summary.
pub(crate) fn write_parquet_atomic(
    path: &Path,
    schema: SchemaRef,
    props: WriterProperties,
    batches: impl IntoIterator<Item = RecordBatch>,
) -> Result<FileSummary> {
    let mut w = AtomicParquet::create(path, schema, props)?;
    for b in batches {
        w.write(&b)?;
    }
    w.commit()
}

/// Rows waiting to be written, column by column.
#[derive(Debug, Default)]
struct RowBuffer {
    index: Vec<u64>,
    paths: Vec<String>,
    labels: Vec<i32>,
    features: Vec<f32>,
    logits: Vec<f32>,
}

impl RowBuffer {
    fn len(&self) -> usize {
        self.index.len()
    }

    fn push_split(&mut self, data: &SplitData) {
        self.index.extend_from_slice(&data.index);
        self.paths.extend(data.paths.iter().cloned());
        self.labels.extend_from_slice(&data.labels);
        self.features.extend(data.features.iter().copied());
        self.logits.extend(data.logits.iter().copied());
    }

    /// Moves the first `n` rows out, sorted by index.
    fn take_sorted(&mut self, n: usize, m: usize, c: usize) -> RowBuffer {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| self.index[i]);
        let mut out = RowBuffer::default();
        for &i in &order {
            out.index.push(self.index[i]);
            out.paths.push(std::mem::take(&mut self.paths[i]));
            out.labels.push(self.labels[i]);
            out.features
                .extend_from_slice(&self.features[i * m..(i + 1) * m]);
            out.logits
                .extend_from_slice(&self.logits[i * c..(i + 1) * c]);
        }
        self.index.drain(..n);
        self.paths.drain(..n);
        self.labels.drain(..n);
        self.features.drain(..n * m);
        self.logits.drain(..n * c);
        out
    }

    fn into_batch(self, m: usize, c: usize) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(self.index)),
            Arc::new(StringArray::from(self.paths)),
            Arc::new(Int32Array::from(self.labels)),
            schema::vector_array::<Float32Type>(self.features, m),
            schema::vector_array::<Float32Type>(self.logits, c),
        ];
        RecordBatch::try_new(schema::split_schema(m, c), columns)
            .expect("columns built to the schema")
    }
}

/// Creates and fills a cache directory. See the module docs for the on-disk protocol.
#[derive(Debug)]
pub struct CacheWriter {
    dir: PathBuf,
    state: InitState,
    finished: Option<Manifest>,
}

impl CacheWriter {
    /// Starts a new cache in `dir` (created if needed; must be empty).
    pub fn create(dir: impl AsRef<Path>, init: ManifestInit) -> Result<CacheWriter> {
        Self::create_with(dir, init, WriterOptions::default())
    }

    /// [`CacheWriter::create`] with explicit options.
    pub fn create_with(
        dir: impl AsRef<Path>,
        init: ManifestInit,
        options: WriterOptions,
    ) -> Result<CacheWriter> {
        let dir = dir.as_ref().to_path_buf();
        init.model.validate(&dir.display().to_string())?;
        for (field, rows) in [
            ("row_group_rows", options.row_group_rows),
            ("commit_rows", options.commit_rows()),
        ] {
            if rows == 0 {
                return Err(CacheError::InvalidInput {
                    context: format!("WriterOptions::{field}"),
                    reason: "must be > 0".into(),
                });
            }
        }
        if let Ok(mut entries) = std::fs::read_dir(&dir)
            && entries.any(|e| e.is_ok_and(|e| e.file_name() != crate::lock::LOCK_FILE))
        {
            return Err(CacheError::InvalidInput {
                context: dir.display().to_string(),
                reason: "directory is not empty (an unfinished write is continued by running the command that started it again; to start over, choose a new directory or remove this one)"
                    .into(),
            });
        }
        let partial = dir.join(PARTIAL_DIR);
        io::create_dir_all(&partial)?;
        let state = InitState { init, options };
        io::write_atomic(
            &partial.join(INIT_FILE),
            serde_json::to_string_pretty(&state)
                .expect("serialisable")
                .as_bytes(),
        )?;
        fsync_dir(&dir)?;
        Ok(CacheWriter {
            dir,
            state,
            finished: None,
        })
    }

    /// Continues an interrupted write in `dir`. A finished cache (or one whose finish
    /// was interrupted after the data were complete) gives a writer that is already
    /// finished: [`CacheWriter::finish`] returns its manifest.
    pub fn open_resume(dir: impl AsRef<Path>) -> Result<CacheWriter> {
        let dir = dir.as_ref().to_path_buf();
        let partial = dir.join(PARTIAL_DIR);
        let init_path = partial.join(INIT_FILE);
        let staged = tmp_path(&dir.join(MANIFEST_FILE));
        if init_path.exists() {
            let text = std::fs::read_to_string(&init_path).map_err(io_err(&init_path))?;
            let state: InitState =
                serde_json::from_str(&text).map_err(|source| CacheError::ManifestJson {
                    file: init_path.clone(),
                    source,
                })?;
            // A manifest staged by an interrupted finish is redone by the next finish.
            if staged.exists() {
                std::fs::remove_file(&staged).map_err(io_err(&staged))?;
            }
            return Ok(CacheWriter {
                dir,
                state,
                finished: None,
            });
        }
        if partial.exists() {
            return Err(CacheError::Unfinished {
                dir,
                reason: format!("`{PARTIAL_DIR}` has no {INIT_FILE}: not a resumable write"),
            });
        }
        if staged.exists() {
            // finish() had removed `.partial`; only the rename was left to do.
            commit_tmp(&staged, &dir.join(MANIFEST_FILE))?;
        }
        let manifest = Manifest::read(&dir)?;
        let init = ManifestInit {
            model: manifest.model.clone(),
            preprocessing: manifest.preprocessing.clone(),
            tool: manifest.tool.clone(),
            created: manifest.created.clone(),
            provenance: manifest.provenance.clone(),
        };
        Ok(CacheWriter {
            dir,
            state: InitState {
                init,
                options: WriterOptions::default(),
            },
            finished: Some(manifest),
        })
    }

    /// What the producer stated when the cache was created (model, preprocessing, ...).
    pub fn init(&self) -> &ManifestInit {
        &self.state.init
    }

    /// The provenance the manifest will record, to complete before [`CacheWriter::finish`]
    /// (end time, throughput, ...). Kept in memory only: a resumed writer starts again
    /// from what [`CacheWriter::create`] was given.
    pub fn provenance_mut(&mut self) -> &mut serde_json::Value {
        &mut self.state.init.provenance
    }

    /// Whether the cache is already finished.
    pub fn is_finished(&self) -> bool {
        self.finished.is_some()
    }

    fn partial(&self) -> PathBuf {
        self.dir.join(PARTIAL_DIR)
    }

    fn dims(&self) -> (usize, usize) {
        let m = &self.state.init.model;
        (m.feature_dim, m.num_classes)
    }

    fn check_open(&self) -> Result<()> {
        if self.finished.is_some() {
            return Err(CacheError::InvalidInput {
                context: self.dir.display().to_string(),
                reason: "the cache is already finished".into(),
            });
        }
        Ok(())
    }

    /// Writes the head (durably; a later call replaces it).
    pub fn write_head(&mut self, head: &Head) -> Result<()> {
        self.check_open()?;
        let (m, c) = self.dims();
        let path = self.partial().join(HEAD_FILE);
        head.validate(&path, m, c)?;
        write_head_file(&path, head, &self.state.init.model.class_names)?;
        Ok(())
    }

    /// Stores producer-computed statistics; without them `finish` computes them from the
    /// ID-train split.
    pub fn write_stats(&mut self, stats: &TrainStats) -> Result<()> {
        self.check_open()?;
        let (m, c) = self.dims();
        stats.validate(&self.partial().join(STATS_FILE), m, c)?;
        stats.write(&self.partial())?;
        Ok(())
    }

    /// A writer for set `set` with `role` (a data role). Resumes the set's committed
    /// parts if any. Use one writer per set at a time.
    pub fn split_writer(&self, set: &str, role: Role) -> Result<SplitWriter> {
        self.check_open()?;
        validate_set_name(set)?;
        if !role.is_split() {
            return Err(CacheError::InvalidInput {
                context: format!("set `{set}`"),
                reason: format!("role {role} is not a data role"),
            });
        }
        let (m, c) = self.dims();
        let sets = list_sets(&self.partial())?;
        for (other, other_role) in &sets {
            if other == set && *other_role != role {
                return Err(CacheError::InvalidInput {
                    context: format!("set `{set}`"),
                    reason: format!("already written with role {other_role}, not {role}"),
                });
            }
            if other != set && *other_role == role && role.is_id() {
                return Err(CacheError::InvalidInput {
                    context: format!("set `{set}`"),
                    reason: format!("set `{other}` already has role {role} (one per cache)"),
                });
            }
        }
        let set_dir = self.partial().join(set);
        io::create_dir_all(&set_dir)?;
        let role_path = set_dir.join(ROLE_FILE);
        if !role_path.exists() {
            io::write_atomic(&role_path, role.as_str().as_bytes())?;
        }
        let final_path = self.dir.join(split_file_name(set, role));
        let scan = scan_parts(&set_dir, set, role, m, c)?;
        let done: HashSet<u64> = scan
            .parts
            .iter()
            .flat_map(|p| p.indices.iter().copied())
            .chain(scan.skipped.iter().map(|s| s.index))
            .collect();
        let committed_rows = scan.parts.iter().map(|p| p.indices.len() as u64).sum();
        if committed_rows > 0 {
            tracing::info!(
                set,
                rows = committed_rows,
                parts = scan.parts.len(),
                "resuming split"
            );
        }
        Ok(SplitWriter {
            set: set.to_string(),
            role,
            m,
            c,
            commit_rows: self.state.options.commit_rows(),
            set_dir,
            final_path,
            next_part: scan.next_part,
            done,
            committed_rows,
            committed_skipped: scan.skipped.len() as u64,
            pending: RowBuffer::default(),
            pending_skipped: Vec::new(),
            pending_indices: HashSet::new(),
        })
    }

    /// Joins every set, computes statistics when none were given and an `id_train` split
    /// exists, and writes `manifest.json` last. Every set must have been closed.
    pub fn finish(self) -> Result<Manifest> {
        if let Some(m) = self.finished {
            return Ok(m);
        }
        let partial = self.partial();
        let (m, c) = self.dims();
        let head_path = partial.join(HEAD_FILE);
        if !head_path.exists() {
            return Err(CacheError::Unfinished {
                dir: self.dir.clone(),
                reason: "no head was written (CacheWriter::write_head)".into(),
            });
        }
        let mut splits = Vec::new();
        let mut skipped = Vec::new();
        for (set, role) in list_sets(&partial)? {
            let set_dir = partial.join(&set);
            if !set_dir.join(CLOSED_FILE).exists() {
                return Err(CacheError::Unfinished {
                    dir: self.dir.clone(),
                    reason: format!("set `{set}` was not closed (SplitWriter::close)"),
                });
            }
            let scan = scan_parts(&set_dir, &set, role, m, c)?;
            let sources = scan
                .parts
                .iter()
                .map(|p| SortedSource {
                    path: p.path.clone(),
                    min_index: p.indices.first().copied().unwrap_or(0),
                    sha256: None,
                    rows: Some(p.indices.len() as u64),
                })
                .collect();
            let name = split_file_name(&set, role);
            let summary = join_sorted(
                sources,
                &self.dir.join(&name),
                &set,
                role,
                m,
                c,
                self.state.options.row_group_rows,
            )?;
            tracing::info!(
                set,
                rows = summary.rows,
                bytes = summary.bytes,
                "joined split"
            );
            splits.push(summary.entry(&name, role, Some(&set)));
            skipped.extend(scan.skipped);
        }
        let given_stats =
            partial.join(STATS_FILE).exists() && partial.join(PERCENTILES_FILE).exists();
        let head = crate::reader::read_head(
            &partial,
            &FileEntry {
                name: HEAD_FILE.into(),
                role: Role::Head,
                set: None,
                rows: c as u64,
                bytes: 0,
                sha256: String::new(),
            },
            &Manifest {
                format_version: FORMAT_VERSION,
                model: self.state.init.model.clone(),
                preprocessing: serde_json::Value::Null,
                tool: self.state.init.tool.clone(),
                created: None,
                provenance: serde_json::Value::Null,
                skipped: vec![],
                files: vec![],
            },
            false,
        )?;
        let stats_source = if given_stats {
            StatsSource::Given(partial.clone())
        } else {
            StatsSource::Compute
        };
        finalize(
            &self.dir,
            &self.state.init,
            &head,
            splits,
            skipped,
            stats_source,
        )
    }
}

/// Where `finalize` gets the statistics from.
pub(crate) enum StatsSource {
    /// Copy the two files from this directory.
    Given(PathBuf),
    /// Compute them from the `id_train` split, if there is one.
    Compute,
}

/// Writes head, statistics and manifest of a cache whose split files are in place, then
/// removes `.partial` and renames the manifest into place (last).
pub(crate) fn finalize(
    dir: &Path,
    init: &ManifestInit,
    head: &Head,
    splits: Vec<FileEntry>,
    skipped: Vec<Skipped>,
    stats: StatsSource,
) -> Result<Manifest> {
    let (m, c) = (init.model.feature_dim, init.model.num_classes);
    let mut files = Vec::new();
    let head_summary = write_head_file(&dir.join(HEAD_FILE), head, &init.model.class_names)?;
    files.push(head_summary.entry(HEAD_FILE, Role::Head, None));
    let train = splits.iter().find(|f| f.role == Role::IdTrain).cloned();
    files.extend(splits);
    match stats {
        StatsSource::Given(from) => {
            for name in [STATS_FILE, PERCENTILES_FILE] {
                let (src, dst) = (from.join(name), dir.join(name));
                let tmp = tmp_path(&dst);
                std::fs::copy(&src, &tmp).map_err(io_err(&src))?;
                File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(io_err(&tmp))?;
                commit_tmp(&tmp, &dst)?;
                let (sha256, bytes) = io::sha256_file(&dst)?;
                let rows = schema::open_parquet(&dst)?.num_rows;
                files.push(
                    FileSummary {
                        sha256,
                        bytes,
                        rows,
                    }
                    .entry(name, Role::Stats, None),
                );
            }
            // Check what was copied against the dims.
            let stats_entry = files.iter().find(|f| f.name == STATS_FILE).expect("pushed");
            let pct_entry = files
                .iter()
                .find(|f| f.name == PERCENTILES_FILE)
                .expect("pushed");
            TrainStats::read(dir, stats_entry, pct_entry, m, c, true)?;
        }
        StatsSource::Compute => {
            if let Some(train) = train {
                let path = dir.join(&train.name);
                let set = train.set.clone().expect("split entry");
                tracing::info!(set, rows = train.rows, "computing ID-train statistics");
                let mut source = FileRows {
                    path: path.clone(),
                    set,
                    m,
                    c,
                };
                let stats = crate::stats::compute_train_stats(&mut source, &head.weight, &path)?;
                files.extend(stats.write(dir)?);
            }
        }
    }
    crate::fault::point("finish.before_manifest");
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        model: init.model.clone(),
        preprocessing: init.preprocessing.clone(),
        tool: init.tool.clone(),
        created: init.created.clone(),
        provenance: init.provenance.clone(),
        skipped,
        files,
    };
    manifest.sort_files();
    let manifest_path = dir.join(MANIFEST_FILE);
    manifest.validate(&manifest_path)?;
    // Stage, drop `.partial`, then make the manifest visible: a crash at any point
    // leaves a directory that open/verify reject and open_resume completes.
    let staged = tmp_path(&manifest_path);
    let mut text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
    text.push('\n');
    {
        use std::io::Write;
        let mut f = File::create(&staged).map_err(io_err(&staged))?;
        f.write_all(text.as_bytes()).map_err(io_err(&staged))?;
        f.sync_all().map_err(io_err(&staged))?;
    }
    let partial = dir.join(PARTIAL_DIR);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io_err(&partial))?;
    }
    fsync_dir(dir)?;
    crate::fault::point("finish.before_rename");
    commit_tmp(&staged, &manifest_path)?;
    Ok(manifest)
}

/// Writes `head.parquet` (C rows) atomically.
pub(crate) fn write_head_file(path: &Path, head: &Head, names: &[String]) -> Result<FileSummary> {
    let (c, m) = head.weight.dim();
    let w = head.weight.as_standard_layout();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(0..c as u32)),
        Arc::new(StringArray::from_iter_values(names)),
        schema::vector_array::<Float32Type>(w.as_slice().expect("standard layout").to_vec(), m),
        Arc::new(arrow_array::Float32Array::from(head.bias.to_vec())),
    ];
    let batch = RecordBatch::try_new(schema::head_schema(m), columns).map_err(|source| {
        CacheError::Arrow {
            file: path.to_path_buf(),
            source,
        }
    })?;
    let props = schema::writer_properties(c.max(1), schema::footer(Role::Head, None, m, c));
    write_parquet_atomic(path, schema::head_schema(m), props, [batch])
}

/// The ID-train split file as a [`RowSource`] (read without hash checks: it was just
/// written).
struct FileRows {
    path: PathBuf,
    set: String,
    m: usize,
    c: usize,
}

impl RowSource for FileRows {
    fn for_each_batch(&mut self, f: &mut crate::stats::BatchFn<'_>) -> Result<()> {
        let mut reader = SplitReader::open_path(
            &self.path,
            &self.set,
            Role::IdTrain,
            self.m,
            self.c,
            None,
            None,
            schema::DEFAULT_ROW_GROUP_ROWS,
        )?;
        while let Some(b) = reader.next_checked()? {
            f(b.labels, b.features, b.full_logits())?;
        }
        reader.finish()?;
        Ok(())
    }
}

/// Sets under `.partial`, with their roles, sorted by name.
fn list_sets(partial: &Path) -> Result<Vec<(String, Role)>> {
    let mut sets = Vec::new();
    let entries = match std::fs::read_dir(partial) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(sets),
        Err(e) => return Err(io_err(partial)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(partial))?;
        if !entry.file_type().map_err(io_err(entry.path()))?.is_dir() {
            continue;
        }
        let role_path = entry.path().join(ROLE_FILE);
        let Ok(text) = std::fs::read_to_string(&role_path) else {
            continue; // created but never used: no role file, no parts
        };
        let role = Role::parse(text.trim()).ok_or_else(|| CacheError::InvalidInput {
            context: role_path.display().to_string(),
            reason: format!("unknown role `{}`", text.trim()),
        })?;
        sets.push((entry.file_name().to_string_lossy().into_owned(), role));
    }
    sets.sort();
    Ok(sets)
}

/// One committed part of a set.
struct Part {
    path: PathBuf,
    indices: Vec<u64>,
}

struct PartScan {
    parts: Vec<Part>,
    skipped: Vec<Skipped>,
    next_part: u64,
}

fn part_number(name: &str) -> Option<u64> {
    name.strip_prefix("part-")?
        .strip_suffix(".parquet")?
        .parse()
        .ok()
}

/// Reads the committed parts of a set (their `index` column and skipped entries), and
/// deletes temporary files of an interrupted commit.
fn scan_parts(set_dir: &Path, set: &str, role: Role, m: usize, c: usize) -> Result<PartScan> {
    let mut numbered = Vec::new();
    for entry in std::fs::read_dir(set_dir).map_err(io_err(set_dir))? {
        let entry = entry.map_err(io_err(set_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            tracing::warn!(file = %entry.path().display(), "removing an uncommitted part");
            std::fs::remove_file(entry.path()).map_err(io_err(entry.path()))?;
        } else if let Some(n) = part_number(&name) {
            numbered.push((n, entry.path()));
        }
    }
    numbered.sort();
    let next_part = numbered.last().map_or(0, |(n, _)| n + 1);
    let mut parts = Vec::new();
    let mut skipped = Vec::new();
    for (_, path) in numbered {
        let opened = schema::open_parquet(&path)?;
        opened.expect_footer(&path, role, Some(set), m, c)?;
        opened.expect_schema(&path, &schema::split_schema(m, c))?;
        if let Some(json) = opened.kv.get(KEY_SKIPPED) {
            let s: Vec<Skipped> =
                serde_json::from_str(json).map_err(|e| CacheError::FooterMetadata {
                    file: path.clone(),
                    key: KEY_SKIPPED.into(),
                    reason: e.to_string(),
                })?;
            skipped.extend(s);
        }
        let mask = ProjectionMask::roots(opened.builder.parquet_schema(), [0]);
        let reader = opened
            .builder
            .with_projection(mask)
            .build()
            .map_err(|source| CacheError::Corrupt {
                file: path.clone(),
                source,
            })?;
        let mut indices = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|source| CacheError::Arrow {
                file: path.clone(),
                source,
            })?;
            indices.extend_from_slice(schema::u64_values(&batch, &path, col::INDEX)?);
        }
        parts.push(Part { path, indices });
    }
    Ok(PartScan {
        parts,
        skipped,
        next_part,
    })
}

/// What [`SplitWriter::resume_point`] reports: the rows (and skipped inputs) already
/// committed durably.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// Rows committed.
    pub rows: u64,
    /// Skipped inputs committed.
    pub skipped: u64,
    /// Dataset indices done (rows and skipped), ascending.
    pub done: Vec<u64>,
}

impl ResumePoint {
    /// Whether dataset index `index` is already done.
    pub fn contains(&self, index: u64) -> bool {
        self.done.binary_search(&index).is_ok()
    }

    /// The smallest index not done (the place to restart a sequential producer).
    pub fn first_missing(&self) -> u64 {
        self.done
            .iter()
            .enumerate()
            .find(|&(i, &d)| d != i as u64)
            .map_or(self.done.len() as u64, |(i, _)| i as u64)
    }
}

/// Appends rows of one set; every `commit_rows` rows become a durable part.
#[derive(Debug)]
pub struct SplitWriter {
    set: String,
    role: Role,
    m: usize,
    c: usize,
    commit_rows: usize,
    set_dir: PathBuf,
    final_path: PathBuf,
    next_part: u64,
    done: HashSet<u64>,
    committed_rows: u64,
    committed_skipped: u64,
    pending: RowBuffer,
    pending_skipped: Vec<Skipped>,
    pending_indices: HashSet<u64>,
}

impl SplitWriter {
    /// The set name.
    pub fn set(&self) -> &str {
        &self.set
    }

    /// Rows and indices committed durably so far (pending rows are not included).
    pub fn resume_point(&self) -> ResumePoint {
        let mut done: Vec<u64> = self.done.iter().copied().collect();
        done.sort_unstable();
        ResumePoint {
            rows: self.committed_rows,
            skipped: self.committed_skipped,
            done,
        }
    }

    fn claim(&mut self, indices: impl IntoIterator<Item = u64>) -> Result<()> {
        let mut fresh = HashSet::new();
        for i in indices {
            let detail = if self.done.contains(&i) {
                "already committed"
            } else if self.pending_indices.contains(&i) {
                "already appended"
            } else if !fresh.insert(i) {
                "twice in one batch"
            } else {
                continue;
            };
            return Err(CacheError::DuplicateIndex {
                set: self.set.clone(),
                index: i,
                detail: detail.into(),
            });
        }
        self.pending_indices.extend(fresh);
        Ok(())
    }

    fn reopen_if_closed(&self) -> Result<()> {
        let closed = self.set_dir.join(CLOSED_FILE);
        if closed.exists() {
            std::fs::remove_file(&closed).map_err(io_err(&closed))?;
        }
        Ok(())
    }

    /// Appends a batch after checking dims, finiteness, labels and that no index was
    /// written before; a rejected batch leaves nothing behind. Commits full chunks.
    pub fn append(&mut self, batch: &SplitData) -> Result<()> {
        batch.validate(&self.final_path, self.m, self.c, self.role)?;
        self.claim(batch.index.iter().copied())?;
        self.reopen_if_closed()?;
        self.pending.push_split(batch);
        while self.pending.len() >= self.commit_rows {
            self.commit(self.commit_rows)?;
        }
        Ok(())
    }

    /// Records that input `index` (at `path`) was skipped for `reason`.
    pub fn skip(&mut self, index: u64, path: &str, reason: &str) -> Result<()> {
        self.claim([index])?;
        self.reopen_if_closed()?;
        self.pending_skipped.push(Skipped {
            set: self.set.clone(),
            index,
            path: path.to_string(),
            reason: reason.to_string(),
        });
        Ok(())
    }

    /// Writes the first `n` pending rows (and all pending skips) as a durable part.
    fn commit(&mut self, n: usize) -> Result<()> {
        let rows = self.pending.take_sorted(n, self.m, self.c);
        let skipped = std::mem::take(&mut self.pending_skipped);
        let mut kv = schema::footer(self.role, Some(&self.set), self.m, self.c);
        kv.push((
            KEY_SKIPPED.into(),
            serde_json::to_string(&skipped).expect("serialisable"),
        ));
        let path = self
            .set_dir
            .join(format!("part-{:06}.parquet", self.next_part));
        let indices: Vec<u64> = rows.index.clone();
        let batch = rows.into_batch(self.m, self.c);
        write_parquet_atomic(
            &path,
            schema::split_schema(self.m, self.c),
            schema::writer_properties_at(schema::PART_ZSTD_LEVEL, self.commit_rows, kv),
            [batch],
        )?;
        self.next_part += 1;
        self.committed_rows += indices.len() as u64;
        self.committed_skipped += skipped.len() as u64;
        for i in indices
            .iter()
            .copied()
            .chain(skipped.iter().map(|s| s.index))
        {
            self.pending_indices.remove(&i);
            self.done.insert(i);
        }
        tracing::debug!(
            set = self.set,
            part = self.next_part - 1,
            rows = indices.len(),
            "committed part"
        );
        Ok(())
    }

    /// Whether the set was closed by an earlier run (it is complete: skip it).
    pub fn is_closed(&self) -> bool {
        self.set_dir.join(CLOSED_FILE).exists()
    }

    /// Commits what is pending and marks the set complete. Returns the set's row count.
    pub fn close(mut self) -> Result<u64> {
        if self.pending.len() > 0 || !self.pending_skipped.is_empty() {
            let n = self.pending.len();
            self.commit(n)?;
        }
        io::write_atomic(
            &self.set_dir.join(CLOSED_FILE),
            self.committed_rows.to_string().as_bytes(),
        )?;
        Ok(self.committed_rows)
    }
}

impl Drop for SplitWriter {
    fn drop(&mut self) {
        if self.pending.len() > 0 {
            tracing::warn!(
                set = self.set,
                rows = self.pending.len(),
                "SplitWriter dropped with uncommitted rows (not written)"
            );
        }
    }
}

/// A split file sorted by `index`, input of [`join_sorted`].
pub(crate) struct SortedSource {
    pub(crate) path: PathBuf,
    /// Smallest index in the file (sources are opened in this order, lazily).
    pub(crate) min_index: u64,
    /// Expected sha256, checked while reading when given.
    pub(crate) sha256: Option<String>,
    /// Expected row count, when known.
    pub(crate) rows: Option<u64>,
}

/// An opened source and its current batch.
struct Cursor {
    reader: SplitReader,
    batch: RowBuffer,
    pos: usize,
}

impl Cursor {
    fn head(&self) -> u64 {
        self.batch.index[self.pos]
    }

    /// Loads the next non-empty batch; `false` at the end (after checking rows and hash).
    fn refill(&mut self) -> Result<bool> {
        loop {
            match self.reader.next_checked()? {
                None => {
                    self.reader.finish()?;
                    return Ok(false);
                }
                Some(b) if b.index.is_empty() => continue,
                Some(b) => {
                    self.batch = RowBuffer {
                        index: b.index.to_vec(),
                        paths: b
                            .full_paths()
                            .iter()
                            .map(|p| p.unwrap_or_default().to_string())
                            .collect(),
                        labels: b.labels.to_vec(),
                        features: b.features.to_vec(),
                        logits: b.full_logits().to_vec(),
                    };
                    self.pos = 0;
                    return Ok(true);
                }
            }
        }
    }
}

/// Joins split files that are each sorted by `index` into one file sorted by `index`
/// (k-way merge; a source is opened only when its smallest index is reached, so
/// non-overlapping sources are read one after the other). Fails on a repeated index.
pub(crate) fn join_sorted(
    mut sources: Vec<SortedSource>,
    out: &Path,
    set: &str,
    role: Role,
    m: usize,
    c: usize,
    row_group_rows: usize,
) -> Result<FileSummary> {
    sources.sort_by_key(|s| std::cmp::Reverse(s.min_index)); // pop() yields the smallest
    let props = schema::writer_properties(row_group_rows, schema::footer(role, Some(set), m, c));
    let mut writer = AtomicParquet::create(out, schema::split_schema(m, c), props)?;
    let mut open: Vec<(Cursor, PathBuf)> = Vec::new();
    let mut buffer = RowBuffer::default();
    loop {
        let best = open
            .iter()
            .enumerate()
            .min_by_key(|(_, (cur, _))| cur.head())
            .map(|(i, (cur, _))| (i, cur.head()));
        let next_min = sources.last().map(|s| s.min_index);
        if let Some(min) = next_min
            && best.is_none_or(|(_, head)| min <= head)
        {
            let s = sources.pop().expect("non-empty");
            let reader = SplitReader::open_path(
                &s.path,
                set,
                role,
                m,
                c,
                s.sha256.as_deref(),
                s.rows,
                row_group_rows,
            )?;
            let mut cur = Cursor {
                reader,
                batch: RowBuffer::default(),
                pos: 0,
            };
            if cur.refill()? {
                open.push((cur, s.path));
            }
            continue;
        }
        let Some((i, head)) = best else { break };
        // Rows of cursor i below every other head (and below the next unopened source).
        let bound = open
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (cur, _))| cur.head())
            .chain(next_min)
            .min();
        if bound == Some(head) {
            let other = open
                .iter()
                .enumerate()
                .find(|(j, (cur, _))| *j != i && cur.head() == head)
                .map_or_else(
                    || PathBuf::from("an unopened source"),
                    |(_, (_, p))| p.clone(),
                );
            return Err(CacheError::DuplicateIndex {
                set: set.to_string(),
                index: head,
                detail: format!("in {} and {}", open[i].1.display(), other.display()),
            });
        }
        let (cur, _) = &mut open[i];
        let idx = &cur.batch.index[cur.pos..];
        let run = bound.map_or(idx.len(), |b| idx.partition_point(|&x| x < b));
        let take = run.min(row_group_rows - buffer.len());
        let (a, e) = (cur.pos, cur.pos + take);
        buffer.index.extend_from_slice(&cur.batch.index[a..e]);
        buffer.paths.extend(cur.batch.paths[a..e].iter().cloned());
        buffer.labels.extend_from_slice(&cur.batch.labels[a..e]);
        buffer
            .features
            .extend_from_slice(&cur.batch.features[a * m..e * m]);
        buffer
            .logits
            .extend_from_slice(&cur.batch.logits[a * c..e * c]);
        cur.pos = e;
        if cur.pos == cur.batch.index.len() && !cur.refill()? {
            open.swap_remove(i);
        }
        if buffer.len() == row_group_rows {
            writer.write(&std::mem::take(&mut buffer).into_batch(m, c))?;
        }
    }
    if buffer.len() > 0 {
        writer.write(&buffer.into_batch(m, c))?;
    }
    writer.commit()
}
