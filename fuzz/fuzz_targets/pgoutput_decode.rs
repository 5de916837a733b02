//! Feeds arbitrary bytes to walbox's pgoutput decoder: it must never panic, and decoding the
//! same input twice must give the same result.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use walbox::pgoutput::decode;

fuzz_target!(|data: &[u8]| {
    let data = Bytes::copy_from_slice(data);
    if let Ok(message) = decode(&data) {
        let again = decode(&data).expect("second decode of the same input failed");
        assert_eq!(message, again, "decode is not deterministic");
    }
});
