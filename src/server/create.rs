//! `POST /sales-orders` (seed 004): every rule of the seed, checked before anything is
//! written, reported together as field errors (422); a duplicate order number is a 409;
//! success is a 201 with the full order document, built by PostgreSQL like the export's.
//!
//! Beyond seed 004 it takes what the wholesale listing (seed 002) shows: optional
//! `customer_id` (an existing customer), `user_id` and `discount_total`; the order is
//! placed when it is created (`placed_at`), and its first status enters the history as
//! changed by `user:<user_id>` (else the database role).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{Datelike, NaiveDate};
use serde_json::{Map, Value};
use tokio_postgres::error::SqlState;

use super::error::{ApiError, FieldError};
use super::AppState;
use crate::store::document::{array, object, Json};
use crate::timestamp;

/// Seed 004's `order_status` values.
pub const ORDER_STATUSES: &[&str] = &[
    "pending", "shipped", "fulfilled", "cancelled", "awaiting_shipment", "partially_shipped", "on_hold", "backorder",
    "partially_refunded", "committed", "processing", "completed",
];
pub(super) const MAX_TEXT: usize = 255;
const DATES: &[&str] = &["ship_date", "hold_until_date", "ship_by_date", "earliest_ship_date"];
const TEXTS: &[&str] = &["customer_username", "customer_po_number", "requested_shipping_service"];
const NOTES: &[&str] = &["customer_notes", "internal_notes"];

/// A valid request, ready to insert. Money is in cents, so totals add up exactly.
#[derive(Debug)]
struct NewOrder {
    channel_id: i64,
    order_number: String,
    order_date: NaiveDate,
    order_status: String,
    customer_email: Option<String>,
    texts: Vec<(&'static str, Option<String>)>,
    dates: Vec<(&'static str, Option<NaiveDate>)>,
    company_id: Option<i64>,
    customer_id: Option<i64>,
    user_id: Option<i64>,
    bill_to: Option<Value>,
    ship_to: Option<Value>,
    total_tax: i64,
    total_shipping: i64,
    discount_total: i64,
    custom_fields: Value,
    tags: Vec<String>,
    items: Vec<NewItem>,
}

#[derive(Debug)]
struct NewItem {
    product_id: i64,
    quantity: i64,
    unit_price: i64,
    tags: Value,
    custom_fields: Value,
}

/// Collects field errors while reading a request (here and in the webstore's PUT).
#[derive(Default)]
pub(super) struct Checker {
    pub(super) errors: Vec<FieldError>,
}

impl Checker {
    pub(super) fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError { field: field.to_string(), message: message.into() });
    }

    pub(super) fn integer(&mut self, obj: &Map<String, Value>, key: &str, path: &str, required: bool) -> Option<i64> {
        match obj.get(key) {
            None | Some(Value::Null) if required => {
                self.fail(path, "is required");
                None
            }
            None | Some(Value::Null) => None,
            // JSON Schema counts 1.0 as an integer, so the OpenAPI document's generators send it.
            // An integer beyond i64 also reaches here as an f64, rounded: -2^63 - 1 becomes
            // -2^63, so ±2^63 as floats are refused (the document's bounds are i64's).
            Some(v) => v.as_i64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < I64_BOUND).map(|f| f as i64)).or_else(|| {
                self.fail(path, "must be an integer");
                None
            }),
        }
    }

    pub(super) fn text(&mut self, obj: &Map<String, Value>, key: &str, path: &str, required: bool, max: Option<usize>) -> Option<String> {
        match obj.get(key) {
            None | Some(Value::Null) if required => {
                self.fail(path, "is required");
                None
            }
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.contains('\0') => {
                self.fail(path, NUL);
                None
            }
            Some(Value::String(s)) if required && is_blank(s) => {
                self.fail(path, "must not be empty");
                None
            }
            Some(Value::String(s)) if max.is_some_and(|m| s.chars().count() > m) => {
                self.fail(path, format!("must be at most {} characters", max.unwrap_or_default()));
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.fail(path, "must be a string");
                None
            }
        }
    }

    fn date(&mut self, obj: &Map<String, Value>, key: &str, required: bool) -> Option<NaiveDate> {
        let s = self.text(obj, key, key, required, None)?;
        // Year 0000 would be stored as 1 BC and shown as 0001, and chrono also reads `+999-01-01`:
        // only a date that reads back as written is taken.
        let read = NaiveDate::parse_from_str(&s, "%Y-%m-%d").ok();
        read.filter(|d| timestamp::YEARS.contains(&d.year()) && d.format("%Y-%m-%d").to_string() == s).or_else(|| {
            self.fail(key, "must be a date as YYYY-MM-DD in the years 0001 to 9999");
            None
        })
    }

    /// A non-negative amount, in cents (at most two decimals).
    fn money(&mut self, obj: &Map<String, Value>, key: &str, path: &str) -> i64 {
        match obj.get(key) {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if x < 0.0 => {
                    self.fail(path, "must be >= 0");
                    0
                }
                Some(x) if x * 100.0 <= MAX_CENTS as f64 => cents(x).unwrap_or_else(|| {
                    self.fail(path, "must have at most two decimals");
                    0
                }),
                _ => {
                    self.fail(path, format!("must be below 10^12 (at most {})", money(MAX_CENTS)));
                    0
                }
            },
            Some(_) => {
                self.fail(path, "must be a number");
                0
            }
        }
    }

    fn object(&mut self, obj: &Map<String, Value>, key: &str, path: &str) -> Option<Value> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => {
                self.fail(path, "must be an object");
                None
            }
        }
    }

    /// Any JSON object, stored as sent: PostgreSQL holds no NUL character in it.
    fn json_object(&mut self, obj: &Map<String, Value>, key: &str, path: &str) -> Value {
        let value = self.object(obj, key, path).unwrap_or_else(|| Value::Object(Map::new()));
        if let Some(at) = nul_path(&value, path) {
            self.fail(&at, NUL);
        }
        value
    }

    /// An address as the order document shows it: an object of strings (or nulls).
    fn address(&mut self, obj: &Map<String, Value>, key: &str) -> Option<Value> {
        let address = self.object(obj, key, key)?;
        for (member, value) in address.as_object().into_iter().flatten() {
            if member.contains('\0') {
                self.fail(key, "must not contain NUL characters in its keys");
            } else if value.as_str().is_some_and(|s| s.contains('\0')) {
                self.fail(&format!("{key}.{member}"), NUL);
            } else if !(value.is_string() || value.is_null()) {
                self.fail(&format!("{key}.{member}"), "must be a string or null");
            }
        }
        Some(address)
    }

    fn tags(&mut self, obj: &Map<String, Value>, key: &str, path: &str) -> Vec<String> {
        match obj.get(key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(tags)) => {
                let mut out = Vec::new();
                for (i, t) in tags.iter().enumerate() {
                    match t.as_str() {
                        Some(s) if !is_blank(s) && !s.contains('\0') && s.chars().count() <= MAX_TEXT => out.push(s.to_string()),
                        _ => self.fail(&format!("{path}[{i}]"), "must be a non-blank string of at most 255 characters without NUL"),
                    }
                }
                out
            }
            Some(_) => {
                self.fail(path, "must be an array of strings");
                Vec::new()
            }
        }
    }
}

pub(super) fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else { return false };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(|c| c.is_whitespace() || c == ',')
        && !domain.contains('@')
}

const NUL: &str = "must not contain NUL characters";

/// Only whitespace: Rust's, which openapi.json's not-blank patterns list character by
/// character (ECMA's `\s` differs in U+0085 and U+FEFF).
fn is_blank(s: &str) -> bool {
    s.chars().all(char::is_whitespace)
}

/// PostgreSQL text cannot hold NUL characters; find the first field that has one.
pub(super) fn nul_path(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => Some(path.to_string()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| nul_path(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let at = if path.is_empty() { k.escape_debug().to_string() } else { format!("{path}.{}", k.escape_debug()) };
            if k.contains('\0') {
                return Some(at);
            }
            nul_path(v, &at)
        }),
        _ => None,
    }
}

/// The largest amount a `numeric(14,2)` column holds, in cents.
pub(super) const MAX_CENTS: i64 = 100_000_000_000_000 - 1;
/// `x` in cents when it has at most two decimals as written: Rust prints an f64 as the
/// shortest decimal that reads back as it (0.57, not 0.5700000000000001), so this is
/// exact where `x * 100` is not, and agrees with JSON Schema's `multipleOf: 0.01`.
fn cents(x: f64) -> Option<i64> {
    let written = x.to_string();
    let (whole, fraction) = written.split_once('.').unwrap_or((&written, ""));
    if fraction.len() > 2 {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let fraction: i64 = format!("{fraction:0<2}").parse().ok()?;
    Some(whole * 100 + fraction)
}

/// 2^63: whole numbers written with a fraction (`1.0`) below it in magnitude fit an i64.
const I64_BOUND: f64 = 9_223_372_036_854_775_808.0;

fn validate(body: &Value) -> Result<NewOrder, ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::validation(vec![FieldError { field: "body".into(), message: "must be a JSON object".into() }]));
    };
    let mut c = Checker { errors: Vec::new() };
    let channel_id = c.integer(obj, "channel_id", "channel_id", true);
    let order_number = c.text(obj, "order_number", "order_number", true, Some(MAX_TEXT));
    let order_date = c.date(obj, "order_date", true);
    let order_status = c.text(obj, "order_status", "order_status", true, Some(MAX_TEXT));
    if let Some(s) = &order_status {
        if !ORDER_STATUSES.contains(&s.as_str()) {
            c.fail("order_status", format!("must be one of: {}", ORDER_STATUSES.join(", ")));
        }
    }
    let customer_email = c.text(obj, "customer_email", "customer_email", false, Some(MAX_TEXT));
    if customer_email.as_deref().is_some_and(|e| !is_email(e)) {
        c.fail("customer_email", "must be an email address");
    }
    let texts = TEXTS.iter().map(|k| (*k, c.text(obj, k, k, false, Some(MAX_TEXT)))).collect();
    let notes: Vec<_> = NOTES.iter().map(|k| (*k, c.text(obj, k, k, false, None))).collect();
    let dates = DATES.iter().map(|k| (*k, c.date(obj, k, false))).collect();
    let company_id = c.integer(obj, "company_id", "company_id", false);
    let customer_id = c.integer(obj, "customer_id", "customer_id", false);
    let user_id = c.integer(obj, "user_id", "user_id", false);
    let bill_to = c.address(obj, "bill_to");
    let ship_to = c.address(obj, "ship_to");
    if company_id.is_none() && !c.errors.iter().any(|e| e.field == "company_id") {
        for (key, value) in [("bill_to", &bill_to), ("ship_to", &ship_to)] {
            if value.is_none() && !c.errors.iter().any(|e| e.field == key) {
                c.fail(key, "is required when company_id is not given");
            }
        }
    }
    let total_tax = c.money(obj, "total_tax", "total_tax");
    let total_shipping = c.money(obj, "total_shipping", "total_shipping");
    let discount_total = c.money(obj, "discount_total", "discount_total");
    let custom_fields = c.json_object(obj, "custom_fields", "custom_fields");
    let tags = c.tags(obj, "tags", "tags");
    let mut items = Vec::new();
    match obj.get("items") {
        Some(Value::Array(list)) if !list.is_empty() => {
            for (i, item) in list.iter().enumerate() {
                let path = |k: &str| format!("items[{i}].{k}");
                let Some(item) = item.as_object() else {
                    c.fail(&format!("items[{i}]"), "must be an object");
                    continue;
                };
                let product_id = c.integer(item, "product_id", &path("product_id"), true);
                let quantity = c.integer(item, "quantity", &path("quantity"), true);
                if quantity.is_some_and(|q| q <= 0) {
                    c.fail(&path("quantity"), "must be greater than 0");
                } else if quantity.is_some_and(|q| q > i32::MAX as i64) {
                    c.fail(&path("quantity"), "is too large");
                }
                let unit_price = c.money(item, "unit_price", &path("unit_price"));
                let item_tags = c.tags(item, "tags", &path("tags"));
                let item_fields = c.json_object(item, "custom_fields", &path("custom_fields"));
                if let (Some(product_id), Some(quantity)) = (product_id, quantity) {
                    items.push(NewItem { product_id, quantity, unit_price, tags: Value::from(item_tags), custom_fields: item_fields });
                }
            }
        }
        Some(Value::Array(_)) => c.fail("items", "must have at least one item"),
        None | Some(Value::Null) => c.fail("items", "is required"),
        Some(_) => c.fail("items", "must be an array"),
    }
    let product_total = items.iter().fold(0i64, |sum, i| sum.saturating_add(i.quantity.saturating_mul(i.unit_price)));
    if product_total.saturating_add(total_tax).saturating_add(total_shipping) > MAX_CENTS {
        c.fail("items", "the order total is too large");
    }
    if discount_total > product_total && !items.is_empty() {
        c.fail("discount_total", "must not exceed the items' total");
    }
    if !c.errors.is_empty() {
        return Err(ApiError::validation(c.errors));
    }
    let mut texts: Vec<(&'static str, Option<String>)> = texts;
    texts.extend(notes);
    Ok(NewOrder {
        channel_id: channel_id.expect("checked"),
        order_number: order_number.expect("checked"),
        order_date: order_date.expect("checked"),
        order_status: order_status.expect("checked"),
        customer_email,
        texts,
        dates,
        company_id,
        customer_id,
        user_id,
        bill_to,
        ship_to,
        total_tax,
        total_shipping,
        discount_total,
        custom_fields,
        tags,
        items,
    })
}

pub(super) fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// `total` (cents) shared out over lines in proportion to their subtotals, in cents that add
/// up to it exactly: the last line takes the rounding (or the whole when every subtotal is 0).
fn tax_shares(total: i64, subtotals: &[i64]) -> Vec<i64> {
    let sum: i128 = subtotals.iter().map(|s| *s as i128).sum();
    let mut shares: Vec<i64> =
        subtotals.iter().map(|s| if sum == 0 { 0 } else { (total as i128 * *s as i128 / sum) as i64 }).collect();
    let shared: i64 = shares.iter().sum();
    if let Some(last) = shares.last_mut() {
        *last += total - shared;
    }
    shares
}

/// The tax rate (percent, two decimals) that `tax` is of `subtotal`, both in cents.
fn tax_rate(tax: i64, subtotal: i64) -> String {
    if subtotal == 0 {
        return "0".into();
    }
    let hundredths = (tax as i128 * 10_000 + subtotal as i128 / 2) / subtotal as i128;
    format!("{}.{:02}", hundredths / 100, hundredths % 100)
}

/// The full order document of seed 004 for the order with id `$1`.
pub fn order_document(schema: &str) -> String {
    let address = |col: &str| format!("coalesce(t.{col}::text, 'null')");
    let company = format!(
        "coalesce((SELECT {} FROM {schema}.companies c WHERE c.id = t.company_id), 'null')",
        object(&[
            ("id", Json::Number("c.id")),
            ("name", Json::Text("c.name")),
            ("status", Json::Text("c.status")),
            ("address", Json::Text("c.address")),
            ("city", Json::Text("c.city")),
            ("state", Json::Text("c.state")),
            ("postal_code", Json::Text("c.postal_code")),
            ("country", Json::Text("c.country")),
        ])
    );
    let items = array(
        &object(&[
            ("id", Json::Number("i.id")),
            ("line_number", Json::Number("i.line_number")),
            ("sku", Json::Text("i.sku")),
            ("name", Json::Text("i.name")),
            ("quantity", Json::Number("i.quantity")),
            ("unit_price", Json::Money("i.unit_price")),
            ("upc", Json::Text("i.upc")),
            ("product_id", Json::Number("i.product_id")),
            ("tags", Json::Raw("i.tags::text")),
            ("custom_fields", Json::Raw("i.custom_fields::text")),
        ]),
        &format!("{schema}.sales_order_items i WHERE i.sales_order_id = t.id"),
        "i.line_number, i.id",
    );
    let tags = array(
        &object(&[("id", Json::Number("g.id")), ("name", Json::Text("g.name"))]),
        &format!("{schema}.sales_order_tags st JOIN {schema}.tags g ON g.id = st.tag_id WHERE st.sales_order_id = t.id"),
        "g.id",
    );
    let quantity = format!("(SELECT coalesce(sum(i.quantity), 0) FROM {schema}.sales_order_items i WHERE i.sales_order_id = t.id)");
    let (bill_to, ship_to) = (address("bill_to"), address("ship_to"));
    format!(
        "SELECT {} FROM {schema}.sales_orders t WHERE t.id = $1",
        object(&[
            ("id", Json::Number("t.id")),
            ("created_at", Json::Timestamp("t.created_at")),
            ("updated_at", Json::Timestamp("t.updated_at")),
            ("status", Json::Text("t.status")),
            ("order_id", Json::Text("t.id::text")),
            ("order_number", Json::Text("t.order_number")),
            ("order_date", Json::Date("t.order_date")),
            ("order_status", Json::Text("t.order_status")),
            ("customer_email", Json::Text("t.customer_email")),
            ("customer_username", Json::Text("t.customer_username")),
            ("customer_po_number", Json::Text("t.customer_po_number")),
            ("company_id", Json::Number("t.company_id")),
            ("company", Json::Raw(&company)),
            ("bill_to", Json::Raw(&bill_to)),
            ("ship_to", Json::Raw(&ship_to)),
            ("total", Json::Money("t.total_amount")),
            ("total_paid", Json::Money("t.total_paid")),
            ("total_tax", Json::Money("t.total_tax")),
            ("total_shipping", Json::Money("t.total_shipping")),
            ("product_total", Json::Money("t.product_total")),
            ("requested_shipping_service", Json::Text("t.requested_shipping_service")),
            ("customer_notes", Json::Text("t.customer_notes")),
            ("internal_notes", Json::Text("t.internal_notes")),
            ("ship_date", Json::Date("t.ship_date")),
            ("hold_until_date", Json::Date("t.hold_until_date")),
            ("ship_by_date", Json::Date("t.ship_by_date")),
            ("earliest_ship_date", Json::Date("t.earliest_ship_date")),
            ("externally_fulfilled", Json::Bool("t.externally_fulfilled")),
            ("is_posted", Json::Bool("t.is_posted")),
            ("source", Json::Text("t.source")),
            ("total_order_quantity", Json::Number(&quantity)),
            ("items", Json::Raw(&items)),
            ("tags", Json::Raw(&tags)),
            ("custom_fields", Json::Raw("t.custom_fields::text")),
        ])
    )
}

pub async fn create(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.body_text()))?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}")))?;
    let order = validate(&value)?;
    let mut client = state.pool.get().await.map_err(ApiError::database)?;
    let tx = client.transaction().await.map_err(ApiError::database)?;
    let s = &state.schema;
    let mut errors = Vec::new();

    // The company fills in missing addresses (seed 004).
    let (mut bill_to, mut ship_to) = (order.bill_to.clone(), order.ship_to.clone());
    if let Some(company_id) = order.company_id {
        let sql = format!(
            "SELECT jsonb_strip_nulls(jsonb_build_object('name', name, 'company', name, 'street1', address, 'city', city,
                    'state', state, 'postal_code', postal_code, 'country', country, 'phone', phone))
               FROM {s}.companies WHERE id = $1"
        );
        match tx.query_opt(&sql, &[&company_id]).await.map_err(ApiError::database)? {
            Some(row) => {
                let address: Value = row.get(0);
                bill_to.get_or_insert_with(|| address.clone());
                ship_to.get_or_insert(address);
            }
            None => errors.push(FieldError { field: "company_id".into(), message: format!("company {company_id} does not exist") }),
        }
    }
    if let Some(customer_id) = order.customer_id {
        if tx.query_opt(&format!("SELECT 1 FROM {s}.customers WHERE id = $1"), &[&customer_id]).await.map_err(ApiError::database)?.is_none() {
            errors.push(FieldError { field: "customer_id".into(), message: format!("customer {customer_id} does not exist") });
        }
    }
    let product_ids: Vec<i64> = order.items.iter().map(|i| i.product_id).collect();
    let known: BTreeSet<i64> = tx
        .query(&format!("SELECT id FROM {s}.products WHERE id = ANY($1)"), &[&product_ids])
        .await
        .map_err(ApiError::database)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (i, item) in order.items.iter().enumerate() {
        if !known.contains(&item.product_id) {
            errors.push(FieldError { field: format!("items[{i}].product_id"), message: format!("product {} does not exist", item.product_id) });
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }

    let product_total: i64 = order.items.iter().map(|i| i.quantity.saturating_mul(i.unit_price)).sum();
    let total = product_total - order.discount_total + order.total_tax + order.total_shipping;
    // The status history's trigger reads who made the change from this setting.
    if let Some(user_id) = order.user_id {
        tx.execute("SELECT set_config('order_cdc.changed_by', $1, true)", &[&format!("user:{user_id}")]).await.map_err(ApiError::database)?;
    }
    let text = |k: &str| order.texts.iter().find(|(n, _)| *n == k).and_then(|(_, v)| v.clone());
    let date = |k: &str| order.dates.iter().find(|(n, _)| *n == k).and_then(|(_, v)| *v);
    let inserted = tx
        .query_one(
            &format!(
                "INSERT INTO {s}.sales_orders (channel_id, order_number, order_date, order_status, customer_email,
                    customer_username, customer_po_number, requested_shipping_service, customer_notes, internal_notes,
                    ship_date, hold_until_date, ship_by_date, earliest_ship_date, company_id, bill_to, ship_to,
                    product_total, total_tax, total_shipping, total_amount, custom_fields,
                    customer_id, user_id, discount_total, placed_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                    $18::text::numeric, $19::text::numeric, $20::text::numeric, $21::text::numeric, $22,
                    $23, $24, $25::text::numeric, now())
                 RETURNING id"
            ),
            &[
                &order.channel_id,
                &order.order_number,
                &order.order_date,
                &order.order_status,
                &order.customer_email,
                &text("customer_username"),
                &text("customer_po_number"),
                &text("requested_shipping_service"),
                &text("customer_notes"),
                &text("internal_notes"),
                &date("ship_date"),
                &date("hold_until_date"),
                &date("ship_by_date"),
                &date("earliest_ship_date"),
                &order.company_id,
                &bill_to,
                &ship_to,
                &money(product_total),
                &money(order.total_tax),
                &money(order.total_shipping),
                &money(total),
                &order.custom_fields,
                &order.customer_id,
                &order.user_id,
                &money(order.discount_total),
            ],
        )
        .await;
    let id: i64 = match inserted {
        Ok(row) => row.get(0),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) && e.as_db_error().and_then(|d| d.constraint()) == Some("sales_orders_order_number_key") => {
            return Err(ApiError::new(StatusCode::CONFLICT, "conflict", format!("order_number {:?} already exists", order.order_number)))
        }
        Err(e) => return Err(ApiError::database(e)),
    };
    // Seed 003's line fields: a weight from the product's, and the order's tax shared out
    // over the lines by subtotal (the last line takes the rounding), one tax each.
    let item_sql = format!(
        "INSERT INTO {s}.sales_order_items (sales_order_id, line_number, product_id, sku, name, upc, quantity, unit_price, tags, custom_fields,
                tax, total_weight)
         SELECT $1, $2, p.id, p.sku, p.name, p.upc, $4::integer, $5::text::numeric, $6, $7, $8::text::numeric, $4::integer * coalesce(p.weight, 0)
           FROM {s}.products p WHERE p.id = $3
         RETURNING id"
    );
    let tax_sql = format!(
        "INSERT INTO {s}.sales_order_item_taxes (sales_order_id, item_id, name, taxtype, rate, total)
         VALUES ($1, $2, 'Tax', 'SALES', $3::text::numeric, $4::text::numeric)"
    );
    let shares = tax_shares(order.total_tax, &order.items.iter().map(|i| i.quantity.saturating_mul(i.unit_price)).collect::<Vec<_>>());
    let rate = tax_rate(order.total_tax, product_total);
    for (n, (item, share)) in order.items.iter().zip(shares).enumerate() {
        let line = n as i32 + 1;
        let quantity = i32::try_from(item.quantity).expect("validated");
        let item_id: i64 = tx
            .query_one(&item_sql, &[&id, &line, &item.product_id, &quantity, &money(item.unit_price), &item.tags, &item.custom_fields, &money(share)])
            .await
            .map_err(ApiError::database)?
            .get(0);
        if order.total_tax > 0 {
            tx.execute(&tax_sql, &[&id, &item_id, &rate, &money(share)]).await.map_err(ApiError::database)?;
        }
    }
    if !order.tags.is_empty() {
        tx.execute(&format!("INSERT INTO {s}.tags (name) SELECT unnest($1::text[]) ON CONFLICT (name) DO NOTHING"), &[&order.tags])
            .await
            .map_err(ApiError::database)?;
        tx.execute(
            &format!("INSERT INTO {s}.sales_order_tags (sales_order_id, tag_id) SELECT $1, id FROM {s}.tags WHERE name = ANY($2) ON CONFLICT DO NOTHING"),
            &[&id, &order.tags],
        )
        .await
        .map_err(ApiError::database)?;
    }
    let document: String = tx.query_one(&order_document(s), &[&id]).await.map_err(ApiError::database)?.get(0);
    tx.commit().await.map_err(ApiError::database)?;
    let body = format!("{{\"data\":{document}}}");
    Ok((StatusCode::CREATED, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(body: Value) -> Vec<String> {
        match validate(&body) {
            Ok(_) => Vec::new(),
            Err(e) => e.fields.into_iter().map(|f| f.field).collect(),
        }
    }

    fn minimal() -> Value {
        json!({"channel_id": 1, "order_number": "ORD-1", "order_date": "2024-01-15", "order_status": "pending",
               "bill_to": {"name": "A"}, "ship_to": {"name": "B"}, "items": [{"product_id": 1, "quantity": 2, "unit_price": 49.99}]})
    }

    #[test]
    fn the_seed_example_is_valid() {
        assert!(fields(minimal()).is_empty());
    }

    #[test]
    fn every_rule_names_its_field() {
        let mut b = minimal();
        b["channel_id"] = json!("one");
        b["order_number"] = json!("x".repeat(256));
        b["order_date"] = json!("15/01/2024");
        b["order_status"] = json!("lost");
        b["customer_email"] = json!("not-an-email");
        b["total_tax"] = json!(-1);
        b["ship_by_date"] = json!("2024-02-30");
        b["custom_fields"] = json!([1]);
        b["tags"] = json!(["ok", 7]);
        b["items"] = json!([{"product_id": 1, "quantity": 0, "unit_price": -2}, "x", {"product_id": 1, "quantity": 3_000_000_000_i64}]);
        let f = fields(b);
        for expected in ["channel_id", "order_number", "order_date", "order_status", "customer_email", "total_tax", "ship_by_date", "custom_fields", "tags[1]", "items[0].quantity", "items[0].unit_price", "items[1]", "items[2].quantity"] {
            assert!(f.contains(&expected.to_string()), "{expected} not in {f:?}");
        }
    }

    #[test]
    fn company_id_makes_addresses_optional() {
        let mut b = minimal();
        b.as_object_mut().unwrap().remove("bill_to");
        b.as_object_mut().unwrap().remove("ship_to");
        assert_eq!(fields(b.clone()), vec!["bill_to", "ship_to"]);
        b["company_id"] = json!(123);
        assert!(fields(b).is_empty());
    }

    #[test]
    fn dates_are_in_the_years_0001_to_9999() {
        let mut b = minimal();
        b["order_date"] = json!("0000-01-01");
        b["ship_date"] = json!("0000-12-31");
        b["hold_until_date"] = json!("0001-01-01");
        b["ship_by_date"] = json!("9999-12-31");
        b["earliest_ship_date"] = json!("+10000-01-01");
        assert_eq!(fields(b), vec!["order_date", "ship_date", "earliest_ship_date"]);
    }

    #[test]
    fn address_members_are_strings_or_null() {
        let mut b = minimal();
        b["bill_to"] = json!({"city": 723653, "name": false, "street1": "1 Main St", "street2": null});
        b["ship_to"] = json!({"postal_code": {"zip": "90210"}});
        assert_eq!(fields(b), vec!["bill_to.city", "bill_to.name", "ship_to.postal_code"]);
    }

    #[test]
    fn whole_numbers_may_have_a_fraction_and_money_errors_say_why() {
        let mut b = minimal();
        b["channel_id"] = json!(1.0);
        b["items"][0]["quantity"] = json!(2.0);
        assert!(fields(b.clone()).is_empty());
        b["items"][0]["quantity"] = json!(2.5);
        b["total_tax"] = json!(1e12);
        b["total_shipping"] = json!(-0.01);
        b["discount_total"] = json!("5");
        let messages: Vec<(String, String)> = match validate(&b) {
            Err(e) => e.fields.into_iter().map(|f| (f.field, f.message)).collect(),
            Ok(_) => panic!("invalid"),
        };
        let message = |field: &str| messages.iter().find(|(f, _)| f == field).map(|(_, m)| m.as_str()).unwrap_or_default();
        assert_eq!(message("items[0].quantity"), "must be an integer");
        assert_eq!(message("total_tax"), "must be below 10^12 (at most 999999999999.99)");
        assert_eq!(message("total_shipping"), "must be >= 0");
        assert_eq!(message("discount_total"), "must be a number");
    }

    /// openapi.json states the bounds this file enforces, so generators built from it
    /// make valid orders; a changed bound here fails until the document follows.
    #[test]
    fn the_openapi_document_states_these_rules() {
        let spec: Value = serde_json::from_str(super::super::OPENAPI).unwrap();
        let schemas = &spec["components"]["schemas"];
        let order = &schemas["CreateSalesOrder"];
        let item = &order["properties"]["items"]["items"]["properties"];
        assert_eq!(item["quantity"]["maximum"], i32::MAX);
        assert_eq!(item["quantity"]["minimum"], 1);
        assert_eq!(schemas["Money"]["maximum"].to_string(), money(MAX_CENTS));
        assert_eq!(schemas["Money"]["multipleOf"], 0.01);
        assert_eq!(schemas["Tag"]["maxLength"], MAX_TEXT);
        let addresses = json!({"required": ["bill_to", "ship_to"], "properties": {"bill_to": {"type": "object"}, "ship_to": {"type": "object"}}});
        assert_eq!(order["anyOf"], json!([{"required": ["company_id"], "properties": {"company_id": {"type": "integer"}}}, addresses]));
        assert_eq!(schemas["Address"]["additionalProperties"]["type"], json!(["string", "null"]));
        let statuses: Vec<&str> = order["properties"]["order_status"]["enum"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        assert_eq!(statuses, ORDER_STATUSES);
        for (field, description) in [(&order["properties"]["company_id"], "existing company"), (&item["product_id"], "existing product")] {
            assert!(field["description"].as_str().unwrap().contains(description), "{field}");
        }
        assert!(schemas["Date"]["pattern"].as_str().unwrap().starts_with("^(000[1-9]|"), "the date pattern refuses year 0000");
        for id in [&item["product_id"], &order["properties"]["company_id"], &order["properties"]["customer_id"]] {
            assert_eq!(id["minimum"], 1, "ids start at 1, so generators try existing ones: {id}");
        }
        assert_eq!(schemas["Address"]["propertyNames"]["pattern"], "^[^\\x00]*$");
        for fields in [&order["properties"]["custom_fields"], &item["custom_fields"]] {
            assert_eq!(fields["anyOf"][0]["$ref"], "#/components/schemas/CustomFields");
        }
        let blank = format!("^[^\\x00]*[^\\x00{}][^\\x00]*$", whitespace_class());
        assert_eq!((&order["properties"]["order_number"]["pattern"], &schemas["Tag"]["pattern"]), (&json!(blank), &json!(blank)));
    }

    /// The characters `is_blank` counts as whitespace, as a regex class body (`\x09-\x0d…`).
    fn whitespace_class() -> String {
        let escape = |c: char| if (c as u32) < 0x100 { format!("\\x{:02x}", c as u32) } else { format!("\\u{:04x}", c as u32) };
        let mut runs: Vec<(char, char)> = Vec::new();
        for c in (char::MIN..=char::MAX).filter(|c| c.is_whitespace()) {
            match runs.last_mut() {
                Some((_, end)) if *end as u32 + 1 == c as u32 => *end = c,
                _ => runs.push((c, c)),
            }
        }
        runs.iter().map(|&(a, b)| if a == b { escape(a) } else { format!("{}-{}", escape(a), escape(b)) }).collect()
    }

    #[test]
    fn nul_characters_are_refused_by_field() {
        let mut b = minimal();
        b["custom_fields"] = json!({"note": "a\u{0}b"});
        assert_eq!(fields(b), vec!["custom_fields.note"]);
    }

    /// Only what is stored must be free of NUL: members the order does not know are
    /// ignored, as openapi.json (without additionalProperties: false) allows them.
    #[test]
    fn nul_characters_count_only_where_stored() {
        let mut b = minimal();
        b["extra\u{0}"] = json!(["a\u{0}"]);
        b["items"][0]["note"] = json!("x\u{0}");
        assert!(fields(b.clone()).is_empty());
        b["bill_to"] = json!({"name\u{0}": "A", "city": "B\u{0}"});
        b["order_number"] = json!("ORD\u{0}1");
        b["tags"] = json!(["a\u{0}"]);
        b["items"][0]["custom_fields"] = json!({"k": [{"k\u{0}": 1}]});
        assert_eq!(fields(b), vec!["order_number", "bill_to.city", "bill_to", "tags[0]", "items[0].custom_fields.k[0].k\\0"]);
    }

    /// Two decimals as written, like JSON Schema's `multipleOf: 0.01` (which jsonschema-rs
    /// checks exactly): 0.5700000000000001 and 1e-10 are not amounts, 10.05 is 1005 cents.
    #[test]
    fn money_has_two_decimals_exactly() {
        assert_eq!(cents(10.05), Some(1005));
        assert_eq!(cents(0.57), Some(57));
        assert_eq!(cents(0.1), Some(10));
        assert_eq!(cents(7.0), Some(700));
        assert_eq!(cents(999_999_999_999.99), Some(MAX_CENTS));
        assert_eq!(cents(0.5700000000000001), None);
        assert_eq!(cents(1e-10), None);
        assert_eq!(cents(0.005), None);
        let mut b = minimal();
        b["total_tax"] = json!(0.5700000000000001);
        b["total_shipping"] = json!(0.57);
        assert_eq!(fields(b), vec!["total_tax"]);
    }

    #[test]
    fn dates_read_back_as_written() {
        let mut b = minimal();
        b["order_date"] = json!("+999-01-01");
        b["ship_date"] = json!("2024-1-015");
        assert_eq!(fields(b), vec!["order_date", "ship_date"]);
    }

    /// schemathesis sent channel_id -9223372036854775809 (below i64), which serde_json
    /// reads as the f64 -2^63: it must stay refused, as must 2^63.
    #[test]
    fn integers_beyond_i64_are_refused_even_as_floats() {
        let body = |n: &str| serde_json::from_str::<Value>(&minimal().to_string().replacen("\"channel_id\":1", &format!("\"channel_id\":{n}"), 1)).unwrap();
        for n in ["-9223372036854775809", "9223372036854775808", "-9223372036854775808.0", "1e19"] {
            assert_eq!(fields(body(n)), vec!["channel_id"], "{n}");
        }
        // 17 digits: serde_json reads it exactly only with float_roundtrip (else 1 ULP off,
        // ...958.5, and schemathesis' positive product_id was refused).
        for n in ["-9223372036854775808", "9223372036854775807", "4.0", "-1e18", "3752640921234958.0"] {
            assert!(fields(body(n)).is_empty(), "{n}");
        }
    }

    #[test]
    fn the_tax_is_shared_out_exactly() {
        assert_eq!(tax_shares(1000, &[100, 200, 0]), vec![333, 666, 1]);
        assert_eq!(tax_shares(1000, &[0, 0]), vec![0, 1000]);
        assert_eq!(tax_shares(0, &[5]), vec![0]);
        assert_eq!(tax_rate(1575, 12498), "12.60");
        assert_eq!(tax_rate(5, 0), "0");
    }

    #[test]
    fn items_are_required() {
        let mut b = minimal();
        b["items"] = json!([]);
        assert_eq!(fields(b.clone()), vec!["items"]);
        b.as_object_mut().unwrap().remove("items");
        assert_eq!(fields(b), vec!["items"]);
        assert_eq!(fields(json!([1])), vec!["body"]);
    }
}
