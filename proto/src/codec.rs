//! The one place that calls bincode. Every decode is bounded by a size limit so a
//! hostile or truncated frame can neither allocate without bound nor panic.
//!
//! bincode 1.x is unmaintained upstream (RUSTSEC-2025-0141); keeping every call
//! here means replacing it later touches one file.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

/// Upper bound for a Raft RPC or forwarded command on the cluster port.
pub const MAX_FRAME_BYTES: u64 = 16 * 1024 * 1024;

/// Upper bound for one record stored in sled (log entry, state-machine record).
pub const MAX_RECORD_BYTES: u64 = 8 * 1024 * 1024;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The input is longer than the limit allowed for this kind of frame.
    #[error("frame exceeds the size limit of {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded.
        limit: u64,
    },
    /// The input is not a valid encoding (garbage, truncated, trailing bytes).
    #[error("malformed frame: {0}")]
    Malformed(String),
}

fn options(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(limit)
        .with_little_endian()
        .with_varint_encoding()
        .reject_trailing_bytes()
}

/// Encodes `value`; fails only if the encoding would exceed `limit` bytes.
pub fn encode_with_limit<T: Serialize + ?Sized>(
    value: &T,
    limit: u64,
) -> Result<Vec<u8>, CodecError> {
    options(limit)
        .serialize(value)
        .map_err(|e| map_err(e, limit))
}

/// Encodes `value` for the cluster port.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_with_limit(value, MAX_FRAME_BYTES)
}

/// Decodes a value from `bytes`, refusing inputs over `limit` bytes and any
/// trailing bytes after the value.
pub fn decode_with_limit<T: DeserializeOwned>(bytes: &[u8], limit: u64) -> Result<T, CodecError> {
    if bytes.len() as u64 > limit {
        return Err(CodecError::TooLarge { limit });
    }
    options(limit)
        .deserialize(bytes)
        .map_err(|e| map_err(e, limit))
}

/// Decodes a frame received on the cluster port.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_with_limit(bytes, MAX_FRAME_BYTES)
}

/// Encodes a record for storage in sled.
pub fn encode_record<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_with_limit(value, MAX_RECORD_BYTES)
}

/// Decodes a record read from sled.
pub fn decode_record<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_with_limit(bytes, MAX_RECORD_BYTES)
}

#[allow(clippy::boxed_local)] // bincode's error type is a Box
fn map_err(e: bincode::Error, limit: u64) -> CodecError {
    match *e {
        bincode::ErrorKind::SizeLimit => CodecError::TooLarge { limit },
        other => CodecError::Malformed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Sample {
        name: String,
        items: Vec<u64>,
    }

    fn sample() -> Sample {
        Sample {
            name: "alice".into(),
            items: vec![1, 2, 300, u64::MAX],
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(decode::<Sample>(&bytes).unwrap(), sample());
    }

    #[test]
    fn truncated_input_is_malformed() {
        let bytes = encode(&sample()).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                matches!(
                    decode::<Sample>(&bytes[..cut]),
                    Err(CodecError::Malformed(_))
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&sample()).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<Sample>(&bytes),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_input_is_refused_before_decoding() {
        let bytes = vec![0u8; 64];
        assert!(matches!(
            decode_with_limit::<Sample>(&bytes, 16),
            Err(CodecError::TooLarge { limit: 16 })
        ));
    }

    #[test]
    fn huge_declared_length_hits_the_limit_not_the_allocator() {
        // A varint length prefix claiming ~2^62 elements.
        let mut bytes = vec![5u8, b'a', b'b', b'c', b'd', b'e'];
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f]);
        let err = decode_with_limit::<Sample>(&bytes, 1024).unwrap_err();
        assert!(matches!(
            err,
            CodecError::TooLarge { .. } | CodecError::Malformed(_)
        ));
    }

    #[test]
    fn encode_respects_limit() {
        let big = Sample {
            name: "x".repeat(100),
            items: vec![],
        };
        assert!(matches!(
            encode_with_limit(&big, 10),
            Err(CodecError::TooLarge { .. })
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn values_round_trip(name in "\\PC{0,40}", items in proptest::collection::vec(proptest::prelude::any::<u64>(), 0..20)) {
            let s = Sample { name, items };
            let bytes = encode(&s).unwrap();
            proptest::prop_assert_eq!(decode::<Sample>(&bytes).unwrap(), s);
        }

        /// Whatever decodes re-encodes canonically (never longer than the
        /// input, and to a fixed point); what is over the limit never
        /// decodes.
        #[test]
        fn arbitrary_bytes_decode_canonically_within_the_limit(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            limit in 0u64..80,
        ) {
            match decode_with_limit::<Sample>(&bytes, limit) {
                Ok(v) => {
                    proptest::prop_assert!(bytes.len() as u64 <= limit);
                    let again = encode_with_limit(&v, limit).unwrap();
                    proptest::prop_assert!(again.len() <= bytes.len());
                    proptest::prop_assert_eq!(decode_with_limit::<Sample>(&again, limit).unwrap(), v);
                }
                Err(CodecError::TooLarge { limit: l }) => proptest::prop_assert_eq!(l, limit),
                Err(CodecError::Malformed(_)) => proptest::prop_assert!(bytes.len() as u64 <= limit),
            }
        }

        /// A declared length far beyond the input never reaches the
        /// allocator: decoding fails, it does not abort.
        #[test]
        fn declared_lengths_do_not_allocate(len in 1u64 << 20.., tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16)) {
            let mut bytes = vec![0u8, 253];
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend(tail);
            proptest::prop_assert!(decode_with_limit::<Sample>(&bytes, 1024).is_err());
        }
    }
}
