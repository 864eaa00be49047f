//! Forward throughput of a backbone (images per second).
//!
//! `cargo run --release -p posthoc-pipeline --example forward_speed -- [--arch densenet-bc]
//!  [--batches 64,128] [--repeat 4] [--path cpu|burn] [--threads 0] [--group 1]
//!  [--checkpoint FILE] [--size 224] [--layers]`
//!
//! `--arch densenet-bc` (the default) runs DenseNet-BC-100 on the DICE CIFAR-10 checkpoint
//! at 32 x 32; any other registered arch (`resnet50`, `mobilenet_v2`,
//! `efficientnet-lite0`, ...) runs 1000-class weights from `--checkpoint` when given, else
//! burn's seeded random initialisation (the cost of a dense float32 forward does not depend
//! on the weights), at `--size` x `--size` (224).
//!
//! `cpu`: the fused CPU engine (what `FeatureExtractor` uses by default: `CpuDenseNet`, or
//! `CpuNet` for the other families) on `--threads` threads (0: all cores) in groups of
//! `--group` images per thread step; `burn`: the burn module's forward on the flex device.
//! `--layers` prints the engine's time per operation kind (one thread, one image at a time).

use std::path::Path;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use posthoc_pipeline::checkpoint::{load_backbone, load_densenet};
use posthoc_pipeline::model::{Arch, Backbone, CpuDenseNet, DenseNetConfig};

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
    let arch: Arch = arg("--arch")
        .unwrap_or_else(|| "densenet-bc".into())
        .parse()
        .unwrap_or_else(|e| panic!("--arch: {e}"));

    let device = Device::flex();
    let (model, size) = if arch == Arch::DenseNetBc {
        let ckpt = arg("--checkpoint").unwrap_or_else(|| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/data/checkpoints/dice-densenet100/cifar10/checkpoint_100.pth.tar"
            )
            .into()
        });
        let loaded = load_densenet(
            &DenseNetConfig::densenet_bc_100(10),
            Path::new(&ckpt),
            &device,
        )
        .expect("checkpoint");
        let engine = CpuDenseNet::from_model(&loaded.model, &loaded.plan);
        (
            Model::DenseNet(Box::new(engine), Backbone::DenseNet(Box::new(loaded.model))),
            32,
        )
    } else {
        let model = match arg("--checkpoint") {
            Some(ckpt) => {
                load_backbone(arch, 1000, Path::new(&ckpt), &device)
                    .expect("checkpoint")
                    .model
            }
            None => arch.init(1000, &device).expect("arch"),
        };
        let size = arg("--size").map_or(224, |s| s.parse().expect("--size"));
        let engine = (path == "cpu").then(|| {
            model
                .cpu_net()
                .unwrap_or_else(|| panic!("{arch} has no CPU engine; use --path burn"))
        });
        (Model::Other(engine, model), size)
    };

    if args.iter().any(|a| a == "--layers") {
        let Model::Other(Some(engine), _) = &model else {
            panic!("--layers: the CpuNet engine only (--path cpu, not densenet-bc)");
        };
        let input = inputs(1, size);
        engine.forward(&input, 1, size, size, 1, 1); // warm-up
        let profile = engine.profile(&input, size, size, repeat.max(1));
        println!("{arch}: time per operation kind, one image, one thread (best of {repeat})");
        let total: f64 = profile.iter().map(|p| p.1).sum();
        for (kind, secs, count) in &profile {
            println!(
                "  {kind:<28} {count:>3} ops  {:>8.2} ms  {:>5.1} %",
                secs * 1e3,
                100.0 * secs / total
            );
        }
        println!("  total {:.2} ms/img", total * 1e3);
        return;
    }

    for &n in &batches {
        let input = inputs(n, size);
        let run = |input: &[f32]| match (&model, path.as_str()) {
            (Model::DenseNet(engine, _), "cpu") => {
                let (f, l) = engine.forward(input, n, size, size, threads, group);
                (f.len(), l.len())
            }
            (Model::Other(Some(engine), _), "cpu") => {
                let (f, l) = engine.forward(input, n, size, size, threads, group);
                (f.len(), l.len())
            }
            (Model::DenseNet(_, m) | Model::Other(_, m), "burn") => {
                let x = Tensor::<4>::from_data(
                    TensorData::new(input.to_vec(), [n, 3, size, size]),
                    &device,
                );
                let (f, l) = m.forward(x);
                let f = f.into_data();
                let l = l.into_data();
                (f.num_elements(), l.num_elements())
            }
            (_, other) => panic!("unknown --path {other}"),
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
            "cpu" => format!("{arch} cpu engine, {threads} threads, group {group}"),
            _ => format!("{arch} burn flex"),
        };
        println!(
            "{how}, batch {n}: best {:.1} img/s, median {:.1} img/s ({repeat} batches)",
            n as f64 / times[0],
            n as f64 / times[times.len() / 2],
        );
    }
}

/// The engine (if `--path cpu`) and the burn module.
enum Model {
    DenseNet(Box<CpuDenseNet>, Backbone),
    Other(Option<posthoc_pipeline::model::CpuNet>, Backbone),
}

/// Deterministic pseudo-random normalised inputs `n x 3 x size x size` in [-2, 2).
fn inputs(n: usize, size: usize) -> Vec<f32> {
    let mut state = 0x9e3779b97f4a7c15u64;
    (0..n * 3 * size * size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}
