//! A chunk of a send stream as it is stored: zstd-compressed (with the
//! frame's checksum), then age-encrypted to every recipient when a push
//! has any. Decoding refuses anything larger than the record says the
//! chunk holds, before it is decompressed into memory.

use crate::crypto::{AgeIdentities, AgeRecipients};

use super::BackupError;

/// zstd's level: streams are large and pushes run hourly on small hosts.
const LEVEL: i32 = 3;

/// Encodes chunks for storage.
#[derive(Clone)]
pub struct Sealer {
    recipients: Option<AgeRecipients>,
}

impl Sealer {
    pub fn new(recipients: Option<AgeRecipients>) -> Sealer {
        Sealer {
            recipients: recipients.filter(|r| !r.is_empty()),
        }
    }

    pub fn recipients(&self) -> usize {
        self.recipients.as_ref().map_or(0, AgeRecipients::len)
    }

    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, BackupError> {
        let mut compressor =
            zstd::bulk::Compressor::new(LEVEL).map_err(BackupError::io("starting zstd"))?;
        compressor
            .include_checksum(true)
            .map_err(BackupError::io("setting zstd's checksum"))?;
        let compressed = compressor
            .compress(plain)
            .map_err(BackupError::io("compressing a chunk"))?;
        match &self.recipients {
            Some(recipients) => Ok(recipients.encrypt(&compressed)?),
            None => Ok(compressed),
        }
    }
}

/// Decodes stored chunks.
pub struct Opener {
    identities: Option<AgeIdentities>,
}

impl Opener {
    pub fn new(identities: Option<AgeIdentities>) -> Opener {
        Opener { identities }
    }

    pub fn can_decrypt(&self) -> bool {
        self.identities.is_some()
    }

    /// The `plain` bytes of send stream that `stored` (the object at
    /// `key`) holds.
    pub fn open(
        &self,
        key: &str,
        stored: &[u8],
        encrypted: bool,
        plain: u64,
    ) -> Result<Vec<u8>, BackupError> {
        let decrypted;
        let compressed = match (encrypted, &self.identities) {
            (false, _) => stored,
            (true, Some(identities)) => {
                decrypted = identities.decrypt(stored)?;
                &decrypted
            }
            (true, None) => {
                return Err(BackupError::Invalid(format!(
                    "{key} is encrypted: give --age-identity FILE"
                )));
            }
        };
        let capacity = usize::try_from(plain)
            .map_err(|_| BackupError::damaged(key, "its size is out of bounds"))?;
        let bytes = zstd::bulk::decompress(compressed, capacity)
            .map_err(|e| BackupError::damaged(key, e))?;
        if bytes.len() as u64 != plain {
            return Err(BackupError::damaged(
                key,
                format!(
                    "it holds {} bytes of stream where its record says {plain}",
                    bytes.len()
                ),
            ));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_round_trips_and_a_flipped_byte_is_never_data() {
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let stored = Sealer::new(None).seal(&plain).unwrap();
        assert!(stored.len() < plain.len() / 4, "compressed");
        let opener = Opener::new(None);
        assert_eq!(
            opener
                .open("k", &stored, false, plain.len() as u64)
                .unwrap(),
            plain
        );
        let mut flipped = stored.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 1;
        assert!(
            opener
                .open("k", &flipped, false, plain.len() as u64)
                .is_err()
        );
        // A record that understates the chunk: refused, not grown into.
        assert!(opener.open("k", &stored, false, 1000).is_err());
    }
}
