//! `posthoc precompute` end to end on the real checkpoint and images of `../shared/data`:
//! the cached features equal the PyTorch features of `../shared/fixtures/posthoc-small`
//! row for row, a run killed with SIGKILL resumes to the same bytes as an uninterrupted
//! one, and bad inputs (missing folder, corrupt image, another model's checkpoint) give
//! errors that name them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ndarray::{Array2, s};
use ndarray_npy::read_npy;
use posthoc_cache::FeatureCache;

use common::{BIN, CIFAR10_CHECKPOINT, assert_succeeded, densenet_cifar_config};

fn shared() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if dir.join("data").is_dir() && dir.join("fixtures/posthoc-small").is_dir() {
        Some(dir.canonicalize().unwrap())
    } else {
        println!("skipping: ../shared/data or ../shared/fixtures/posthoc-small not found");
        None
    }
}

/// The OOD sets of `posthoc-small`.
const SMALL_OOD: [&str; 3] = ["isun", "tinyimagenet", "mnist"];

/// A config like `configs/cifar10-densenet100.toml` with absolute paths into `shared`,
/// the OOD sets `ood` of `shared/data/ood`, and `extra_ood` folders.
fn write_config(
    dir: &Path,
    shared: &Path,
    checkpoint: &str,
    ood_sets: &[&str],
    extra_ood: &[(&str, &Path)],
) -> PathBuf {
    let data = shared.join("data");
    let d = |p: &str| data.join(p).to_str().unwrap().to_owned();
    let shards: Vec<String> = (0..5)
        .map(|i| format!("{:?}", d(&format!("cifar10/train-{i:02}.tar"))))
        .collect();
    let mut ood = String::new();
    for name in ood_sets {
        ood.push_str(&format!(
            "{name} = {{ folder = {:?} }}\n",
            d(&format!("ood/{name}"))
        ));
    }
    for (name, path) in extra_ood {
        ood.push_str(&format!(
            "{name} = {{ folder = {:?} }}\n",
            path.to_str().unwrap()
        ));
    }
    let text = densenet_cifar_config(
        &data.join(checkpoint),
        &format!(
            r#"[data]
id_train = {{ tar = [{}] }}
id_test = {{ folder = {:?} }}

[data.ood]
{ood}
[precompute]
batch_size = 16
out = "unused"
"#,
            shards.join(", "),
            d("cifar10/test"),
        ),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const CIFAR10: &str = CIFAR10_CHECKPOINT;

fn precompute(config: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args(["precompute", "--config", config.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap()])
        .args(extra)
        .env("POSTHOC_LOG", "warn")
        .output()
        .expect("run posthoc")
}

fn assert_ok(out: &Output) {
    assert_succeeded(out, "precompute");
}

fn max_abs(a: ndarray::ArrayView2<f32>, b: ndarray::ArrayView2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn cached_features_equal_pytorch_row_for_row() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &shared, CIFAR10, &SMALL_OOD, &[]);
    let out = dir.path().join("cache");
    const N: usize = 24;
    assert_ok(&precompute(&config, &out, &["--limit", &N.to_string()]));
    let cache = FeatureCache::open(&out).unwrap();
    assert_eq!(
        cache.manifest().model.checkpoint_sha256.as_deref(),
        Some("deaefd082911a1c6c92aacdcfecf03c71b932acc5c08b779c85c44eccdc0c817")
    );
    posthoc_cache::verify(&out).unwrap().into_result().unwrap();
    let fixture = shared.join("fixtures/posthoc-small");
    for (set, prefix) in [
        ("id_train", "id_train"),
        ("id_test", "id_test"),
        ("isun", "ood_isun"),
        ("tinyimagenet", "ood_tinyimagenet"),
        ("mnist", "ood_mnist"),
    ] {
        let split = cache.split(set).unwrap();
        assert_eq!(split.rows(), N, "{set}");
        let feat: Array2<f32> = read_npy(fixture.join(format!("{prefix}_feat.npy"))).unwrap();
        let logits: Array2<f32> = read_npy(fixture.join(format!("{prefix}_logits.npy"))).unwrap();
        let files = std::fs::read_to_string(fixture.join(format!("{prefix}_files.txt"))).unwrap();
        let files: Vec<&str> = files.lines().take(N).collect();
        assert_eq!(split.paths, files, "{set}: same images in the same order");
        let df = max_abs(split.features.view(), feat.slice(s![..N, ..]));
        let dl = max_abs(split.logits.view(), logits.slice(s![..N, ..]));
        assert!(df <= 1e-4, "{set}: features differ by {df}");
        assert!(dl <= 5e-4, "{set}: logits differ by {dl}");
        let labels_ok = if set.starts_with("id_") {
            split.labels.iter().all(|&l| l == 0)
        } else {
            split.labels.iter().all(|&l| l == -1)
        };
        assert!(labels_ok, "{set}: labels {:?}", split.labels);
    }
    // A re-run finds the cache complete and changes nothing.
    let manifest = std::fs::read(out.join("manifest.json")).unwrap();
    assert_ok(&precompute(&config, &out, &["--limit", &N.to_string()]));
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), manifest);
}

/// sha256 of every split file of a cache, by name.
fn split_hashes(dir: &Path) -> Vec<(String, String)> {
    let m = FeatureCache::open(dir).unwrap().manifest().clone();
    m.files
        .iter()
        .map(|f| (f.name.clone(), f.sha256.clone()))
        .collect()
}

#[test]
fn killed_run_resumes_to_the_same_cache() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &shared, CIFAR10, &["mnist"], &[]);
    let args = ["--limit", "96", "--commit-every", "16"];
    // Uninterrupted reference.
    let reference = dir.path().join("reference");
    assert_ok(&precompute(&config, &reference, &args));

    // Killed once at least two chunks of id_train are committed, then resumed.
    let out = dir.path().join("resumed");
    let mut child = Command::new(BIN)
        .args(["precompute", "--config", config.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap()])
        .args(args)
        .env("POSTHOC_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let parts = out.join(".partial/id_train");
    let started = Instant::now();
    loop {
        let n = std::fs::read_dir(&parts)
            .map(|d| {
                d.filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("part-") && name.ends_with(".parquet")
                })
                .count()
            })
            .unwrap_or(0);
        if n >= 2 {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("precompute ended ({status}) before it could be killed");
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        FeatureCache::open(&out).is_err(),
        "a killed run must not look finished"
    );
    assert!(posthoc_cache::verify(&out).is_err());

    // The killed writer's lock is stale: reported, and broken only with --break-lock.
    let refused = precompute(&config, &out, &args);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("stale lock") && err.contains(&format!("pid {}", child.id())),
        "{err}"
    );
    assert_ok(&precompute(
        &config,
        &out,
        &[&args[..], &["--break-lock"]].concat(),
    ));
    posthoc_cache::verify(&out).unwrap().into_result().unwrap();
    let (a, b) = (split_hashes(&reference), split_hashes(&out));
    assert_eq!(a, b, "resumed cache differs from the uninterrupted one");
}

#[test]
fn a_second_writer_fails_at_once_naming_the_first_or_waits_with_wait_lock() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &shared, CIFAR10, &["mnist"], &[]);
    let out = dir.path().join("cache");
    let args = ["--limit", "96", "--commit-every", "16"];
    let spawn = |extra: &[&str]| {
        Command::new(BIN)
            .args(["precompute", "--config", config.to_str().unwrap()])
            .args(["--out", out.to_str().unwrap()])
            .args(args)
            .args(extra)
            .env("POSTHOC_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = spawn(&[]);
    let lock = out.join(posthoc_cache::LOCK_FILE);
    let started = Instant::now();
    while std::fs::read_to_string(&lock).map_or(true, |t| t.is_empty()) {
        assert!(
            first.try_wait().unwrap().is_none(),
            "first writer ended early"
        );
        assert!(started.elapsed() < Duration::from_secs(60), "no lock taken");
        std::thread::sleep(Duration::from_millis(5));
    }
    let t = Instant::now();
    let second = precompute(&config, &out, &args);
    assert!(!second.status.success());
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the second writer must fail at once"
    );
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains(&format!("being written by pid {}", first.id()))
            && err.contains("--wait-lock"),
        "{err}"
    );
    // With --wait-lock it waits for the first, then finds the cache complete.
    let waiting = spawn(&["--wait-lock"]);
    assert_ok(&first.wait_with_output().unwrap());
    let waited = waiting.wait_with_output().unwrap();
    assert_ok(&waited);
    assert!(String::from_utf8_lossy(&waited.stdout).contains("complete"));
    posthoc_cache::verify(&out).unwrap().into_result().unwrap();
}

#[test]
fn bad_inputs_are_named() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();

    // A missing OOD folder.
    let missing = dir.path().join("no-such-set");
    let config = write_config(dir.path(), &shared, CIFAR10, &[], &[("gone", &missing)]);
    let out = precompute(
        &config,
        &dir.path().join("c1"),
        &["--limit", "4", "--only", "gone"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-set"), "{err}");

    // A corrupt image: an error naming it, or recorded with --skip-bad.
    let bad = dir.path().join("bad/class");
    std::fs::create_dir_all(&bad).unwrap();
    let good = std::fs::read(shared.join("data/ood/isun/iSUN_patches/0.jpeg")).unwrap();
    std::fs::write(bad.join("a.jpeg"), &good).unwrap();
    std::fs::write(bad.join("b.jpeg"), &good[..good.len() / 3]).unwrap();
    std::fs::write(bad.join("c.jpeg"), &good).unwrap();
    let config = write_config(
        dir.path(),
        &shared,
        CIFAR10,
        &[],
        &[("bad", &dir.path().join("bad"))],
    );
    let out = precompute(&config, &dir.path().join("c2"), &["--only", "bad"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("b.jpeg"), "{err}");
    let c3 = dir.path().join("c3");
    let out = precompute(&config, &c3, &["--limit", "8", "--skip-bad"]);
    assert_ok(&out);
    let cache = FeatureCache::open(&c3).unwrap();
    let skipped = &cache.manifest().skipped;
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].path, "class/b.jpeg");
    assert_eq!(
        cache.split("bad").unwrap().paths,
        ["class/a.jpeg", "class/c.jpeg"]
    );

    // The CIFAR-100 checkpoint for a 10-class config: the head shapes are named.
    let config = write_config(
        dir.path(),
        &shared,
        "checkpoints/dice-densenet100/cifar100/checkpoint_100.pth.tar",
        &[],
        &[],
    );
    let out = precompute(&config, &dir.path().join("c4"), &["--limit", "4"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fc.weight") && err.contains("100"), "{err}");
}
