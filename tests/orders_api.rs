//! The `orders_api` source against a second implementation of seed 002
//! (tests/common/portal.rs): a portal with whole-second, zone-less timestamps in its own
//! format and zone, a clock 43 s behind ours, ties listed in no documented order, OFFSET
//! pages over orders that move while they are walked, the key taken only in its header,
//! and 429s. Whatever it does, every order must reach the topic, the newest version of
//! each last, byte for byte as the portal wrote it, and the key must never show. Last,
//! the source against our own `order-cdc serve` dialect of the same seed.

mod common;

use std::collections::HashMap;
use std::time::Duration as StdDuration;

use chrono::{Duration, NaiveDateTime};
use common::portal::*;
use common::*;
use tokio::task::block_in_place;

/// The portal's clock runs behind ours: a client that ended its window by its own clock
/// would close it on seconds the portal has not reached yet, and skip what it writes there.
fn skewed() -> Clock {
    Clock::Skewed(Duration::seconds(-43))
}

/// The source's lines for a portal run by these tests (`extra`: more of them).
fn source(extra: &str) -> String {
    format!("timezone = \"{TIMEZONE}\"\nsettle = \"1s\"\n{extra}")
}

/// `count` orders from id 1, `per_second` of them sharing each second, the last second
/// `ago` behind the portal's clock.
fn fill(portal: &Portal, count: u64, per_second: u64, ago: Duration) -> NaiveDateTime {
    let mut o = portal.orders();
    let last = local(o.now() - ago);
    for id in 1..=count {
        o.put(id, "confirmed", last - Duration::seconds(((count - id) / per_second) as i64));
    }
    last
}

/// Waits until the newest event of every key is the portal's current document and no other
/// key is on the topic.
fn wait_for_portal(topic: &str, portal: &Portal, deadline: StdDuration) {
    wait_until("the topic to show every order's newest version", deadline, || {
        let latest = latest_by_key(&read_topic(topic));
        let expected = portal.orders().documents();
        latest.len() == expected.len() && expected.iter().all(|(k, doc)| latest.get(k).is_some_and(|e| e.text() == doc))
    });
}

/// The client kept to the portal's rules on every request.
fn assert_manners(seen: &Seen, per_page: usize) {
    assert_eq!(seen.key_in_query, 0, "the key travels in the X-API-Key header only");
    assert_eq!(seen.unauthorized, 0);
    assert!(seen.refused.is_empty(), "{:?}", seen.refused);
    for q in &seen.queries {
        assert_eq!(q.get("filter_on").map(String::as_str), Some("updated_at"), "{q:?}");
        assert_eq!(q.get("sort").map(String::as_str), Some("updated_at,order_number"), "ties in one order on every page: {q:?}");
        assert_eq!(q.get("per_page"), Some(&per_page.to_string()), "{q:?}");
        assert_eq!(q.get("include").map(String::as_str), Some("items,shipments,status_history"), "{q:?}");
        for bound in ["date_from", "date_to"].iter().filter_map(|b| q.get(*b)) {
            assert!(NaiveDateTime::parse_from_str(bound, "%Y-%m-%d %H:%M:%S").is_ok(), "dates as YYYY-MM-DD HH:MM:SS: {q:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_orders_sharing_one_second_arrive_byte_equal_over_pages_of_fifty() {
    let portal = Portal::start(skewed()).await;
    let second = {
        let mut o = portal.orders();
        let second = local(o.now() - Duration::minutes(10));
        // 300 confirmed or shipped and 20 pending in one second; the filter passes through.
        for id in 1..=320 {
            let status = if id > 300 { "pending" } else if id % 2 == 0 { "shipped" } else { "confirmed" };
            o.put(id, status, second);
        }
        o.put(321, "confirmed", second - Duration::seconds(1));
        second
    };
    let topic = unique("portal_ties");
    let p = Pipeline::orders_api(&topic, &portal.url, API_KEY, &source("per_page = 50\nfilters = { status = \"confirmed,shipped\" }"));
    let setup = Setup::new(&p);
    let run_started = portal.orders().now();
    block_in_place(|| setup.run_once());

    let expected: HashMap<String, String> = portal.orders().by_id.values().filter(|o| o.status != "pending").map(|o| (o.id.to_string(), document(o, INCLUDE_ALL))).collect();
    assert_eq!(expected.len(), 301);
    let (events, duplicates) = block_in_place(|| assert_topic_matches(&topic, &expected));
    assert_eq!(duplicates, 0, "a quiet run publishes each version once");
    let ce_time = order_cdc::timestamp::format(instant(second));
    for e in read_topic(&topic).iter().filter(|e| e.key != "321") {
        assert_eq!(e.headers["ce_time"], ce_time, "updated_at {second} read in {TIMEZONE}");
    }
    let seen = portal.seen();
    assert_manners(&seen, 50);
    for q in &seen.queries {
        assert_eq!(q.get("status").map(String::as_str), Some("confirmed,shipped"), "configured filters pass through: {q:?}");
        // The window ends by the portal's clock (43 s behind ours), settle behind it.
        if let Some(to) = q.get("date_to") {
            let to = NaiveDateTime::parse_from_str(to, "%Y-%m-%d %H:%M:%S").unwrap();
            assert!(to <= local(portal.orders().now() - Duration::seconds(1)), "date_to {to} is past the portal's clock minus settle");
        }
    }
    assert!(seen.pages >= 7, "six pages of ties at least: {}", seen.pages);
    println!("300 ties + 1, pages of 50: {events} events, {} pages asked, run from portal time {run_started}", seen.pages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_updated_and_created_at_every_page_of_a_walk_all_arrive_newest_last() {
    let portal = Portal::start(skewed()).await;
    // 1,500 orders, 150 to a second: every page of 50 ends inside a tie.
    fill(&portal, 1_500, 150, Duration::minutes(5));
    const HOOKED_PAGES: u64 = 120;
    portal.orders().hook = Some(Box::new(move |o: &mut Orders, pages: u64| {
        // Updates ahead of and behind the page asked for.
        if pages < HOOKED_PAGES {
            o.churn(3);
        }
    }));
    let topic = unique("portal_moving");
    let mut p = Pipeline::orders_api(&topic, &portal.url, API_KEY, &source("per_page = 50"));
    p.batch_size = 50;
    let setup = Setup::new(&p);
    let mut daemon = setup.spawn(&["run"]);
    block_in_place(|| {
        wait_until("the hook's pages", StdDuration::from_secs(120), || portal.seen().pages >= HOOKED_PAGES);
        wait_for_portal(&topic, &portal, StdDuration::from_secs(120));
    });
    terminate(&daemon);
    let status = block_in_place(|| wait_for_exit(&mut daemon, StdDuration::from_secs(60), "the daemon did not stop on SIGTERM", || setup.log()));
    assert!(status.success(), "{}", setup.log());
    let expected = portal.orders().documents();
    let (events, duplicates) = block_in_place(|| assert_topic_matches(&topic, &expected));
    let newer = portal.orders().by_id.values().filter(|o| o.version > 1).count();
    assert!(newer > 100 && expected.len() == 1_500 + HOOKED_PAGES as usize, "{newer} orders updated, {} orders", expected.len());
    assert_manners(&portal.seen(), 50);
    println!("{} orders ({newer} updated during walks, {HOOKED_PAGES} created): {events} events, {duplicates} beyond one per order", expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_many_requests_waits_out_retry_after_counts_the_retries_and_loses_nothing() {
    let portal = Portal::start(skewed()).await;
    fill(&portal, 600, 100, Duration::minutes(5));
    // Every fourth page, the next request is refused: three times in all.
    let mut refusals = vec![1, 2, 1];
    portal.orders().hook = Some(Box::new(move |o: &mut Orders, pages: u64| {
        if pages % 4 == 1 {
            if let Some(seconds) = refusals.pop() {
                o.throttle.push_back(seconds);
            }
        }
    }));
    let topic = unique("portal_429");
    let mut p = Pipeline::orders_api(&topic, &portal.url, API_KEY, &source("per_page = 50"));
    p.metrics_port = free_port();
    let setup = Setup::new(&p);
    let mut daemon = setup.spawn(&["run"]);
    block_in_place(|| wait_for_portal(&topic, &portal, StdDuration::from_secs(120)));
    let seen = portal.seen();
    assert_eq!(seen.throttled, 3);
    assert_eq!(seen.retried, 3, "each refused request is asked again");
    assert_eq!(seen.early_retries, 0, "none before its Retry-After (shortest wait {:?} ms)", seen.shortest_wait_ms);
    let retries = metric(p.metrics_port, "order_cdc_source_retries_total", &[("pipeline", "p"), ("reason", "429")]);
    assert_eq!(retries, Some(3), "{:?}", http_get(p.metrics_port, "/metrics"));
    // Caught up, the lag is the settle margin and the wait between runs, on our clock: not
    // the 43 s the portal's clock runs behind ours on top.
    let lag = || gauge(p.metrics_port, "order_cdc_lag_seconds", &[("pipeline", "p")]);
    block_in_place(|| wait_until("the lag to fall below the portal's clock skew", StdDuration::from_secs(60), || lag().is_some_and(|l| l > 0.0 && l < 30.0)));
    terminate(&daemon);
    block_in_place(|| wait_for_exit(&mut daemon, StdDuration::from_secs(60), "the daemon did not stop on SIGTERM", || setup.log()));
    let (events, _) = block_in_place(|| assert_topic_matches(&topic, &portal.orders().documents()));
    assert_manners(&portal.seen(), 50);
    println!("3 x 429: {events} events for 600 orders, shortest wait {:?} ms", seen.shortest_wait_ms);
}

/// The portal's clock stands a second past `t` (settle is 1 s): order 1 is published at
/// `t`, then changes again with the same `updated_at` (a write that began within `t`).
/// Both versions go out, once each, the later one last, however often `t` is read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_changed_twice_within_one_second_publishes_both_versions_the_later_last() {
    let t = chrono::Utc::now() - Duration::hours(1);
    let portal = Portal::start(Clock::Frozen(t + Duration::seconds(1))).await;
    let at = local(portal.orders().now() - Duration::seconds(1));
    {
        let mut o = portal.orders();
        o.put(1, "confirmed", at);
        o.put(2, "confirmed", at - Duration::seconds(5));
    }
    let first = portal.orders().documents()["1"].clone();
    let topic = unique("portal_twice");
    let setup = Setup::new(&Pipeline::orders_api(&topic, &portal.url, API_KEY, &source("")));
    let mut daemon = setup.spawn(&["run"]);
    let events_of = |key: &str| read_topic(&topic).into_iter().filter(|e| e.key == key).map(|e| e.text().to_string()).collect::<Vec<_>>();
    block_in_place(|| wait_until("the first version", StdDuration::from_secs(60), || events_of("1") == [first.clone()]));
    portal.orders().put(1, "shipped", at);
    let second = portal.orders().documents()["1"].clone();
    assert_ne!(first, second);
    block_in_place(|| {
        wait_until("the second version", StdDuration::from_secs(60), || events_of("1").last() == Some(&second));
        // The daemon goes on reading second `at` as its clock stands still.
        let pages = portal.seen().pages;
        wait_until("more runs over the same second", StdDuration::from_secs(60), || portal.seen().pages >= pages + 10);
    });
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    assert_eq!(events_of("1"), [first, second], "both versions, once each, the later last");
    assert_eq!(events_of("2").len(), 1);
    assert_manners(&portal.seen(), 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_runs_over_moving_orders_loses_nothing() {
    let portal = Portal::start(skewed()).await;
    // 20,000 orders, 500 to a second, pages of 250.
    fill(&portal, 20_000, 500, Duration::minutes(5));
    portal.orders().hook = Some(Box::new(|o: &mut Orders, _| o.churn(1)));
    let topic = unique("portal_kill9");
    let mut p = Pipeline::orders_api(&topic, &portal.url, API_KEY, &source(""));
    p.batch_size = 250;
    let setup = Setup::new(&p);
    let kills = block_in_place(|| kill_9_rounds(&setup, 6, || setup.checkpoint()));
    assert!(kills >= 3, "killed mid-run only {kills} times");
    // The portal goes quiet; one more run brings what is left.
    portal.orders().hook = None;
    block_in_place(|| setup.run_once());
    let expected = portal.orders().documents();
    let (events, duplicates) = block_in_place(|| assert_topic_matches(&topic, &expected));
    assert_manners(&portal.seen(), 250);
    println!("kill -9 x{kills}: {events} events for {} orders, {duplicates} beyond one per order, 0 missing", expected.len());
}

/// A refused key stops the pipeline with an error naming `api_key`, which /health/ready
/// shows, while another pipeline goes on; nothing is published for it, and the key is in
/// no log line (at debug), metric or error; `run --once` of it alone exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_key_stops_the_pipeline_unready_publishes_nothing_and_never_shows_the_key() {
    const WRONG: &str = "wrong-portal-key-93b1e07d";
    let portal = Portal::start(skewed()).await;
    fill(&portal, 100, 10, Duration::minutes(5));
    let topic = unique("portal_denied");
    let other_topic = unique("portal_other");
    let mut p = Pipeline::orders_api(&topic, &portal.url, WRONG, &source(""));
    p.metrics_port = free_port();
    // A second pipeline with the right key keeps the daemon (and /health/ready) up.
    p.extra = other_pipeline(&other_topic, &format!("kind = \"orders_api\"\nurl = \"{}\"\napi_key = \"{API_KEY}\"\n{}", portal.url, source("")));
    let setup = Setup::new(&p);
    for (what, text) in block_in_place(|| refused_credential(&setup, p.metrics_port, &other_topic, 100, "api_key")) {
        assert!(!text.contains(WRONG), "the key shows in {what}: {text}");
    }
    assert!(block_in_place(|| read_topic(&topic)).is_empty(), "nothing published");
    let seen = portal.seen();
    assert!(seen.unauthorized >= 2, "{seen:?}");
    assert_eq!(seen.key_in_query, 0);
}

/// `per_page` outside 1..=250 and a zone that does not exist: one line naming the key,
/// exit code 1, before any request.
#[test]
fn a_bad_per_page_or_timezone_is_a_configuration_error_naming_the_key() {
    for (line, key) in [("per_page = 0", "per_page"), ("per_page = 251", "per_page"), ("timezone = \"Mars/Olympus\"", "timezone")] {
        let topic = unique("portal_config");
        assert_config_error(&Pipeline::orders_api(&topic, "http://127.0.0.1:1/api/orders/", API_KEY, line), key, API_KEY);
    }
}

/// A filter the API refuses (400) stops the pipeline with the API's message, which names
/// the parameter; nothing is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_filter_the_api_refuses_stops_the_pipeline_with_its_message() {
    let portal = Portal::start(skewed()).await;
    fill(&portal, 10, 10, Duration::minutes(5));
    let topic = unique("portal_refused");
    let setup = Setup::new(&Pipeline::orders_api(&topic, &portal.url, API_KEY, &source("filters = { customer_id = \"ACME\" }")));
    let out = block_in_place(|| run_with_deadline(setup.command(&["run", "--once"]), StdDuration::from_secs(60)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: pipeline p:") && stderr.contains("customer_id must be a whole number"), "{stderr}");
    assert!(!stderr.contains(API_KEY), "{stderr}");
    assert_eq!(portal.seen().refused, [(400, "customer_id must be a whole number.".to_string())], "refused once, not retried");
    assert!(block_in_place(|| read_topic(&topic)).is_empty(), "nothing published");
}

/// An endpoint that moved to another origin redirects there. The key is a header of
/// its own, which an HTTP client carries across hosts unless told not to: the source
/// follows no redirect out of source.url's origin, stops naming where it was sent, and
/// the portal (reached there as `localhost`, another origin) never sees a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_origin_is_not_followed_with_the_key() {
    let portal = Portal::start(skewed()).await;
    fill(&portal, 10, 10, Duration::minutes(5));
    let elsewhere = portal.url.replace("127.0.0.1", "localhost");
    let redirect = axum::Router::new().fallback(move || {
        let to = elsewhere.clone();
        async move { (axum::http::StatusCode::TEMPORARY_REDIRECT, [(axum::http::header::LOCATION, to)]) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let moved = format!("http://{}/api/orders/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, redirect).await });
    let topic = unique("portal_moved");
    let setup = Setup::new(&Pipeline::orders_api(&topic, &moved, API_KEY, &source("")));
    let out = block_in_place(|| run_with_deadline(setup.command(&["run", "--once"]), StdDuration::from_secs(60)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let origin = portal.url.replace("127.0.0.1", "localhost");
    let origin = origin.trim_end_matches('/').trim_end_matches("/api/orders");
    assert!(stderr.contains(&format!("redirected to {origin}")) && stderr.contains("source.url"), "{stderr}");
    assert!(!stderr.contains(API_KEY), "{stderr}");
    assert!(portal.seen().queries.is_empty(), "the portal was asked: {:?}", portal.seen().queries);
}

/// The portal itself keeps to seed 002 and to its own rules, so the tests above test the
/// source against what they say they do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_keeps_to_the_seed_and_its_own_rules() {
    let portal = Portal::start(skewed()).await;
    let last = fill(&portal, 5, 5, Duration::minutes(1));
    let http = reqwest::Client::new();
    let get = |query: &str, key: Option<&str>| {
        let mut request = http.get(format!("{}?{query}", portal.url));
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        async move {
            let response = request.send().await.unwrap();
            let (status, date) = (response.status().as_u16(), response.headers()["date"].to_str().unwrap().to_string());
            (status, date, response.text().await.unwrap())
        }
    };
    let error = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap()["error"]["type"].as_str().unwrap().to_string();
    let (status, _, body) = get("page=1", None).await;
    assert_eq!((status, error(&body).as_str()), (401, "missing_api_key"));
    assert!(body.contains("api_key is required (use X-API-Key header or api_key param)."), "the seed's message: {body}");
    assert_eq!(get(&format!("api_key={API_KEY}"), None).await.0, 400, "the key as a parameter is refused");
    assert_eq!(get("page=1", Some("nope")).await.0, 401);
    for (query, status) in [("per_page=251", 422), ("per_page=0", 422), ("per_page=x", 400), ("sort=id", 400), ("filter_on=id", 400), ("date_from=yesterday", 400), ("include=notes", 400)] {
        assert_eq!(get(query, Some(API_KEY)).await.0, status, "{query}");
    }
    let window = format!("filter_on=updated_at&date_from={}&date_to={}&sort=updated_at&per_page=2&page=3", last.format("%Y-%m-%d"), last.format("%Y-%m-%d %H:%M:%S"));
    let (status, date, body) = get(&window, Some(API_KEY)).await;
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["meta"]["pagination"], serde_json::json!({"page": 3, "per_page": 2, "total": 5, "total_pages": 3}));
    assert_eq!(page["data"].as_array().unwrap().len(), 1, "OFFSET paging: the fifth order");
    assert_eq!(page["data"][0]["updated_at"], last.format("%Y-%m-%dT%H:%M:%S").to_string(), "its own format, zone-less");
    // Its Date header is its clock, 43 s behind ours.
    let date = chrono::DateTime::parse_from_rfc2822(&date).unwrap();
    let behind = chrono::Utc::now().signed_duration_since(date).num_seconds();
    assert!((42..=45).contains(&behind), "the portal's clock is {behind} s behind");
}

/// The portal bites: a naive walk of `page=1, 2, …` over one window, with an order that
/// was already read updated before each page, skips one order a page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_naive_page_walk_over_the_portal_skips_orders() {
    let portal = Portal::start(skewed()).await;
    let last = fill(&portal, 200, 10, Duration::minutes(1));
    // Before page k+1, order k+1 (of the first page) moves to the portal's now.
    portal.orders().hook = Some(Box::new(|o: &mut Orders, pages: u64| o.touch(pages + 1)));
    let http = reqwest::Client::new();
    let mut read = std::collections::HashSet::new();
    for page in 1..=10 {
        let query = format!("filter_on=updated_at&date_from=2000-01-01&date_to={}&sort=updated_at&per_page=20&page={page}", last.format("%Y-%m-%d %H:%M:%S"));
        let body: serde_json::Value = http.get(format!("{}?{query}", portal.url)).header("X-API-Key", API_KEY).send().await.unwrap().json().await.unwrap();
        read.extend(body["data"].as_array().unwrap().iter().map(|o| o["id"].as_u64().unwrap()));
    }
    let skipped = (11..=200).filter(|id| !read.contains(id)).count();
    assert!(skipped >= 9, "{skipped} orders skipped");
}

/// The source against our own `order-cdc serve` (its seed-002 dialect, in process, over
/// the reference schema): 20,000 orders, about 143 sharing each whole second the listing
/// shows, arrive byte-equal to the listing's documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_thousand_orders_served_by_our_own_dialect_arrive_byte_equal() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 20_000, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '7 ms'").await;
    let server = common::server::TestServer::start(common::server::config(&db.url)).await;
    let url = format!("{}/api/orders/", server.base);
    let topic = unique("served_orders");
    let mut p = Pipeline::orders_api(&topic, &url, common::server::TOKEN, "timezone = \"UTC\"\nsettle = \"1s\"");
    p.batch_size = 250;
    let setup = Setup::new(&p);
    block_in_place(|| setup.run_once());

    // What the listing serves, each order's bytes as they are in the page.
    #[derive(serde::Deserialize)]
    struct Listing {
        data: Vec<Box<serde_json::value::RawValue>>,
    }
    let mut expected = HashMap::new();
    for page in 1.. {
        let query = format!("{url}?sort=updated_at&include=items,shipments,status_history&per_page=250&page={page}");
        let listing: Listing = server.http.get(query).header("X-API-Key", common::server::TOKEN).send().await.unwrap().json().await.unwrap();
        if listing.data.is_empty() {
            break;
        }
        for order in listing.data {
            let id: serde_json::Value = serde_json::from_str(order.get()).unwrap();
            expected.insert(id["id"].to_string(), order.get().to_string());
        }
    }
    assert_eq!(expected.len(), 20_000);
    let (events, duplicates) = block_in_place(|| assert_topic_matches(&topic, &expected));
    println!("served dialect: {events} events for 20000 orders, {duplicates} duplicates");
    db.drop_db().await;
}
