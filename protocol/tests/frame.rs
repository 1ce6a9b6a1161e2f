//! The frame decoder and encoder, through the public surface: every error path.

use bytes::{BufMut, BytesMut};
use reserva_protocol::engine::{Command, OrderId, Request, ReservationId, shard_of};
use reserva_protocol::limits::{
    BATCH_OPS_MAX, FRAME_BYTES_MAX, HEADER_BYTES, MAGIC, PROTOCOL_VERSION,
};
use reserva_protocol::{
    Batch, FrameDecoder, FrameError, Hello, Message, Op, Opcode, Query, Reply, Results, WireError,
    encode_frame, encode_message, message_to_vec,
};

fn hello() -> Message {
    Message::Hello(Hello {
        protocol_version: u16::from(PROTOCOL_VERSION),
        credential: "secret".into(),
        client_name: "test".into(),
    })
}

fn frame_bytes(request_id: u64, message: &Message) -> Vec<u8> {
    message_to_vec(request_id, message).unwrap()
}

/// Recomputes the CRC after a test edited the header or payload.
fn fix_crc(bytes: &mut [u8]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..20]), &bytes[HEADER_BYTES..]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
}

fn decode_all(bytes: &[u8]) -> Result<Option<reserva_protocol::Frame>, FrameError> {
    FrameDecoder::new().decode(&mut BytesMut::from(bytes))
}

#[test]
fn round_trips_every_message_kind() {
    let batch = Message::Batch(Batch {
        ops: vec![
            Op::Mutate(Request::keyed(
                "k1",
                Command::Release {
                    reservation_id: ReservationId::new(3, 7).unwrap(),
                },
            )),
            Op::Query(Query::GetOrder {
                id: OrderId::new(9, 1).unwrap(),
            }),
        ],
        timeout_ms: 250,
    });
    let results = Message::Results(Results {
        results: vec![
            Ok(Reply::Cart(vec![])),
            Err(WireError::Overloaded { retry_after_ms: 5 }),
            Err(WireError::DeadlineExceeded { timeout_ms: 250 }),
        ],
    });
    let error = Message::Error(WireError::Unauthorized {
        reason: "bad credential".into(),
    });
    let mut buf = BytesMut::new();
    let messages = [hello(), batch, results, error, Message::Ping, Message::Pong];
    for (i, m) in messages.iter().enumerate() {
        encode_message(i as u64 + 100, m, &mut buf).unwrap();
    }
    let mut decoder = FrameDecoder::new();
    for (i, m) in messages.iter().enumerate() {
        let frame = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.request_id, i as u64 + 100);
        assert_eq!(frame.opcode, m.opcode());
        assert_eq!(&frame.message().unwrap(), m);
    }
    assert!(buf.is_empty());
    assert_eq!(decoder.decode(&mut buf), Ok(None));
}

#[test]
fn ping_frame_bytes_are_pinned() {
    // The exact bytes docs/protocol.md shows for a PING with request id 1.
    let bytes = frame_bytes(1, &Message::Ping);
    let expected: [u8; 24] = [
        0x52, 0x56, 0x02, 0x06, 0x00, 0x00, 0x00,
        0x00, // magic, version, opcode, flags, reserved
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // request id
        0x00, 0x00, 0x00, 0x00, // payload length
        0xcb, 0x76, 0x84, 0x45, // crc32c = 0x458476cb
    ];
    assert_eq!(bytes[..20], expected[..20]);
    let crc = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    assert_eq!(crc, crc32c::crc32c(&expected[..20]));
    assert_eq!(bytes, expected, "crc {crc:#010x}");
}

#[test]
fn truncated_frame_is_none_until_complete() {
    let bytes = frame_bytes(42, &hello());
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::new();
    for (i, b) in bytes.iter().enumerate() {
        assert_eq!(decoder.decode(&mut buf), Ok(None), "after {i} bytes");
        assert_eq!(buf.len(), i, "decoder consumed a partial frame");
        buf.put_u8(*b);
    }
    let frame = decoder.decode(&mut buf).unwrap().unwrap();
    assert_eq!(frame.request_id, 42);
    assert_eq!(frame.message().unwrap(), hello());
    assert!(buf.is_empty());
}

#[test]
fn bad_magic_is_rejected_from_two_bytes() {
    let mut bytes = frame_bytes(1, &hello());
    bytes[0] = b'G'; // e.g. an HTTP client: "GET /"
    bytes[1] = b'E';
    assert_eq!(
        decode_all(&bytes[..2]),
        Err(FrameError::BadMagic { found: 0x4547 })
    );
    assert_eq!(
        decode_all(&bytes),
        Err(FrameError::BadMagic { found: 0x4547 })
    );
    // One byte cannot tell yet.
    assert_eq!(decode_all(&bytes[..1]), Ok(None));
}

#[test]
fn wrong_version_is_reported_from_the_header() {
    let mut bytes = frame_bytes(1, &hello());
    bytes[2] = PROTOCOL_VERSION + 1;
    fix_crc(&mut bytes);
    let expected = FrameError::UnsupportedVersion {
        found: PROTOCOL_VERSION + 1,
        supported: PROTOCOL_VERSION,
    };
    assert_eq!(decode_all(&bytes[..3]), Err(expected.clone()));
    assert_eq!(decode_all(&bytes), Err(expected.clone()));
    assert_eq!(
        expected.to_wire_error(),
        WireError::UnsupportedVersion { supported: 2 }
    );
}

#[test]
fn oversized_length_is_rejected_before_the_payload_arrives() {
    let mut header = [0u8; HEADER_BYTES];
    header[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    header[2] = PROTOCOL_VERSION;
    header[3] = Opcode::Batch as u8;
    header[8..16].copy_from_slice(&77u64.to_le_bytes());
    header[16..20].copy_from_slice(&(FRAME_BYTES_MAX as u32 + 1).to_le_bytes());
    // Only the header is buffered: the decoder must not wait for 1 MiB.
    let err = decode_all(&header).unwrap_err();
    assert_eq!(
        err,
        FrameError::TooLarge {
            len: FRAME_BYTES_MAX as u64 + 1,
            max: FRAME_BYTES_MAX as u32,
            request_id: 77,
        }
    );
    assert_eq!(err.request_id(), Some(77));
    assert_eq!(
        err.to_wire_error(),
        WireError::FrameTooLarge {
            max_bytes: FRAME_BYTES_MAX as u32
        }
    );
    // u32::MAX too.
    header[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode_all(&header),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn a_smaller_advertised_limit_is_enforced() {
    let bytes = frame_bytes(5, &hello());
    let payload_len = (bytes.len() - HEADER_BYTES) as u32;
    let mut decoder = FrameDecoder::with_payload_bytes_max(payload_len - 1);
    assert!(matches!(
        decoder.decode(&mut BytesMut::from(&bytes[..])),
        Err(FrameError::TooLarge { .. })
    ));
    let mut decoder = FrameDecoder::with_payload_bytes_max(payload_len);
    assert!(
        decoder
            .decode(&mut BytesMut::from(&bytes[..]))
            .unwrap()
            .is_some()
    );
}

#[test]
fn encoder_refuses_oversized_payloads() {
    let payload = vec![0u8; FRAME_BYTES_MAX + 1];
    let mut out = Vec::new();
    assert!(matches!(
        encode_frame(Opcode::Batch, 1, &payload, &mut out),
        Err(FrameError::TooLarge { .. })
    ));
    assert!(out.is_empty());
    // Exactly the limit is fine.
    encode_frame(Opcode::Batch, 1, &payload[..FRAME_BYTES_MAX], &mut out).unwrap();
    assert_eq!(out.len(), HEADER_BYTES + FRAME_BYTES_MAX);
}

#[test]
fn crc_mismatch_is_detected_in_header_and_payload() {
    let bytes = frame_bytes(9, &hello());
    // A flipped payload bit.
    let mut corrupt = bytes.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x01;
    assert!(matches!(
        decode_all(&corrupt),
        Err(FrameError::ChecksumMismatch { request_id: 9, .. })
    ));
    // A flipped request id bit (header field covered by the CRC).
    let mut corrupt = bytes.clone();
    corrupt[8] ^= 0x80;
    assert!(matches!(
        decode_all(&corrupt),
        Err(FrameError::ChecksumMismatch { .. })
    ));
    // A flipped CRC bit.
    let mut corrupt = bytes;
    corrupt[20] ^= 0x01;
    assert!(matches!(
        decode_all(&corrupt),
        Err(FrameError::ChecksumMismatch { .. })
    ));
}

#[test]
fn unknown_opcode_and_reserved_bits_are_rejected() {
    let mut bytes = frame_bytes(3, &Message::Ping);
    bytes[3] = 0xee;
    fix_crc(&mut bytes);
    assert_eq!(
        decode_all(&bytes),
        Err(FrameError::UnknownOpcode {
            opcode: 0xee,
            request_id: 3
        })
    );
    let mut bytes = frame_bytes(3, &Message::Ping);
    bytes[4] = 1;
    fix_crc(&mut bytes);
    assert!(matches!(
        decode_all(&bytes),
        Err(FrameError::ReservedBits { flags: 1, .. })
    ));
    let mut bytes = frame_bytes(3, &Message::Ping);
    bytes[7] = 1;
    fix_crc(&mut bytes);
    assert!(matches!(
        decode_all(&bytes),
        Err(FrameError::ReservedBits {
            reserved: 0x100,
            ..
        })
    ));
}

#[test]
fn garbage_payload_with_valid_crc_fails_validation() {
    for opcode in [
        Opcode::Hello,
        Opcode::HelloOk,
        Opcode::Batch,
        Opcode::Results,
        Opcode::Error,
    ] {
        for payload in [&[][..], &[0xff; 3][..], &[0xab; 64][..]] {
            let mut bytes = Vec::new();
            encode_frame(opcode, 11, payload, &mut bytes).unwrap();
            let frame = decode_all(&bytes).unwrap().unwrap();
            let err = frame.message().unwrap_err();
            assert!(
                matches!(err, FrameError::InvalidPayload { opcode: o, request_id: 11, .. } if o == opcode),
                "{opcode}: {err:?}"
            );
            assert!(matches!(
                err.to_wire_error(),
                WireError::InvalidRequest { .. }
            ));
        }
    }
    // A HELLO payload sent under the BATCH opcode is not a Batch.
    let hello_payload = hello().to_payload().unwrap();
    let mut bytes = Vec::new();
    encode_frame(Opcode::Batch, 12, &hello_payload, &mut bytes).unwrap();
    let frame = decode_all(&bytes).unwrap().unwrap();
    assert!(matches!(
        frame.message(),
        Err(FrameError::InvalidPayload { .. })
    ));
    // PING must be empty.
    let mut bytes = Vec::new();
    encode_frame(Opcode::Ping, 13, &[0], &mut bytes).unwrap();
    let frame = decode_all(&bytes).unwrap().unwrap();
    assert!(matches!(
        frame.message(),
        Err(FrameError::InvalidPayload { .. })
    ));
}

#[test]
fn batches_over_the_op_limit_are_refused() {
    let op = Op::Query(Query::GetCart {
        user_id: "u".into(),
    });
    let ok = Message::Batch(Batch {
        ops: vec![op.clone(); BATCH_OPS_MAX],
        timeout_ms: 0,
    });
    let frame = decode_all(&frame_bytes(1, &ok)).unwrap().unwrap();
    assert_eq!(frame.message().unwrap(), ok);
    let over = Message::Batch(Batch {
        ops: vec![op; BATCH_OPS_MAX + 1],
        timeout_ms: 0,
    });
    let frame = decode_all(&frame_bytes(2, &over)).unwrap().unwrap();
    assert_eq!(
        frame.message(),
        Err(FrameError::TooManyOps {
            count: BATCH_OPS_MAX as u64 + 1,
            max: BATCH_OPS_MAX as u32,
            request_id: 2,
        })
    );
}

#[test]
fn bytes_wanted_sizes_reads() {
    let decoder = FrameDecoder::new();
    let bytes = frame_bytes(1, &hello());
    assert_eq!(decoder.bytes_wanted(&[]), HEADER_BYTES);
    assert_eq!(decoder.bytes_wanted(&bytes[..HEADER_BYTES]), bytes.len());
}

#[test]
fn shard_of_matches_the_documented_function() {
    // docs/protocol.md: CRC32C (Castagnoli) of the UTF-8 bytes, modulo 256.
    for key in ["sku-1", "user-42", "", "ü"] {
        assert_eq!(
            u32::from(shard_of(key)),
            crc32c::crc32c(key.as_bytes()) % 256
        );
    }
    assert_eq!(shard_of("sku-1"), 216);
    assert_eq!(shard_of("user-42"), 14);
}

#[test]
fn results_are_shed_to_fit_a_frame() {
    use reserva_protocol::encode_results;
    use reserva_protocol::engine::{Currency, Money, Sku};
    let big = |i: usize| {
        Ok(Reply::Sku(Sku {
            sku: format!("sku-{i}"),
            seller_id: "s".into(),
            title: "x".repeat(if i.is_multiple_of(3) { 400_000 } else { 10 }),
            price: Money {
                amount_minor: 1,
                currency: Currency(*b"EUR"),
            },
            warehouses: vec![],
        }))
    };
    let mut results = Results {
        results: (0..9).map(big).collect(),
    };
    results.results.push(Err(WireError::Timeout));
    let original = results.clone();
    let mut out = BytesMut::new();
    let replaced = encode_results(5, &mut results, FRAME_BYTES_MAX, &mut out).unwrap();
    // 3 replies of 400 KB: one must go.
    assert_eq!(replaced, 1);
    assert!(out.len() <= HEADER_BYTES + FRAME_BYTES_MAX);
    let frame = decode_all(&out).unwrap().unwrap();
    let Message::Results(got) = frame.message().unwrap() else {
        panic!("not RESULTS");
    };
    assert_eq!(got, results);
    for (i, (before, after)) in original.results.iter().zip(&got.results).enumerate() {
        if before != after {
            assert_eq!(i % 3, 0);
            assert!(matches!(after, Err(WireError::FrameTooLarge { .. })));
        }
    }
    // What fits is untouched.
    let mut small = Results {
        results: vec![big(1), big(2)],
    };
    let mut out = Vec::new();
    assert_eq!(encode_results(6, &mut small, 1 << 20, &mut out), Ok(0));
}

#[test]
fn hello_frame_bytes_are_pinned() {
    // The worked example in docs/protocol.md: HELLO, request id 0.
    let m = Message::Hello(Hello {
        protocol_version: 2,
        credential: "secret".into(),
        client_name: "loadgen-7f3a".into(),
    });
    let bytes = frame_bytes(0, &m);
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex.join(" "), HELLO_HEX);
}

const HELLO_HEX: &str = "52 56 02 01 00 00 00 00 00 00 00 00 00 00 00 00 20 00 00 00 fa 9d a6 de \
     6c 6f 61 64 67 65 6e 2d 37 66 33 61 02 00 00 00 73 65 63 72 65 74 ff ff 8c 00 00 00 e8 ff ff ff";
