//! Bakes the build's version into the binary: the crate version and the git
//! commit it was built from (`0.1.0+1a2b3c4d5e6f`), which every instance
//! registers unless told otherwise. `SHOPFAST_BUILD_COMMIT` names the commit
//! where there is no git checkout (a container build).
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=SHOPFAST_BUILD_COMMIT");
    let commit = std::env::var("SHOPFAST_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    // Built again when HEAD moves: a checkout, or a commit on the branch.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={git_dir}/{branch}");
        }
        if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
            let common = if common.starts_with('/') { common } else { format!("{git_dir}/{common}") };
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                println!("cargo:rerun-if-changed={common}/{branch}");
            }
            println!("cargo:rerun-if-changed={common}/packed-refs");
        }
    }
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=SHOPFAST_BUILD_VERSION={version}+{commit}");
}
