//! The orders API source: a wholesale portal's `GET /api/orders/` (seed 002). The API has
//! no cursor and no cutoff; its page numbers move under a reader (an order updated during
//! a walk leaves the window and every order behind it moves one place earlier), its
//! timestamps are zone-less and whole seconds, any number of orders can share a second,
//! and `id` is not sortable. So the walk never trusts a page number across requests:
//!
//! * A run covers the closed window `[from, to]` on `filter_on=updated_at`, where `to` is
//!   the server's clock (its `Date`) minus `settle`. Only the clock of the portal that
//!   stamps `updated_at` can say which seconds are over; ours may be off by a minute.
//! * Every request is page 1 of `[from, to]` sorted by `updated_at` (asked to a second
//!   past `to`, so that `to` is whole however the API reads `date_to`; what lies past
//!   `to` is the next run's): it holds the oldest orders of the window *at that moment*. Every second below the page's newest second M
//!   is therefore whole in it, and the walk moves `from` up to M, remembering what it
//!   published at M. An order that changes meanwhile leaves for a second past `to`, where
//!   the next run finds its new version; no order can enter a second that is over.
//! * What was already published at `from` is skipped by the content hash of its bytes,
//!   not by (id, second): an order that changes twice within one second is two versions.
//! * A full page that is all one second (`M = from`) cannot move `from`: that second holds
//!   more than a page. It is swept with `page=1, 2, …` over `[from, from + 1 s]` until one
//!   whole pass saw the server's `total` steady on every page and every order of `from`:
//!   a pass ends at the listing's end or at its first order past `from` (sorted after
//!   it), and it saw them all if it listed at least `total` distinct orders, or, ended
//!   past `from`, if no page before the last was short and no order came twice (every
//!   place of `from` in the listing held once). A second that is over can only lose
//!   orders, so a steady total means the set did not change during the pass, in whatever
//!   order the server lists ties. Without a total, a pass that held every place once
//!   must end with as many orders of `from` as the pass before it ended with: none left
//!   meanwhile. Then `from` moves to the next second.
//! * The sweep's `date_to` is the next second because portals read `date_to` three ways:
//!   to the end of the second it names (ours), to its start (one that keeps times finer
//!   than it writes them and compares with `<=`), or up to it (`<`). `date_to = from`
//!   would list only the start of `from` or nothing in the last two. The window's last
//!   second is never swept: its sweep would list the next, which may still be written.
//! * A page that holds the whole window ends the run; the next run starts at the newest
//!   second published, so a write that committed late into it is still found. So does a
//!   full page of the window's last second: the walk never moves past `to` by itself.
//! * The sort is `updated_at,order_number` (the seed sorts "by one or more fields"): a
//!   server that pages ties with LIMIT/OFFSET may otherwise list them in another order on
//!   every page (PostgreSQL's top-N sort does), so that some are on no page, pass after
//!   pass. A server that refuses the second field (a 400 or 422 that names the sort) is
//!   read by `updated_at` alone, with the sweep's counts as the only defence.
//!
//! The position is `{from, seen}`: the second to read from, as the API writes times, and
//! the hashes published at it. A crash resumes there; a sweep starts its passes again.

use std::collections::HashSet;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, SubsecRound, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use reqwest::header::HeaderName;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::head::HeadFields;
use super::http::{self, Credential, Dialect, DialectConfig, LocalState, TransportSettings};
use super::{Batch, Record, RecordBody, SourceError};
use crate::config::{InvalidValue, OrdersApiSourceConfig};

/// How the API writes and reads datetimes (`updated_since=2025-06-01%2000:00:00`).
const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";
pub const MAX_PER_PAGE: u32 = 250;
const INCLUDES: [&str; 3] = ["items", "shipments", "status_history"];
/// Parameters the walk sets itself: a filter may not override them.
const WALK_PARAMETERS: [&str; 9] = ["filter_on", "date_from", "date_to", "updated_since", "sort", "page", "per_page", "include", "api_key"];
/// The sort the walk asks for, and the one it falls back to when that is refused.
const SORT: &str = "updated_at,order_number";
const SORT_ALONE: &str = "updated_at";
/// Passes over one second that brought nothing new, after which it counts as read even
/// when no pass came out whole (a `total` that promises more than the pages hold, pages
/// shorter than asked, orders listed twice, or orders that kept leaving it).
const QUIET_PASSES: u32 = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub v: u32,
    /// The second the walk reads from (inclusive), as the API writes times.
    pub from: String,
    /// xxh3-64 hashes (hex) of the versions published whose `updated_at` is `from`.
    #[serde(default)]
    pub seen: Vec<String>,
}

impl Position {
    const VERSION: u32 = 1;

    /// A walk from the second of `since`, as the API's zone writes it.
    fn at(since: DateTime<Utc>, zone: Tz) -> Self {
        Self { v: Self::VERSION, from: local_second(since, zone).format(TIME_FORMAT).to_string(), seen: Vec::new() }
    }
}

impl DialectConfig for OrdersApiSourceConfig {
    fn identity(&self) -> String {
        http::without_credentials(&self.url)
    }

    fn validate(&self) -> Result<(), InvalidValue> {
        http::check_url("source.url", &self.url)?;
        if self.api_key.expose().trim().is_empty() {
            return Err(InvalidValue::new("source.api_key", "must not be empty"));
        }
        if !(1..=MAX_PER_PAGE).contains(&self.per_page) {
            return Err(InvalidValue::new("source.per_page", format!("must be between 1 and {MAX_PER_PAGE}")));
        }
        if let Some(unknown) = self.include.iter().find(|i| !INCLUDES.contains(&i.as_str())) {
            return Err(InvalidValue::new("source.include", format!("{unknown:?} is not one of {}", INCLUDES.join(", "))));
        }
        if let Some(taken) = self.filters.keys().find(|k| WALK_PARAMETERS.contains(&k.as_str())) {
            return Err(InvalidValue::new("source.filters", format!("{taken:?} is set by the walk itself and cannot be a filter")));
        }
        Tz::from_str(&self.timezone).map_err(|_| InvalidValue::new("source.timezone", format!("{:?} is not an IANA time zone (e.g. UTC, Europe/Berlin)", self.timezone)))?;
        Ok(())
    }

    fn transport(&self) -> TransportSettings {
        TransportSettings {
            request_timeout: self.request_timeout,
            max_response_bytes: self.max_response_bytes,
            credential: Credential::Header { key: "api_key", name: HeaderName::from_static("x-api-key"), value: self.api_key.clone() },
        }
    }

    fn open(&self, _local: &LocalState) -> Result<Box<dyn Dialect>, SourceError> {
        let endpoint = url::Url::parse(&self.url).map_err(|e| SourceError::Setup(format!("source.url is not a URL: {e}")))?;
        let zone = Tz::from_str(&self.timezone).map_err(|_| SourceError::Setup("source.timezone is not an IANA time zone".into()))?;
        let settle = TimeDelta::from_std(self.settle).map_err(|_| SourceError::Setup("source.settle is too long".into()))?;
        let from = local_second(DateTime::UNIX_EPOCH, zone);
        Ok(Box::new(OrdersApi { cfg: self.clone(), endpoint, zone, settle, from, seen: HashSet::new(), run: None, started: None, left: None, tie_break: true }))
    }

    fn position_since(&self, since: DateTime<Utc>) -> serde_json::Value {
        let zone = Tz::from_str(&self.timezone).unwrap_or(Tz::UTC);
        serde_json::to_value(Position::at(since, zone)).expect("a position serialises")
    }
}

/// An instant as the API's zone writes it, cut to the second.
fn local_second(t: DateTime<Utc>, zone: Tz) -> NaiveDateTime {
    t.with_timezone(&zone).naive_local().trunc_subsecs(0)
}

struct OrdersApi {
    cfg: OrdersApiSourceConfig,
    endpoint: url::Url,
    zone: Tz,
    settle: TimeDelta,
    /// The second the walk reads from, in the API's zone.
    from: NaiveDateTime,
    /// The content hashes published at `from`.
    seen: HashSet<u64>,
    /// The run under way; `None` between runs (the next request opens one).
    run: Option<Run>,
    /// The server's clock at its first answer to this process: a run whose window
    /// reaches it holds every change made before the source started.
    started: Option<NaiveDateTime>,
    /// Orders of the window not yet listed, by the `total` of its last page (a sweep's
    /// total counts one second only, so it leaves this as it was).
    left: Option<u64>,
    /// Ties are sorted by `order_number` until the API refuses it.
    tie_break: bool,
}

struct Run {
    /// The window's last second (inclusive), in the API's zone.
    to: NaiveDateTime,
    sweep: Option<Sweep>,
    /// The run ended on a full page of its last second, not read whole.
    ended_in_last_second: bool,
}

/// A pass, page by page, over the second `from` that holds more than a page.
#[derive(Default)]
struct Sweep {
    page: u32,
    /// The `total` of the pass's first page, and whether every page since said the same.
    total: Option<u64>,
    steady: bool,
    /// The distinct versions this pass listed at `from`, how many rows at `from` its
    /// pages held, and how many rows in all.
    listed: HashSet<u64>,
    at_from: u64,
    rows: u64,
    /// A page before the last held fewer rows than a page holds.
    short: bool,
    new_in_pass: bool,
    quiet_passes: u32,
    /// How many orders the listing from this second showed in it, for the first pass;
    /// none for the passes after.
    shown: u64,
    /// The orders of `from` at the end of the pass before, when it held each place once.
    before: Option<u64>,
}

impl Sweep {
    fn new_pass(quiet_passes: u32, before: Option<u64>) -> Self {
        Self { page: 1, steady: true, quiet_passes, before, ..Self::default() }
    }
}

/// One page as implementations write it: `data` may be missing or null when empty.
#[derive(Deserialize)]
struct Page<'a> {
    #[serde(borrow, default)]
    data: Option<Vec<&'a RawValue>>,
    #[serde(default)]
    meta: Option<Meta>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(default)]
    pagination: Option<Pagination>,
}

/// Counts as numbers or numeric strings; anything else is as good as absent.
#[derive(Deserialize)]
struct Pagination {
    #[serde(default)]
    total: Option<serde_json::Value>,
    #[serde(default)]
    per_page: Option<serde_json::Value>,
}

fn count(value: &Option<serde_json::Value>) -> Option<u64> {
    match value.as_ref()? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A listed order: its record, the second it changed in (`None` for a bad record), and
/// the hash of its bytes.
struct Listed {
    record: Record,
    second: Option<NaiveDateTime>,
    hash: u64,
}

impl OrdersApi {
    fn parse_time(&self, value: &serde_json::Value) -> Option<NaiveDateTime> {
        let local = match value {
            serde_json::Value::String(s) => {
                let s = s.trim();
                // Zone-less, as the seed writes it: a time in source.timezone.
                ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
                    .iter()
                    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
                    .or_else(|| crate::timestamp::parse(s).ok().map(|t| t.with_timezone(&self.zone).naive_local()))?
            }
            serde_json::Value::Number(n) => DateTime::from_timestamp(n.as_i64()?, 0)?.with_timezone(&self.zone).naive_local(),
            _ => return None,
        };
        Some(local.trunc_subsecs(0))
    }

    /// A local second as an instant (the earlier one when a clock change repeats it).
    fn instant(&self, local: NaiveDateTime) -> DateTime<Utc> {
        self.zone.from_local_datetime(&local).earliest().map(|t| t.with_timezone(&Utc)).unwrap_or_else(|| local.and_utc())
    }

    fn listed(&self, raw: &RawValue) -> Listed {
        let hash = xxhash_rust::xxh3::xxh3_64(raw.get().as_bytes());
        let read = HeadFields { id: "id", updated_at: "updated_at" }.read(raw).and_then(|(key, at)| match self.parse_time(&at) {
            Some(second) => Ok((key, second)),
            None => Err((key, "the record has no valid updated_at".to_string())),
        });
        match read {
            Ok((key, second)) => Listed {
                record: Record { key, updated_at: self.instant(second), body: RecordBody::Document(raw.get().to_string()) },
                second: Some(second),
                hash,
            },
            Err((key, reason)) => Listed { record: Record::bad(key, reason, raw), second: None, hash },
        }
    }

    fn format(t: NaiveDateTime) -> String {
        t.format(TIME_FORMAT).to_string()
    }

    fn position(&self) -> serde_json::Value {
        let seen = super::seen_to_position(&self.seen);
        serde_json::to_value(Position { v: Position::VERSION, from: Self::format(self.from), seen }).expect("a position serialises")
    }

    /// Takes the versions not yet published at `from` or later, in listing order,
    /// marking those at `from` as seen. Seconds before `from` were read whole already.
    fn take_new(&mut self, listed: Vec<Listed>) -> Vec<Record> {
        let mut records = Vec::with_capacity(listed.len());
        for l in listed {
            match l.second {
                Some(s) if s < self.from => continue,
                Some(s) if s > self.from => {}
                _ => {
                    if !self.seen.insert(l.hash) {
                        continue;
                    }
                }
            }
            records.push(l.record);
        }
        records
    }

    /// Page 1 of the window: publish what is new, move `from` up to the page's newest
    /// second, and end the run, go on, or sweep a second that holds more than a page.
    fn window_page(&mut self, listed: Vec<Listed>, holds_all: bool) -> (Vec<Record>, bool) {
        let to = self.run.as_ref().expect("a run is open").to;
        // The window's requests reach past `to` (the first is open-ended, the others end a
        // second later, so that `to` is whole however the API reads `date_to`): what lies
        // past it is the next run's, and its presence shows the page holds the whole window.
        let past_to = listed.iter().any(|l| l.second.is_some_and(|s| s > to));
        let listed: Vec<Listed> = listed.into_iter().filter(|l| l.second.is_none_or(|s| s <= to)).collect();
        let newest = listed.iter().filter_map(|l| l.second).max().filter(|n| *n > self.from);
        let at_newest: HashSet<u64> = newest.map(|n| listed.iter().filter(|l| l.second == Some(n)).map(|l| l.hash).collect()).unwrap_or_default();
        let shown = listed.iter().filter(|l| l.second == Some(self.from)).count() as u64;
        let records = self.take_new(listed);
        if let Some(newest) = newest {
            self.from = newest;
            self.seen = at_newest;
        } else if !(holds_all || past_to) {
            // A whole page at `from`: that second holds more than a page. The window's last
            // second is not swept: its sweep would list the next, which may still be
            // written. The run ends on it, and the next run's window reaches past it.
            let run = self.run.as_mut().expect("a run is open");
            if self.from >= to {
                run.ended_in_last_second = true;
                return (records, true);
            }
            run.sweep = Some(Sweep { shown, ..Sweep::new_pass(0, None) });
        }
        (records, holds_all || past_to)
    }

    /// A page of the sweep of `from`. Returns the records and whether the run ended.
    fn sweep_page(&mut self, listed: Vec<Listed>, total: Option<u64>, per_page: u64) -> Result<(Vec<Record>, bool), SourceError> {
        let from = self.from;
        let run = self.run.as_mut().expect("a run is open");
        let mut sweep = run.sweep.take().expect("sweeping");
        // Asked up to the next second, the listing ends with (some of) that second, sorted
        // after `from`: the pass over `from` ends at its first order past it, and what lies
        // there is published once the walk gets there.
        let page_rows = listed.len() as u64;
        let mut listed = listed;
        let past = listed.iter().position(|l| l.second.is_some_and(|s| s > from));
        if let Some(first) = past {
            listed.truncate(first);
        }
        if sweep.page == 1 && (listed.len() as u64) < sweep.shown.max(1) {
            // The listing from `from` showed more orders in that second. Either some
            // changed since (the window page, asked again, will say so), or the server's
            // `date_to` ends before the one after: never take that as read.
            self.run = None;
            return Err(http::malformed(format!(
                "date_from={} and date_to={} list fewer orders in that second ({}) than the listing from it showed ({}): orders left it since; asking again",
                Self::format(from),
                Self::format(from + TimeDelta::seconds(1)),
                listed.len(),
                sweep.shown
            )));
        }
        if sweep.page == 1 {
            sweep.total = total;
        } else if sweep.total != total {
            sweep.steady = false;
        }
        sweep.rows += page_rows;
        sweep.at_from += listed.len() as u64;
        sweep.listed.extend(listed.iter().map(|l| l.hash));
        let pass_over = past.is_some() || holds_the_rest(page_rows, per_page, total.map(|t| (sweep.rows, t)));
        sweep.short |= !pass_over && page_rows < per_page;
        let before = self.seen.len();
        let records = self.take_new(listed);
        sweep.new_in_pass |= self.seen.len() > before;
        let run = self.run.as_mut().expect("a run is open");
        if !pass_over {
            sweep.page += 1;
            run.sweep = Some(sweep);
            return Ok((records, false));
        }
        let quiet = if sweep.new_in_pass { 0 } else { sweep.quiet_passes + 1 };
        // The pass held every place of `from` in the listing once if no page before the
        // last was short and no order came twice; its places then number the orders of
        // `from` at its end (the next order was past it, or the listing ended).
        let each_place_once = (!sweep.short && sweep.listed.len() as u64 == sweep.at_from).then_some(sweep.at_from);
        let whole = match (past, sweep.total) {
            // A steady total says nothing moved during the pass. Ended at the next second,
            // the total counts that second too, whose orders may leave while `from` stays
            // as it was: then two passes in a row that agree say so instead (below).
            (Some(_), Some(_)) => each_place_once.is_some() && (sweep.steady || each_place_once == sweep.before),
            (None, Some(total)) => sweep.steady && sweep.listed.len() as u64 >= total,
            // Without a total, a second that is over can only lose orders: a pass that ends
            // with as many as the pass before ended with saw none move.
            (_, None) => each_place_once.is_some() && each_place_once == sweep.before,
        };
        if !(whole || quiet >= QUIET_PASSES) {
            tracing::debug!(second = %Self::format(from), "the second changed during its sweep; sweeping it again");
            run.sweep = Some(Sweep::new_pass(quiet, each_place_once));
            return Ok((records, false));
        }
        if !whole {
            tracing::warn!(
                second = %Self::format(from),
                total = ?sweep.total,
                listed = sweep.listed.len(),
                rows = sweep.at_from,
                short_pages = sweep.short,
                "no pass over the second came out whole (orders kept leaving it, a total that promises more than the pages hold, pages shorter than asked, or orders listed twice); taking it as read after {QUIET_PASSES} passes that brought nothing new"
            );
        }
        // A second before `to` (the window's last is never swept), so the run goes on.
        self.from = from + TimeDelta::seconds(1);
        self.seen.clear();
        Ok((records, false))
    }
}

/// Whether a page of `rows` is the last of its listing. An empty page is, whatever the
/// total says (one counted without the date filter would be swept forever). A full page
/// never is, whatever the total says (one counted short, with other joins or from a
/// cache, would leave the pages after it unread). A short page is, once the orders listed
/// so far reach the total when there is one: a server may hand out fewer rows per page
/// than asked without saying so.
fn holds_the_rest(rows: u64, per_page: u64, listed_and_total: Option<(u64, u64)>) -> bool {
    rows == 0 || (rows < per_page && listed_and_total.is_none_or(|(listed, total)| listed >= total))
}

impl Dialect for OrdersApi {
    fn restore(&mut self, position: Option<&serde_json::Value>, since: DateTime<Utc>) -> Result<(), SourceError> {
        let p = super::read_position(position, || Position::at(since, self.zone), "an orders API", Position::VERSION, |p| p.v)?;
        self.from = NaiveDateTime::parse_from_str(&p.from, TIME_FORMAT).map_err(|e| SourceError::Position(format!("from {:?}: {e}", p.from)))?;
        self.seen = super::seen_from_position(&p.seen)?;
        self.run = None;
        Ok(())
    }

    fn request(&self) -> url::Url {
        let mut url = self.endpoint.clone();
        let per_page = self.cfg.per_page.to_string();
        let (page, to) = match &self.run {
            None => (1, None),
            Some(Run { sweep: Some(s), .. }) => (s.page, Some(self.from + TimeDelta::seconds(1))),
            Some(Run { to, sweep: None, .. }) => (1, Some(*to + TimeDelta::seconds(1))),
        };
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("filter_on", "updated_at").append_pair("date_from", &Self::format(self.from));
            if let Some(to) = to {
                q.append_pair("date_to", &Self::format(to));
            }
            q.append_pair("sort", if self.tie_break { SORT } else { SORT_ALONE }).append_pair("page", &page.to_string()).append_pair("per_page", &per_page);
            if !self.cfg.include.is_empty() {
                q.append_pair("include", &self.cfg.include.join(","));
            }
            for (k, v) in &self.cfg.filters {
                q.append_pair(k, v);
            }
        }
        url
    }

    fn refused(&mut self, status: StatusCode, detail: String, _server_date: Option<DateTime<Utc>>) -> Result<Batch, SourceError> {
        // The API's own words: `{"error": {"type", "message"}}` says which parameter.
        let error = serde_json::from_str::<serde_json::Value>(&detail).ok();
        let field = |name: &str| error.as_ref().and_then(|v| v.pointer(&format!("/error/{name}"))).and_then(|m| m.as_str()).map(str::to_string);
        let error_type = field("type");
        let message = field("message").unwrap_or(detail);
        let names_sort = [Some(&message), error_type.as_ref()].into_iter().flatten().any(|text| text.to_ascii_lowercase().contains("sort"));
        if self.tie_break && matches!(status, StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY) && names_sort {
            tracing::warn!(status = status.as_u16(), %message, "the API refused a request sorted by {SORT}; sorting by {SORT_ALONE} alone from here on");
            self.tie_break = false;
            return Err(http::http_error(Some(status.as_u16()), format!("the API refused sort={SORT} ({status}); asking again with sort={SORT_ALONE}"), true));
        }
        let query = self.request().query().unwrap_or_default().to_string();
        Err(http::http_error(Some(status.as_u16()), format!("the API refused the request ({status}): {message} [parameters: {query}]"), false))
    }

    fn page(&mut self, body: &[u8], server_date: Option<DateTime<Utc>>) -> Result<Batch, SourceError> {
        let page: Page = serde_json::from_slice(body).map_err(http::malformed)?;
        let data = page.data.unwrap_or_default();
        let pagination = page.meta.and_then(|m| m.pagination);
        let total = pagination.as_ref().and_then(|p| count(&p.total));
        let per_page = pagination.as_ref().and_then(|p| count(&p.per_page)).filter(|n| *n > 0).unwrap_or(self.cfg.per_page.into()).min(self.cfg.per_page.into());
        let listed: Vec<Listed> = data.iter().map(|raw| self.listed(raw)).collect();
        let seconds = listed.iter().filter_map(|l| l.second);
        if let Some((a, b)) = seconds.clone().zip(seconds.skip(1)).find(|(a, b)| a > b) {
            let message = format!("the API did not sort by updated_at as asked: {} is listed before {}", Self::format(a), Self::format(b));
            return Err(http::http_error(Some(200), message, false));
        }
        if self.run.is_none() {
            let now = server_date.ok_or_else(|| {
                http::http_error(Some(200), "the API sent no Date header: a run's window ends at the server's clock minus source.settle".into(), false)
            })?;
            let now = local_second(now, self.zone);
            self.started.get_or_insert(now);
            self.run = Some(Run { to: now - self.settle, sweep: None, ended_in_last_second: false });
        }
        let rows = listed.len() as u64;
        let run = self.run.as_ref().expect("a run is open");
        let to = run.to;
        let (records, ends_run) = if run.sweep.is_some() {
            self.sweep_page(listed, total, per_page)?
        } else {
            let holds_all = holds_the_rest(rows, per_page, total.map(|t| (rows, t)));
            self.left = total.map(|t| t.saturating_sub(rows));
            self.window_page(listed, holds_all)
        };
        let watermark = if ends_run {
            Some(self.instant(to))
        } else {
            records.iter().filter(|r| !matches!(r.body, RecordBody::Bad { .. })).map(|r| r.updated_at).max()
        };
        // A second read in part does not cover what was written in it.
        let whole_to = !self.run.as_ref().is_some_and(|r| r.ended_in_last_second);
        let covers_start = self.started.is_some_and(|s| to > s || (to == s && whole_to));
        if ends_run {
            self.run = None;
        }
        Ok(Batch { records, position: self.position(), ends_run, covers_start, cutoff_holdback: None, watermark })
    }

    fn backlog(&self) -> Option<u64> {
        self.run.as_ref().and(self.left)
    }
}

#[cfg(test)]
mod tests {
    //! The walk against a model portal that does what real ones do to a reader: orders
    //! updated and created at every request, late writes inside the settle margin, many
    //! orders in one second, ties listed in a fresh random order on every request, fewer
    //! rows per page than asked, and crashes that resume from any committed position.

    use std::collections::{BTreeMap, HashMap};

    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    const SETTLE: i64 = 2;
    const START: i64 = 1_750_000_000;

    /// A configuration with every default but these.
    fn config(per_page: u32) -> OrdersApiSourceConfig {
        let toml = format!("url = 'http://portal.test/api/orders/'\napi_key = 'k'\nper_page = {per_page}\nsettle = '{SETTLE}s'");
        config::Config::builder().add_source(config::File::from_str(&toml, config::FileFormat::Toml)).build().unwrap().try_deserialize().unwrap()
    }

    /// A dialect with every default but `per_page`, at the start of its history.
    fn fresh(per_page: u32) -> Box<dyn Dialect> {
        let mut d = config(per_page).open(&LocalState::none()).unwrap();
        d.restore(None, DateTime::UNIX_EPOCH).unwrap();
        d
    }

    /// The query of the dialect's next request.
    fn query(d: &dyn Dialect) -> String {
        d.request().query().unwrap().to_string()
    }

    struct Portal {
        rng: StdRng,
        now: i64,
        /// id → (second, version)
        orders: BTreeMap<u64, (i64, u32)>,
        /// Where an order sits among the orders of its second: undocumented, and drawn
        /// again on every write, as a table's physical order moves when a row is updated.
        place: HashMap<u64, u64>,
        next_id: u64,
        /// Rows per page the portal hands out at most, whatever is asked.
        cap: usize,
        /// Milliseconds within its second of each order's change, kept but not written
        /// (all 0 unless `date_to` is `Start`).
        millis: HashMap<u64, i64>,
        date_to: DateTo,
        /// Whether pages carry `meta.pagination.total`.
        totals: bool,
    }

    /// How a portal reads `date_to`: to the end of the second it names, to its start (it
    /// keeps times finer than it writes them), or up to it.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum DateTo {
        End,
        Start,
        Before,
    }

    fn doc(id: u64, (second, version): (i64, u32)) -> String {
        let at = DateTime::from_timestamp(second, 0).unwrap().naive_utc().format("%Y-%m-%dT%H:%M:%S");
        format!(r#"{{"id":{id},"version":{version},"updated_at":"{at}"}}"#)
    }

    impl Portal {
        fn write(&mut self, id: u64) {
            // A write may commit up to SETTLE - 1 s after the second it is stamped with.
            let second = self.now - self.rng.random_range(0..SETTLE);
            let version = self.orders.get(&id).map_or(1, |o| o.1 + 1);
            self.orders.insert(id, (second.max(self.orders.get(&id).map_or(0, |o| o.0)), version));
            self.place.insert(id, self.rng.random());
            self.stamp(id);
        }

        fn load(&mut self, second: i64) {
            self.next_id += 1;
            self.orders.insert(self.next_id, (second, 1));
            self.place.insert(self.next_id, self.rng.random());
            self.stamp(self.next_id);
        }

        fn stamp(&mut self, id: u64) {
            let millis = if self.date_to == DateTo::Start { self.rng.random_range(0..1000) } else { 0 };
            self.millis.insert(id, millis);
        }

        /// An order's change time as the portal keeps it, in milliseconds.
        fn kept(&self, id: u64) -> i64 {
            self.orders[&id].0 * 1000 + self.millis[&id]
        }

        fn churn(&mut self) {
            self.now += self.rng.random_range(0..=1);
            for _ in 0..self.rng.random_range(0..=2) {
                if self.rng.random_bool(0.5) && !self.orders.is_empty() {
                    let id = *self.orders.keys().nth(self.rng.random_range(0..self.orders.len())).unwrap();
                    self.write(id);
                } else {
                    self.next_id += 1;
                    self.write(self.next_id);
                }
            }
        }

        fn answer(&mut self, url: &url::Url) -> (Vec<u8>, DateTime<Utc>) {
            let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
            let parse = |k: &str| q.get(k).map(|v| NaiveDateTime::parse_from_str(v, TIME_FORMAT).unwrap().and_utc().timestamp());
            let to = match (parse("date_to"), self.date_to) {
                (None, _) => i64::MAX,
                (Some(t), DateTo::End) => t * 1000 + 999,
                (Some(t), DateTo::Start) => t * 1000,
                (Some(t), DateTo::Before) => t * 1000 - 1,
            };
            let from = parse("date_from").unwrap() * 1000;
            let page: usize = q["page"].parse().unwrap();
            let per_page = q["per_page"].parse::<usize>().unwrap().min(self.cap);
            let mut rows: Vec<(i64, u64)> = self.orders.keys().map(|id| (self.kept(*id), *id)).filter(|(t, _)| (from..=to).contains(t)).collect();
            rows.sort_by_key(|(t, id)| (*t, self.place[id]));
            let data: Vec<String> = rows.iter().skip((page - 1) * per_page).take(per_page).map(|(_, id)| doc(*id, self.orders[id])).collect();
            let total = if self.totals { format!(r#","total":{}"#, rows.len()) } else { String::new() };
            let body = format!(r#"{{"meta":{{"pagination":{{"page":{page},"per_page":{per_page}{total}}}}},"data":[{}]}}"#, data.join(","));
            (body.into_bytes(), DateTime::from_timestamp(self.now, 0).unwrap())
        }
    }

    #[derive(Debug)]
    struct Case {
        seed: u64,
        per_page: u32,
        cap: usize,
        initial: usize,
        /// How many orders the first load stamps with one second.
        bulk: usize,
        churning_requests: usize,
        crash_percent: u32,
        date_to: DateTo,
        totals: bool,
    }

    fn cases() -> impl Strategy<Value = Case> {
        let date_to = prop_oneof![Just(DateTo::End), Just(DateTo::Start), Just(DateTo::Before)];
        (any::<u64>(), 1u32..8, 1usize..10, 0usize..30, 0usize..40, 0usize..60, 0u32..15, date_to, any::<bool>()).prop_map(
            |(seed, per_page, cap, initial, bulk, churning_requests, crash_percent, date_to, totals)| Case {
                seed,
                per_page,
                cap,
                initial,
                bulk,
                churning_requests,
                // Without totals a second holding more than a page takes two whole passes
                // in a row, which crashes every few requests (a sweep starts its pass
                // again) keep from ever happening.
                crash_percent: if totals { crash_percent } else { crash_percent / 3 },
                date_to,
                totals,
            },
        )
    }

    fn check(case: &Case) -> Result<(), TestCaseError> {
        let mut portal =
            Portal { rng: StdRng::seed_from_u64(case.seed), now: START, orders: BTreeMap::new(), place: HashMap::new(), next_id: 0, cap: case.cap, millis: HashMap::new(), date_to: case.date_to, totals: case.totals };
        for _ in 0..case.bulk {
            portal.load(START - 10);
        }
        for _ in 0..case.initial {
            let second = START - portal.rng.random_range(0..20);
            portal.load(second);
        }
        let mut dialect = config(case.per_page).open(&LocalState::none()).unwrap();
        dialect.restore(None, DateTime::UNIX_EPOCH).unwrap();
        let mut committed: Vec<serde_json::Value> = Vec::new();
        let mut published: HashMap<String, String> = HashMap::new();
        let (mut requests, mut quiet_since, mut run_began) = (0, None, START);
        loop {
            requests += 1;
            prop_assert!(requests < 20_000, "the walk does not end: {case:?}");
            if requests <= case.churning_requests {
                portal.churn();
            } else {
                portal.now += 1;
                quiet_since.get_or_insert(portal.now);
            }
            if !committed.is_empty() && portal.rng.random_range(0..100) < case.crash_percent {
                // A crash: resume from any committed position, the last or an older one.
                let at = portal.rng.random_range(committed.len().saturating_sub(3)..committed.len());
                dialect.restore(Some(&committed[at]), DateTime::UNIX_EPOCH).unwrap();
            }
            let (body, date) = portal.answer(&dialect.request());
            let batch = match dialect.page(&body, Some(date)) {
                Ok(batch) => batch,
                Err(e) if e.is_retriable() => continue,
                Err(e) => return Err(TestCaseError::fail(format!("{e}: {case:?}"))),
            };
            for r in &batch.records {
                let RecordBody::Document(d) = &r.body else { panic!("a bad record: {r:?}") };
                published.insert(r.key.clone(), d.clone());
            }
            committed.push(batch.position);
            // Done once a run whose window reaches past the last write has ended.
            if batch.ends_run {
                if quiet_since.is_some_and(|q| run_began - SETTLE >= q) {
                    break;
                }
                run_began = portal.now + 1;
            }
        }
        for (id, order) in &portal.orders {
            prop_assert_eq!(published.get(&id.to_string()), Some(&doc(*id, *order)), "order {} is missing or stale: {:?}", id, case);
        }
        Ok(())
    }

    fn page_of(orders: &[(u64, u32, &str)], total: usize) -> Vec<u8> {
        listing(orders, Some(total))
    }

    /// A page of `orders` (id, version, updated_at), with `meta.pagination.total` or without.
    fn listing(orders: &[(u64, u32, &str)], total: Option<usize>) -> Vec<u8> {
        let data: Vec<String> = orders.iter().map(|(id, v, at)| format!(r#"{{"id":{id},"version":{v},"updated_at":"{at}"}}"#)).collect();
        let meta = total.map(|total| format!(r#""meta":{{"pagination":{{"total":{total}}}}},"#)).unwrap_or_default();
        format!(r#"{{{meta}"data":[{}]}}"#, data.join(",")).into_bytes()
    }

    fn keys(batch: &Batch) -> Vec<String> {
        batch.records.iter().map(|r| r.key.clone()).collect()
    }

    fn at(s: &str) -> Option<DateTime<Utc>> {
        Some(crate::timestamp::parse(s).unwrap())
    }

    #[test]
    fn a_second_change_within_one_second_is_published_and_a_repeat_is_not() {
        let mut d = fresh(10);
        let first = d.page(&page_of(&[(7, 1, "2025-01-01 10:00:00")], 1), at("2025-01-01T10:00:30Z")).unwrap();
        assert_eq!(keys(&first), ["7"]);
        assert!(first.ends_run);
        // A late write landed in the same second: same id, same second, new content.
        let second = d.page(&page_of(&[(7, 2, "2025-01-01 10:00:00")], 1), at("2025-01-01T10:00:40Z")).unwrap();
        assert_eq!(keys(&second), ["7"], "the second version of the second");
        let again = d.page(&page_of(&[(7, 2, "2025-01-01 10:00:00")], 1), at("2025-01-01T10:00:50Z")).unwrap();
        assert!(again.records.is_empty(), "the same bytes are not published twice");
        // A restart from the committed position remembers what was published at `from`.
        d.restore(Some(&again.position), DateTime::UNIX_EPOCH).unwrap();
        let restarted = d.page(&page_of(&[(7, 2, "2025-01-01 10:00:00")], 1), at("2025-01-01T10:01:00Z")).unwrap();
        assert!(restarted.records.is_empty());
    }

    #[test]
    fn the_backlog_is_the_windows_total_less_the_page() {
        let mut d = fresh(2);
        assert_eq!(d.backlog(), None, "nothing counted yet");
        let date = at("2025-01-01T11:00:00Z");
        d.page(&page_of(&[(1, 1, "2025-01-01 10:00:00"), (2, 1, "2025-01-01 10:00:01")], 5), date).unwrap();
        assert_eq!(d.backlog(), Some(3));
        // Page 1 again, from the newest second published: order 2 again, and order 3.
        d.page(&page_of(&[(2, 1, "2025-01-01 10:00:01"), (3, 1, "2025-01-01 10:00:02")], 4), date).unwrap();
        assert_eq!(d.backlog(), Some(2));
        let last = d.page(&page_of(&[(4, 1, "2025-01-01 10:00:03")], 1), date).unwrap();
        assert!(last.ends_run);
        assert_eq!(d.backlog(), None, "between runs");
    }

    /// A total counted without the date filter promises orders the window does not hold:
    /// an empty page still ends the run, rather than sweeping a second that lists nothing.
    #[test]
    fn an_empty_window_ends_the_run_whatever_the_total_says() {
        let mut d = fresh(2);
        let date = at("2025-01-01T11:00:00Z");
        let batch = d.page(&page_of(&[], 380), date).unwrap();
        assert!(batch.ends_run && batch.records.is_empty());
    }

    /// A total counted short (an inner join that drops some orders) must not end a listing
    /// at a full page: a second holding more than a page was taken as held by its first
    /// page, run after run, and the orders past that page were never read.
    #[test]
    fn a_full_page_is_never_the_last_whatever_the_total_says() {
        let mut d = fresh(2);
        let (date, s) = (at("2025-01-01T11:00:00Z"), "2025-01-01 10:00:00");
        let first = d.page(&page_of(&[(1, 1, s), (2, 1, s)], 1), date).unwrap();
        assert!(!first.ends_run, "a full page with a total of 1 ends nothing");
        // Page 1 from that second lists the same two: the second is swept page by page.
        let again = d.page(&page_of(&[(1, 1, s), (2, 1, s)], 1), date).unwrap();
        assert!(again.records.is_empty() && !again.ends_run);
        assert!(query(&*d).contains("date_from=2025-01-01+10%3A00%3A00&date_to=2025-01-01+10%3A00%3A01") && query(&*d).contains("page=1&"), "{}", query(&*d));
        d.page(&page_of(&[(1, 1, s), (2, 1, s)], 1), date).unwrap();
        assert!(query(&*d).contains("page=2&"), "{}", query(&*d));
        let rest = d.page(&page_of(&[(3, 1, s)], 1), date).unwrap();
        assert_eq!(keys(&rest), ["3"], "the order past the first page");
    }

    /// A sweep whose first page lists fewer orders in the second than the listing from it
    /// showed (some changed since) is not taken as read: the walk does not move past the second and the error says
    /// why, until the sweep lists what the listing from it showed.
    #[test]
    fn a_sweep_listing_fewer_than_its_second_showed_is_not_taken_as_read() {
        let mut d = fresh(2);
        let (date, s) = (at("2025-01-01T11:00:00Z"), "2025-01-01 10:00:00");
        // Orders 1, 2 and 3 changed in 10:00:00: the second holds more than a page.
        d.page(&page_of(&[(1, 1, s), (2, 1, s)], 3), date).unwrap();
        d.page(&page_of(&[(1, 1, s), (2, 1, s)], 3), date).unwrap();
        assert!(query(&*d).contains("&date_to=2025-01-01+10%3A00%3A01"), "{}", query(&*d));
        let cut = d.page(&page_of(&[(1, 1, s)], 1), date).unwrap_err();
        assert!(cut.is_retriable() && cut.to_string().contains("list fewer orders in that second (1) than the listing from it showed (2)"), "{cut}");
        assert!(query(&*d).contains("date_from=2025-01-01+10%3A00%3A00&sort") && query(&*d).contains("page=1&"), "back to the listing from that second: {}", query(&*d));
        // A sweep that lists the whole second reads it, order 3 too.
        d.page(&page_of(&[(1, 1, s), (2, 1, s)], 3), date).unwrap();
        d.page(&page_of(&[(1, 1, s), (2, 1, s)], 3), date).unwrap();
        assert!(query(&*d).contains("page=2&"), "{}", query(&*d));
        assert_eq!(keys(&d.page(&page_of(&[(3, 1, s)], 3), date).unwrap()), ["3"]);
    }

    /// A sweep asks up to the next second, so that a portal whose `date_to` ends at the
    /// start of the second it names, or before it, lists the whole of `from`. Its pass
    /// ends at the first order past `from`, left for when the walk gets there. The
    /// window's last second is not swept (its sweep would list the next, still open to
    /// writes): the run ends on a full page of it, and the next run's window reaches past.
    #[test]
    fn a_sweep_asks_up_to_the_next_second_and_the_last_second_waits_for_the_next_run() {
        let mut d = fresh(2);
        let (date, s, next) = (at("2025-01-01T10:00:03Z"), "2025-01-01 10:00:00", "2025-01-01 10:00:01");
        d.page(&page_of(&[(1, 1, s), (2, 1, s)], 4), date).unwrap();
        d.page(&page_of(&[(1, 1, s), (2, 1, s)], 4), date).unwrap();
        assert!(query(&*d).contains("date_from=2025-01-01+10%3A00%3A00&date_to=2025-01-01+10%3A00%3A01&"), "{}", query(&*d));
        assert!(d.page(&page_of(&[(1, 1, s), (2, 1, s)], 4), date).unwrap().records.is_empty());
        // The pass ends at the first order past `from`: every page after it is past it too.
        let end = d.page(&page_of(&[(3, 1, s), (4, 1, next)], 4), date).unwrap();
        assert!(keys(&end) == ["3"] && !end.ends_run, "order 4 is the next second's");
        // The window ends at 10:00:01 (the Date minus settle), asked a second further so
        // that it is whole however the API reads date_to.
        assert!(query(&*d).contains("date_from=2025-01-01+10%3A00%3A01&date_to=2025-01-01+10%3A00%3A02&") && query(&*d).contains("page=1&"), "{}", query(&*d));
        let last = d.page(&page_of(&[(4, 1, next), (5, 1, next)], 3), date).unwrap();
        assert!(keys(&last) == ["4", "5"] && last.ends_run && !last.covers_start, "a full page of the last second ends the run");
        // The next run lists from that second again, skipping what it published there,
        // and sweeps it now that it is not the last.
        assert!(query(&*d).contains("date_from=2025-01-01+10%3A00%3A01&sort"), "{}", query(&*d));
        assert!(d.page(&page_of(&[(4, 1, next), (5, 1, next)], 5), at("2025-01-01T10:00:10Z")).unwrap().records.is_empty());
        assert!(query(&*d).contains("date_from=2025-01-01+10%3A00%3A01&date_to=2025-01-01+10%3A00%3A02&"), "{}", query(&*d));
    }

    /// `run --once` ends after a run whose window reaches the server's clock at the
    /// source's first answer. A run that ends on a full page of its last second covers
    /// only the seconds before it; one that ends on a page holding the rest covers it.
    #[test]
    fn a_run_ending_on_a_full_page_of_its_last_second_does_not_cover_that_second() {
        let mut d = fresh(2);
        let s = "2025-01-01 10:00:02";
        // The first answer: the server's clock reads 10:00:02; the window ends at 10:00:00.
        assert!(!d.page(&page_of(&[], 0), at("2025-01-01T10:00:02Z")).unwrap().covers_start);
        // Two seconds on, the window reaches 10:00:02, which holds more than a page.
        let later = at("2025-01-01T10:00:04Z");
        assert_eq!(keys(&d.page(&page_of(&[(1, 1, s), (2, 1, s)], 3), later).unwrap()), ["1", "2"]);
        let last = d.page(&page_of(&[(1, 1, s), (2, 1, s)], 3), later).unwrap();
        assert!(last.ends_run && !last.covers_start, "ended on a full page of its last second");
        // A run up to the same second that ends on a page holding the rest does cover it.
        let whole = d.page(&page_of(&[(3, 1, s)], 1), later).unwrap();
        assert!(keys(&whole) == ["3"] && whole.ends_run && whole.covers_start);
    }

    /// Without a `total`, nothing says whether orders moved during a pass: a second is
    /// read when a pass ends with as many orders of it, each once, as the pass before
    /// ended with (a second that is over only loses orders, so none left meanwhile).
    /// Order 1 changes (leaving the second) after the first page of the first pass, so
    /// that pass misses order 3; the second pass finds it, and ends with the two orders
    /// the first ended with.
    #[test]
    fn without_a_total_a_second_is_read_when_two_passes_in_a_row_agree() {
        let mut d = fresh(2);
        let (date, s, next) = (at("2025-01-01T11:00:00Z"), "2025-01-01 10:00:00", "2025-01-01 10:00:01");
        let page = |orders: &[(u64, u32, &str)]| listing(orders, None);
        d.page(&page(&[(1, 1, s), (2, 1, s)]), date).unwrap();
        d.page(&page(&[(1, 1, s), (2, 1, s)]), date).unwrap();
        assert!(d.page(&page(&[(1, 1, s), (2, 1, s)]), date).unwrap().records.is_empty());
        // Order 1 has left: the second page's first place is now the next second's.
        assert!(d.page(&page(&[(5, 1, next)]), date).unwrap().records.is_empty());
        assert!(query(&*d).contains("date_from=2025-01-01+10%3A00%3A00&") && query(&*d).contains("page=1&"), "swept again: {}", query(&*d));
        assert_eq!(keys(&d.page(&page(&[(2, 1, s), (3, 1, s)]), date).unwrap()), ["3"]);
        d.page(&page(&[(5, 1, next)]), date).unwrap();
        assert!(query(&*d).contains("date_from=2025-01-01+10%3A00%3A01&"), "read: {}", query(&*d));
    }

    #[test]
    fn requests_carry_the_window_in_the_apis_own_time_format_and_zone() {
        let mut cfg = config(50);
        cfg.timezone = "America/New_York".into();
        cfg.filters.insert("status".into(), "confirmed,shipped".into());
        let mut d = cfg.open(&LocalState::none()).unwrap();
        d.restore(None, crate::timestamp::parse("2025-01-01T15:00:00Z").unwrap()).unwrap();
        assert_eq!(
            query(&*d),
            "filter_on=updated_at&date_from=2025-01-01+10%3A00%3A00&sort=updated_at%2Corder_number&page=1&per_page=50&include=items%2Cshipments%2Cstatus_history&status=confirmed%2Cshipped"
        );
        // A full page: the window's end is the server's Date minus settle, in its zone.
        let full: Vec<(u64, u32, &str)> = (1..=50).map(|i| (i, 1, "2025-01-01 10:00:05")).collect();
        let batch = d.page(&page_of(&full, 60), at("2025-01-01T15:10:00Z")).unwrap();
        assert_eq!(batch.records.len(), 50);
        assert_eq!(batch.records[0].updated_at, crate::timestamp::parse("2025-01-01T15:00:05Z").unwrap(), "ce_time is the local time read in source.timezone");
        // (asked a second further, so that 10:09:58 is whole however the API reads date_to)
        assert!(query(&*d).contains("date_from=2025-01-01+10%3A00%3A05&date_to=2025-01-01+10%3A09%3A59"), "{}", query(&*d));
    }

    #[test]
    fn an_unsorted_page_or_a_missing_date_is_an_error_not_a_guess() {
        let mut d = fresh(10);
        let e = d.page(&page_of(&[(1, 1, "2025-01-01 10:00:00")], 1), None).unwrap_err();
        assert!(e.to_string().contains("Date header") && !e.is_retriable(), "{e}");
        let e = d.page(&page_of(&[(1, 1, "2025-01-01 10:00:05"), (2, 1, "2025-01-01 10:00:00")], 2), at("2025-01-02T00:00:00Z")).unwrap_err();
        assert!(e.to_string().contains("did not sort by updated_at"), "{e}");
        // A refusal of the tie-breaking sort: asked again without it.
        assert!(d.request().query().unwrap().contains("sort=updated_at%2Corder_number"));
        let sort_refused = r#"{"error": {"type": "invalid_sort", "message": "Invalid value."}}"#;
        assert!(d.refused(StatusCode::BAD_REQUEST, sort_refused.into(), None).unwrap_err().is_retriable());
        assert!(d.request().query().unwrap().contains("sort=updated_at&"));
        let refusal = r#"{"error": {"type": "invalid_parameter", "message": "per_page must be at most 100"}}"#;
        let e = d.refused(StatusCode::UNPROCESSABLE_ENTITY, refusal.into(), None).unwrap_err();
        assert!(e.to_string().contains("per_page must be at most 100") && e.to_string().contains("per_page=10") && !e.is_retriable(), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let key = |edit: fn(&mut OrdersApiSourceConfig)| {
            let mut cfg = config(10);
            edit(&mut cfg);
            cfg.validate().map(|_| "").unwrap_or_else(|e| e.key)
        };
        assert_eq!(key(|_| {}), "");
        assert_eq!(key(|c| c.per_page = 0), "source.per_page");
        assert_eq!(key(|c| c.per_page = 251), "source.per_page");
        assert_eq!(key(|c| c.timezone = "Mars/Olympus".into()), "source.timezone");
        assert_eq!(key(|c| c.include = vec!["payments".into()]), "source.include");
        assert_eq!(key(|c| _ = c.filters.insert("page".into(), "2".into())), "source.filters");
        assert_eq!(key(|c| c.url = "ftp://x".into()), "source.url");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn the_walk_ends_with_every_orders_newest_version_published(case in cases()) {
            check(&case)?;
        }
    }
}
