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

/// How far the cutoff stays below the clock, for a transaction whose start the activity
/// view does not show yet.
///
/// Why it is needed: a backend takes its transaction's start time (`now()`, which becomes
/// `updated_at`) when a statement arrives (`SetCurrentStatementStartTimestamp` in
/// `PostgresMain`) and shows it in pg_stat_activity a moment later
/// (`StartTransaction` → `pgstat_report_xact_timestamp`). A cutoff whose clock is read in
/// that moment does not see it being held back by that transaction.
///
/// Why 100 ms and not less: that moment is CPU work only (a memory context, a resource
/// owner, the backend's own virtual-xid lock; no I/O, no lock another session holds), so
/// it lasts longer only while the kernel has taken the backend's CPU away, and that has no
/// bound on a loaded host. `benches/latency.rs` measures it with a probe (a run's three
/// reads, again and again, beside 1,000 updates/s): on this two-core machine at load 5
/// to 8, of 15,818 updates caught in flight three had started before the clock and were
/// not yet in the view, 207 to 367 µs before it; and with a 25 ms margin one update of 20,000 never reached
/// the topic (that run kept no detail; this race is the one cause found), which wake-ups
/// make likelier (a run, and so a chance to lose, every few tens of ms instead of every
/// `poll_interval`). Latency is won by waking runs at the right moment instead.
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
    /// The database clock it was taken at.
    pub clock: DateTime<Utc>,
    /// The open transaction that holds it back further than the margin, if one does.
    pub held_by: Option<OpenTransaction>,
}

/// An open transaction, as operators find it in `pg_stat_activity`: its backend's pid and
/// when it began. Never its query, which may hold anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenTransaction {
    pub pid: i32,
    pub started: DateTime<Utc>,
}

impl OpenTransaction {
    /// How long it has been open at `clock`, to the millisecond (for logs).
    pub fn age(&self, clock: DateTime<Utc>) -> Duration {
        millis(clock - self.started)
    }
}

/// A span of the database clock, to the millisecond, for logs (never negative).
pub fn millis(span: chrono::Duration) -> Duration {
    Duration::from_millis(span.num_milliseconds().max(0) as u64)
}

/// How long after a change commits a fresh cutoff passes it, when no open transaction
/// holds the cutoff back: the guard's margin (or the lag), plus what truncating the cutoff
/// to the column's `precision` and the column's rounding can take off (two units).
pub fn settle(mode: CutoffMode, precision: u16) -> Duration {
    let below_clock = match mode {
        CutoffMode::Xact { .. } => PUBLISH_MARGIN.to_std().unwrap_or_default(),
        CutoffMode::Lag(lag) => lag,
    };
    below_clock + 2 * Duration::from_micros(10u64.pow(6 - u32::from(precision.min(6))))
}

/// The database clock.
pub async fn clock(client: &Client) -> Result<DateTime<Utc>, StoreError> {
    Ok(client
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .map_err(StoreError::db("reading the database clock"))?
        .get(0))
}

/// The least cutoff whose window holds every row committed before `start`, for a column
/// that keeps `precision` fractional digits (cutoffs are truncated to them).
///
/// A row committed before `start` has `updated_at` (its transaction's start) before it;
/// a `timestamp(p)` column rounds that value half up, so it can land on the unit that
/// holds `start` or the next one. The window ends below its cutoff, so the cutoff must
/// pass the largest such value.
pub fn covering(start: DateTime<Utc>, precision: u16) -> DateTime<Utc> {
    let unit = 10i64.pow(6 - u32::from(precision.min(6)));
    let latest = start.timestamp_micros() - 1;
    let rounded = (latest + unit / 2).div_euclid(unit) * unit;
    DateTime::from_timestamp_micros(rounded + unit).unwrap_or(start)
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

/// The oldest transaction open in this database but the caller's, as the activity view
/// shows it now: what the guard holds the cutoff at (`benches/latency.rs` probes the
/// same view through it). The pid comes along so that a hold can be traced to its
/// session; the ordering is as cheap as min() on the handful of rows the view has.
///
/// Not `idle` sessions: no transaction of their client is open. One shows an `xact_start`
/// only while it reads a notification (or a cache invalidation) in a short transaction of
/// its own, stamped with the start of its last statement: a LISTEN connection shows its
/// LISTEN, minutes ago, and held every run it was seen by back to it. Such a transaction
/// writes nothing. A client's own transaction shows `active` before its start appears (a
/// statement reports itself running, then starts the transaction), and `idle in
/// transaction` between statements; should that order ever differ, the margin covers it.
pub async fn oldest_open_transaction(client: &Client) -> Result<Option<OpenTransaction>, StoreError> {
    Ok(client
        .query_opt(
            "SELECT pid, xact_start FROM pg_stat_activity
              WHERE datname = current_database()
                AND pid <> pg_backend_pid()
                AND backend_type = 'client backend'
                AND xact_start IS NOT NULL
                AND state IS DISTINCT FROM 'idle'
              ORDER BY xact_start LIMIT 1",
            &[],
        )
        .await
        .map_err(StoreError::db("reading pg_stat_activity"))?
        .map(|row| OpenTransaction { pid: row.get(0), started: row.get(1) }))
}

/// Computes a fresh cutoff.
pub async fn cutoff(client: &Client, mode: CutoffMode) -> Result<Cutoff, StoreError> {
    // The clock is read first, in its own statement (its own snapshot): any transaction
    // that started before this instant is either still open, and so in the activity view
    // read next, or committed.
    let clock = clock(client).await?;
    let held = |by: chrono::Duration| by.to_std().unwrap_or_default();
    match mode {
        CutoffMode::Lag(lag) => {
            let at = clock - chrono::Duration::from_std(lag).unwrap_or_default();
            Ok(Cutoff { at, holdback: lag, clock, held_by: None })
        }
        CutoffMode::Xact { max_hold } => {
            let oldest = oldest_open_transaction(client).await?;
            let floor = clock - chrono::Duration::from_std(max_hold).unwrap_or_default();
            let guarded_clock = clock - PUBLISH_MARGIN;
            let (at, held_by) = match oldest {
                Some(txn) if txn.started < floor => {
                    tracing::warn!(
                        pid = txn.pid,
                        age = ?txn.age(clock),
                        max_hold = ?max_hold,
                        "a transaction has been open longer than cutoff_max_hold; going on without it: rows it commits may be missed"
                    );
                    (floor, Some(txn))
                }
                Some(txn) if txn.started < guarded_clock => (txn.started, Some(txn)),
                _ => (guarded_clock, None),
            };
            Ok(Cutoff { at, holdback: held(clock - at), clock, held_by })
        }
    }
}

/// Tells operators when an open transaction holds the cutoff back, which delays every
/// change made since it began: which one (pid, age) and how long it has held the cutoff
/// in this process. Short transactions come and go without a word; one that holds the
/// cutoff for `NOTICE` is logged, again each time its hold has doubled (a few lines
/// for the longest hold), and once more when it lets go.
#[derive(Debug, Default)]
pub struct HoldLog {
    current: Option<Hold>,
}

#[derive(Debug)]
struct Hold {
    txn: OpenTransaction,
    /// The database clock when a cutoff was first seen held by it.
    since: DateTime<Utc>,
    /// The hold that is logged next.
    next_notice: chrono::Duration,
}

impl HoldLog {
    const NOTICE: chrono::Duration = chrono::Duration::seconds(5);

    /// Notes what holds a fresh cutoff, logging as above.
    pub fn observe(&mut self, pipeline: &str, cutoff: &Cutoff) {
        if self.current.as_ref().map(|h| h.txn) != cutoff.held_by {
            if let Some(done) = self.current.take().filter(|h| h.next_notice > Self::NOTICE) {
                tracing::info!(
                    pipeline,
                    pid = done.txn.pid,
                    held_for = ?millis(cutoff.clock - done.since),
                    "the transaction that held the cutoff back no longer does"
                );
            }
            self.current = cutoff.held_by.map(|txn| Hold { txn, since: cutoff.clock, next_notice: Self::NOTICE });
        }
        let Some(hold) = &mut self.current else { return };
        let held_for = cutoff.clock - hold.since;
        if held_for >= hold.next_notice {
            tracing::warn!(
                pipeline,
                pid = hold.txn.pid,
                age = ?hold.txn.age(cutoff.clock),
                held_for = ?millis(held_for),
                "an open transaction holds the cutoff at its start: changes made since then wait until it ends \
                 (find it in pg_stat_activity by pid)"
            );
            hold.next_notice = held_for * 2;
        }
    }

    /// The transaction holding the cutoff now, and for how long (at `clock`).
    pub fn holder(&self, clock: DateTime<Utc>) -> Option<(OpenTransaction, Duration)> {
        self.current.as_ref().map(|h| (h.txn, millis(clock - h.since)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_covering_cutoff_passes_every_value_a_column_can_hold_before_the_start() {
        // Microseconds: the start itself.
        assert_eq!(covering(at("2024-01-15T10:30:00.123456Z"), 6), at("2024-01-15T10:30:00.123456Z"));
        // Whole seconds: 10:30:00.4 rounds down to 10:30:00, so 10:30:01 covers it...
        assert_eq!(covering(at("2024-01-15T10:30:00.4Z"), 0), at("2024-01-15T10:30:01Z"));
        // ...but a transaction started at 10:30:00.6 stores 10:30:01: the cutoff must pass it.
        assert_eq!(covering(at("2024-01-15T10:30:00.7Z"), 0), at("2024-01-15T10:30:02Z"));
        // Exactly on a second: everything before it rounds to it at most.
        assert_eq!(covering(at("2024-01-15T10:30:00Z"), 0), at("2024-01-15T10:30:01Z"));
        assert_eq!(covering(at("2024-01-15T10:30:00.1234Z"), 3), at("2024-01-15T10:30:00.124Z"));
    }
}
