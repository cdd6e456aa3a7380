//! Moving objects from one store to the other, several at a time, each
//! checked before it is written: a copy never writes bytes it has not
//! checked against their name.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::CopyProgress;
use super::census;
use super::error::CopyError;
use super::plan::{self, Needed, Origin};
use crate::format::{
    ChunkRef, Codec, FormatError, MAX_CHUNK_SIZE, ObjectId, Place, chunk, keys, pack, page,
    page::MapPage,
};
use crate::store::Store;

/// Objects in flight at once: with packs of about 8 MiB, some 64 MiB.
const IN_FLIGHT: usize = 8;

/// No pack is larger: one closes at its target size, and its last chunk is
/// at most the largest chunk (a larger one is refused unread).
const MAX_PACK_LEN: u64 = pack::PACK_TARGET_BYTES as u64 + 2 * MAX_CHUNK_SIZE;

/// No chunk object is larger: the largest chunk, its header and its seal
/// (a chunk that does not compress is stored raw).
const MAX_CHUNK_OBJECT_LEN: u64 = MAX_CHUNK_SIZE + (64 << 10);

/// Copies objects from `from` to `to`, opening them with `codec` to check
/// them; `what` names the snapshot in errors.
pub(super) struct Copier<'a> {
    from: &'a Store,
    to: &'a Store,
    codec: &'a Codec,
    what: &'a str,
}

impl<'a> Copier<'a> {
    pub(super) fn new(from: &'a Store, to: &'a Store, codec: &'a Codec, what: &'a str) -> Self {
        Copier {
            from,
            to,
            codec,
            what,
        }
    }

    /// Copies every one of `needed`, telling `progress` as each lands.
    pub(super) async fn all(
        &self,
        needed: &[Needed],
        progress: &dyn CopyProgress,
    ) -> Result<(), CopyError> {
        // By index: a stream of futures borrowing its items is not `Send`
        // for every lifetime, which a spawned task needs.
        futures::stream::iter(0..needed.len())
            .map(|n| async move {
                let need = &needed[n];
                self.one(need).await?;
                progress.copied(need.size());
                Ok::<_, CopyError>(())
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await
    }

    /// Those of `needed` the destination does not hold with their size.
    pub(super) async fn not_there<'n>(
        &self,
        needed: impl Iterator<Item = &'n Needed>,
    ) -> Result<Vec<Needed>, CopyError> {
        let needed: Vec<&Needed> = needed.collect();
        let keys: Vec<String> = needed.iter().map(|need| need.key().to_string()).collect();
        let found = census::sizes(self.to, &keys).await?;
        Ok(needed
            .into_iter()
            .filter(|need| found.get(need.key()) != Some(&need.size()))
            .cloned()
            .collect())
    }

    pub(super) fn destination_url(&self) -> String {
        self.to.url().to_string()
    }

    /// Fetches one object, checks it, and writes it at the destination.
    async fn one(&self, need: &Needed) -> Result<(), CopyError> {
        let bytes = self.fetch(need).await?;
        let (checked, codec) = (need.clone(), self.codec.clone());
        let bytes = crate::blocking::run(move || {
            check(&checked, &bytes, &codec).map_err(|e| e.stored_in(checked.key()))?;
            Ok::<_, FormatError>(bytes)
        })
        .await?;
        self.to.put(need.key(), bytes).await?;
        crate::async_fail_point!("copy::object_copied");
        Ok(())
    }

    /// The object's bytes at the source: no more than it may hold.
    async fn fetch(&self, need: &Needed) -> Result<Bytes, CopyError> {
        let most = at_most(need)?;
        let (key, found) = match need.origin() {
            Origin::PackedChunk(ChunkRef {
                place: Place::Packed { pack, offset },
                ..
            }) => {
                let (key, start) = (keys::pack(&pack), u64::from(offset));
                let found = self.from.get_range(&key, start..start + most).await?;
                (key, found)
            }
            _ => {
                let found = self.from.get_at_most(need.key(), most).await?;
                (need.key().to_string(), found)
            }
        };
        found.ok_or_else(|| plan::missing(self.from, &key, self.what))
    }
}

/// The size of `need`, refused when it is more than such an object ever
/// is (sizes come from listings and map pages: untrusted).
fn at_most(need: &Needed) -> Result<u64, FormatError> {
    let limit = match need.origin() {
        Origin::Page(_) => page::MAX_STORED_LEN,
        Origin::Pack(_) => MAX_PACK_LEN,
        Origin::OwnChunk(_) | Origin::PackedChunk(_) => MAX_CHUNK_OBJECT_LEN,
    };
    match need.size() <= limit {
        true => Ok(need.size()),
        false => Err(FormatError::corrupt(
            need.key(),
            format!(
                "it is said to be {} bytes, more than such an object ever is ({limit})",
                need.size()
            ),
        )),
    }
}

/// Checks that `bytes` are the object `need` names, of its size.
fn check(need: &Needed, bytes: &[u8], codec: &Codec) -> Result<(), FormatError> {
    if bytes.len() as u64 != need.size() {
        return Err(FormatError::corrupt(
            need.key(),
            format!(
                "it is {} bytes, not the {} it was listed with (changed while the copy ran?)",
                bytes.len(),
                need.size()
            ),
        ));
    }
    match need.origin() {
        Origin::Page(id) => MapPage::decode(id, bytes, codec).map(drop),
        Origin::Pack(id) => {
            let actual = ObjectId::of(bytes);
            match actual == id {
                true => Ok(()),
                false => Err(FormatError::HashMismatch {
                    what: format!("pack {}", need.key()),
                    expected: id,
                    actual,
                }),
            }
        }
        Origin::OwnChunk(entry) | Origin::PackedChunk(entry) => {
            chunk::decode(entry.id, bytes, codec).map(drop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{ChunkRef, Compression};

    /// What the plan would ask for, made by hand for one object.
    fn needed_for(origin: Origin, size: u64) -> Needed {
        Needed::new(origin, size)
    }

    #[test]
    fn an_object_is_checked_against_its_name_and_size() {
        let codec = Codec::clear();
        let chunk = chunk::encode(&[5u8; 4096], Compression::default(), &codec);
        let len = chunk.object.len() as u64;
        let own = Origin::OwnChunk(ChunkRef::own(chunk.id, len as u32));
        assert!(check(&needed_for(own, len), &chunk.object, &codec).is_ok());
        assert!(check(&needed_for(own, len + 1), &chunk.object, &codec).is_err());
        let mut flipped = chunk.object.to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(check(&needed_for(own, len), &flipped, &codec).is_err());
        assert!(
            check(&needed_for(own, len), &chunk.object, &Codec::for_tests(1)).is_err(),
            "a chunk in the clear where sealed ones are expected"
        );

        let pack = Origin::Pack(ObjectId::of(b"pack bytes"));
        assert!(check(&needed_for(pack, 10), b"pack bytes", &codec).is_ok());
        let wrong = check(&needed_for(pack, 10), b"pack bytez", &codec).unwrap_err();
        assert!(matches!(wrong, FormatError::HashMismatch { .. }), "{wrong}");

        let page = crate::format::MapPage::default().encode(&codec);
        let origin = Origin::Page(page.id);
        let size = page.object.len() as u64;
        assert!(check(&needed_for(origin, size), &page.object, &codec).is_ok());
        let other = Origin::Page(ObjectId::of(b"another page"));
        assert!(check(&needed_for(other, size), &page.object, &codec).is_err());
    }

    #[test]
    fn sizes_no_object_ever_has_are_refused_before_a_request() {
        let id = ObjectId::of(b"x");
        let huge = Origin::OwnChunk(ChunkRef::own(id, u32::MAX));
        assert!(at_most(&needed_for(huge, u32::MAX.into())).is_err());
        let chunk = Origin::OwnChunk(ChunkRef::own(id, 1 << 20));
        assert_eq!(at_most(&needed_for(chunk, 1 << 20)).unwrap(), 1 << 20);
        assert!(at_most(&needed_for(Origin::Pack(id), 1 << 40)).is_err());
        assert!(at_most(&needed_for(Origin::Pack(id), 8 << 20)).is_ok());
        assert!(at_most(&needed_for(Origin::Page(id), 1 << 30)).is_err());
    }
}
