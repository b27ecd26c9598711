//! The one transport of the HTTP sources. Everything an order API client needs whatever
//! its paging rules is here, written once: the client (TLS, gzip, timeouts), the
//! credential (never in a URL, log line, error or metric), the size cap, the statuses every
//! API means the same by (401/403 stop, 429 waits for `Retry-After`, 408/5xx and a page cut
//! short or malformed are retried), the request metrics, and the prefetch of the next page
//! while the current one is published.
//!
//! A dialect (`export_api.rs`, `orders_api.rs`) is then only its paging rules and its
//! position: which URL reads the position, what a page's body means, and what its own
//! refusals (other 4xx) mean. Adding one is a file, a variant of `SourceConfig`, and a line
//! in [`SourceConfig::dialect`](crate::config::SourceConfig::dialect).

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, DATE, RETRY_AFTER};
use reqwest::StatusCode;

use super::{Batch, Source, SourceError};
use crate::config::InvalidValue;
use crate::metrics::PipelineMetrics;
use crate::secret::Secret;

/// How a configured dialect is checked, named and opened.
pub trait DialectConfig: Send + Sync {
    /// The endpoint without credentials: the default CloudEvents `source` and the basis of
    /// the checkpoint fingerprint.
    fn identity(&self) -> String;
    /// Value rules serde cannot state, naming the key under `source.`.
    fn validate(&self) -> Result<(), InvalidValue>;
    /// What the transport needs.
    fn transport(&self) -> TransportSettings;
    /// The dialect, at the start of its history; `local` is where it may keep state beside
    /// the checkpoint.
    fn open(&self, local: &LocalState) -> Result<Box<dyn Dialect>, SourceError>;
    /// The position a run starting at `since` begins from (`checkpoint set --since`).
    fn position_since(&self, since: DateTime<Utc>) -> serde_json::Value;
}

/// The paging rules and position of one API.
pub trait Dialect: Send {
    /// Positions the dialect at a committed position, or at `since` for a fresh start.
    fn restore(&mut self, position: Option<&serde_json::Value>, since: DateTime<Utc>) -> Result<(), SourceError>;
    /// The request that reads from the read position.
    fn request(&self) -> url::Url;
    /// The request after a 200's body, when it can be read cheaply before the page is
    /// parsed (a cursor, the documents skipped): the API then works on the next page while
    /// we parse this one. A head start, not a decision: `page` decides the next request,
    /// and a prefetch of another URL is dropped unused.
    fn request_after(&self, _body: &[u8]) -> Option<url::Url> {
        None
    }
    /// A 200's body (and the server's clock, its `Date`): the batch, with the read
    /// position advanced past it.
    fn page(&mut self, body: &[u8], server_date: Option<DateTime<Utc>>) -> Result<Batch, SourceError>;
    /// What a 4xx means that is not 401, 403, 408 or 429 (`detail` is the body's start):
    /// an error, or for a dialect that asked whether something exists, an answer.
    fn refused(&mut self, status: StatusCode, detail: String, server_date: Option<DateTime<Utc>>) -> Result<Batch, SourceError>;
    /// Whether a run this process starts covers its start ([`Source::next_run_covers_start`]).
    fn next_run_covers_start(&self) -> bool {
        false
    }
    /// Orders left in the run under way, as far as the pages read so far tell (no
    /// request of its own); `None` when the API gives no counts.
    fn backlog(&self) -> Option<u64> {
        None
    }
}

/// Where a pipeline's dialect may keep state that outgrows a checkpoint: a directory
/// beside the checkpoints (`[checkpoint] dir`), named for the pipeline.
pub struct LocalState<'a> {
    pub dir: &'a std::path::Path,
    pub pipeline: &'a str,
}

#[cfg(test)]
impl LocalState<'static> {
    /// For a dialect that keeps no local state.
    pub fn none() -> Self {
        Self { dir: std::path::Path::new("."), pipeline: "test" }
    }
}

pub struct TransportSettings {
    /// One request, from connecting to the last byte.
    pub request_timeout: Duration,
    /// A larger page is an error.
    pub max_response_bytes: usize,
    pub credential: Credential,
}

/// How the API wants its secret: never as a query parameter, which would put it in URLs.
#[derive(Clone)]
pub enum Credential {
    /// `Authorization: Bearer …`, named `source.<key>` in the configuration.
    Bearer { key: &'static str, token: Secret },
    /// A header of its own, e.g. `X-API-Key`.
    Header { key: &'static str, name: HeaderName, value: Secret },
    /// Headers of the operator's choosing, for an API that names no scheme: every value
    /// is treated as a secret.
    Headers { key: &'static str, headers: Vec<(HeaderName, Secret)> },
}

impl Credential {
    /// The configuration key that holds it, for the error that tells the operator to check it.
    fn key(&self) -> &'static str {
        match self {
            Self::Bearer { key, .. } | Self::Header { key, .. } | Self::Headers { key, .. } => key,
        }
    }

    /// What must never be quoted back: each value, and its last word (a server may echo
    /// the token of `Bearer <token>` alone).
    fn secrets(&self) -> Vec<String> {
        let values: Vec<&str> = match self {
            Self::Bearer { token, .. } => vec![token.expose()],
            Self::Header { value, .. } => vec![value.expose()],
            Self::Headers { headers, .. } => headers.iter().map(|(_, v)| v.expose()).collect(),
        };
        let mut secrets: Vec<String> = values
            .iter()
            .flat_map(|v| [v.trim(), v.split_whitespace().last().unwrap_or_default()])
            .filter(|s| !s.is_empty())
            // As written and as a JSON string writes it (a quote or backslash escaped).
            .flat_map(|s| {
                let json = serde_json::to_string(s).expect("a string serialises");
                [s.to_string(), json[1..json.len() - 1].to_string()]
            })
            .collect();
        // The longest first, so that a value is cut out whole before its last word is.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        secrets
    }

    fn headers(&self) -> Result<Vec<(HeaderName, HeaderValue)>, SourceError> {
        let pairs = match self {
            Self::Bearer { token, .. } => vec![(reqwest::header::AUTHORIZATION, format!("Bearer {}", token.expose()))],
            Self::Header { name, value, .. } => vec![(name.clone(), value.expose().to_string())],
            Self::Headers { headers, .. } => headers.iter().map(|(n, v)| (n.clone(), v.expose().to_string())).collect(),
        };
        pairs
            .into_iter()
            .map(|(name, value)| {
                let mut value = HeaderValue::from_str(&value).map_err(|_| SourceError::Setup(format!("source.{} holds characters a header cannot carry", self.key())))?;
                value.set_sensitive(true);
                Ok((name, value))
            })
            .collect()
    }
}

/// What one request needs; cheap to clone into a prefetching task.
#[derive(Clone)]
struct Transport {
    http: reqwest::Client,
    credential: Vec<(HeaderName, HeaderValue)>,
    /// The secrets themselves, cut out of any error body quoted back (a server may echo them).
    secrets: Vec<String>,
    max_response_bytes: usize,
    metrics: PipelineMetrics,
}

/// A reply read whole: the status, its headers, and the body up to the size cap.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Result<Vec<u8>, SourceError>,
    /// Our clock when the headers came: the `Date` among them is the server's then.
    answered: DateTime<Utc>,
}

impl Transport {
    fn new(settings: &TransportSettings, metrics: PipelineMetrics) -> Result<Self, SourceError> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("order-cdc/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::custom(same_origin_redirects))
            .build()
            .map_err(|e| SourceError::Setup(format!("HTTP client: {e}")))?;
        let (credential, secrets) = (settings.credential.headers()?, settings.credential.secrets());
        Ok(Self { http, credential, secrets, max_response_bytes: settings.max_response_bytes, metrics })
    }

    async fn get(self, url: url::Url) -> Result<Reply, SourceError> {
        let begun = Instant::now();
        let mut request = self.http.get(url);
        for (name, value) in &self.credential {
            request = request.header(name, value);
        }
        let sent = request.send().await;
        let reply = match sent {
            Ok(response) => {
                self.metrics.source_request(response.status().as_str());
                let (status, headers, answered) = (response.status(), response.headers().clone(), Utc::now());
                Ok(Reply { status, headers, body: self.body(response).await, answered })
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
                            format!("the page is larger than source.max_response_bytes ({}); ask for smaller pages", self.max_response_bytes),
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
/// API's work on page n+1 need not wait for ours on page n. Dropped (and aborted) when
/// the source is rewound or the next request turns out to be another.
struct Prefetch {
    url: url::Url,
    task: tokio::task::JoinHandle<Result<Reply, SourceError>>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A source that reads an order API through a dialect.
pub struct HttpSource {
    dialect: Box<dyn Dialect>,
    transport: Transport,
    credential_key: &'static str,
    /// Where refusals say they came from: the endpoint, without credentials.
    endpoint: String,
    prefetch: Option<Prefetch>,
}

impl HttpSource {
    pub fn open(cfg: &dyn DialectConfig, local: &LocalState, metrics: PipelineMetrics) -> Result<Self, SourceError> {
        let settings = cfg.transport();
        let credential_key = settings.credential.key();
        Ok(Self { dialect: cfg.open(local)?, transport: Transport::new(&settings, metrics)?, credential_key, endpoint: cfg.identity(), prefetch: None })
    }

    async fn fetch(&mut self) -> Result<Batch, SourceError> {
        let url = self.dialect.request();
        let reply = match self.prefetch.take() {
            Some(mut prefetch) if prefetch.url == url => match (&mut prefetch.task).await {
                Ok(reply) => reply,
                Err(e) => return Err(http_error(None, format!("the prefetched request failed: {e}"), true)),
            },
            _ => self.transport.clone().get(url).await,
        }?;
        let Reply { status, headers, body, answered } = reply;
        let secrets = &self.transport.secrets;
        let detail = |body: Result<Vec<u8>, SourceError>| body.map(|b| detail(&b, secrets)).unwrap_or_default();
        let server_date = server_date(&headers);
        let skew = skew(server_date, answered);
        match status {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(SourceError::Unauthorized {
                    key: self.credential_key,
                    detail: format!("{} refused the {} ({status}): {}", self.endpoint, self.credential_key.replace('_', " "), detail(body)),
                });
            }
            s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => {
                let retry_after = retry_after(&headers, Utc::now());
                let message = if s == StatusCode::TOO_MANY_REQUESTS { "rate limited (429)".to_string() } else { format!("the API answered {s}") };
                return Err(SourceError::Http { status: Some(s.as_u16()), message, retriable: true, retry_after });
            }
            s if s.is_redirection() => {
                // Only a redirect to another origin comes back unfollowed (`same_origin_redirects`).
                let to = headers.get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).and_then(|v| url::Url::parse(v).ok()).map(|u| u.origin().ascii_serialization());
                let to = to.unwrap_or_else(|| "another origin".into());
                let message = format!("{} redirected to {to} ({s}); the {} is only sent to source.url's own origin, so set source.url to where the API now lives", self.endpoint, self.credential_key.replace('_', " "));
                return Err(http_error(Some(s.as_u16()), message, false));
            }
            s => {
                let batch = on_our_clock(self.dialect.refused(s, detail(body), server_date)?, skew);
                self.prefetch_next(&batch).await;
                return Ok(batch);
            }
        }
        let body = body?;
        if let Some(url) = self.dialect.request_after(&body) {
            self.prefetch(url).await;
        }
        let batch = on_our_clock(self.dialect.page(&body, server_date)?, skew);
        self.prefetch_next(&batch).await;
        Ok(batch)
    }

    /// Starts the next request while this batch is published, unless the run is over or
    /// it is under way already (`request_after`).
    async fn prefetch_next(&mut self, batch: &Batch) {
        if batch.ends_run {
            self.prefetch = None;
            return;
        }
        let url = self.dialect.request();
        if self.prefetch.as_ref().is_none_or(|p| p.url != url) {
            self.prefetch(url).await;
        }
    }

    /// Sends `url`'s request in a task of its own, on the wire before this page is parsed
    /// and handed over.
    async fn prefetch(&mut self, url: url::Url) {
        self.prefetch = Some(Prefetch { url: url.clone(), task: crate::task::start(self.transport.clone().get(url)).await });
    }
}

impl Source for HttpSource {
    fn restore(&mut self, position: Option<&serde_json::Value>, since: DateTime<Utc>) -> Result<(), SourceError> {
        self.prefetch = None;
        self.dialect.restore(position, since)
    }

    async fn next_batch(&mut self) -> Result<Batch, SourceError> {
        self.fetch().await
    }

    async fn backlog(&mut self) -> Option<u64> {
        self.dialect.backlog()
    }

    fn next_run_covers_start(&self) -> bool {
        self.dialect.next_run_covers_start()
    }
}

pub fn http_error(status: Option<u16>, message: String, retriable: bool) -> SourceError {
    SourceError::Http { status, message, retriable, retry_after: None }
}

/// A page that is not what the API documents: retried, as a page cut short would be.
pub fn malformed(what: impl std::fmt::Display) -> SourceError {
    http_error(Some(200), format!("malformed page ({what}); retrying it"), true)
}

/// Bounds on a wait the server asks for. At least a second, so that a date already past
/// (a server clock behind ours) or `0` does not turn into requests as fast as we can
/// send them; at most five minutes, so that a wrong date (a clock a day off) cannot stall
/// the pipeline, while asking again after it costs one request.
const RETRY_AFTER_BOUNDS: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));

/// The server's clock when it answered: its `Date`.
fn server_date(headers: &HeaderMap) -> Option<DateTime<Utc>> {
    headers.get(DATE).and_then(|v| v.to_str().ok()).and_then(|v| DateTime::parse_from_rfc2822(v).ok()).map(|d| d.with_timezone(&Utc))
}

/// Below this, a `Date` cannot tell the server's clock from ours: it is cut to the whole
/// second, and the reply spent some time on the way.
const SKEW_RESOLUTION: TimeDelta = TimeDelta::seconds(2);

/// How far the server's clock runs ahead of ours (behind, when negative), from its `Date`
/// against our clock when the reply came; `None` within `SKEW_RESOLUTION`. A cut `Date`
/// lies on average half a second behind the clock it was read from.
fn skew(server_date: Option<DateTime<Utc>>, answered: DateTime<Utc>) -> Option<TimeDelta> {
    let skew = server_date? + TimeDelta::milliseconds(500) - answered;
    (skew.abs() >= SKEW_RESOLUTION).then_some(skew)
}

/// A batch with its watermark, a time of the server's (its cutoff, its `updated_at`s),
/// moved onto our clock: the lag metric is our clock minus the watermark, and a server
/// whose clock runs a minute behind ours would otherwise show a minute of lag that is not.
fn on_our_clock(mut batch: Batch, skew: Option<TimeDelta>) -> Batch {
    if let Some(skew) = skew {
        batch.watermark = batch.watermark.map(|w| w - skew);
    }
    batch
}

/// `Retry-After` in seconds or as an HTTP date, within `RETRY_AFTER_BOUNDS`. A date is the
/// server's clock, so it is counted from the reply's `Date`; from `ours` only when there is
/// none (ours may be minutes off).
fn retry_after(headers: &HeaderMap, ours: DateTime<Utc>) -> Option<Duration> {
    let now = server_date(headers).unwrap_or(ours);
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => (DateTime::parse_from_rfc2822(value).ok()?.with_timezone(&Utc) - now).to_std().unwrap_or_default(),
    };
    Some(wait.clamp(RETRY_AFTER_BOUNDS.0, RETRY_AFTER_BOUNDS.1))
}

/// Redirects are followed within the origin of the request only: the credential is
/// a header (`X-API-Key`, the operator's own) that reqwest would carry to any host, since it
/// strips only `Authorization` and cookies on the way. A redirect elsewhere comes back as
/// the 3xx, which stops the pipeline naming the new origin.
fn same_origin_redirects(attempt: reqwest::redirect::Attempt) -> reqwest::redirect::Action {
    // Not even from http to https on the same host: reqwest drops `Authorization` when the
    // port changes, and the 401 that follows would blame the token, not the URL.
    let same = attempt.previous().last().is_some_and(|from| from.origin() == attempt.url().origin());
    if attempt.previous().len() > 10 {
        attempt.error("more than 10 redirects")
    } else if same {
        attempt.follow()
    } else {
        attempt.stop()
    }
}

/// reqwest's messages name the URL, whose query may hold a cursor: say what failed and
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

/// An error body as it may be quoted: its start on one line, the secrets cut out of the
/// whole body first (a secret cut in two by the excerpt would no longer match). The body
/// is quoted as sent unless, with those cut out, it is JSON that written out again still
/// shows a secret the server escaped (`\/`, `\u0041`); then it is quoted as written out
/// again, with those cut out too.
fn detail(body: &[u8], secrets: &[String]) -> String {
    let redact = |text: String| secrets.iter().fold(text, |text, s| text.replace(s.as_str(), "***"));
    let raw = redact(String::from_utf8_lossy(body).into_owned());
    let text = match serde_json::from_str::<serde_json::Value>(&raw).map(|json| json.to_string()) {
        Ok(again) if secrets.iter().any(|s| again.contains(s.as_str())) => redact(again),
        _ => raw,
    };
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    line.chars().take(300).collect()
}

/// A URL without its credentials, query and trailing slashes.
pub fn without_credentials(url: &str) -> String {
    let mut url = url::Url::parse(url)
        .map(|mut u| {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.set_query(None);
            u.to_string()
        })
        .unwrap_or_else(|_| url.to_string());
    while url.ends_with('/') {
        url.pop();
    }
    url
}

/// Query parameters that carry a credential. A URL is quoted back in refusals (its
/// query, as the parameters sent) and is the basis of the checkpoint fingerprint, so a
/// secret has its own key, sent as a header.
const CREDENTIAL_PARAMETERS: [&str; 6] = ["api_key", "apikey", "token", "access_token", "secret", "password"];

/// The rule every dialect's URL key obeys; the value itself is never shown (it may hold
/// credentials).
pub fn check_url(key: &'static str, value: &str) -> Result<(), InvalidValue> {
    let url = match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => u,
        _ => return Err(InvalidValue::new(key, "is not an http(s) URL")),
    };
    if let Some((name, _)) = url.query_pairs().find(|(name, _)| CREDENTIAL_PARAMETERS.contains(&name.to_ascii_lowercase().as_str())) {
        return Err(InvalidValue::new(key, format!("carries a credential in its query ({name}=…): give it in the source's own credential key, which is sent as a header")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z").unwrap().with_timezone(&Utc);
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:03 GMT"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(3)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn a_wait_asked_for_is_at_least_a_second_and_at_most_five_minutes() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z").unwrap().with_timezone(&Utc);
        let wait = |value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_static(value));
            retry_after(&h, now)
        };
        // A date already past by the server's clock, or none at all: not a busy loop.
        assert_eq!(wait("Wed, 21 Oct 2015 07:27:00 GMT"), Some(Duration::from_secs(1)));
        assert_eq!(wait("0"), Some(Duration::from_secs(1)));
        // A day ahead (a clock a day off, or a quota) is asked again after five minutes.
        assert_eq!(wait("Thu, 22 Oct 2015 07:28:00 GMT"), Some(Duration::from_secs(300)));
        assert_eq!(wait("86400"), Some(Duration::from_secs(300)));
    }

    #[test]
    fn a_retry_after_date_is_counted_from_the_servers_clock() {
        // The server's clock is two minutes ahead of ours: it asks for 3 s by its clock.
        let ours = DateTime::parse_from_rfc3339("2015-10-21T07:26:00Z").unwrap().with_timezone(&Utc);
        let mut h = HeaderMap::new();
        h.insert(DATE, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        h.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:03 GMT"));
        assert_eq!(retry_after(&h, ours), Some(Duration::from_secs(3)), "not 123 s by ours");
        // Two minutes behind: 3 s by its clock, not a date already past by ours.
        let ours = DateTime::parse_from_rfc3339("2015-10-21T07:30:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(retry_after(&h, ours), Some(Duration::from_secs(3)));
    }

    #[test]
    fn a_watermark_moves_onto_our_clock_by_the_servers_date() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let batch = |watermark: &str| Batch { records: Vec::new(), position: serde_json::Value::Null, ends_run: true, covers_start: true, cutoff_holdback: None, watermark: Some(at(watermark)) };
        let moved = |date: Option<&str>, answered: &str, watermark: &str| on_our_clock(batch(watermark), skew(date.map(at), at(answered))).watermark.unwrap();
        // The server's clock runs 43 s behind ours: its cutoff of 07:27:00 is our 07:27:43.
        assert_eq!(moved(Some("2015-10-21T07:27:17Z"), "2015-10-21T07:28:00.3Z", "2015-10-21T07:27:00Z"), at("2015-10-21T07:27:42.8Z"));
        // An hour ahead: without the move, the lag would read as none at all for an hour.
        assert_eq!(moved(Some("2015-10-21T08:28:00Z"), "2015-10-21T07:28:00Z", "2015-10-21T08:27:59Z"), at("2015-10-21T07:27:58.5Z"));
        // Within the `Date`'s whole second and the way there, the clocks are taken as one.
        for answered in ["2015-10-21T07:28:00.9Z", "2015-10-21T07:28:02.4Z", "2015-10-21T07:27:58.6Z"] {
            assert_eq!(moved(Some("2015-10-21T07:28:00Z"), answered, "2015-10-21T07:27:00Z"), at("2015-10-21T07:27:00Z"), "{answered}");
        }
        // No `Date`: nothing to go by.
        assert_eq!(moved(None, "2015-10-21T09:00:00Z", "2015-10-21T07:27:00Z"), at("2015-10-21T07:27:00Z"));
    }

    #[test]
    fn a_quoted_body_never_holds_a_secret_whole_or_in_part() {
        let secrets = Credential::Header { key: "api_key", name: HeaderName::from_static("x-api-key"), value: Secret::new("k3y/w1th\\\"quote".to_string()) }.secrets();
        // Escaped as PHP writes `/`, as JSON writes a backslash and a quote, and in \u form.
        let escaped = br#"{"error": {"message": "bad key k3y\/w1th\\\"quote", "echo": "\u006b3y/w1th\\\"quote"}}"#;
        let quoted = detail(escaped, &secrets);
        assert!(!quoted.contains("k3y") && quoted.contains("bad key ***"), "{quoted}");
        // A secret that straddles the excerpt's end is cut out before the excerpt is taken
        // (taken first, the excerpt would end in `k3y/w1th`).
        let long = format!("{} k3y/w1th\\\"quote and more", "x".repeat(290));
        let quoted = detail(long.as_bytes(), &secrets);
        assert!(!quoted.contains("k3y") && quoted.ends_with(" *** and m"), "{quoted}");
        // The secret as sent and escaped in one body: both are cut out.
        let both = detail(br#"{"m": "bad key k3y/w1th\\\"quote", "echo": "k3y\/w1th\\\"quote"}"#, &secrets);
        assert!(!both.contains("k3y"), "{both}");
        // A body without an escaped secret is quoted as sent, its members in their order.
        assert_eq!(detail(br#"{"z": 1, "a": "k3y/w1th\\\"quote"}"#, &secrets), r#"{"z": 1, "a": "***"}"#);
    }

    #[test]
    fn a_url_with_a_credential_in_its_query_is_refused_without_showing_it() {
        assert!(check_url("source.url", "https://h.example/api/orders/?status=confirmed").is_ok());
        let e = check_url("source.url", "https://h.example/api/orders/?status=confirmed&API_KEY=s3cr3t").unwrap_err();
        assert!(e.key == "source.url" && e.reason.contains("API_KEY=") && !e.reason.contains("s3cr3t"), "{}", e.reason);
        assert!(check_url("source.url", "ftp://h.example/").is_err());
    }

    /// Page after page of nothing, asked for as `/?page=N`.
    struct Numbered {
        base: url::Url,
        page: u32,
    }

    impl Dialect for Numbered {
        fn restore(&mut self, _: Option<&serde_json::Value>, _: DateTime<Utc>) -> Result<(), SourceError> {
            Ok(())
        }
        fn request(&self) -> url::Url {
            let mut url = self.base.clone();
            url.set_query(Some(&format!("page={}", self.page)));
            url
        }
        fn page(&mut self, _: &[u8], _: Option<DateTime<Utc>>) -> Result<Batch, SourceError> {
            self.page += 1;
            Ok(Batch { records: Vec::new(), position: serde_json::Value::Null, ends_run: false, covers_start: false, cutoff_holdback: None, watermark: None })
        }
        fn refused(&mut self, status: StatusCode, detail: String, _: Option<DateTime<Utc>>) -> Result<Batch, SourceError> {
            Err(http_error(Some(status.as_u16()), detail, false))
        }
    }

    /// An HTTP/1.1 server on its own threads, outside the runtime under test: it answers
    /// every request with an empty page and reports each request's target.
    fn pages_server() -> (url::Url, std::sync::mpsc::Receiver<String>) {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = url::Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let (stream, tx) = (stream.unwrap(), tx.clone());
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 0 {
                        let target = line.split_whitespace().nth(1).unwrap_or_default().to_string();
                        // The headers, up to the blank line that ends them.
                        while { line.clear(); reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" } {}
                        let _ = tx.send(target);
                        let _ = writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
                        line.clear();
                    }
                });
            }
        });
        (base, rx)
    }

    /// The next page's request is on the wire before the source hands over the page it
    /// follows, however long this task then keeps its worker busy (parsing the page,
    /// handing it to the sink): it does not wait in the worker's LIFO slot for this task
    /// to wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_request_goes_out_before_the_page_is_handed_over() {
        let (base, requests) = pages_server();
        let settings = TransportSettings {
            request_timeout: Duration::from_secs(10),
            max_response_bytes: 1 << 20,
            credential: Credential::Bearer { key: "token", token: Secret::new("t".to_string()) },
        };
        let mut source = HttpSource {
            dialect: Box::new(Numbered { base, page: 0 }),
            transport: Transport::new(&settings, crate::metrics::Metrics::new().pipeline("p")).unwrap(),
            credential_key: "token",
            endpoint: "test".into(),
            prefetch: None,
        };
        // On a worker, as a pipeline runs (the test's own body runs outside them).
        let pipeline = tokio::spawn(async move {
            let deadline = Duration::from_secs(5);
            source.next_batch().await.unwrap();
            assert_eq!(requests.recv_timeout(deadline).as_deref(), Ok("/?page=0"));
            for page in 1..4 {
                // This blocks the worker, as a page's parse and hand-over do.
                let next = requests.recv_timeout(deadline);
                assert_eq!(next.as_deref(), Ok(format!("/?page={page}").as_str()), "the request after page {} was not sent", page - 1);
                source.next_batch().await.unwrap();
            }
        });
        pipeline.await.unwrap();
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(without_credentials("https://u:p@h.example/api/orders/?api_key=k"), "https://h.example/api/orders");
    }
}
