//! Pillow-exact `Resize` with both filters (`bilinear`, `bicubic`): seeded formula images
//! against Pillow's output bytes, and real ImageNet-style images (upscaled val images, a
//! name with an apostrophe, a greyscale source) against the sha256 of torchvision's
//! `Resize(256, interpolation)` + `CenterCrop(224)`. Fixture: `scripts/pil_resize_fixture.py`.

mod common;

use posthoc_pipeline::data::{ImageDecoder, Interpolation, Preprocess, RgbImage, resize};
use sha2::{Digest, Sha256};

fn fixture() -> serde_json::Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pil_resize.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn filter(name: &str) -> Interpolation {
    serde_json::from_value(serde_json::Value::String(name.into())).unwrap()
}

fn formula_image(w: usize, h: usize) -> RgbImage {
    let mut px = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                px.push(((x * 31 + y * 17 + c * 101 + x * y * 7) % 256) as u8);
            }
        }
    }
    RgbImage::new(w, h, px).unwrap()
}

#[test]
fn formula_images_resize_like_pillow_with_both_filters() {
    let fx = fixture();
    let cases = fx["formula"].as_array().unwrap();
    assert_eq!(cases.len(), 24);
    let mut wrong = Vec::new();
    for case in cases {
        let n = |k: &str| case[k].as_u64().unwrap() as usize;
        let f = case["filter"].as_str().unwrap();
        let src = formula_image(n("width"), n("height"));
        let out = resize(&src, n("new_width"), n("new_height"), filter(f));
        let want = case["pixels_hex"].as_str().unwrap();
        let got: String = out.pixels().iter().map(|b| format!("{b:02x}")).collect();
        if got != want {
            wrong.push(format!(
                "{f} {}x{} -> {}x{}",
                n("width"),
                n("height"),
                n("new_width"),
                n("new_height")
            ));
        }
    }
    assert!(wrong.is_empty(), "differ from Pillow: {wrong:?}");
}

#[test]
fn real_images_resize_and_crop_like_torchvision_with_both_filters() {
    let Some(root) = common::shared_path("data/imagenet") else {
        return;
    };
    let fx = fixture();
    let mut decoder = ImageDecoder::new();
    let mut wrong = Vec::new();
    for case in fx["imagenet"].as_array().unwrap() {
        let rel = case["path"].as_str().unwrap();
        let f = case["filter"].as_str().unwrap();
        let pre = Preprocess::new(Some(256), 224, [0.0; 3], [1.0; 3])
            .unwrap()
            .with_interpolation(filter(f));
        let path = root.join(rel);
        let image = decoder
            .decode_rgb(&std::fs::read(&path).unwrap(), &path)
            .unwrap();
        let out = pre.resize_and_crop(image);
        let got = hex::encode(Sha256::digest(out.pixels()));
        if got != case["sha256"].as_str().unwrap() {
            wrong.push(format!("{f} {rel}"));
        }
    }
    assert!(wrong.is_empty(), "differ from torchvision: {wrong:?}");
}
