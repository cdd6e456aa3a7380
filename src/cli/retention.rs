//! The retention flags every prune takes (`snapshot prune`, `volume
//! snapshot prune`, `backup prune`), declared once.

use crate::retention::Retention;

#[derive(Debug, Clone, clap::Args)]
pub struct RetentionArgs {
    /// Keep the newest snapshot of each of the last N hours
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_hourly: usize,
    /// Keep the newest snapshot of each of the last N days
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_daily: usize,
    /// Keep the newest snapshot of each of the last N ISO weeks
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_weekly: usize,
    /// Keep the newest snapshot of each of the last N months
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_monthly: usize,
}

impl RetentionArgs {
    /// The policy; one that keeps nothing is refused.
    pub fn policy(&self) -> anyhow::Result<Retention> {
        let retention = Retention {
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
        };
        anyhow::ensure!(
            !retention.keeps_nothing(),
            "a prune that keeps nothing would delete every snapshot: give at least one of --keep-hourly, --keep-daily, --keep-weekly or --keep-monthly"
        );
        Ok(retention)
    }
}
