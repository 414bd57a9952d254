//! Generates the tonic client and server code for the control API (needs `protoc` on PATH).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/edgeward.proto");
    // Ordered maps: the encoding of a message is then deterministic, which the control plane
    // relies on to fingerprint what it serves.
    tonic_prost_build::configure()
        .btree_map(".")
        .compile_protos(&["proto/edgeward.proto"], &["proto"])?;
    Ok(())
}
