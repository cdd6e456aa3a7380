//! The whole NBD negotiation on arbitrary client bytes (see ../targets.rs).
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::nbd_handshake(data));
