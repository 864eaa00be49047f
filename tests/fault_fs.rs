//! Writers on file systems that fail, through the binary: a disk that fills up midway (a
//! 1 MiB tmpfs; the `posthoc-small` import needs ~5 MiB) and a read-only target (a
//! read-only tmpfs). Each gives one error naming the file or directory and the cause,
//! leaves nothing a reader accepts, and — once there is space — a re-run into a fresh
//! directory completes and verifies.
//!
//! Needs root and `mount` (a container without CAP_SYS_ADMIN cannot mount): otherwise each
//! test says it skips. Mounts are under a temporary directory and unmounted on drop.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_succeeded, ok, posthoc, posthoc_small, the_error_line};

/// A tmpfs mounted on a temporary directory with `options`; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(options: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                println!(
                    "skipping: cannot mount a tmpfs ({}): needs root and mount",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("skipping: no mount command ({e})");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.path())
            .output()
            .unwrap();
        assert_succeeded(&out, &format!("mount -o remount,{options}"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).output();
    }
}

/// The import of the `posthoc-small` fixture into `out`.
fn import_args(fixture: &Path, out: &Path) -> Vec<String> {
    common::import_args(fixture, out, "densenet-bc-100-cifar10-dice")
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The one `error:` line of a run that must fail.
fn error_lines(args: &[&str]) -> String {
    the_error_line(args, posthoc(args))
}

/// Every file below `dir` (relative paths).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out
}

#[test]
fn a_full_disk_is_named_leaves_nothing_accepted_and_a_rerun_completes() {
    let Some(fixture) = posthoc_small() else {
        return;
    };
    let Some(fs) = Tmpfs::mount("size=1m") else {
        return;
    };
    let out = fs.path().join("cache");
    let err = error_lines(&strs(&import_args(&fixture, &out)));
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains(out.to_str().unwrap()), "names no file: {err}");
    assert!(err.contains("writing failed"), "{err}");
    // No manifest, no half-written Parquet file kept.
    let left = files(&out);
    assert!(
        left.iter().all(|f| !f.to_string_lossy().ends_with(".tmp")),
        "temporary files left behind: {left:?}"
    );
    let refused = error_lines(&["cache", "verify", out.to_str().unwrap()]);
    assert!(refused.contains("no manifest.json"), "{refused}");
    let refused = error_lines(&["eval", "--cache", out.to_str().unwrap(), "--method", "msp"]);
    assert!(refused.contains("no manifest.json"), "{refused}");
    // The unfinished directory is not silently overwritten; a fresh one completes.
    fs.remount("size=64m");
    let again = error_lines(&strs(&import_args(&fixture, &out)));
    assert!(again.contains("directory is not empty"), "{again}");
    let fresh = fs.path().join("cache2");
    ok(&strs(&import_args(&fixture, &fresh)));
    ok(&["cache", "verify", fresh.to_str().unwrap()]);
}

#[test]
fn a_read_only_target_is_named_and_nothing_is_written() {
    let Some(fixture) = posthoc_small() else {
        return;
    };
    let Some(fs) = Tmpfs::mount("ro,size=1m") else {
        return;
    };
    let out = fs.path().join("cache");
    let err = error_lines(&strs(&import_args(&fixture, &out)));
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(err.contains(out.to_str().unwrap()), "names no path: {err}");
    assert!(files(fs.path()).is_empty());
}
