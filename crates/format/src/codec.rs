//! Typed messages: a small codec trait over serde.
//!
//! The default is [`Postcard`] (maintained, compact, `no_std`-friendly). `Bincode1` (cargo
//! feature `bincode`) reads and writes bincode 1.3 for users whose data is already
//! bincode-encoded; bincode itself is unmaintained (RUSTSEC-2025-0141).

use serde::{de::DeserializeOwned, Serialize};

/// A serialization failed.
#[derive(Debug)]
pub struct CodecError(pub String);

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "codec error: {}", self.0)
    }
}

impl std::error::Error for CodecError {}

/// Turns values into bytes and back.
pub trait Codec {
    /// Append the encoding of `value` to `out` (cleared first).
    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError>;
    /// Decode a value from `bytes`.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError>;
}

/// The default codec: postcard.
#[derive(Clone, Copy, Debug, Default)]
pub struct Postcard;

impl Codec for Postcard {
    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.clear();
        let buf = std::mem::take(out);
        *out = postcard::to_extend(value, buf).map_err(|e| CodecError(e.to_string()))?;
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        postcard::from_bytes(bytes).map_err(|e| CodecError(e.to_string()))
    }
}

/// bincode 1.3 (feature `bincode`), for data that is already bincode-encoded.
#[cfg(feature = "bincode")]
#[derive(Clone, Copy, Debug, Default)]
pub struct Bincode1;

#[cfg(feature = "bincode")]
impl Codec for Bincode1 {
    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.clear();
        bincode::serialize_into(out, value).map_err(|e| CodecError(e.to_string()))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        bincode::deserialize(bytes).map_err(|e| CodecError(e.to_string()))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Quote {
        sym: String,
        px: f64,
    }

    #[test]
    fn postcard_round_trip() {
        let q = Quote { sym: "ABC".into(), px: 1.5 };
        let mut out = vec![9, 9];
        Postcard.encode(&q, &mut out).unwrap();
        assert_eq!(Postcard.decode::<Quote>(&out).unwrap(), q);
        assert!(Postcard.decode::<Quote>(&[0xff]).is_err());
    }
}
