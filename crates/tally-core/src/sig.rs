//! Ed25519 keys and Tally's one signature-acceptance rule.
//!
//! Libraries disagree on Ed25519 edge cases (small-order points, non-canonical encodings,
//! cofactored versus cofactorless equations). Tally accepts exactly one set, defined by
//! [`verify`] and written out in `specs/signatures.md`:
//!
//! 1. the public key `A` is a canonical encoding of a curve point that is not of small order;
//! 2. `R` is a canonical encoding of a curve point that is not of small order;
//! 3. `S` is canonical (`S < L`);
//! 4. the **cofactored** equation holds: `[8][S]B = [8]R + [8][k]A`, `k = SHA-512(R || A || M) mod L`.
//!
//! The cofactored equation is what makes batch verification a true fast path: a random
//! linear combination of cofactored equations holds exactly when every one holds (up to a
//! 2^-128 chance of a false accept for a forged batch), whereas a cofactorless batch can
//! accept or reject a torsioned signature depending on the random weights, so a node and
//! an auditor batching differently could disagree. `ed25519-dalek`'s own `verify_batch`
//! is cofactorless, so both paths here are built on `curve25519-dalek` directly.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::Signer;
use rand::RngCore;
use sha2::{Digest, Sha512};

/// Ed25519 public key bytes as they appear on the wire.
pub type PublicKeyBytes = [u8; 32];
/// Ed25519 signature bytes (`R || S`) as they appear on the wire.
pub type SignatureBytes = [u8; 64];

/// Signatures checked together before the batch equation is tried. Larger batches amortise
/// the multiscalar multiplication better, but a failure costs a full individual re-check.
pub const BATCH_SIGNATURES_MAX: usize = 64;

/// Why a key or signature was refused. Each variant names one failed condition of the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("public key is not a canonical encoding of a curve point")]
    KeyEncoding,
    #[error("public key is a small-order (weak) point")]
    KeySmallOrder,
    #[error("public key has a torsion component; honestly generated keys never do")]
    KeyTorsion,
    #[error("signature R is not a canonical encoding of a curve point")]
    REncoding,
    #[error("signature R is a small-order point")]
    RSmallOrder,
    #[error("signature S is not below the group order")]
    SNonCanonical,
    #[error("signature does not verify")]
    Equation,
}

/// The field prime p = 2^255 - 19, little-endian.
const FIELD_PRIME: [u8; 32] = {
    let mut p = [0xffu8; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    p
};

/// Is `bytes` the canonical encoding of its point, i.e. would decompressing and
/// re-compressing give the same bytes back? That holds exactly when the y-coordinate is
/// below p and the sign bit is clear for the two points with x = 0 (y = 1 and y = p - 1).
/// Checked on the bytes, because re-compressing costs a field inversion per signature.
fn is_canonical_encoding(bytes: &[u8; 32]) -> bool {
    let mut y = *bytes;
    let sign = y[31] >> 7;
    y[31] &= 0x7f;
    // Little-endian comparison y < p, from the most significant byte down.
    let below_p = y.iter().rev().zip(FIELD_PRIME.iter().rev()).find(|(a, b)| a != b).is_some_and(|(a, b)| a < b);
    let mut one = [0u8; 32];
    one[0] = 1;
    let mut p_minus_one = FIELD_PRIME;
    p_minus_one[0] -= 1;
    let x_is_zero = y == one || y == p_minus_one;
    below_p && !(x_is_zero && sign == 1)
}

/// The canonical encodings of the eight points of small order (the torsion subgroup, which
/// is cyclic of order 8): the identity, the point of order 2, two of order 4 and four of
/// order 8. A canonical encoding is of a small-order point exactly when it is one of these,
/// so rules 1 and 2 compare bytes instead of multiplying the point by 8 (which was 5% of
/// an audit's replay). The unit test `small_order_encodings_are_the_torsion_subgroup` derives
/// the list from the curve.
const SMALL_ORDER_ENCODINGS: [[u8; 32]; 8] = {
    const fn le(hi: u8, lo: u8, fill: u8) -> [u8; 32] {
        let mut b = [fill; 32];
        b[0] = lo;
        b[31] = hi;
        b
    }
    const fn order8(b: &[u8; 32], sign: bool) -> [u8; 32] {
        let mut out = *b;
        if sign {
            out[31] |= 0x80;
        }
        out
    }
    const A: [u8; 32] = [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98, 0xf0, 0xd5, 0xdf,
        0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x05,
    ];
    const B: [u8; 32] = [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f, 0x2a, 0x20,
        0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a,
    ];
    [
        le(0x00, 0x01, 0x00), // identity: y = 1
        le(0x7f, 0xec, 0xff), // order 2: y = p - 1
        le(0x00, 0x00, 0x00), // order 4: y = 0, x even
        le(0x80, 0x00, 0x00), // order 4: y = 0, x odd
        order8(&A, false),
        order8(&A, true),
        order8(&B, false),
        order8(&B, true),
    ]
};

/// Is the canonical encoding `bytes` that of a small-order point? Only meaningful for
/// canonical encodings (each point has exactly one).
fn is_small_order_encoding(bytes: &[u8; 32]) -> bool {
    SMALL_ORDER_ENCODINGS.contains(bytes)
}

/// Decompress a point, refusing non-canonical encodings (y >= p, or a set sign bit on x = 0).
fn canonical_point(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    if !is_canonical_encoding(bytes) {
        return None;
    }
    CompressedEdwardsY(*bytes).decompress()
}

/// A public key that passed rule 1. Only [`PublicKey::from_bytes`] makes one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey {
    bytes: PublicKeyBytes,
    point: EdwardsPoint,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.bytes))
    }
}

impl PublicKey {
    /// Parse a key under rule 1: canonical and not of small order.
    pub fn from_bytes(bytes: &PublicKeyBytes) -> Result<Self, SignatureError> {
        let point = canonical_point(bytes).ok_or(SignatureError::KeyEncoding)?;
        if is_small_order_encoding(bytes) {
            return Err(SignatureError::KeySmallOrder);
        }
        Ok(Self { bytes: *bytes, point })
    }

    /// The stricter check made when a key is registered on the ledger: rule 1 and no
    /// torsion component at all. A key made as `a * B` always passes; refusing the rest at
    /// registration keeps odd keys out of the ledger without changing the signature rule.
    pub fn for_registration(bytes: &PublicKeyBytes) -> Result<Self, SignatureError> {
        let key = Self::from_bytes(bytes)?;
        if !key.point.is_torsion_free() {
            return Err(SignatureError::KeyTorsion);
        }
        Ok(key)
    }

    pub fn as_bytes(&self) -> &PublicKeyBytes {
        &self.bytes
    }
}

/// The parts of a signature that rules 2 and 3 check, ready for the equation.
struct ParsedSignature {
    r: EdwardsPoint,
    s: Scalar,
}

fn parse_signature(sig: &SignatureBytes) -> Result<ParsedSignature, SignatureError> {
    let r_bytes: [u8; 32] = sig[..32].try_into().expect("64-byte signature");
    let s_bytes: [u8; 32] = sig[32..].try_into().expect("64-byte signature");
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)).ok_or(SignatureError::SNonCanonical)?;
    let r = canonical_point(&r_bytes).ok_or(SignatureError::REncoding)?;
    if is_small_order_encoding(&r_bytes) {
        return Err(SignatureError::RSmallOrder);
    }
    Ok(ParsedSignature { r, s })
}

/// `k = SHA-512(R || A || M) mod L`, with the message given as parts so callers can sign a
/// domain prefix and a body without concatenating them.
fn challenge(sig: &SignatureBytes, key: &PublicKey, message: &[&[u8]]) -> Scalar {
    let mut h = Sha512::new();
    h.update(&sig[..32]);
    h.update(key.bytes);
    for part in message {
        h.update(part);
    }
    Scalar::from_hash(h)
}

/// Tally's signature-acceptance rule (see the module docs). `message` is the concatenation
/// of its parts. This is the only definition; [`verify_batch`] agrees with it.
pub fn verify(key: &PublicKey, message: &[&[u8]], sig: &SignatureBytes) -> Result<(), SignatureError> {
    let s_bytes: [u8; 32] = sig[32..].try_into().expect("64-byte signature");
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)).ok_or(SignatureError::SNonCanonical)?;
    let k = challenge(sig, key, message);
    // R' = [S]B - [k]A. Fast path, taken by every honest signature: if R' compresses to
    // the given R bytes and is not of small order, every rule holds (a compression is
    // canonical, and R = R' satisfies the equation exactly, so also times 8) and R never
    // needs decompressing. Otherwise the full rule below decides, with the same verdict
    // and error it always gave.
    let r_prime = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &-key.point, &s);
    let r_bytes: &[u8; 32] = sig[..32].try_into().expect("64-byte signature");
    if r_prime.compress().as_bytes() == r_bytes && !is_small_order_encoding(r_bytes) {
        return Ok(());
    }
    let parsed = parse_signature(sig)?;
    if (r_prime - parsed.r).mul_by_cofactor().is_identity() { Ok(()) } else { Err(SignatureError::Equation) }
}

/// One signature to check in a batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchItem<'a> {
    pub key: &'a PublicKey,
    pub message: &'a [&'a [u8]],
    pub signature: &'a SignatureBytes,
}

/// Verify many signatures; the result for each item is exactly what [`verify`] says of it.
///
/// Items failing rules 2-3 are settled without the equation. The rest are checked in
/// chunks of [`BATCH_SIGNATURES_MAX`] with one random linear combination of their cofactored
/// equations; a chunk that fails is re-checked one by one to find the bad items.
pub fn verify_batch(items: &[BatchItem<'_>]) -> Vec<Result<(), SignatureError>> {
    // A batch of one gains nothing from the combined equation and would miss the fast path.
    if let [item] = items {
        return vec![verify(item.key, item.message, item.signature)];
    }
    let mut results: Vec<Result<(), SignatureError>> = Vec::with_capacity(items.len());
    let mut pending: Vec<(usize, ParsedSignature, Scalar)> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match parse_signature(item.signature) {
            Ok(parsed) => {
                let k = challenge(item.signature, item.key, item.message);
                pending.push((i, parsed, k));
                results.push(Ok(()));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    let mut rng = rand::thread_rng();
    for chunk in pending.chunks(BATCH_SIGNATURES_MAX) {
        if !batch_equation_holds(items, chunk, &mut rng) {
            for (i, _, _) in chunk {
                let item = &items[*i];
                results[*i] = verify(item.key, item.message, item.signature);
            }
        }
    }
    results
}

/// `[8]( [sum z_i S_i] B - sum [z_i] R_i - sum [z_i k_i] A_i ) == identity` with fresh
/// random 128-bit weights `z_i`.
///
/// Terms for the same key are merged before the multiscalar multiplication:
/// `[z_1 k_1]A + [z_2 k_2]A = [z_1 k_1 + z_2 k_2]A`. That is the same equation, evaluated
/// with one point per distinct key instead of one per signature: a lab signs its whole
/// crawl with a few keys, so a chunk of 64 receipts costs about 66 points instead of 129.
fn batch_equation_holds(
    items: &[BatchItem<'_>],
    chunk: &[(usize, ParsedSignature, Scalar)],
    rng: &mut impl RngCore,
) -> bool {
    let mut b_coefficient = Scalar::ZERO;
    let mut scalars = Vec::with_capacity(1 + 2 * chunk.len());
    let mut points = Vec::with_capacity(1 + 2 * chunk.len());
    // Where each distinct key's coefficient is in `scalars`.
    let mut key_slots: Vec<(&PublicKeyBytes, usize)> = Vec::new();
    scalars.push(Scalar::ZERO); // placeholder for the basepoint coefficient
    points.push(ED25519_BASEPOINT_POINT);
    for (i, parsed, k) in chunk {
        let mut z_bytes = [0u8; 16];
        rng.fill_bytes(&mut z_bytes);
        let z = Scalar::from(u128::from_le_bytes(z_bytes));
        b_coefficient += z * parsed.s;
        scalars.push(-z);
        points.push(parsed.r);
        let key = items[*i].key;
        // A linear scan: a chunk holds at most 64 signatures and, in practice, a handful of
        // keys; hashing each key would cost more than comparing it.
        match key_slots.iter().find(|(bytes, _)| *bytes == &key.bytes) {
            Some(&(_, slot)) => scalars[slot] -= z * k,
            None => {
                key_slots.push((&key.bytes, scalars.len()));
                scalars.push(-(z * k));
                points.push(key.point);
            }
        }
    }
    scalars[0] = b_coefficient;
    EdwardsPoint::vartime_multiscalar_mul(scalars, points).mul_by_cofactor().is_identity()
}

/// A signing key. Holds the secret; never printed.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(public {})", hex::encode(self.public_bytes()))
    }
}

impl SigningKey {
    /// A fresh key from the operating system's randomness.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        Self::from_seed(&seed)
    }

    /// The RFC 8032 key for a 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public_bytes(&self) -> PublicKeyBytes {
        self.0.verifying_key().to_bytes()
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_bytes(&self.public_bytes()).expect("a derived public key is valid")
    }

    /// Sign the concatenation of `message` parts.
    pub fn sign(&self, message: &[&[u8]]) -> SignatureBytes {
        let joined = message.concat();
        self.0.sign(&joined).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signature made by the key verifies; altering message, signature or key breaks it.
    #[test]
    fn sign_and_verify_round_trip() {
        let key = SigningKey::from_seed(&[7u8; 32]);
        let public = key.public_key();
        let sig = key.sign(&[b"tally/test/v1\0", b"body"]);
        assert_eq!(verify(&public, &[b"tally/test/v1\0", b"body"], &sig), Ok(()));
        assert_eq!(verify(&public, &[b"tally/test/v1\0body"], &sig), Ok(()));
        assert_eq!(verify(&public, &[b"tally/test/v1\0", b"bodY"], &sig), Err(SignatureError::Equation));
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(verify(&public, &[b"tally/test/v1\0body"], &bad).is_err());
        let other = SigningKey::from_seed(&[8u8; 32]).public_key();
        assert_eq!(verify(&other, &[b"tally/test/v1\0body"], &sig), Err(SignatureError::Equation));
    }

    /// The byte-level canonicity check agrees with its definition (decompress, re-compress,
    /// compare) on every encoding that decompresses: random ones and the edge values around
    /// p and the two x = 0 points, with and without the sign bit.
    #[test]
    fn canonical_check_matches_recompression() {
        let mut cases: Vec<[u8; 32]> = Vec::new();
        for low in [0x00u8, 0x01, 0x02, 0xeb, 0xec, 0xed, 0xee, 0xff] {
            for top in [0x00u8, 0x7f] {
                for fill in [0x00u8, 0xff] {
                    let mut b = [fill; 32];
                    b[0] = low;
                    b[31] = top;
                    cases.push(b);
                    b[31] |= 0x80;
                    cases.push(b);
                }
            }
        }
        let mut rng = rand::thread_rng();
        for _ in 0..20_000 {
            let mut b = [0u8; 32];
            rng.fill_bytes(&mut b);
            cases.push(b);
        }
        let mut decompressed = 0;
        for b in &cases {
            if let Some(point) = CompressedEdwardsY(*b).decompress() {
                decompressed += 1;
                assert_eq!(is_canonical_encoding(b), point.compress().as_bytes() == b, "{}", hex::encode(b));
            }
        }
        // About half of all encodings decompress (10,000 +- ~70 here); 9,000 is far below that.
        assert!(decompressed > 9_000, "enough encodings decompressed to mean something: {decompressed}");
    }

    /// Terms for the same key are merged in the batch equation: with three keys signing 200
    /// messages, a bad signature among a key's good ones is still found, alone, and a
    /// signature checked against another of the batch's keys still fails.
    #[test]
    fn batch_with_shared_keys_finds_the_bad_signatures() {
        let keys: Vec<SigningKey> = (0..3u8).map(|i| SigningKey::from_seed(&[i + 40; 32])).collect();
        let publics: Vec<PublicKey> = keys.iter().map(SigningKey::public_key).collect();
        let messages: Vec<Vec<u8>> = (0..200u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let mut sigs: Vec<SignatureBytes> = messages.iter().enumerate().map(|(i, m)| keys[i % 3].sign(&[m])).collect();
        let mut key_of: Vec<usize> = (0..200).map(|i| i % 3).collect();
        sigs[5][40] ^= 1; // equation fails, key 2 (shared by 66 others)
        sigs[64][33] ^= 0x10; // S changes: still canonical, equation fails; last of a chunk
        key_of[130] = (key_of[130] + 1) % 3; // a good signature, checked against another batch key
        let parts: Vec<[&[u8]; 1]> = messages.iter().map(|m| [m.as_slice()]).collect();
        let items: Vec<BatchItem<'_>> =
            (0..200).map(|i| BatchItem { key: &publics[key_of[i]], message: &parts[i], signature: &sigs[i] }).collect();
        let got = verify_batch(&items);
        for (i, item) in items.iter().enumerate() {
            assert_eq!(got[i], verify(item.key, item.message, item.signature), "item {i}");
        }
        let bad: Vec<usize> = (0..200).filter(|i| got[*i].is_err()).collect();
        assert_eq!(bad, vec![5, 64, 130]);
        // The combined equation itself (not the one-by-one fallback) accepts good
        // signatures by shared keys and refuses a chunk with any one of the bad ones.
        let good: Vec<BatchItem<'_>> = (0..200).filter(|i| ![5, 64, 130].contains(i)).map(|i| items[i]).collect();
        assert!(equation_holds(&good[..64]));
        assert!(equation_holds(&good[100..]));
        for bad in [5, 64, 130] {
            let mut chunk = good[..63].to_vec();
            chunk.push(items[bad]);
            assert!(!equation_holds(&chunk), "item {bad}");
        }
    }

    /// The batch equation over `items`, without the fallback to one-by-one checks.
    fn equation_holds(items: &[BatchItem<'_>]) -> bool {
        let chunk: Vec<(usize, ParsedSignature, Scalar)> = items
            .iter()
            .enumerate()
            .map(|(i, it)| {
                let parsed = parse_signature(it.signature).expect("rules 2-3 hold");
                (i, parsed, challenge(it.signature, it.key, it.message))
            })
            .collect();
        batch_equation_holds(items, &chunk, &mut rand::thread_rng())
    }

    /// The byte list is exactly the torsion subgroup: an order-8 point from it generates
    /// eight distinct points whose encodings are the list, each of small order; and for
    /// points with and without a torsion component the byte test agrees with `[8]P = 0`.
    #[test]
    fn small_order_encodings_are_the_torsion_subgroup() {
        let generator = CompressedEdwardsY(SMALL_ORDER_ENCODINGS[4]).decompress().expect("a point");
        let four_times = generator + generator + generator + generator;
        assert!(!four_times.is_identity(), "the generator has order 8");
        let mut multiples: Vec<[u8; 32]> = Vec::new();
        let mut p = EdwardsPoint::default();
        for _ in 0..8 {
            assert!(p.is_small_order());
            multiples.push(p.compress().to_bytes());
            p += generator;
        }
        assert!(p.is_identity(), "8 times the generator is the identity");
        let mut listed = SMALL_ORDER_ENCODINGS.to_vec();
        listed.sort();
        multiples.sort();
        assert_eq!(listed, multiples);
        for b in &SMALL_ORDER_ENCODINGS {
            assert!(is_canonical_encoding(b), "{}", hex::encode(b));
        }
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            let point = SigningKey::from_seed(&seed).public_key().point;
            for torsion in [EdwardsPoint::default(), generator, generator + generator] {
                for q in [point + torsion, torsion] {
                    let bytes = q.compress().to_bytes();
                    assert_eq!(is_small_order_encoding(&bytes), q.is_small_order(), "{}", hex::encode(bytes));
                }
            }
        }
    }

    /// A batch with some bad signatures reports exactly the bad ones, matching `verify`.
    #[test]
    fn batch_finds_the_bad_signatures() {
        let keys: Vec<SigningKey> = (0..150u8).map(|i| SigningKey::from_seed(&[i; 32])).collect();
        let publics: Vec<PublicKey> = keys.iter().map(SigningKey::public_key).collect();
        let messages: Vec<Vec<u8>> = (0..150u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let mut sigs: Vec<SignatureBytes> = keys.iter().zip(&messages).map(|(k, m)| k.sign(&[m])).collect();
        sigs[3][40] ^= 1; // equation fails
        sigs[77][63] |= 0xf0; // S not canonical
        sigs[140][5] ^= 4; // R changes
        let parts: Vec<[&[u8]; 1]> = messages.iter().map(|m| [m.as_slice()]).collect();
        let items: Vec<BatchItem<'_>> =
            (0..150).map(|i| BatchItem { key: &publics[i], message: &parts[i], signature: &sigs[i] }).collect();
        let got = verify_batch(&items);
        for (i, item) in items.iter().enumerate() {
            assert_eq!(got[i], verify(item.key, item.message, item.signature), "item {i}");
        }
        let bad: Vec<usize> = (0..150).filter(|i| got[*i].is_err()).collect();
        assert_eq!(bad, vec![3, 77, 140]);
    }
}
