//! The canonical binary encoding: bincode 2 with one fixed configuration, plus a few
//! hand-written field types so that every value has exactly one encoding and every length
//! is bounded before anything is allocated. `specs/encoding.md` states the resulting byte
//! layout without reference to bincode; the vectors in `specs/vectors/` pin it.

use bincode::config::{Configuration, Fixint, LittleEndian};
use bincode::de::read::Reader;
use bincode::de::{Decode, Decoder};
use bincode::enc::write::Writer;
use bincode::enc::{Encode, Encoder};
use bincode::error::{DecodeError, EncodeError};

/// Little-endian, fixed-width integers: a u64 is always 8 bytes, so there are no
/// alternative (non-minimal) varint encodings to reject.
pub const CONFIG: Configuration<LittleEndian, Fixint> =
    bincode::config::standard().with_little_endian().with_fixed_int_encoding();

/// Why bytes were refused by a canonical decoder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("{len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("malformed encoding: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    #[error("unknown entry kind {0}")]
    UnknownKind(u8),
    #[error("field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: &'static str },
}

impl CodecError {
    /// A stable, machine-readable code for this error (used in API problem documents).
    pub fn code(&self) -> &'static str {
        match self {
            CodecError::TooLarge { .. } => "entry-too-large",
            CodecError::Malformed(_) => "malformed-encoding",
            CodecError::TrailingBytes(_) => "trailing-bytes",
            CodecError::UnknownKind(_) => "unknown-kind",
            CodecError::Invalid { .. } => "invalid-field",
        }
    }
}

impl From<DecodeError> for CodecError {
    fn from(e: DecodeError) -> Self {
        CodecError::Malformed(e.to_string())
    }
}

/// Encode a value into a fresh vector.
pub fn encode<T: Encode>(value: &T) -> Vec<u8> {
    bincode::encode_to_vec(value, CONFIG).expect("encoding into a Vec cannot fail")
}

/// Append the encoding of a value to `out`.
pub fn encode_into<T: Encode>(value: &T, out: &mut Vec<u8>) {
    bincode::encode_into_std_write(value, out, CONFIG).expect("writing into a Vec cannot fail");
}

/// Decode a value that must use every byte of `bytes`.
pub fn decode_exact<T: Decode<()>>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::decode_from_slice(bytes, CONFIG)?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}

/// UTF-8 text of at most `MAX` bytes, encoded as a u16 byte length and the bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Text<const MAX: usize>(String);

impl<const MAX: usize> Text<MAX> {
    const _FITS_U16: () = assert!(MAX <= u16::MAX as usize);

    pub fn new(s: impl Into<String>) -> Result<Self, CodecError> {
        let s = s.into();
        if s.len() > MAX {
            return Err(CodecError::TooLarge { len: s.len(), max: MAX });
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> std::fmt::Debug for Text<MAX> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl<const MAX: usize> std::fmt::Display for Text<MAX> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<const MAX: usize> Encode for Text<MAX> {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        let () = Self::_FITS_U16;
        let len = u16::try_from(self.0.len()).expect("Text length is bounded by MAX <= u16::MAX");
        len.encode(encoder)?;
        encoder.writer().write(self.0.as_bytes())
    }
}

impl<Context, const MAX: usize> Decode<Context> for Text<MAX> {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let len = usize::from(u16::decode(decoder)?);
        if len > MAX {
            return Err(DecodeError::Other("text longer than its field allows"));
        }
        decoder.claim_bytes_read(len)?;
        let mut buf = vec![0u8; len];
        decoder.reader().read(&mut buf)?;
        let s = String::from_utf8(buf).map_err(|e| DecodeError::Utf8 { inner: e.utf8_error() })?;
        Ok(Self(s))
    }
}
impl<'de, Context, const MAX: usize> bincode::BorrowDecode<'de, Context> for Text<MAX> {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Decode::decode(decoder)
    }
}

/// A list of at most `MAX` values, encoded as a u16 count and the values. The count is
/// checked against `MAX` before anything is allocated, so a hostile count cannot make the
/// decoder reserve memory the entry does not carry.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct List<T, const MAX: usize>(Vec<T>);

impl<T, const MAX: usize> Default for List<T, MAX> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T, const MAX: usize> List<T, MAX> {
    const _FITS_U16: () = assert!(MAX <= u16::MAX as usize);

    pub fn new(items: Vec<T>) -> Result<Self, CodecError> {
        if items.len() > MAX {
            return Err(CodecError::TooLarge { len: items.len(), max: MAX });
        }
        Ok(Self(items))
    }

    pub fn as_slice(&self) -> &[T] {
        &self.0
    }

    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a, T, const MAX: usize> IntoIterator for &'a List<T, MAX> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T: std::fmt::Debug, const MAX: usize> std::fmt::Debug for List<T, MAX> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl<T: Encode, const MAX: usize> Encode for List<T, MAX> {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        let () = Self::_FITS_U16;
        let len = u16::try_from(self.0.len()).expect("List length is bounded by MAX <= u16::MAX");
        len.encode(encoder)?;
        for item in &self.0 {
            item.encode(encoder)?;
        }
        Ok(())
    }
}

impl<Context, T: Decode<Context>, const MAX: usize> Decode<Context> for List<T, MAX> {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let len = usize::from(u16::decode(decoder)?);
        if len > MAX {
            return Err(DecodeError::Other("list longer than its field allows"));
        }
        let mut items = Vec::with_capacity(len);
        for _ in 0..len {
            items.push(T::decode(decoder)?);
        }
        Ok(Self(items))
    }
}
impl<'de, Context, T: Decode<Context>, const MAX: usize> bincode::BorrowDecode<'de, Context> for List<T, MAX> {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Decode::decode(decoder)
    }
}

impl<const MAX: usize> serde::Serialize for Text<MAX> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<T: serde::Serialize, const MAX: usize> serde::Serialize for List<T, MAX> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Serialize fixed-size bytes (keys, hashes, nonces) as lower-case hex in JSON views.
pub fn hex_bytes<S: serde::Serializer, const N: usize>(bytes: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

/// Declares a fieldless enum encoded as one byte with explicit, stable codes; any other
/// byte fails to decode.
#[macro_export]
macro_rules! u8_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $code:literal => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u8)]
        $vis enum $name { $($(#[$vmeta])* $variant = $code,)+ }

        impl $name {
            /// Every value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn code(self) -> u8 { self as u8 }

            pub fn from_code(code: u8) -> Option<Self> {
                match code { $($code => Some($name::$variant),)+ _ => None }
            }

            /// The stable text form used in documents and APIs.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl bincode::Encode for $name {
            fn encode<E: bincode::enc::Encoder>(&self, e: &mut E) -> Result<(), bincode::error::EncodeError> {
                bincode::Encode::encode(&self.code(), e)
            }
        }

        impl<Context> bincode::Decode<Context> for $name {
            fn decode<D: bincode::de::Decoder<Context = Context>>(d: &mut D) -> Result<Self, bincode::error::DecodeError> {
                let code: u8 = bincode::Decode::decode(d)?;
                Self::from_code(code).ok_or(bincode::error::DecodeError::Other(concat!("unknown ", stringify!($name), " code")))
            }
        }
        bincode::impl_borrow_decode!($name);

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text round-trips, refuses over-long values on both sides, and refuses bad UTF-8.
    #[test]
    fn text_is_bounded_and_utf8() {
        let t = Text::<5>::new("héllo".chars().take(4).collect::<String>()).unwrap();
        let bytes = encode(&t);
        assert_eq!(&bytes[..2], &[5, 0]);
        assert_eq!(decode_exact::<Text<5>>(&bytes).unwrap(), t);
        assert!(Text::<5>::new("toolong").is_err());
        assert!(decode_exact::<Text<5>>(&[6, 0, b'a', b'b', b'c', b'd', b'e', b'f']).is_err());
        assert!(decode_exact::<Text<5>>(&[2, 0, 0xff, 0xfe]).is_err());
        assert_eq!(decode_exact::<Text<5>>(&[1, 0, b'a', 0]), Err(CodecError::TrailingBytes(1)));
        assert!(decode_exact::<Text<5>>(&[3, 0, b'a']).is_err());
    }

    /// Lists carry a u16 count that is checked against the bound before allocating.
    #[test]
    fn lists_are_bounded() {
        let l = List::<u16, 3>::new(vec![1, 2]).unwrap();
        let bytes = encode(&l);
        assert_eq!(bytes, [2, 0, 1, 0, 2, 0]);
        assert_eq!(decode_exact::<List<u16, 3>>(&bytes).unwrap(), l);
        assert!(List::<u16, 3>::new(vec![0; 4]).is_err());
        assert!(decode_exact::<List<u16, 3>>(&[0xff, 0xff, 1, 0]).is_err());
        assert!(decode_exact::<List<u16, 3>>(&[2, 0, 1, 0]).is_err());
    }

    /// Options and booleans accept only the bytes 0 and 1 as their tag.
    #[test]
    fn option_tags_are_strict() {
        assert_eq!(decode_exact::<Option<u8>>(&[0]).unwrap(), None);
        assert_eq!(decode_exact::<Option<u8>>(&[1, 9]).unwrap(), Some(9));
        assert!(decode_exact::<Option<u8>>(&[2, 9]).is_err());
        assert!(decode_exact::<bool>(&[2]).is_err());
    }
}
