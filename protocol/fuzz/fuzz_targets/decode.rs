//! Feeds arbitrary bytes to the frame decoder and validates every frame it
//! yields. Must never panic.
//!
//! The first input byte picks a mode. Odd: the rest is a raw byte stream, fed
//! in pieces of `first / 2 + 1` bytes, so frames split across reads are
//! covered. Even: the rest is the payload of a frame with a valid header and
//! CRC (opcode `first / 2 % 8`), so the fuzzer reaches rkyv validation
//! instead of stopping at the checksum.
//!
//! Run: `cd protocol && cargo +nightly fuzz run decode`.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use reserva_protocol::{FrameDecoder, Opcode, encode_frame, message_to_vec};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 1 {
        decode_stream(rest, usize::from(mode / 2) + 1);
    } else {
        let mut framed = Vec::new();
        let opcode = Opcode::from_u8(mode / 2 % 8).unwrap_or(Opcode::Batch);
        if encode_frame(opcode, 1, rest, &mut framed).is_ok() {
            decode_stream(&framed, framed.len().max(1));
        }
    }
});

fn decode_stream(bytes: &[u8], chunk: usize) {
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::new();
    for piece in bytes.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if let Ok(message) = frame.message() {
                        assert_eq!(message.opcode(), frame.opcode);
                        // A decoded message encodes again.
                        let _ = message_to_vec(frame.request_id, &message);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}
