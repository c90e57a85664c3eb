//! Compiles `mcplexer/v1/*.proto` with protox (no `protoc` needed) and
//! generates the prost messages and tonic services from the descriptor set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "mcplexer/v1/objects.proto",
        "mcplexer/v1/admin.proto",
        "mcplexer/v1/vault.proto",
        "mcplexer/v1/auth.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
