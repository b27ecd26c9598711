//! The export API source: polls `GET /sales-orders/export` (seed 000) exactly as the seed
//! tells clients to. A run starts with `since`, follows `next_cursor` while `has_more`,
//! keeps the first page's `meta.cutoff`, and the next run starts there.
//!
//! Every page is read whole and parsed before anything is handed over, so a truncated or
//! malformed page is retried, never half published. The documents go on as the exact
//! bytes the API sent (`RawValue`). The transport is `http.rs`'s; this file is the paging
//! rules and the position.

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::head::HeadFields;
use super::http::{self, Credential, Dialect, DialectConfig, LocalState, TransportSettings};
use super::{Batch, Record, RecordBody, SourceError};
use crate::config::{ExportApiSourceConfig, InvalidValue};
use crate::timestamp;

/// The position of an export API pipeline. Times are kept as the API wrote them: the
/// next run's `since` is the first page's `meta.cutoff`, verbatim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub v: u32,
    pub since: String,
    /// The run's cutoff (`meta.cutoff` of its first page); `None` between runs.
    pub cutoff: Option<String>,
    /// The cursor of the next page; `None` between runs.
    pub cursor: Option<String>,
}

impl Position {
    const VERSION: u32 = 1;

    /// A run from `since`, written in the plainest RFC 3339 (`1970-01-01T00:00:00Z`, a
    /// fraction only when there is one) so that any implementation of the API parses it.
    pub fn at(since: DateTime<Utc>) -> Self {
        Self { v: Self::VERSION, since: since.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true), cutoff: None, cursor: None }
    }
}

/// A page as implementations of the API write it: `data` may be missing or null on an
/// empty page, and `has_more` missing (a `next_cursor` that is null then ends the run).
/// The two that say how the run goes on are told apart as absent (`None`) and null
/// (`Some(None)`).
///
/// `D` is what `data` is read as: its documents, or nothing (`IgnoredAny`) when only the
/// way on is wanted.
#[derive(Deserialize)]
struct Page<D> {
    #[serde(default = "Option::default")]
    data: Option<D>,
    #[serde(default, deserialize_with = "present")]
    next_cursor: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    has_more: Option<Option<bool>>,
    #[serde(default)]
    meta: Option<Meta>,
}

/// A member that is there, null or not (an absent one is `None` by `default`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// What a page says of the run.
#[derive(Debug, PartialEq)]
enum Next {
    /// Go on with this cursor.
    Cursor(String),
    /// The run is over: `has_more` is false, or `next_cursor` is null and `has_more` is
    /// not true (seed 001: `next_cursor` is "null when the export is complete").
    End,
    /// `has_more` is true but there is no cursor to go on with. Taking that as the end
    /// would move `since` past the pages not read; the run starts again instead.
    Stranded,
    /// Neither member is there (`{}`, `{"status": "busy", "data": null}`): an answer from
    /// something in front of the API, not the end of the run.
    Unsaid,
}

impl<D> Page<D> {
    fn next(&self) -> Next {
        let cursor = self.next_cursor.as_ref().and_then(|c| c.as_deref()).filter(|c| !c.is_empty());
        match (self.has_more.flatten(), cursor) {
            (Some(false), _) => Next::End,
            (_, Some(cursor)) => Next::Cursor(cursor.to_string()),
            (Some(true), None) => Next::Stranded,
            (None, None) if self.next_cursor.is_some() || self.has_more.is_some() => Next::End,
            (None, None) => Next::Unsaid,
        }
    }
}

#[derive(Deserialize)]
struct Meta {
    cutoff: Option<String>,
}

impl DialectConfig for ExportApiSourceConfig {
    /// The export endpoint of the base URL, without credentials.
    fn identity(&self) -> String {
        format!("{}/sales-orders/export", http::without_credentials(&self.base_url))
    }

    fn validate(&self) -> Result<(), InvalidValue> {
        http::check_url("source.base_url", &self.base_url)?;
        if !(1..=1000).contains(&self.limit) {
            return Err(InvalidValue::new("source.limit", "must be between 1 and 1000"));
        }
        if self.token.expose().trim().is_empty() {
            return Err(InvalidValue::new("source.token", "must not be empty"));
        }
        for (key, value) in [("source.id_field", &self.id_field), ("source.updated_at_field", &self.updated_at_field)] {
            if value.is_empty() {
                return Err(InvalidValue::new(key, "must not be empty"));
            }
        }
        if self.id_field == self.updated_at_field {
            // One field cannot be both: every record would go to the dead-letter topic.
            return Err(InvalidValue::new("source.updated_at_field", "must name another field than source.id_field"));
        }
        Ok(())
    }

    fn transport(&self) -> TransportSettings {
        TransportSettings {
            request_timeout: self.request_timeout,
            max_response_bytes: self.max_response_bytes,
            credential: Credential::Bearer { key: "token", token: self.token.clone() },
        }
    }

    fn open(&self, _local: &LocalState) -> Result<Box<dyn Dialect>, SourceError> {
        let endpoint = url::Url::parse(&self.identity()).map_err(|e| SourceError::Setup(format!("source.base_url is not a URL: {e}")))?;
        Ok(Box::new(ExportApi { cfg: self.clone(), endpoint, read: Position::at(timestamp::epoch()), covers_start: false, restarts: 0, last_page: None }))
    }

    fn position_since(&self, since: DateTime<Utc>) -> serde_json::Value {
        serde_json::to_value(Position::at(since)).expect("a position serialises")
    }
}

struct ExportApi {
    cfg: ExportApiSourceConfig,
    endpoint: url::Url,
    read: Position,
    /// The current run was started by this process: its cutoff, the API's clock at its
    /// first request, comes after every change committed before the source started.
    covers_start: bool,
    /// Times the run under way started again (a refused cursor, a page with no way on)
    /// since a run last ended: each waits twice as long as the one before, so an API
    /// that refuses every cursor is asked again at a falling rate, not in a loop that
    /// republishes its first page.
    restarts: u32,
    /// A hash of the documents of the run's page before, to see a server that answers
    /// every cursor with the same page (one that ignores `cursor`, or a scroll that is
    /// stuck): that run would never end, and would publish the page again and again.
    last_page: Option<u64>,
}

impl ExportApi {
    /// Starts the run again from its since: duplicates, never loss.
    fn restart(&mut self, status: u16, detail: String) -> SourceError {
        tracing::warn!(status, detail = %detail, since = %self.read.since, restarts = self.restarts, "restarting the export run from its since");
        self.read.cursor = None;
        self.read.cutoff = None;
        self.last_page = None;
        let retry_after = std::time::Duration::from_secs(1 << self.restarts.min(9)).min(MAX_RESTART_WAIT);
        self.restarts = self.restarts.saturating_add(1);
        SourceError::CursorRefused { status, detail, retry_after }
    }

    /// The request for a page of the run: its first from since, or the one a cursor names.
    fn request_at(&self, cursor: Option<&str>) -> url::Url {
        let mut url = self.endpoint.clone();
        match cursor {
            Some(cursor) => url.query_pairs_mut().append_pair("cursor", cursor),
            None => url.query_pairs_mut().append_pair("since", &self.read.since).append_pair("limit", &self.cfg.limit.to_string()),
        };
        url
    }
}

/// The longest wait before a run starts again.
const MAX_RESTART_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

impl Dialect for ExportApi {
    fn restore(&mut self, position: Option<&serde_json::Value>, since: DateTime<Utc>) -> Result<(), SourceError> {
        self.read = super::read_position(position, || Position::at(since), "an export API", Position::VERSION, |p| p.v)?;
        self.covers_start = false;
        self.last_page = None;
        Ok(())
    }

    /// A run's first request asks the API for a cutoff of its clock now.
    fn next_run_covers_start(&self) -> bool {
        true
    }

    /// The request for the read position. As seed 000 shows it: a run starts with `since`
    /// and `limit`; a continuation sends the cursor alone (it carries the run's window and
    /// page size).
    fn request(&self) -> url::Url {
        self.request_at(self.read.cursor.as_deref())
    }

    /// The page's `next_cursor`, read with its documents skipped.
    fn request_after(&self, body: &[u8]) -> Option<url::Url> {
        let page: Page<IgnoredAny> = serde_json::from_slice(body).ok()?;
        match page.next() {
            Next::Cursor(cursor) => Some(self.request_at(Some(&cursor))),
            _ => None,
        }
    }

    fn refused(&mut self, status: StatusCode, detail: String, _server_date: Option<DateTime<Utc>>) -> Result<Batch, SourceError> {
        if self.read.cursor.is_some() {
            // The cursor was refused (expired, signed by a key that rotated away...).
            return Err(self.restart(status.as_u16(), format!("the API refused the cursor: {detail}")));
        }
        // A first request carries since and limit: a server with a smaller maximum page
        // refuses the limit, so both are named.
        let message = format!("the API refused since={}&limit={} ({status}): {detail} (check the pipeline's initial_since and source.limit)", self.read.since, self.cfg.limit);
        Err(http::http_error(Some(status.as_u16()), message, false))
    }

    fn page(&mut self, body: &[u8], _server_date: Option<DateTime<Utc>>) -> Result<Batch, SourceError> {
        let continuing = self.read.cursor.is_some();
        let page: Page<Vec<&RawValue>> = serde_json::from_slice(body).map_err(http::malformed)?;
        // The cursor to go on with; `None` at the end of the run.
        let next = match page.next() {
            Next::Unsaid => return Err(http::malformed("neither has_more nor next_cursor")),
            Next::Stranded => return Err(self.restart(200, "the page says has_more but gives no next_cursor".into())),
            // An empty page that hands back the cursor it was asked with would be asked
            // for again forever. (With orders on it, the same cursor may be a server that
            // keeps the position itself, as a scroll id does.)
            Next::Cursor(c) if self.read.cursor.as_deref() == Some(c.as_str()) && page.data.as_ref().is_none_or(Vec::is_empty) => {
                return Err(self.restart(200, "an empty page gives the cursor it was asked with as next_cursor".into()))
            }
            Next::Cursor(c) => Some(c),
            Next::End => None,
        };
        let ends_run = next.is_none();
        let data = page.data.unwrap_or_default();
        let documents = (!data.is_empty()).then(|| {
            let mut hash = xxhash_rust::xxh3::Xxh3::new();
            data.iter().for_each(|d| hash.update(d.get().as_bytes()));
            hash.digest()
        });
        if continuing && documents.is_some() && documents == self.last_page {
            return Err(self.restart(200, "the page holds the same orders as the page before it: the API does not move on with the cursor".into()));
        }
        self.last_page = if ends_run { None } else { documents };
        // An empty cutoff is none: sent back as `since=`, it would be refused a run later.
        let cutoff = match (continuing, page.meta.and_then(|m| m.cutoff).filter(|c| !c.trim().is_empty())) {
            (true, _) => self.read.cutoff.clone().unwrap_or_else(|| self.read.since.clone()),
            (false, Some(cutoff)) => cutoff,
            // Nothing changed and no cutoff given: the next run starts where this one did.
            (false, None) if ends_run && data.is_empty() => self.read.since.clone(),
            // Without it there is no safe next since; guessing one could lose changes.
            (false, None) => {
                return Err(http::http_error(Some(200), "the first page of a run has no meta.cutoff, so the next run cannot start safely".into(), false))
            }
        };
        if !continuing {
            self.covers_start = true;
        }
        let fields = HeadFields { id: &self.cfg.id_field, updated_at: &self.cfg.updated_at_field };
        let records: Vec<Record> = data.iter().map(|raw| record(raw, fields)).collect();
        let watermark = if ends_run {
            timestamp::parse(&cutoff).ok()
        } else {
            records.iter().filter(|r| !matches!(r.body, RecordBody::Bad { .. })).map(|r| r.updated_at).max()
        };
        self.read = match next {
            Some(cursor) => Position { v: Position::VERSION, since: self.read.since.clone(), cutoff: Some(cutoff), cursor: Some(cursor) },
            None => {
                self.restarts = 0;
                Position { v: Position::VERSION, since: cutoff, cutoff: None, cursor: None }
            }
        };
        Ok(Batch {
            records,
            position: serde_json::to_value(&self.read).expect("a position serialises"),
            ends_run,
            covers_start: self.covers_start,
            cutoff_holdback: None,
            watermark,
        })
    }
}

fn record(raw: &RawValue, fields: HeadFields) -> Record {
    let read = fields.read(raw).and_then(|(key, at)| match change_time(&at) {
        Some(updated_at) => Ok((key, updated_at)),
        None => Err((key, format!("the record has no valid {}", fields.updated_at))),
    });
    match read {
        Ok((key, updated_at)) => Record { key, updated_at, body: RecordBody::Document(raw.get().to_string()) },
        Err((key, reason)) => Record::bad(key, reason, raw),
    }
}

/// A change time as APIs write it: a datetime string, or Unix seconds (milliseconds when
/// the number is too large to be seconds: 10^11 s is the year 5138).
fn change_time(value: &serde_json::Value) -> Option<DateTime<Utc>> {
    match value {
        serde_json::Value::String(s) => timestamp::parse(s).ok(),
        serde_json::Value::Number(n) => {
            let n = n.as_f64()?;
            let micros = if n.abs() >= 1e11 { n * 1e3 } else { n * 1e6 };
            DateTime::from_timestamp_micros(micros.round() as i64)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: HeadFields = HeadFields { id: "order_id", updated_at: "updated_at" };

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn records_need_an_order_id_and_an_updated_at() {
        let doc = r#"{"order_id": 7, "items": [{"order_id": 99}], "updated_at": "2024-01-15T10:30:00Z", "x": [1, 2]}"#;
        let ok = record(&raw(doc), SEED);
        assert_eq!(ok.key, "7", "the top-level id, not a nested one");
        assert!(matches!(&ok.body, RecordBody::Document(d) if d == doc), "the bytes pass through untouched");
        assert_eq!(record(&raw(r#"{"order_id": "A-1", "updated_at": "2024-01-15 10:30:00"}"#), SEED).key, "A-1");
        let bad = |doc: &str| match record(&raw(doc), SEED).body {
            RecordBody::Bad { reason, .. } => reason,
            RecordBody::Document(_) => panic!("{doc} was accepted"),
            RecordBody::Deleted => unreachable!(),
        };
        assert_eq!(bad(r#"{"updated_at": "2024-01-15T10:30:00Z"}"#), "the record has no order_id");
        assert_eq!(bad(r#"{"order_id": 7}"#), "the record has no valid updated_at");
        assert_eq!(bad(r#"{"order_id": 7, "updated_at": "yesterday"}"#), "the record has no valid updated_at");
        assert_eq!(bad(r#"[1]"#), "the record is not a JSON object");
    }

    #[test]
    fn field_names_and_change_time_forms_are_the_apis() {
        let fields = HeadFields { id: "id", updated_at: "modified" };
        let at = |doc: &str| record(&raw(doc), fields).updated_at;
        let expected = DateTime::parse_from_rfc3339("2024-01-15T10:30:00.5Z").unwrap().with_timezone(&Utc);
        assert_eq!(at(r#"{"id": "u-1", "modified": "2024-01-15T10:30:00.5Z"}"#), expected);
        assert_eq!(at(r#"{"id": "u-1", "modified": "2024-01-15 10:30:00.5+00"}"#), expected);
        assert_eq!(at(r#"{"id": "u-1", "modified": 1705314600.5}"#), expected);
        assert_eq!(at(r#"{"id": "u-1", "modified": 1705314600500}"#), expected);
        assert_eq!(record(&raw(r#"{"i\u0064": 5, "modified": 1705314600}"#), fields).key, "5", "escaped keys match too");
    }

    #[test]
    fn the_two_fields_are_named_and_not_the_same() {
        let cfg = |fields: serde_json::Value| {
            let mut c = serde_json::json!({"base_url": "http://api.example", "token": "t"});
            c.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
            serde_json::from_value::<ExportApiSourceConfig>(c).unwrap().validate().map_err(|e| format!("{}: {}", e.key, e.reason))
        };
        assert!(cfg(serde_json::json!({})).is_ok());
        assert!(cfg(serde_json::json!({"id_field": "id", "updated_at_field": "modified"})).is_ok());
        let same = cfg(serde_json::json!({"id_field": "at", "updated_at_field": "at"})).unwrap_err();
        assert!(same.contains("source.updated_at_field") && same.contains("source.id_field"), "{same}");
        assert!(cfg(serde_json::json!({"id_field": ""})).unwrap_err().contains("source.id_field"));
    }

    #[test]
    fn a_run_ends_when_the_page_says_so_and_starts_again_when_it_cannot_go_on() {
        let next = |s: &str| serde_json::from_str::<Page<IgnoredAny>>(s).unwrap().next();
        assert_eq!(next(r#"{"data": [], "next_cursor": null, "has_more": false}"#), Next::End);
        assert_eq!(next(r#"{"data": null, "next_cursor": null}"#), Next::End);
        assert_eq!(next(r#"{"data": null, "has_more": null, "next_cursor": null}"#), Next::End);
        assert_eq!(next(r#"{"data": null}"#), Next::Unsaid);
        assert_eq!(next(r#"{"status": "busy", "meta": {}}"#), Next::Unsaid);
        assert_eq!(next(r#"{"data": [], "next_cursor": "c", "has_more": false}"#), Next::End);
        assert_eq!(next(r#"{"data": [], "next_cursor": "", "has_more": true}"#), Next::Stranded);
        assert_eq!(next(r#"{"data": [], "has_more": true}"#), Next::Stranded);
        assert_eq!(next(r#"{"data": [], "next_cursor": "c", "has_more": true}"#), Next::Cursor("c".into()));
        assert_eq!(next(r#"{"data": [], "next_cursor": "c"}"#), Next::Cursor("c".into()));
    }

    fn api() -> ExportApi {
        let cfg: ExportApiSourceConfig = serde_json::from_value(serde_json::json!({"base_url": "http://api.example", "token": "t"})).unwrap();
        ExportApi { cfg, endpoint: url::Url::parse("http://api.example/sales-orders/export").unwrap(), read: Position::at(timestamp::epoch()), covers_start: false, restarts: 0, last_page: None }
    }

    /// The request sent ahead, before a page is parsed, is the one its parse decides;
    /// where the parse ends the run there is none, and where it starts the run again the
    /// one sent ahead is another (and is dropped unused).
    #[test]
    fn the_request_sent_ahead_is_the_one_the_page_decides() {
        let query = |u: Option<url::Url>| u.map(|u| u.query().unwrap_or_default().to_string());
        let order = r#"{"order_id": 1, "updated_at": "2024-01-01T00:00:00Z", "next_cursor": "not this"}"#;
        let first = format!(r#"{{"meta": {{"cutoff": "2024-02-01T00:00:00Z"}}, "data": [{order}], "has_more": true, "next_cursor": "c+1/="}}"#);
        let mut api = api();
        let ahead = query(api.request_after(first.as_bytes()));
        assert_eq!(ahead.as_deref(), Some("cursor=c%2B1%2F%3D"), "the page's own next_cursor, not a document's");
        api.page(first.as_bytes(), None).unwrap();
        assert_eq!(ahead, query(Some(api.request())));
        // The way on written in other forms and orders is read the same.
        let next = r#"{"next_cursor" : "c\u0032", "data": [], "has_more": true}"#;
        let ahead = query(api.request_after(next.as_bytes()));
        api.page(next.as_bytes(), None).unwrap();
        assert_eq!((ahead.as_deref(), query(Some(api.request())).as_deref()), (Some("cursor=c2"), Some("cursor=c2")));
        // Pages that end the run: nothing is asked ahead.
        for last in [r#"{"data": [], "next_cursor": "c3", "has_more": false}"#, r#"{"data": [], "next_cursor": null}"#, r#"{"has_more": false}"#] {
            assert_eq!(api.request_after(last.as_bytes()), None, "{last}");
        }
        // Pages with no way on, or not a page: nothing is asked ahead either.
        for broken in [r#"{"data": [], "has_more": true}"#, r#"{}"#, r#"{"data": [{"order_id": 1"#] {
            assert_eq!(api.request_after(broken.as_bytes()), None, "{broken}");
        }
        // An empty page handing back the cursor it was asked with: asked ahead, then the
        // parse starts the run again from its since, so the request sent ahead is not used.
        let same = r#"{"data": [], "next_cursor": "c2", "has_more": true}"#;
        let ahead = query(api.request_after(same.as_bytes()));
        assert!(api.page(same.as_bytes(), None).is_err());
        assert_eq!(ahead.as_deref(), Some("cursor=c2"));
        assert_eq!(query(Some(api.request())).as_deref(), Some("since=1970-01-01T00%3A00%3A00Z&limit=1000"));
    }

    /// A server that answers every cursor with the same page (it ignores `cursor`, or its
    /// scroll is stuck) would keep the run going forever, publishing the page again each
    /// time: the second time the run starts again from its since, waiting as above. A
    /// scroll id that stays the same while the pages move on is followed.
    #[test]
    fn the_same_page_for_the_next_cursor_starts_the_run_again() {
        let page = |cursor: &str, ids: [u32; 2], meta: &str| {
            let docs: Vec<String> = ids.iter().map(|id| format!(r#"{{"order_id": {id}, "updated_at": "2024-01-01T00:00:0{id}Z"}}"#)).collect();
            format!(r#"{{"data": [{}], "next_cursor": "{cursor}", "has_more": true{meta}}}"#, docs.join(","))
        };
        let first = page("scroll", [1, 2], r#", "meta": {"cutoff": "2024-02-01T00:00:00Z"}"#);
        let mut api = api();
        api.page(first.as_bytes(), None).unwrap();
        assert_eq!(api.page(page("scroll", [3, 4], "").as_bytes(), None).unwrap().records.len(), 2, "a scroll id: the pages move on");
        for cursor in ["scroll", "a-new-cursor"] {
            let e = api.page(page(cursor, [3, 4], "").as_bytes(), None).unwrap_err();
            assert!(matches!(e, SourceError::CursorRefused { .. }) && e.to_string().contains("same orders"), "{e}");
            assert_eq!((api.read.since.as_str(), api.read.cursor.as_deref()), ("1970-01-01T00:00:00Z", None), "back to the run's since");
            // The run from its since reads those pages again.
            api.page(first.as_bytes(), None).unwrap();
            api.page(page("scroll", [3, 4], "").as_bytes(), None).unwrap();
        }
    }

    /// Pages that would have ended the run past pages not read: each starts the run again
    /// from its since, waiting longer each time, and a run that ends resets the waits.
    #[test]
    fn a_page_with_no_way_on_starts_the_run_again_never_moves_since() {
        let mut api = api();
        let first = br#"{"data": [{"order_id": 1, "updated_at": "2024-01-01T00:00:00Z"}], "next_cursor": "c1", "has_more": true, "meta": {"cutoff": "2024-02-01T00:00:00Z"}}"#;
        let mut waits = Vec::new();
        for broken in [&br#"{"data": [], "has_more": true}"#[..], br#"{}"#, br#"{"message": "cursor expired"}"#, br#"{"status": "busy", "data": null}"#, br#"{"data": [], "next_cursor": "c1", "has_more": true}"#] {
            api.read = Position::at(timestamp::epoch());
            api.page(first, None).unwrap();
            assert_eq!(api.read.cursor.as_deref(), Some("c1"));
            match api.page(broken, None) {
                Err(SourceError::CursorRefused { retry_after, .. }) => waits.push(retry_after.as_secs()),
                Err(e @ SourceError::Http { retriable: true, .. }) => {
                    // `{}` and the like: retried as they are, the cursor kept.
                    assert_eq!(api.read.cursor.as_deref(), Some("c1"), "{e}");
                    continue;
                }
                other => panic!("{} was taken as {:?}", String::from_utf8_lossy(broken), other.map(|b| b.ends_run)),
            }
            assert_eq!((api.read.since.as_str(), api.read.cursor.as_deref()), ("1970-01-01T00:00:00Z", None), "back to the run's since");
        }
        assert_eq!(waits, [1, 2]);
        // Last pages as implementations write them end the run, members null or absent.
        for last in [&br#"{"data": [], "next_cursor": null, "has_more": false}"#[..], br#"{"data": null, "next_cursor": null}"#, br#"{"next_cursor": null}"#, br#"{"has_more": false}"#] {
            api.read = Position::at(timestamp::epoch());
            api.page(first, None).unwrap();
            assert!(api.page(last, None).unwrap().ends_run, "{}", String::from_utf8_lossy(last));
            assert_eq!((api.read.since.as_str(), api.restarts), ("2024-02-01T00:00:00Z", 0));
        }
        // A first page whose cutoff is empty has none: the next run could not start safely.
        api.read = Position::at(timestamp::epoch());
        let e = api.page(br#"{"data": [], "next_cursor": "c1", "has_more": true, "meta": {"cutoff": ""}}"#, None).unwrap_err();
        assert!(e.to_string().contains("no meta.cutoff") && !e.is_retriable(), "{e}");
        // A refused first request names both of its parameters.
        let e = api.refused(StatusCode::UNPROCESSABLE_ENTITY, "limit must be at most 500".into(), None).unwrap_err();
        assert!(e.to_string().contains("limit=1000") && e.to_string().contains("source.limit") && !e.is_retriable(), "{e}");
        // The waits double up to five minutes.
        api.restarts = 20;
        assert!(matches!(api.restart(200, String::new()), SourceError::CursorRefused { retry_after, .. } if retry_after == MAX_RESTART_WAIT));
    }
}
