//! Compile the subset of etcd's v3 API in proto/ with protox (no system protoc) and
//! generate the tonic clients the etcd store uses.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/rpc.proto");
    println!("cargo:rerun-if-changed=proto/kv.proto");
    let fds = protox::compile(["rpc.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
