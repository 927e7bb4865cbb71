fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("dbswarm_descriptor.bin"))
        .compile_protos(
            &[
                "../../proto/dbswarm/v1/event_store.proto",
                "../../proto/dbswarm/v1/admin.proto",
                "../../proto/dbswarm/v1/projections.proto",
                "../../proto/dbswarm/v1/workflows.proto",
            ],
            &["../../proto"],
        )?;
    println!("cargo:rerun-if-changed=../../proto");
    Ok(())
}
