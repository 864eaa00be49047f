//! The one error type of the crate. Every variant names the file (or set) it is about.

use std::path::PathBuf;

/// Everything that can go wrong reading, writing, verifying, merging or importing a cache.
///
/// Variants carry the offending file, column and row so that a message can be acted on
/// without a debugger.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// An operating-system error on `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory being accessed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file that the manifest lists (or an importer needs) does not exist.
    #[error("{file}: missing ({what})")]
    MissingFile {
        /// The expected file.
        file: PathBuf,
        /// What the file should have held.
        what: String,
    },
    /// A file is not readable as Parquet (truncated, overwritten, not Parquet at all).
    #[error("{file}: not a readable Parquet file: {source}")]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// The decoder's error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Writing `file` failed (disk full, I/O error while encoding); the partial file is
    /// removed and nothing refers to it.
    #[error("{file}: writing failed: {source}")]
    WriteFailed {
        /// The file being written.
        file: PathBuf,
        /// The encoder's (or the file system's) error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// An Arrow-level error while decoding (or building) the columns of `file`.
    #[error("{file}: cannot decode: {source}")]
    Arrow {
        /// The file.
        file: PathBuf,
        /// The Arrow error.
        #[source]
        source: arrow_schema::ArrowError,
    },
    /// The file's size differs from the manifest's record (truncated or replaced).
    #[error(
        "{file}: {found} bytes on disk, the manifest records {expected} (truncated or replaced)"
    )]
    SizeMismatch {
        /// The file.
        file: PathBuf,
        /// Size recorded in the manifest.
        expected: u64,
        /// Size on disk.
        found: u64,
    },
    /// The file's sha256 differs from the manifest's record.
    #[error(
        "{file}: sha256 {found} does not match the manifest's {expected} (file changed or corrupted)"
    )]
    HashMismatch {
        /// The file.
        file: PathBuf,
        /// Hash recorded in the manifest (hex).
        expected: String,
        /// Hash of the bytes on disk (hex).
        found: String,
    },
    /// A dimension (vector width, row count of the head, ...) differs from what it must be.
    #[error("{file}: column `{column}` has dimension {found}, expected {expected}")]
    DimMismatch {
        /// The file (or set) being read or written.
        file: PathBuf,
        /// The column.
        column: String,
        /// The dimension required (by the manifest or the head).
        expected: usize,
        /// The dimension found.
        found: usize,
    },
    /// A column has the wrong Arrow type (or nullability).
    #[error("{file}: column `{column}` has type {found}, expected {expected}")]
    SchemaMismatch {
        /// The file.
        file: PathBuf,
        /// The column.
        column: String,
        /// The type required by format v1.
        expected: String,
        /// The type found.
        found: String,
    },
    /// A required column is absent.
    #[error("{file}: column `{column}` is missing")]
    MissingColumn {
        /// The file.
        file: PathBuf,
        /// The column.
        column: String,
    },
    /// A column holds nulls where format v1 forbids them.
    #[error("{file}: column `{column}` holds nulls")]
    Nulls {
        /// The file.
        file: PathBuf,
        /// The column.
        column: String,
    },
    /// A NaN or infinite value in a feature/logit/weight column.
    ///
    /// `row` is the row number in the file when reading, and the dataset `index` of the
    /// row when a writer rejects a batch.
    #[error("{file}: non-finite value in column `{column}` at row {row}")]
    NonFinite {
        /// The file (or, for writers, the file being written).
        file: PathBuf,
        /// The column.
        column: String,
        /// Row number in the file (reader) or dataset index (writer).
        row: u64,
    },
    /// A label outside `0..C` in an ID set, or other than -1 in an OOD set.
    #[error(
        "{file}: label {label} at row {row} is invalid for role {role} with {num_classes} classes"
    )]
    BadLabel {
        /// The file.
        file: PathBuf,
        /// Row number in the file (reader) or dataset index (writer).
        row: u64,
        /// The label found.
        label: i64,
        /// The set's role.
        role: String,
        /// Number of classes C.
        num_classes: usize,
    },
    /// The number of rows differs from the manifest (or from a sibling input).
    #[error("{file}: {found} rows, expected {expected}")]
    RowCount {
        /// The file.
        file: PathBuf,
        /// Rows expected.
        expected: u64,
        /// Rows found.
        found: u64,
    },
    /// The `index` column is not strictly increasing.
    #[error("{file}: `index` not strictly increasing at row {row} ({index} after {previous})")]
    UnsortedIndex {
        /// The file.
        file: PathBuf,
        /// Row number in the file.
        row: u64,
        /// The index at `row`.
        index: u64,
        /// The index of the row before.
        previous: u64,
    },
    /// The same dataset index occurs twice in one set (overlapping shards, repeated append).
    #[error("set `{set}`: index {index} occurs twice ({detail})")]
    DuplicateIndex {
        /// The set.
        set: String,
        /// The repeated index.
        index: u64,
        /// Where it was seen.
        detail: String,
    },
    /// A requested set is not in the cache.
    #[error("set `{set}` is not in the cache (available: {})", available.join(", "))]
    MissingSplit {
        /// The set requested.
        set: String,
        /// The sets the manifest lists.
        available: Vec<String>,
    },
    /// The cache holds no ID-train statistics.
    #[error("{dir}: the cache holds no ID-train statistics (no `id_train` split was written)")]
    MissingStats {
        /// The cache directory.
        dir: PathBuf,
    },
    /// `manifest.json` does not parse.
    #[error("{file}: invalid JSON: {source}")]
    ManifestJson {
        /// The manifest file.
        file: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// `manifest.json` parses but is inconsistent.
    #[error("{file}: {key}: {reason}")]
    InvalidManifest {
        /// The manifest file.
        file: PathBuf,
        /// The key at fault.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A format version this build cannot read.
    #[error("{file}: format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion {
        /// The file declaring the version.
        file: PathBuf,
        /// Version found.
        found: u32,
        /// Version supported.
        supported: u32,
    },
    /// A key/value entry of a Parquet footer is missing or differs from the manifest.
    #[error("{file}: footer metadata `{key}`: {reason}")]
    FooterMetadata {
        /// The file.
        file: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The directory holds an unfinished or interrupted write.
    #[error("{dir}: unfinished cache: {reason}")]
    Unfinished {
        /// The cache directory.
        dir: PathBuf,
        /// What is missing or left over.
        reason: String,
    },
    /// A writer was used wrongly or given inconsistent input (before anything was written).
    #[error("{context}: {reason}")]
    InvalidInput {
        /// What was being written (set, file or option).
        context: String,
        /// What is wrong.
        reason: String,
    },
    /// Inputs of `merge` disagree on something that must be shared.
    #[error("{dir}: cannot merge: {field} differs from {first}")]
    MergeConflict {
        /// The input that differs.
        dir: PathBuf,
        /// The first input, used as reference.
        first: PathBuf,
        /// The field (model, head, preprocessing, role of a set...).
        field: String,
    },
    /// A request to an object store failed (the message never holds a credential).
    #[error("{url}: {reason}")]
    Store {
        /// The object or prefix URL (without user info or query).
        url: String,
        /// What failed, in one line.
        reason: String,
    },
    /// Another writer holds the cache's lock (or a dead one left it behind).
    #[error("{lock}: {reason}")]
    Locked {
        /// The lock file or object.
        lock: String,
        /// Who holds it and what to do.
        reason: String,
    },
    /// A `.npy` file could not be read.
    #[error("{file}: {source}")]
    Npy {
        /// The file.
        file: PathBuf,
        /// The reader's error.
        #[source]
        source: ndarray_npy::ReadNpyError,
    },
}

/// Result alias of the crate.
pub type Result<T, E = CacheError> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CacheError {
    let path = path.into();
    move |source| CacheError::Io { path, source }
}
