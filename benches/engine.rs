//! The engine's own paths, each reporting throughput:
//! `cargo bench --bench engine`.
//!
//! - a read that hits the memory cache (4 KiB and 1 MiB);
//! - a write into the write-back log (4 KiB and 1 MiB);
//! - chunk encode and decode (zstd and BLAKE3) on half-compressible data;
//! - a map lookup (a read of a zero region resolves through the map);
//! - the disk tier: a 4 KiB read of a cached chunk, against reading and
//!   hashing the whole chunk (what such a read cost before);
//! - the two ways measured to check one 4 KiB block of a chunk read from
//!   disk: a sealed table of per-block CRC-32C (the one zeroblk uses), and
//!   BLAKE3 chaining values that merge up to the chunk's id; and what
//!   making each table costs, and checking it when it is loaded;
//! - a flush of N dirty chunks, committed to an in-memory store.
//!
//! The data is neither zero nor fully compressible: half of each block is
//! random, half repeats, as in fio's `buffer_compress_percentage=50`.

use std::sync::Arc;
use std::time::Duration;

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};
use divan::counter::BytesCount;
use divan::{Bencher, black_box};
use zeroblk::cache::DiskCache;
use zeroblk::cache::blocks::{BLOCK, BlockTable};
use zeroblk::crypto::{KeyEnvelope, Password};
use zeroblk::engine::{self, Durability, EngineOptions, NewVolume, Volume};
use zeroblk::format::{Codec, Compression, ObjectId, chunk};
use zeroblk::store::Store;

const CHUNK: u64 = 1 << 20;

fn main() {
    divan::main();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Half random, half repeated bytes.
fn half_compressible(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len)
        .map(|i| {
            if (i / 2048) % 2 == 0 {
                rng.u8(..)
            } else {
                0x5a
            }
        })
        .collect()
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    volume: Arc<Volume>,
    _cache: tempfile::TempDir,
}

fn fixture(durability: Durability, commit_interval: Duration) -> Fixture {
    let runtime = runtime();
    let cache = tempfile::tempdir().expect("cache dir");
    let volume = runtime.block_on(async {
        let store = Store::memory();
        let new = NewVolume {
            name: "bench".into(),
            size: 4 << 30,
            chunk_size: CHUNK,
            compression: Compression::default(),
            encrypt_with: None,
        };
        engine::create(&store, &new).await.expect("create");
        let mut options = EngineOptions::new(cache.path());
        options.durability = durability;
        options.commit_interval = commit_interval;
        options.memory_cache_bytes = 256 << 20;
        options.disk_cache_bytes = 0;
        Volume::open(&store, "bench", options).await.expect("open")
    });
    Fixture {
        runtime,
        volume: Arc::new(volume),
        _cache: cache,
    }
}

#[divan::bench(args = [4096, 1 << 20])]
fn read_cache_hit(bencher: Bencher, len: usize) {
    let f = fixture(Durability::Local, Duration::from_secs(1));
    let data = half_compressible(8 << 20, 1);
    f.runtime.block_on(async {
        f.volume.write(0, &data, false).await.unwrap();
        // Commit, so reads come from the chunk cache rather than the log.
        f.volume.commit().await.unwrap();
        let mut buf = vec![0; len];
        f.volume.read(0, &mut buf).await.unwrap();
    });
    let mut buf = vec![0u8; len];
    let mut offset = 0u64;
    bencher.counter(BytesCount::new(len)).bench_local(|| {
        offset = (offset + len as u64) % (8 << 20);
        f.runtime.block_on(f.volume.read(offset, &mut buf)).unwrap();
    });
}

#[divan::bench(args = [4096, 1 << 20])]
fn write_into_log(bencher: Bencher, len: usize) {
    let f = fixture(Durability::Local, Duration::from_secs(3600));
    let data = half_compressible(len, 2);
    let mut offset = 0u64;
    bencher.counter(BytesCount::new(len)).bench_local(|| {
        offset = (offset + len as u64) % (1 << 30);
        f.runtime
            .block_on(f.volume.write(offset, &data, false))
            .unwrap();
    });
}

/// Chunk objects in the clear, and sealed as an encrypted volume's are.
fn codec(sealed: bool) -> Codec {
    if !sealed {
        return Codec::clear();
    }
    let password = Password::new("bench".into()).unwrap();
    let (_, keys) = KeyEnvelope::create(&password, b"bench").unwrap();
    Codec::sealed(keys)
}

#[divan::bench(args = [false, true])]
fn chunk_encode(bencher: Bencher, sealed: bool) {
    let raw = half_compressible(CHUNK as usize, 3);
    let codec = codec(sealed);
    bencher
        .counter(BytesCount::new(CHUNK))
        .bench_local(|| chunk::encode(black_box(&raw), Compression::default(), &codec));
}

#[divan::bench(args = [false, true])]
fn chunk_decode(bencher: Bencher, sealed: bool) {
    let raw = half_compressible(CHUNK as usize, 4);
    let codec = codec(sealed);
    let encoded = chunk::encode(&raw, Compression::default(), &codec);
    bencher
        .counter(BytesCount::new(CHUNK))
        .bench_local(|| chunk::decode(encoded.id, black_box(&encoded.object), &codec).unwrap());
}

#[divan::bench]
fn blake3_only(bencher: Bencher) {
    let raw = half_compressible(CHUNK as usize, 5);
    bencher
        .counter(BytesCount::new(CHUNK))
        .bench_local(|| ObjectId::of(black_box(&raw)));
}

/// A 4 KiB read of a never-written block: resolves through the epochs and
/// the committed map, and finds a zero chunk.
#[divan::bench]
fn map_lookup(bencher: Bencher) {
    let f = fixture(Durability::Local, Duration::from_secs(3600));
    let mut buf = vec![0u8; 4096];
    let mut block = 0u64;
    bencher.counter(BytesCount::new(4096usize)).bench_local(|| {
        block = (block + 257) % (1 << 20);
        f.runtime
            .block_on(f.volume.read(block * 4096, &mut buf))
            .unwrap();
    });
}

#[divan::bench(args = [1, 16, 64], sample_count = 10, sample_size = 1)]
fn flush_dirty_chunks(bencher: Bencher, chunks: u64) {
    let f = fixture(Durability::Remote, Duration::from_secs(3600));
    let data = half_compressible(CHUNK as usize, 6);
    let mut round = 0u64;
    bencher
        .counter(BytesCount::new(chunks * CHUNK))
        .with_inputs(|| {
            round += 1;
            let base = (round % 32) * chunks * CHUNK;
            f.runtime.block_on(async {
                for i in 0..chunks {
                    let mut chunk = data.clone();
                    chunk[..8].copy_from_slice(&round.to_le_bytes());
                    f.volume
                        .write(base + i * CHUNK, &chunk, false)
                        .await
                        .unwrap();
                }
            });
        })
        .bench_local_values(|()| f.runtime.block_on(f.volume.flush()).unwrap());
}

/// A 1 MiB chunk in a disk cache, read back 4 KiB (or all of it) at a
/// time from the page cache, each read checked.
#[divan::bench(args = [4096, 1 << 20])]
fn disk_tier_read(bencher: Bencher, len: usize) {
    let dir = tempfile::tempdir().expect("cache dir");
    let cache = DiskCache::open(dir.path(), 64 << 20, 0).expect("disk cache");
    let raw = half_compressible(CHUNK as usize, 7);
    let id = ObjectId::of(&raw);
    cache.store(&id, &raw);
    let mut block = 0usize;
    bencher.counter(BytesCount::new(len)).bench_local(|| {
        block = (block + 97) % (CHUNK as usize / len);
        let start = block * len;
        cache.load_range(&id, start..start + len).expect("cached").0
    });
}

/// Checking one 4 KiB block: `crc32c` (its sum in a [`BlockTable`], what
/// the disk tier uses) or `blake3` (its chaining value, from a table of
/// them that merges up to the chunk's id).
#[divan::bench(args = ["crc32c", "blake3"])]
fn verify_block(bencher: Bencher, scheme: &str) {
    let raw = half_compressible(CHUNK as usize, 8);
    let table = BlockTable::of(&raw);
    let cvs = chaining_values(&raw);
    let mut block = 0usize;
    bencher.counter(BytesCount::new(BLOCK)).bench_local(|| {
        block = (block + 97) % (CHUNK as usize / BLOCK);
        let data = black_box(&raw[block * BLOCK..(block + 1) * BLOCK]);
        match scheme {
            "crc32c" => table.verify(block, data),
            _ => block_cv(block, data) == cvs[block],
        }
    });
}

/// Checking a chunk's table as it is loaded from disk: `crc32c` checks
/// its seal; `blake3` merges 256 chaining values up to the chunk's id.
#[divan::bench(args = ["crc32c", "blake3"])]
fn check_table(bencher: Bencher, scheme: &str) {
    let raw = half_compressible(CHUNK as usize, 9);
    let id = ObjectId::of(&raw);
    let encoded = BlockTable::of(&raw).encode(&id);
    let cvs = chaining_values(&raw);
    bencher.bench_local(|| match scheme {
        "crc32c" => BlockTable::decode(black_box(&encoded), CHUNK, &id).is_some(),
        _ => root_of(black_box(&cvs), CHUNK) == id.0,
    });
}

/// Making a chunk's table as it enters the disk cache, and checking a
/// whole chunk read back: `crc32c` sums each block; `blake3` hashes each
/// block as a subtree (fewer SIMD lanes than hashing the whole chunk at
/// once, which `blake3_only` measures).
#[divan::bench(args = ["crc32c", "blake3"])]
fn build_table(bencher: Bencher, scheme: &str) {
    let raw = half_compressible(CHUNK as usize, 10);
    bencher
        .counter(BytesCount::new(CHUNK))
        .bench_local(|| match scheme {
            "crc32c" => BlockTable::of(black_box(&raw)).verify(0, &raw),
            _ => !chaining_values(black_box(&raw)).is_empty(),
        });
}

/// The BLAKE3 chaining values of a chunk's 4 KiB blocks (each block is a
/// subtree of the chunk's BLAKE3 tree).
fn chaining_values(chunk: &[u8]) -> Vec<ChainingValue> {
    chunk
        .chunks(BLOCK)
        .enumerate()
        .map(|(index, block)| block_cv(index, block))
        .collect()
}

fn block_cv(index: usize, block: &[u8]) -> ChainingValue {
    blake3::Hasher::new()
        .set_input_offset((index * BLOCK) as u64)
        .update(block)
        .finalize_non_root()
}

/// The chunk's BLAKE3 hash, merged up from its blocks' chaining values.
fn root_of(cvs: &[ChainingValue], len: u64) -> [u8; 32] {
    let left_len = left_subtree_len(len);
    let split = (left_len / BLOCK as u64) as usize;
    let left = subtree_cv(&cvs[..split], left_len);
    let right = subtree_cv(&cvs[split..], len - left_len);
    *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
}

fn subtree_cv(cvs: &[ChainingValue], len: u64) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left_len = left_subtree_len(len);
    let split = (left_len / BLOCK as u64) as usize;
    let left = subtree_cv(&cvs[..split], left_len);
    let right = subtree_cv(&cvs[split..], len - left_len);
    merge_subtrees_non_root(&left, &right, Mode::Hash)
}
