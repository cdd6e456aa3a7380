//! The NBD fuzz targets (fuzz/targets.rs), run for a bounded time in every
//! test run: seeds that speak the protocol, mutated at random (bit flips,
//! interesting bytes, inserted, deleted, repeated and spliced ranges).
//! No coverage guidance, which `cargo fuzz run` adds (see fuzz/); but it
//! runs on the stable toolchain, on every CI run, within its time.
//!
//! `ZEROBLK_FUZZ_SECONDS=N` sets the time per target (default 15);
//! `ZEROBLK_FUZZ_SEED=S` replays a run. A failing input is saved and its
//! path printed, ready for `cargo fuzz run TARGET PATH`.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use zeroblk::nbd::proto::{self, Request, opt};

fn seconds() -> u64 {
    std::env::var("ZEROBLK_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15)
}

fn option(kind: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = proto::IHAVEOPT.to_be_bytes().to_vec();
    out.extend(kind.to_be_bytes());
    out.extend((payload.len() as u32).to_be_bytes());
    out.extend(payload);
    out
}

fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u32).to_be_bytes().to_vec();
    out.extend(s.as_bytes());
    out
}

/// Well-formed client messages: what mutations start from.
fn seeds() -> Vec<Vec<u8>> {
    let flags = (proto::CLIENT_FIXED_NEWSTYLE | proto::CLIENT_NO_ZEROES).to_be_bytes();
    let mut info = string("vol");
    info.extend(2u16.to_be_bytes());
    info.extend(proto::info::BLOCK_SIZE.to_be_bytes());
    info.extend(proto::info::NAME.to_be_bytes());
    let mut meta = string("vol");
    meta.extend(1u32.to_be_bytes());
    meta.extend(string(proto::BASE_ALLOCATION));
    let session: Vec<Vec<u8>> = vec![
        option(opt::STRUCTURED_REPLY, &[]),
        option(opt::LIST, &[]),
        option(opt::SET_META_CONTEXT, &meta),
        option(opt::LIST_META_CONTEXT, &meta),
        option(opt::INFO, &info),
        option(opt::GO, &info),
        option(opt::EXPORT_NAME, b"vol"),
        option(opt::ABORT, &[]),
        option(opt::STARTTLS, &[]),
    ];
    let request = |kind, flags, offset, len| {
        proto::encode_request(&Request {
            flags,
            kind,
            cookie: 7,
            offset,
            len,
        })
        .to_vec()
    };
    let mut seeds = vec![
        flags
            .iter()
            .chain(session.concat().iter())
            .copied()
            .collect(),
        request(proto::cmd::READ, 0, 0, 4096),
        request(proto::cmd::WRITE, proto::cflags::FUA, 4096, 8192),
        request(
            proto::cmd::BLOCK_STATUS,
            proto::cflags::REQ_ONE,
            0,
            u32::MAX,
        ),
        info,
        meta,
    ];
    seeds.extend(session.iter().map(|o| [&flags[..], o].concat()));
    seeds
}

/// One random change to `input`, drawing spliced bytes from `pool`.
fn mutate(rng: &mut fastrand::Rng, input: &mut Vec<u8>, pool: &[Vec<u8>]) {
    const INTERESTING: [u8; 6] = [0, 1, 0x7f, 0x80, 0xfe, 0xff];
    if input.is_empty() {
        input.push(rng.u8(..));
        return;
    }
    let at = rng.usize(..input.len());
    match rng.u8(..7) {
        0 => input[at] ^= 1 << rng.u8(..8),
        1 => input[at] = INTERESTING[rng.usize(..INTERESTING.len())],
        2 => input[at] = rng.u8(..),
        3 => input.insert(at, rng.u8(..)),
        4 => {
            let end = (at + rng.usize(1..=16)).min(input.len());
            input.drain(at..end);
        }
        5 => {
            let end = (at + rng.usize(1..=16)).min(input.len());
            let repeated = input[at..end].to_vec();
            input.splice(at..at, repeated);
        }
        _ => {
            let other = &pool[rng.usize(..pool.len())];
            if !other.is_empty() {
                let from = rng.usize(..other.len());
                let end = (from + rng.usize(1..=32)).min(other.len());
                input.splice(at..at, other[from..end].iter().copied());
            }
        }
    }
    input.truncate(1 << 16);
}

/// Feeds `target` mutated seeds for the configured time; returns how many
/// inputs it ran. A panic saves the input and fails the test.
fn fuzz(name: &str, target: fn(&[u8])) -> u64 {
    let seed = std::env::var("ZEROBLK_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("{name}: seed {seed} (ZEROBLK_FUZZ_SEED={seed} replays this run)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let pool = seeds();
    let deadline = Instant::now() + Duration::from_secs(seconds());
    let mut runs = 0;
    while Instant::now() < deadline {
        let mut input = pool[rng.usize(..pool.len())].clone();
        for _ in 0..rng.usize(1..=8) {
            mutate(&mut rng, &mut input, &pool);
        }
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            let path = std::env::temp_dir().join(format!("zeroblk-fuzz-{name}-{seed}-{runs}"));
            std::fs::write(&path, &input).unwrap();
            panic!("{name} panicked on the input saved at {}", path.display());
        }
        runs += 1;
    }
    eprintln!("{name}: {runs} inputs, no panic");
    runs
}

#[test]
fn nbd_decoders_survive_mutated_input() {
    let runs = fuzz("nbd_proto", targets::nbd_proto);
    assert!(runs > 1000, "only {runs} inputs ran");
}

#[test]
fn nbd_negotiation_survives_mutated_input() {
    let runs = fuzz("nbd_handshake", targets::nbd_handshake);
    assert!(runs > 100, "only {runs} inputs ran");
}

/// The mutator does change inputs, and the seeds are what the server
/// expects: unmutated, the full seed session negotiates to its end.
#[test]
fn the_mutator_mutates_and_the_seeds_are_well_formed() {
    let pool = seeds();
    let mut rng = fastrand::Rng::with_seed(1);
    let changed = (0..100)
        .filter(|_| {
            let mut input = pool[0].clone();
            mutate(&mut rng, &mut input, &pool);
            input != pool[0]
        })
        .count();
    assert!(
        changed > 80,
        "only {changed} of 100 mutations changed the input"
    );
    let header = proto::decode_option_header(pool[1][..16].try_into().unwrap());
    assert!(header.is_err(), "a request is not an option");
    assert!(proto::decode_request(pool[1][..28].try_into().unwrap()).is_ok());
}
