//! The whole negotiation, fed arbitrary client bytes: it must end (with a
//! session, an abort or an error), never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use zeroblk::nbd::{Exports, handshake};

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        client.write_all(data).await.expect("the pipe holds the input");
        client.shutdown().await.expect("shutdown");
        let exports = Exports::default();
        let negotiation = handshake::negotiate(&mut server, &exports);
        tokio::time::timeout(std::time::Duration::from_secs(5), negotiation)
            .await
            .expect("negotiation ended")
            .ok();
    });
});
