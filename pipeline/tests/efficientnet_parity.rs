//! The real ImageNet-1k EfficientNet-Lite0 (legacy `torch.save` checkpoint, lukemelas key
//! names) against PyTorch (`../shared/fixtures/efficientnet-lite0-imagenet`, README section
//! 5): Pillow-exact `Resize(256)` / `CenterCrop(224)` pixels, the network input, every
//! activation, the features and the logits.

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use ndarray::{Array4, Axis};
use ndarray_npy::read_npy;
use posthoc_pipeline::checkpoint::load_backbone;
use posthoc_pipeline::data::{ImageDecoder, Preprocess};
use posthoc_pipeline::model::{Arch, Backbone};

use common::*;

/// Activations, features and logits (README: float32 differences of order 1e-5 expected).
const TOL: f32 = 1e-4;
/// Network inputs.
const INPUT_TOL: f32 = 1e-6;

fn tf_lite_preprocess() -> Preprocess {
    Preprocess::new(Some(256), 224, [127.0 / 255.0; 3], [128.0 / 255.0; 3]).unwrap()
}

fn values<const D: usize>(t: Tensor<D>) -> (Vec<usize>, Vec<f32>) {
    let data = t.into_data();
    (data.shape().to_vec(), data.try_into_vec::<f32>().unwrap())
}

#[test]
fn efficientnet_lite0_matches_pytorch_on_real_imagenet_images() {
    let (Some(fx), Some(ckpt), Some(imagenet)) = (
        shared_path("fixtures/efficientnet-lite0-imagenet"),
        shared_path("data/checkpoints/efficientnet-lite0/efficientnet-lite0-57934424.pth"),
        shared_path("data/imagenet"),
    ) else {
        return;
    };
    let device = Device::flex();
    let loaded = load_backbone(Arch::EfficientNetLite0, 1000, &ckpt, &device).unwrap();
    assert_eq!(loaded.info.tensors_loaded, 247);
    assert_eq!(loaded.info.ignored_keys.len(), 49);
    assert_eq!(
        loaded.info.sha256,
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    );
    let Backbone::EfficientNetLite(net) = loaded.model else {
        panic!("efficientnet-lite0 loads as EfficientNetLite");
    };

    // Pixels and inputs from our own decode + transform.
    let files: Vec<String> = std::fs::read_to_string(fx.join("files.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(files.len(), 128);
    let pre = tf_lite_preprocess();
    let mut decoder = ImageDecoder::new();
    let mut batch = vec![0f32; files.len() * pre.output_len()];
    let mut cropped = Vec::new();
    for (row, file) in files.iter().enumerate() {
        let path = imagenet.join(file);
        let image = decoder
            .decode_rgb(&std::fs::read(&path).unwrap(), &path)
            .unwrap();
        let image = pre.resize_and_crop(image);
        let out = &mut batch[row * pre.output_len()..(row + 1) * pre.output_len()];
        pre.normalize_into(&image, out);
        cropped.push(image);
    }
    let raw_rows = read_i64(&fx.join("raw_rows.npy"));
    let raw: Array4<u8> = read_npy(fx.join("raw_u8.npy")).unwrap();
    assert_eq!(raw.shape(), &[8, 224, 224, 3]);
    for (i, &row) in raw_rows.iter().enumerate() {
        let expected = raw.index_axis(Axis(0), i);
        let differ = cropped[row as usize]
            .pixels()
            .iter()
            .zip(expected.as_slice().unwrap())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differ, 0,
            "raw_u8 row {row} ({}): {differ} values differ",
            files[row as usize]
        );
    }
    let inputs = read_f32(&fx.join("inputs.npy"));
    assert_eq!(shape_of(&inputs), vec![4, 3, 224, 224]);
    let d = max_abs_diff(&batch[..4 * pre.output_len()], inputs.as_slice().unwrap());
    println!("inputs: max abs diff {d:.3e}");
    assert!(d <= INPUT_TOL, "inputs: max abs diff {d}");

    // Activations of row 0.
    let x0 = Tensor::<4>::from_data(
        TensorData::new(first_rows(&inputs, 1), [1, 3, 224, 224]),
        &device,
    );
    let acts = net.forward_activations(x0);
    assert_eq!(acts.blocks.len(), 16);
    for (name, t) in [
        ("stem", acts.stem),
        ("block00", acts.blocks[0].clone()),
        ("block03", acts.blocks[3].clone()),
        ("block15", acts.blocks[15].clone()),
        ("head", acts.head),
    ] {
        let expected = read_f32(&fx.join(format!("act_{name}.npy")));
        let (shape, got) = values(t);
        assert_eq!(shape, shape_of(&expected), "act_{name} shape");
        let diff = max_abs_diff(&got, expected.as_slice().unwrap());
        println!("act_{name}: max abs diff {diff:.3e}");
        assert!(diff <= TOL, "act_{name}: max abs diff {diff} > {TOL}");
    }

    // Features and logits of all 128 rows from our inputs.
    let n = files.len();
    let (features, logits) = net.forward(Tensor::<4>::from_data(
        TensorData::new(batch.clone(), [n, 3, 224, 224]),
        &device,
    ));
    let (fshape, features) = values(features);
    let (lshape, logits) = values(logits);
    assert_eq!((fshape, lshape), (vec![n, 1280], vec![n, 1000]));
    let fd = max_abs_diff(
        &features,
        read_f32(&fx.join("features.npy")).as_slice().unwrap(),
    );
    let ld = max_abs_diff(
        &logits,
        read_f32(&fx.join("logits.npy")).as_slice().unwrap(),
    );
    println!("features: max abs diff {fd:.3e}; logits: max abs diff {ld:.3e}");
    assert!(fd <= TOL, "features: max abs diff {fd}");
    assert!(ld <= TOL, "logits: max abs diff {ld}");

    // The fused CPU engine (the `cpu` backend's) on the first 16 rows (val, 2 threads, one
    // image per step) against PyTorch and the burn forward.
    let rows = 16;
    let engine = net.cpu_net();
    let (cf, cl) = engine.forward(&batch[..rows * pre.output_len()], rows, 224, 224, 2, 1);
    let (tf, tl) = (
        read_f32(&fx.join("features.npy")),
        read_f32(&fx.join("logits.npy")),
    );
    for (what, ours, torch, burn) in [
        (
            "features",
            &cf,
            &tf.as_slice().unwrap()[..rows * 1280],
            &features[..rows * 1280],
        ),
        (
            "logits",
            &cl,
            &tl.as_slice().unwrap()[..rows * 1000],
            &logits[..rows * 1000],
        ),
    ] {
        let (dt, db) = (max_abs_diff(ours, torch), max_abs_diff(ours, burn));
        println!("cpu engine {what}: max abs diff {dt:.3e} (PyTorch), {db:.3e} (burn)");
        assert!(dt <= TOL && db <= TOL, "cpu engine {what}: {dt} / {db}");
    }

    // Top-1 of the 64 val rows: 78.1 % in PyTorch (50 of 64).
    let labels = read_i64(&fx.join("labels.npy"));
    let top1 = argmax_rows(&logits[..64 * 1000], 1000)
        .iter()
        .zip(labels.iter())
        .filter(|(p, l)| **p as i64 == **l)
        .count();
    assert_eq!(top1, 50, "top-1 of the 64 val rows");
}
