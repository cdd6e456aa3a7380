//! Encryption at rest: an encrypted volume's keys, the sealing of what it
//! stores, and the age encryption of backups. The only user of the
//! cryptography crates (chacha20poly1305, argon2, age).
//!
//! - A volume's data key is 32 random bytes, made once by `volume create
//!   --encrypt`. The bucket never holds it in the clear: the superblock
//!   keeps it wrapped ([`KeyEnvelope`]) with a key that Argon2id derives
//!   from the password, so `volume rekey` changes the password without
//!   touching any data.
//! - From the data key, BLAKE3's key derivation makes two keys
//!   ([`VolumeKeys`]): one names objects, as a keyed BLAKE3 hash of their
//!   plaintext (so the store never sees a plain hash, which a guess of the
//!   contents could confirm), and one seals them with XChaCha20-Poly1305
//!   under a random 192-bit nonce.
//! - Opening a sealed object authenticates it: a flipped bit, a truncation
//!   or an object sealed with another key is an error, never data.
//! - Backups (`zeroblk backup`) are plain age files, encrypted to the
//!   recipients given, so that `age` alone opens them ([`AgeRecipients`],
//!   [`AgeIdentities`]; see `age.rs`).
//!
//! What is promised: without the password, the store reveals object sizes
//! and how they reference each other, and nothing of their contents.

mod age;
mod envelope;
mod password;

pub use self::age::{AgeIdentities, AgeRecipients, looks_age_encrypted};
pub use envelope::KeyEnvelope;
pub use password::Password;

use std::path::PathBuf;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

/// Bytes a sealed object has beyond its plaintext: the nonce and the tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;

/// Contexts of BLAKE3's key derivation: each key is used for one purpose.
const NAMING_CONTEXT: &str = "zeroblk 2026-12-06 object names";
const SEALING_CONTEXT: &str = "zeroblk 2026-12-06 object sealing";

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the password does not open the volume's key: give the right one")]
    WrongPassword,
    #[error("the sealed object does not authenticate: it was changed, or sealed with another key")]
    NotAuthentic,
    #[error("the key envelope is damaged: {0}")]
    BadEnvelope(String),
    #[error("{0}")]
    BadPassword(String),
    #[error("the system's random number generator failed: {0}")]
    Random(String),
    #[error(
        "`{recipient}` is not an age recipient: {reason}. A recipient is an age public key such as {EXAMPLE_RECIPIENT} (`age-keygen -y IDENTITY_FILE` prints one), or the path of a file of them"
    )]
    BadRecipient {
        recipient: String,
        reason: &'static str,
    },
    #[error(
        "line {line} of the recipients file {}, `{text}`, is not an age recipient: {reason}. Each line holds one age public key (age1..., as `age-keygen -y IDENTITY_FILE` prints it), a # comment, or nothing",
        path.display()
    )]
    BadRecipientLine {
        path: PathBuf,
        line: usize,
        text: String,
        reason: &'static str,
    },
    #[error(
        "the recipients file {} holds no recipient: put an age public key (age1..., as `age-keygen -y IDENTITY_FILE` prints it) on a line of its own",
        path.display()
    )]
    NoRecipientsInFile { path: PathBuf },
    #[error("cannot read the recipients file {}: {source}", path.display())]
    RecipientsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no age recipient was given: pass --age-recipient with an age public key (age1..., as `age-keygen -y IDENTITY_FILE` prints it) or a recipients file"
    )]
    NoRecipients,
    #[error(
        "cannot read the age identity file {}: {source}. Give the file age-keygen wrote (--age-identity FILE)",
        path.display()
    )]
    IdentityFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is not an age identity file: {reason}. Give the file age-keygen wrote (AGE-SECRET-KEY-1... lines; # comments allowed)",
        path.display()
    )]
    BadIdentityFile { path: PathBuf, reason: String },
    #[error(
        "the age identity does not open this backup: it was encrypted to other recipients. Give the identity file (--age-identity) whose public key (`age-keygen -y FILE`) is one of them"
    )]
    WrongIdentity,
    #[error(
        "the age-encrypted object was changed or damaged: {detail}. Nothing of it can be trusted: use another copy, or another backup"
    )]
    AgeDamaged { detail: String },
}

/// What an age recipient looks like, for errors that ask for one.
const EXAMPLE_RECIPIENT: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

/// The keys of one encrypted volume, derived from its data key.
pub struct VolumeKeys {
    naming: Zeroizing<[u8; KEY_LEN]>,
    sealing: XChaCha20Poly1305,
}

impl VolumeKeys {
    fn derive(data_key: &[u8; KEY_LEN]) -> VolumeKeys {
        let naming = Zeroizing::new(blake3::derive_key(NAMING_CONTEXT, data_key));
        let sealing = Zeroizing::new(blake3::derive_key(SEALING_CONTEXT, data_key));
        VolumeKeys {
            naming,
            sealing: XChaCha20Poly1305::new(Key::from_slice(&sealing[..])),
        }
    }

    /// Keys from a fixed data key, for tests.
    #[cfg(test)]
    pub fn for_tests(byte: u8) -> VolumeKeys {
        VolumeKeys::derive(&[byte; KEY_LEN])
    }

    /// The name of an object whose plaintext is `plain`.
    pub fn object_id(&self, plain: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.naming, plain).as_bytes()
    }

    /// Seals `plain`: nonce, then ciphertext and tag. `aad` is
    /// authenticated with it (what kind of object this is).
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        let sealed = self
            .sealing
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
            .expect("XChaCha20-Poly1305 seals any length a chunk has");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`VolumeKeys::seal`] made with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(CryptoError::NotAuthentic);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.sealing
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::NotAuthentic)
    }
}

impl std::fmt::Debug for VolumeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VolumeKeys(..)")
    }
}

/// Fills `buf` from the operating system's random number generator.
fn random_bytes(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::getrandom(buf).map_err(|e| CryptoError::Random(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(byte: u8) -> VolumeKeys {
        VolumeKeys::for_tests(byte)
    }

    #[test]
    fn sealing_round_trips_and_hides_the_plaintext() {
        let keys = keys(1);
        let plain = b"a known pattern, repeated: a known pattern".repeat(100);
        let sealed = keys.seal(b"chunk", &plain).unwrap();
        assert_eq!(sealed.len(), plain.len() + SEAL_OVERHEAD);
        assert!(!sealed.windows(15).any(|w| w == b"a known pattern"));
        assert_eq!(keys.open(b"chunk", &sealed).unwrap(), plain);
        assert_ne!(sealed, keys.seal(b"chunk", &plain).unwrap(), "fresh nonce");
    }

    #[test]
    fn anything_changed_fails_to_open() {
        let keys = keys(2);
        let sealed = keys.seal(b"root", b"generation 7").unwrap();
        for at in [0, NONCE_LEN, sealed.len() - 1] {
            let mut flipped = sealed.clone();
            flipped[at] ^= 1;
            assert!(keys.open(b"root", &flipped).is_err(), "flip at {at}");
        }
        assert!(keys.open(b"chunk", &sealed).is_err(), "another kind");
        assert!(keys.open(b"root", &sealed[..10]).is_err(), "truncated");
        assert!(self::keys(3).open(b"root", &sealed).is_err(), "another key");
    }

    #[test]
    fn names_are_keyed() {
        let plain = b"same bytes";
        assert_eq!(keys(4).object_id(plain), keys(4).object_id(plain));
        assert_ne!(keys(4).object_id(plain), keys(5).object_id(plain));
        assert_ne!(keys(4).object_id(plain), *blake3::hash(plain).as_bytes());
    }
}
