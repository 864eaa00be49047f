//! Errors of the image data module: one image ([`ImageError`]) and whole sets ([`DataError`]).

use std::path::PathBuf;

/// Why one image could not be turned into pixels. Every variant names the file.
///
/// For tar shard members `path` is the shard path joined with the member name
/// (e.g. `.../train-00.tar/airplane/0000.jpg`).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file (or tar member) could not be read.
    #[error("cannot read image {}: {source}", path.display())]
    Read {
        /// The image file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The decoder rejected the bytes (corrupt, truncated, ...).
    #[error("cannot decode image {}: {source}", path.display())]
    Decode {
        /// The image file.
        path: PathBuf,
        /// The decoder's error.
        source: DecodeError,
    },
    /// A well-formed image this module does not convert the way Pillow would.
    #[error("unsupported image {}: {what}", path.display())]
    Unsupported {
        /// The image file.
        path: PathBuf,
        /// What is not supported (format, colour type, bit depth, ...).
        what: String,
    },
}

impl ImageError {
    /// The file this error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            ImageError::Read { path, .. }
            | ImageError::Decode { path, .. }
            | ImageError::Unsupported { path, .. } => path,
        }
    }
}

/// The decoder-level cause of an [`ImageError::Decode`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// libjpeg-turbo (through TurboJPEG) failed with this message; this includes
    /// "Premature end of JPEG file" for a truncated file, which Pillow also rejects.
    #[error("JPEG: {0}")]
    Jpeg(String),
    /// The `png` crate failed.
    #[error("PNG: {0}")]
    Png(#[from] png::DecodingError),
}

/// Errors of image sets, preprocessing configuration and the loader.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// One image failed (and the loader was not told to skip bad images).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The root folder of an image set (or a tar shard) does not exist or is not readable.
    #[error("image set {}: {source}", path.display())]
    Open {
        /// The folder or shard.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A folder or tar member has a name that is not UTF-8 (paths are stored as UTF-8).
    #[error("non-UTF-8 file name in image set: {}", path.display())]
    NonUtf8Path {
        /// The offending path (lossy display).
        path: PathBuf,
    },
    /// An image set has no class folder, no image, or a class without an image.
    #[error("image set {}: {what}", path.display())]
    Empty {
        /// The folder or shard list.
        path: PathBuf,
        /// What is empty.
        what: String,
    },
    /// A tar shard is malformed or holds a member that is not `<class>/<file>`.
    #[error("tar shard {}: {what}", path.display())]
    Tar {
        /// The shard.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A tar member belongs to a class that is not among the given class names.
    #[error("tar shard {}: member {member} has class {class:?}, not among the given classes", path.display())]
    UnknownClass {
        /// The shard.
        path: PathBuf,
        /// The member name.
        member: String,
        /// Its class folder.
        class: String,
    },
    /// A line of an image list that cannot be used (bad label, missing file, ...).
    #[error("image list {}:{line}: {reason}", path.display())]
    ListLine {
        /// The list file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A preprocessing or loader setting is out of range.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The setting (e.g. `preprocess.std`, `loader.batch_size`).
        field: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// A loader worker thread panicked (a bug); the batch it held is lost.
    #[error("image loader worker thread panicked")]
    WorkerPanicked,
}
