//! Arbitrary bytes never panic the frame decoder, and every message it accepts round-trips.
//!
//! Each input is decoded as every message type, frame after frame, as a connection would.
#![no_main]

use std::fmt::Debug;

use ak_protocol::frame::{decode_frame, encode_frame};
use ak_protocol::handshake::{Hello, HelloReply};
use ak_protocol::{Event, Request};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Consumes frames off the front of `buf` until more bytes are needed or one is refused.
fn decode_all<T>(mut buf: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    while let Ok(Some((message, used))) = decode_frame::<T>(buf) {
        assert!((4..=buf.len()).contains(&used), "consumed {used} bytes");
        let frame = encode_frame(&message).expect("a decoded message re-encodes");
        let (again, again_used) = decode_frame::<T>(&frame)
            .expect("a re-encoded message decodes")
            .expect("a re-encoded frame is complete");
        assert_eq!(again, message);
        assert_eq!(again_used, frame.len());
        buf = &buf[used..];
    }
}

fuzz_target!(|data: &[u8]| {
    decode_all::<Request>(data);
    decode_all::<Event>(data);
    decode_all::<Hello>(data);
    decode_all::<HelloReply>(data);
});
