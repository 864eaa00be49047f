//! `FeatureExtractor` (fused CPU engine and burn path) against PyTorch's features and logits.

mod common;

use burn::tensor::Device;
use posthoc_pipeline::PipelineError;
use posthoc_pipeline::checkpoint::load_densenet;
use posthoc_pipeline::extractor::{ExtractorBackend, FeatureExtractor};
use posthoc_pipeline::model::{CpuDenseNet, DenseNetConfig};

use common::*;

const FEATURE_TOL: f32 = 1e-4;
const LOGIT_TOL: f32 = 5e-4;

fn check(extractor: &FeatureExtractor, what: &str) {
    let (fx, _) = parity_fixture().unwrap();
    let inputs = read_f32(&fx.join("inputs.npy"));
    let out = extractor.extract(inputs.as_slice().unwrap(), 48).unwrap();
    let fd = max_abs_diff(
        &out.features,
        read_f32(&fx.join("features.npy")).as_slice().unwrap(),
    );
    let ld = max_abs_diff(
        &out.logits,
        read_f32(&fx.join("logits.npy")).as_slice().unwrap(),
    );
    println!("{what}: features max abs diff {fd:.3e}, logits {ld:.3e}");
    assert!(fd <= FEATURE_TOL, "{what}: features {fd}");
    assert!(ld <= LOGIT_TOL, "{what}: logits {ld}");

    let labels = read_i64(&fx.join("labels.npy"));
    let predicted = argmax_rows(&out.logits, 10);
    for (row, &label) in labels.iter().enumerate().filter(|(_, l)| **l >= 0) {
        assert_eq!(predicted[row] as i64, label, "{what}: row {row}");
    }
    let (w, b) = extractor.head();
    assert_eq!(w, read_f32(&fx.join("fc_weight.npy")).as_slice().unwrap());
    assert_eq!(b, read_f32(&fx.join("fc_bias.npy")).as_slice().unwrap());
}

/// 5 threads split the 48 rows unevenly (10, 10, 10, 10, 8), with partial image groups.
#[test]
fn cpu_engine_matches_pytorch() {
    let Some((_, ckpt)) = parity_fixture() else {
        return;
    };
    let config = DenseNetConfig::densenet_bc_100(10);
    let e = FeatureExtractor::new(&config, &ckpt, ExtractorBackend::Cpu { threads: 5 }).unwrap();
    assert_eq!((e.feature_dim(), e.num_classes()), (342, 10));
    assert_eq!(
        e.checkpoint().sha256,
        "deaefd082911a1c6c92aacdcfecf03c71b932acc5c08b779c85c44eccdc0c817"
    );
    check(&e, "cpu engine, 5 threads");
}

#[test]
fn burn_backend_matches_pytorch() {
    let Some((_, ckpt)) = parity_fixture() else {
        return;
    };
    let config = DenseNetConfig::densenet_bc_100(10);
    let e = FeatureExtractor::new(&config, &ckpt, ExtractorBackend::Burn(Device::flex())).unwrap();
    check(&e, "burn flex");
}

/// Row results do not depend on the batch they are computed in.
#[test]
fn a_row_gives_the_same_result_alone_and_in_a_batch() {
    let Some((fx, ckpt)) = parity_fixture() else {
        return;
    };
    let e = FeatureExtractor::new(
        &DenseNetConfig::densenet_bc_100(10),
        &ckpt,
        ExtractorBackend::Cpu { threads: 2 },
    )
    .unwrap();
    let inputs = read_f32(&fx.join("inputs.npy"));
    let all = e.extract(inputs.as_slice().unwrap(), 48).unwrap();
    let row = 45;
    let one = e
        .extract(&inputs.as_slice().unwrap()[row * 3072..(row + 1) * 3072], 1)
        .unwrap();
    assert_eq!(one.features, all.features[row * 342..(row + 1) * 342]);
    assert_eq!(one.logits, all.logits[row * 10..(row + 1) * 10]);
    let none = e.extract(&[], 0).unwrap();
    assert!(none.features.is_empty() && none.logits.is_empty());
}

#[test]
fn a_wrongly_sized_batch_is_rejected() {
    let Some((_, ckpt)) = parity_fixture() else {
        return;
    };
    let e = FeatureExtractor::new(
        &DenseNetConfig::densenet_bc_100(10),
        &ckpt,
        ExtractorBackend::default(),
    )
    .unwrap();
    let err = e.extract(&[0.0; 3072], 2).unwrap_err();
    assert!(matches!(
        err,
        PipelineError::InputShape {
            found: 3072,
            expected: 6144,
            ..
        }
    ));
    assert!(err.to_string().contains("6144"), "{err}");
}

/// The engine's multi-image layout (several images per thread step, partial last group).
#[test]
fn cpu_engine_groups_of_images_match_pytorch() {
    let Some((fx, ckpt)) = parity_fixture() else {
        return;
    };
    let loaded =
        load_densenet(&DenseNetConfig::densenet_bc_100(10), &ckpt, &Device::flex()).unwrap();
    let engine = CpuDenseNet::from_model(&loaded.model, &loaded.plan);
    let rows = 12;
    let inputs = read_f32(&fx.join("inputs.npy"));
    let (features, logits) = engine.forward(&first_rows(&inputs, rows), rows, 32, 32, 2, 5);
    let fd = max_abs_diff(
        &features,
        &first_rows(&read_f32(&fx.join("features.npy")), rows),
    );
    let ld = max_abs_diff(
        &logits,
        &first_rows(&read_f32(&fx.join("logits.npy")), rows),
    );
    println!("cpu engine, groups of 5: features max abs diff {fd:.3e}, logits {ld:.3e}");
    assert!(fd <= FEATURE_TOL && ld <= LOGIT_TOL, "{fd} {ld}");
}
