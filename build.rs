//! Build script: records which commit walbox was built from, for `walbox --version`.
//!
//! `WALBOX_BUILD_COMMIT` (set by whoever builds, e.g. the container build, which has no .git)
//! wins; otherwise `git rev-parse` in the source tree; otherwise nothing, and the version says
//! the commit is unknown. A missing git or .git never fails the build.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=WALBOX_BUILD_COMMIT");
    let commit = std::env::var("WALBOX_BUILD_COMMIT")
        .ok()
        .filter(|commit| !commit.trim().is_empty())
        .map(|commit| commit.trim().to_owned())
        .or_else(git_commit);
    if let Some(commit) = commit {
        println!("cargo:rustc-env=WALBOX_COMMIT={commit}");
    }
    for path in git_files_to_watch() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// The abbreviated hash of HEAD. (Uncommitted changes are not marked: that would mean
/// rerunning this script, and so rebuilding the whole package, after every edit.)
fn git_commit() -> Option<String> {
    git(&["rev-parse", "--short=12", "HEAD"])
}

/// What moves when HEAD does: HEAD itself and its reflog, which git appends to on every commit,
/// checkout, reset or merge. Only existing files: Cargo reruns a build script whose watched
/// path is missing on every build.
fn git_files_to_watch() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = ["HEAD", "logs/HEAD"]
        .into_iter()
        .filter_map(|name| git(&["rev-parse", "--git-path", name]))
        .map(PathBuf::from)
        .collect();
    paths.retain(|path| path.exists());
    paths
}

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
