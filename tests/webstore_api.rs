//! The `webstore_api` source against a second implementation of seed 003
//! (tests/common/webstore.rs): a webstore whose clock is 37 s behind ours, hundreds of
//! orders in one revision second, the newest-created order listed first on OFFSET pages
//! over orders created, updated and deleted while they are walked, a Bearer token, 429s
//! and 503s. Whatever it does, every live order must end on the topic as its current
//! version, byte for byte as the store wrote it; with `reconcile`, every published order
//! the store deleted must end as a tombstone; and the token must never show.

mod common;

use std::time::Duration as StdDuration;

use chrono::{Duration, Utc};
use common::webstore::*;
use common::*;
use tokio::task::block_in_place;

/// The store's clock runs behind ours: a client that settled by its own clock would close
/// its runs on seconds the store has not reached yet, and skip what it writes there.
fn skewed() -> Clock {
    Clock::Skewed(Duration::seconds(-37))
}

/// The source's lines for a webstore run by these tests (`extra`: more of them). A
/// settle of 1 s; `settle = "2s"` in `extra` lets the source bound its walks by `endDate`.
fn lines(size: usize, extra: &str) -> String {
    let settle = if extra.contains("settle") { "" } else { "settle = \"1s\"\n" };
    format!("size = {size}\n{settle}{extra}")
}

/// The client kept to the store's rules on every request: the token in its header, the
/// configured size, nothing refused.
fn assert_manners(seen: &Seen, size: usize) {
    assert_eq!(seen.unauthorized, 0);
    assert!(seen.refused.is_empty(), "{:?}", seen.refused);
    for (path, q) in seen.requests.iter().filter(|(path, _)| path.ends_with("/orders.json")) {
        assert_eq!(q.get("size"), Some(&size.to_string()), "{path} {q:?}");
    }
}

/// Waits until the running daemon has brought the topic in line with the store (deletions
/// as tombstones), then stops it with SIGTERM.
fn drained(setup: &Setup, mut daemon: std::process::Child, webstore: &Webstore, topic: &str) -> Tally {
    let tally = block_in_place(|| webstore.wait_for_topic(topic, true, StdDuration::from_secs(120)));
    terminate(&daemon);
    block_in_place(|| wait_for_exit(&mut daemon, StdDuration::from_secs(60), "the daemon did not stop on SIGTERM", || setup.log()));
    tally
}

/// What one test's walk left: the topic's tally against the store, and the store's counts.
fn report(what: &str, webstore: &Webstore, tally: &Tally) {
    let s = webstore.store();
    println!(
        "{what}: {} live orders, {} deleted; {} events ({} versions beyond one per order), {} deleted orders published, {} tombstones ({} for orders never published); {} pages, {} counts, {} single GETs",
        s.len(),
        s.deleted.len(),
        tally.events,
        tally.duplicates,
        tally.deleted_keys,
        tally.tombstones,
        tally.bare_tombstones,
        s.seen.pages,
        s.seen.counts,
        s.seen.singles
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_orders_sharing_one_revision_second_arrive_byte_equal_over_pages_of_twenty() {
    let webstore = Webstore::start(skewed()).await;
    // 20 orders one second, then 300 sharing the next.
    webstore.store().fill(320, 300, 600);
    let topic = unique("webstore_ties");
    let setup = Setup::new(&Pipeline::webstore_api(&topic, &webstore.url, TOKEN, &lines(20, "")));
    block_in_place(|| setup.run_once());

    let tally = block_in_place(|| webstore.wait_for_topic(&topic, false, StdDuration::from_secs(30)));
    assert_eq!(tally.duplicates, 0, "a quiet run publishes each version once");
    let seen = webstore.seen();
    assert_manners(&seen, 20);
    assert!(seen.pages >= 16, "sixteen pages of twenty at least: {}", seen.pages);
    report("300 in one second + 20, size 20", &webstore, &tally);
}

/// 600 orders, 300 to a second; before each of the first 60 pages the store creates an
/// order, updates two and deletes one (a random one, ahead of or behind the walk).
/// `extra`: the source's `reconcile` and `settle` lines.
async fn churning_walk(extra: &str) -> (Webstore, Tally) {
    const HOOKED_PAGES: u64 = 60;
    let webstore = Webstore::start(skewed()).await;
    webstore.store().fill(600, 300, 300);
    webstore.store().hook = Some(Box::new(|s: &mut Store, pages: u64| {
        if pages < HOOKED_PAGES {
            s.churn(1, 2, 1);
        }
    }));
    let topic = unique("webstore_churn");
    let mut p = Pipeline::webstore_api(&topic, &webstore.url, TOKEN, &lines(20, extra));
    p.batch_size = 20;
    let setup = Setup::new(&p);
    let mut daemon = setup.spawn(&["run"]);
    let tombstones = !extra.contains("reconcile = \"off\"");
    let tally = block_in_place(|| {
        wait_until("the hook's pages", StdDuration::from_secs(120), || webstore.seen().pages >= HOOKED_PAGES);
        webstore.wait_for_topic(&topic, tombstones, StdDuration::from_secs(120))
    });
    terminate(&daemon);
    let status = block_in_place(|| wait_for_exit(&mut daemon, StdDuration::from_secs(60), "the daemon did not stop on SIGTERM", || setup.log()));
    assert!(status.success(), "{}", setup.log());
    // Read again after the stop: nothing came after that undoes the match.
    let events = block_in_place(|| read_topic(&topic));
    let s = webstore.store();
    let tally = check_topic(&events, &s.documents(), &s.deleted, tombstones).unwrap_or_else(|problem| panic!("{problem} (matched before: {tally:?})"));
    assert_eq!((s.len(), s.deleted.len()), (600, HOOKED_PAGES as usize), "as many created as deleted");
    assert!(s.documents().values().filter(|d| !d.contains("\"version 1\\n")).count() >= 60, "orders updated during walks");
    drop(s);
    assert_manners(&webstore.seen(), 20);
    (webstore, tally)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_created_updated_and_deleted_at_every_page_of_a_walk_all_arrive_newest_last() {
    // Settle 1 s: no `endDate`, so creations push the walk's pages down too.
    let (webstore, tally) = churning_walk("reconcile = \"off\"").await;
    assert_eq!(tally.tombstones, 0, "reconcile off: no deletions");
    report("churn at every page, reconcile off", &webstore, &tally);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_reconcile_every_published_order_deleted_during_walks_ends_as_a_tombstone() {
    let (webstore, tally) = churning_walk("reconcile = \"2s\"\nsettle = \"2s\"").await;
    assert!(tally.deleted_keys >= 10, "deleted orders had been published: {tally:?}");
    assert!(tally.tombstones >= tally.deleted_keys, "{tally:?}");
    assert_eq!(tally.bare_tombstones, 0, "a tombstone only for an order that was published: {tally:?}");
    report("churn at every page, reconcile 2s", &webstore, &tally);
}

/// A store that writes before every page and never stops: runs still end and the
/// checkpoint follows the store's clock (no run waits for a quiet store); once the store
/// stops, every order is there and every published deletion a tombstone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_never_stops_writing_is_followed_and_loses_nothing() {
    let webstore = Webstore::start(skewed()).await;
    webstore.store().fill(600, 300, 300);
    webstore.store().hook = Some(Box::new(|s: &mut Store, _| s.churn(1, 2, 1)));
    let topic = unique("webstore_busy");
    let mut p = Pipeline::webstore_api(&topic, &webstore.url, TOKEN, &lines(20, "reconcile = \"2s\"\nsettle = \"2s\""));
    p.batch_size = 20;
    let setup = Setup::new(&p);
    let daemon = setup.spawn(&["run"]);
    let started = webstore.store().now();
    // The boundary second of the source's position.
    let boundary = || setup.checkpoint().and_then(|c| c["position"]["rev"].as_i64());
    block_in_place(|| wait_until("the checkpoint to pass seconds written during the churn", StdDuration::from_secs(60), || boundary().is_some_and(|rev| rev >= started + 5)));
    webstore.store().hook = None;
    let tally = drained(&setup, daemon, &webstore, &topic);
    assert!(tally.deleted_keys >= 10, "deleted orders had been published: {tally:?}");
    assert_eq!(tally.bare_tombstones, 0, "a tombstone only for an order that was published: {tally:?}");
    assert_manners(&webstore.seen(), 20);
    report("churn before every page until the checkpoint passed 5 s of it, reconcile 2s", &webstore, &tally);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_many_requests_and_unavailable_are_retried_counted_and_lose_nothing() {
    let webstore = Webstore::start(skewed()).await;
    webstore.store().fill(400, 100, 300);
    // Early in the first walk: three 429s (1, 2 and 1 s) and two pairs of 503s.
    let mut refusals = vec![1, 2, 1];
    webstore.store().hook = Some(Box::new(move |s: &mut Store, pages: u64| match pages % 4 {
        1 if pages < 12 => s.throttle.push_back(refusals.pop().unwrap()),
        3 if pages < 8 => s.unavailable += 2,
        _ => {}
    }));
    let topic = unique("webstore_429");
    let mut p = Pipeline::webstore_api(&topic, &webstore.url, TOKEN, &lines(20, ""));
    p.metrics_port = free_port();
    let setup = Setup::new(&p);
    let mut daemon = setup.spawn(&["run"]);
    let tally = block_in_place(|| webstore.wait_for_topic(&topic, false, StdDuration::from_secs(120)));
    let seen = webstore.seen();
    assert_eq!(seen.throttling.throttled, 3);
    assert_eq!(seen.throttling.retried, 3, "each refused request is asked again");
    assert_eq!(seen.throttling.early_retries, 0, "none before its Retry-After (shortest wait {:?} ms)", seen.throttling.shortest_wait_ms);
    assert_eq!(seen.unavailable, 4);
    let retries = |reason| metric(p.metrics_port, "order_cdc_source_retries_total", &[("pipeline", "p"), ("reason", reason)]);
    assert_eq!((retries("429"), retries("503")), (Some(3), Some(4)), "{:?}", http_get(p.metrics_port, "/metrics"));
    terminate(&daemon);
    block_in_place(|| wait_for_exit(&mut daemon, StdDuration::from_secs(60), "the daemon did not stop on SIGTERM", || setup.log()));
    assert_manners(&webstore.seen(), 20);
    report("3 x 429 + 4 x 503", &webstore, &tally);
}

/// The store's clock stands a second past `t` (settle is 1 s): order A is published at
/// revision `t`, then changes again within `t`. Both versions go out, once each, the later
/// one last, however often `t` is read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_changed_twice_within_one_second_publishes_both_versions_the_later_last() {
    let t = (Utc::now() - Duration::hours(1)).timestamp();
    let webstore = Webstore::start(Clock::Frozen(chrono::DateTime::from_timestamp(t + 1, 0).unwrap())).await;
    let (a, b) = {
        let mut s = webstore.store();
        (s.create_at(t), s.create_at(t - 5))
    };
    let first = webstore.store().get(&a).unwrap().document.clone();
    let topic = unique("webstore_twice");
    let setup = Setup::new(&Pipeline::webstore_api(&topic, &webstore.url, TOKEN, &lines(20, "")));
    let mut daemon = setup.spawn(&["run"]);
    let events_of = |key: &str| read_topic(&topic).into_iter().filter(|e| e.key == key).map(|e| e.text().to_string()).collect::<Vec<_>>();
    block_in_place(|| wait_until("the first version", StdDuration::from_secs(60), || events_of(&a) == [first.clone()]));
    webstore.store().update_at(&a, t);
    let second = webstore.store().get(&a).unwrap().document.clone();
    assert_ne!(first, second);
    block_in_place(|| {
        wait_until("the second version", StdDuration::from_secs(60), || events_of(&a).last() == Some(&second));
        // The daemon goes on reading second `t` as the store's clock stands still.
        let pages = webstore.seen().pages;
        wait_until("more runs over the same second", StdDuration::from_secs(60), || webstore.seen().pages >= pages + 10);
    });
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    assert_eq!(events_of(&a), [first, second], "both versions, once each, the later last");
    assert_eq!(events_of(&b).len(), 1);
    assert_manners(&webstore.seen(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_churning_walks_loses_nothing_and_deletions_still_become_tombstones() {
    let webstore = Webstore::start(skewed()).await;
    // 1,500 orders, 300 to a second, pages of 20 (75 a pass). The store churns before
    // each of 30 pages in every 150: a pass over OFFSET pages during which anything moved
    // cannot be trusted to have seen everything, so a run ends after a pass that saw
    // nothing move, and the quiet pages between bursts let runs end and be killed.
    webstore.store().fill(1_500, 300, 300);
    webstore.store().hook = Some(Box::new(|s: &mut Store, pages: u64| {
        if pages % 150 < 30 {
            s.churn(1, 1, 1);
        }
    }));
    let topic = unique("webstore_kill9");
    let mut p = Pipeline::webstore_api(&topic, &webstore.url, TOKEN, &lines(20, "reconcile = \"2s\"\nsettle = \"2s\""));
    p.batch_size = 20;
    let setup = Setup::new(&p);
    let kills = block_in_place(|| kill_9_rounds(&setup, 6, || setup.checkpoint()));
    assert!(kills >= 3, "killed mid-run only {kills} times");
    // The store goes quiet; a daemon brings what is left, deletions included.
    webstore.store().hook = None;
    let tally = drained(&setup, setup.spawn(&["run"]), &webstore, &topic);
    // A kill after a uuid joined the published set and before its batch reached Kafka
    // may leave a tombstone for an order never published: harmless, so not asserted.
    assert!(tally.deleted_keys >= 10, "deleted orders had been published: {tally:?}");
    assert_manners(&webstore.seen(), 20);
    report(&format!("kill -9 x{kills} during churn, reconcile 2s"), &webstore, &tally);
}

/// A refused token stops the pipeline with an error naming `headers`, which /health/ready
/// shows, while another pipeline goes on; nothing is published for it, and the token is in
/// no log line (at debug, stdout and stderr), metric or error; `run --once` of it exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_token_stops_the_pipeline_unready_publishes_nothing_and_never_shows_the_token() {
    const WRONG: &str = "wrong-webstore-token-c81f5e0a";
    let webstore = Webstore::start(skewed()).await;
    webstore.store().fill(100, 10, 300);
    let topic = unique("webstore_denied");
    let other_topic = unique("webstore_other");
    let mut p = Pipeline::webstore_api(&topic, &webstore.url, WRONG, &lines(20, ""));
    p.metrics_port = free_port();
    // A second pipeline with the right token keeps the daemon (and /health/ready) up.
    p.extra = other_pipeline(&other_topic, &source(&webstore.url, TOKEN, &lines(20, "")));
    let setup = Setup::new(&p);
    for (what, text) in block_in_place(|| refused_credential(&setup, p.metrics_port, &other_topic, 100, "headers")) {
        assert!(!text.contains(WRONG) && !text.contains(TOKEN), "a token shows in {what}: {text}");
    }
    assert!(block_in_place(|| read_topic(&topic)).is_empty(), "nothing published");
    assert!(webstore.seen().unauthorized >= 2, "{:?}", webstore.seen().unauthorized);
}

/// A `size` the API does not offer and a `reconcile` that is not a duration: one line
/// naming the key, exit code 1, before any request.
#[test]
fn a_bad_size_or_reconcile_is_a_configuration_error_naming_the_key() {
    for (extra, key) in [("size = 30", "size"), ("size = 20\nreconcile = \"nightly\"", "reconcile")] {
        let topic = unique("webstore_config");
        assert_config_error(&Pipeline::webstore_api(&topic, "http://127.0.0.1:1/acme/api/v2/sales/orders.json", TOKEN, extra), key, TOKEN);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listing_wrapped_as_an_orders_object_is_read_the_same() {
    let webstore = Webstore::start(skewed()).await;
    {
        let mut s = webstore.store();
        s.shape = Shape::Wrapped;
        s.fill(200, 50, 300);
    }
    let topic = unique("webstore_wrapped");
    let setup = Setup::new(&Pipeline::webstore_api(&topic, &webstore.url, TOKEN, &lines(40, "")));
    block_in_place(|| setup.run_once());
    let tally = block_in_place(|| webstore.wait_for_topic(&topic, false, StdDuration::from_secs(30)));
    assert_eq!(tally.duplicates, 0);
    assert_manners(&webstore.seen(), 40);
    report("{\"orders\": [...]}, size 40", &webstore, &tally);
}

/// The store itself keeps to seed 003 and to its own rules, so the tests above test the
/// source against what they say they do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webstore_keeps_to_the_seed_and_its_own_rules() {
    let webstore = Webstore::start(skewed()).await;
    let newest = webstore.store().fill(5, 2, 60);
    let http = reqwest::Client::new();
    let base = webstore.url.strip_suffix(".json").unwrap().to_string();
    let get = |url: String, token: Option<&str>| {
        let mut request = http.get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let date = response.headers().get("date").map(|d| d.to_str().unwrap().to_string());
            (status, date, response.text().await.unwrap())
        }
    };
    let list = |query: &str| format!("{}?{query}", webstore.url);
    let error = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap()["error"]["type"].as_str().unwrap().to_string();
    let (status, _, body) = get(list("page=0"), None).await;
    assert_eq!((status, error(&body).as_str()), (401, "unauthorized"));
    let (status, _, body) = get(list("page=0"), Some("nope")).await;
    assert_eq!((status, error(&body).as_str()), (401, "invalid_token"));
    for (query, status) in [("size=30", 422), ("size=0", 422), ("size=x", 400), ("page=-1", 400), ("since=yesterday", 400), ("endDate=x", 400)] {
        assert_eq!(get(list(query), Some(TOKEN)).await.0, status, "{query}");
    }
    let uuids = |body: &str| serde_json::from_str::<Vec<serde_json::Value>>(body).unwrap().iter().map(|o| o["uuid"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    // Newest-created first; `since` strict; the default size is 40; Date is the store's clock.
    let (status, date, body) = get(list(""), Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let all = uuids(&body);
    assert_eq!(all.len(), 5);
    let revisions: Vec<i64> = all.iter().map(|u| webstore.store().get(u).unwrap().revision).collect();
    assert_eq!(revisions, [newest, newest, newest - 1, newest - 1, newest - 2], "filled oldest first, listed newest-created first");
    let behind = Utc::now().signed_duration_since(chrono::DateTime::parse_from_rfc2822(&date.unwrap()).unwrap()).num_seconds();
    assert!((36..=39).contains(&behind), "the store's clock is {behind} s behind");
    let since = format!("since={}", newest - 1);
    assert_eq!(uuids(&get(list(&since), Some(TOKEN)).await.2), all[..2]);
    assert_eq!(get(format!("{base}/count.json?{since}"), Some(TOKEN)).await.2, "2", "a bare integer");
    let until = format!("endDate={}", newest - 1);
    assert_eq!(uuids(&get(list(&until), Some(TOKEN)).await.2), all[2..], "endDate bounds the creation date, inclusive");
    assert_eq!(get(format!("{base}/count.json?{until}&startDate={}", newest - 1), Some(TOKEN)).await.2, "2", "startDate too");
    // OFFSET pages over the orders as they are: a creation pushes page 1 down a place,
    // deletions pull it up.
    let page = |n: usize| get(list(&format!("size=20&page={n}")), Some(TOKEN));
    webstore.store().fill(20, 20, 0);
    assert_eq!(uuids(&page(1).await.2), all);
    webstore.store().create();
    let pushed = uuids(&page(1).await.2);
    assert_eq!(pushed[1..], all, "the oldest of page 0 moved to page 1");
    let first = uuids(&page(0).await.2);
    webstore.store().delete(&first[0]);
    webstore.store().delete(&first[1]);
    assert_eq!(uuids(&page(1).await.2), all[1..], "two deletions on page 0 pulled page 1 up two places");
    // One order by uuid, its bytes those of the listing; 404 once deleted.
    let (status, _, one) = get(format!("{base}/{}.json", all[1]), Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(one, webstore.store().get(&all[1]).unwrap().document);
    assert!(page(1).await.2.contains(&one));
    webstore.store().delete(&all[0]);
    let (status, _, body) = get(format!("{base}/{}.json", all[0]), Some(TOKEN)).await;
    assert_eq!((status, error(&body).as_str()), (404, "not_found"));
    // The wrapped shape, of documents in the seed's structure.
    webstore.store().shape = Shape::Wrapped;
    let (_, _, body) = get(list("size=80"), Some(TOKEN)).await;
    let wrapped: serde_json::Value = serde_json::from_str(&body).unwrap();
    let orders = wrapped["orders"].as_array().unwrap();
    assert_eq!(orders.len(), webstore.store().len());
    assert_eq!((orders[0]["type"].as_str(), orders[0]["lines"][0]["type"].as_str()), (Some("orders"), Some("orderline")));
    assert_eq!(orders[0]["customer"]["companyName"].as_str().unwrap().split(' ').next(), Some("Café"));
    assert_eq!(orders[0]["payments"][0]["data"]["score"], 0.5);
}

/// The store bites: a naive walk of `page=0, 1, …` that sees, before each page, an order
/// it already read deleted skips one order a page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_naive_page_walk_over_the_webstore_skips_orders() {
    let webstore = Webstore::start(skewed()).await;
    webstore.store().fill(200, 50, 60);
    let http = reqwest::Client::new();
    let mut read: Vec<String> = Vec::new();
    for page in 0..10 {
        if page > 0 {
            webstore.store().delete(&read[page - 1]);
        }
        let body: Vec<serde_json::Value> = http.get(format!("{}?size=20&page={page}", webstore.url)).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
        read.extend(body.iter().map(|o| o["uuid"].as_str().unwrap().to_string()));
    }
    let skipped = webstore.store().documents().keys().filter(|u| !read.contains(u)).count();
    assert!(skipped >= 9, "{skipped} live orders skipped");
}
