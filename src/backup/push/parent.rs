//! Which parent a push sends against: the newest snapshot of the current
//! chain that is still on this filesystem, the very one (its UUID) the
//! chain holds, and older than the snapshot sent. Otherwise a full stream
//! starts a new sequence, and the reason is said.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::super::BackupError;
use super::super::record::Sequence;

/// A read-only snapshot of the subvolume on this filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    name: String,
    uuid: Uuid,
    created: DateTime<Utc>,
}

impl Local {
    pub fn new(name: &str, uuid: Uuid, created: DateTime<Utc>) -> Local {
        Local {
            name: name.to_string(),
            uuid,
            created,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn created(&self) -> DateTime<Utc> {
        self.created
    }
}

/// What a push sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// `btrfs send -p parent`, listed next in `sequence`.
    Incremental { sequence: String, parent: String },
    /// A full stream, which starts a new sequence; `reason` says why.
    Full { reason: String },
}

/// What the choice depends on.
pub struct Choice<'a> {
    /// The head's sequence, if the destination has one for the lineage.
    pub(super) current: Option<&'a Sequence>,
    /// The subvolume's read-only snapshots here.
    pub(super) local: &'a [Local],
    pub(super) sending: &'a Local,
    pub(super) encrypted: bool,
    pub(super) full_every: Option<u32>,
    /// The parent the last push from here recorded, if any.
    pub(super) last_pushed: Option<&'a str>,
}

impl Choice<'_> {
    pub fn decide(&self) -> Result<Plan, BackupError> {
        let full = |reason: String| Ok(Plan::Full { reason });
        let Some(current) = self.current else {
            return match self.last_pushed {
                Some(last) => full(format!(
                    "the destination has no chain of this subvolume any more (the last push from here sent {last})"
                )),
                None => full("the destination has no backup of this subvolume yet".to_string()),
            };
        };
        check_encryption(Some(current), self.encrypted)?;
        let chain_encrypted = is_encrypted(current);
        if self.encrypted && !chain_encrypted {
            return full("the current chain is not encrypted and this push is".to_string());
        }
        if let Some(every) = self.full_every
            && current.snapshots().len() >= every as usize
        {
            return full(format!(
                "--full-every {every}: the current chain has {} snapshots",
                current.snapshots().len()
            ));
        }
        let here = |name: &str| self.local.iter().find(|l| l.name == name);
        let parent = current
            .snapshots()
            .iter()
            .filter(|e| e.created() < self.sending.created && e.name() != self.sending.name)
            .filter(|e| here(e.name()).is_some_and(|l| l.uuid == e.uuid()))
            .max_by_key(|e| (e.created(), e.pushed()));
        if let Some(parent) = parent {
            return Ok(Plan::Incremental {
                sequence: current.name().to_string(),
                parent: parent.name().to_string(),
            });
        }
        let newest = current.snapshots().iter().max_by_key(|e| e.created());
        let replaced = current
            .snapshots()
            .iter()
            .find(|e| here(e.name()).is_some_and(|l| l.uuid != e.uuid()));
        let reason = match (replaced, newest, self.last_pushed) {
            (Some(e), _, _) => format!(
                "{} here is not the snapshot of that name in the chain (its btrfs UUID differs)",
                e.name()
            ),
            (None, _, Some(last)) if current.entry(last).is_none() => format!(
                "the parent {last}, pushed from here last, is not in the destination's current chain"
            ),
            (None, Some(newest), _) => format!(
                "no snapshot of the current chain (the newest is {}) is on this filesystem any more, or older than {}",
                newest.name(),
                self.sending.name
            ),
            (None, None, _) => "the current chain is empty".to_string(),
        };
        full(reason)
    }
}

fn is_encrypted(chain: &Sequence) -> bool {
    chain.snapshots().last().is_some_and(|e| e.encrypted())
}

/// Refuses a push in the clear into an encrypted chain (before a
/// snapshot is taken for it).
pub fn check_encryption(current: Option<&Sequence>, encrypted: bool) -> Result<(), BackupError> {
    match current.is_some_and(is_encrypted) && !encrypted {
        true => Err(BackupError::Invalid(
            "the current chain is encrypted: give --age-recipient KEY (a push never stores an encrypted chain's next snapshot in the clear)".to_string(),
        )),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::super::super::layout::Lineage;
    use super::super::super::record::test_support::{sequence, uuid_of};
    use super::*;

    fn at(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, hour, 0, 0).unwrap()
    }

    fn local(name: &str, hour: u32) -> Local {
        Local::new(name, uuid_of(name), at(hour))
    }

    fn decide(
        current: Option<&Sequence>,
        here: &[Local],
        sending: &Local,
        encrypted: bool,
        full_every: Option<u32>,
    ) -> Result<Plan, BackupError> {
        Choice {
            current,
            local: here,
            sending,
            encrypted,
            full_every,
            last_pushed: None,
        }
        .decide()
    }

    #[test]
    fn the_parent_is_the_newest_snapshot_of_the_chain_still_here() {
        let lineage = Lineage::new("v", "@").unwrap();
        let chain = sequence(
            &lineage,
            &[
                ("A", None, at(1), false),
                ("B", Some("A"), at(2), false),
                ("C", Some("B"), at(3), false),
            ],
        );
        let sending = local("D", 4);
        let incremental = |parent: &str| Plan::Incremental {
            sequence: "A".into(),
            parent: parent.into(),
        };
        // C is here: the parent.
        let here = [local("A", 1), local("B", 2), local("C", 3)];
        assert_eq!(
            decide(Some(&chain), &here, &sending, false, None).unwrap(),
            incremental("C")
        );
        // C was deleted here: B.
        let here = [local("A", 1), local("B", 2)];
        assert_eq!(
            decide(Some(&chain), &here, &sending, false, None).unwrap(),
            incremental("B")
        );
        // A snapshot named C that is not the chain's C (another UUID): not a parent.
        let mut here = vec![local("B", 2)];
        here.push(Local::new("C", uuid_of("other"), at(3)));
        assert_eq!(
            decide(Some(&chain), &here, &sending, false, None).unwrap(),
            incremental("B")
        );
        let only_impostor = [Local::new("C", uuid_of("other"), at(3))];
        let Plan::Full { reason } =
            decide(Some(&chain), &only_impostor, &sending, false, None).unwrap()
        else {
            panic!("full expected")
        };
        assert!(reason.contains("UUID"), "{reason}");
        // Nothing of the chain here: a full stream, saying why.
        let Plan::Full { reason } = decide(Some(&chain), &[], &sending, false, None).unwrap()
        else {
            panic!("full expected")
        };
        assert!(reason.contains("C"), "{reason}");
        // No chain yet.
        let Plan::Full { reason } = decide(None, &[], &sending, false, None).unwrap() else {
            panic!("full expected")
        };
        assert!(reason.contains("no backup"), "{reason}");
    }

    #[test]
    fn an_older_snapshot_is_never_sent_against_a_newer_parent() {
        let lineage = Lineage::new("v", "@").unwrap();
        let chain = sequence(
            &lineage,
            &[("A", None, at(1), false), ("C", Some("A"), at(3), false)],
        );
        let here = [local("A", 1), local("B", 2), local("C", 3)];
        let plan = decide(Some(&chain), &here, &local("B", 2), false, None).unwrap();
        assert_eq!(
            plan,
            Plan::Incremental {
                sequence: "A".into(),
                parent: "A".into()
            }
        );
    }

    #[test]
    fn full_every_and_encryption_start_new_chains_and_never_downgrade() {
        let lineage = Lineage::new("v", "@").unwrap();
        let plain = sequence(
            &lineage,
            &[("A", None, at(1), false), ("B", Some("A"), at(2), false)],
        );
        let here = [local("A", 1), local("B", 2)];
        let sending = local("C", 3);
        assert!(
            matches!(decide(Some(&plain), &here, &sending, false, Some(2)).unwrap(), Plan::Full { reason } if reason.contains("--full-every 2"))
        );
        assert!(matches!(
            decide(Some(&plain), &here, &sending, false, Some(3)).unwrap(),
            Plan::Incremental { .. }
        ));
        assert!(
            matches!(decide(Some(&plain), &here, &sending, true, None).unwrap(), Plan::Full { reason } if reason.contains("not encrypted"))
        );
        let sealed = sequence(
            &lineage,
            &[("A", None, at(1), true), ("B", Some("A"), at(2), true)],
        );
        let error = decide(Some(&sealed), &here, &sending, false, None).unwrap_err();
        assert!(error.to_string().contains("--age-recipient"), "{error}");
        assert!(matches!(
            decide(Some(&sealed), &here, &sending, true, None).unwrap(),
            Plan::Incremental { .. }
        ));
    }
}
