//! Compiles `proto/qtasks.proto` with protox (a Rust protobuf compiler: no `protoc` needed)
//! into the messages, the server and the client, and keeps the encoded descriptor set for the
//! reflection service.

use prost::Message;

fn main() {
    println!("cargo:rerun-if-changed=proto/qtasks.proto");
    let descriptors =
        protox::compile(["proto/qtasks.proto"], ["proto"]).expect("proto/qtasks.proto compiles");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    std::fs::write(
        out.join("qtasks_descriptor.bin"),
        descriptors.encode_to_vec(),
    )
    .expect("OUT_DIR is writable");
    tonic_prost_build::configure()
        .compile_fds(descriptors)
        .expect("the service code generates");
}
