//! Every NBD decoder on arbitrary bytes: none may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zeroblk::nbd::proto;

fuzz_target!(|data: &[u8]| {
    let _ = proto::decode_info_request(data);
    let _ = proto::decode_meta_context_request(data);
    if let Some(bytes) = data.first_chunk::<{ proto::REQUEST_LEN }>() {
        if let Ok(request) = proto::decode_request(bytes) {
            assert_eq!(proto::decode_request(&proto::encode_request(&request)), Ok(request));
        }
    }
    if let Some(bytes) = data.first_chunk::<{ proto::OPTION_HEADER_LEN }>() {
        let _ = proto::decode_option_header(bytes);
    }
});
