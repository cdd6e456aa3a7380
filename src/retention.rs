//! Snapshot retention: which snapshots `snapshot prune --keep-hourly 24
//! --keep-daily 7 --keep-weekly 4 --keep-monthly 12` keeps, for btrfs
//! snapshots and volume snapshots alike.
//!
//! Each rule keeps the newest snapshot of each of its N most recent
//! periods (UTC hours, days, ISO weeks, months) that have a snapshot; a
//! snapshot kept by any rule stays. Callers apply the rules to each set
//! of snapshots separately (a btrfs subvolume's, a volume's). The decision is a pure function of the snapshots'
//! times, so running prune twice, or from two timers at once, deletes
//! nothing more.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

/// How many periods of each kind to keep a snapshot for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
}

impl Retention {
    pub fn keeps_nothing(&self) -> bool {
        self.hourly + self.daily + self.weekly + self.monthly == 0
    }

    fn rules(&self) -> [(usize, &'static str); 4] {
        [
            (self.hourly, "%Y-%m-%d %H"),
            (self.daily, "%Y-%m-%d"),
            (self.weekly, "%G-W%V"),
            (self.monthly, "%Y-%m"),
        ]
    }
}

/// The indices of `times` to keep.
pub fn keep(times: &[DateTime<Utc>], retention: &Retention) -> BTreeSet<usize> {
    let mut newest_first: Vec<usize> = (0..times.len()).collect();
    newest_first.sort_by(|&a, &b| times[b].cmp(&times[a]));
    let mut kept = BTreeSet::new();
    for (count, period) in retention.rules() {
        let mut periods_seen = 0;
        let mut last_period = None;
        for &index in &newest_first {
            if periods_seen == count {
                break;
            }
            let this_period = times[index].format(period).to_string();
            if last_period.as_ref() != Some(&this_period) {
                kept.insert(index);
                periods_seen += 1;
                last_period = Some(this_period);
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use proptest::prelude::*;

    fn hours_back(n: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 12, 30, 0).unwrap() - Duration::hours(n)
    }

    #[test]
    fn hourly_snapshots_for_ten_weeks() {
        let times: Vec<_> = (0..24 * 70).map(hours_back).collect();
        let retention = Retention {
            hourly: 24,
            daily: 7,
            weekly: 4,
            monthly: 12,
        };
        let kept = keep(&times, &retention);
        // 24 hours; 7 days, of which today's and yesterday's newest are
        // among those hours; 4 weeks and 3 months, overlapping.
        assert!(kept.contains(&0), "the newest is kept");
        assert!((0..24).all(|i| kept.contains(&i)), "the last 24 hours");
        assert!(kept.len() < 24 + 7 + 4 + 12, "rules overlap");
        let oldest_kept = kept.iter().map(|&i| times[i]).min().unwrap();
        // Ten weeks back from 22 November starts in September.
        assert_eq!(oldest_kept.format("%Y-%m").to_string(), "2026-09");
    }

    #[test]
    fn keeping_nothing_deletes_everything() {
        let times: Vec<_> = (0..5).map(hours_back).collect();
        assert!(keep(&times, &Retention::default()).is_empty());
        assert!(Retention::default().keeps_nothing());
    }

    #[test]
    fn a_daily_rule_keeps_the_newest_of_each_day() {
        // Three snapshots on each of four days, newest day first.
        let times: Vec<_> = (0..4)
            .flat_map(|day| [0, 2, 4].map(|h| hours_back(day * 24 + h)))
            .collect();
        let kept = keep(
            &times,
            &Retention {
                daily: 2,
                ..Retention::default()
            },
        );
        let kept_times: Vec<_> = kept.iter().map(|&i| times[i]).collect();
        assert_eq!(kept_times, [hours_back(0), hours_back(24)]);
    }

    proptest! {
        /// Against a model: a snapshot is kept exactly when it is the
        /// newest of its period and that period is among the rule's N
        /// newest periods, for some rule.
        #[test]
        fn matches_the_model(
            offsets in proptest::collection::vec(0i64..24 * 400, 0..60),
            hourly in 0usize..30, daily in 0usize..10, weekly in 0usize..6, monthly in 0usize..14,
        ) {
            let times: Vec<_> = offsets.iter().map(|&h| hours_back(h)).collect();
            let retention = Retention { hourly, daily, weekly, monthly };
            let kept = keep(&times, &retention);
            for (index, time) in times.iter().enumerate() {
                let wanted = retention.rules().iter().any(|&(count, period)| {
                    let label = |t: &DateTime<Utc>| t.format(period).to_string();
                    let newest_in_period = times.iter().enumerate().all(|(j, other)| {
                        label(other) != label(time) || other < time || (other == time && j >= index)
                    });
                    let mut periods: Vec<String> = times.iter().map(label).collect();
                    periods.sort();
                    periods.dedup();
                    periods.reverse();
                    newest_in_period && periods.iter().take(count).any(|p| *p == label(time))
                });
                prop_assert_eq!(kept.contains(&index), wanted, "snapshot {} at {}", index, time);
            }
        }
    }
}
