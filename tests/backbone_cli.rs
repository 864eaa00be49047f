//! `posthoc precompute` with a bad `[model]`: an unknown arch lists the known ones, a
//! truncated `.pth` and a torchvision MobileNet-v2 file lacking layers are errors naming
//! the file (and the missing keys), a ResNet-50 checkpoint under `arch = "resnet18"` names
//! the keys that do not fit. The network is loaded before any image is read, so the data
//! sets here are empty folders. Checkpoints: `pipeline/tests/fixtures/backbones/
//! mobilenet_v2.partial.pth` (written by `torch.save`, see `scripts/backbone_parity_fixture.py`)
//! and a ResNet-50 state dict of zeros written here. And the other way round: EfficientNet-
//! Lite0 (the real ImageNet checkpoint) through `posthoc precompute` caches PyTorch's
//! features and logits of `../shared/fixtures/efficientnet-lite0-imagenet` row for row.
#![cfg(feature = "pipeline")]

mod common;

use std::path::{Path, PathBuf};

use common::{fails, ok, repo};
use ndarray::{Array1, Array2, s};
use ndarray_npy::read_npy;
use posthoc_cache::FeatureCache;
use posthoc_pipeline::checkpoint::arch_state_dict_layout;
use posthoc_pipeline::um::tensors::TensorFile;

fn partial_pth() -> PathBuf {
    repo().join("pipeline/tests/fixtures/backbones/mobilenet_v2.partial.pth")
}

/// A 10-class config for `arch` with `checkpoint`, empty data folders under `dir`.
fn write_config(dir: &Path, arch: &str, checkpoint: &Path) -> PathBuf {
    let data = dir.join("data");
    for set in ["train/a", "test/a", "ood/a"] {
        std::fs::create_dir_all(data.join(set)).unwrap();
    }
    let d = |p: &str| format!("{:?}", data.join(p).to_str().unwrap());
    let text = format!(
        r#"[model]
id = "bad-model"
arch = "{arch}"
num_classes = 10
class_names = ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"]
checkpoint = {ckpt:?}

[preprocess]
resize = 72
crop = 64
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]

[data]
id_train = {{ folder = {train} }}
id_test = {{ folder = {test} }}

[data.ood]
ood = {{ folder = {ood} }}
"#,
        ckpt = checkpoint.to_str().unwrap(),
        train = d("train"),
        test = d("test"),
        ood = d("ood"),
    );
    let path = dir.join("model.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `posthoc precompute` on `config`, expects a failure and returns its stderr.
fn precompute_fails(config: &Path, out: &Path) -> String {
    let err = fails(&[
        "precompute",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    println!("{err}");
    err
}

#[test]
fn an_unknown_arch_lists_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "resnet9000", &partial_pth());
    let err = precompute_fails(&config, &dir.path().join("out"));
    assert!(
        err.contains("[model] arch = \"resnet9000\" is not a known architecture (known: \"densenet-bc\", \"efficientnet-lite0\", \"mobilenet_v2\", \"resnet18\""),
        "{err}"
    );
    assert!(err.contains("model.toml"), "{err}");
}

#[test]
fn a_truncated_pth_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(partial_pth()).unwrap();
    let cut = dir.path().join("mobilenet_v2-cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let config = write_config(dir.path(), "mobilenet_v2", &cut);
    let err = precompute_fails(&config, &dir.path().join("out"));
    assert!(err.contains("cannot parse checkpoint"), "{err}");
    assert!(err.contains("truncated"), "{err}");
    assert!(err.contains(cut.to_str().unwrap()), "{err}");
}

/// torchvision's names of the layers present are accepted; the absent ones are named.
#[test]
fn a_mobilenet_v2_pth_without_its_later_blocks_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "mobilenet_v2", &partial_pth());
    let err = precompute_fails(&config, &dir.path().join("out"));
    assert!(
        err.contains("does not fit mobilenet_v2 (10 classes)"),
        "{err}"
    );
    // 262 tensors less the 32 of the stem, blocks 0-1 and the classifier.
    assert!(
        err.contains("230 missing key(s): features.3.conv.0.1.bias"),
        "{err}"
    );
    assert!(!err.contains("unexpected"), "{err}");
    assert!(err.contains("mobilenet_v2.partial.pth"), "{err}");
}

#[test]
fn a_resnet50_checkpoint_under_arch_resnet18_names_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = TensorFile::default();
    let resnet50 = "resnet50".parse().unwrap();
    for e in arch_state_dict_layout(resnet50, 10).unwrap() {
        let n = e.shape.iter().product();
        file.tensors.insert(e.key, (e.shape, vec![0.0; n]));
    }
    let ckpt = dir.path().join("resnet50.safetensors");
    file.write(&ckpt).unwrap();
    let config = write_config(dir.path(), "resnet18", &ckpt);
    let err = precompute_fails(&config, &dir.path().join("out"));
    assert!(err.contains("does not fit resnet18 (10 classes)"), "{err}");
    assert!(
        err.contains("unexpected key(s): layer1.0.bn3.bias"),
        "{err}"
    );
    assert!(
        err.contains("layer1.0.conv1.weight (model [64, 64, 3, 3], checkpoint [64, 64, 1, 1])"),
        "{err}"
    );
    assert!(err.contains("resnet50.safetensors"), "{err}");
}

/// `../shared/<rel>`, or `None` after one skip line.
fn shared(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared")
        .join(rel);
    if p.exists() {
        Some(p.canonicalize().unwrap())
    } else {
        println!("skipping: ../shared/{rel} not found");
        None
    }
}

/// The first rows of the fixture (val images) as an image list with their labels, for every
/// set; cached features and logits against PyTorch's.
#[test]
fn efficientnet_lite0_precompute_caches_pytorchs_features_row_for_row() {
    let (Some(fx), Some(imagenet), Some(ckpt)) = (
        shared("fixtures/efficientnet-lite0-imagenet"),
        shared("data/imagenet"),
        shared("data/checkpoints/efficientnet-lite0/efficientnet-lite0-57934424.pth"),
    ) else {
        return;
    };
    const N: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let files = std::fs::read_to_string(fx.join("files.txt")).unwrap();
    let files: Vec<&str> = files.lines().take(N).collect();
    let labels: Array1<i64> = read_npy(fx.join("labels.npy")).unwrap();
    let list = dir.path().join("rows.txt");
    let lines: Vec<String> = files
        .iter()
        .zip(&labels)
        .map(|(f, l)| format!("{f} {l}"))
        .collect();
    std::fs::write(&list, lines.join("\n") + "\n").unwrap();
    let set = format!(
        "{{ list = {:?}, root = {:?} }}",
        list.to_str().unwrap(),
        imagenet.to_str().unwrap()
    );
    let config = dir.path().join("lite0.toml");
    std::fs::write(
        &config,
        format!(
            r#"[model]
id = "efficientnet-lite0-imagenet"
arch = "efficientnet-lite0"
num_classes = 1000
class_names_file = {classes:?}
checkpoint = {ckpt:?}

[preprocess]
resize = 256
interpolation = "bilinear"
crop = 224
mean = [0.4980392156862745, 0.4980392156862745, 0.4980392156862745]
std = [0.5019607843137255, 0.5019607843137255, 0.5019607843137255]

[data]
id_train = {set}
id_test = {set}

[data.ood]
rows = {set}
"#,
            classes = imagenet.join("classes.txt").to_str().unwrap(),
            ckpt = ckpt.to_str().unwrap(),
        ),
    )
    .unwrap();
    let out = dir.path().join("cache");
    ok(&[
        "precompute",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch-size",
        "4",
    ]);
    let cache = FeatureCache::open(&out).unwrap();
    let feat: Array2<f32> = read_npy(fx.join("features.npy")).unwrap();
    let logits: Array2<f32> = read_npy(fx.join("logits.npy")).unwrap();
    let split = cache.split("id_test").unwrap();
    assert_eq!(split.paths, files);
    let max = |a: ndarray::ArrayView2<f32>, b: ndarray::ArrayView2<f32>| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    };
    let df = max(split.features.view(), feat.slice(s![..N, ..]));
    let dl = max(split.logits.view(), logits.slice(s![..N, ..]));
    println!("cached features differ by {df:.3e}, logits by {dl:.3e}");
    assert!(df <= 1e-4 && dl <= 1e-4, "features {df}, logits {dl}");
    let want: Vec<i64> = labels.iter().take(N).copied().collect();
    let got: Vec<i64> = split.labels.iter().map(|&l| i64::from(l)).collect();
    assert_eq!(got, want);
    assert_eq!(cache.split("rows").unwrap().rows(), N);
}
