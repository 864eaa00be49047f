//! The writer's lock on a cache location: one writer at a time.
//!
//! - Local directory: `flock` on `<dir>/.lock` (released by the kernel when the holder
//!   dies), whose content names the holder (host, pid, start and heartbeat times). A
//!   clean release empties it; a record found under a free `flock` was left by a writer
//!   that died: that is a stale lock.
//! - Object store: the object `<prefix>/.lock` with the same record, created with a
//!   conditional put (only if absent) and rewritten every [`HEARTBEAT`] by a helper
//!   thread. It is stale when its heartbeat is older than the limit, or when it names a
//!   dead process on this host.
//!
//! A lock held by a live writer makes [`WriteLock::acquire`] fail at once naming the
//! holder, or wait with [`LockOptions::wait`]. A stale lock is reported and taken over
//! only with [`LockOptions::break_stale`].

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{CacheError, Result, io_err};
use crate::io::create_dir_all;
use crate::store::{CacheLocation, RemoteStore};

/// Name of the lock file (local) or object (remote) inside a cache location.
pub const LOCK_FILE: &str = ".lock";
/// How often a remote lock's heartbeat is rewritten.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// Default age after which a remote lock's heartbeat counts as stale.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(60);

/// How to behave when the lock is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockOptions {
    /// Wait for a live holder to finish instead of failing at once.
    pub wait: bool,
    /// Take over a stale lock (its holder is gone) instead of failing.
    pub break_stale: bool,
    /// Heartbeat age after which a remote lock is stale.
    pub stale_after: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            wait: false,
            break_stale: false,
            stale_after: DEFAULT_STALE_AFTER,
        }
    }
}

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// When the lock was taken (seconds since the Unix epoch).
    pub started: u64,
    /// Last heartbeat (seconds since the Unix epoch).
    pub heartbeat: u64,
    /// A random token telling two acquisitions apart.
    pub token: String,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// This machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

impl LockOwner {
    fn me() -> LockOwner {
        let t = now();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        LockOwner {
            host: host_name(),
            pid: std::process::id(),
            started: t,
            heartbeat: t,
            token: format!("{:x}-{:x}-{nanos:x}", std::process::id(), t),
        }
    }

    /// Whether the holder is known to be gone: same host and its pid not running.
    fn is_dead_here(&self) -> bool {
        self.host == host_name() && !Path::new(&format!("/proc/{}", self.pid)).exists()
    }

    fn describe(&self) -> String {
        let age = now().saturating_sub(self.heartbeat);
        format!(
            "pid {} on host {} (since {} s, last heartbeat {age} s ago)",
            self.pid,
            self.host,
            now().saturating_sub(self.started)
        )
    }

    fn parse(text: &str) -> Option<LockOwner> {
        serde_json::from_str(text).ok()
    }

    fn json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serialisable")
    }
}

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct WriteLock {
    inner: Held,
}

#[derive(Debug)]
enum Held {
    Local {
        file: File,
        path: PathBuf,
    },
    Remote {
        store: RemoteStore,
        stop: Arc<AtomicBool>,
        heartbeat: Option<JoinHandle<()>>,
    },
}

impl WriteLock {
    /// Takes the writer's lock on `location` (see the module docs).
    pub fn acquire(location: &CacheLocation, options: &LockOptions) -> Result<WriteLock> {
        match location {
            CacheLocation::Local(dir) => acquire_local(dir, options),
            CacheLocation::Remote(url) => acquire_remote(RemoteStore::connect(url)?, options),
        }
    }
}

fn acquire_local(dir: &Path, options: &LockOptions) -> Result<WriteLock> {
    create_dir_all(dir)?;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    let locked = |reason: String| CacheError::Locked {
        lock: path.display().to_string(),
        reason,
    };
    let mut waited = false;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = read_record(&mut file, &path)?
                    .map_or_else(|| "another process".to_string(), |o| o.describe());
                if !options.wait {
                    return Err(locked(format!(
                        "the cache is being written by {holder}; wait for it (--wait-lock) or write elsewhere"
                    )));
                }
                if !waited {
                    tracing::info!(lock = %path.display(), holder, "waiting for the lock");
                    waited = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
    }
    if let Some(old) = read_record(&mut file, &path)? {
        if !options.break_stale {
            drop(file);
            return Err(locked(format!(
                "stale lock: left by {} which is gone (the write was interrupted); re-run with --break-lock to take it over and resume",
                old.describe()
            )));
        }
        tracing::warn!(lock = %path.display(), holder = old.describe(), "breaking a stale lock");
    }
    write_record(&mut file, &path, &LockOwner::me())?;
    Ok(WriteLock {
        inner: Held::Local { file, path },
    })
}

/// Who holds the lock of local cache directory `dir` right now (a live writer), if anyone.
pub fn holder(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(LOCK_FILE);
    let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(None),
        Err(std::fs::TryLockError::WouldBlock) => Ok(Some(
            read_record(&mut file, &path)?
                .map_or_else(|| "another process".to_string(), |o| o.describe()),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
    }
}

fn read_record(file: &mut File, path: &Path) -> Result<Option<LockOwner>> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    file.read_to_string(&mut text).map_err(io_err(path))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    // An unreadable record is still a record: some writer left it.
    Ok(Some(LockOwner::parse(&text).unwrap_or(LockOwner {
        host: "?".into(),
        pid: 0,
        started: 0,
        heartbeat: 0,
        token: String::new(),
    })))
}

fn write_record(file: &mut File, path: &Path, owner: &LockOwner) -> Result<()> {
    file.set_len(0).map_err(io_err(path))?;
    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    file.write_all(&owner.json()).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

fn acquire_remote(store: RemoteStore, options: &LockOptions) -> Result<WriteLock> {
    let url = store.url().object(LOCK_FILE);
    let locked = |reason: String| CacheError::Locked {
        lock: url.clone(),
        reason,
    };
    let me = LockOwner::me();
    let mut waited = false;
    loop {
        if store.put(LOCK_FILE, me.json(), true)? {
            break;
        }
        let Some(bytes) = store.get(LOCK_FILE)? else {
            continue; // released meanwhile: try again
        };
        let holder = LockOwner::parse(&String::from_utf8_lossy(&bytes));
        let stale = holder.as_ref().is_none_or(|h| {
            now().saturating_sub(h.heartbeat) > options.stale_after.as_secs() || h.is_dead_here()
        });
        let who = holder
            .as_ref()
            .map_or_else(|| "an unreadable lock record".to_string(), |h| h.describe());
        if stale {
            if !options.break_stale {
                return Err(locked(format!(
                    "stale lock: left by {who}, which is gone or silent for over {} s; re-run with --break-lock to take it over",
                    options.stale_after.as_secs()
                )));
            }
            tracing::warn!(lock = url, holder = who, "breaking a stale lock");
            store.delete(LOCK_FILE)?;
            if store.put(LOCK_FILE, me.json(), true)? {
                break;
            }
            return Err(locked(
                "another writer took the lock while the stale one was being broken".into(),
            ));
        }
        if !options.wait {
            return Err(locked(format!(
                "the cache is being written by {who}; wait for it (--wait-lock) or write elsewhere"
            )));
        }
        if !waited {
            tracing::info!(lock = url, holder = who, "waiting for the lock");
            waited = true;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeat = {
        let (store, stop, me) = (store.clone(), stop.clone(), me.clone());
        std::thread::Builder::new()
            .name("posthoc-lock-heartbeat".into())
            .spawn(move || heartbeat_loop(&store, &stop, me))
            .expect("spawn heartbeat thread")
    };
    Ok(WriteLock {
        inner: Held::Remote {
            store,
            stop,
            heartbeat: Some(heartbeat),
        },
    })
}

/// Rewrites the lock record's heartbeat every [`HEARTBEAT`] while the record is ours.
fn heartbeat_loop(store: &RemoteStore, stop: &AtomicBool, mut me: LockOwner) {
    let tick = Duration::from_millis(200);
    let mut since = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        since += tick;
        if since < HEARTBEAT {
            continue;
        }
        since = Duration::ZERO;
        let current = store
            .get(LOCK_FILE)
            .ok()
            .flatten()
            .and_then(|b| LockOwner::parse(&String::from_utf8_lossy(&b)));
        if current.as_ref().is_none_or(|c| c.token != me.token) {
            tracing::error!(
                lock = store.url().object(LOCK_FILE),
                "the lock was broken by another writer; this write is no longer protected"
            );
            return;
        }
        me.heartbeat = now();
        if let Err(e) = store.put(LOCK_FILE, me.json(), false) {
            tracing::warn!(error = %e, "lock heartbeat failed");
        }
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        match &mut self.inner {
            Held::Local { file, path } => {
                if let Err(e) = file.set_len(0).and_then(|()| file.sync_all()) {
                    tracing::warn!(lock = %path.display(), error = %e, "could not clear the lock record");
                }
                let _ = file.unlock();
            }
            Held::Remote {
                store,
                stop,
                heartbeat,
            } => {
                stop.store(true, Ordering::Relaxed);
                if let Some(h) = heartbeat.take() {
                    let _ = h.join();
                }
                if let Err(e) = store.delete(LOCK_FILE) {
                    tracing::warn!(error = %e, "could not release the lock");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_local_writer_fails_naming_the_holder_and_a_stale_record_needs_break() {
        let dir = tempfile::tempdir().unwrap();
        let loc = CacheLocation::Local(dir.path().join("c"));
        let first = WriteLock::acquire(&loc, &LockOptions::default()).unwrap();
        let err = WriteLock::acquire(&loc, &LockOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains("--wait-lock"), "{err}");
        drop(first);
        // Released cleanly: free for the next writer.
        let again = WriteLock::acquire(&loc, &LockOptions::default()).unwrap();
        drop(again);
        // A record left behind by a dead writer is stale.
        let dead = LockOwner {
            host: host_name(),
            pid: u32::MAX - 1,
            started: 1,
            heartbeat: 1,
            token: "x".into(),
        };
        std::fs::write(dir.path().join("c").join(LOCK_FILE), dead.json()).unwrap();
        let err = WriteLock::acquire(&loc, &LockOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("stale lock") && err.contains("--break-lock"),
            "{err}"
        );
        let options = LockOptions {
            break_stale: true,
            ..LockOptions::default()
        };
        WriteLock::acquire(&loc, &options).unwrap();
    }
}
