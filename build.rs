//! Compiles proto/ with protox (pure Rust, no protoc) into tonic/prost code,
//! and writes the file descriptor set for gRPC server reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/pulse_ledger/v1/registry.proto",
        "proto/pulse_ledger/v1/jobs.proto",
        "proto/pulse_ledger/v1/plugin.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("pulse_ledger_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
