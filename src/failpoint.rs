//! Failpoints in async code.
//!
//! `fail::fail_point!` runs a test's callback on the calling thread. In
//! async code that thread is a runtime worker, and a test that pauses an
//! actor there (to let another act) would stall every task queued on that
//! worker, the I/O driver too. [`async_fail_point!`] hands the worker's
//! other tasks to the runtime first (`block_in_place`) when a test has
//! configured the point; otherwise it costs what `fail_point!` does.
//! Without the `failpoints` feature (release builds) it is nothing.
//!
//! The points, by the step they stand before or after:
//!
//! | point | where |
//! | --- | --- |
//! | `write::admitted` | a write was let into the log, before it has its place there |
//! | `log::large_record` | a record of 64 KiB or more, before its blocking write |
//! | `log::ack_waits_for_earlier_records` | a written record waits for the records before it |
//! | `log::segment_switch` | a sealed epoch leaves its segment, before its end record |
//! | `log::sync_leads` | a flush or commit took the log's sync lead, before the sealed epochs' writes drain |
//! | `log::before_sync` | the sync's leader, before it fsyncs sealed epochs |
//! | `log::sync_fails` | an fdatasync of a log segment (`return`: EIO) |
//! | `log::synced` | the sync's leader published (or, once stopped, refused) what it synced |
//! | `log::recycle_before_rename` | a free file's new header is synced, before its new name |
//! | `log::rename_noreplace` | `renameat2(RENAME_NOREPLACE)` (`return`: EINVAL, as 9p and NFS) |
//! | `replay::before_sync` | replay kept a segment's records, before it fsyncs them |
//! | `open::before_claim` | a writer opened, before it claims the next generation |
//! | `commit::uploaded` | a commit's chunks and pages are uploaded, before its lease check |
//! | `commit::before_root` | after the lease check, before the root's conditional PUT |
//! | `commit::after_root` | after the root's PUT, whatever it came to |
//! | `lease::before_create` | a free lease was found, before it is created |
//! | `lease::before_take` | a lease was judged free, before the conditional replace |
//! | `lease::before_renew` | before a renewal's conditional replace |
//! | `gc::listed` | gc listed the objects, before its barriers |
//! | `gc::marked` | gc marked what the roots reference, before it splits and deletes |
//! | `gc::before_delete` | gc checked its lease, before its deletes |
//! | `snapshot::pin` | a snapshot, clone or rollback holds gc's lease and read its root, before the snapshot's PUT |
//! | `rollback::closed` | a rollback committed and closed the volume, before it takes the writer's lease |
//! | `rollback::kept` | a rollback pinned the state it replaces, before it publishes the snapshot's map |
//! | `backup::chunk_stored` | a push stored one chunk and noted it in its journal |
//! | `backup::chunks_stored` | a push stored every chunk of its stream, before the snapshot's record |
//! | `backup::record_stored` | a push wrote the snapshot's record, before its sequence lists it |
//! | `backup::listed` | the sequence lists the pushed snapshot, before the head and the source's note |
//! | `backup::sequence_unlisted` | a prune deleted a sequence's object, before its records and chunks |

/// A named failpoint in async code (see the module documentation).
#[macro_export]
macro_rules! async_fail_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoint::hit($name);
    };
}

/// Evaluates failpoint `name`, off the runtime's worker if a test has
/// configured it.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    let configured = fail::list().iter().any(|(point, _)| point == name);
    if !configured {
        return;
    }
    match crate::blocking::may_block_in_place() {
        true => tokio::task::block_in_place(|| fail::eval(name, |_| ())),
        false => fail::eval(name, |_| ()),
    };
}
