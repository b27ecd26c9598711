//! The export API source: polls `GET /sales-orders/export` (seed 000) exactly as the seed
//! tells clients to. A run starts with `since`, follows `next_cursor` while `has_more`,
//! keeps the first page's `meta.cutoff`, and the next run starts there.
//!
//! Every page is read whole and parsed before anything is handed over, so a truncated or
//! malformed page is retried, never half published. The documents go on as the exact
//! bytes the API sent (`RawValue`); only the id and `updated_at` fields are read from
//! them, and nothing else of a document is parsed into values.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use super::{Batch, Record, RecordBody, Source, SourceError};
use crate::config::ExportApiSourceConfig;
use crate::metrics::PipelineMetrics;
use crate::secret::Secret;
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

/// The export endpoint of a configured base URL, without credentials.
pub fn identity(cfg: &ExportApiSourceConfig) -> String {
    let mut url = url::Url::parse(&cfg.base_url).map(|mut u| {
        let _ = u.set_password(None);
        let _ = u.set_username("");
        u.set_query(None);
        u.to_string()
    })
    .unwrap_or_else(|_| cfg.base_url.clone());
    while url.ends_with('/') {
        url.pop();
    }
    format!("{url}/sales-orders/export")
}

/// A page as implementations of the API write it: `data` may be missing or null on an
/// empty page, and `has_more` missing (a null `next_cursor` then ends the run).
#[derive(Deserialize)]
struct Page<'a> {
    #[serde(borrow, default)]
    data: Option<Vec<&'a RawValue>>,
    #[serde(default)]
    next_cursor: Option<String>,
    #[serde(default)]
    has_more: Option<bool>,
    #[serde(default)]
    meta: Option<Meta>,
}

impl Page<'_> {
    /// The run is over when the API says so or gives no way to go on.
    fn ends_run(&self) -> bool {
        self.has_more == Some(false) || self.next_cursor.as_deref().is_none_or(str::is_empty)
    }
}

#[derive(Deserialize)]
struct Meta {
    cutoff: Option<String>,
}

/// What an event needs from a document: its id and change time, read from the
/// configured top-level fields. Every other field is skipped without building values.
#[derive(Default)]
struct Head {
    id: Option<serde_json::Value>,
    updated_at: Option<serde_json::Value>,
}

/// Reads a `Head` out of a document with the given field names.
struct HeadFields<'f> {
    id: &'f str,
    updated_at: &'f str,
}

/// A map key, borrowed from the page unless it has escapes.
#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> DeserializeSeed<'de> for HeadFields<'_> {
    type Value = Head;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Head, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HeadFields<'_> {
    type Value = Head;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Head, A::Error> {
        let mut head = Head::default();
        while let Some(Key(key)) = map.next_key()? {
            if key == self.id {
                head.id = Some(map.next_value()?);
            } else if key == self.updated_at {
                head.updated_at = Some(map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(head)
    }
}

pub struct ExportApiSource {
    cfg: ExportApiSourceConfig,
    endpoint: String,
    client: Client,
    read: Position,
    /// The current run was started by this process: its cutoff, the API's clock at its
    /// first request, comes after every change committed before the source started.
    covers_start: bool,
    /// The next page's request, started as soon as its cursor was known.
    prefetch: Option<Prefetch>,
}

/// What one request needs; cheap to clone into a prefetching task.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    token: Secret,
    max_response_bytes: usize,
    metrics: PipelineMetrics,
}

/// A reply read whole: the status, its headers, and the body up to the size cap.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Result<Vec<u8>, SourceError>,
}

impl Client {
    async fn get(self, url: url::Url) -> Result<Reply, SourceError> {
        let begun = Instant::now();
        let sent = self.http.get(url).bearer_auth(self.token.expose()).send().await;
        let reply = match sent {
            Ok(response) => {
                self.metrics.source_request(response.status().as_str());
                let (status, headers) = (response.status(), response.headers().clone());
                Ok(Reply { status, headers, body: self.body(response).await })
            }
            Err(e) => {
                self.metrics.source_request(if e.is_timeout() { "timeout" } else { "connection_error" });
                Err(http_error(None, without_url(&e), true))
            }
        };
        self.metrics.source_latency.observe(begun.elapsed().as_secs_f64());
        reply
    }

    /// Reads the body up to the configured cap.
    async fn body(&self, mut response: reqwest::Response) -> Result<Vec<u8>, SourceError> {
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.max_response_bytes {
                        return Err(http_error(
                            Some(200),
                            format!("the page is larger than max_response_bytes ({}); lower source.limit", self.max_response_bytes),
                            false,
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => return Err(http_error(Some(200), format!("reading the page: {}", without_url(&e)), true)),
            }
        }
    }
}

/// The request for the next page, running while the current page is published: the
/// cursor chain is sequential, but the API's work on page n+1 need not wait for ours on
/// page n. Dropped (and aborted) when the source is rewound or the run restarts.
struct Prefetch {
    url: url::Url,
    task: tokio::task::JoinHandle<Result<Reply, SourceError>>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn http_error(status: Option<u16>, message: String, retriable: bool) -> SourceError {
    SourceError::Http { status, message, retriable, retry_after: None }
}

impl ExportApiSource {
    pub fn open(cfg: ExportApiSourceConfig, metrics: PipelineMetrics) -> Result<Self, SourceError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("order-cdc/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SourceError::Setup(format!("HTTP client: {e}")))?;
        let endpoint = identity(&cfg);
        // Not the URL itself in the message: it may hold credentials.
        url::Url::parse(&endpoint).map_err(|e| SourceError::Setup(format!("source.base_url is not a URL: {e}")))?;
        let client = Client { http, token: cfg.token.clone(), max_response_bytes: cfg.max_response_bytes, metrics };
        Ok(Self { cfg, endpoint, client, read: Position::at(timestamp::epoch()), covers_start: false, prefetch: None })
    }

    /// The request for the read position. As seed 000 shows it: a run starts with `since`
    /// and `limit`; a continuation sends the cursor alone (it carries the run's window and
    /// page size).
    fn page_url(&self) -> url::Url {
        let mut url = url::Url::parse(&self.endpoint).expect("checked at open");
        match &self.read.cursor {
            Some(cursor) => url.query_pairs_mut().append_pair("cursor", cursor),
            None => url.query_pairs_mut().append_pair("since", &self.read.since).append_pair("limit", &self.cfg.limit.to_string()),
        };
        url
    }

    async fn fetch(&mut self) -> Result<Batch, SourceError> {
        let continuing = self.read.cursor.clone();
        let url = self.page_url();
        let reply = match self.prefetch.take() {
            Some(mut prefetch) if prefetch.url == url => match (&mut prefetch.task).await {
                Ok(reply) => reply,
                Err(e) => return Err(http_error(None, format!("the prefetched request failed: {e}"), true)),
            },
            _ => self.client.clone().get(url).await,
        }?;
        let Reply { status, headers, body } = reply;
        match status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(SourceError::Unauthorized(format!("{} refused the token ({status})", self.endpoint)));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let retry_after = retry_after(&headers, Utc::now());
                return Err(SourceError::Http { status: Some(429), message: "rate limited (429)".into(), retriable: true, retry_after });
            }
            s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => {
                return Err(http_error(Some(s.as_u16()), format!("the API answered {s}"), true))
            }
            s if continuing.is_some() && s.is_client_error() => {
                // The cursor was refused (expired, signed by a key that rotated away...):
                // start the run again from its since. Duplicates, never loss.
                let detail = body.map(|b| excerpt(&b)).unwrap_or_default();
                tracing::warn!(status = s.as_u16(), detail = %detail, since = %self.read.since, "the API refused the cursor; restarting the run from its since");
                self.read.cursor = None;
                self.read.cutoff = None;
                return Err(SourceError::CursorRefused { status: s.as_u16(), detail });
            }
            s => {
                let detail = body.map(|b| excerpt(&b)).unwrap_or_default();
                return Err(http_error(Some(s.as_u16()), format!("the API refused since={} ({s}): {detail}", self.read.since), false));
            }
        }
        let body = body?;
        let page: Page = serde_json::from_slice(&body).map_err(|e| http_error(Some(200), format!("malformed page ({e}); retrying it"), true))?;
        let ends_run = page.ends_run();
        let data = page.data.unwrap_or_default();
        let cutoff = match (&continuing, page.meta.and_then(|m| m.cutoff)) {
            (Some(_), _) => self.read.cutoff.clone().unwrap_or_else(|| self.read.since.clone()),
            (None, Some(cutoff)) => cutoff,
            // Nothing changed and no cutoff given: the next run starts where this one did.
            (None, None) if ends_run && data.is_empty() => self.read.since.clone(),
            // Without it there is no safe next since; guessing one could lose changes.
            (None, None) => return Err(http_error(Some(200), "the first page of a run has no meta.cutoff, so the next run cannot start safely".into(), false)),
        };
        if continuing.is_none() {
            self.covers_start = true;
        }
        let fields = HeadFields { id: &self.cfg.id_field, updated_at: &self.cfg.updated_at_field };
        let records: Vec<Record> = data.iter().map(|raw| record(raw, &fields)).collect();
        let watermark = if ends_run {
            timestamp::parse(&cutoff).ok()
        } else {
            records.iter().filter(|r| !matches!(r.body, RecordBody::Bad { .. })).map(|r| r.updated_at).max()
        };
        self.read = if ends_run {
            Position { v: Position::VERSION, since: cutoff, cutoff: None, cursor: None }
        } else {
            Position { v: Position::VERSION, since: self.read.since.clone(), cutoff: Some(cutoff), cursor: page.next_cursor }
        };
        if !ends_run {
            let url = self.page_url();
            self.prefetch = Some(Prefetch { url: url.clone(), task: tokio::spawn(self.client.clone().get(url)) });
        }
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

fn record(raw: &RawValue, fields: &HeadFields) -> Record {
    let bad = |key: String, reason: String| Record {
        key,
        updated_at: timestamp::epoch(),
        body: RecordBody::Bad { reason, raw: raw.get().as_bytes().to_vec() },
    };
    let seed = HeadFields { id: fields.id, updated_at: fields.updated_at };
    let head = match seed.deserialize(&mut serde_json::Deserializer::from_str(raw.get())) {
        Ok(h) => h,
        Err(_) => return bad(String::new(), "the record is not a JSON object".into()),
    };
    let key = match head.id {
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(serde_json::Value::String(s)) if !s.is_empty() => s,
        _ => return bad(String::new(), format!("the record has no {}", fields.id)),
    };
    let Some(updated_at) = head.updated_at.as_ref().and_then(change_time) else {
        return bad(key, format!("the record has no valid {}", fields.updated_at));
    };
    Record { key, updated_at, body: RecordBody::Document(raw.get().to_string()) }
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

/// `Retry-After` in seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or_default())
}

/// reqwest's messages name the URL, whose query holds the cursor: say what failed and
/// why (the causes), not where.
fn without_url(e: &reqwest::Error) -> String {
    let mut message = String::from(if e.is_timeout() {
        "request timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    });
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        message.push_str(&format!(": {c}"));
        cause = c.source();
    }
    message
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Source for ExportApiSource {
    fn restore(&mut self, position: Option<&serde_json::Value>, since: DateTime<Utc>) -> Result<(), SourceError> {
        self.read = super::read_position(position, || Position::at(since), "an export API", Position::VERSION, |p| p.v)?;
        self.covers_start = false;
        self.prefetch = None;
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Batch, SourceError> {
        self.fetch().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z").unwrap().with_timezone(&Utc);
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:03 GMT"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(3)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:27:00 GMT"));
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
    }

    const SEED: HeadFields = HeadFields { id: "order_id", updated_at: "updated_at" };

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn records_need_an_order_id_and_an_updated_at() {
        let doc = r#"{"order_id": 7, "items": [{"order_id": 99}], "updated_at": "2024-01-15T10:30:00Z", "x": [1, 2]}"#;
        let ok = record(&raw(doc), &SEED);
        assert_eq!(ok.key, "7", "the top-level id, not a nested one");
        assert!(matches!(&ok.body, RecordBody::Document(d) if d == doc), "the bytes pass through untouched");
        assert_eq!(record(&raw(r#"{"order_id": "A-1", "updated_at": "2024-01-15 10:30:00"}"#), &SEED).key, "A-1");
        let bad = |doc: &str| match record(&raw(doc), &SEED).body {
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
        let at = |doc: &str| record(&raw(doc), &fields).updated_at;
        let expected = DateTime::parse_from_rfc3339("2024-01-15T10:30:00.5Z").unwrap().with_timezone(&Utc);
        assert_eq!(at(r#"{"id": "u-1", "modified": "2024-01-15T10:30:00.5Z"}"#), expected);
        assert_eq!(at(r#"{"id": "u-1", "modified": "2024-01-15 10:30:00.5+00"}"#), expected);
        assert_eq!(at(r#"{"id": "u-1", "modified": 1705314600.5}"#), expected);
        assert_eq!(at(r#"{"id": "u-1", "modified": 1705314600500}"#), expected);
        assert_eq!(record(&raw(r#"{"i\u0064": 5, "modified": 1705314600}"#), &fields).key, "5", "escaped keys match too");
    }

    #[test]
    fn a_run_ends_when_the_page_says_so_or_cannot_go_on() {
        let page = |s: &str| serde_json::from_str::<Page>(s).unwrap().ends_run();
        assert!(page(r#"{"data": [], "next_cursor": null, "has_more": false}"#));
        assert!(page(r#"{"data": null}"#));
        assert!(page(r#"{"data": [], "next_cursor": "", "has_more": true}"#));
        assert!(page(r#"{"data": [], "next_cursor": "c", "has_more": false}"#));
        assert!(!page(r#"{"data": [], "next_cursor": "c", "has_more": true}"#));
        assert!(!page(r#"{"data": [], "next_cursor": "c"}"#));
    }
}
