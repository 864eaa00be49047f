//! The Slurm template on a real single-node Slurm cluster (`scripts/slurm-local.sh`:
//! Debian's slurmctld, slurmd and munge, started by this test): `deploy/slurm/submit.sh`
//! submits `precompute.sbatch` as a 2-task array over a small config (the real DenseNet
//! checkpoint and images of `../shared/data`, `--limit`), then `merge.sbatch` with
//! `--dependency=afterok`; the merged cache must equal a single-process run byte for byte
//! in every data file, and in its manifest but for the provenance.
//!
//! Also: the Kubernetes manifest parses and its Indexed Job, shard count and merge Job
//! agree (a dry parse with PyYAML from the moto venv).
//!
//! Skips with a message when not root, when Slurm is not installed (`.ci/run` installs
//! it), when the cluster does not come up, or without `../shared/data`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{
    BIN, CIFAR10_CHECKPOINT, assert_succeeded, densenet_cifar_config, moto_python, repo,
    shared_data,
};

fn slurm_script(action: &str) -> Output {
    Command::new(repo().join("scripts/slurm-local.sh"))
        .arg(action)
        .output()
        .expect("run scripts/slurm-local.sh")
}

/// Stops the cluster when the test ends, however it ends.
struct Cluster;

impl Cluster {
    fn up() -> Option<Cluster> {
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if !is_root {
            println!("skipping: a local Slurm cluster needs root");
            return None;
        }
        let out = slurm_script("up");
        if !out.status.success() {
            println!(
                "skipping: the local Slurm cluster did not start: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Cluster)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = slurm_script("down");
    }
}

fn write_config(dir: &Path, data: &Path) -> PathBuf {
    let d = |p: &str| data.join(p).to_str().unwrap().to_owned();
    let text = densenet_cifar_config(
        &data.join(CIFAR10_CHECKPOINT),
        &format!(
            "[data]\nid_train = {{ tar = [{:?}] }}\nid_test = {{ folder = {:?} }}\n\n[data.ood]\nmnist = {{ folder = {:?} }}\n",
            d("cifar10/train-00.tar"),
            d("cifar10/test"),
            d("ood/mnist"),
        ),
    );
    let path = dir.join("experiment.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const RUN_ARGS: &str = "--limit 48 --commit-every 16 --backend cpu";

#[test]
fn slurm_array_then_dependent_merge_equals_a_single_run() {
    let Some(data) = shared_data() else { return };
    let Some(_cluster) = Cluster::up() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &data);
    let shards = dir.path().join("shards");
    let started = Instant::now();
    let submitted = Command::new(repo().join("deploy/slurm/submit.sh"))
        .arg("2")
        .current_dir(dir.path())
        .env("POSTHOC_CONFIG", &config)
        .env("POSTHOC_OUT", &shards)
        .env("POSTHOC_BIN", BIN)
        .env("POSTHOC_ARGS", RUN_ARGS)
        .env("POSTHOC_SLURM_GPU", "")
        // The templates ask for 4 (array) and 2 (merge) CPUs per task; a CI node may have
        // fewer, and Slurm then keeps the jobs pending (reason PartitionConfig) forever.
        .env("POSTHOC_SLURM_ARGS", "--cpus-per-task=1")
        .env("POSTHOC_LOG", "warn")
        .output()
        .unwrap();
    assert_succeeded(&submitted, "submit.sh");
    let ids = String::from_utf8(submitted.stdout).unwrap();
    println!("submitted: {}", ids.trim());
    // Meanwhile, the same run in one process.
    let single = dir.path().join("single");
    let out = Command::new(BIN)
        .args(["precompute", "--config", config.to_str().unwrap()])
        .args(["--out", single.to_str().unwrap()])
        .args(RUN_ARGS.split(' '))
        .env("POSTHOC_LOG", "warn")
        .output()
        .unwrap();
    assert_succeeded(&out, "single-process precompute");

    let merged = shards.join("merged");
    while !merged.join(posthoc_cache::MANIFEST_FILE).exists() {
        let queue = Command::new("timeout")
            .args(["5", "squeue", "-h", "-o", "%i %j %T %r"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if queue.trim().is_empty() && started.elapsed() > Duration::from_secs(5) {
            // Nothing left to run: give the merge a moment to land, then fail with the logs.
            std::thread::sleep(Duration::from_secs(1));
            if merged.join(posthoc_cache::MANIFEST_FILE).exists() {
                break;
            }
            let logs: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| {
                    let p = e.unwrap().path();
                    p.extension().is_some_and(|x| x == "out").then(|| {
                        format!("{}:\n{}", p.display(), std::fs::read_to_string(&p).unwrap())
                    })
                })
                .collect();
            panic!(
                "the jobs ended without a merged cache:\n{}",
                logs.join("\n")
            );
        }
        // A job the node can never run stays pending with one of these reasons.
        for never in ["PartitionConfig", "BadConstraints", "ReqNodeNotAvail"] {
            assert!(
                !queue.contains(never),
                "a Slurm job cannot be scheduled on this node ({never}); queue:\n{queue}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the Slurm jobs did not finish in 10 minutes; queue:\n{queue}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "array + merge took {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let (a, b) = (
        posthoc_cache::Manifest::read(&single).unwrap(),
        posthoc_cache::Manifest::read(&merged).unwrap(),
    );
    assert_eq!(
        a.files, b.files,
        "file lists (names, rows, bytes, sha256) differ"
    );
    for f in &a.files {
        assert_eq!(
            std::fs::read(single.join(&f.name)).unwrap(),
            std::fs::read(merged.join(&f.name)).unwrap(),
            "{} differs",
            f.name
        );
    }
    assert_eq!(
        (&a.model, &a.preprocessing, &a.skipped),
        (&b.model, &b.preprocessing, &b.skipped)
    );
    // The merged provenance names both shards.
    let from = b.provenance["merged_from"].as_array().unwrap();
    let mut shard_ids: Vec<u64> = from
        .iter()
        .map(|f| f["provenance"]["shard"]["index"].as_u64().unwrap())
        .collect();
    shard_ids.sort_unstable();
    assert_eq!(shard_ids, [0, 1]);
    posthoc_cache::verify(&merged)
        .unwrap()
        .into_result()
        .unwrap();
}

#[test]
fn the_kubernetes_manifest_parses_and_its_jobs_agree() {
    let Some(python) = moto_python() else {
        return;
    };
    // Load every document and print the facts the test checks as JSON.
    let script = r#"
import json, sys, yaml
docs = list(yaml.safe_load_all(open(sys.argv[1])))
out = []
for d in docs:
    spec = d["spec"]
    c = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    out.append({"kind": d["kind"], "api": d["apiVersion"], "name": d["metadata"]["name"],
                "mode": spec.get("completionMode"), "completions": spec.get("completions"),
                "parallelism": spec.get("parallelism"), "restart": spec["template"]["spec"]["restartPolicy"],
                "args": " ".join(c.get("command", []) + c.get("args", [])), "env": env,
                "gpu": c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")})
print(json.dumps(out))
"#;
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(repo().join("deploy/k8s/precompute-job.yaml"))
        .output()
        .unwrap();
    assert_succeeded(&out, "parsing the k8s manifest");
    let docs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let docs = docs.as_array().unwrap();
    assert_eq!(docs.len(), 2);
    let (job, merge) = (&docs[0], &docs[1]);
    for d in docs {
        assert_eq!(d["kind"], "Job");
        assert_eq!(d["api"], "batch/v1");
        assert_eq!(d["restart"], "Never");
    }
    assert_eq!(job["mode"], "Indexed");
    let n = job["completions"].as_u64().unwrap();
    assert_eq!(job["parallelism"].as_u64(), Some(n));
    assert_eq!(job["gpu"].as_u64(), Some(1));
    let args = job["args"].as_str().unwrap();
    assert!(args.contains("--shard auto"), "{args}");
    assert!(args.contains(&format!("--shards {n}")), "{args}");
    assert!(args.contains("shard-$JOB_COMPLETION_INDEX"), "{args}");
    assert_eq!(
        merge["env"]["POSTHOC_SHARDS"].as_str(),
        Some(n.to_string().as_str())
    );
    assert_eq!(merge["env"]["POSTHOC_OUT"], job["env"]["POSTHOC_OUT"]);
    let margs = merge["args"].as_str().unwrap();
    assert!(margs.contains("posthoc cache merge"), "{margs}");
    // The precompute command parses: the flags it uses exist.
    let help = Command::new(BIN)
        .args(["precompute", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--shard",
        "--shards",
        "--backend",
        "--wait-lock",
        "--out",
        "--config",
    ] {
        assert!(help.contains(flag), "precompute --help lacks {flag}");
    }
}
