//! Every ResNet and MobileNet-v2 of the architecture registry against torchvision on seeded
//! formula weights
//! (`scripts/backbone_parity_fixture.py` wrote PyTorch's features and logits to
//! `tests/fixtures/backbones/`; this test builds the same weights bit for bit, writes them
//! as a `.safetensors` state dict in the checkpoint's key names — wrapped like a
//! DataParallel checkpoint for one of them — and loads it through `load_backbone`). The
//! fused CPU engine built from each loaded network is held to the same tolerance, against
//! PyTorch and against the burn forward.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use posthoc_pipeline::checkpoint::{arch_state_dict_layout, load_backbone};
use posthoc_pipeline::model::{Arch, Backbone, ResNetV2Spec};
use posthoc_pipeline::um::tensors::TensorFile;
use posthoc_pipeline::{CheckpointError, PipelineError, ShapeMismatch};

use common::*;

const NUM_CLASSES: usize = 10;
const BATCH: usize = 2;
const TOL: f32 = 1e-4;

/// `h = (h * 31 + byte) mod 2^32` over the key's bytes.
fn key_seed(key: &str) -> u64 {
    key.bytes()
        .fold(0u64, |h, b| (h * 31 + u64::from(b)) % (1 << 32))
}

/// `u_i = mix((i * 2654435761 + seed * 40503 + 12345) mod 2^32) / 2^32` with
/// `mix(h)`: `h ^= h >> 15; h = h * 2246822519 mod 2^32; h ^= h >> 13`.
fn uniform(key: &str, n: usize) -> impl Iterator<Item = f64> {
    let seed = key_seed(key);
    let m32 = (1u64 << 32) - 1;
    (0..n as u64).map(move |i| {
        let mut h = (i * 2_654_435_761 + seed * 40_503 + 12_345) & m32;
        h ^= h >> 15;
        h = (h * 2_246_822_519) & m32;
        h ^= h >> 13;
        h as f64 / (1u64 << 32) as f64
    })
}

/// The script's weight gain per architecture (`GAIN`).
fn gain(arch: Arch) -> f64 {
    if arch == Arch::MobileNetV2 { 2.0 } else { 1.0 }
}

/// The script's `formula(key, shape, gain)`.
fn formula(key: &str, shape: &[usize], gain: f64) -> Vec<f32> {
    let n = shape.iter().product();
    let leaf = key.rsplit('.').next().unwrap();
    let fan_in: usize = shape.iter().skip(1).product();
    let scale = (3.0 * gain / fan_in as f64).sqrt();
    uniform(key, n)
        .map(|u| {
            (match leaf {
                "running_mean" => (u - 0.5) * 0.25,
                "running_var" => u + 0.5,
                "weight" if shape.len() == 1 => u * 0.5 + 0.5,
                "bias" => (u - 0.5) * 0.125,
                _ => (u - 0.5) * 2.0 * scale,
            }) as f32
        })
        .collect()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/backbones")
        .join(name)
}

/// Writes the formula state dict of `arch` (keys prefixed by `prefix`) to `dir`.
fn write_checkpoint(arch: Arch, dir: &Path, prefix: &str) -> PathBuf {
    let mut file = TensorFile::default();
    for e in arch_state_dict_layout(arch, NUM_CLASSES).unwrap() {
        let values = formula(&e.key, &e.shape, gain(arch));
        file.tensors
            .insert(format!("{prefix}{}", e.key), (e.shape, values));
    }
    let path = dir.join(format!("{arch}.safetensors"));
    file.write(&path).unwrap();
    path
}

fn check(name: &str, prefix: &str) {
    let arch: Arch = name.parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = write_checkpoint(arch, dir.path(), prefix);
    let device = Device::flex();
    let loaded = load_backbone(arch, NUM_CLASSES, &ckpt, &device).unwrap();
    let size = if name == "resnet18-cifar" { 32 } else { 64 };
    compare_with_fixture(name, &loaded.model, size, &device);
}

/// Runs `model` on the formula input (`BATCH x 3 x size x size`) and compares features and
/// logits with the script's `<name>.{features,logits}.npy`.
fn compare_with_fixture(name: &str, model: &Backbone, size: usize, device: &Device) {
    let x: Vec<f32> = uniform("input", BATCH * 3 * size * size)
        .map(|u| ((u - 0.5) * 4.0) as f32)
        .collect();
    let (features, logits) = model.forward(Tensor::<4>::from_data(
        TensorData::new(x.clone(), [BATCH, 3, size, size]),
        device,
    ));
    let features = features.into_data().try_into_vec::<f32>().unwrap();
    let logits = logits.into_data().try_into_vec::<f32>().unwrap();
    let ef = read_f32(&fixture(&format!("{name}.features.npy")));
    let el = read_f32(&fixture(&format!("{name}.logits.npy")));
    assert_eq!(shape_of(&ef), vec![BATCH, model.feature_dim()]);
    let fd = max_abs_diff(&features, ef.as_slice().unwrap());
    let ld = max_abs_diff(&logits, el.as_slice().unwrap());
    println!("{name}: features max abs diff {fd:.3e}, logits {ld:.3e}");
    assert!(fd <= TOL && ld <= TOL, "{name}: features {fd}, logits {ld}");

    // The fused CPU engine (the `cpu` backend's), one image per thread step on 2 threads,
    // against PyTorch and against the burn forward.
    let Some(engine) = model.cpu_net() else {
        return;
    };
    let (cf, cl) = engine.forward(&x, BATCH, size, size, 2, 1);
    for (what, ours, torch, burn) in [
        ("features", &cf, ef.as_slice().unwrap(), &features),
        ("logits", &cl, el.as_slice().unwrap(), &logits),
    ] {
        let (dt, db) = (max_abs_diff(ours, torch), max_abs_diff(ours, burn));
        println!("{name} cpu engine: {what} max abs diff {dt:.3e} (PyTorch), {db:.3e} (burn)");
        assert!(
            dt <= TOL && db <= TOL,
            "{name} cpu engine {what}: {dt} / {db}"
        );
    }
}

#[test]
fn resnet18_matches_torchvision() {
    check("resnet18", "");
}

#[test]
fn resnet34_matches_torchvision() {
    check("resnet34", "");
}

/// Saved like `torch.save({'state_dict': DataParallel(model).state_dict()})`.
#[test]
fn resnet50_matches_torchvision_from_a_nested_data_parallel_state_dict() {
    check("resnet50", "state_dict.module.");
}

#[test]
fn resnet101_matches_torchvision() {
    check("resnet101", "");
}

#[test]
fn resnet152_matches_torchvision() {
    check("resnet152", "");
}

#[test]
fn wide_resnet50_2_matches_torchvision() {
    check("wide_resnet50_2", "");
}

/// OpenOOD's `ResNet18_32x32` with its `shortcut` key names.
#[test]
fn resnet18_cifar_matches_pytorch() {
    let layout = arch_state_dict_layout("resnet18-cifar".parse().unwrap(), 10).unwrap();
    assert!(layout.iter().any(|e| e.key == "layer2.0.shortcut.0.weight"));
    assert!(!layout.iter().any(|e| e.key.contains("downsample")));
    check("resnet18-cifar", "model.");
}

#[test]
fn mobilenet_v2_matches_torchvision() {
    check("mobilenet_v2", "");
}

/// The `<key> <d0,d1,...>` lines of a `*.keys.txt` fixture, sorted.
fn fixture_keys(name: &str) -> Vec<(String, Vec<usize>)> {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    let mut keys: Vec<(String, Vec<usize>)> = text
        .lines()
        .map(|l| {
            let (key, shape) = l.split_once(' ').unwrap();
            let shape = shape.split(',').map(|d| d.parse().unwrap()).collect();
            (key.to_owned(), shape)
        })
        .collect();
    keys.sort();
    keys
}

/// `arch_state_dict_layout(arch, classes)` as sorted `(key, shape)` pairs.
fn our_keys(arch: Arch, classes: usize) -> Vec<(String, Vec<usize>)> {
    let mut keys: Vec<(String, Vec<usize>)> = arch_state_dict_layout(arch, classes)
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.shape))
        .collect();
    keys.sort();
    keys
}

/// Our layout of `mobilenet_v2`, in the checkpoint's names, is torchvision's state dict
/// (the script wrote its keys and shapes).
#[test]
fn mobilenet_v2_layout_is_torchvisions_state_dict() {
    let torchvision = fixture_keys("mobilenet_v2.keys.txt");
    assert_eq!(torchvision.len(), 262);
    assert_eq!(our_keys(Arch::MobileNetV2, NUM_CLASSES), torchvision);
}

/// The full `resnetv2-101x1` expects exactly the 306 arrays (names, TF shapes) that
/// `bit_pytorch`'s `load_from` reads from `BiT-S-R101x1.npz` for 1000 classes.
#[test]
fn resnetv2_101x1_layout_is_bits_npz() {
    let bit = fixture_keys("resnetv2-101x1.keys.txt");
    assert_eq!(bit.len(), 306);
    assert_eq!(our_keys("resnetv2-101x1".parse().unwrap(), 1000), bit);
}

/// A ResNet-50 state dict loaded as a ResNet-18 names the keys (the checkpoint's names).
#[test]
fn a_resnet50_checkpoint_under_resnet18_names_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = write_checkpoint("resnet50".parse().unwrap(), dir.path(), "");
    let err = load_backbone(
        "resnet18".parse().unwrap(),
        NUM_CLASSES,
        &ckpt,
        &Device::flex(),
    )
    .unwrap_err()
    .to_string();
    println!("{err}");
    assert!(err.contains("does not fit resnet18 (10 classes)"), "{err}");
    assert!(
        err.contains("unexpected key(s): layer1.0.bn3.bias"),
        "{err}"
    );
    assert!(err.contains("layer1.0.downsample.0.weight"), "{err}");
    assert!(
        err.contains("layer1.0.conv1.weight (model [64, 64, 3, 3], checkpoint [64, 64, 1, 1])"),
        "{err}"
    );
    assert!(err.contains(&ckpt.display().to_string()), "{err}");
}

/// The missing keys, unexpected keys and shape mismatches of a state-dict mismatch error.
fn mismatch(err: PipelineError) -> (Vec<String>, Vec<String>, Vec<ShapeMismatch>) {
    match err {
        PipelineError::Checkpoint(CheckpointError::StateDictMismatch {
            missing,
            unexpected,
            shape_mismatches,
            ..
        }) => (missing, unexpected, shape_mismatches),
        other => panic!("expected a state-dict mismatch, got {other}"),
    }
}

/// The partial MobileNet-v2 checkpoint the script wrote with `torch.save` (zip, state dict
/// under `model` with DataParallel's `module.`): torchvision's own key names of the stem,
/// blocks 0-1 and classifier all find their place (nothing unexpected) and the rest is
/// named missing, in torchvision's names.
#[test]
fn a_torch_written_mobilenet_v2_pth_maps_torchvisions_names() {
    let pth = fixture("mobilenet_v2.partial.pth");
    let err = load_backbone(Arch::MobileNetV2, NUM_CLASSES, &pth, &Device::flex()).unwrap_err();
    let (missing, unexpected, shape_mismatches) = mismatch(err);
    assert!(unexpected.is_empty(), "{unexpected:?}");
    assert!(shape_mismatches.is_empty(), "{shape_mismatches:?}");
    let present = ["features.0.", "features.1.", "features.2.", "classifier.1."];
    let layout = arch_state_dict_layout(Arch::MobileNetV2, NUM_CLASSES).unwrap();
    let mut expected: Vec<&str> = layout
        .iter()
        .map(|e| e.key.as_str())
        .filter(|k| !present.iter().any(|p| k.starts_with(p)))
        .collect();
    // stem 5 tensors, block 0: 2 convs + 2 BNs, block 1: 3 convs + 3 BNs, classifier 2.
    assert_eq!(layout.len() - expected.len(), 5 + 10 + 15 + 2);
    let mut missing_sorted: Vec<&str> = missing.iter().map(String::as_str).collect();
    missing_sorted.sort();
    expected.sort();
    assert_eq!(missing_sorted, expected);
    assert!(missing.contains(&"features.18.0.weight".to_owned()));
    assert!(missing.contains(&"features.3.conv.1.0.weight".to_owned()));
}

/// A `.pth` cut in half is a parse error naming the file (no panic, no partial model).
#[test]
fn a_truncated_pth_is_an_error_naming_the_file() {
    let bytes = std::fs::read(fixture("mobilenet_v2.partial.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_backbone(Arch::MobileNetV2, NUM_CLASSES, &cut, &Device::flex()).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(
        matches!(
            err,
            PipelineError::Checkpoint(CheckpointError::Parse { .. })
        ),
        "{msg}"
    );
    assert!(msg.contains(&cut.display().to_string()), "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
    // Not a zip at all: no truncation hint.
    let text = dir.path().join("notes.pth");
    std::fs::write(&text, "not a checkpoint").unwrap();
    let msg = load_backbone(Arch::MobileNetV2, NUM_CLASSES, &text, &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("notes.pth") && !msg.contains("truncated"),
        "{msg}"
    );
}

/// The reduced BiT network of the fixture (`resnetv2-14x1`: one unit per block, width 1): the
/// same code as `resnetv2-101x1`, small enough for a debug-build test.
const BIT_SMALL: Arch = Arch::ResNetV2(ResNetV2Spec {
    block_units: [1, 1, 1, 1],
    width_factor: 1,
});

/// The script's `bit_formula(key, shape)` (BiT `.npz` names, TF shapes).
fn bit_formula(key: &str, shape: &[usize]) -> Vec<f32> {
    let n = shape.iter().product();
    let leaf = key.rsplit('/').next().unwrap();
    let fan_in: usize = shape[..shape.len() - 1].iter().product();
    let scale = (3.0 / fan_in as f64).sqrt();
    uniform(key, n)
        .map(|u| {
            (match leaf {
                "gamma" => u * 0.5 + 0.5,
                "beta" | "bias" => (u - 0.5) * 0.125,
                _ => (u - 0.5) * 2.0 * scale,
            }) as f32
        })
        .collect()
}

/// `np.savez_compressed` of `arrays` (deflated `.npy` entries; the script's partial file is
/// `np.savez`, stored).
fn write_npz(path: &Path, arrays: impl IntoIterator<Item = (String, Vec<usize>, Vec<f32>)>) {
    use ndarray_npy::WriteNpyExt;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (key, shape, values) in arrays {
        zip.start_file(format!("{key}.npy"), options).unwrap();
        let a = ndarray::ArrayD::from_shape_vec(shape, values).unwrap();
        a.write_npy(&mut zip).unwrap();
    }
    zip.finish().unwrap();
}

/// BiT's ResNet-v2 (weight-standardised convolutions, GroupNorm, pre-activation) from a
/// `.npz` in BiT's names and TF layouts, against the script's PyTorch port of
/// `bit_pytorch/models.py` (checked there to equal the original bit for bit).
#[test]
fn bit_resnetv2_from_npz_matches_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("BiT-small.npz");
    let layout = arch_state_dict_layout(BIT_SMALL, NUM_CLASSES).unwrap();
    assert!(layout.iter().any(|e| e.key
        == "resnet/block2/unit01/a/proj/standardized_conv2d/kernel"
        && e.shape == [1, 1, 256, 512]));
    write_npz(
        &npz,
        layout.into_iter().map(|e| {
            let v = bit_formula(&e.key, &e.shape);
            (e.key, e.shape, v)
        }),
    );
    let device = Device::flex();
    let loaded = load_backbone(BIT_SMALL, NUM_CLASSES, &npz, &device).unwrap();
    assert_eq!(loaded.info.tensors_loaded, 45);
    assert_eq!(loaded.model.feature_dim(), 2048);
    compare_with_fixture("resnetv2-14x1", &loaded.model, 64, &device);
    let (w, b) = loaded.model.head_weights();
    assert_eq!((w.len(), b.len()), (NUM_CLASSES * 2048, NUM_CLASSES));
}

/// The script's `np.savez` of BiT-named arrays (root kernel, final norm, head bias,
/// block1/unit01's norms): every name is known, the absent arrays are named in BiT's names.
#[test]
fn a_numpy_written_bit_npz_names_the_missing_kernels() {
    let npz = fixture("resnetv2.partial.npz");
    let err = load_backbone(BIT_SMALL, NUM_CLASSES, &npz, &Device::flex()).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    let (missing, unexpected, shape_mismatches) = mismatch(err);
    assert!(
        unexpected.is_empty() && shape_mismatches.is_empty(),
        "{msg}"
    );
    // 45 arrays less root kernel, final norm (2), head bias and block1/unit01's norms (6).
    assert_eq!(missing.len(), 45 - 10, "{missing:?}");
    assert!(
        msg.contains("35 missing key(s): resnet/block1/unit01/a/proj/standardized_conv2d/kernel"),
        "{msg}"
    );
    assert!(missing.contains(&"resnet/head/conv2d/kernel".to_owned()));
    assert!(missing.contains(&"resnet/block4/unit01/c/group_norm/beta".to_owned()));

    // The full-size network names what the reduced file lacks for it.
    let arch: Arch = "resnetv2-101x1".parse().unwrap();
    let msg = load_backbone(arch, NUM_CLASSES, &npz, &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("does not fit resnetv2-101x1 (10 classes)"),
        "{msg}"
    );

    // Cut short: named, with the hint.
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.npz");
    let bytes = std::fs::read(&npz).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_backbone(BIT_SMALL, NUM_CLASSES, &cut, &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("cut.npz") && msg.contains("truncated"),
        "{msg}"
    );

    // A .npz is only BiT's.
    let msg = load_backbone(Arch::MobileNetV2, NUM_CLASSES, &npz, &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("a .npz checkpoint is BiT's format"), "{msg}");
}
