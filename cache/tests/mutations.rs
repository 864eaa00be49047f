//! The reader on untrusted bytes (what a shared bucket may hold): seeded mutations of real
//! cache files — the `posthoc-small` fixture imported from `../shared/fixtures`, and a
//! written cache with 64-row row groups — each opened and read completely (open, head,
//! stats, every split loaded and streamed, verify), with hash checks on and off.
//!
//! Must hold for every case: no panic, no hang (a watchdog aborts the test after 120 s),
//! bounded memory (peak RSS of the test process below 1.5 GiB), and every failure a
//! [`CacheError`](posthoc_cache::CacheError) whose message names the file (or the
//! manifest) it is about. Mutations the manifest does not record (its sha256 unchanged)
//! must always be refused; mutations resealed into the manifest (size and sha256 updated)
//! may read as valid data, but never panic.
//!
//! Cases: bit flips, truncation at every row-group boundary (and just inside it), random
//! bytes, files swapped with each other, manifests with huge or negative counts, sizes or
//! dims, and dims that do not match the files. The seed is fixed (`SEED`) and the number
//! of cases is printed.

mod common;
#[path = "common/read_all.rs"]
mod read_all;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::mix;
use posthoc_cache::{ImportOptions, Manifest};

const SEED: u64 = 0x5eed_2026_1201;

/// How a case treats the manifest's record of the mutated file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Record {
    /// Left as it was: the mutation must be refused.
    Kept,
    /// Size and sha256 updated to the new bytes: the decoder's checks are on their own.
    Resealed,
}

/// A deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = mix(self.0);
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One named way of damaging a parsed manifest.
type ManifestEdit = Box<dyn Fn(&mut serde_json::Value)>;
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn reseal(dir: &Path, name: &str) {
    common::reseal(dir, name);
}

fn manifest_value(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

fn write_manifest_value(dir: &Path, v: &serde_json::Value) {
    std::fs::write(dir.join("manifest.json"), serde_json::to_string(v).unwrap()).unwrap();
}

/// Runs one case: no panic, and an error (if any) naming a file of `dir` or the manifest.
fn check(dir: &Path, names: &[String], record: Record, what: &str, count: &mut usize) {
    for verify in [true, false] {
        *count += 1;
        let result = catch_unwind(AssertUnwindSafe(|| read_all::read_all(dir, verify, 100)));
        let result = match result {
            Ok(r) => r,
            Err(_) => panic!("PANIC on case `{what}` (verify = {verify})"),
        };
        match result {
            Ok(()) => assert!(
                record == Record::Resealed || !verify,
                "case `{what}` (verify = {verify}): a mutation the manifest does not record was accepted"
            ),
            Err(e) => {
                let text = e.to_string();
                let named = text.contains(dir.to_str().unwrap())
                    || names.iter().any(|n| text.contains(n.as_str()))
                    || text.contains("manifest");
                assert!(named, "case `{what}`: error names no file: {text}");
            }
        }
    }
}

fn data_files(dir: &Path) -> Vec<String> {
    Manifest::read(dir)
        .unwrap()
        .files
        .into_iter()
        .map(|f| f.name)
        .collect()
}

/// Byte offsets where each row group of a Parquet file starts (and the footer).
fn row_group_boundaries(path: &Path) -> Vec<u64> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let meta = reader.metadata();
    let mut cuts: Vec<u64> = meta
        .row_groups()
        .iter()
        .map(|g| g.columns().iter().map(|c| c.byte_range().0).min().unwrap())
        .collect();
    let end = meta
        .row_groups()
        .iter()
        .flat_map(|g| {
            g.columns()
                .iter()
                .map(|c| c.byte_range().0 + c.byte_range().1)
        })
        .max()
        .unwrap();
    cuts.push(end); // start of the footer
    cuts
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Aborts the process when `done` is not set within `limit` (a hang is a failure).
fn watchdog(limit: Duration) -> std::sync::Arc<AtomicBool> {
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let d = done.clone();
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while !d.load(Ordering::Relaxed) {
            if start.elapsed() > limit {
                eprintln!("mutation test hung for {limit:?}: aborting");
                std::process::abort();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    done
}

fn mutate_file_cases(base: &Path, work: &Path, rng: &mut Rng, count: &mut usize) {
    let names = data_files(base);
    for name in &names {
        let bytes = std::fs::read(base.join(name)).unwrap();
        for record in [Record::Kept, Record::Resealed] {
            // Bit flips: 1, 2, 8 random bits.
            for flips in [1, 2, 8] {
                let dir = work.join(format!("flip-{name}-{flips}-{record:?}"));
                copy_dir(base, &dir);
                let mut b = bytes.clone();
                for _ in 0..flips {
                    let at = rng.below(b.len() as u64) as usize;
                    b[at] ^= 1 << rng.below(8);
                }
                std::fs::write(dir.join(name), &b).unwrap();
                if record == Record::Resealed {
                    reseal(&dir, name);
                }
                check(
                    &dir,
                    &names,
                    record,
                    &format!("{flips} bit flips in {name}"),
                    count,
                );
                std::fs::remove_dir_all(&dir).unwrap();
            }
            // Random bytes: the whole file, and a random run inside it.
            for whole in [true, false] {
                let dir = work.join(format!("random-{name}-{whole}-{record:?}"));
                copy_dir(base, &dir);
                let mut b = bytes.clone();
                let (from, len) = if whole {
                    (0, b.len())
                } else {
                    let from = rng.below(b.len() as u64) as usize;
                    (from, (rng.below(512) as usize + 1).min(b.len() - from))
                };
                for x in &mut b[from..from + len] {
                    *x = rng.next() as u8;
                }
                std::fs::write(dir.join(name), &b).unwrap();
                if record == Record::Resealed {
                    reseal(&dir, name);
                }
                check(
                    &dir,
                    &names,
                    record,
                    &format!("random bytes in {name}"),
                    count,
                );
                std::fs::remove_dir_all(&dir).unwrap();
            }
        }
    }
    // Swapped files (every pair), resealed so that only the content can tell.
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            let dir = work.join(format!("swap-{a}-{b}"));
            copy_dir(base, &dir);
            std::fs::rename(dir.join(a), dir.join("tmp-swap")).unwrap();
            std::fs::rename(dir.join(b), dir.join(a)).unwrap();
            std::fs::rename(dir.join("tmp-swap"), dir.join(b)).unwrap();
            check(&dir, &names, Record::Kept, &format!("{a} <-> {b}"), count);
            reseal(&dir, a);
            reseal(&dir, b);
            check(
                &dir,
                &names,
                Record::Resealed,
                &format!("{a} <-> {b} resealed"),
                count,
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

fn truncation_cases(base: &Path, work: &Path, count: &mut usize) {
    let names = data_files(base);
    for name in &names {
        let path = base.join(name);
        let len = std::fs::metadata(&path).unwrap().len();
        let mut cuts: Vec<u64> = row_group_boundaries(&path)
            .into_iter()
            .flat_map(|c| [c, c + 1, c.saturating_sub(1)])
            .chain([0, 4, len - 8, len - 1])
            .filter(|&c| c < len)
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let bytes = std::fs::read(&path).unwrap();
        for cut in cuts {
            for record in [Record::Kept, Record::Resealed] {
                let dir = work.join(format!("cut-{name}-{cut}-{record:?}"));
                copy_dir(base, &dir);
                std::fs::write(dir.join(name), &bytes[..cut as usize]).unwrap();
                if record == Record::Resealed {
                    reseal(&dir, name);
                }
                // A truncated file is never valid Parquet: always refused.
                check(
                    &dir,
                    &names,
                    Record::Kept,
                    &format!("{name} cut at {cut}"),
                    count,
                );
                std::fs::remove_dir_all(&dir).unwrap();
            }
        }
    }
}

fn manifest_cases(base: &Path, work: &Path, count: &mut usize) {
    let names = data_files(base);
    let original = manifest_value(base);
    let n_files = original["files"].as_array().unwrap().len();
    let huge = serde_json::json!(u64::MAX);
    let mut edits: Vec<(String, ManifestEdit)> = Vec::new();
    for i in 0..n_files {
        for (key, value) in [
            ("rows", huge.clone()),
            ("rows", serde_json::json!(-1)),
            ("rows", serde_json::json!(1u64 << 40)),
            ("bytes", huge.clone()),
            ("bytes", serde_json::json!(-5)),
            ("bytes", serde_json::json!(0)),
            ("sha256", serde_json::json!("zz")),
            ("name", serde_json::json!("../../etc/passwd")),
            ("name", serde_json::json!("/etc/passwd")),
        ] {
            edits.push((
                format!("files[{i}].{key} = {value}"),
                Box::new(move |v: &mut serde_json::Value| v["files"][i][key] = value.clone()),
            ));
        }
    }
    for (key, value) in [
        ("feature_dim", serde_json::json!(u64::MAX)),
        ("feature_dim", serde_json::json!(1u64 << 40)),
        ("feature_dim", serde_json::json!(-3)),
        ("feature_dim", serde_json::json!(0)),
        ("num_classes", serde_json::json!(1u64 << 40)),
        ("num_classes", serde_json::json!(u64::MAX)),
    ] {
        edits.push((
            format!("model.{key} = {value}"),
            Box::new(move |v: &mut serde_json::Value| v["model"][key] = value.clone()),
        ));
    }
    // Dims that do not match the files (class names kept consistent with C).
    let (m, c) = (
        original["model"]["feature_dim"].as_u64().unwrap(),
        original["model"]["num_classes"].as_u64().unwrap(),
    );
    for dm in [m - 1, m + 1, 2 * m] {
        edits.push((
            format!("feature_dim {m} -> {dm}"),
            Box::new(move |v: &mut serde_json::Value| v["model"]["feature_dim"] = dm.into()),
        ));
    }
    let cc = c + 1;
    edits.push((
        format!("num_classes {c} -> {cc}"),
        Box::new(move |v: &mut serde_json::Value| {
            v["model"]["num_classes"] = cc.into();
            v["model"]["class_names"]
                .as_array_mut()
                .unwrap()
                .push("extra".into());
            for f in v["files"].as_array_mut().unwrap() {
                if f["role"] == "head" {
                    f["rows"] = cc.into();
                }
            }
        }),
    ));
    edits.push((
        "format_version = 99".into(),
        Box::new(|v: &mut serde_json::Value| v["format_version"] = 99.into()),
    ));
    edits.push((
        "files = []".into(),
        Box::new(|v: &mut serde_json::Value| v["files"] = serde_json::json!([])),
    ));
    edits.push((
        "a set's role changed".into(),
        Box::new(|v: &mut serde_json::Value| {
            for f in v["files"].as_array_mut().unwrap() {
                if f["role"] == "id_test" {
                    f["role"] = "ood".into();
                }
            }
        }),
    ));
    for (what, edit) in &edits {
        let dir = work.join("manifest-case");
        copy_dir(base, &dir);
        let mut v = original.clone();
        edit(&mut v);
        write_manifest_value(&dir, &v);
        check(&dir, &names, Record::Kept, what, count);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // Raw manifest bytes: truncated, random, not UTF-8, deeply nested.
    let text = std::fs::read(base.join("manifest.json")).unwrap();
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for (what, bytes) in [
        ("manifest cut in half", text[..text.len() / 2].to_vec()),
        ("manifest empty", Vec::new()),
        ("manifest not UTF-8", vec![0xff, 0xfe, 0x00, 0x7b]),
        ("manifest nested 100000 deep", nested.into_bytes()),
    ] {
        let dir = work.join("manifest-raw");
        copy_dir(base, &dir);
        std::fs::write(dir.join("manifest.json"), bytes).unwrap();
        check(&dir, &names, Record::Kept, what, count);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn real_cache(tmp: &Path) -> Option<PathBuf> {
    let fixture = common::fixture("posthoc-small")?;
    let dir = tmp.join("real");
    let options = ImportOptions {
        model_id: "densenet-bc-100-cifar10-dice".into(),
        ..ImportOptions::default()
    };
    posthoc_cache::import_npy(&fixture, &dir, &options).unwrap();
    Some(dir)
}

#[test]
fn seeded_mutations_of_real_caches_are_named_errors_never_panics() {
    let done = watchdog(Duration::from_secs(600));
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut rng = Rng(SEED);
    let mut count = 0;
    // A written cache with several 64-row row groups per split.
    let small = tmp.path().join("small");
    common::write_cache(&small, 64, |_| true);
    truncation_cases(&small, &work, &mut count);
    mutate_file_cases(&small, &work, &mut rng, &mut count);
    manifest_cases(&small, &work, &mut count);
    let synthetic = count;
    // The real fixture (one row group per split).
    if let Some(real) = real_cache(tmp.path()) {
        truncation_cases(&real, &work, &mut count);
        mutate_file_cases(&real, &work, &mut rng, &mut count);
        manifest_cases(&real, &work, &mut count);
    }
    done.store(true, Ordering::Relaxed);
    let rss = peak_rss_kib();
    println!(
        "mutation cases: {count} ({synthetic} on the 64-row-group cache, {} on posthoc-small), seed {SEED:#x}, peak RSS {} MiB",
        count - synthetic,
        rss / 1024
    );
    assert!(rss < 1536 * 1024, "peak RSS {} MiB", rss / 1024);
}
