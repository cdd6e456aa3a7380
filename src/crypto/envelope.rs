//! The key envelope: a volume's data key, wrapped with a key that Argon2id
//! derives from the password. It is kept in the superblock, which is JSON,
//! so its fields are plain and named.
//!
//! Its parameters come from the bucket and are checked before any work is
//! done: a tampered envelope cannot make opening take gigabytes or hours.

use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{CryptoError, KEY_LEN, Password, VolumeKeys, random_bytes};

const CIPHER: &str = "xchacha20poly1305";
const KDF: &str = "argon2id";
/// Associated data of the wrapped key: what it is, and this layout's age;
/// then what the caller binds it to (the volume).
const AAD: &[u8] = b"zeroblk volume data key, envelope 1: ";

/// Argon2id's cost, as OWASP recommends it for interactive logins: 64 MiB,
/// three passes, one lane (a quarter of a second or so).
const MEMORY_KIB: u32 = 64 << 10;
const ITERATIONS: u32 = 3;
const LANES: u32 = 1;
/// Bounds on what an envelope from the bucket may ask for: four times
/// what zeroblk makes, so a tampered one cannot make an open take long.
const MAX_MEMORY_KIB: u32 = 4 * MEMORY_KIB;
const MAX_ITERATIONS: u32 = 4 * ITERATIONS;
const MAX_LANES: u32 = 4;
const SALT_LEN: usize = 16;

/// A data key wrapped with a password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEnvelope {
    cipher: String,
    kdf: String,
    memory_kib: u32,
    iterations: u32,
    lanes: u32,
    /// Hex.
    salt: String,
    /// Hex: nonce, then the data key sealed with the derived key.
    wrapped_key: String,
}

impl KeyEnvelope {
    /// Makes a new data key and wraps it with `password`, bound to
    /// `binding` (what the key is for: it opens only with the same).
    pub fn create(
        password: &Password,
        binding: &[u8],
    ) -> Result<(KeyEnvelope, VolumeKeys), CryptoError> {
        let mut data_key = Zeroizing::new([0u8; KEY_LEN]);
        random_bytes(data_key.as_mut())?;
        let envelope = Self::wrap(&data_key, password, binding)?;
        Ok((envelope, VolumeKeys::derive(&data_key)))
    }

    /// The volume's keys, if `password` is the one the key was wrapped with
    /// and `binding` the one it was bound to.
    pub fn open(&self, password: &Password, binding: &[u8]) -> Result<VolumeKeys, CryptoError> {
        let data_key = self.unwrap_data_key(password, binding)?;
        Ok(VolumeKeys::derive(&data_key))
    }

    /// The same data key, wrapped with `new` instead of `old`.
    pub fn rewrap(
        &self,
        old: &Password,
        new: &Password,
        binding: &[u8],
    ) -> Result<KeyEnvelope, CryptoError> {
        let data_key = self.unwrap_data_key(old, binding)?;
        Self::wrap(&data_key, new, binding)
    }

    /// The same data key and password, bound to `new_binding` instead of
    /// `old_binding`: a clone, or a copy under another name, opens with the
    /// source's password and reads the source's objects.
    /// Returns the new envelope and the keys both open.
    pub fn rebind(
        &self,
        password: &Password,
        old_binding: &[u8],
        new_binding: &[u8],
    ) -> Result<(KeyEnvelope, VolumeKeys), CryptoError> {
        let data_key = self.unwrap_data_key(password, old_binding)?;
        let envelope = Self::wrap(&data_key, password, new_binding)?;
        Ok((envelope, VolumeKeys::derive(&data_key)))
    }

    fn wrap(
        data_key: &[u8; KEY_LEN],
        password: &Password,
        binding: &[u8],
    ) -> Result<KeyEnvelope, CryptoError> {
        let mut salt = [0u8; SALT_LEN];
        random_bytes(&mut salt)?;
        let mut envelope = KeyEnvelope {
            cipher: CIPHER.to_string(),
            kdf: KDF.to_string(),
            memory_kib: MEMORY_KIB,
            iterations: ITERATIONS,
            lanes: LANES,
            salt: hex::encode(salt),
            wrapped_key: String::new(),
        };
        let wrapping = envelope.wrapping_keys(password)?;
        envelope.wrapped_key = hex::encode(wrapping.seal(&aad(binding), data_key)?);
        Ok(envelope)
    }

    fn unwrap_data_key(
        &self,
        password: &Password,
        binding: &[u8],
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
        let wrapped = hex::decode(&self.wrapped_key)
            .map_err(|_| CryptoError::BadEnvelope("wrapped_key is not hex".into()))?;
        let plain = Zeroizing::new(
            self.wrapping_keys(password)?
                .open(&aad(binding), &wrapped)
                .map_err(|_| CryptoError::WrongPassword)?,
        );
        let key: [u8; KEY_LEN] = plain
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::BadEnvelope("the data key is not 32 bytes".into()))?;
        Ok(Zeroizing::new(key))
    }

    /// The keys that wrap the data key: Argon2id of the password, checked
    /// parameters first.
    fn wrapping_keys(&self, password: &Password) -> Result<VolumeKeys, CryptoError> {
        let bad = |what: String| Err(CryptoError::BadEnvelope(what));
        if self.cipher != CIPHER || self.kdf != KDF {
            return bad(format!(
                "it uses {} with {}; this zeroblk knows {CIPHER} with {KDF}",
                self.cipher, self.kdf
            ));
        }
        if !(8..=MAX_MEMORY_KIB).contains(&self.memory_kib)
            || !(1..=MAX_ITERATIONS).contains(&self.iterations)
            || !(1..=MAX_LANES).contains(&self.lanes)
        {
            return bad(format!(
                "Argon2id with {} KiB, {} passes and {} lanes is beyond what zeroblk makes",
                self.memory_kib, self.iterations, self.lanes
            ));
        }
        let salt = hex::decode(&self.salt)
            .ok()
            .filter(|s| s.len() == SALT_LEN)
            .ok_or_else(|| CryptoError::BadEnvelope("salt is not 16 bytes of hex".into()))?;
        let params = Params::new(self.memory_kib, self.iterations, self.lanes, Some(KEY_LEN))
            .map_err(|e| CryptoError::BadEnvelope(e.to_string()))?;
        let mut derived = Zeroizing::new([0u8; KEY_LEN]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(password.as_bytes(), &salt, derived.as_mut())
            .map_err(|e| CryptoError::BadEnvelope(e.to_string()))?;
        Ok(VolumeKeys::derive(&derived))
    }
}

fn aad(binding: &[u8]) -> Vec<u8> {
    [AAD, binding].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password(text: &str) -> Password {
        Password::new(text.to_string()).unwrap()
    }

    #[test]
    fn the_right_password_opens_the_same_keys_and_a_rekey_keeps_them() {
        let (envelope, keys) = KeyEnvelope::create(&password("correct horse"), b"v/1").unwrap();
        let reopened = envelope.open(&password("correct horse"), b"v/1").unwrap();
        assert_eq!(reopened.object_id(b"x"), keys.object_id(b"x"));
        assert!(matches!(
            envelope.open(&password("wrong horse"), b"v/1"),
            Err(CryptoError::WrongPassword)
        ));
        assert!(
            envelope.open(&password("correct horse"), b"w/1").is_err(),
            "bound to another volume"
        );

        let rekeyed = envelope
            .rewrap(
                &password("correct horse"),
                &password("battery staple"),
                b"v/1",
            )
            .unwrap();
        assert_ne!(rekeyed, envelope);
        let after = rekeyed.open(&password("battery staple"), b"v/1").unwrap();
        assert_eq!(after.object_id(b"x"), keys.object_id(b"x"), "same data key");
        assert!(rekeyed.open(&password("correct horse"), b"v/1").is_err());
        assert!(
            envelope
                .rewrap(&password("nope"), &password("x"), b"v/1")
                .is_err()
        );
    }

    #[test]
    fn a_rebound_envelope_opens_the_same_keys_only_under_its_new_binding() {
        let (envelope, keys) = KeyEnvelope::create(&password("pw"), b"v/1").unwrap();
        let (clone, clone_keys) = envelope.rebind(&password("pw"), b"v/1", b"w/2").unwrap();
        assert_eq!(clone_keys.object_id(b"x"), keys.object_id(b"x"));
        let opened = clone.open(&password("pw"), b"w/2").unwrap();
        assert_eq!(
            opened.object_id(b"x"),
            keys.object_id(b"x"),
            "same data key"
        );
        assert!(clone.open(&password("pw"), b"v/1").is_err());
        assert!(envelope.rebind(&password("nope"), b"v/1", b"w/2").is_err());
    }

    #[test]
    fn a_tampered_envelope_is_refused_before_any_work() {
        let (envelope, _) = KeyEnvelope::create(&password("pw"), b"v/1").unwrap();
        let costly = KeyEnvelope {
            memory_kib: u32::MAX,
            ..envelope.clone()
        };
        assert!(matches!(
            costly.open(&password("pw"), b"v/1"),
            Err(CryptoError::BadEnvelope(_))
        ));
        let slow = KeyEnvelope {
            iterations: 1_000_000,
            ..envelope.clone()
        };
        assert!(slow.open(&password("pw"), b"v/1").is_err());
        let other_cipher = KeyEnvelope {
            cipher: "rot13".into(),
            ..envelope.clone()
        };
        assert!(other_cipher.open(&password("pw"), b"v/1").is_err());
        let mut flipped = envelope.clone();
        let other = if envelope.wrapped_key.starts_with('0') {
            "1"
        } else {
            "0"
        };
        flipped.wrapped_key.replace_range(0..1, other);
        assert!(matches!(
            flipped.open(&password("pw"), b"v/1"),
            Err(CryptoError::WrongPassword)
        ));
        let json = serde_json::to_string(&envelope).unwrap();
        let with_extra = json.replace("{", "{\"key\":\"00\",");
        assert!(serde_json::from_str::<KeyEnvelope>(&with_extra).is_err());
    }
}
