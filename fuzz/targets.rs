//! The bodies of the NBD fuzz targets, shared by cargo-fuzz (fuzz_targets/)
//! and by the bounded run in the test suite (tests/fuzz.rs).

use tokio::io::AsyncWriteExt;
use zeroblk::nbd::{Exports, handshake, proto};

/// Every NBD decoder on arbitrary bytes: none may panic, and a request
/// that decodes encodes back to the same request.
pub fn nbd_proto(data: &[u8]) {
    let _ = proto::decode_info_request(data);
    let _ = proto::decode_meta_context_request(data);
    if let Some(bytes) = data.first_chunk::<{ proto::REQUEST_LEN }>()
        && let Ok(request) = proto::decode_request(bytes)
    {
        assert_eq!(
            proto::decode_request(&proto::encode_request(&request)),
            Ok(request)
        );
    }
    if let Some(bytes) = data.first_chunk::<{ proto::OPTION_HEADER_LEN }>() {
        let _ = proto::decode_option_header(bytes);
    }
}

/// The whole negotiation, fed arbitrary client bytes: it must end (with a
/// session, an abort or an error), never panic or hang.
pub fn nbd_handshake(data: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        client
            .write_all(data)
            .await
            .expect("the pipe holds the input");
        client.shutdown().await.expect("shutdown");
        let exports = Exports::default();
        let negotiation = handshake::negotiate(&mut server, &exports);
        tokio::time::timeout(std::time::Duration::from_secs(5), negotiation)
            .await
            .expect("negotiation ended")
            .ok();
    });
}
