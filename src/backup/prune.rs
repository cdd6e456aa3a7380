//! `backup prune`: the snapshots a retention policy keeps stay, with
//! every parent they need to be restored; the rest go, whole sequences at
//! once where nothing in them is needed.
//!
//! The head's sequence is never touched: it holds the newest snapshots
//! and is the one pushes extend, so a prune never races a push over one
//! object. Elsewhere a sequence is rewritten first (which unlists what
//! goes, so nothing half-deleted is ever listed), then the records and
//! chunks of what it no longer lists are deleted. Leftovers of pushes
//! that never completed (chunks or records no sequence lists) are
//! deleted once they are a day old.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::BackupError;
use super::destination::{Chains, Destination};
use super::layout::Lineage;
use super::record::Sequence;
use crate::retention::{self, Retention};

/// How old the objects of a push that never completed must be before a
/// prune deletes them (a push may be running, or waiting to resume). A
/// resumed push reuses only chunks younger than half this
/// (`push::REUSE_LIMIT`), so a prune never deletes a chunk that a push
/// is about to list.
pub const UNFINISHED_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Why a snapshot stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Why {
    /// The retention policy keeps it.
    Policy,
    /// A kept snapshot needs it as a parent.
    ParentOf(String),
    /// It is in the sequence pushes extend.
    CurrentChain,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Policy => write!(f, "kept by the policy"),
            Why::ParentOf(child) => write!(f, "the parent {child} needs"),
            Why::CurrentChain => write!(f, "in the current chain"),
        }
    }
}

/// What a prune keeps and deletes in one lineage.
#[derive(Debug, Clone, Serialize)]
pub struct LineagePrune {
    volume: String,
    subvolume: String,
    kept: Vec<(String, Why)>,
    deleted: Vec<String>,
    unfinished_deleted: usize,
}

impl LineagePrune {
    pub fn lineage(&self) -> (&str, &str) {
        (&self.volume, &self.subvolume)
    }
    pub fn kept(&self) -> &[(String, Why)] {
        &self.kept
    }
    pub fn deleted(&self) -> &[String] {
        &self.deleted
    }
    pub fn unfinished_deleted(&self) -> usize {
        self.unfinished_deleted
    }
}

/// A plan for one lineage: what stays, and each sequence's fate.
struct Plan {
    kept: BTreeMap<String, Why>,
    /// Sequences none of whose snapshots stay.
    dropped: Vec<Sequence>,
    /// Sequences some of whose snapshots go: (as they are, as they will be).
    trimmed: Vec<(Sequence, Sequence)>,
}

/// Decides what stays of `chains` under `retention`.
fn plan(chains: &Chains, retention: &Retention) -> Plan {
    let mut kept = BTreeMap::new();
    if let Some(current) = chains.current() {
        for entry in current.snapshots() {
            kept.insert(entry.name().to_string(), Why::CurrentChain);
        }
    }
    let entries: Vec<_> = chains
        .sequences()
        .iter()
        .flat_map(|s| s.snapshots())
        .collect();
    let times: Vec<_> = entries.iter().map(|e| e.created()).collect();
    for index in retention::keep(&times, retention) {
        kept.entry(entries[index].name().to_string())
            .or_insert(Why::Policy);
    }
    for sequence in chains.sequences() {
        let wanted: Vec<String> = sequence
            .snapshots()
            .iter()
            .filter(|e| kept.contains_key(e.name()))
            .map(|e| e.name().to_string())
            .collect();
        for name in wanted {
            let Ok(chain) = sequence.chain_to(&name) else {
                continue;
            };
            for parent in chain.iter().rev().skip(1) {
                kept.entry(parent.name().to_string())
                    .or_insert_with(|| Why::ParentOf(name.clone()));
            }
        }
    }
    let mut dropped = Vec::new();
    let mut trimmed = Vec::new();
    for sequence in chains.sequences() {
        let going: Vec<String> = sequence
            .snapshots()
            .iter()
            .filter(|e| !kept.contains_key(e.name()))
            .map(|e| e.name().to_string())
            .collect();
        if going.len() == sequence.snapshots().len() {
            dropped.push(sequence.clone());
        } else if !going.is_empty() {
            trimmed.push((sequence.clone(), sequence.without(&going)));
        }
    }
    Plan {
        kept,
        dropped,
        trimmed,
    }
}

/// Prunes every lineage of `destination`.
pub async fn prune(
    destination: &Destination,
    retention: &Retention,
    dry_run: bool,
) -> Result<Vec<LineagePrune>, BackupError> {
    if retention.keeps_nothing() {
        return Err(BackupError::Invalid(
            "a prune that keeps nothing would delete every backup: give at least one of --keep-hourly, --keep-daily, --keep-weekly or --keep-monthly".into(),
        ));
    }
    destination.require_backups().await?;
    let mut reports = Vec::new();
    for chains in destination.all_chains().await? {
        if let Some((key, reason)) = chains.damaged().first() {
            let lineage = chains.lineage();
            return Err(BackupError::Invalid(format!(
                "{key} is damaged ({reason}): prune leaves {lineage} alone until it is mended; `zeroblk backup verify` names what is wrong"
            )));
        }
        let plan = plan(&chains, retention);
        let lineage = chains.lineage();
        let mut report = LineagePrune {
            volume: lineage.volume().to_string(),
            subvolume: lineage.subvolume().to_string(),
            kept: plan
                .kept
                .iter()
                .map(|(n, w)| (n.clone(), w.clone()))
                .collect(),
            deleted: Vec::new(),
            unfinished_deleted: 0,
        };
        for sequence in &plan.dropped {
            if !dry_run {
                drop_sequence(destination, lineage, sequence).await?;
            }
            report
                .deleted
                .extend(sequence.snapshots().iter().map(|e| e.name().to_string()));
        }
        for (before, after) in &plan.trimmed {
            let going: Vec<String> = before
                .snapshots()
                .iter()
                .filter(|e| after.entry(e.name()).is_none())
                .map(|e| e.name().to_string())
                .collect();
            if !dry_run {
                if !destination.replace_sequence(lineage, after, before).await? {
                    continue; // it changed since it was read: the next prune sees it
                }
                for name in &going {
                    delete_snapshot(destination, lineage, before.name(), name).await?;
                }
            }
            report.deleted.extend(going);
        }
        report.unfinished_deleted = delete_unfinished(destination, &chains, dry_run).await?;
        reports.push(report);
    }
    Ok(reports)
}

/// Deletes a whole sequence: unlisted first, then its records and chunks.
async fn drop_sequence(
    destination: &Destination,
    lineage: &Lineage,
    sequence: &Sequence,
) -> Result<(), BackupError> {
    destination
        .store()
        .delete(&lineage.sequence_key(sequence.name()))
        .await?;
    crate::async_fail_point!("backup::sequence_unlisted");
    destination
        .delete_under(&format!("{}/{}/", lineage.meta_prefix(), sequence.name()))
        .await?;
    destination
        .delete_under(&format!(
            "{}/",
            lineage.sequence_data_prefix(sequence.name())
        ))
        .await?;
    Ok(())
}

/// Deletes an unlisted snapshot's record and chunks.
async fn delete_snapshot(
    destination: &Destination,
    lineage: &Lineage,
    sequence: &str,
    name: &str,
) -> Result<(), BackupError> {
    destination
        .store()
        .delete(&lineage.record_key(sequence, name))
        .await?;
    destination
        .delete_under(&format!("{}/", lineage.data_prefix(sequence, name)))
        .await?;
    Ok(())
}

/// Deletes records and chunks no sequence lists, a day old or more.
/// Returns how many objects that is (or would be).
async fn delete_unfinished(
    destination: &Destination,
    chains: &Chains,
    dry_run: bool,
) -> Result<usize, BackupError> {
    let lineage = chains.lineage();
    let listed: BTreeSet<(String, String)> = chains
        .sequences()
        .iter()
        .flat_map(|s| {
            s.snapshots()
                .iter()
                .map(|e| (s.name().to_string(), e.name().to_string()))
        })
        .collect();
    let sequences: BTreeSet<&str> = chains.sequences().iter().map(Sequence::name).collect();
    let store = destination.store();
    let meta = format!("{}/", lineage.meta_prefix());
    let data = format!("{}/", lineage.data_lineage_prefix());
    // Group objects by the (sequence, snapshot) they belong to.
    let mut groups: BTreeMap<(String, String), Vec<(String, SystemTime)>> = BTreeMap::new();
    for prefix in [&meta, &data] {
        for object in store.list_objects(prefix).await? {
            let rest = &object.key[prefix.len()..];
            let parts: Vec<&str> = rest.split('/').collect();
            let owner = match parts.as_slice() {
                [sequence, "snapshots", snapshot] => (sequence.to_string(), snapshot.to_string()),
                [sequence, snapshot, _chunk] if prefix == &data => {
                    (sequence.to_string(), snapshot.to_string())
                }
                [sequence, "sequence"] if sequences.contains(sequence) => continue,
                _ => continue,
            };
            if listed.contains(&owner) {
                continue;
            }
            groups
                .entry(owner)
                .or_default()
                .push((object.key, object.last_modified));
        }
    }
    let now = SystemTime::now();
    let old = |t: &SystemTime| {
        now.duration_since(*t)
            .is_ok_and(|age| age >= UNFINISHED_GRACE)
    };
    let mut deleted = 0;
    for objects in groups.values() {
        if !objects.iter().all(|(_, modified)| old(modified)) {
            continue; // a push may still be running, or about to resume
        }
        for (key, _) in objects {
            if !dry_run {
                store.delete(key).await?;
            }
            deleted += 1;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use chrono::{Duration as Span, TimeZone, Utc};
    use proptest::prelude::*;

    use super::super::record::test_support::{Spec, sequence};
    use super::*;

    /// Sequences of `lengths` snapshots, hours apart; each incremental's
    /// parent is one of the snapshots before it in its sequence, picked by
    /// `parents`.
    fn chains(lengths: &[usize], parents: &[usize], head: usize) -> Chains {
        let lineage = Lineage::new("v", "@").unwrap();
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut hour = 0;
        let mut pick = parents.iter().cycle();
        let names: Vec<Vec<String>> = lengths
            .iter()
            .enumerate()
            .map(|(s, &n)| (0..n).map(|i| format!("s{s}i{i}")).collect())
            .collect();
        let mut sequences = Vec::new();
        for seq_names in &names {
            let mut specs: Vec<Spec<'_>> = Vec::new();
            for (i, name) in seq_names.iter().enumerate() {
                let parent = (i > 0).then(|| seq_names[pick.next().unwrap() % i].as_str());
                hour += 7;
                specs.push((name, parent, start + Span::hours(hour), false));
            }
            sequences.push(sequence(&lineage, &specs));
        }
        let head = sequences[head % sequences.len()].name().to_string();
        Chains::for_tests(&lineage, Some(&head), sequences)
    }

    proptest! {
        #[test]
        fn a_prune_keeps_every_kept_snapshot_restorable(
            lengths in proptest::collection::vec(1usize..6, 1..5),
            parents in proptest::collection::vec(0usize..100, 1..20),
            head in 0usize..5,
            hourly in 0usize..4, daily in 0usize..3, weekly in 0usize..2,
        ) {
            let chains = chains(&lengths, &parents, head);
            let retention = Retention { hourly, daily, weekly, monthly: 0 };
            prop_assume!(!retention.keeps_nothing());
            let plan = plan(&chains, &retention);
            let entries: Vec<_> = chains.sequences().iter().flat_map(|s| s.snapshots()).collect();
            let times: Vec<_> = entries.iter().map(|e| e.created()).collect();
            // The policy's choice stays.
            for index in retention::keep(&times, &retention) {
                prop_assert!(plan.kept.contains_key(entries[index].name()));
            }
            // The current chain is untouched.
            let current = chains.current().unwrap();
            prop_assert!(plan.dropped.iter().all(|s| s.name() != current.name()));
            prop_assert!(plan.trimmed.iter().all(|(s, _)| s.name() != current.name()));
            // What stays is listed, and restorable from what stays.
            let after: Vec<&Sequence> = chains
                .sequences()
                .iter()
                .filter(|s| plan.dropped.iter().all(|d| d.name() != s.name()))
                .map(|s| plan.trimmed.iter().find(|(b, _)| b.name() == s.name()).map_or(s, |(_, a)| a))
                .collect();
            for name in plan.kept.keys() {
                let holder = after.iter().find(|s| s.entry(name).is_some());
                prop_assert!(holder.is_some(), "{} kept but not listed", name);
                prop_assert!(holder.unwrap().chain_to(name).is_ok(), "{}'s chain broken", name);
            }
            // Nothing stays that is not kept.
            for sequence in &after {
                for entry in sequence.snapshots() {
                    prop_assert!(plan.kept.contains_key(entry.name()));
                }
            }
        }
    }
}
