//! The orders API source: a wholesale portal's `GET /api/orders/` (seed 002). The API has
//! no cursor and no cutoff; its page numbers move under a reader (an order updated during
//! a walk leaves the window and every order behind it moves one place earlier), its
//! timestamps are zone-less and whole seconds, any number of orders can share a second,
//! and `id` is not sortable. So the walk never trusts a page number across requests:
//!
//! * A run covers the closed window `[from, to]` on `filter_on=updated_at`, where `to` is
//!   the server's clock (its `Date`) minus `settle`. Only the clock of the portal that
//!   stamps `updated_at` can say which seconds are over; ours may be off by a minute.
//! * Every request is page 1 of `[from, to]` sorted by `updated_at`: it holds the oldest
//!   orders of the window *at that moment*. Every second below the page's newest second M
//!   is therefore whole in it, and the walk moves `from` up to M, remembering what it
//!   published at M. An order that changes meanwhile leaves for a second past `to`, where
//!   the next run finds its new version; no order can enter a second that is over.
//! * What was already published at `from` is skipped by the content hash of its bytes,
//!   not by (id, second): an order that changes twice within one second is two versions.
//! * A full page that is all one second (`M = from`) cannot move `from`: that second holds
//!   more than a page. It is swept with `page=1, 2, …` over `[from, from + 1s]` until one
//!   whole pass saw the server's `total` steady on every page and at least `total`
//!   distinct orders. A second that is over can only lose orders, so a steady total means
//!   the set did not change during the pass and the pass saw all of it, in whatever order
//!   the server lists ties. Then `from` moves to the next second.
//! * A page that holds the whole window ends the run; the next run starts at the newest
//!   second published, so a write that committed late into it is still found.
//!
//! The position is `{from, seen}`: the second to read from, as the API writes times, and
//! the hashes published at it. A crash resumes there; a sweep starts its pass again.

use std::collections::HashSet;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use reqwest::header::HeaderName;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::head::HeadFields;
use super::http::{self, Credential, Dialect, DialectConfig, TransportSettings};
use super::{Batch, Record, RecordBody, SourceError};
use crate::config::{InvalidValue, OrdersApiSourceConfig};

/// How the API writes and reads datetimes (`updated_since=2025-06-01%2000:00:00`).
const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";
pub const MAX_PER_PAGE: u32 = 250;
const INCLUDES: [&str; 3] = ["items", "shipments", "status_history"];
/// Parameters the walk sets itself: a filter may not override them.
const WALK_PARAMETERS: [&str; 9] = ["filter_on", "date_from", "date_to", "updated_since", "sort", "page", "per_page", "include", "api_key"];
/// The most hashes a position keeps: a second holding more (a bulk load) is published
/// again after a crash, rather than the checkpoint outgrowing a Kafka message.
const MAX_SEEN_IN_POSITION: usize = 20_000;
/// Passes over one second that brought nothing new, after which it counts as read even
/// when the server's `total` promised more than its pages hold.
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

    fn open(&self) -> Result<Box<dyn Dialect>, SourceError> {
        let endpoint = url::Url::parse(&self.url).map_err(|e| SourceError::Setup(format!("source.url is not a URL: {e}")))?;
        let zone = Tz::from_str(&self.timezone).map_err(|_| SourceError::Setup("source.timezone is not an IANA time zone".into()))?;
        let settle = TimeDelta::from_std(self.settle).map_err(|_| SourceError::Setup("source.settle is too long".into()))?;
        let from = local_second(DateTime::UNIX_EPOCH, zone);
        Ok(Box::new(OrdersApi { cfg: self.clone(), endpoint, zone, settle, from, seen: HashSet::new(), run: None, started: None }))
    }

    fn position_since(&self, since: DateTime<Utc>) -> serde_json::Value {
        let zone = Tz::from_str(&self.timezone).unwrap_or(Tz::UTC);
        serde_json::to_value(Position { v: Position::VERSION, from: local_second(since, zone).format(TIME_FORMAT).to_string(), seen: Vec::new() })
            .expect("a position serialises")
    }
}

/// An instant as the API's zone writes it, cut to the second.
fn local_second(t: DateTime<Utc>, zone: Tz) -> NaiveDateTime {
    let local = t.with_timezone(&zone).naive_local();
    local - TimeDelta::nanoseconds(local.and_utc().timestamp_subsec_nanos().into())
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
}

struct Run {
    /// The window's last second (inclusive), in the API's zone.
    to: NaiveDateTime,
    sweep: Option<Sweep>,
}

/// A pass, page by page, over the second `from` that holds more than a page.
#[derive(Default)]
struct Sweep {
    page: u32,
    /// The `total` of the pass's first page, and whether every page since said the same.
    total: Option<u64>,
    steady: bool,
    /// The distinct versions this pass listed, and how many rows its pages held.
    listed: HashSet<u64>,
    rows: u64,
    new_in_pass: bool,
    quiet_passes: u32,
}

impl Sweep {
    fn new_pass(quiet_passes: u32) -> Self {
        Self { page: 1, steady: true, quiet_passes, ..Self::default() }
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
        Some(local - TimeDelta::nanoseconds(local.and_utc().timestamp_subsec_nanos().into()))
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
        let seen = if self.seen.len() <= MAX_SEEN_IN_POSITION { self.seen.iter().map(|h| format!("{h:016x}")).collect() } else { Vec::new() };
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
        // Only the first request of a run is open-ended: what lies past `to` is the next
        // run's, and its presence shows the page holds the whole window.
        let past_to = listed.iter().any(|l| l.second.is_some_and(|s| s > to));
        let listed: Vec<Listed> = listed.into_iter().filter(|l| l.second.is_none_or(|s| s <= to)).collect();
        let newest = listed.iter().filter_map(|l| l.second).max().filter(|n| *n > self.from);
        let at_newest: HashSet<u64> = newest.map(|n| listed.iter().filter(|l| l.second == Some(n)).map(|l| l.hash).collect()).unwrap_or_default();
        let records = self.take_new(listed);
        if let Some(newest) = newest {
            self.from = newest;
            self.seen = at_newest;
        } else if !(holds_all || past_to) {
            // A whole page at `from`: that second holds more than a page.
            self.run.as_mut().expect("a run is open").sweep = Some(Sweep::new_pass(0));
        }
        (records, holds_all || past_to)
    }

    /// A page of the sweep of `from`. Returns the records and whether the run ended.
    fn sweep_page(&mut self, listed: Vec<Listed>, total: Option<u64>, per_page: u64) -> (Vec<Record>, bool) {
        let from = self.from;
        let run = self.run.as_mut().expect("a run is open");
        let sweep = run.sweep.as_mut().expect("sweeping");
        if sweep.page == 1 {
            sweep.total = total;
        } else if sweep.total != total {
            sweep.steady = false;
        }
        let rows = listed.len() as u64;
        sweep.rows += rows;
        sweep.listed.extend(listed.iter().map(|l| l.hash));
        // Past the last page; counted by the total when there is one, since a server may
        // hand out fewer rows per page than asked.
        let pass_over = rows == 0 || total.map_or(rows < per_page, |t| sweep.rows >= t);
        // Only `from` is swept; later seconds are read by page 1 of the window later.
        let at_from: Vec<Listed> = listed.into_iter().filter(|l| l.second.is_none_or(|s| s == from)).collect();
        let before = self.seen.len();
        let records = self.take_new(at_from);
        let run = self.run.as_mut().expect("a run is open");
        let sweep = run.sweep.as_mut().expect("sweeping");
        sweep.new_in_pass |= self.seen.len() > before;
        if !pass_over {
            sweep.page += 1;
            return (records, false);
        }
        let quiet = if sweep.new_in_pass { 0 } else { sweep.quiet_passes + 1 };
        let whole = sweep.steady && sweep.total.is_none_or(|t| sweep.listed.len() as u64 >= t) && (sweep.total.is_some() || !sweep.new_in_pass);
        if !(whole || quiet >= QUIET_PASSES) {
            tracing::debug!(second = %Self::format(from), "the second changed during its sweep; sweeping it again");
            run.sweep = Some(Sweep::new_pass(quiet));
            return (records, false);
        }
        if !whole {
            tracing::warn!(second = %Self::format(from), total = ?sweep.total, listed = sweep.listed.len(), "the API's total promised more orders than its pages list; taking the second as read");
        }
        run.sweep = None;
        let to = run.to;
        self.from = from + TimeDelta::seconds(1);
        self.seen.clear();
        (records, self.from > to)
    }
}

impl Dialect for OrdersApi {
    fn restore(&mut self, position: Option<&serde_json::Value>, since: DateTime<Utc>) -> Result<(), SourceError> {
        let fresh = || Position { v: Position::VERSION, from: Self::format(local_second(since, self.zone)), seen: Vec::new() };
        let p = super::read_position(position, fresh, "an orders API", Position::VERSION, |p| p.v)?;
        self.from = NaiveDateTime::parse_from_str(&p.from, TIME_FORMAT).map_err(|e| SourceError::Position(format!("from {:?}: {e}", p.from)))?;
        self.seen = p
            .seen
            .iter()
            .map(|h| u64::from_str_radix(h, 16).map_err(|_| SourceError::Position(format!("seen {h:?} is not a hash"))))
            .collect::<Result<_, _>>()?;
        self.run = None;
        Ok(())
    }

    fn request(&self) -> url::Url {
        let mut url = self.endpoint.clone();
        let per_page = self.cfg.per_page.to_string();
        let (page, to) = match &self.run {
            None => (1, None),
            Some(Run { sweep: Some(s), .. }) => (s.page, Some(self.from + TimeDelta::seconds(1))),
            Some(Run { to, sweep: None }) => (1, Some(*to)),
        };
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("filter_on", "updated_at").append_pair("date_from", &Self::format(self.from));
            if let Some(to) = to {
                q.append_pair("date_to", &Self::format(to));
            }
            q.append_pair("sort", "updated_at").append_pair("page", &page.to_string()).append_pair("per_page", &per_page);
            if !self.cfg.include.is_empty() {
                q.append_pair("include", &self.cfg.include.join(","));
            }
            for (k, v) in &self.cfg.filters {
                q.append_pair(k, v);
            }
        }
        url
    }

    fn refused(&mut self, status: StatusCode, detail: String) -> SourceError {
        // The API's own words: `{"error": {"type", "message"}}` says which parameter.
        let message = serde_json::from_str::<serde_json::Value>(&detail)
            .ok()
            .and_then(|v| v.pointer("/error/message").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or(detail);
        let query = self.request().query().unwrap_or_default().to_string();
        http::http_error(Some(status.as_u16()), format!("the API refused the request ({status}): {message} [parameters: {query}]"), false)
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
            self.run = Some(Run { to: now - self.settle, sweep: None });
        }
        let rows = listed.len() as u64;
        let run = self.run.as_ref().expect("a run is open");
        let to = run.to;
        let (records, ends_run) = if run.sweep.is_some() {
            self.sweep_page(listed, total, per_page)
        } else {
            // Counted by the total when there is one, since a server may hand out fewer
            // rows per page than asked.
            let holds_all = total.map_or(rows < per_page, |t| rows >= t);
            self.window_page(listed, holds_all)
        };
        let watermark = if ends_run {
            Some(self.instant(to))
        } else {
            records.iter().filter(|r| !matches!(r.body, RecordBody::Bad { .. })).map(|r| r.updated_at).max()
        };
        let covers_start = self.started.is_some_and(|s| to >= s);
        if ends_run {
            self.run = None;
        }
        Ok(Batch { records, position: self.position(), ends_run, covers_start, cutoff_holdback: None, watermark })
    }
}
