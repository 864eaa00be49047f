//! Durable file operations and sha256 hashing.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::error::{CacheError, Result, io_err};

/// `<path>.tmp`: where a file is written before it is renamed into place.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// fsyncs a directory so that a rename inside it is durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Renames the finished, fsynced `tmp` onto `path` and fsyncs the directory.
pub(crate) fn commit_tmp(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path).map_err(io_err(path))?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Writes `bytes` to `path` atomically: `<path>.tmp`, fsync, rename, fsync directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    commit_tmp(&tmp, path)
}

/// A writer that hashes (sha256) and counts every byte on its way to the file.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The inner writer, the hex sha256 and the number of bytes written.
    pub(crate) fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.bytes)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// sha256 (hex) and size of a file, read sequentially; stops early (returning `None`)
/// once `cancel` is set.
fn hash_file_cancellable(path: &Path, cancel: &AtomicBool) -> HashOutcome {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok(Some((hex::encode(hasher.finalize()), total)))
}

/// sha256 (hex) and size of the file at `path`.
pub(crate) fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let never = AtomicBool::new(false);
    hash_file_cancellable(path, &never)
        .map_err(io_err(path))
        .map(|r| r.expect("not cancelled"))
}

/// sha256 (hex) and size, or `None` when cancelled.
type HashOutcome = io::Result<Option<(String, u64)>>;

/// A sha256 computed on a helper thread while the caller decodes the same file, so that
/// verification costs one extra sequential read (from the page cache) and no extra
/// wall time on a machine with a spare core. Dropping it cancels the thread.
pub(crate) struct BackgroundHash {
    path: PathBuf,
    cancel: Arc<AtomicBool>,
    handle: Option<JoinHandle<HashOutcome>>,
}

impl BackgroundHash {
    pub(crate) fn spawn(path: &Path) -> BackgroundHash {
        let cancel = Arc::new(AtomicBool::new(false));
        let (p, c) = (path.to_path_buf(), cancel.clone());
        let handle = std::thread::Builder::new()
            .name("posthoc-cache-sha256".into())
            .spawn(move || hash_file_cancellable(&p, &c))
            .expect("spawn hashing thread");
        BackgroundHash {
            path: path.to_path_buf(),
            cancel,
            handle: Some(handle),
        }
    }

    /// Waits for the hash and compares it with `expected` (hex).
    pub(crate) fn check(mut self, expected: &str) -> Result<()> {
        let handle = self.handle.take().expect("joined once");
        let (found, _) = handle
            .join()
            .expect("hashing thread panicked")
            .map_err(io_err(&self.path))?
            .expect("not cancelled");
        if found != expected {
            return Err(CacheError::HashMismatch {
                file: self.path.clone(),
                expected: expected.to_string(),
                found,
            });
        }
        Ok(())
    }
}

impl Drop for BackgroundHash {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Creates `dir` and its parents.
pub(crate) fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))
}

/// Size of the file at `path`, or `None` when it does not exist.
pub(crate) fn file_size(path: &Path) -> Result<Option<u64>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_writer_matches_file_hash() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.bin");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(&data).unwrap();
        let (_, h, n) = w.finish();
        write_atomic(&p, &data).unwrap();
        assert_eq!(sha256_file(&p).unwrap(), (h.clone(), n));
        assert_eq!(n, data.len() as u64);
        // sha256 of "abc" (FIPS 180-2 example).
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"abc").unwrap();
        assert_eq!(
            w.finish().1,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        BackgroundHash::spawn(&p).check(&h).unwrap();
        let err = BackgroundHash::spawn(&p)
            .check(&"0".repeat(64))
            .unwrap_err();
        assert!(matches!(err, CacheError::HashMismatch { file, .. } if file == p));
    }
}
