//! What a crash may leave, checked against a writer's log
//! (tests/crash/writer.py): the model the crash tests over NBD
//! (tests/crash.rs) and over ublk in the VM (tests/vm.rs) share.

use std::collections::HashMap;

/// What the writer's log says.
#[derive(Debug, Default)]
pub struct WriterLog {
    /// (tag, block, batch), in the order they were sent.
    pub writes: Vec<(u64, u64, usize)>,
    /// Every write with a smaller tag was acknowledged as durable.
    pub flushed_below: Option<u64>,
}

pub fn parse_log(text: &str) -> WriterLog {
    let mut log = WriterLog::default();
    let mut batch = 0;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["W", tag, block] => {
                log.writes
                    .push((tag.parse().unwrap(), block.parse().unwrap(), batch))
            }
            ["D"] => batch += 1,
            ["F", tag] => log.flushed_below = Some(tag.parse().unwrap()),
            _ => panic!("unreadable writer log line {line:?}"),
        }
    }
    log
}

/// With the cache dir kept: every block holds the last write before the
/// last acknowledged flush (or what it held before this round), or a write
/// after that flush.
pub fn check_flushed_writes_kept(
    before: &[u64],
    log: &WriterLog,
    after: &[u64],
) -> Result<(), String> {
    let flushed_below = log.flushed_below.unwrap_or(0);
    let mut durable: Vec<u64> = before.to_vec();
    let mut later: HashMap<u64, Vec<u64>> = HashMap::new();
    for &(tag, block, _) in &log.writes {
        if tag < flushed_below {
            durable[block as usize] = tag;
        } else {
            later.entry(block).or_default().push(tag);
        }
    }
    for (block, &found) in after.iter().enumerate() {
        let allowed = found == durable[block]
            || later
                .get(&(block as u64))
                .is_some_and(|t| t.contains(&found));
        if !allowed {
            return Err(format!(
                "block {block} holds write {found}; it should hold {} (flushed) or one of the writes after the last flush {:?}",
                durable[block],
                later.get(&(block as u64))
            ));
        }
    }
    Ok(())
}

/// With the cache dir lost: the state is the writes of batches before
/// some batch `b`, plus any writes of batch `b`, on top of `before`.
pub fn check_state_existed(before: &[u64], log: &WriterLog, after: &[u64]) -> Result<(), String> {
    let batches = log.writes.last().map_or(0, |w| w.2 + 1);
    let mut state = before.to_vec();
    for b in 0..=batches {
        let in_batch: Vec<_> = log.writes.iter().filter(|w| w.2 == b).collect();
        let fits = after.iter().enumerate().all(|(block, &found)| {
            found == state[block] || in_batch.iter().any(|w| w.1 == block as u64 && w.0 == found)
        });
        if fits {
            return Ok(());
        }
        for &&(tag, block, _) in &in_batch {
            state[block as usize] = tag;
        }
    }
    Err("the volume holds a state that never existed: no prefix of the writer's batches explains it".into())
}
