//! Compiles every `.proto` file under `proto/` into Rust with tonic-prost-build.
//! Needs `protoc` (Debian's `protobuf-compiler`, installed by `.ci/run`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/harvest/v1/node.proto",
        "proto/harvest/v1/scheduler.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure().compile_protos(&protos, &["proto"])?;
    Ok(())
}
