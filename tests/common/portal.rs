//! A second implementation of seed 002's `GET /api/orders/`, started inside the test
//! process over in-memory orders, written the way a real wholesale portal may differ from
//! ours while keeping to the document:
//! - its timestamps are whole seconds, zone-less, in its own format (`2025-03-24T10:42:18`)
//!   and its own zone (India Standard Time, so the daemon needs `timezone`);
//! - its clock is off from ours by tens of seconds; that clock stamps `updated_at` and
//!   writes the `Date` header;
//! - orders sharing an `updated_at` are listed in an undocumented order (not by id), and
//!   pages are OFFSET slices of the orders as they are when each page is asked for, so an
//!   update or an insert during a walk moves everything behind it;
//! - it takes the key only in the `X-API-Key` header (the `api_key` parameter is refused),
//!   answers 401 with the seed's error JSON, 422 for `per_page` above 250, and, when the
//!   test asks, 429 with `Retry-After`;
//! - a hook the test sets runs before each page is answered, to update and create orders
//!   while a walk is in progress.
//!
//! It records what it was asked and how, so tests can check the client's manners.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, Utc};

pub use super::double::Clock;
use super::double::{error, http_date, Throttle};
use super::Pipeline;

pub const API_KEY: &str = "portal-key-5f0c2d9e8a7b41c3";
/// The portal's zone, as the daemon is told it.
pub const TIMEZONE: &str = "Asia/Kolkata";
pub const INCLUDE_ALL: &[&str] = &["items", "shipments", "status_history"];
const SORTABLE: &[&str] = &["created_at", "updated_at", "placed_at", "grand_total", "order_number", "status", "customer_name"];

/// Asia/Kolkata has had no daylight saving time since 1945: a fixed offset is that zone.
fn zone() -> FixedOffset {
    FixedOffset::east_opt(5 * 3600 + 1800).unwrap()
}

/// The portal's wall-clock reading (zone-less, as its database keeps it) of an instant.
pub fn local(t: DateTime<Utc>) -> NaiveDateTime {
    t.with_timezone(&zone()).naive_local()
}

/// The instant a portal timestamp stands for.
pub fn instant(local: NaiveDateTime) -> DateTime<Utc> {
    local.and_local_timezone(zone()).unwrap().with_timezone(&Utc)
}

/// The portal's own timestamp format.
fn stamp(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// One order as the portal's database holds it.
#[derive(Clone)]
pub struct Order {
    pub id: u64,
    pub status: &'static str,
    /// Bumped by each update, so every version's document differs.
    pub version: u32,
    pub created: NaiveDateTime,
    pub updated: NaiveDateTime,
    /// Where the order sits among those sharing its `updated_at`: its row's place in the
    /// heap, which moves when the row is rewritten.
    tie: u64,
}

/// Runs before a page is answered: (the portal, how many pages it has answered so far).
pub type Hook = Box<dyn FnMut(&mut Orders, u64) + Send>;

/// What the portal saw of its clients.
#[derive(Default, Debug, Clone)]
pub struct Seen {
    /// Every request's query, in arrival order.
    pub queries: Vec<HashMap<String, String>>,
    pub pages: u64,
    pub unauthorized: u64,
    pub key_in_query: u64,
    /// How the client took the 429s (`Portal::seen` fills these from the throttle).
    pub throttled: u64,
    /// Throttled requests asked again, and those asked again before their `Retry-After`.
    pub retried: u64,
    pub early_retries: u64,
    /// Shortest wait between a 429 and the repeat of that request, in milliseconds.
    pub shortest_wait_ms: Option<u128>,
    /// 400 and 422 answers, with their messages.
    pub refused: Vec<(u16, String)>,
}

pub struct Orders {
    pub by_id: BTreeMap<u64, Order>,
    pub clock: Clock,
    pub hook: Option<Hook>,
    /// 429s for the next requests (`push_back(retry_after_seconds)`).
    pub throttle: Throttle,
    pub seen: Seen,
}

impl Orders {
    fn new(clock: Clock) -> Self {
        Self { by_id: BTreeMap::new(), clock, hook: None, throttle: Throttle::default(), seen: Seen::default() }
    }

    /// The portal's clock, in whole seconds (its database keeps no more).
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Creates (or overwrites) an order updated at `updated`, in the portal's wall clock.
    pub fn put(&mut self, id: u64, status: &'static str, updated: NaiveDateTime) {
        let version = self.by_id.get(&id).map_or(1, |o| o.version + 1);
        let created = self.by_id.get(&id).map_or(updated, |o| o.created);
        self.by_id.insert(id, Order { id, status, version, created, updated, tie: rand::random() });
    }

    /// A new order, updated now.
    pub fn create(&mut self, id: u64, status: &'static str) {
        let now = local(self.now());
        self.put(id, status, now);
    }

    /// An existing order changed now: a new version, moved to the portal's now.
    pub fn touch(&mut self, id: u64) {
        let now = local(self.now());
        let status = self.by_id[&id].status;
        self.put(id, status, now);
    }

    /// What a busy portal does between two pages: `updates` random orders change (moving
    /// out of any window that ends before now, so everything behind them moves up a
    /// place) and one new order appears.
    pub fn churn(&mut self, updates: usize) {
        let last = *self.by_id.keys().next_back().expect("an order");
        for _ in 0..updates {
            self.touch(rand::random_range(1..=last));
        }
        self.create(last + 1, "confirmed");
    }

    /// Every order's document as the daemon should have published it last (all sections
    /// included), by key.
    pub fn documents(&self) -> HashMap<String, String> {
        self.by_id.values().map(|o| (o.id.to_string(), document(o, INCLUDE_ALL))).collect()
    }
}

/// The order's JSON as the portal writes it: spaces after separators, decimals with two
/// places (`1275.00`, which a re-encoding would change), a non-ASCII name.
pub fn document(o: &Order, include: &[&str]) -> String {
    let id = o.id;
    let cents = 1000 + id * 37 % 90_000 + u64::from(o.version);
    let money = |c: u64| format!("{}.{:02}", c / 100, c % 100);
    let (subtotal, tax, shipping) = (cents, cents / 10, 1500);
    let created = stamp(o.created);
    let updated = stamp(o.updated);
    let mut doc = format!(
        r#"{{"id": {id}, "order_number": "SO-{id}", "customer": {{"id": {c}, "name": "Großhandel Müller {c}", "code": "GM{c}", "email": "buyer{c}@example.com"}}, "user_id": 77, "currency": "EUR", "status": "{status}", "po_number": "PO-{id}", "notes": "version {version}", "totals": {{"subtotal": {subtotal}, "discount_total": 0.00, "tax_total": {tax}, "shipping_total": {shipping}, "grand_total": {grand}}}, "placed_at": "{created}", "created_at": "{created}", "updated_at": "{updated}""#,
        c = id % 97,
        status = o.status,
        version = o.version,
        subtotal = money(subtotal),
        tax = money(tax),
        shipping = money(shipping),
        grand = money(subtotal + tax + shipping),
    );
    if include.contains(&"items") {
        doc += &format!(r#", "items": [{{"sku": "SKU-{s}", "name": "Widget {s}", "qty": {q}, "unit_price": {p}, "line_total": {p}}}]"#, s = id % 13, q = 1, p = money(subtotal));
    }
    if include.contains(&"shipments") {
        let shipments = if o.status == "shipped" { format!(r#"{{"carrier": "DHL", "tracking": "JD{id:010}", "shipped_at": "{updated}"}}"#) } else { String::new() };
        doc += &format!(r#", "shipments": [{shipments}]"#);
    }
    if include.contains(&"status_history") {
        doc += &format!(r#", "status_history": [{{"status": "pending", "by": "user 77", "at": "{created}"}}, {{"status": "{}", "by": "system", "at": "{updated}"}}]"#, o.status);
    }
    doc + "}"
}

type Shared = Arc<Mutex<Orders>>;

/// A running portal.
pub struct Portal {
    pub url: String,
    orders: Shared,
}

impl Portal {
    pub async fn start(clock: Clock) -> Self {
        let orders = Arc::new(Mutex::new(Orders::new(clock)));
        let app = Router::new().route("/api/orders/", get(list)).with_state(orders.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url: format!("http://{address}/api/orders/"), orders }
    }

    pub fn orders(&self) -> MutexGuard<'_, Orders> {
        self.orders.lock().unwrap()
    }

    /// What the portal saw, with how the client took its 429s.
    pub fn seen(&self) -> Seen {
        let o = self.orders();
        let t = &o.throttle.stats;
        Seen { throttled: t.throttled, retried: t.retried, early_retries: t.early_retries, shortest_wait_ms: t.shortest_wait_ms, ..o.seen.clone() }
    }
}

impl<'a> Pipeline<'a> {
    /// A pipeline that walks a seed-002 orders API (`extra`: more source lines).
    pub fn orders_api(topic: &'a str, url: &str, api_key: &str, extra: &str) -> Self {
        let mut p = Self::new("", topic);
        p.source = Some(format!("kind = \"orders_api\"\nurl = \"{url}\"\napi_key = \"{api_key}\"\n{extra}"));
        p
    }
}

/// A `date_from`/`date_to` value: a datetime with a space or a `T`, or a bare date, which
/// stands for the start (`from`) or the end of its day.
fn parse_time(value: &str, from: bool) -> Option<NaiveDateTime> {
    if let Ok(t) = NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S").or_else(|_| NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S")) {
        return Some(t);
    }
    let day = NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()?;
    if from { day.and_hms_opt(0, 0, 0) } else { day.and_hms_opt(23, 59, 59) }
}

/// A sort key's value for one order.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Time(NaiveDateTime),
    Number(u64),
    Text(String),
}

fn sort_key(o: &Order, field: &str) -> Key {
    match field {
        "created_at" | "placed_at" => Key::Time(o.created),
        "updated_at" => Key::Time(o.updated),
        "grand_total" => Key::Number(o.id * 37 % 90_000),
        "order_number" => Key::Text(format!("SO-{}", o.id)),
        "status" => Key::Text(o.status.into()),
        _ => Key::Text(format!("Großhandel Müller {}", o.id % 97)),
    }
}

/// The query's parameters, decoded; a throttled request is known again by its raw query.
struct Request {
    raw: String,
    params: HashMap<String, String>,
}

/// A page's validated parameters.
struct Page {
    column: String,
    from: Option<NaiveDateTime>,
    to: Option<NaiveDateTime>,
    statuses: Option<Vec<String>>,
    include: Vec<&'static str>,
    sort: Vec<(String, bool)>,
    page: usize,
    per_page: usize,
}

fn bad(message: String) -> (StatusCode, &'static str, String) {
    (StatusCode::BAD_REQUEST, "invalid_parameter", message)
}

fn validate(q: &HashMap<String, String>) -> Result<Page, (StatusCode, &'static str, String)> {
    let column = q.get("filter_on").cloned().unwrap_or_else(|| "created_at".into());
    if !["created_at", "updated_at", "placed_at"].contains(&column.as_str()) {
        return Err(bad(format!("filter_on must be created_at, updated_at or placed_at, not '{column}'.")));
    }
    let time = |name: &str, from: bool| match q.get(name) {
        None => Ok(None),
        Some(v) => parse_time(v, from).map(Some).ok_or_else(|| bad(format!("{name} must be YYYY-MM-DD or YYYY-MM-DD HH:MM:SS."))),
    };
    let from = time("date_from", true)?.max(if column == "updated_at" { time("updated_since", true)? } else { None });
    let to = time("date_to", false)?;
    let include = match q.get("include") {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|name| INCLUDE_ALL.iter().copied().find(|known| *known == name).ok_or_else(|| bad(format!("include: unknown relation '{name}'."))))
            .collect::<Result<_, _>>()?,
    };
    let sort = q
        .get("sort")
        .map_or("created_at", String::as_str)
        .split(',')
        .map(|f| {
            let (field, descending) = f.strip_prefix('-').map_or((f, false), |f| (f, true));
            if SORTABLE.contains(&field) { Ok((field.to_string(), descending)) } else { Err(bad(format!("sort: '{field}' is not a sortable field."))) }
        })
        .collect::<Result<_, _>>()?;
    let number = |name: &str, default: usize| match q.get(name) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().map_err(|_| bad(format!("{name} must be a whole number."))),
    };
    let page = number("page", 1)?;
    let per_page = number("per_page", 50)?;
    if page == 0 {
        return Err(bad("page must be 1 or more.".into()));
    }
    if !(1..=250).contains(&per_page) {
        return Err((StatusCode::UNPROCESSABLE_ENTITY, "validation_error", "per_page must be between 1 and 250.".into()));
    }
    for name in ["customer_id", "user_id"] {
        if q.get(name).is_some_and(|v| v.parse::<u64>().is_err()) {
            return Err(bad(format!("{name} must be a whole number.")));
        }
    }
    let statuses = q.get("status").map(|s| s.split(',').map(str::to_string).collect());
    Ok(Page { column, from, to, statuses, include, sort, page, per_page })
}

async fn list(State(orders): State<Shared>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let raw = raw.unwrap_or_default();
    let params = url::form_urlencoded::parse(raw.as_bytes()).into_owned().collect();
    let mut o = orders.lock().unwrap();
    answer(&mut o, &headers, Request { raw, params })
}

fn answer(o: &mut Orders, headers: &HeaderMap, request: Request) -> Response {
    let started = Instant::now();
    o.seen.queries.push(request.params.clone());
    if request.params.contains_key("api_key") {
        o.seen.key_in_query += 1;
        return error(StatusCode::BAD_REQUEST, "api_key_not_accepted", "The api_key parameter is disabled on this portal; send the key in the X-API-Key header.");
    }
    match headers.get("x-api-key").map(|v| v.as_bytes()) {
        None => {
            o.seen.unauthorized += 1;
            return error(StatusCode::UNAUTHORIZED, "missing_api_key", "api_key is required (use X-API-Key header or api_key param).");
        }
        Some(key) if key != API_KEY.as_bytes() => {
            o.seen.unauthorized += 1;
            return error(StatusCode::UNAUTHORIZED, "invalid_api_key", "The API key is invalid.");
        }
        Some(_) => {}
    }
    if let Some(refused) = o.throttle.check(&request.raw) {
        return refused;
    }
    let page = match validate(&request.params) {
        Ok(page) => page,
        Err((status, kind, message)) => {
            o.seen.refused.push((status.as_u16(), message.clone()));
            return error(status, kind, &message);
        }
    };
    if let Some(mut hook) = o.hook.take() {
        let pages = o.seen.pages;
        hook(o, pages);
        o.hook.get_or_insert(hook);
    }
    o.seen.pages += 1;
    let mut rows: Vec<&Order> = o
        .by_id
        .values()
        .filter(|r| {
            let at = if page.column == "updated_at" { r.updated } else { r.created };
            page.from.is_none_or(|f| at >= f) && page.to.is_none_or(|t| at <= t) && page.statuses.as_ref().is_none_or(|s| s.iter().any(|s| s == r.status))
        })
        .collect();
    rows.sort_by(|a, b| {
        page.sort
            .iter()
            .map(|(field, descending)| {
                let order = sort_key(a, field).cmp(&sort_key(b, field));
                if *descending { order.reverse() } else { order }
            })
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.tie.cmp(&b.tie))
    });
    let total = rows.len();
    let data: Vec<String> = rows.iter().skip((page.page - 1) * page.per_page).take(page.per_page).map(|r| document(r, &page.include)).collect();
    let filters: serde_json::Map<String, serde_json::Value> =
        request.params.iter().filter(|(k, _)| !["page", "per_page", "sort", "include"].contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone().into())).collect();
    let meta = serde_json::json!({
        "tenant_id": 123,
        "filters": filters,
        "pagination": { "page": page.page, "per_page": page.per_page, "total": total, "total_pages": total.div_ceil(page.per_page) },
        "sort": request.params.get("sort").cloned().unwrap_or_else(|| "created_at".into()),
        "timings_ms": { "total": started.elapsed().as_millis() },
    });
    let body = format!("{{\"meta\": {meta}, \"data\": [{}]}}", data.join(", "));
    ([("content-type", "application/json; charset=utf-8"), ("date", http_date(o.now()).as_str())], body).into_response()
}
