//! What the integration tests of the `posthoc` package share: the fixture and data
//! folders of `../shared`, running the binary, importing the `posthoc-small` fixture as a
//! cache, and the DenseNet-BC config that precompute tests write.
//!
//! Each test binary uses a part of this module, so unused items are allowed here.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `posthoc` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_posthoc");

/// The CIFAR-10 class names in label order.
pub const CIFAR10_CLASSES: &str = "airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck";

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/fixtures/posthoc-small`, or `None` (with a message saying the test skips)
/// when it is absent.
pub fn posthoc_small() -> Option<PathBuf> {
    let dir = repo().join("../shared/fixtures/posthoc-small");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("skipping: ../shared/fixtures/posthoc-small not found");
        None
    }
}

/// `../shared/data` (canonical) when it holds the DICE checkpoints, or `None` with a
/// message saying the test skips.
pub fn shared_data() -> Option<PathBuf> {
    let d = repo().join("../shared/data");
    if d.join("checkpoints/dice-densenet100").is_dir() {
        Some(d.canonicalize().unwrap())
    } else {
        println!("skipping: ../shared/data not found");
        None
    }
}

/// The Python of the venv with moto and PyYAML that `.ci/run` makes
/// (`../posthoc-venv-moto`, or `$POSTHOC_MOTO_PYTHON`), or `None` with a skip message.
pub fn moto_python() -> Option<PathBuf> {
    let python = std::env::var_os("POSTHOC_MOTO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../posthoc-venv-moto/bin/python"));
    if python.exists() {
        Some(python)
    } else {
        println!(
            "skipping: no moto venv at {} (.ci/run creates it; or set POSTHOC_MOTO_PYTHON)",
            python.display()
        );
        None
    }
}

/// Runs `posthoc args` with warnings-only logging.
pub fn posthoc(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("POSTHOC_LOG", "warn")
        .output()
        .expect("run posthoc")
}

/// Fails the test unless `out` (of the command `what`) succeeded, showing its stderr.
pub fn assert_succeeded(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The stdout of `posthoc args`, which must succeed.
pub fn ok(args: &[&str]) -> String {
    let out = posthoc(args);
    assert_succeeded(&out, &format!("posthoc {args:?}"));
    String::from_utf8(out.stdout).unwrap()
}

/// The stderr of `posthoc args`, which must fail.
pub fn fails(args: &[&str]) -> String {
    let out = posthoc(args);
    assert!(
        !out.status.success(),
        "posthoc {args:?} succeeded but should fail"
    );
    String::from_utf8(out.stderr).unwrap()
}

/// The arguments of `posthoc cache import-npy` of the fixture `fixture` into `out` as
/// model `model_id`.
pub fn import_args(fixture: &Path, out: &Path, model_id: &str) -> Vec<String> {
    [
        "cache",
        "import-npy",
        "--from",
        path_str(fixture),
        "--out",
        path_str(out),
    ]
    .into_iter()
    .chain(["--model-id", model_id])
    .map(str::to_owned)
    .collect()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The one `error:` line of `out`, the output of `posthoc args`, which must have failed
/// with exactly one such line.
pub fn the_error_line(args: &[&str], out: Output) -> String {
    assert!(!out.status.success(), "posthoc {args:?} succeeded");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
    errors[0].to_string()
}

/// `posthoc cache import-npy` of the fixture `fixture` into `out` as model `model_id`,
/// with `extra` arguments; returns `out`.
pub fn import_npy(fixture: &Path, out: PathBuf, model_id: &str, extra: &[&str]) -> PathBuf {
    let args = import_args(fixture, &out, model_id);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    ok(&args);
    out
}

/// The `posthoc-small` fixture imported into `dir/cache` as the DICE DenseNet with the
/// CIFAR-10 class names.
pub fn import_small(fixture: &Path, dir: &Path) -> PathBuf {
    import_npy(
        fixture,
        dir.join("cache"),
        "densenet-bc-100-cifar10-dice",
        &["--class-names", CIFAR10_CLASSES],
    )
}

/// The checkpoint of the DICE DenseNet-BC-100 on CIFAR-10, relative to `../shared/data`.
pub const CIFAR10_CHECKPOINT: &str = "checkpoints/dice-densenet100/cifar10/checkpoint_100.pth.tar";

/// The `[model]` and `[preprocess]` sections of `configs/cifar10-densenet100.toml` with
/// the checkpoint at `checkpoint`, then `data` (the `[data]` sections and anything after).
pub fn densenet_cifar_config(checkpoint: &Path, data: &str) -> String {
    format!(
        r#"[model]
id = "densenet-bc-100-cifar10-dice"
arch = "densenet-bc"
depth = 100
growth_rate = 12
reduction = 0.5
bottleneck = true
num_classes = 10
class_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
checkpoint = {:?}

[preprocess]
resize = 32
crop = 32
mean = [0.4914, 0.4822, 0.4465]
std = [0.2023, 0.1994, 0.2010]

{data}"#,
        checkpoint.to_str().unwrap()
    )
}

/// The `.npy` and JSON files of a fixture folder.
pub struct Npy {
    /// The folder.
    pub dir: PathBuf,
}

impl Npy {
    /// The array in `dir/name` (panics naming the file when it cannot be read).
    pub fn npy<T: ndarray_npy::ReadableElement, D: ndarray::Dimension>(
        &self,
        name: &str,
    ) -> ndarray::Array<T, D> {
        ndarray_npy::read_npy(self.dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// The JSON document in `dir/name`.
    pub fn json(&self, name: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.join(name)).expect(name);
        serde_json::from_str(&text).expect(name)
    }

    /// The 0/1 `u8` matrix in `dir/name` as booleans.
    pub fn mask2(&self, name: &str) -> ndarray::Array2<bool> {
        self.npy::<u8, _>(name).mapv(|v| v != 0)
    }
}
