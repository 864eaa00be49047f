//! Training parity with PyTorch: SGD steps of DenseNet-BC-100 (DICE CIFAR-10 checkpoint) on
//! 8 real lossless CIFAR-10 test images, train-mode BatchNorm, no dropout, no augmentation,
//! against `tests/fixtures/um_parity.safetensors` (made by `scripts/um_parity_fixture.py`
//! with PyTorch 2.15): the losses (within 1e-4), the updated tensors (max |diff| <= 1e-4
//! after the first step), every tensor's sum and the norm of every tensor's update.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use posthoc_pipeline::checkpoint::load_densenet;
use posthoc_pipeline::data::{Preprocess, decode_rgb};
use posthoc_pipeline::model::DenseNetConfig;
use posthoc_pipeline::um::net::{densenet_state, scores_key};
use posthoc_pipeline::um::rng::StreamKey;
use posthoc_pipeline::um::tensors::TensorFile;
use posthoc_pipeline::um::train::{TrainSettings, train_step};
use posthoc_pipeline::um::{
    BatchNormMode, CosineSchedule, KeepFraction, NetSpec, Sgd, SgdState, UmLoss, UmNet, Variant,
};
use serde_json::Value;

const TOL: f32 = 1e-4;

type State = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

struct Setup {
    state: State,
    pixels: Vec<f32>,
    labels: Vec<i64>,
    reference: Value,
    fixture: TensorFile,
}

fn setup() -> Option<Setup> {
    let ckpt =
        common::shared_path("data/checkpoints/dice-densenet100/cifar10/checkpoint_100.pth.tar")?;
    let root = common::shared_path("data/cifar10/test-lossless-first1000")?;
    let fixture = TensorFile::read(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/um_parity.safetensors"),
    )
    .unwrap();
    let reference: Value = serde_json::from_str(&fixture.metadata["reference"]).unwrap();
    let loaded =
        load_densenet(&DenseNetConfig::densenet_bc_100(10), &ckpt, &Device::flex()).unwrap();
    let pre = Preprocess::cifar_dice();
    let mut pixels = vec![0.0f32; 8 * 3 * 32 * 32];
    for (i, path) in reference["images"].as_array().unwrap().iter().enumerate() {
        let p = root.join(path.as_str().unwrap());
        let img = decode_rgb(&std::fs::read(&p).unwrap(), &p).unwrap();
        pre.apply_into(img, &mut pixels[i * 3072..(i + 1) * 3072]);
    }
    let labels = reference["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    Some(Setup {
        state: densenet_state(&loaded.model),
        pixels,
        labels,
        reference,
        fixture,
    })
}

fn settings(net: NetSpec, um: f64) -> TrainSettings {
    TrainSettings {
        net,
        loss: UmLoss::new(1.0, um).unwrap(),
        schedule: CosineSchedule::new(0.1, 100, 0).unwrap(),
        sgd: Sgd::new(0.9, 1e-4).unwrap(),
        batch_size: 8,
        seed: 0,
        augment: false,
        checkpoint_every: 0,
    }
}

fn assert_close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, PyTorch {want}"
    );
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Sum, sum of |x|, max |x| of every tensor, and the L2 norm of its change, against
/// PyTorch's.
fn check_stats(case: &str, net: &UmNet, original: &State, reference: &Value) {
    let stats = reference["stats"].as_object().unwrap();
    assert!(!stats.is_empty());
    for (key, want) in stats {
        let e = net
            .entry(key)
            .unwrap_or_else(|| panic!("{case}: no tensor {key}"));
        let v: Vec<f64> = e.values.iter().map(|&x| f64::from(x)).collect();
        let sum: f64 = v.iter().sum();
        let abs: f64 = v.iter().map(|x| x.abs()).sum();
        let want: Vec<f64> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        // Per-element differences up to 5e-4 (see the step-2 note) with random signs.
        let tol = 5e-4 * (v.len() as f64).sqrt() + 1e-5 * abs;
        assert_close(&format!("{case} sum of {key}"), sum, want[0], tol);
        assert_close(&format!("{case} sum |.| of {key}"), abs, want[1], tol);
    }
    for (key, want) in reference["delta_norm"].as_object().unwrap() {
        let e = net.entry(key).unwrap();
        let orig = &original[key].1;
        let norm: f64 = e
            .values
            .iter()
            .zip(orig)
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
            .sum::<f64>()
            .sqrt();
        let want = want.as_f64().unwrap();
        // The update itself agrees to 1% of its size (or 1e-6 for tensors barely moved).
        assert!(
            (norm - want).abs() <= 0.01 * want + 1e-6,
            "{case} |update| of {key}: got {norm}, PyTorch {want}"
        );
    }
}

#[test]
fn um_sgd_steps_match_pytorch() {
    let Some(s) = setup() else { return };
    let spec = NetSpec {
        variant: Variant::Um,
        batch_norm: BatchNormMode::Affine,
        dropout: 0.0,
        keep: KeepFraction::new(1.0).unwrap(),
    };
    let plan = DenseNetConfig::densenet_bc_100(10).plan().unwrap();
    let mut net = UmNet::from_state(&plan, spec, &s.state, 0).unwrap();
    let device = Device::flex().autodiff();
    let mut opt = SgdState::default();
    let steps = s.reference["um"]["steps"].as_array().unwrap();
    for (i, step) in steps.iter().enumerate() {
        let um = step["um"].as_f64().unwrap();
        let r = train_step(
            &mut net,
            &settings(spec, um),
            &mut opt,
            0.1,
            &s.pixels,
            &s.labels,
            StreamKey::new(0),
            &device,
        );
        assert_close(
            &format!("UM {um} loss"),
            r.loss,
            step["loss"].as_f64().unwrap(),
            1e-4,
        );
        assert_close(
            &format!("UM {um} cross-entropy"),
            r.cross_entropy,
            step["cross_entropy"].as_f64().unwrap(),
            1e-4,
        );
        // Step 1 within 1e-4 (measured: 1.2e-5). Step 2 (momentum, reversed gradient)
        // starts from step-1 weights that differ by float32 rounding, and this step is ill
        // conditioned: in PyTorch (float64) a 1e-5 random perturbation of the step-1
        // weights moves the step-2 weights by up to 3.6e-4 (block1.layer.0.bn1.weight),
        // 2.8e-4 (conv1.weight); measured here: 2.2e-4. Step 2 is held to 5e-4.
        let tol = if i == 0 { TOL } else { 5e-4 };
        let mut worst = Vec::new();
        for (name, (_, want)) in s.fixture.with_prefix(&format!("um{}.", i + 1)) {
            let got = &net.entry(&name).unwrap().values;
            worst.push((max_abs_diff(got, &want), name));
        }
        worst.sort_by(|a, b| b.0.total_cmp(&a.0));
        println!("step {}: max |diff| per tensor {worst:?}", i + 1);
        assert!(worst[0].0 <= tol, "step {}: max |diff| {worst:?}", i + 1);
    }
    check_stats("um", &net, &s.state, &s.reference["um"]);
}

#[test]
fn umap_sgd_step_matches_pytorch_and_leaves_the_weights() {
    let Some(mut s) = setup() else { return };
    let keep = s.reference["umap"]["keep"].as_f64().unwrap();
    let spec = NetSpec {
        variant: Variant::Umap,
        batch_norm: BatchNormMode::FrozenAffine,
        dropout: 0.0,
        keep: KeepFraction::new(keep).unwrap(),
    };
    // The fixture's closed-form scores.
    let weights: Vec<(String, Vec<usize>)> = s
        .state
        .iter()
        .filter(|(k, _)| k.ends_with(".weight") && (k.contains("conv") || k.starts_with("fc.")))
        .map(|(k, (shape, _))| (k.clone(), shape.clone()))
        .collect();
    for (k, shape) in weights {
        let n: usize = shape.iter().product();
        let fan_in: usize = shape[1..].iter().product();
        let bound = (1.0 / (fan_in as f64).sqrt()) as f32;
        let scores = (0..n as u64)
            .map(|i| {
                let m =
                    ((i.wrapping_mul(2_654_435_761)) % (1 << 24) + 1) as f32 / (1u32 << 24) as f32;
                let v = m * bound;
                if i % 2 == 0 { v } else { -v }
            })
            .collect();
        s.state.insert(scores_key(&k), (shape, scores));
    }
    let plan = DenseNetConfig::densenet_bc_100(10).plan().unwrap();
    let mut net = UmNet::from_state(&plan, spec, &s.state, 0).unwrap();
    let device = Device::flex().autodiff();
    let mut opt = SgdState::default();
    let step = &s.reference["umap"]["steps"][0];
    let r = train_step(
        &mut net,
        &settings(spec, 0.0),
        &mut opt,
        0.1,
        &s.pixels,
        &s.labels,
        StreamKey::new(0),
        &device,
    );
    assert_close("UMAP loss", r.loss, step["loss"].as_f64().unwrap(), 1e-4);
    for (name, (_, want)) in s.fixture.with_prefix("umap.") {
        let got = &net.entry(&name).unwrap().values;
        let d = max_abs_diff(got, &want);
        assert!(d <= TOL, "{name}: max |diff| {d}");
    }
    check_stats("umap", &net, &s.state, &s.reference["umap"]);
    // Weights and BatchNorm affine parameters did not move; only scores (and running stats).
    assert!(s.reference["umap"]["weights_unchanged"].as_bool().unwrap());
    for (k, (_, v)) in &s.state {
        if k.ends_with(".scores") || k.contains("running_") {
            continue;
        }
        assert_eq!(&net.entry(k).unwrap().values, v, "{k} changed");
    }
    assert_eq!(
        net.trainable_keys().len(),
        net.entries()
            .iter()
            .filter(|e| e.key.ends_with(".scores"))
            .count()
    );
}
