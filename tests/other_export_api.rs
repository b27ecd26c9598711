//! The export API source against another implementation of seed 000, written the way
//! real services differ from ours while keeping to the document:
//! - timestamps with second precision (`2024-01-15T10:30:00Z`), so hundreds of orders
//!   share one `updated_at` across page boundaries, and `meta.cutoff` is a whole second;
//! - `has_more` is true whenever a page is full, so a run can end with an empty page;
//! - its cursors expire: some are refused with 422 (not 400) and a plain-text reason;
//! - it refuses `limit` next to `cursor` (the seed's continuation sends the cursor alone)
//!   and answers an unknown query with 422;
//! - it compresses its pages with gzip when the client accepts it;
//! - it keeps sub-second change times behind its whole-second `updated_at` (as seed
//!   001's example shows them), so its cutoffs and cursors have fractions when its clock
//!   does, and two versions of one order can share an `updated_at`.
//!
//! The daemon must deliver every order, byte-equal, and start the next run at the
//! verbatim `meta.cutoff`; two versions never share a `ce_id`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use common::*;
use serde_json::json;
use tokio::task::block_in_place;

const TOKEN: &str = "another-implementation";

/// The store behind the fake API: documents by (updated_at, id), a clock the test moves.
#[derive(Default)]
struct Orders {
    /// id → (change time, document showing it in whole seconds)
    by_id: BTreeMap<u64, (DateTime<Utc>, String)>,
    now: DateTime<Utc>,
    /// Serial numbers of cursors the API issued, and those it refuses as expired.
    issued: u64,
    expire: HashSet<u64>,
    refused: u64,
    limit_with_cursor: u64,
    gzipped: u64,
}

impl Orders {
    fn put(&mut self, id: u64, at: DateTime<Utc>, status: &str) {
        let stamp = at.format("%Y-%m-%dT%H:%M:%SZ");
        let doc = format!(r#"{{"order_id":{id},"order_number":"SO-{id}","order_status":"{status}","updated_at":"{stamp}","items":[{{"order_item_id":{id}0,"quantity":1}}]}}"#);
        self.by_id.insert(id, (at, doc));
    }
}

type Shared = Arc<Mutex<Orders>>;

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

/// A cutoff as the API writes it: a fraction only when there is one.
fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

async fn export(State(orders): State<Shared>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {TOKEN}")) {
        return error(StatusCode::UNAUTHORIZED, "Unauthenticated.");
    }
    if let Some(unknown) = q.keys().find(|k| !["since", "cursor", "limit"].contains(&k.as_str())) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, &format!("unknown parameter {unknown}"));
    }
    let mut o = orders.lock().unwrap();
    // (since, cutoff, after, limit)
    let (since, cutoff, after, limit) = match (q.get("since"), q.get("cursor")) {
        (Some(since), None) => {
            let Ok(since) = order_cdc::timestamp::parse(since) else { return error(StatusCode::UNPROCESSABLE_ENTITY, "since is invalid") };
            let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
                None => 1000,
                Some(Ok(l)) if (1..=1000).contains(&l) => l,
                _ => return error(StatusCode::UNPROCESSABLE_ENTITY, "limit is invalid"),
            };
            (since, o.now, None, limit)
        }
        (None, Some(cursor)) => {
            if q.contains_key("limit") {
                o.limit_with_cursor += 1;
                return error(StatusCode::UNPROCESSABLE_ENTITY, "limit cannot be combined with cursor");
            }
            let payload: serde_json::Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(cursor)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let serial = payload["n"].as_u64().unwrap_or(0);
            if o.expire.remove(&serial) {
                o.refused += 1;
                return (StatusCode::UNPROCESSABLE_ENTITY, "The cursor has expired.").into_response();
            }
            let at = |k: &str| DateTime::from_timestamp_micros(payload[k].as_i64().unwrap_or(0)).unwrap();
            (at("since"), at("cutoff"), Some((at("after_at"), payload["after_id"].as_u64().unwrap_or(0))), payload["limit"].as_u64().unwrap_or(1000) as usize)
        }
        _ => return error(StatusCode::UNPROCESSABLE_ENTITY, "exactly one of since and cursor is required"),
    };
    let mut rows: Vec<(DateTime<Utc>, u64, &String)> = o
        .by_id
        .iter()
        .filter(|(_, (at, _))| *at >= since && *at < cutoff)
        .map(|(id, (at, doc))| (*at, *id, doc))
        .filter(|(at, id, _)| after.is_none_or(|a| (*at, *id) > a))
        .collect();
    rows.sort();
    rows.truncate(limit);
    // Full page: say there is more (the next page may well be empty).
    let has_more = rows.len() == limit;
    let last = rows.last().map(|(at, id, _)| (*at, *id)).or(after);
    let data = format!("[{}]", rows.iter().map(|(_, _, d)| d.as_str()).collect::<Vec<_>>().join(","));
    let count = rows.len();
    let next_cursor = if has_more {
        o.issued += 1;
        let (after_at, after_id) = last.unwrap();
        let payload = json!({"n": o.issued, "since": since.timestamp_micros(), "cutoff": cutoff.timestamp_micros(), "after_at": after_at.timestamp_micros(), "after_id": after_id, "limit": limit});
        json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload.to_string()))
    } else {
        json!(null)
    };
    let body = format!(
        r#"{{"data":{data},"next_cursor":{next_cursor},"has_more":{has_more},"meta":{{"rows":{},"cutoff":"{}"}}}}"#,
        count,
        stamp(cutoff)
    );
    let accepts_gzip = headers.get("accept-encoding").and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("gzip"));
    if !accepts_gzip {
        return ([("content-type", "application/json")], body).into_response();
    }
    o.gzipped += 1;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, body.as_bytes()).unwrap();
    ([("content-type", "application/json"), ("content-encoding", "gzip")], encoder.finish().unwrap()).into_response()
}

async fn start(orders: Shared) -> String {
    let app = Router::new().route("/v1/sales-orders/export", get(export)).with_state(orders);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/v1")
}

/// The newest event of every order is the API's current document, byte for byte.
fn assert_delivered(topic: &str, orders: &Shared) -> usize {
    let events = read_topic(topic);
    let latest = latest_by_key(&events);
    let o = orders.lock().unwrap();
    let missing: Vec<&u64> = o.by_id.keys().filter(|id| !latest.contains_key(&id.to_string())).collect();
    assert!(missing.is_empty(), "{} orders missing, e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
    for (id, (_, doc)) in &o.by_id {
        assert_eq!(latest[&id.to_string()].text(), doc, "order {id}");
    }
    events.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_precision_empty_last_pages_and_expiring_cursors_lose_nothing() {
    let start_of_day: DateTime<Utc> = "2024-01-15T00:00:00Z".parse().unwrap();
    let orders: Shared = Arc::default();
    {
        let mut o = orders.lock().unwrap();
        // 3,000 orders over 12 distinct seconds: 250 share each updated_at, and pages of
        // 100 end inside those groups; 3,000 is a multiple of 100, so the run ends with an
        // empty page.
        for id in 1..=3000 {
            o.put(id, start_of_day + Duration::seconds((id % 12) as i64), "pending");
        }
        o.now = start_of_day + Duration::hours(1);
        o.expire = HashSet::from([3, 17]);
    }
    let base = start(orders.clone()).await;
    let topic = unique("other-api");
    let mut p = Pipeline::export_api(&topic, &base, TOKEN, "limit = 100");
    p.batch_size = 100;
    let setup = Setup::new(&p);

    block_in_place(|| setup.run_once());
    let events = block_in_place(|| assert_delivered(&topic, &orders));
    {
        let o = orders.lock().unwrap();
        assert_eq!(o.limit_with_cursor, 0, "a continuation sends the cursor alone");
        assert_eq!(o.refused, 2, "both expiring cursors were met and refused");
        assert!(o.gzipped > 30, "the daemon accepts gzip, so pages travel compressed");
    }
    let cp = setup.checkpoint().unwrap();
    assert_eq!(cp["position"]["since"], "2024-01-15T01:00:00Z", "the next run starts at meta.cutoff, verbatim");
    assert!(cp["position"]["cursor"].is_null());
    println!("first run: {events} events for 3000 orders (cursor refusals restart the run: duplicates, never loss)");

    // Changes in the second the clock shows now, and a second later: the next run (its
    // cutoff a second past them) brings them all.
    let changed = {
        let mut o = orders.lock().unwrap();
        let now = o.now;
        for id in (1..=3000).step_by(7) {
            o.put(id, now, "shipped");
        }
        o.put(3001, now, "pending");
        o.now = now + Duration::seconds(1);
        (1..=3000).step_by(7).count() + 1
    };
    block_in_place(|| setup.run_once());
    let events_after = block_in_place(|| assert_delivered(&topic, &orders));
    assert_eq!(events_after - events, changed, "exactly the changed orders, once each");
    assert_eq!(setup.checkpoint().unwrap()["position"]["since"], "2024-01-15T01:00:01Z");
}

/// Two updates of one order within one second, published by two `run --once` runs: the
/// API shows both with one whole-second `updated_at`, and they are two versions, so two
/// `ce_id`s (a consumer dropping equal `ce_source` + `ce_id` keeps both). A redelivery
/// (checkpoint reset, run again) keeps each version's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_versions_within_one_second_have_two_event_ids_and_a_redelivery_keeps_them() {
    let second: DateTime<Utc> = "2024-01-15T10:30:00Z".parse().unwrap();
    let orders: Shared = Arc::default();
    {
        let mut o = orders.lock().unwrap();
        o.put(7, second + Duration::milliseconds(100), "pending");
        o.put(8, second + Duration::milliseconds(100), "pending");
        o.now = second + Duration::milliseconds(300);
    }
    let base = start(orders.clone()).await;
    let topic = unique("versions");
    let setup = Setup::new(&Pipeline::export_api(&topic, &base, TOKEN, ""));
    // Each run's events by key: (ce_id, document).
    let by_key = |events: Vec<Event>| events.into_iter().map(|e| (e.key.clone(), (e.headers["ce_id"].clone(), e.text().to_string()))).collect::<HashMap<_, _>>();
    let mut tail = block_in_place(|| {
        setup.run_once();
        TopicTail::new(&topic)
    });
    let first = block_in_place(|| by_key(tail.read_new()));
    let mut run = |reset: bool| {
        block_in_place(|| {
            if reset {
                let out = run_with_deadline(setup.command(&["checkpoint", "reset", "--pipeline", "p"]), std::time::Duration::from_secs(60));
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            }
            setup.run_once();
            by_key(tail.read_new())
        })
    };
    assert_eq!(setup.checkpoint().unwrap()["position"]["since"], "2024-01-15T10:30:00.300Z", "the sub-second meta.cutoff, verbatim");
    assert_eq!(run(true), first, "a redelivery of the same versions keeps their ids");

    // The second version of order 7, within the same second.
    {
        let mut o = orders.lock().unwrap();
        o.put(7, second + Duration::milliseconds(600), "shipped");
        o.now = second + Duration::milliseconds(900);
    }
    let second_run = run(false);
    assert_eq!(second_run.keys().collect::<Vec<_>>(), ["7"], "the next run brings the one change");
    let (v1, v2) = (&first["7"], &second_run["7"]);
    assert!(v1.1.contains("pending") && v2.1.contains("shipped"), "two versions: {} / {}", v1.1, v2.1);
    assert!(v1.1.contains(r#""updated_at":"2024-01-15T10:30:00Z""#) && v2.1.contains(r#""updated_at":"2024-01-15T10:30:00Z""#));
    assert_ne!(v1.0, v2.0, "two versions with one updated_at have two ce_ids");
    assert!(v1.0.starts_with("7@1705314600000000:") && v2.0.starts_with("7@1705314600000000:"), "{} / {}", v1.0, v2.0);

    let redelivered = run(true);
    assert_eq!(redelivered["7"], *v2, "a redelivery keeps the id of the version");
    assert_eq!(redelivered["8"], first["8"], "and of the order that did not change");
}
