//! The broker codec on arbitrary frames, for each protocol version: never
//! panics, and whatever decodes re-encodes to bytes that decode to the
//! same packet.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mqttlb::mqtt::ProtocolVersion;
use mqttlb::mqtt::codec;

fuzz_target!(|data: &[u8]| {
    for v in [ProtocolVersion::V31, ProtocolVersion::V311, ProtocolVersion::V5] {
        let Ok(Some(n)) = codec::frame_len(data, 1 << 20) else {
            continue;
        };
        let frame = Bytes::copy_from_slice(&data[..n]);
        if let Ok(p) = codec::decode(frame, v) {
            let mut out = BytesMut::new();
            codec::encode(&p, v, &mut out);
            assert_eq!(codec::decode(out.freeze(), v).ok(), Some(p), "round trip");
        }
    }
});
