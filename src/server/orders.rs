//! `GET /api/orders/` (seed 002): the wholesale portal's order listing over the reference
//! schema, with its filters, sorting and page numbers.
//!
//! Clients sync with it by time windows (`filter_on=updated_at&date_from=..&date_to=..`,
//! `updated_since`), so the window rules are exact and documented: lower bounds are
//! inclusive, upper bounds include the whole second (or day) given, and every sort ends
//! with `id`, so a page boundary falls in the same place on every request. Only active
//! orders are listed, as in the export.
//!
//! Each order's JSON is built by PostgreSQL (like the export's) for the rows of the page
//! only, and the body is assembled from that text: documents are never parsed here.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, SubsecRound, TimeDelta, Utc};
use serde_json::{json, Map, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::IsolationLevel;

use super::auth::Tokens;
use super::error::ApiError;
use super::AppState;
use crate::store::document::{array, object, Json};
use crate::timestamp;

pub const DEFAULT_PER_PAGE: i64 = 50;
pub const MAX_PER_PAGE: i64 = 250;
/// The last page whose offset fits in 64 bits at every per_page: one bound, whatever the
/// page size, so the document can state it.
pub const MAX_PAGE: i64 = i64::MAX / MAX_PER_PAGE + 1;

/// The seed's sortable fields and the SQL each sorts by (over `t`, the order, and `c`,
/// its customer). `id` is deliberately absent: it is the implicit last key.
const SORTABLE: &[(&str, &str)] = &[
    ("created_at", "t.created_at"),
    ("updated_at", "t.updated_at"),
    ("placed_at", "t.placed_at"),
    ("grand_total", "t.total_amount"),
    ("order_number", "t.order_number"),
    ("status", "t.order_status"),
    ("customer_name", CUSTOMER_NAME),
];

/// The customer shown and searched: the customer record, or what the order itself says
/// of its buyer when it has none (orders written before customers existed).
pub(super) const CUSTOMER_NAME: &str = "coalesce(c.name, t.customer_username)";
const CUSTOMER_EMAIL: &str = "coalesce(c.email, t.customer_email)";

/// The columns `filter_on` may name.
const FILTER_ON: &[&str] = &["created_at", "updated_at", "placed_at"];

/// The related records `include` may name, in the order they appear in a document.
const INCLUDES: &[&str] = &["items", "shipments", "status_history"];

/// Parameters this route reads; others are ignored, as the export ignores them.
pub(super) type Pairs = [(String, String)];

pub(super) type Param = Box<dyn ToSql + Sync + Send>;

/// A parameter in a format we cannot read: 400.
pub(super) fn bad(param: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_parameter", format!("{param}: {message}"))
}

/// A parameter we read but cannot serve: 422.
fn unacceptable(param: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable_parameter", format!("{param}: {message}"))
}

/// The last non-empty value of a parameter: an empty value (`?q=`) is an unset filter.
/// Only an empty one: a number, time or name padded with spaces (`?page=+`) is not the
/// value the OpenAPI document allows, so it is read as given and refused.
pub(super) fn value<'a>(pairs: &'a Pairs, name: &str) -> Option<&'a str> {
    pairs.iter().rev().find(|(k, v)| k == name && !v.is_empty()).map(|(_, v)| v.as_str())
}

/// Free text, where spaces around a word mean nothing and only spaces are no filter.
fn trimmed<'a>(pairs: &'a Pairs, name: &str) -> Option<&'a str> {
    value(pairs, name).map(str::trim).filter(|v| !v.is_empty())
}

/// Text that goes to PostgreSQL, which cannot hold NUL characters.
pub(super) fn text<'a>(pairs: &'a Pairs, name: &str) -> Result<Option<&'a str>, ApiError> {
    match trimmed(pairs, name) {
        Some(v) if v.contains('\0') => Err(bad(name, "must not contain NUL characters")),
        other => Ok(other),
    }
}

pub(super) fn integer(pairs: &Pairs, name: &str) -> Result<Option<i64>, ApiError> {
    value(pairs, name).map(|v| decimal(v).ok_or_else(|| bad(name, format!("must be an integer, not {v:?}")))).transpose()
}

/// An integer as the OpenAPI document writes one: digits, perhaps after a `-`. Rust's
/// parse also takes a leading `+`, which is not an integer's value in the document.
pub(super) fn decimal(v: &str) -> Option<i64> {
    v.strip_prefix('+').is_none().then(|| v.parse().ok()).flatten()
}

/// A money amount as PostgreSQL `numeric` text (`100`, `100.5`), and its value to compare.
fn amount(pairs: &Pairs, name: &str) -> Result<Option<(String, f64)>, ApiError> {
    let Some(v) = value(pairs, name) else { return Ok(None) };
    let (whole, fraction) = v.strip_prefix('-').unwrap_or(v).split_once('.').unwrap_or((v.strip_prefix('-').unwrap_or(v), "0"));
    let digits = |s: &str, max: usize| !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole, 15) || !digits(fraction, 12) {
        return Err(bad(name, format!("must be an amount such as 100 or 100.50, not {v:?}")));
    }
    let number: f64 = v.parse().map_err(|_| bad(name, format!("must be an amount, not {v:?}")))?;
    if number < 0.0 {
        return Err(unacceptable(name, "must not be negative"));
    }
    Ok(Some((v.to_string(), number)))
}

/// Which end of a range a time bounds.
#[derive(Clone, Copy)]
enum End {
    /// Inclusive: `col >= t`.
    From,
    /// Through the end of the second (or day) given: `col < t + 1s` (`col < day + 1 day`).
    To,
}

/// A range bound: for `From` the first instant included, for `To` the first excluded.
fn bound(pairs: &Pairs, name: &str, end: End) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(raw) = value(pairs, name) else { return Ok(None) };
    let day = (raw.len() == 10).then(|| NaiveDate::parse_from_str(raw, "%Y-%m-%d").ok()).flatten();
    let at = match (day, end) {
        (Some(d), End::From) => d.and_hms_opt(0, 0, 0).expect("midnight").and_utc(),
        (Some(d), End::To) => (d + TimeDelta::days(1)).and_hms_opt(0, 0, 0).expect("midnight").and_utc(),
        (None, End::From) => timestamp::parse(raw).map_err(|e| bad(name, e))?,
        (None, End::To) => timestamp::parse(raw).map_err(|e| bad(name, e))?.trunc_subsecs(0) + TimeDelta::seconds(1),
    };
    // PostgreSQL's range is wider, but no order lives outside this one, and staying in it
    // keeps every bound (and its echo) printable as YYYY-MM-DD. An upper bound is echoed
    // as the last instant it includes: 9999-12-31 is a bound, though its end is in 10000.
    let included = match end {
        End::From => at,
        End::To => at - TimeDelta::seconds(1),
    };
    if !timestamp::representable(included) {
        return Err(bad(name, format!("{raw:?} is outside the years 0001 to 9999")));
    }
    Ok(Some(at))
}

/// A time as seed 002 writes it (with a fraction only when the input had one).
fn seed_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.f").to_string()
}

/// The inclusive end of a `To` bound, as a client would have written it.
fn seed_end(t: DateTime<Utc>) -> String {
    seed_time(t - TimeDelta::seconds(1))
}

/// A validated request: the SQL of its page and its total, with their parameters.
pub struct Listing {
    /// `SELECT count(*)` of the matching orders; takes `params[..count_params]`.
    pub count_sql: String,
    /// The page's documents as JSON text, in order; takes every parameter.
    pub page_sql: String,
    pub params: Vec<Param>,
    pub count_params: usize,
    pub page: i64,
    pub per_page: i64,
    /// The applied filters, normalised, for `meta.filters`.
    pub filters: Map<String, Value>,
    /// The sort as given (or the default), for `meta.sort`.
    pub sort: String,
}

impl Listing {
    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        borrowed(&self.params)
    }

    /// Reads the query string's parameters (decoded pairs) into the SQL over `schema`.
    pub fn parse(pairs: &Pairs, schema: &str) -> Result<Self, ApiError> {
        let mut w = Where::default();
        let mut filters = Map::new();

        if let Some(raw) = text(pairs, "status")? {
            let statuses: Vec<String> = raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
            if !statuses.is_empty() {
                filters.insert("status".into(), json!(statuses));
                let p = w.bind(statuses);
                w.and(format!("t.order_status = ANY({p})"));
            }
        }
        for (name, column) in [("customer_id", "t.customer_id"), ("user_id", "t.user_id")] {
            if let Some(id) = integer(pairs, name)? {
                filters.insert(name.into(), json!(id));
                let p = w.bind(id);
                w.and(format!("{column} = {p}"));
            }
        }
        for (name, column) in [("order_number", "t.order_number"), ("po_number", "t.customer_po_number")] {
            if let Some(v) = text(pairs, name)? {
                filters.insert(name.into(), json!(v));
                let p = w.bind(v.to_string());
                w.and(format!("{column} = {p}"));
            }
        }
        if let Some(q) = text(pairs, "q")? {
            filters.insert("q".into(), json!(q));
            let escaped: String = q.chars().flat_map(|c| if matches!(c, '\\' | '%' | '_') { vec!['\\', c] } else { vec![c] }).collect();
            let p = w.bind(format!("%{escaped}%"));
            w.and(format!(
                "(t.order_number ILIKE {p} OR {CUSTOMER_NAME} ILIKE {p} OR c.code ILIKE {p} OR t.customer_po_number ILIKE {p})"
            ));
        }
        let min = amount(pairs, "min_total")?;
        let max = amount(pairs, "max_total")?;
        if let (Some((_, lo)), Some((_, hi))) = (&min, &max) {
            if lo > hi {
                return Err(unacceptable("min_total", "must not be greater than max_total"));
            }
        }
        for (name, op, given) in [("min_total", ">=", min), ("max_total", "<=", max)] {
            if let Some((text, number)) = given {
                filters.insert(name.into(), json!(number));
                let p = w.bind(text);
                w.and(format!("t.total_amount {op} {p}::text::numeric"));
            }
        }

        let filter_on = match value(pairs, "filter_on") {
            None => "created_at",
            Some(v) => FILTER_ON
                .iter()
                .find(|c| **c == v)
                .ok_or_else(|| bad("filter_on", format!("must be one of {}, not {v:?}", FILTER_ON.join(", "))))?,
        };
        let ranges = [(filter_on, "date_from", "date_to"), ("placed_at", "placed_from", "placed_to")];
        for (column, from_name, to_name) in ranges {
            let from = bound(pairs, from_name, End::From)?;
            let to = bound(pairs, to_name, End::To)?;
            if let (Some(f), Some(t)) = (from, to) {
                if f >= t {
                    return Err(unacceptable(from_name, format!("must not be after {to_name}")));
                }
            }
            if from_name == "date_from" && (from.is_some() || to.is_some() || value(pairs, "filter_on").is_some()) {
                filters.insert("filter_on".into(), json!(column));
            }
            if let Some(f) = from {
                filters.insert(from_name.into(), json!(seed_time(f)));
                let p = w.bind(f);
                w.and(format!("t.{column} >= {p}"));
            }
            if let Some(t) = to {
                filters.insert(to_name.into(), json!(seed_end(t)));
                let p = w.bind(t);
                w.and(format!("t.{column} < {p}"));
            }
        }
        if let Some(since) = bound(pairs, "updated_since", End::From)? {
            filters.insert("updated_since".into(), json!(seed_time(since)));
            let p = w.bind(since);
            w.and(format!("t.updated_at >= {p}"));
        }

        let include = includes(pairs)?;
        let (sort, order) = sort(pairs)?;

        let per_page = match integer(pairs, "per_page")? {
            None => DEFAULT_PER_PAGE,
            Some(n) if (1..=MAX_PER_PAGE).contains(&n) => n,
            Some(n) => return Err(unacceptable("per_page", format!("must be from 1 to {MAX_PER_PAGE}, not {n}"))),
        };
        let page = match integer(pairs, "page")? {
            None => 1,
            Some(n) if (1..=MAX_PAGE).contains(&n) => n,
            Some(n) => return Err(unacceptable("page", format!("must be from 1 to {MAX_PAGE}, not {n}"))),
        };
        let offset = (page - 1) * per_page;

        let count_params = w.params.len();
        let from = format!("{schema}.sales_orders t LEFT JOIN {schema}.customers c ON c.id = t.customer_id");
        let conditions = w.conditions.join(" AND ");
        let count_sql = format!("SELECT count(*) FROM {from} WHERE {conditions}");
        let limit = w.bind(per_page);
        let offset = w.bind(offset);
        // The page's ids first (an index walk), then the documents of those rows alone:
        // rows skipped by OFFSET never have a document built.
        let page_sql = format!(
            "SELECT ({document})::text\n  FROM (SELECT t.id FROM {from} WHERE {conditions} ORDER BY {order} LIMIT {limit} OFFSET {offset}) p\n  JOIN {from} ON t.id = p.id\n ORDER BY {order}",
            document = document(schema, &include),
        );
        Ok(Self { count_sql, page_sql, params: w.params, count_params, page, per_page, filters, sort })
    }
}

/// Boxed parameters as the driver takes them.
pub(super) fn borrowed(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
}

/// The WHERE clause being built, with its numbered parameters.
pub(super) struct Where {
    pub(super) conditions: Vec<String>,
    pub(super) params: Vec<Param>,
}

impl Default for Where {
    fn default() -> Self {
        Self { conditions: vec!["t.status = 'Active'".into()], params: Vec::new() }
    }
}

impl Where {
    pub(super) fn bind(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    pub(super) fn and(&mut self, condition: String) {
        self.conditions.push(condition);
    }
}

fn includes(pairs: &Pairs) -> Result<Vec<&'static str>, ApiError> {
    let mut include = Vec::new();
    let Some(raw) = value(pairs, "include") else { return Ok(include) };
    for name in raw.split(',') {
        let known = INCLUDES
            .iter()
            .find(|i| **i == name)
            .ok_or_else(|| bad("include", format!("unknown relation {name:?}; known: {}", INCLUDES.join(", "))))?;
        if !include.contains(known) {
            include.push(*known);
        }
    }
    Ok(include)
}

/// The sort as echoed in `meta.sort`, and its ORDER BY with `id` as the last key (in the
/// last key's direction, so `-updated_at` walks the `(updated_at, id)` index backwards).
fn sort(pairs: &Pairs) -> Result<(String, String), ApiError> {
    let raw = value(pairs, "sort").unwrap_or("created_at");
    let mut keys = Vec::new();
    let mut descending = false;
    for field in raw.split(',').map(str::trim) {
        // A `+` (ascending) arrives as a space from form encoding; trim took it.
        let (name, desc) = match field.strip_prefix('-') {
            Some(name) => (name.trim(), true),
            None => (field.strip_prefix('+').unwrap_or(field), false),
        };
        let (_, sql) = SORTABLE.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            let sortable: Vec<&str> = SORTABLE.iter().map(|(n, _)| *n).collect();
            bad("sort", format!("{name:?} is not a sortable field; sortable: {}", sortable.join(", ")))
        })?;
        keys.push(format!("{sql}{}", if desc { " DESC" } else { "" }));
        descending = desc;
    }
    keys.push(format!("t.id{}", if descending { " DESC" } else { "" }));
    Ok((raw.to_string(), keys.join(", ")))
}

/// The SQL expression (over `t`, the order, and `c`, its customer) of an order's document
/// as seed 002 shows it, with the related records asked for.
pub fn document(schema: &str, include: &[&str]) -> String {
    let customer = object(&[
        ("id", Json::Number("t.customer_id")),
        ("name", Json::Text(CUSTOMER_NAME)),
        ("code", Json::Text("c.code")),
        ("email", Json::Text(CUSTOMER_EMAIL)),
    ]);
    let totals = object(&[
        ("subtotal", Json::Money("t.product_total")),
        ("discount_total", Json::Money("t.discount_total")),
        ("tax_total", Json::Money("t.total_tax")),
        ("shipping_total", Json::Money("t.total_shipping")),
        ("grand_total", Json::Money("t.total_amount")),
    ]);
    let items = array(
        &object(&[
            ("id", Json::Number("i.id")),
            ("line_number", Json::Number("i.line_number")),
            ("product_id", Json::Number("i.product_id")),
            ("sku", Json::Text("i.sku")),
            ("name", Json::Text("i.name")),
            ("qty", Json::Number("i.quantity")),
            ("unit_price", Json::Money("i.unit_price")),
            ("tax", Json::Money("i.tax")),
            ("line_total", Json::Money("i.quantity * i.unit_price")),
            ("qty_shipped", Json::Number("i.quantity_shipped")),
            ("qty_cancelled", Json::Number("i.quantity_cancelled")),
        ]),
        &format!("{schema}.sales_order_items i WHERE i.sales_order_id = t.id"),
        "i.line_number, i.id",
    );
    let shipments = array(
        &object(&[
            ("id", Json::Number("s.id")),
            ("carrier", Json::Text("s.carrier")),
            ("service", Json::Text("s.service")),
            ("tracking_number", Json::Text("s.tracking_number")),
            ("status", Json::Text("s.status")),
            ("shipped_at", Json::Second("s.shipped_at")),
            ("created_at", Json::Second("s.created_at")),
            ("updated_at", Json::Second("s.updated_at")),
        ]),
        &format!("{schema}.shipments s WHERE s.sales_order_id = t.id"),
        "s.id",
    );
    let history = array(
        &object(&[
            ("id", Json::Number("h.id")),
            ("from_status", Json::Text("h.from_status")),
            ("status", Json::Text("h.to_status")),
            ("changed_by", Json::Text("h.changed_by")),
            ("changed_at", Json::Second("h.changed_at")),
        ]),
        &format!("{schema}.sales_order_status_history h WHERE h.sales_order_id = t.id"),
        "h.changed_at, h.id",
    );
    let mut fields = vec![
        ("id", Json::Number("t.id")),
        ("order_number", Json::Text("t.order_number")),
        ("customer", Json::Raw(&customer)),
        ("user_id", Json::Number("t.user_id")),
        ("currency", Json::Text("t.currency")),
        ("status", Json::Text("t.order_status")),
        ("po_number", Json::Text("t.customer_po_number")),
        ("notes", Json::Text("t.customer_notes")),
        ("totals", Json::Raw(&totals)),
        ("placed_at", Json::Second("t.placed_at")),
        ("created_at", Json::Second("t.created_at")),
        ("updated_at", Json::Second("t.updated_at")),
    ];
    for (name, sql) in [("items", &items), ("shipments", &shipments), ("status_history", &history)] {
        if include.contains(&name) {
            fields.push((name, Json::Raw(sql)));
        }
    }
    object(&fields)
}

/// `X-API-Key`, else the `api_key` parameter, checked in constant time.
fn authenticate(tokens: &Tokens, headers: &HeaderMap, pairs: &Pairs) -> Result<(), ApiError> {
    let presented = match headers.get("x-api-key") {
        Some(h) => Some(h.to_str().unwrap_or_default().trim()).filter(|k| !k.is_empty()),
        None => trimmed(pairs, "api_key"),
    };
    match presented {
        Some(key) if tokens.accepts(key) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", "the API key is not valid")),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
            "api_key is required (use X-API-Key header or api_key param).",
        )),
    }
}

pub async fn list(State(state): State<Arc<AppState>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let started = Instant::now();
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect();
    authenticate(&state.tokens, &headers, &pairs)?;
    let listing = Listing::parse(&pairs, &state.schema)?;
    let params = listing.params();

    let mut client = state.pool.get().await.map_err(ApiError::database)?;
    // One snapshot for the page and its total, so they agree; both are sent at once.
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(ApiError::database)?;
    let queried = Instant::now();
    let (total, rows) = tokio::try_join!(
        tx.query_one(&listing.count_sql, &params[..listing.count_params]),
        tx.query(&listing.page_sql, &params),
    )
    .map_err(ApiError::database)?;
    tx.commit().await.map_err(ApiError::database)?;
    let db_ms = queried.elapsed().as_secs_f64() * 1e3;
    let total: i64 = total.get(0);

    let meta = json!({
        "tenant_id": state.tenant,
        "filters": listing.filters,
        "pagination": {
            "page": listing.page,
            "per_page": listing.per_page,
            "total": total,
            "total_pages": (total + listing.per_page - 1) / listing.per_page,
        },
        "sort": listing.sort,
        "timings_ms": { "total": round(started.elapsed().as_secs_f64() * 1e3), "db": round(db_ms) },
    });
    let mut body = super::documents_body(&format!("{{\"meta\":{meta},\"data\":["), &rows, 0, 2);
    body.push_str("]}");
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(String, String)> {
        url::form_urlencoded::parse(query.as_bytes()).into_owned().collect()
    }

    fn parse(query: &str) -> Result<Listing, ApiError> {
        Listing::parse(&pairs(query), "public")
    }

    fn status(query: &str) -> u16 {
        parse(query).err().map(|e| e.status.as_u16()).unwrap_or(200)
    }

    fn at(s: &str) -> DateTime<Utc> {
        timestamp::parse(s).unwrap()
    }

    #[test]
    fn bounds_are_inclusive_and_whole_second_or_day() {
        let p = pairs("a=2025-01-31&b=2025-01-31 10:00:00&c=2025-01-31T10:00:00.75Z&d=2025-01-31T12:00:00+02:00&e=2025-01-31T12:00:00 02:00");
        assert_eq!(bound(&p, "a", End::From).unwrap(), Some(at("2025-01-31T00:00:00Z")));
        assert_eq!(bound(&p, "a", End::To).unwrap(), Some(at("2025-02-01T00:00:00Z")));
        assert_eq!(bound(&p, "b", End::From).unwrap(), Some(at("2025-01-31T10:00:00Z")));
        assert_eq!(bound(&p, "b", End::To).unwrap(), Some(at("2025-01-31T10:00:01Z")));
        assert_eq!(bound(&p, "c", End::From).unwrap(), Some(at("2025-01-31T10:00:00.75Z")));
        assert_eq!(bound(&p, "c", End::To).unwrap(), Some(at("2025-01-31T10:00:01Z")));
        assert_eq!(bound(&p, "d", End::To).unwrap(), Some(at("2025-01-31T10:00:01Z")));
        assert_eq!(bound(&p, "e", End::From).unwrap(), Some(at("2025-01-31T10:00:00Z")), "a + lost to form encoding");
        assert_eq!(seed_end(at("2025-02-01T00:00:00Z")), "2025-01-31 23:59:59");
        assert_eq!(seed_time(at("2025-01-31T10:00:00.75Z")), "2025-01-31 10:00:00.750");
    }

    #[test]
    fn statuses_of_bad_input() {
        assert_eq!(status(""), 200);
        assert_eq!(status("per_page=250&page=3&sort=placed_at,-updated_at&include=items,status_history"), 200);
        assert_eq!(status("per_page=1000"), 422);
        assert_eq!(status("per_page=0"), 422);
        assert_eq!(status("page=0"), 422);
        assert_eq!(status("page=x"), 400);
        assert_eq!(status("page=9223372036854775807&per_page=250"), 422);
        assert_eq!(status("sort=id"), 400);
        assert_eq!(status("sort=created_at,,id"), 400);
        assert_eq!(status("include=lines"), 400);
        assert_eq!(status("filter_on=shipped_at"), 400);
        assert_eq!(status("date_from=yesterday"), 400);
        assert_eq!(status("date_from=2025-02-01&date_to=2025-01-31"), 422);
        assert_eq!(status("date_from=2025-01-31&date_to=2025-01-31"), 200);
        assert_eq!(status("placed_from=99999-01-01"), 400);
        assert_eq!(status("min_total=1e3"), 400);
        assert_eq!(status("min_total=-5"), 422);
        assert_eq!(status("min_total=500&max_total=100"), 422);
        assert_eq!(status("customer_id=12a"), 400);
        assert_eq!(status("q=a%00b"), 400);
        // Only an empty value is no value: spaces (a `+` in a form) are not a number, time or name.
        for padded in ["page=+", "per_page=+50", "customer_id=1+", "min_total=+", "filter_on=+", "date_from=+", "updated_since=+", "include=+", "include=items,", "sort=+", "page=%2B1"] {
            assert_eq!(status(padded), 400, "{padded}");
        }
        assert_eq!(status("q=+&status=+&page=&include=&sort=+created_at"), 200, "free text may be spaces");
    }

    #[test]
    fn sort_ends_with_id_in_the_last_direction() {
        let l = parse("sort=-updated_at").unwrap();
        assert!(l.page_sql.contains("ORDER BY t.updated_at DESC, t.id DESC"), "{}", l.page_sql);
        assert_eq!(l.sort, "-updated_at");
        let l = parse("").unwrap();
        assert!(l.page_sql.contains("ORDER BY t.created_at, t.id"));
        assert_eq!(l.sort, "created_at");
        let e = parse("sort=-total").err().unwrap();
        assert!(e.message.contains("\"total\""), "{}", e.message);
    }
}
