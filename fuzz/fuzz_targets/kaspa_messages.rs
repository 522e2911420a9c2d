//! A Kaspa peer's side of the P2P `MessageStream`, as our handshake receives it: gRPC message
//! frames (a compression flag, a 4-byte length, a protobuf `KaspadMessage`) decoded by tonic with
//! the bridge's 16 MiB limit, and fed to `handshake::run`, which must end with an error or the
//! peer's Version, never a panic.
#![no_main]

use std::sync::OnceLock;

use punchgate_kaspa::{
    handshake::{self, Local, Timeouts},
    pb::KaspadMessage,
};
use tokio::runtime::Runtime;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let body = http_body_util::Full::new(bytes::Bytes::copy_from_slice(data));
    let mut inbound = tonic::codec::Streaming::<KaspadMessage>::new_request(
        tonic_prost::ProstDecoder::<KaspadMessage>::default(),
        body,
        None,
        Some(16 << 20),
    );
    let local = Local {
        network: "kaspa-mainnet".into(),
        user_agent: "/fuzz/".into(),
        id: vec![1; 16],
    };
    let (out, mut sent) = tokio::sync::mpsc::channel(8);
    runtime().block_on(async {
        let _ = handshake::run(&local, &Timeouts::default(), &out, &mut inbound).await;
    });
    while sent.try_recv().is_ok() {}
});
