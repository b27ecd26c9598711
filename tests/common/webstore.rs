//! A second implementation of seed 003's webstore orders API v2, started inside the test
//! process over in-memory orders, written the way a real webstore may behave while keeping
//! to the seed:
//! - its clock is off from ours by tens of seconds; that clock stamps `revision` (whole
//!   Unix seconds) and writes the `Date` header; many orders share one revision second;
//! - the collection lists the newest-created order first, and pages are OFFSET slices of
//!   the orders as they are when each page is asked for, so a creation during a walk
//!   pushes everything behind it one place down and a deletion pulls it one place up;
//! - `since` is strict (revision > since), `startDate`/`endDate` bound `date` (creation,
//!   both inclusive), `page` starts at 0, `size` must be 20, 40 or 80 (anything else is a
//!   422, this service's choice); `count.json` is a bare integer for the same filters and
//!   `<uuid>.json` one order, or a 404 once it is deleted;
//! - the listing is a bare JSON array or, when the test asks, `{"orders": [...]}`;
//! - it wants `Authorization: Bearer <token>` (401 JSON otherwise) and, when the test asks,
//!   answers 429 with `Retry-After` or 503;
//! - a hook the test sets runs before each listing page is answered, to create, update and
//!   delete orders while a walk is in progress.
//!
//! Order documents follow the seed's data structure (decimals as strings, nested lines,
//! taxes and payments) with what a re-encoding would change (`\u` escapes, `0.50`, spaces),
//! so byte equality on the topic means the source passed them through untouched.
//! It records what it was asked and how, so tests can check the client's manners.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration as StdDuration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::DateTime;

pub use super::double::{Clock, Throttling};
use super::double::{error, http_date, Throttle};
use super::{latest_by_key, read_topic, Event, Pipeline};

pub const TOKEN: &str = "webstore-token-4be1c07d9a3f5e26";
/// The store handle in the URL.
pub const STORE: &str = "acme";
const SIZES: [usize; 3] = [20, 40, 80];
const STATUSES: [&str; 4] = ["pending", "invoiced", "shipped", "returned"];

/// How the listing wraps its orders.
#[derive(Clone, Copy, Debug)]
pub enum Shape {
    /// A bare JSON array, as the seed's `count.json` suggests the service answers.
    Array,
    /// `{"orders": [...]}`.
    Wrapped,
}

/// One order as the store holds it, with the bytes it serves for it.
#[derive(Clone)]
pub struct Order {
    pub uuid: String,
    pub revision: i64,
    /// Bumped by each update, so every version's document differs (even within a second).
    pub version: u32,
    pub document: String,
    /// Created (`date`), and its number: both fixed at creation.
    date: i64,
    number: u64,
}

/// Runs before a listing page is answered: (the store, how many pages it has answered).
pub type Hook = Box<dyn FnMut(&mut Store, u64) + Send>;

/// What the store saw of its clients.
#[derive(Default, Debug, Clone)]
pub struct Seen {
    /// Every request: its path and decoded query, in arrival order.
    pub requests: Vec<(String, HashMap<String, String>)>,
    /// Listing pages, `count.json` and single orders answered.
    pub pages: u64,
    pub counts: u64,
    pub singles: u64,
    pub unauthorized: u64,
    /// Requests answered 503.
    pub unavailable: u64,
    /// 400 and 422 answers, with their messages.
    pub refused: Vec<(u16, String)>,
    /// How the client took the 429s (`Webstore::seen` fills this from the throttle).
    pub throttling: Throttling,
}

pub struct Store {
    /// Live orders by creation sequence: the listing is this, newest first.
    by_seq: BTreeMap<u64, Order>,
    seq_of: HashMap<String, u64>,
    next_seq: u64,
    /// Every order deleted (uuids are never reused).
    pub deleted: BTreeSet<String>,
    pub clock: Clock,
    pub shape: Shape,
    pub hook: Option<Hook>,
    /// 429s for the next requests (`push_back(retry_after_seconds)`).
    pub throttle: Throttle,
    /// How many of the next requests are answered 503.
    pub unavailable: u32,
    pub seen: Seen,
}

impl Store {
    fn new(clock: Clock) -> Self {
        Self {
            by_seq: BTreeMap::new(),
            seq_of: HashMap::new(),
            next_seq: 0,
            deleted: BTreeSet::new(),
            clock,
            shape: Shape::Array,
            hook: None,
            throttle: Throttle::default(),
            unavailable: 0,
            seen: Seen::default(),
        }
    }

    /// The store's clock, in Unix seconds.
    pub fn now(&self) -> i64 {
        self.clock.now().timestamp()
    }

    /// A new order at `revision` (also its `date`); returns its uuid.
    pub fn create_at(&mut self, revision: i64) -> String {
        let uuid = format!("{:032x}", rand::random::<u128>());
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut order = Order { uuid: uuid.clone(), revision, version: 1, document: String::new(), date: revision, number: seq + 1 };
        order.document = document(&order);
        self.by_seq.insert(seq, order);
        self.seq_of.insert(uuid.clone(), seq);
        uuid
    }

    /// A new order, now.
    pub fn create(&mut self) -> String {
        let now = self.now();
        self.create_at(now)
    }

    /// A new version of a live order at `revision`, in place in the listing.
    pub fn update_at(&mut self, uuid: &str, revision: i64) {
        let order = self.by_seq.get_mut(&self.seq_of[uuid]).expect("a live order");
        order.revision = revision;
        order.version += 1;
        order.document = document(order);
    }

    /// A new version of a live order, now.
    pub fn update(&mut self, uuid: &str) {
        let now = self.now();
        self.update_at(uuid, now);
    }

    pub fn delete(&mut self, uuid: &str) {
        let seq = self.seq_of.remove(uuid).expect("a live order");
        self.by_seq.remove(&seq);
        self.deleted.insert(uuid.to_string());
    }

    pub fn get(&self, uuid: &str) -> Option<&Order> {
        self.seq_of.get(uuid).map(|seq| &self.by_seq[seq])
    }

    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// `count` orders, `per_second` of them sharing each revision second, the newest second
    /// `ago` seconds behind the store's clock, created oldest first. Returns that second.
    pub fn fill(&mut self, count: u64, per_second: u64, ago: i64) -> i64 {
        let newest = self.now() - ago;
        for i in 0..count {
            self.create_at(newest - ((count - 1 - i) / per_second) as i64);
        }
        newest
    }

    /// A live order picked at random.
    pub fn any(&self) -> String {
        let seq = *self.by_seq.keys().nth(rand::random_range(0..self.by_seq.len())).expect("an order");
        self.by_seq[&seq].uuid.clone()
    }

    /// What a busy store does between two pages: orders created, updated and deleted now.
    pub fn churn(&mut self, creates: usize, updates: usize, deletes: usize) {
        for _ in 0..creates {
            self.create();
        }
        for _ in 0..updates {
            let uuid = self.any();
            self.update(&uuid);
        }
        for _ in 0..deletes {
            let uuid = self.any();
            self.delete(&uuid);
        }
    }

    /// Every live order's document, by uuid.
    pub fn documents(&self) -> HashMap<String, String> {
        self.by_seq.values().map(|o| (o.uuid.clone(), o.document.clone())).collect()
    }

    /// The live orders the filters let through, newest-created first.
    fn listing(&self, f: &Filters) -> impl Iterator<Item = &Order> {
        let Filters { since, start, end } = *f;
        self.by_seq.values().rev().filter(move |o| since.is_none_or(|s| o.revision > s) && start.is_none_or(|s| o.date >= s) && end.is_none_or(|e| o.date <= e))
    }
}

/// The order's JSON as the store writes it.
fn document(o: &Order) -> String {
    let n = o.number;
    let cents = 1000 + n * 37 % 90_000 + u64::from(o.version);
    let money = |c: u64| format!("{}.{:02}", c / 100, c % 100);
    let (subtotal, tax, shipping) = (cents, cents * 21 / 100, 495);
    let total = subtotal + tax + shipping;
    let paid = if o.version % 2 == 0 { total } else { 0 };
    let line = format!("{}{}", &o.uuid[16..], &o.uuid[..16]);
    let product = format!("{:032x}", u128::from(n % 13) + 0x0642_9e75_a8ea_11de_80c0_9314_b8ee_4e52);
    format!(
        r#"{{"type": "orders", "uuid": "{uuid}", "revision": {revision}, "date": {date}, "number": "2026-{n}", "reference": "r{n:x}", "status": "{status}", "customer": {{"uuid": "{customer:032x}", "firstName": "Zoë", "lastName": "Łukasiewicz-Øster", "companyName": "Caf\u00e9 M\u00fcller \ud83d\ude00 {c}", "email": "buyer{c}@example.com"}}, "lines": [{{"type": "orderline", "uuid": "{line}", "productUUID": "{product}", "quantity": "2.5", "totalWeight": "1.0", "tax": "{tax}", "subtotal": "{subtotal}", "total": "{line_total}", "taxes": [{{"name": "BTW Hoog", "group": "STATE", "taxtype": "SALES", "rate": "21.0", "total": "{tax}"}}]}}], "payments": [{{"type": "payment", "uuid": "{line}", "date": {date}, "status": "{payment}", "total": "{paid}", "method": "creditcard", "name": "Kreditkarte", "gateway": "ach_direct", "currency": "EUR", "reference": "07B03856-{n:08}", "data": {{"score": 0.50, "checks": [true, null, 1e3]}}, "testing": false}}], "shipmentsSubTotal": "{shipping}", "productsSubTotal": "{subtotal}", "subtotal": "{sub_all}", "shipmentsTax": "0.00", "productsTax": "{tax}", "tax": "{tax}", "taxes": {{"BTW Hoog": "{tax}"}}, "shipmentsTotal": "{shipping}", "productsTotal": "{line_total}", "total": "{total}", "balance": "{balance}", "isPaid": {is_paid}, "note": "version {version}\n\tline two"}}"#,
        uuid = o.uuid,
        revision = o.revision,
        date = o.date,
        status = STATUSES[o.version as usize % 4],
        customer = n % 97,
        c = n % 97,
        tax = money(tax),
        subtotal = money(subtotal),
        line_total = money(subtotal + tax),
        payment = if paid > 0 { "processed" } else { "pending" },
        paid = money(paid),
        shipping = money(shipping),
        sub_all = money(subtotal + shipping),
        total = money(total),
        balance = money(total - paid),
        is_paid = paid > 0,
        version = o.version,
    )
}

type Shared = Arc<Mutex<Store>>;

/// A running webstore.
pub struct Webstore {
    /// The collection: `http://…/acme/api/v2/sales/orders.json`.
    pub url: String,
    store: Shared,
}

impl Webstore {
    pub async fn start(clock: Clock) -> Self {
        let store = Arc::new(Mutex::new(Store::new(clock)));
        let app = Router::new()
            .route("/{store}/api/v2/sales/orders.json", get(list))
            .route("/{store}/api/v2/sales/orders/{file}", get(one))
            .with_state(store.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url: format!("http://{address}/{STORE}/api/v2/sales/orders.json"), store }
    }

    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap()
    }

    /// What the store saw, with how the client took its 429s.
    pub fn seen(&self) -> Seen {
        let s = self.store();
        Seen { throttling: s.throttle.stats.clone(), ..s.seen.clone() }
    }

    /// Reads the topic until `check_topic` holds for it (its `tombstones` rule) and returns
    /// the tally; past the deadline, fails with what still differs.
    pub fn wait_for_topic(&self, topic: &str, tombstones: bool, deadline: StdDuration) -> Tally {
        let end = Instant::now() + deadline;
        loop {
            let events = read_topic(topic);
            let outcome = {
                let s = self.store();
                check_topic(&events, &s.documents(), &s.deleted, tombstones)
            };
            match outcome {
                Ok(tally) => return tally,
                Err(problem) if Instant::now() > end => panic!("{topic} after {deadline:?}: {problem}"),
                Err(_) => std::thread::sleep(StdDuration::from_millis(200)),
            }
        }
    }
}

/// What a topic holds, once it matches the store.
#[derive(Debug)]
pub struct Tally {
    pub events: usize,
    /// Keys of deleted orders that were published, and their tombstones.
    pub deleted_keys: usize,
    pub tombstones: usize,
    /// Versions beyond the first of each key (tombstones not counted).
    pub duplicates: usize,
    /// Keys whose only events are tombstones: deletions of orders never published.
    pub bare_tombstones: usize,
}

fn is_tombstone(e: &Event) -> bool {
    e.value.is_none() && e.headers.get("ce_type").map(String::as_str) == Some("sales_order.deleted")
}

/// Whether the topic ends as the store stands: every live order's last event is its
/// current document, byte for byte, with `ce_time` its revision, and no live order ever
/// had a tombstone; no key of an order the store never had; with `tombstones`, every
/// deleted order that was published ends with a `sales_order.deleted` tombstone, without,
/// there are none. Otherwise, what differs.
pub fn check_topic(events: &[Event], live: &HashMap<String, String>, deleted: &BTreeSet<String>, tombstones: bool) -> Result<Tally, String> {
    let latest = latest_by_key(events);
    let mut missing = Vec::new();
    for (uuid, doc) in live {
        match latest.get(uuid) {
            Some(e) if e.value.as_deref() == Some(doc.as_bytes()) => {
                let revision: serde_json::Value = serde_json::from_str(doc).unwrap();
                let time = order_cdc::timestamp::format(DateTime::from_timestamp(revision["revision"].as_i64().unwrap(), 0).unwrap());
                if e.headers.get("ce_time") != Some(&time) {
                    return Err(format!("order {uuid}: ce_time {:?}, its revision is {time}", e.headers.get("ce_time")));
                }
            }
            _ => missing.push(uuid),
        }
    }
    if !missing.is_empty() {
        return Err(format!("{} of {} live orders lack their current version last, e.g. {:?}", missing.len(), live.len(), &missing[..missing.len().min(3)]));
    }
    if let Some(e) = events.iter().find(|e| is_tombstone(e) && live.contains_key(&e.key)) {
        return Err(format!("a tombstone for live order {} (offset {} of partition {})", e.key, e.offset, e.partition));
    }
    if let Some(stranger) = latest.keys().find(|k| !live.contains_key(*k) && !deleted.contains(*k)) {
        return Err(format!("key {stranger} is no order of the store"));
    }
    let deleted_keys: Vec<&Event> = latest.values().filter(|e| deleted.contains(&e.key)).collect();
    let ended = deleted_keys.iter().filter(|e| is_tombstone(e)).count();
    let tombstones_seen = events.iter().filter(|e| is_tombstone(e)).count();
    if tombstones && ended < deleted_keys.len() {
        return Err(format!("{} of {} published deleted orders do not end with a tombstone", deleted_keys.len() - ended, deleted_keys.len()));
    }
    if !tombstones && tombstones_seen > 0 {
        return Err(format!("{tombstones_seen} tombstones with reconcile off"));
    }
    let versioned: HashSet<&str> = events.iter().filter(|e| !is_tombstone(e)).map(|e| e.key.as_str()).collect();
    Ok(Tally {
        events: events.len(),
        deleted_keys: deleted_keys.len(),
        tombstones: tombstones_seen,
        duplicates: events.len() - tombstones_seen - versioned.len(),
        bare_tombstones: latest.keys().filter(|k| !versioned.contains(k.as_str())).count(),
    })
}

impl<'a> Pipeline<'a> {
    /// A pipeline that walks a seed-003 webstore with this Bearer token (`extra`: more
    /// source lines).
    pub fn webstore_api(topic: &'a str, url: &str, token: &str, extra: &str) -> Self {
        let mut p = Self::new("", topic);
        p.source = Some(source(url, token, extra));
        p
    }
}

/// The body of a `webstore_api` source table.
pub fn source(url: &str, token: &str, extra: &str) -> String {
    format!("kind = \"webstore_api\"\nurl = \"{url}\"\nheaders = {{ Authorization = \"Bearer {token}\" }}\n{extra}")
}

/// The decoded query of a request.
fn query(uri: &Uri) -> HashMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect()
}

/// What every request passes first: it is recorded, then the token, the queued 429s and
/// 503s; the answer if it does not pass.
fn admit(s: &mut Store, headers: &HeaderMap, uri: &Uri, params: &HashMap<String, String>) -> Option<Response> {
    s.seen.requests.push((uri.path().to_string(), params.clone()));
    let expected = format!("Bearer {TOKEN}");
    match headers.get("authorization") {
        None => {
            s.seen.unauthorized += 1;
            return Some(error(StatusCode::UNAUTHORIZED, "unauthorized", "Authentication required: send Authorization: Bearer <token>."));
        }
        Some(v) if v.as_bytes() != expected.as_bytes() => {
            s.seen.unauthorized += 1;
            return Some(error(StatusCode::UNAUTHORIZED, "invalid_token", "The access token is invalid or has expired."));
        }
        Some(_) => {}
    }
    if let Some(refused) = s.throttle.check(&uri.to_string()) {
        return Some(refused);
    }
    if s.unavailable > 0 {
        s.unavailable -= 1;
        s.seen.unavailable += 1;
        return Some(error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "The service is temporarily unavailable."));
    }
    None
}

/// The listing's and the count's filters.
#[derive(Clone, Copy)]
struct Filters {
    since: Option<i64>,
    start: Option<i64>,
    end: Option<i64>,
}

/// The listing's parameters, validated.
struct Listing {
    size: usize,
    page: usize,
    filters: Filters,
}

fn validate(params: &HashMap<String, String>) -> Result<Listing, (StatusCode, String)> {
    fn number<T: std::str::FromStr>(params: &HashMap<String, String>, name: &str) -> Result<Option<T>, (StatusCode, String)> {
        params.get(name).map(|v| v.parse().map_err(|_| (StatusCode::BAD_REQUEST, format!("{name} must be a whole number.")))).transpose()
    }
    let size = number(params, "size")?.unwrap_or(40);
    if !SIZES.contains(&size) {
        return Err((StatusCode::UNPROCESSABLE_ENTITY, "size is limited to 20, 40 or 80.".into()));
    }
    let filters = Filters { since: number(params, "since")?, start: number(params, "startDate")?, end: number(params, "endDate")? };
    Ok(Listing { size, page: number(params, "page")?.unwrap_or(0), filters })
}

/// A 400 or 422, noted.
fn refuse(s: &mut Store, (status, message): (StatusCode, String)) -> Response {
    s.seen.refused.push((status.as_u16(), message.clone()));
    let kind = if status == StatusCode::UNPROCESSABLE_ENTITY { "validation_error" } else { "invalid_parameter" };
    error(status, kind, &message)
}

/// A 200 with the store's `Date`.
fn ok(s: &Store, body: String) -> Response {
    ([("content-type", "application/json; charset=utf-8"), ("date", http_date(s.clock.now()).as_str())], body).into_response()
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "No such resource.")
}

async fn list(State(store): State<Shared>, Path(handle): Path<String>, headers: HeaderMap, uri: Uri) -> Response {
    let mut s = store.lock().unwrap();
    let s = &mut *s;
    let params = query(&uri);
    if let Some(refused) = admit(s, &headers, &uri, &params) {
        return refused;
    }
    if handle != STORE {
        return not_found();
    }
    let listing = match validate(&params) {
        Ok(listing) => listing,
        Err(refusal) => return refuse(s, refusal),
    };
    if let Some(mut hook) = s.hook.take() {
        let pages = s.seen.pages;
        hook(s, pages);
        s.hook.get_or_insert(hook);
    }
    s.seen.pages += 1;
    let orders: Vec<&str> = s.listing(&listing.filters).skip(listing.page * listing.size).take(listing.size).map(|o| o.document.as_str()).collect();
    let array = format!("[{}]", orders.join(", "));
    let body = match s.shape {
        Shape::Array => array,
        Shape::Wrapped => format!("{{\"orders\": {array}}}"),
    };
    ok(s, body)
}

/// `count.json` or `<uuid>.json`.
async fn one(State(store): State<Shared>, Path((handle, file)): Path<(String, String)>, headers: HeaderMap, uri: Uri) -> Response {
    let mut s = store.lock().unwrap();
    let s = &mut *s;
    let params = query(&uri);
    if let Some(refused) = admit(s, &headers, &uri, &params) {
        return refused;
    }
    let Some(name) = file.strip_suffix(".json").filter(|_| handle == STORE) else { return not_found() };
    if name == "count" {
        let filters = match validate(&params) {
            Ok(listing) => listing.filters,
            Err(refusal) => return refuse(s, refusal),
        };
        s.seen.counts += 1;
        let count = s.listing(&filters).count();
        return ok(s, count.to_string());
    }
    s.seen.singles += 1;
    match s.get(name).map(|o| o.document.clone()) {
        Some(document) => ok(s, document),
        None => not_found(),
    }
}
