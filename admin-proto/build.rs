//! Generates the admin API's Rust code from `proto/admin.proto` with the
//! `protoc` binary shipped in the `protoc-bin-vendored` crate, so that a
//! fresh machine needs no protobuf compiler installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/admin.proto");
    println!("cargo:rerun-if-changed=build.rs");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through `PROTOC`.
    #[allow(
        unsafe_code,
        reason = "set_var is unsafe in edition 2024; this build script has one thread"
    )]
    // SAFETY: no other thread exists in this build script when this runs.
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_protos(&["proto/admin.proto"], &["proto"])?;
    Ok(())
}
