//! What the tests' second implementations of the seed APIs (portal.rs for seed 002,
//! webstore.rs for seed 003) share: a clock that is not ours, the `Date` header it writes,
//! JSON errors, and 429s with `Retry-After` that note whether the client waited them out.
//! One copy, so both doubles throttle and keep time the same way.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration as StdDuration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Timelike, Utc};

/// A remote service's clock.
pub enum Clock {
    /// Ours, off by this much.
    Skewed(Duration),
    /// Stands still until the test moves it.
    Frozen(DateTime<Utc>),
}

impl Clock {
    /// The service's now, in whole seconds (its database keeps no more).
    pub fn now(&self) -> DateTime<Utc> {
        let t = match self {
            Clock::Skewed(skew) => Utc::now() + *skew,
            Clock::Frozen(t) => *t,
        };
        t.with_nanosecond(0).unwrap()
    }
}

/// The HTTP date of an instant (RFC 9110 IMF-fixdate).
pub fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// `{"error": {"type": kind, "message": message}}` with its status.
pub fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "type": kind, "message": message } });
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

/// How a client took the 429s it was given.
#[derive(Default, Debug, Clone)]
pub struct Throttling {
    pub throttled: u64,
    /// Throttled requests asked again, and those asked again before their `Retry-After`.
    pub retried: u64,
    pub early_retries: u64,
    /// Shortest wait between a 429 and the repeat of that request, in milliseconds.
    pub shortest_wait_ms: Option<u128>,
}

/// 429s the test queues, each refusing the next request.
#[derive(Default)]
pub struct Throttle {
    /// `Retry-After` seconds for the next requests to be refused.
    queue: VecDeque<u64>,
    /// Refused requests (known again by their path and query): when, and their `Retry-After`.
    retry_at: HashMap<String, (Instant, StdDuration)>,
    pub stats: Throttling,
}

impl Throttle {
    /// The next request is refused with this `Retry-After`.
    pub fn push_back(&mut self, seconds: u64) {
        self.queue.push_back(seconds);
    }

    /// Notes whether `request` repeats a refused one after its `Retry-After`; answers it
    /// with a 429 if one is queued.
    pub fn check(&mut self, request: &str) -> Option<Response> {
        if let Some((throttled_at, retry_after)) = self.retry_at.remove(request) {
            let waited = throttled_at.elapsed();
            self.stats.retried += 1;
            if waited < retry_after {
                self.stats.early_retries += 1;
            }
            let shortest = self.stats.shortest_wait_ms.get_or_insert(waited.as_millis());
            *shortest = (*shortest).min(waited.as_millis());
        }
        let seconds = self.queue.pop_front()?;
        self.stats.throttled += 1;
        self.retry_at.insert(request.to_string(), (Instant::now(), StdDuration::from_secs(seconds)));
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Too many requests.");
        response.headers_mut().insert("retry-after", seconds.to_string().parse().unwrap());
        Some(response)
    }
}
