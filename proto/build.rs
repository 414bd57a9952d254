//! Generates the tonic client and server code for the control API (needs `protoc` on PATH).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/edgeward.proto");
    tonic_prost_build::configure().compile_protos(&["proto/edgeward.proto"], &["proto"])?;
    Ok(())
}
