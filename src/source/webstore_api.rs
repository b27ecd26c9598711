//! The webstore API source: a store's `GET /[store]/api/v2/sales/orders.json` (seed 003).
//! `since` is a strict revision (whole Unix seconds) with no upper bound, many orders share
//! a revision, the listing's order is undocumented (a store may list the newest-created
//! first, so a creation pushes every later order one place down and a deletion pulls them
//! up), `page` counts from 0, and deletions are never shown. The walk:
//!
//! * A run reads the set `S` of orders whose revision lies in `[R, T]`: `R` is the
//!   checkpoint's boundary second, `T` the server's clock (its `Date`) minus `settle`.
//!   Ours may be off from the store's by a minute, so only its clock says which seconds
//!   are over. `S` can only shrink while the run reads it: a write stamps a revision past
//!   `T`, and a deletion removes an order.
//! * A pass lists `since=R-1` page by page and publishes the orders of `S` it has not
//!   published yet, by the content hash of their bytes (an order can change twice within
//!   a second, so (uuid, revision) would drop a version). Orders past `T` are the next
//!   run's. With `endDate=T+1` (when `settle` keeps it in the past), an order created
//!   during the walk is not listed and cannot move the pages.
//! * Offset pages move under a reader, so a pass may skip an order. A pass is trusted
//!   when nothing can have moved: it was one page shorter than `size` (one reply, one
//!   moment), or both counts (`since=R-1`, `since=T`) were the same before and after it,
//!   no order was listed twice, and it listed as many orders as were counted (in all
//!   and past `T`). Otherwise
//!   the run makes more passes, and ends after three in a row that found no member of
//!   `S` the earlier passes had missed: a skipped order is missed again only if another
//!   move hits it again at a page boundary.
//! * The run then moves `R` to the newest revision it published, remembering the hashes
//!   published there: a write that commits late into that second is still found.
//!
//! Deletions (`reconcile`): every period, a full listing interleaved page by page with
//! the change walk collects the uuids present. Published uuids that are absent are asked
//! for one by one (`GET …/orders/<uuid>.json`), and only a 404 or 410 makes a
//! `sales_order.deleted` event, so an order a moving page hid is never tombstoned. The
//! published uuids are kept in [`PublishedSet`] beside the checkpoints.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::HeaderName;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::head::HeadFields;
use super::http::{self, Credential, Dialect, DialectConfig, LocalState, TransportSettings};
use super::published::PublishedSet;
use super::{Batch, Record, RecordBody, SourceError};
use crate::config::{InvalidValue, WebstoreApiSourceConfig};

pub const SIZES: [u32; 3] = [20, 40, 80];
/// Passes after which a run that never settled ends without moving its boundary: what it
/// published stays published, and the next run reads the same revisions again.
const MAX_PASSES: u32 = 8;
/// Passes in a row that found no order the earlier ones missed, after which a run that
/// could not count all of `S` as listed ends.
const QUIET_PASSES: u32 = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub v: u32,
    /// The boundary second: every revision before it has been read.
    pub rev: i64,
    /// xxh3-64 hashes (hex) of the versions published at `rev`.
    #[serde(default)]
    pub seen: Vec<String>,
    /// The generation of the published set this position goes with (`reconcile` on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// When the last reconciliation ended, by our clock (it only schedules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciled: Option<DateTime<Utc>>,
}

impl Position {
    const VERSION: u32 = 1;

    fn at(since: DateTime<Utc>) -> Self {
        Self { v: Self::VERSION, rev: since.timestamp(), seen: Vec::new(), generation: None, reconciled: None }
    }
}

impl DialectConfig for WebstoreApiSourceConfig {
    fn identity(&self) -> String {
        http::without_credentials(&self.url)
    }

    fn validate(&self) -> Result<(), InvalidValue> {
        http::check_url("source.url", &self.url)?;
        if !url::Url::parse(&self.url).is_ok_and(|u| u.path().ends_with(".json")) {
            return Err(InvalidValue::new("source.url", "must be the collection URL, ending in orders.json"));
        }
        if !SIZES.contains(&self.size) {
            return Err(InvalidValue::new("source.size", "must be 20, 40 or 80"));
        }
        for (name, value) in &self.headers {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(InvalidValue::new("source.headers", format!("{name:?} is not a header name")));
            }
            if reqwest::header::HeaderValue::from_str(value.expose()).is_err() {
                return Err(InvalidValue::new("source.headers", format!("the value of {name} holds characters a header cannot carry")));
            }
        }
        Ok(())
    }

    fn transport(&self) -> TransportSettings {
        let headers = self.headers.iter().filter_map(|(n, v)| Some((HeaderName::from_bytes(n.as_bytes()).ok()?, v.clone()))).collect();
        TransportSettings { request_timeout: self.request_timeout, max_response_bytes: self.max_response_bytes, credential: Credential::Headers { key: "headers", headers } }
    }

    fn open(&self, local: &LocalState) -> Result<Box<dyn Dialect>, SourceError> {
        let listing = url::Url::parse(&self.url).map_err(|e| SourceError::Setup(format!("source.url is not a URL: {e}")))?;
        let collection = listing.path().strip_suffix(".json").unwrap_or(listing.path()).to_string();
        let mut count = listing.clone();
        count.set_path(&format!("{collection}/count.json"));
        let mut item = listing.clone();
        item.set_query(None);
        item.set_path(&format!("{collection}/"));
        let reconcile = self.reconcile.map(|period| Reconcile {
            period,
            set: PublishedSet::new(local.dir, local.pipeline),
            last: Utc::now(),
            listing: None,
            turn: false,
        });
        Ok(Box::new(WebstoreApi {
            listing,
            count,
            item,
            size: self.size,
            settle: self.settle.as_secs() as i64,
            rev: 0,
            seen: HashSet::new(),
            run: None,
            reconcile,
            started: None,
            fills_pages: false,
            covered: false,
            end_date: true,
        }))
    }

    fn position_since(&self, since: DateTime<Utc>) -> serde_json::Value {
        serde_json::to_value(Position::at(since)).expect("a position serialises")
    }
}

struct WebstoreApi {
    listing: url::Url,
    count: url::Url,
    /// `…/orders/`, to which `<uuid>.json` is joined.
    item: url::Url,
    size: u32,
    settle: i64,
    /// The boundary second and the hashes published at it.
    rev: i64,
    seen: HashSet<u64>,
    run: Option<Run>,
    reconcile: Option<Reconcile>,
    /// The server's clock at its first answer: a run whose `T` reaches it holds every
    /// change made before the source started.
    started: Option<i64>,
    /// The store has handed out a page of `size` orders.
    fills_pages: bool,
    /// A run whose `T` reached the source's start has ended (`run --once` may stop).
    covered: bool,
    /// Whether to send `endDate` (until the store refuses it).
    end_date: bool,
}

/// The run under way: its `T`, and its passes.
struct Run {
    t: i64,
    step: Step,
    /// The pass whose pages are next, or (`paged`) were just read.
    pass: u32,
    paged: bool,
    /// `count.json?since=T` and `since=R-1` before this pass, and after it.
    before: (u64, u64),
    after: (u64, u64),
    /// What this pass has listed so far.
    this: Pass,
    /// Members of `S` listed, by uuid hash, with the last pass that listed them.
    members: HashMap<u64, u32>,
    /// Passes in a row after the first that found no new member.
    quiet_passes: u32,
    /// Hashes published in this run (and at `R` before it).
    published: HashSet<u64>,
    /// The newest revision published, and the hashes seen at it.
    newest: Option<(i64, HashSet<u64>)>,
}

/// What one pass of a run listed; each pass starts from `Pass::default()`.
#[derive(Default)]
struct Pass {
    /// Rows listed, and the widest page.
    rows: u64,
    widest: u64,
    /// The uuids listed (hashed), and whether one came twice.
    listed: HashSet<u64>,
    repeated: bool,
    /// Of them, those with a revision past `T`.
    newer: u64,
    /// A member of `S` the earlier passes had not listed was found.
    new_member: bool,
    /// The pass was one page that held the whole listing.
    snapshot: bool,
    /// The pass ended on an empty page (or one refused) past the first before it had
    /// listed as many as were counted.
    cut: bool,
}

impl Run {
    /// Whether nothing moved during the pass: both counts the same before and after it,
    /// no order listed twice, as many listed as counted, and as many listed past `T` as
    /// counted there. The last catches a pair of moves the others miss: an order past `T`
    /// already read is deleted (a row slides back onto a page read, unseen) while an old
    /// order is written, joining the unread pages past `T`; every count stays as it was.
    /// Moves that cancel out in all of these would still go unseen; one alone would not.
    fn still(&self) -> bool {
        let this = &self.this;
        self.before == self.after && !this.repeated && this.listed.len() as u64 == self.before.1 && this.newer == self.before.0
    }

    /// Members of `S` not listed yet: `S` counts as `since=R-1` less `since=T`, as counted
    /// before the pass; unknown until the first pass has been counted.
    fn left(&self) -> Option<u64> {
        let (newer, from_boundary) = self.before;
        let counted = self.paged || matches!(self.step, Step::Page(_));
        counted.then(|| from_boundary.saturating_sub(newer).saturating_sub(self.members.len() as u64))
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Step {
    /// `count.json?since=R-1` for the server's clock: `T`.
    Open,
    /// `count.json?since=T`, then `since=R-1`: before a pass, the bound on `S`; after
    /// it, whether it listed all of `S`.
    CountNewer,
    Count,
    Page(u32),
}

struct Reconcile {
    period: Duration,
    set: PublishedSet,
    /// When the last reconciliation ended.
    last: DateTime<Utc>,
    listing: Option<FullListing>,
    /// Whether the next request is the listing's (it alternates with the change walk's).
    turn: bool,
}

/// A reconciliation under way.
#[derive(Default)]
struct FullListing {
    step: ListingStep,
    total: u64,
    rows: u64,
    widest: u64,
    present: HashSet<Box<str>>,
    /// Published uuids the listing did not show, asked for one by one.
    absent: Vec<Box<str>>,
    gone: Vec<(Box<str>, DateTime<Utc>)>,
}

#[derive(Default, Clone, Copy, PartialEq, Debug)]
enum ListingStep {
    #[default]
    Count,
    Page(u32),
    Confirm,
}

/// What the next request is for.
#[derive(Debug, PartialEq)]
enum Target {
    Change(Step),
    Reconcile(ListingStep),
}

/// A listed order: its record and revision (`None` for a bad record), and its hashes.
struct Listed {
    record: Record,
    revision: Option<i64>,
    uuid: u64,
    content: u64,
}

/// Where an order keeps its key and its change time.
const HEAD: HeadFields = HeadFields { id: "uuid", updated_at: "revision" };

fn listed(raw: &RawValue) -> Listed {
    let content = xxhash_rust::xxh3::xxh3_64(raw.get().as_bytes());
    let read = HEAD.read(raw).and_then(|(key, rev)| match revision(&rev) {
        Some(r) => Ok((key, r)),
        None => Err((key, "the record has no valid revision".to_string())),
    });
    match read {
        Ok((key, rev)) => Listed {
            uuid: xxhash_rust::xxh3::xxh3_64(key.as_bytes()),
            record: Record { key, updated_at: DateTime::from_timestamp(rev, 0).unwrap_or_default(), body: RecordBody::Document(raw.get().to_string()) },
            revision: Some(rev),
            content,
        },
        Err((key, reason)) => Listed { uuid: xxhash_rust::xxh3::xxh3_64(key.as_bytes()), record: Record::bad(key, reason, raw), revision: None, content },
    }
}

/// A revision as stores write it: Unix seconds as a number or a numeric string (a
/// fraction is cut), or a datetime.
fn revision(value: &serde_json::Value) -> Option<i64> {
    let seconds = match value {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f.floor() as i64))?,
        serde_json::Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>().ok().or_else(|| s.parse::<f64>().ok().map(|f| f.floor() as i64)).or_else(|| crate::timestamp::parse(s).ok().map(|t| t.timestamp()))?
        }
        _ => return None,
    };
    DateTime::from_timestamp(seconds, 0).map(|_| seconds)
}

/// The orders of a listing: a bare array, or an object that wraps it in one member.
fn orders(body: &[u8]) -> Result<Vec<&RawValue>, SourceError> {
    let text = std::str::from_utf8(body).map_err(http::malformed)?;
    if text.trim_start().starts_with('{') {
        let members: std::collections::HashMap<String, &RawValue> = serde_json::from_str(text).map_err(http::malformed)?;
        let mut arrays = members.values().filter(|v| v.get().starts_with('['));
        return match (arrays.next(), arrays.next()) {
            (Some(array), None) => serde_json::from_str(array.get()).map_err(http::malformed),
            _ => Err(http::malformed("an object that does not wrap one array of orders")),
        };
    }
    serde_json::from_str(text).map_err(http::malformed)
}

/// `count.json`: a bare integer, as the seed says, or one wrapped in a string or an object.
fn count(body: &[u8]) -> Result<u64, SourceError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(http::malformed)?;
    let number = |v: &serde_json::Value| match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    match &value {
        serde_json::Value::Object(members) if members.len() == 1 => members.values().next().and_then(number),
        v => number(v),
    }
    .ok_or_else(|| http::malformed("count.json is not an integer"))
}

/// Whether a page ends a pass over a listing. A store may hand out fewer rows than asked,
/// so a page shorter than `size` ends it only when it is shorter than the pass's widest
/// page too, or, as the first page, holds as many rows as were counted.
fn pass_over(rows: u64, size: u64, widest: u64, listed: u64, counted: u64) -> bool {
    rows == 0 || (rows < size && if widest == 0 { listed >= counted } else { rows < widest })
}

impl WebstoreApi {
    fn target(&self) -> Target {
        match &self.reconcile {
            Some(Reconcile { listing: Some(l), turn: true, .. }) => Target::Reconcile(l.step),
            _ => Target::Change(self.run.as_ref().map_or(Step::Open, |r| r.step)),
        }
    }

    fn with_query(base: &url::Url, pairs: &[(&str, String)]) -> url::Url {
        let mut url = base.clone();
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in pairs {
                q.append_pair(k, v);
            }
        }
        url
    }

    /// `since=R-1`: strict, so the boundary second is read again.
    fn since_boundary(&self) -> Vec<(&'static str, String)> {
        if self.rev > 0 {
            vec![("since", (self.rev - 1).to_string())]
        } else {
            Vec::new()
        }
    }

    /// The change walk's filters: revisions from the boundary, and (when `settle` keeps
    /// `T + 1` in the past) orders created by `T + 1`, so that an order created during the
    /// walk never moves the pages. `T + 1`: whether a store's `endDate` is inclusive or
    /// not, every order of `S` (created by its revision, at most `T`) is in.
    fn walk_filters(&self) -> Vec<(&'static str, String)> {
        self.run_filters(self.since_boundary())
    }

    fn run_filters(&self, mut filters: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
        if let Some(run) = &self.run {
            if self.settle >= 2 && self.end_date {
                filters.push(("endDate", (run.t + 1).to_string()));
            }
        }
        filters
    }

    fn page_url(&self, page: u32, since: Vec<(&'static str, String)>) -> url::Url {
        let mut pairs = vec![("size", self.size.to_string()), ("page", page.to_string())];
        pairs.extend(since);
        Self::with_query(&self.listing, &pairs)
    }

    fn position(&self) -> serde_json::Value {
        // What this run published at the boundary joins it; otherwise no copy per page.
        let seen = match &self.run {
            Some(Run { newest: Some((rev, at)), .. }) if *rev == self.rev => super::seen_to_position(&self.seen.union(at).copied().collect()),
            _ => super::seen_to_position(&self.seen),
        };
        let (generation, reconciled) = match &self.reconcile {
            Some(r) => (Some(r.set.generation()), Some(r.last)),
            None => (None, None),
        };
        serde_json::to_value(Position { v: Position::VERSION, rev: self.rev, seen, generation, reconciled }).expect("a position serialises")
    }

    fn batch(&self, records: Vec<Record>, ends_run: bool, covers_start: bool, watermark: Option<DateTime<Utc>>) -> Batch {
        Batch { records, position: self.position(), ends_run, covers_start, cutoff_holdback: None, watermark }
    }

    /// Adds the uuids of documents about to be published to the published set, before
    /// the pipeline sees them.
    fn remember(&mut self, records: &[Record]) -> Result<(), SourceError> {
        if let Some(r) = &mut self.reconcile {
            let ids = records.iter().filter(|r| matches!(r.body, RecordBody::Document(_))).map(|r| r.key.as_str());
            r.set.extend(ids).map_err(|e| SourceError::Setup(e.to_string()))?;
        }
        Ok(())
    }

    fn change(&mut self, step: Step, body: &[u8], server_date: Option<DateTime<Utc>>) -> Result<Batch, SourceError> {
        let (rev, size) = (self.rev, u64::from(self.size));
        if step == Step::Open {
            count(body)?;
            let now = server_date
                .ok_or_else(|| http::http_error(Some(200), "the API sent no Date header: a run reads up to the server's clock minus source.settle".into(), false))?
                .timestamp();
            self.started.get_or_insert(now);
            let t = now - self.settle;
            if t < rev {
                // The store's clock stands behind the boundary (it was stepped back):
                // nothing new is over yet.
                return Ok(self.end_run(false));
            }
            self.run = Some(Run {
                t,
                step: Step::CountNewer,
                pass: 1,
                paged: false,
                before: (0, 0),
                after: (0, 0),
                this: Pass::default(),
                members: HashMap::new(),
                quiet_passes: 0,
                published: self.seen.clone(),
                newest: None,
            });
            return Ok(self.batch(Vec::new(), false, false, None));
        }
        let run = self.run.as_mut().expect("a run is open");
        let mut records = Vec::new();
        match step {
            Step::Open => unreachable!("answered above"),
            Step::CountNewer => {
                run.after.0 = count(body)?;
                run.step = Step::Count;
            }
            Step::Count => {
                run.after.1 = count(body)?;
                if run.paged {
                    run.quiet_passes = if run.this.new_member || run.pass == 1 || run.this.cut { 0 } else { run.quiet_passes + 1 };
                    if !run.this.cut && (run.this.snapshot || run.still() || run.quiet_passes >= QUIET_PASSES) {
                        return Ok(self.end_run(true));
                    }
                    if run.pass >= MAX_PASSES {
                        tracing::warn!(since = rev, passes = run.pass, "orders kept moving under every pass; reading the same revisions again next run");
                        return Ok(self.end_run(false));
                    }
                    tracing::debug!(pass = run.pass, "orders moved during the pass; making another");
                    run.pass += 1;
                    run.paged = false;
                    run.this = Pass::default();
                }
                run.before = run.after;
                run.step = Step::Page(0);
            }
            Step::Page(page) => {
                let raws = orders(body)?;
                let rows = raws.len() as u64;
                for l in raws.iter().map(|raw| listed(raw)) {
                    let first = run.this.listed.insert(l.uuid);
                    run.this.repeated |= !first;
                    run.this.newer += u64::from(first && l.revision.is_some_and(|r| r > run.t));
                    let Some(r) = l.revision else {
                        if run.published.insert(l.content) {
                            records.push(l.record);
                        }
                        continue;
                    };
                    if r < rev || r > run.t {
                        continue;
                    }
                    if run.members.insert(l.uuid, run.pass).is_none() && run.pass > 1 {
                        run.this.new_member = true;
                    }
                    match &mut run.newest {
                        Some((n, at)) if *n == r => {
                            at.insert(l.content);
                        }
                        Some((n, _)) if *n > r => {}
                        _ => run.newest = Some((r, HashSet::from([l.content]))),
                    }
                    if run.published.insert(l.content) {
                        records.push(l.record);
                    }
                }
                run.this.rows += rows;
                let over = pass_over(rows, size, run.this.widest, run.this.rows, run.before.1);
                // An empty page past the first, short of the count: maybe an order deleted
                // since the count, maybe a store that caps how deep it pages. Such a pass
                // is cut: it neither counts as quiet nor lets the run move its boundary.
                run.this.cut |= rows == 0 && page > 0 && (run.this.listed.len() as u64) < run.before.1;
                // One page that held the whole listing is a snapshot of one moment: every
                // order of `S` then was in it. Only a store that has been seen to fill pages
                // of `size` is trusted not to have cut that page short.
                self.fills_pages |= rows == size;
                run.this.snapshot = over && page == 0 && rows < size && self.fills_pages;
                run.this.widest = run.this.widest.max(rows);
                run.paged = over;
                run.step = if over { Step::CountNewer } else { Step::Page(page + 1) };
            }
        }
        let watermark = records.iter().filter(|r| !matches!(r.body, RecordBody::Bad { .. })).map(|r| r.updated_at).max();
        self.remember(&records)?;
        Ok(self.batch(records, false, false, watermark))
    }

    /// Ends the run: moves the boundary to the newest revision published when every
    /// member of `S` was read, and starts a due reconciliation.
    fn end_run(&mut self, read_all: bool) -> Batch {
        let run = self.run.take();
        let t = run.as_ref().map(|r| r.t).filter(|_| read_all);
        if let Some((newest, at)) = run.and_then(|r| r.newest) {
            if newest > self.rev && read_all {
                self.rev = newest;
                self.seen = at;
            } else if newest == self.rev {
                self.seen.extend(at);
            }
        }
        let covers_start = t.zip(self.started).is_some_and(|(t, s)| t >= s);
        self.covered |= covers_start;
        let watermark = t.and_then(|t| DateTime::from_timestamp(t, 0));
        let mut ends_run = true;
        if let Some(r) = &mut self.reconcile {
            if r.listing.is_none() && Utc::now() >= r.last + r.period {
                tracing::info!(orders = r.set.len(), "reconciling: listing every order to find the deleted ones");
                r.listing = Some(FullListing::default());
                r.turn = true;
            }
            // While a reconciliation lists, the change walk runs on between its pages, and
            // the end of the listing ends the run.
            ends_run = r.listing.is_none();
        }
        self.batch(Vec::new(), ends_run, covers_start, watermark)
    }

    fn reconcile_page(&mut self, step: ListingStep, body: Option<&[u8]>, server_date: Option<DateTime<Utc>>) -> Result<Batch, SourceError> {
        let size = u64::from(self.size);
        let r = self.reconcile.as_mut().expect("reconciling");
        let l = r.listing.as_mut().expect("a listing is under way");
        match step {
            ListingStep::Count => {
                l.total = count(body.unwrap_or_default())?;
                l.step = ListingStep::Page(0);
            }
            ListingStep::Page(page) => {
                let raws = orders(body.unwrap_or_default())?;
                let rows = raws.len() as u64;
                for raw in raws {
                    if let Ok((key, _)) = HEAD.read(raw) {
                        l.present.insert(key.into());
                    }
                }
                l.rows += rows;
                let over = pass_over(rows, size, l.widest, l.rows, l.total);
                l.widest = l.widest.max(rows);
                if over {
                    l.absent = r.set.ids().filter(|id| !l.present.contains(*id)).map(Box::from).collect();
                    l.step = ListingStep::Confirm;
                } else {
                    l.step = ListingStep::Page(page + 1);
                }
            }
            ListingStep::Confirm => {
                let id = l.absent.pop().expect("an id was asked for");
                if body.is_none() {
                    l.gone.push((id, server_date.unwrap_or_else(Utc::now)));
                }
            }
        }
        if l.step == ListingStep::Confirm && l.absent.is_empty() {
            return self.end_reconcile();
        }
        r.turn = false;
        Ok(self.batch(Vec::new(), false, false, None))
    }

    /// Tombstones for the orders confirmed gone, with the next generation of the set
    /// (without them) named in the same batch's position.
    fn end_reconcile(&mut self) -> Result<Batch, SourceError> {
        let r = self.reconcile.as_mut().expect("reconciling");
        let FullListing { gone, .. } = r.listing.take().expect("a listing is under way");
        if !gone.is_empty() {
            let gone_ids: HashSet<&str> = gone.iter().map(|(id, _)| &**id).collect();
            let next = r.set.ids().filter(|id| !gone_ids.contains(id)).map(Box::from).collect();
            r.set.replace(next).map_err(|e| SourceError::Setup(e.to_string()))?;
        }
        r.last = Utc::now();
        tracing::info!(deleted = gone.len(), orders = r.set.len(), "reconciled");
        let records = gone.into_iter().map(|(id, at)| Record { key: id.into(), updated_at: at, body: RecordBody::Deleted }).collect();
        Ok(self.batch(records, true, self.covered, None))
    }
}

impl Dialect for WebstoreApi {
    fn restore(&mut self, position: Option<&serde_json::Value>, since: DateTime<Utc>) -> Result<(), SourceError> {
        let p = super::read_position(position, || Position::at(since), "a webstore API", Position::VERSION, |p| p.v)?;
        self.rev = p.rev;
        self.seen = super::seen_from_position(&p.seen)?;
        self.run = None;
        if let Some(r) = &mut self.reconcile {
            r.set.load(p.generation.unwrap_or(0)).map_err(|e| SourceError::Setup(e.to_string()))?;
            if let Some(at) = p.reconciled {
                r.last = at;
            }
            r.listing = None;
        }
        Ok(())
    }

    fn request(&self) -> url::Url {
        match self.target() {
            Target::Change(Step::Open) => Self::with_query(&self.count, &self.since_boundary()),
            Target::Change(Step::Count) => Self::with_query(&self.count, &self.walk_filters()),
            Target::Change(Step::CountNewer) => {
                let t = self.run.as_ref().expect("a run is open").t;
                Self::with_query(&self.count, &self.run_filters(vec![("since", t.to_string())]))
            }
            Target::Change(Step::Page(page)) => self.page_url(page, self.walk_filters()),
            Target::Reconcile(ListingStep::Count) => self.count.clone(),
            Target::Reconcile(ListingStep::Page(page)) => self.page_url(page, Vec::new()),
            Target::Reconcile(ListingStep::Confirm) => {
                let l = self.reconcile.as_ref().and_then(|r| r.listing.as_ref()).expect("a listing is under way");
                let id = l.absent.last().expect("an id to ask for");
                let mut url = self.item.clone();
                url.set_path(&format!("{}{id}.json", self.item.path()));
                url
            }
        }
    }

    fn refused(&mut self, status: StatusCode, detail: String, server_date: Option<DateTime<Utc>>) -> Result<Batch, SourceError> {
        if matches!(status, StatusCode::NOT_FOUND | StatusCode::GONE) && self.target() == Target::Reconcile(ListingStep::Confirm) {
            return self.reconcile_page(ListingStep::Confirm, None, server_date);
        }
        // A page past the last, refused as web frameworks do ("Invalid page.", 404): the
        // listing is over, as after an empty page (which marks a pass short of its count
        // cut). A reconciliation asks for every order its listing missed by itself before
        // it counts one as deleted.
        let says_page = status == StatusCode::NOT_FOUND || (matches!(status, StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY) && detail.to_ascii_lowercase().contains("page"));
        if says_page && matches!(self.target(), Target::Change(Step::Page(1..)) | Target::Reconcile(ListingStep::Page(1..))) {
            return self.page(b"[]", server_date);
        }
        let query = self.request().query().unwrap_or_default().to_string();
        if matches!(status, StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY) && query.contains("endDate=") && detail.to_ascii_lowercase().contains("date") {
            // `endDate` only keeps new orders off the pages; a store that refuses it is
            // read without it, from the start of the run.
            tracing::warn!(status = status.as_u16(), detail = %detail, "the API refused endDate; reading without it");
            self.end_date = false;
            self.run = None;
            return Err(http::http_error(Some(status.as_u16()), format!("the API refused endDate ({status}); reading without it"), true));
        }
        Err(http::http_error(Some(status.as_u16()), format!("the API refused the request ({status}): {detail} [parameters: {query}]"), false))
    }

    fn backlog(&self) -> Option<u64> {
        self.run.as_ref().and_then(Run::left)
    }

    fn page(&mut self, body: &[u8], server_date: Option<DateTime<Utc>>) -> Result<Batch, SourceError> {
        match self.target() {
            Target::Change(step) => {
                let batch = self.change(step, body, server_date)?;
                if let Some(r) = &mut self.reconcile {
                    r.turn = r.listing.is_some();
                }
                Ok(batch)
            }
            // The order exists: the change walk publishes whatever it is now.
            Target::Reconcile(step) => self.reconcile_page(step, Some(body), server_date),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The walk against a model store that does what real ones do to a reader: orders
    //! created, updated and deleted at every request, the newest-created listed first with
    //! offset pages over the state of each moment, late writes inside the settle margin,
    //! many orders in one revision, fewer rows per page than asked, and crashes that resume
    //! from any recently committed position.

    use std::collections::{BTreeMap, HashMap};

    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    const SETTLE: i64 = 2;
    const START: i64 = 1_750_000_000;

    fn config(size: u32, reconcile: bool) -> WebstoreApiSourceConfig {
        let reconcile = if reconcile { "1ms" } else { "off" };
        let toml = format!(
            "url = 'http://store.test/acme/api/v2/sales/orders.json'\nsize = {size}\nsettle = '{SETTLE}s'\nreconcile = '{reconcile}'\nheaders = {{ Authorization = 'Bearer t' }}"
        );
        config::Config::builder().add_source(config::File::from_str(&toml, config::FileFormat::Toml)).build().unwrap().try_deserialize().unwrap()
    }

    #[derive(Clone, Copy)]
    struct Order {
        created: u64,
        date: i64,
        rev: i64,
        version: u32,
    }

    struct Store {
        rng: StdRng,
        now: i64,
        orders: BTreeMap<u64, Order>,
        deleted: Vec<u64>,
        next_id: u64,
        /// Rows per page the store hands out at most, whatever is asked.
        cap: usize,
        /// A store may not know `endDate`.
        ignores_end_date: bool,
        /// A store may answer a page past the last with 404, as web frameworks do.
        past_end_404: bool,
    }

    fn uuid(id: u64) -> String {
        format!("{id:032x}")
    }

    fn doc(id: u64, o: Order) -> String {
        format!(r#"{{"type":"orders","uuid":"{}","revision":{},"version":{}}}"#, uuid(id), o.rev, o.version)
    }

    impl Store {
        fn write(&mut self, id: u64) {
            // A write may commit up to SETTLE - 1 s after the second it is stamped with.
            let rev = self.now - self.rng.random_range(0..SETTLE);
            let o = self.orders.get(&id).copied().unwrap_or(Order { created: id, date: rev, rev, version: 0 });
            self.orders.insert(id, Order { rev: rev.max(o.rev), version: o.version + 1, ..o });
        }

        fn create(&mut self, rev: i64) {
            self.next_id += 1;
            self.orders.insert(self.next_id, Order { created: self.next_id, date: rev, rev, version: 1 });
        }

        fn pick(&mut self) -> Option<u64> {
            (!self.orders.is_empty()).then(|| *self.orders.keys().nth(self.rng.random_range(0..self.orders.len())).unwrap())
        }

        fn churn(&mut self) {
            self.now += self.rng.random_range(0..=1);
            for _ in 0..self.rng.random_range(0..=3) {
                match self.rng.random_range(0..3) {
                    0 => {
                        self.next_id += 1;
                        self.write(self.next_id);
                    }
                    1 => {
                        if let Some(id) = self.pick() {
                            self.write(id);
                        }
                    }
                    _ => {
                        if let Some(id) = self.pick() {
                            self.orders.remove(&id);
                            self.deleted.push(id);
                        }
                    }
                }
            }
        }

        /// The body (or a 404) for a request, and the store's clock.
        fn answer(&mut self, url: &url::Url) -> (Result<Vec<u8>, StatusCode>, DateTime<Utc>) {
            let date = DateTime::from_timestamp(self.now, 0).unwrap();
            let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
            let since = q.get("since").map_or(i64::MIN, |s| s.parse().unwrap());
            let end = q.get("endDate").filter(|_| !self.ignores_end_date).map_or(i64::MAX, |s| s.parse().unwrap());
            let mut rows: Vec<(u64, Order)> = self.orders.iter().filter(|(_, o)| o.rev > since && o.date <= end).map(|(id, o)| (*id, *o)).collect();
            rows.sort_by_key(|(_, o)| std::cmp::Reverse(o.created));
            let path = url.path();
            if path.ends_with("/count.json") {
                return (Ok(rows.len().to_string().into_bytes()), date);
            }
            if let Some(id) = path.strip_prefix("/acme/api/v2/sales/orders/").and_then(|p| p.strip_suffix(".json")) {
                let id = u64::from_str_radix(id, 16).unwrap();
                return (self.orders.get(&id).map(|o| doc(id, *o).into_bytes()).ok_or(StatusCode::NOT_FOUND), date);
            }
            let (page, size) = (q["page"].parse::<usize>().unwrap(), q["size"].parse::<usize>().unwrap().min(self.cap));
            let data: Vec<String> = rows.iter().skip(page * size).take(size).map(|(id, o)| doc(*id, *o)).collect();
            if data.is_empty() && page > 0 && self.past_end_404 {
                return (Err(StatusCode::NOT_FOUND), date);
            }
            (Ok(format!("[{}]", data.join(",")).into_bytes()), date)
        }
    }

    #[derive(Debug)]
    struct Case {
        seed: u64,
        size: u32,
        cap: usize,
        initial: usize,
        /// How many orders the first load stamps with one revision.
        bulk: usize,
        churning_requests: usize,
        crash_percent: u32,
        reconcile: bool,
        ignores_end_date: bool,
        past_end_404: bool,
    }

    fn cases() -> impl Strategy<Value = Case> {
        (any::<u64>(), prop::sample::select(SIZES.to_vec()), 5usize..100, 0usize..60, 0usize..200, 0usize..150, 0u32..15, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(seed, size, cap, initial, bulk, churning_requests, crash_percent, reconcile, ignores_end_date, past_end_404)| Case {
                seed,
                size,
                cap,
                initial,
                bulk,
                churning_requests,
                crash_percent,
                reconcile,
                ignores_end_date,
                past_end_404,
            },
        )
    }

    /// What a key's events say last: its newest document, or `None` for a deletion.
    type Published = HashMap<String, Option<String>>;

    fn check(case: &Case) -> Result<(), TestCaseError> {
        let mut store = Store { rng: StdRng::seed_from_u64(case.seed), now: START, orders: BTreeMap::new(), deleted: Vec::new(), next_id: 0, cap: case.cap, ignores_end_date: case.ignores_end_date, past_end_404: case.past_end_404 };
        for _ in 0..case.bulk {
            store.create(START - 10);
        }
        for _ in 0..case.initial {
            let rev = START - store.rng.random_range(0..20);
            store.create(rev);
        }
        let dir = tempfile::tempdir().unwrap();
        let local = LocalState { dir: dir.path(), pipeline: "p" };
        let mut dialect = config(case.size, case.reconcile).open(&local).unwrap();
        dialect.restore(None, DateTime::UNIX_EPOCH).unwrap();
        let mut committed: Vec<serde_json::Value> = Vec::new();
        let mut published = Published::new();
        let (mut requests, mut quiet_since, mut run_began) = (0, None, START);
        // Reconciliations that ended after the writes stopped: the second began after.
        let mut reconciled_after_quiet = if case.reconcile { 0 } else { 2 };
        loop {
            requests += 1;
            prop_assert!(requests < 100_000, "the walk does not end: {case:?}");
            if requests <= case.churning_requests {
                store.churn();
            } else {
                store.now += 1;
                quiet_since.get_or_insert(store.now);
            }
            // A reconciliation starts over after a crash: crashes stop with the writes so
            // that one can end.
            let crashing = !case.reconcile || quiet_since.is_none();
            if crashing && !committed.is_empty() && store.rng.random_range(0..100) < case.crash_percent {
                // A crash: resume from any committed position, the last or an older one.
                let at = store.rng.random_range(committed.len().saturating_sub(3)..committed.len());
                dialect.restore(Some(&committed[at]), DateTime::UNIX_EPOCH).unwrap();
                // What came after it was never committed.
                committed.truncate(at + 1);
            }
            let (body, date) = store.answer(&dialect.request());
            let answered = match body {
                Ok(body) => dialect.page(&body, Some(date)),
                Err(status) => dialect.refused(status, String::new(), Some(date)),
            };
            let batch = match answered {
                Ok(batch) => batch,
                Err(e) => return Err(TestCaseError::fail(format!("{e}: {case:?}"))),
            };
            for r in &batch.records {
                let body = match &r.body {
                    RecordBody::Document(d) => Some(d.clone()),
                    RecordBody::Deleted => None,
                    RecordBody::Bad { .. } => panic!("a bad record: {r:?}"),
                };
                published.insert(r.key.clone(), body);
            }
            if batch.position.get("reconciled") != committed.last().and_then(|p| p.get("reconciled")) {
                reconciled_after_quiet += u32::from(quiet_since.is_some());
            }
            committed.push(batch.position);
            // Done once a run that began past the last write has ended (and, with
            // reconcile, a reconciliation that began after it).
            if batch.ends_run {
                if quiet_since.is_some_and(|q| run_began - SETTLE >= q) && reconciled_after_quiet >= 2 {
                    break;
                }
                run_began = store.now + 1;
            }
        }
        for (id, o) in &store.orders {
            prop_assert_eq!(published.get(&uuid(*id)), Some(&Some(doc(*id, *o))), "order {} is missing or stale: {:?}", id, case);
        }
        if case.reconcile {
            for id in &store.deleted {
                if let Some(last) = published.get(&uuid(*id)) {
                    prop_assert_eq!(last, &None, "deleted order {} has no tombstone: {:?}", id, case);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn listings_and_counts_in_the_shapes_stores_write_them() {
        let keys = |body: &str| orders(body.as_bytes()).map(|o| o.iter().map(|r| r.get().to_string()).collect::<Vec<_>>());
        assert_eq!(keys(r#"[{"uuid":"a"},{"uuid":"b"}]"#).unwrap(), [r#"{"uuid":"a"}"#, r#"{"uuid":"b"}"#]);
        assert_eq!(keys(r#"{"orders": [{"uuid":"a"}], "page": 0}"#).unwrap(), [r#"{"uuid":"a"}"#]);
        assert!(keys(r#"{"orders": [], "customers": []}"#).is_err_and(|e| e.is_retriable()), "two arrays: which is it?");
        assert!(keys(r#"[{"uuid":"a"}"#).is_err_and(|e| e.is_retriable()), "a page cut short is retried");
        for body in ["42", "\"42\"", r#"{"count": 42}"#, " 42\n"] {
            assert_eq!(count(body.as_bytes()).unwrap(), 42, "{body}");
        }
        assert!(count(b"[42]").is_err());
        assert_eq!(revision(&serde_json::json!(1253783394)), Some(1253783394));
        assert_eq!(revision(&serde_json::json!("1253783394")), Some(1253783394));
        assert_eq!(revision(&serde_json::json!(1253783394.9)), Some(1253783394));
        assert_eq!(revision(&serde_json::json!("2009-09-24T09:09:54Z")), Some(1253783394));
        assert_eq!(revision(&serde_json::json!(null)), None);
    }

    #[test]
    fn bad_values_name_their_key() {
        let key = |edit: fn(&mut WebstoreApiSourceConfig)| {
            let mut cfg = config(80, false);
            edit(&mut cfg);
            cfg.validate().map(|_| "").unwrap_or_else(|e| e.key)
        };
        assert_eq!(key(|_| {}), "");
        assert_eq!(key(|c| c.size = 30), "source.size");
        assert_eq!(key(|c| c.url = "http://store.test/acme/api/v2/sales/orders".into()), "source.url");
        assert_eq!(key(|c| _ = c.headers.insert("Bad Name".into(), crate::secret::Secret::new("x"))), "source.headers");
        assert_eq!(key(|c| _ = c.headers.insert("X-Token".into(), crate::secret::Secret::new("a\nb"))), "source.headers");
    }

    #[test]
    fn requests_read_the_boundary_again_and_keep_new_orders_off_the_pages() {
        let mut d = config(40, false).open(&LocalState::none()).unwrap();
        d.restore(None, DateTime::from_timestamp(1_750_000_000, 0).unwrap()).unwrap();
        assert_eq!(d.request().as_str(), "http://store.test/acme/api/v2/sales/orders/count.json?since=1749999999");
        let date = DateTime::from_timestamp(1_750_000_100, 0);
        d.page(b"3", date).unwrap();
        assert_eq!(d.request().as_str(), "http://store.test/acme/api/v2/sales/orders/count.json?since=1750000098&endDate=1750000099");
        d.page(b"0", date).unwrap();
        assert_eq!(d.request().as_str(), "http://store.test/acme/api/v2/sales/orders/count.json?since=1749999999&endDate=1750000099");
        d.page(b"3", date).unwrap();
        assert_eq!(d.request().as_str(), "http://store.test/acme/api/v2/sales/orders.json?size=40&page=0&since=1749999999&endDate=1750000099");
        let e = d.page(b"3", None);
        assert!(e.is_err(), "a listing that is a bare integer is malformed");
        // A store that does not know endDate: the run starts again without it.
        let e = d.refused(StatusCode::UNPROCESSABLE_ENTITY, r#"{"error":"endDate"}"#.into(), date).unwrap_err();
        assert!(e.is_retriable(), "{e}");
        assert_eq!(d.request().as_str(), "http://store.test/acme/api/v2/sales/orders/count.json?since=1749999999");
        for answer in ["3", "0", "3"] {
            d.page(answer.as_bytes(), date).unwrap();
        }
        assert_eq!(d.request().as_str(), "http://store.test/acme/api/v2/sales/orders.json?size=40&page=0&since=1749999999");
        let e = d.refused(StatusCode::UNPROCESSABLE_ENTITY, r#"{"error":"size"}"#.into(), date).unwrap_err();
        assert!(!e.is_retriable() && e.to_string().contains("size=40"), "{e}");
    }

    /// A 404 for the page after a full last one ends the pass. Short of the count (a store
    /// that caps how deep it pages) every pass is cut, and after the last of them the run
    /// ends with its boundary where it was: the orders past the cap are never skipped.
    #[test]
    fn a_page_past_the_last_refused_ends_the_pass_and_a_cut_pass_never_moves_the_boundary() {
        for (counted, whole) in [("20", true), ("50", false)] {
            let mut d = config(20, false).open(&LocalState::none()).unwrap();
            d.restore(None, DateTime::from_timestamp(START, 0).unwrap()).unwrap();
            let date = DateTime::from_timestamp(START + 100, 0);
            for answer in ["3", "0", counted] {
                d.page(answer.as_bytes(), date).unwrap();
            }
            let full: Vec<String> = (1..=20).map(|id| doc(id, Order { created: id, date: START, rev: START + 50, version: 1 })).collect();
            let mut passes = 0;
            let ended = loop {
                passes += 1;
                assert!(passes <= MAX_PASSES, "counted {counted}: the run does not end");
                d.page(format!("[{}]", full.join(",")).as_bytes(), date).unwrap();
                assert!(d.request().as_str().contains("page=1"), "{}", d.request());
                d.refused(StatusCode::NOT_FOUND, r#"{"detail": "Invalid page."}"#.into(), date).unwrap();
                d.page(b"0", date).unwrap();
                let batch = d.page(counted.as_bytes(), date).unwrap();
                if batch.ends_run {
                    break batch;
                }
            };
            let rev = ended.position["rev"].as_i64().unwrap();
            if whole {
                assert_eq!((passes, rev), (1, START + 50), "a still pass ends the run and moves the boundary");
            } else {
                assert_eq!((passes, rev), (MAX_PASSES, START), "cut passes never move the boundary");
            }
        }
    }

    #[test]
    fn the_backlog_is_the_counted_set_less_what_the_run_listed() {
        let mut d = config(40, false).open(&LocalState::none()).unwrap();
        d.restore(None, DateTime::from_timestamp(START, 0).unwrap()).unwrap();
        let date = DateTime::from_timestamp(START + 100, 0);
        for (answer, left) in [("7", None), ("2", None), ("9", Some(7))] {
            d.page(answer.as_bytes(), date).unwrap();
            assert_eq!(d.backlog(), left, "after the count {answer}");
        }
        let order = |uuid: &str, rev: i64| format!(r#"{{"uuid":"{uuid}","revision":{rev}}}"#);
        let page = format!("[{},{},{}]", order("a", START + 1), order("b", START + 2), order("past-t", START + 99));
        d.page(page.as_bytes(), date).unwrap();
        assert_eq!(d.backlog(), Some(5), "two members of S listed; an order past T is not one");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn the_walk_ends_with_every_orders_newest_version_last_and_deletions_tombstoned(case in cases()) {
            check(&case)?;
        }
    }
}
