//! `protocheck --old DIR --new DIR [--package P]...`: exit 0 when nothing in
//! the packages breaks, 1 with the list of breaking changes, 2 when a tree
//! does not compile or the arguments are wrong.
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use protocheck::{Index, Scope, check, compile_dir};

/// Breaking changes between two proto trees (buf's rules), per package.
#[derive(Debug, Parser)]
#[command(name = "protocheck")]
struct Args {
    /// The tree before the change: the include root, e.g. main's `proto/` checked out to a temp dir.
    #[arg(long, value_name = "DIR")]
    old: PathBuf,
    /// The tree after the change, e.g. `proto/`.
    #[arg(long, value_name = "DIR")]
    new: PathBuf,
    /// Judge only this package (repeatable); every package of the old tree when absent.
    #[arg(long = "package", value_name = "PACKAGE")]
    packages: Vec<String>,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(err) => {
            eprintln!("protocheck: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// The number of breaking changes found.
fn run(args: &Args) -> anyhow::Result<usize> {
    let old = Index::build(&compile_dir(&args.old).context("the old tree")?);
    let new = Index::build(&compile_dir(&args.new).context("the new tree")?);

    let scope = if args.packages.is_empty() {
        Scope::All
    } else {
        let (old_packages, new_packages) = (&old.packages, &new.packages);
        for package in &args.packages {
            match (old_packages.contains(package), new_packages.contains(package)) {
                (false, false) => bail!("package {package} is in neither tree (old: {:?})", old_packages),
                (false, true) => println!("protocheck: package {package} is new: nothing in it can break"),
                _ => {}
            }
        }
        Scope::Packages(args.packages.iter().cloned().collect::<BTreeSet<_>>())
    };

    let breaking = check(&old, &new, &scope);
    for change in &breaking {
        println!("{change}\n");
    }
    let what = match &scope {
        Scope::All => "all packages".to_string(),
        Scope::Packages(packages) => packages.iter().cloned().collect::<Vec<_>>().join(", "),
    };
    let (old_dir, new_dir) = (args.old.display(), args.new.display());
    match breaking.len() {
        0 => println!("protocheck: no breaking changes in {what} (old: {old_dir}, new: {new_dir})"),
        1 => println!("protocheck: 1 breaking change in {what} (old: {old_dir}, new: {new_dir})"),
        n => println!("protocheck: {n} breaking changes in {what} (old: {old_dir}, new: {new_dir})"),
    }
    Ok(breaking.len())
}
