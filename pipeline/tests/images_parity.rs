//! Image loading parity with Pillow + torchvision on the real fixture rows, torchvision
//! `ImageFolder` order on the real sets, tar shard reading, and bad-input errors.
//!
//! Reads `../shared` (data and fixtures); every test that needs it prints one line and
//! returns when it is absent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{Array1, Array4};
use ndarray_npy::read_npy;
use posthoc_pipeline::data::{
    DataError, ImageDecoder, ImageError, ImageFolder, ImageSet, Loader, LoaderOptions, Preprocess,
    TarShards,
};

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// `shared/<rel>` when it exists; otherwise prints the skip line and returns `None`.
fn shared_path(rel: &str) -> Option<PathBuf> {
    let p = shared().join(rel);
    if p.exists() {
        Some(p)
    } else {
        println!("skipping: ../shared/{rel} not found");
        None
    }
}

const FIXTURE: &str = "fixtures/densenet100-cifar10";

fn fixture_sources(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("sources.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn fixture_rows_decode_resize_crop_and_normalise_bit_identically() {
    let (Some(fix), Some(data)) = (shared_path(FIXTURE), shared_path("data")) else {
        return;
    };
    let sources = fixture_sources(&fix);
    assert_eq!(sources.len(), 48);
    let raw: Array4<u8> = read_npy(fix.join("raw_u8.npy")).unwrap();
    let inputs: Array4<f32> = read_npy(fix.join("inputs.npy")).unwrap();
    assert_eq!(raw.shape(), &[48, 32, 32, 3]);
    assert_eq!(inputs.shape(), &[48, 3, 32, 32]);
    let pre = Preprocess::cifar_dice();
    let mut decoder = ImageDecoder::new();
    let mut mismatched = Vec::new();
    for (row, src) in sources.iter().enumerate() {
        let path = data.join(src);
        let bytes = std::fs::read(&path).unwrap();
        let image = decoder.decode_rgb(&bytes, &path).unwrap();
        let cropped = pre.resize_and_crop(image);
        let expected = raw.index_axis(ndarray::Axis(0), row);
        let expected = expected.as_slice().unwrap();
        let diff = cropped
            .pixels()
            .iter()
            .zip(expected)
            .filter(|(a, b)| a != b)
            .count();
        if diff != 0 {
            mismatched.push(format!("row {row} {src}: {diff} values differ"));
        }
        let mut normalised = vec![0f32; pre.output_len()];
        pre.normalize_into(&cropped, &mut normalised);
        let expected = inputs.index_axis(ndarray::Axis(0), row);
        let expected = expected.as_slice().unwrap();
        let bits_differ = normalised
            .iter()
            .zip(expected)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        if bits_differ != 0 {
            mismatched.push(format!(
                "row {row} {src}: {bits_differ} inputs differ in bits"
            ));
        }
    }
    assert!(mismatched.is_empty(), "{mismatched:#?}");
}

#[test]
fn threaded_loader_yields_fixture_inputs_in_order() {
    let (Some(fix), Some(data)) = (shared_path(FIXTURE), shared_path("data")) else {
        return;
    };
    let inputs: Array4<f32> = read_npy(fix.join("inputs.npy")).unwrap();
    let labels: Array1<i64> = read_npy(fix.join("labels.npy")).unwrap();
    // The 48 fixture rows as an image set, to run them through the threaded loader.
    let set = Arc::new(
        ImageFolder::from_files(
            data,
            Vec::new(),
            fixture_sources(&fix),
            labels.iter().map(|&l| l as i32).collect(),
        )
        .unwrap(),
    );
    let options = LoaderOptions {
        batch_size: 5,
        threads: 3,
        prefetch: 2,
        ..LoaderOptions::default()
    };
    let loader = Loader::new(set.clone(), Preprocess::cifar_dice(), &options).unwrap();
    assert_eq!(loader.total(), 48);
    let mut data = Vec::new();
    let mut indices = Vec::new();
    let mut got_labels = Vec::new();
    for batch in loader {
        let batch = batch.unwrap();
        assert_eq!(batch.shape, [batch.len(), 3, 32, 32]);
        assert!(batch.len() == 5 || batch.indices[0] == 45);
        data.extend(batch.data);
        indices.extend(batch.indices);
        got_labels.extend(batch.labels);
    }
    assert_eq!(indices, (0..48).collect::<Vec<u64>>());
    let want_labels: Vec<i32> = labels.iter().map(|&l| l as i32).collect();
    assert_eq!(got_labels, want_labels);
    let expected = inputs.as_slice().unwrap();
    assert_eq!(data.len(), expected.len());
    assert!(
        data.iter()
            .zip(expected)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );

    // limit / shard / resume select contiguous index ranges
    let options = LoaderOptions {
        batch_size: 4,
        limit: Some(40),
        shard: Some((1, 2)),
        resume_from: 25,
        ..LoaderOptions::default()
    };
    let loader = Loader::new(set, Preprocess::cifar_dice(), &options).unwrap();
    let got: Vec<u64> = loader.flat_map(|b| b.unwrap().indices).collect();
    assert_eq!(got, (25..40).collect::<Vec<u64>>());
}

fn relative_paths(set: &dyn ImageSet, n: u64) -> Vec<&str> {
    (0..n.min(set.len())).map(|i| set.path(i)).collect()
}

fn fixture_list(name: &str) -> Option<Vec<String>> {
    let p = shared_path(&format!("fixtures/posthoc-small/{name}"))?;
    Some(
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect(),
    )
}

#[test]
fn image_folder_order_matches_torchvision_on_real_sets() {
    let Some(isun) = shared_path("data/ood/isun") else {
        return;
    };
    let set = ImageFolder::open(&isun).unwrap();
    assert_eq!(set.len(), 8925);
    assert_eq!(set.classes(), &["iSUN_patches".to_string()]);
    assert_eq!(
        relative_paths(&set, 4),
        [
            "iSUN_patches/0.jpeg",
            "iSUN_patches/1.jpeg",
            "iSUN_patches/10.jpeg",
            "iSUN_patches/100.jpeg"
        ]
    );
    // posthoc-small's OOD rows are the first 500 of each set in ImageFolder order.
    for (set_dir, list) in [
        ("data/ood/isun", "ood_isun_files.txt"),
        ("data/ood/tinyimagenet", "ood_tinyimagenet_files.txt"),
        ("data/ood/mnist", "ood_mnist_files.txt"),
    ] {
        let (Some(dir), Some(expected)) = (shared_path(set_dir), fixture_list(list)) else {
            continue;
        };
        let set = ImageFolder::open(dir).unwrap();
        assert_eq!(relative_paths(&set, 500), expected, "{set_dir}");
    }

    let Some(test) = shared_path("data/cifar10/test") else {
        return;
    };
    let set = ImageFolder::open(&test).unwrap();
    assert_eq!(set.len(), 10_000);
    let classes = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ];
    assert_eq!(set.classes(), classes.map(String::from));
    assert_eq!(
        relative_paths(&set, 2),
        ["airplane/0000.jpg", "airplane/0001.jpg"]
    );
    assert_eq!(set.path(9999), "truck/0999.jpg");
    for c in 0..10u64 {
        assert_eq!(set.label(c * 1000), c as i32);
        assert_eq!(set.label(c * 1000 + 999), c as i32);
        assert_eq!(
            set.path(c * 1000),
            format!("{}/0000.jpg", classes[c as usize])
        );
    }
    // posthoc-small's ID-test rows: the first 100 of each class, in ImageFolder order.
    if let Some(expected) = fixture_list("id_test_files.txt") {
        let got: Vec<&str> = (0..10u64)
            .flat_map(|c| (0..100).map(move |k| c * 1000 + k))
            .map(|i| set.path(i))
            .collect();
        assert_eq!(got, expected);
    }
}

#[test]
fn tar_shards_read_cifar10_train_in_member_order() {
    let shards: Vec<PathBuf> = (0..5)
        .map(|i| shared().join(format!("data/cifar10/train-0{i}.tar")))
        .collect();
    if !shards[0].exists() {
        println!("skipping: ../shared/data/cifar10/train-00.tar not found");
        return;
    }
    let set = TarShards::open(&shards).unwrap();
    assert_eq!(set.len(), 50_000);
    assert_eq!(set.classes().len(), 10);
    assert_eq!(set.classes()[0], "airplane");
    assert_eq!(set.classes()[9], "truck");
    assert_eq!(set.path(0), "airplane/0000.jpg");
    assert_eq!(set.path(5000), "automobile/0000.jpg");
    assert_eq!(set.path(49_999), "truck/4999.jpg");
    for c in 0..10u64 {
        assert_eq!(set.label(c * 5000), c as i32);
        assert_eq!(set.label(c * 5000 + 4999), c as i32);
    }
    // posthoc-small's ID-train rows: first 200 members of each class, in member order.
    if let Some(expected) = fixture_list("id_train_files.txt") {
        let got: Vec<&str> = (0..10u64)
            .flat_map(|c| (0..200).map(move |k| c * 5000 + k))
            .map(|i| set.path(i))
            .collect();
        assert_eq!(got, expected);
    }
    // Member bytes come out whole: a decodable 32x32 JPEG, in every shard.
    let mut decoder = ImageDecoder::new();
    for i in [0, 12_345, 49_999] {
        let s = set.sample(i).unwrap();
        assert_eq!(s.index, i);
        let img = decoder.decode_rgb(&s.bytes, &set.full_path(i)).unwrap();
        assert_eq!((img.width(), img.height()), (32, 32));
    }
    // One shard alone: 10,000 members of two classes.
    let one = TarShards::open(&shards[1..2]).unwrap();
    assert_eq!(one.len(), 10_000);
    assert_eq!(one.classes(), &["bird".to_string(), "cat".to_string()]);
    assert_eq!(
        one.sample(7).unwrap().bytes,
        set.sample(10_007).unwrap().bytes
    );
}

/// A tempdir ImageFolder with one good JPEG (from the real data) and a truncated copy.
fn folder_with_truncated_jpeg() -> Option<(tempfile::TempDir, PathBuf)> {
    let good = shared_path("data/cifar10/test/cat/0000.jpg")?;
    let bytes = std::fs::read(good).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cls = dir.path().join("cls");
    std::fs::create_dir(&cls).unwrap();
    std::fs::write(cls.join("a_good.jpg"), &bytes).unwrap();
    let bad = cls.join("b_truncated.jpg");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(cls.join("c_good.jpg"), &bytes).unwrap();
    Some((dir, bad))
}

#[test]
fn truncated_jpeg_is_an_error_naming_it_or_skipped_when_asked() {
    let Some((dir, bad)) = folder_with_truncated_jpeg() else {
        return;
    };
    let set: Arc<dyn ImageSet> = Arc::new(ImageFolder::open(dir.path()).unwrap());
    assert_eq!(set.len(), 3);

    let err = ImageDecoder::new()
        .decode_rgb(&std::fs::read(&bad).unwrap(), &bad)
        .unwrap_err();
    assert!(matches!(err, ImageError::Decode { .. }), "{err}");
    assert!(err.to_string().contains("b_truncated.jpg"), "{err}");

    let options = LoaderOptions {
        batch_size: 2,
        ..LoaderOptions::default()
    };
    let results: Vec<_> = Loader::new(set.clone(), Preprocess::cifar_dice(), &options)
        .unwrap()
        .collect();
    assert_eq!(results.len(), 1, "the loader stops at the first error");
    match &results[0] {
        Err(DataError::Image(ImageError::Decode { path, .. })) => assert_eq!(path, &bad),
        other => panic!(
            "expected a decode error naming {}, got {other:?}",
            bad.display()
        ),
    }

    let options = LoaderOptions {
        skip_bad: true,
        ..options
    };
    let batches: Vec<_> = Loader::new(set, Preprocess::cifar_dice(), &options)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].indices, vec![0]);
    assert_eq!(batches[0].skipped.len(), 1);
    assert_eq!(batches[0].skipped[0].index, 1);
    assert_eq!(batches[0].skipped[0].path, "cls/b_truncated.jpg");
    assert!(batches[0].skipped[0].reason.contains("b_truncated.jpg"));
    assert_eq!(batches[1].indices, vec![2]);
    assert_eq!(batches[0].data, batches[1].data);
}

#[test]
fn missing_folder_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-set");
    let err = ImageFolder::open(&missing).unwrap_err();
    assert!(matches!(err, DataError::Open { .. }), "{err}");
    assert!(err.to_string().contains("no-such-set"), "{err}");
    let err = TarShards::open(&[dir.path().join("missing.tar")]).unwrap_err();
    assert!(err.to_string().contains("missing.tar"), "{err}");
}
