//! Compiles `proto/ca.proto` (the Istio certificate service) with protox: the machines that
//! build shunt have no `protoc`.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    let proto = "proto/ca.proto";
    println!("cargo:rerun-if-changed={proto}");
    // protox ships the well-known types (google/protobuf/struct.proto) itself.
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
