//! The real DICE CIFAR-10 DenseNet-BC-100 against PyTorch's outputs
//! (`../shared/fixtures/densenet100-cifar10`, tolerances of its README section 1).

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use posthoc_pipeline::checkpoint::load_densenet;
use posthoc_pipeline::model::DenseNetConfig;

use common::*;

const ACT_TOL: f32 = 1e-4;
const FEATURE_TOL: f32 = 1e-4;
const LOGIT_TOL: f32 = 5e-4;

fn tensor4(data: Vec<f32>, shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn values<const D: usize>(t: Tensor<D>) -> (Vec<usize>, Vec<f32>) {
    let data = t.into_data();
    (data.shape().to_vec(), data.try_into_vec::<f32>().unwrap())
}

#[test]
fn every_stage_matches_pytorch_on_the_cifar10_checkpoint() {
    let Some((fx, ckpt)) = parity_fixture() else {
        return;
    };
    let device = Device::flex();
    let loaded = load_densenet(&DenseNetConfig::densenet_bc_100(10), &ckpt, &device).unwrap();
    assert_eq!(loaded.info.tensors_loaded, 497);
    assert_eq!(loaded.info.ignored_keys.len(), 99);
    assert_eq!(
        loaded.info.sha256,
        "deaefd082911a1c6c92aacdcfecf03c71b932acc5c08b779c85c44eccdc0c817"
    );
    let model = loaded.model;

    let inputs = read_f32(&fx.join("inputs.npy"));
    assert_eq!(shape_of(&inputs), vec![48, 3, 32, 32]);
    let acts = model.forward_activations(tensor4(first_rows(&inputs, 2), [2, 3, 32, 32], &device));
    for (name, t) in [
        ("conv1", acts.conv1),
        ("block1", acts.block1),
        ("trans1", acts.trans1),
        ("block2", acts.block2),
        ("trans2", acts.trans2),
        ("block3", acts.block3),
        ("bn_relu", acts.bn_relu),
    ] {
        let expected = read_f32(&fx.join(format!("act_{name}.npy")));
        let (shape, got) = values(t);
        assert_eq!(shape, shape_of(&expected), "act_{name} shape");
        let diff = max_abs_diff(&got, expected.as_slice().unwrap());
        println!("act_{name}: max abs diff {diff:.3e}");
        assert!(
            diff <= ACT_TOL,
            "act_{name}: max abs diff {diff} > {ACT_TOL}"
        );
    }

    let n = 48;
    let (features, logits) = model.forward(tensor4(
        inputs.as_slice().unwrap().to_vec(),
        [n, 3, 32, 32],
        &device,
    ));
    let (fshape, features) = values(features);
    let (lshape, logits) = values(logits);
    assert_eq!(fshape, vec![n, 342]);
    assert_eq!(lshape, vec![n, 10]);
    let ef = read_f32(&fx.join("features.npy"));
    let el = read_f32(&fx.join("logits.npy"));
    let fd = max_abs_diff(&features, ef.as_slice().unwrap());
    let ld = max_abs_diff(&logits, el.as_slice().unwrap());
    println!("features: max abs diff {fd:.3e}; logits: max abs diff {ld:.3e}");
    assert!(fd <= FEATURE_TOL, "features: max abs diff {fd}");
    assert!(ld <= LOGIT_TOL, "logits: max abs diff {ld}");

    let labels = read_i64(&fx.join("labels.npy"));
    let predicted = argmax_rows(&logits, 10);
    let mut checked = 0;
    for (row, &label) in labels.iter().enumerate() {
        if label >= 0 {
            assert_eq!(predicted[row] as i64, label, "row {row}");
            checked += 1;
        }
    }
    assert_eq!(checked, 24);

    // The head equals the checkpoint's fc (burn stores the weight transposed, [m, C]).
    let (wshape, w) = values(model.fc.weight.val());
    assert_eq!(wshape, vec![342, 10]);
    let w_t: Vec<f32> = (0..10)
        .flat_map(|c| (0..342).map(move |i| (c, i)))
        .map(|(c, i)| w[i * 10 + c])
        .collect();
    assert_eq!(w_t, read_f32(&fx.join("fc_weight.npy")).as_slice().unwrap());
    let (_, b) = values(model.fc.bias.as_ref().unwrap().val());
    assert_eq!(b, read_f32(&fx.join("fc_bias.npy")).as_slice().unwrap());
}
