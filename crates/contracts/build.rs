//! Compiles the protos without protoc: protox parses them into a descriptor set,
//! tonic-prost-build generates messages, clients and servers from it, and the
//! encoded set (with the `google.api.http` options intact) is written to OUT_DIR
//! for server reflection and the gateway.
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "shopfast/options/v1/options.proto",
    "shopfast/common/v1/common.proto",
    "shopfast/users/v1/users.proto",
    "shopfast/products/v1/products.proto",
    "shopfast/orders/v1/orders.proto",
    "shopfast/payments/v1/payments.proto",
    "shopfast/queue/v1/queue.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let mut compiler = protox::Compiler::new([&proto_root])?;
    compiler.include_source_info(true).include_imports(true);
    for proto in PROTOS {
        compiler.open_file(proto)?;
    }

    // Encoded from the descriptor pool, so extension options (google.api.http)
    // survive; prost_types would drop them as unknown fields.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("shopfast_descriptor.bin"), compiler.encode_file_descriptor_set())?;

    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
