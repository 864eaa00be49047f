//! Records the git commit of the build (`POSTHOC_GIT_COMMIT`) for cache provenance.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Some(commit) = git(&["rev-parse", "HEAD"]) {
        println!("cargo:rustc-env=POSTHOC_GIT_COMMIT={commit}");
    }
    // Rebuild when HEAD moves: the HEAD file, the branch it names, packed refs.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
    }
    if let (Some(common), Some(head_ref)) = (
        git(&["rev-parse", "--git-common-dir"]),
        git(&["symbolic-ref", "-q", "HEAD"]),
    ) {
        // Only files that exist: cargo treats a missing one as changed on every build
        // (a checkout whose refs are all loose has no packed-refs; after `git gc` the
        // branch may have no loose file), which recompiled the crate each time.
        for file in [
            format!("{common}/{head_ref}"),
            format!("{common}/packed-refs"),
        ] {
            if std::path::Path::new(&file).exists() {
                println!("cargo:rerun-if-changed={file}");
            }
        }
    }
}
