//! The cutoff of a run: the upper bound of its window `[since, cutoff)`, taken from the
//! database clock and held below the start of the oldest open transaction.
//!
//! Why: `updated_at` is `now()`, the start of the writing transaction. A transaction that
//! started before a cutoff and commits after the run read past it writes rows *below* the
//! cutoff that the run could not see, and the next run starts at the cutoff: a timestamp
//! poller loses them for good. Holding the cutoff at or below every open transaction's
//! `xact_start` means no row can still commit below it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::StoreError;

/// A backend takes its transaction's start time a moment before it publishes it in
/// pg_stat_activity. The cutoff stays this far below the clock so that a transaction in
/// that moment is still covered.
const PUBLISH_MARGIN: chrono::Duration = chrono::Duration::milliseconds(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutoffMode {
    /// The late-commit guard; `max_hold` bounds how long one open transaction can hold
    /// every run back.
    Xact { max_hold: Duration },
    /// The database clock minus a fixed lag.
    Lag(Duration),
}

/// A run's cutoff and how far below the database clock it sits.
#[derive(Debug, Clone, Copy)]
pub struct Cutoff {
    pub at: DateTime<Utc>,
    pub holdback: Duration,
}

/// Whether this role sees other sessions' `xact_start`: superusers and members of
/// `pg_read_all_stats` do; others see NULL for every session but their own.
pub async fn can_see_other_sessions(client: &Client) -> Result<bool, StoreError> {
    let row = client
        .query_one(
            "SELECT r.rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER')
               FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(StoreError::db("checking the role's view of pg_stat_activity"))?;
    Ok(row.get(0))
}

/// Computes a fresh cutoff.
pub async fn cutoff(client: &Client, mode: CutoffMode) -> Result<Cutoff, StoreError> {
    // The clock is read first, in its own statement (its own snapshot): any transaction
    // that started before this instant is either still open, and so in the activity view
    // read next, or committed.
    let clock: DateTime<Utc> = client
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .map_err(StoreError::db("reading the database clock"))?
        .get(0);
    let held = |by: chrono::Duration| by.to_std().unwrap_or_default();
    match mode {
        CutoffMode::Lag(lag) => {
            let at = clock - chrono::Duration::from_std(lag).unwrap_or_default();
            Ok(Cutoff { at, holdback: lag })
        }
        CutoffMode::Xact { max_hold } => {
            let oldest: Option<DateTime<Utc>> = client
                .query_one(
                    "SELECT min(xact_start) FROM pg_stat_activity
                      WHERE datname = current_database()
                        AND pid <> pg_backend_pid()
                        AND backend_type = 'client backend'
                        AND xact_start IS NOT NULL",
                    &[],
                )
                .await
                .map_err(StoreError::db("reading pg_stat_activity"))?
                .get(0);
            let floor = clock - chrono::Duration::from_std(max_hold).unwrap_or_default();
            let guarded_clock = clock - PUBLISH_MARGIN;
            let at = match oldest {
                Some(start) if start < floor => {
                    tracing::warn!(
                        transaction_start = %crate::timestamp::format(start),
                        max_hold = ?max_hold,
                        "a transaction has been open longer than cutoff_max_hold; going on without it: rows it commits may be missed"
                    );
                    floor
                }
                Some(start) if start < guarded_clock => start,
                _ => guarded_clock,
            };
            Ok(Cutoff { at, holdback: held(clock - at) })
        }
    }
}
