//! A writer killed with SIGKILL mid-split leaves nothing that `open`/`verify` accept,
//! and resuming completes to the same cache as an uninterrupted run.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use posthoc_cache::{CacheError, CacheWriter, FeatureCache, Role, WriterOptions, verify};

const ENV_DIR: &str = "POSTHOC_CACHE_TEST_CHILD_DIR";
const ROWS: u64 = 3000;
const GROUP: usize = 64;

/// The producer both runs use: the standard head, an `id_train` split of `ROWS` rows
/// appended 16 at a time (after `skip_done`), and a small `id_test` split.
fn produce(dir: &Path, resume: bool, slow: bool) -> posthoc_cache::Manifest {
    let mut w = if resume {
        CacheWriter::open_resume(dir).unwrap()
    } else {
        CacheWriter::create_with(
            dir,
            init(M, C),
            WriterOptions {
                row_group_rows: GROUP,
                ..Default::default()
            },
        )
        .unwrap()
    };
    w.write_head(&head(M, C)).unwrap();
    let mut sw = w.split_writer("id_train", Role::IdTrain).unwrap();
    let done = sw.resume_point();
    let todo: Vec<u64> = (0..ROWS).filter(|&i| !done.contains(i)).collect();
    for chunk in todo.chunks(16) {
        if chunk[0] % 200 == 0 {
            sw.skip(chunk[0] + ROWS, "dir/unreadable.png", "decode error")
                .unwrap();
        }
        sw.append(&rows(11, chunk, M, C, Role::IdTrain)).unwrap();
        if slow {
            std::thread::sleep(Duration::from_millis(4));
        }
    }
    sw.close().unwrap();
    let mut sw = w.split_writer("id_test", Role::IdTest).unwrap();
    sw.append(&rows(22, &(0..50).collect::<Vec<_>>(), M, C, Role::IdTest))
        .unwrap();
    sw.close().unwrap();
    w.finish().unwrap()
}

/// Runs only as the child process of `killed_writer_resumes_to_the_same_cache`.
#[test]
#[ignore = "helper: the child process of killed_writer_resumes_to_the_same_cache"]
fn child_slow_writer() {
    let dir = std::env::var(ENV_DIR).expect("run by the parent test");
    produce(Path::new(&dir), false, true);
}

fn parts(dir: &Path) -> usize {
    std::fs::read_dir(dir.join(".partial/id_train"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".parquet")
            })
            .count()
        })
        .unwrap_or(0)
}

#[test]
fn killed_writer_resumes_to_the_same_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("killed");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_slow_writer", "--ignored", "--nocapture"])
        .env(ENV_DIR, &dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while parts(&dir) < 8 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "child made no progress"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "child ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let committed = parts(&dir);
    assert!(
        committed < (ROWS as usize).div_ceil(GROUP),
        "killed before the end"
    );

    // Also leave what a kill during a part's write leaves: a half-written temporary.
    let first = dir.join(".partial/id_train/part-000000.parquet");
    let bytes = std::fs::read(&first).unwrap();
    let torn = dir.join(".partial/id_train/part-999999.parquet.tmp");
    std::fs::write(&torn, &bytes[..bytes.len() / 2]).unwrap();

    // Nothing the reader accepts.
    assert!(matches!(
        FeatureCache::open(&dir),
        Err(CacheError::Unfinished { .. })
    ));
    assert!(matches!(verify(&dir), Err(CacheError::Unfinished { .. })));

    // Resume reports whole committed chunks only.
    {
        let w = CacheWriter::open_resume(&dir).unwrap();
        let rp = w
            .split_writer("id_train", Role::IdTrain)
            .unwrap()
            .resume_point();
        assert!(
            rp.rows >= 8 * GROUP as u64 && rp.rows.is_multiple_of(GROUP as u64),
            "{rp:?}"
        );
        assert_eq!(rp.first_missing(), rp.rows);
        assert!(!torn.exists(), "the torn temporary is removed on resume");
        assert!(
            !dir.read_dir()
                .unwrap()
                .any(|e| e.unwrap().file_name() == "manifest.json")
        );
    }
    let resumed = produce(&dir, true, false);
    assert!(verify(&dir).unwrap().is_ok());

    let reference_dir = tmp.path().join("reference");
    let reference = produce(&reference_dir, false, false);
    // Same files, byte for byte (same sha256), same skipped list.
    assert_eq!(resumed.files, reference.files);
    assert_eq!(resumed.skipped, reference.skipped);
    assert_eq!(resumed.skipped.len(), 8);
    let a = FeatureCache::open(&dir).unwrap();
    let b = FeatureCache::open(&reference_dir).unwrap();
    assert_eq!(a.split("id_train").unwrap(), b.split("id_train").unwrap());
    assert_eq!(a.stats().unwrap(), b.stats().unwrap());
}
