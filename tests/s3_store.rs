//! Caches on a real S3 server (moto's, started on 127.0.0.1 by `scripts/s3-test-server.py`
//! with request signing enforced), through the binary: `cache copy` (resumable, verified),
//! `cache verify` and `cache info` of an `s3://` URL, `eval --cache s3://...` equal to the
//! local eval, an altered object rejected naming it, a copy killed midway leaving nothing a
//! reader accepts (and a re-run completing), a missing bucket and bad credentials in one
//! line, and the lock object (a live holder named, a stale one broken only with
//! `--break-lock`).
//!
//! The server runs in the venv that `.ci/run` makes (`../posthoc-venv-moto`, or
//! `$POSTHOC_MOTO_PYTHON`); without it, or without `../shared/fixtures/posthoc-small`,
//! each test says it skips.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, assert_succeeded, import_npy, moto_python, posthoc_small, repo, the_error_line};

const BUCKET: &str = "posthoc-test";

/// A running moto S3 server with one bucket and a signing key; stopped on drop.
struct S3 {
    child: Child,
    stdin: Option<ChildStdin>,
    python: PathBuf,
    endpoint: String,
    key: String,
    secret: String,
}

impl S3 {
    fn start() -> Option<S3> {
        let python = moto_python()?;
        let mut child = Command::new(&python)
            .arg(repo().join("scripts/s3-test-server.py"))
            .arg(BUCKET)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let stdout = child.stdout.take()?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let Ok(info) = serde_json::from_str::<serde_json::Value>(&line) else {
            println!("skipping: the moto S3 server did not start");
            let _ = child.kill();
            let _ = child.wait();
            return None;
        };
        let text = |k: &str| info[k].as_str().unwrap().to_string();
        Some(S3 {
            stdin: child.stdin.take(),
            child,
            python,
            endpoint: text("endpoint"),
            key: text("access_key_id"),
            secret: text("secret_access_key"),
        })
    }

    /// `posthoc args` with this server's endpoint and credentials, and the download cache
    /// in `downloads`.
    fn posthoc(&self, args: &[&str], downloads: &Path, env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("POSTHOC_LOG", "warn")
            .env("POSTHOC_CACHE_DIR", downloads)
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", &self.key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run posthoc")
    }

    fn ok(&self, args: &[&str], downloads: &Path) -> String {
        let out = self.posthoc(args, downloads, &[]);
        assert_succeeded(&out, &format!("posthoc {args:?}"));
        String::from_utf8(out.stdout).unwrap()
    }

    /// The `error:` line of a run that must fail (there must be exactly one).
    fn fails(&self, args: &[&str], downloads: &Path, env: &[(&str, &str)]) -> String {
        the_error_line(args, self.posthoc(args, downloads, env))
    }

    /// Runs a boto3 snippet against the server (`s3` is a signed client, `B` the bucket).
    fn boto(&self, code: &str) {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url={:?}, region_name='us-east-1', aws_access_key_id={:?}, aws_secret_access_key={:?})\nB = {BUCKET:?}\n{code}",
            self.endpoint, self.key, self.secret
        );
        let out = Command::new(&self.python)
            .args(["-c", &script])
            .output()
            .unwrap();
        assert_succeeded(&out, "boto3 snippet");
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        drop(self.stdin.take()); // the server stops when its stdin closes
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn setup() -> Option<(S3, tempfile::TempDir, PathBuf)> {
    let fixture = posthoc_small()?;
    let s3 = S3::start()?;
    let dir = tempfile::tempdir().unwrap();
    let cache = import_npy(
        &fixture,
        dir.path().join("local"),
        "densenet-bc-100-cifar10-dice",
        &[],
    );
    Some((s3, dir, cache))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn copy_verify_info_and_eval_from_s3_equal_local() {
    let Some((s3, dir, local)) = setup() else {
        return;
    };
    let downloads = dir.path().join("downloads");
    let url = format!("s3://{BUCKET}/caches/small");
    let first = s3.ok(&["cache", "copy", s(&local), &url], &downloads);
    assert!(
        first.contains("copied ") && first.contains("manifest written last"),
        "{first}"
    );
    // Resumable: a second copy finds every file in place.
    let second = s3.ok(&["cache", "copy", s(&local), &url], &downloads);
    assert!(!second.contains("copied "), "{second}");
    assert!(second.contains("0 bytes copied"), "{second}");

    let verified = s3.ok(&["cache", "verify", &url], &downloads);
    assert!(verified.contains("verified"), "{verified}");
    let info = s3.ok(&["cache", "info", &url], &downloads);
    assert!(info.contains(&url) && info.contains("id_test"), "{info}");

    let eval = |cache: &str, json: &Path| {
        s3.ok(
            &[
                "eval",
                "--cache",
                cache,
                "--method",
                "dice,react,energy,msp",
                "--json",
                s(json),
            ],
            &downloads,
        );
        std::fs::read_to_string(json).unwrap()
    };
    let here = eval(s(&local), &dir.path().join("local.json"));
    let there = eval(&url, &dir.path().join("s3.json"));
    assert_eq!(here, there, "eval from s3:// differs from the local eval");
    // The download cache holds each file once, named by its sha256, and is reused.
    let objects = std::fs::read_dir(downloads.join("objects"))
        .unwrap()
        .count();
    let manifest = posthoc_cache::Manifest::read(&local).unwrap();
    assert_eq!(objects, manifest.files.len());
    eval(&url, &dir.path().join("again.json"));
    assert_eq!(
        std::fs::read_dir(downloads.join("objects"))
            .unwrap()
            .count(),
        objects
    );

    // Back from S3 to a local directory: the same bytes.
    let back = dir.path().join("back");
    s3.ok(&["cache", "copy", &url, s(&back)], &downloads);
    for f in &manifest.files {
        assert_eq!(
            std::fs::read(local.join(&f.name)).unwrap(),
            std::fs::read(back.join(&f.name)).unwrap(),
            "{}",
            f.name
        );
    }
    posthoc_cache::verify(&back).unwrap().into_result().unwrap();
}

#[test]
fn an_altered_object_is_rejected_naming_it() {
    let Some((s3, dir, local)) = setup() else {
        return;
    };
    let url = format!("s3://{BUCKET}/altered");
    s3.ok(&["cache", "copy", s(&local), &url], &dir.path().join("d0"));
    // Flip one byte in the middle of the ID-test split (same size, other hash).
    s3.boto(
        "k = 'altered/id_test.parquet'\nb = bytearray(s3.get_object(Bucket=B, Key=k)['Body'].read())\nb[len(b) // 2] ^= 0x40\ns3.put_object(Bucket=B, Key=k, Body=bytes(b))",
    );
    let fresh = dir.path().join("d1");
    let err = s3.fails(&["eval", "--cache", &url, "--method", "msp"], &fresh, &[]);
    assert!(
        err.contains(&format!("{url}/id_test.parquet")) && err.contains("sha256"),
        "{err}"
    );
    let err = s3.fails(&["cache", "verify", &url], &fresh, &[]);
    assert!(err.contains(&format!("{url}/id_test.parquet")), "{err}");
    // Nothing of the bad object was kept: the good files are, the bad one is not.
    let objects: Vec<String> = std::fs::read_dir(fresh.join("objects"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(objects.iter().all(|o| !o.ends_with(".tmp")), "{objects:?}");
    // A truncated object: named too.
    s3.boto("k = 'altered/head.parquet'\nb = s3.get_object(Bucket=B, Key=k)['Body'].read()\ns3.put_object(Bucket=B, Key=k, Body=b[:100])");
    let err = s3.fails(&["cache", "info", &url], &dir.path().join("d2"), &[]);
    assert!(err.contains(&format!("{url}/head.parquet")), "{err}");
}

#[test]
fn a_copy_killed_midway_leaves_nothing_a_reader_accepts_and_a_rerun_completes() {
    let Some((s3, dir, local)) = setup() else {
        return;
    };
    let fixture = posthoc_small().unwrap();
    let downloads = dir.path().join("downloads");
    let url = format!("s3://{BUCKET}/killed");
    // Killed (abort, as kill -9) after the first data file is uploaded.
    let out = s3.posthoc(
        &["cache", "copy", s(&local), &url],
        &downloads,
        &[("POSTHOC_FAULT", "copy.file")],
    );
    assert!(!out.status.success());
    let err = s3.fails(&["cache", "info", &url], &downloads, &[]);
    assert!(err.contains("no manifest.json"), "{err}");
    s3.fails(
        &["eval", "--cache", &url, "--method", "msp"],
        &downloads,
        &[],
    );
    // The re-run resumes (needs --break-lock: the killed copy's lock is stale) and completes.
    let err = s3.fails(&["cache", "copy", s(&local), &url], &downloads, &[]);
    assert!(
        err.contains("stale lock") && err.contains("--break-lock"),
        "{err}"
    );
    let rerun = s3.ok(
        &["cache", "copy", "--break-lock", s(&local), &url],
        &downloads,
    );
    assert!(
        rerun.contains("present"),
        "the first file should be skipped:\n{rerun}"
    );
    s3.ok(&["cache", "verify", &url], &downloads);

    // Replacing a cache: the old manifest goes before any data object is replaced, so a
    // copy killed midway leaves no manifest rather than a mixture.
    // Another cache: other class names, so its head file differs too.
    let names = "airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck";
    let other = import_npy(
        &fixture,
        dir.path().join("other"),
        "another-model",
        &["--class-names", names],
    );
    let out = s3.posthoc(
        &["cache", "copy", "--break-lock", s(&other), &url],
        &downloads,
        &[("POSTHOC_FAULT", "copy.file")],
    );
    assert!(!out.status.success());
    let err = s3.fails(&["cache", "info", &url], &dir.path().join("fresh"), &[]);
    assert!(err.contains("no manifest.json"), "{err}");
}

#[test]
fn a_missing_bucket_and_bad_credentials_give_one_clear_line() {
    let Some((s3, dir, local)) = setup() else {
        return;
    };
    let downloads = dir.path().join("downloads");
    let err = s3.fails(&["cache", "info", "s3://no-such-bucket/x"], &downloads, &[]);
    assert!(err.contains("`no-such-bucket` does not exist"), "{err}");
    let err = s3.fails(
        &["cache", "copy", s(&local), "s3://no-such-bucket/x"],
        &downloads,
        &[],
    );
    assert!(err.contains("no-such-bucket"), "{err}");
    let bad = [("AWS_SECRET_ACCESS_KEY", "wrong-secret")];
    let url = format!("s3://{BUCKET}/x");
    let err = s3.fails(&["cache", "info", &url], &downloads, &bad);
    assert!(err.contains("credentials"), "{err}");
    assert!(
        !err.contains("wrong-secret") && !err.contains(&s3.secret),
        "{err}"
    );
    let err = s3.fails(&["cache", "copy", s(&local), &url], &downloads, &bad);
    assert!(err.contains("credentials"), "{err}");
}

#[test]
fn the_lock_object_names_a_live_holder_and_a_stale_one_needs_break_lock() {
    let Some((s3, dir, local)) = setup() else {
        return;
    };
    let downloads = dir.path().join("downloads");
    let url = format!("s3://{BUCKET}/locked");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let put_lock = |heartbeat: u64| {
        s3.boto(&format!(
            "import json\ns3.put_object(Bucket=B, Key='locked/.lock', Body=json.dumps({{'host': 'gpu-node-7', 'pid': 4242, 'started': {heartbeat}, 'heartbeat': {heartbeat}, 'token': 't'}}))"
        ));
    };
    put_lock(now);
    let err = s3.fails(&["cache", "copy", s(&local), &url], &downloads, &[]);
    assert!(
        err.contains("pid 4242 on host gpu-node-7") && err.contains("--wait-lock"),
        "{err}"
    );
    // Silent for longer than --stale-after: stale, broken only with --break-lock.
    put_lock(now - 3600);
    let err = s3.fails(&["cache", "copy", s(&local), &url], &downloads, &[]);
    assert!(
        err.contains("stale lock") && err.contains("gpu-node-7"),
        "{err}"
    );
    s3.ok(
        &["cache", "copy", "--break-lock", s(&local), &url],
        &downloads,
    );
    // Released after the copy: the next writer gets it without flags.
    s3.ok(&["cache", "copy", s(&local), &url], &downloads);
}
