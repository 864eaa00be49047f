//! Forward throughput of DenseNet-BC-100 on the CIFAR-10 checkpoint (images per second).
//!
//! `cargo run --release -p posthoc-pipeline --example forward_speed -- [--batches 64,128]
//!  [--repeat 4] [--path cpu|burn] [--threads 0] [--group 1]`
//!
//! `cpu`: the fused CPU engine (`CpuDenseNet`, what `FeatureExtractor` uses by default) on
//! `--threads` threads (0: all cores) in groups of `--group` images per thread step;
//! `burn`: `DenseNet::forward` with burn tensor operations on the flex device.

use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use posthoc_pipeline::checkpoint::load_densenet;
use posthoc_pipeline::model::{CpuDenseNet, DenseNetConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let batches: Vec<usize> = arg("--batches")
        .unwrap_or_else(|| "64,128".into())
        .split(',')
        .map(|s| s.parse().expect("--batches: comma-separated sizes"))
        .collect();
    let repeat: usize = arg("--repeat").map_or(4, |s| s.parse().expect("--repeat"));
    let path = arg("--path").unwrap_or_else(|| "cpu".into());
    let threads: usize = arg("--threads").map_or(0, |s| s.parse().expect("--threads"));
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    let group: usize = arg("--group").map_or(1, |s| s.parse().expect("--group"));
    let ckpt = arg("--checkpoint").unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/checkpoints/dice-densenet100/cifar10/checkpoint_100.pth.tar"
        )
        .into()
    });

    let device = Device::flex();
    let loaded = load_densenet(
        &DenseNetConfig::densenet_bc_100(10),
        std::path::Path::new(&ckpt),
        &device,
    )
    .expect("checkpoint");
    let engine = CpuDenseNet::from_model(&loaded.model, &loaded.plan);
    let model = loaded.model;

    for &n in &batches {
        // Deterministic pseudo-random normalised inputs.
        let mut state = 0x9e3779b97f4a7c15u64;
        let input: Vec<f32> = (0..n * 3 * 32 * 32)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect();
        let run = |input: &[f32]| match path.as_str() {
            "cpu" => {
                let (f, l) = engine.forward(input, n, 32, 32, threads, group);
                (f.len(), l.len())
            }
            "burn" => {
                let x = Tensor::<4>::from_data(
                    TensorData::new(input.to_vec(), [n, 3, 32, 32]),
                    &device,
                );
                let (f, l) = model.forward(x);
                let f = f.into_data();
                let l = l.into_data();
                (f.num_elements(), l.num_elements())
            }
            other => panic!("unknown --path {other}"),
        };
        run(&input); // warm-up
        // Per-batch times; the best one is the least disturbed by other processes.
        let mut times: Vec<f64> = (0..repeat)
            .map(|_| {
                let start = Instant::now();
                run(&input);
                start.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let how = match path.as_str() {
            "cpu" => format!("cpu engine, {threads} threads, group {group}"),
            _ => "burn flex".to_string(),
        };
        println!(
            "{how}, batch {n}: best {:.1} img/s, median {:.1} img/s ({repeat} batches)",
            n as f64 / times[0],
            n as f64 / times[times.len() / 2],
        );
    }
}
