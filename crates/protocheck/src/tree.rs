//! Compiling a proto tree into a descriptor set with protox (no protoc), from
//! a directory or from sources held in memory (the tests' way).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost_types::FileDescriptorSet;
use protox::Compiler;
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

/// The cause is part of the message and deliberately not a `#[source]`: the
/// binary prints the chain (`{:#}`), which would repeat it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {}: {cause}", path.display())]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("no .proto file under {}", .0.display())]
    Empty(PathBuf),
    #[error("compiling {tree}: {}{cause}", at(cause))]
    Compile { tree: String, cause: Box<protox::Error> },
}

/// `file:line: ` of a compile error, as far as protox knows them.
fn at(error: &protox::Error) -> String {
    use miette::Diagnostic;
    let Some(file) = error.file() else { return String::new() };
    let line = error
        .source_code()
        .zip(error.labels().and_then(|mut labels| labels.next()))
        .and_then(|(source, label)| Some(source.read_span(label.inner(), 0, 0).ok()?.line() + 1));
    match line {
        Some(line) => format!("{file}:{line}: "),
        None => format!("{file}: "),
    }
}

/// Every `.proto` file under `root`, by its import name (`shopfast/products/v1/products.proto`),
/// compiled with `root` as the only include path (plus protox's bundled
/// `google/protobuf` files). Source info is kept: it gives the line numbers of
/// the report.
pub fn compile_dir(root: &Path) -> Result<FileDescriptorSet, Error> {
    let mut names = Vec::new();
    collect_protos(root, root, &mut names)?;
    if names.is_empty() {
        return Err(Error::Empty(root.to_path_buf()));
    }
    names.sort();
    let tree = root.display().to_string();
    let compile_error = |cause| Error::Compile { tree: tree.clone(), cause: Box::new(cause) };
    let mut compiler = Compiler::new([root]).map_err(compile_error)?;
    compile(&mut compiler, &names).map_err(compile_error)
}

/// The same from `(import name, source)` pairs, without touching the disk.
pub fn compile_sources<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<FileDescriptorSet, Error> {
    let sources: BTreeMap<String, String> = files.into_iter().map(|(n, s)| (n.to_string(), s.to_string())).collect();
    let names: Vec<String> = sources.keys().cloned().collect();
    let mut resolver = ChainFileResolver::new();
    resolver.add(MemoryResolver(sources));
    resolver.add(GoogleFileResolver::new());
    let mut compiler = Compiler::with_file_resolver(resolver);
    compile(&mut compiler, &names)
        .map_err(|cause| Error::Compile { tree: "in-memory sources".to_string(), cause: Box::new(cause) })
}

fn compile(compiler: &mut Compiler, names: &[String]) -> Result<FileDescriptorSet, protox::Error> {
    // Imports are opened as files too (every file of the tree is one), so
    // the set holds the whole tree and nothing from outside it.
    compiler.include_source_info(true).include_imports(false);
    compiler.open_files(names)?;
    Ok(compiler.file_descriptor_set())
}

fn collect_protos(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), Error> {
    let read_error = |cause| Error::Read { path: dir.to_path_buf(), cause };
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.is_dir() {
            collect_protos(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto")
            && let Ok(relative) = path.strip_prefix(root)
        {
            // Import names always use '/', whatever the platform.
            let name: Vec<String> =
                relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            out.push(name.join("/"));
        }
    }
    Ok(())
}

struct MemoryResolver(BTreeMap<String, String>);

impl FileResolver for MemoryResolver {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.get(name) {
            Some(source) => File::from_source(name, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_a_directory_with_imports_between_its_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/v1")).unwrap();
        std::fs::write(dir.path().join("a/v1/common.proto"), "syntax = \"proto3\"; package a.v1; message M {}")
            .unwrap();
        std::fs::write(
            dir.path().join("a/v1/svc.proto"),
            "syntax = \"proto3\"; package a.v1; import \"a/v1/common.proto\";\n\
             import \"google/protobuf/timestamp.proto\";\n\
             message N { M m = 1; google.protobuf.Timestamp t = 2; }",
        )
        .unwrap();
        std::fs::write(dir.path().join("README.md"), "not a proto").unwrap();

        let set = compile_dir(dir.path()).unwrap();
        let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["a/v1/common.proto", "a/v1/svc.proto"]);
    }

    #[test]
    fn a_compile_error_names_the_tree_and_the_file() {
        let err = compile_sources([("x/v1/x.proto", "syntax = \"proto3\"; package x.v1; message M { int64 a = 1 }")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("compiling in-memory sources: x/v1/x.proto:1: expected"), "{err}");
    }

    #[test]
    fn an_empty_directory_is_an_error_not_an_empty_contract() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(compile_dir(dir.path()), Err(Error::Empty(_))));
    }

    #[test]
    fn the_repository_protos_compile() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
        let set = compile_dir(&root).unwrap();
        assert!(set.file.iter().any(|f| f.package() == "shopfast.products.v1"));
    }
}
