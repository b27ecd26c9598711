//! The webstore orders API v2 (seed 003) over the reference schema:
//! `GET /{store}/api/v2/sales/orders.json` (a bare JSON array), `…/orders/count.json` (a
//! bare integer) and `GET`/`PUT`/`DELETE …/orders/{uuid}.json`. The store handle is
//! `[server].tenant`; auth is the bearer token of the export.
//!
//! Seed 003 leaves the listing's order open, so it lists the newest created first
//! (`date DESC, uuid`), as a real webstore may: clients must not rely on it. `since` is a
//! strict revision (`revision > since`), and revisions are whole seconds of `updated_at`.
//!
//! Each document is built by PostgreSQL (like the export's) for the rows of the page only,
//! and the body is assembled from that text: the listing, the single GET and the PUT
//! answer share one SQL expression, so they show the same bytes.

mod update;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use tokio_postgres::types::ToSql;

use super::error::ApiError;
use super::orders::{bad, borrowed, integer, text, Pairs, Param, Where};
use super::AppState;
use crate::store::document::{array, object, Json};
use crate::timestamp;

/// `size`: seed 003's page sizes, and its default.
pub const SIZES: &[i64] = &[20, 40, 80];
pub const DEFAULT_SIZE: i64 = 40;
/// The last page whose offset fits in 64 bits at every size (the largest is SIZES' last):
/// one bound, whatever the size, so the document can state it.
pub const MAX_PAGE: i64 = i64::MAX / SIZES[SIZES.len() - 1];

/// Seed 003's order statuses.
pub const STATUSES: &[&str] = &["pending", "invoiced", "shipped", "returned"];

/// The webstore status: the one set through this API, else one derived from seed 004's
/// `order_status` (shipped-like statuses are `shipped`, a partial refund is `returned`,
/// everything else is still `pending`).
const STATUS: &str = "coalesce(t.webstore_status, CASE WHEN t.order_status IN ('shipped', 'fulfilled', 'completed', 'partially_shipped') THEN 'shipped' WHEN t.order_status = 'partially_refunded' THEN 'returned' ELSE 'pending' END)";

/// The texts `query` searches, as the GIN indexes of migration 4 spell them.
const ORDER_SEARCH: &str = "to_tsvector('simple', left(coalesce(o.order_number, ''), 1000) || ' ' || left(coalesce(o.customer_po_number, ''), 1000) || ' ' || left(coalesce(o.customer_username, ''), 1000) || ' ' || left(coalesce(o.customer_email, ''), 1000))";
const CUSTOMER_SEARCH: &str = "to_tsvector('simple', left(coalesce(k.name, ''), 1000) || ' ' || left(coalesce(k.email, ''), 1000))";

/// Whole Unix seconds of a timestamp, cut (never rounded): a row shows the second it is in.
fn seconds(expr: &str) -> String {
    format!("floor(extract(epoch FROM {expr}))::bigint")
}

/// The SQL expression (over `t`, the order, and `c`, its customer) of an order's document
/// as seed 003 shows it. Decimals are strings; `taxes` of the order sums its lines' taxes
/// by (name, group, taxtype, rate).
pub fn document(schema: &str) -> String {
    let (revision, date) = (seconds("t.updated_at"), seconds("t.created_at"));
    let customer = object(&[
        ("id", Json::Number("t.customer_id")),
        ("code", Json::Text("c.code")),
        ("name", Json::Text("c.name")),
        ("username", Json::Text("t.customer_username")),
        ("email", Json::Text("t.customer_email")),
    ]);
    let tax_fields = |total: &'static str| {
        object(&[
            ("name", Json::Text("x.name")),
            ("group", Json::Text("x.tax_group")),
            ("taxtype", Json::Text("x.taxtype")),
            ("rate", Json::Decimal("x.rate")),
            ("total", Json::Decimal(total)),
        ])
    };
    let line_taxes = array(&tax_fields("x.total"), &format!("{schema}.sales_order_item_taxes x WHERE x.item_id = i.id"), "x.position, x.id");
    // A lookup by key per line: a join lets the planner hash the whole products table
    // for every order.
    let product_uuid = format!("(SELECT p.uuid FROM {schema}.products p WHERE p.id = i.product_id)");
    let lines = array(
        &object(&[
            ("type", Json::Raw(r#"'"orderline"'"#)),
            ("uuid", Json::Text("i.uuid")),
            ("productUUID", Json::Text(&product_uuid)),
            ("quantity", Json::Decimal("i.quantity")),
            ("price", Json::Decimal("i.unit_price")),
            ("totalWeight", Json::Decimal("i.total_weight")),
            ("tax", Json::Decimal("i.tax")),
            ("subtotal", Json::Decimal("i.quantity * i.unit_price")),
            ("total", Json::Decimal("i.quantity * i.unit_price + i.tax")),
            ("taxes", Json::Raw(&line_taxes)),
        ]),
        &format!("{schema}.sales_order_items i WHERE i.sales_order_id = t.id"),
        "i.line_number, i.id",
    );
    let payment_date = seconds("y.created_at");
    let payments = array(
        &object(&[
            ("type", Json::Raw(r#"'"payment"'"#)),
            ("uuid", Json::Text("y.uuid")),
            ("date", Json::Number(&payment_date)),
            ("status", Json::Text("y.status")),
            ("total", Json::Decimal("y.total")),
            ("method", Json::Text("y.method")),
            ("name", Json::Text("y.name")),
            ("gateway", Json::Text("y.gateway")),
            ("currency", Json::Text("y.currency")),
            ("reference", Json::Text("y.reference")),
            ("paymentMethodUUID", Json::Text("y.payment_method_uuid")),
            ("error", Json::Text("y.error")),
            ("data", Json::Raw("coalesce(y.data::text, 'null')")),
            ("testing", Json::Bool("y.testing")),
        ]),
        &format!("{schema}.sales_order_payments y WHERE y.sales_order_id = t.id"),
        "y.created_at, y.id",
    );
    let order_taxes = array(
        &tax_fields("x.total"),
        &format!(
            "(SELECT x.name, x.tax_group, x.taxtype, x.rate, sum(x.total) AS total FROM {schema}.sales_order_item_taxes x
               WHERE x.sales_order_id = t.id GROUP BY x.name, x.tax_group, x.taxtype, x.rate) x"
        ),
        "x.name, x.tax_group, x.taxtype, x.rate",
    );
    object(&[
        ("type", Json::Raw(r#"'"orders"'"#)),
        ("uuid", Json::Text("t.uuid")),
        ("revision", Json::Number(&revision)),
        ("date", Json::Number(&date)),
        ("number", Json::Text("t.order_number")),
        ("reference", Json::Text("t.customer_po_number")),
        ("status", Json::Text(STATUS)),
        ("customer", Json::Raw(&customer)),
        ("lines", Json::Raw(&lines)),
        ("payments", Json::Raw(&payments)),
        ("shipmentsSubTotal", Json::Decimal("t.total_shipping")),
        ("productsSubTotal", Json::Decimal("t.product_total - t.discount_total")),
        ("subtotal", Json::Decimal("t.product_total - t.discount_total + t.total_shipping")),
        ("shipmentsTax", Json::Decimal("t.shipping_tax")),
        ("productsTax", Json::Decimal("t.total_tax - t.shipping_tax")),
        ("tax", Json::Decimal("t.total_tax")),
        ("taxes", Json::Raw(&order_taxes)),
        ("shipmentsTotal", Json::Decimal("t.total_shipping + t.shipping_tax")),
        ("productsTotal", Json::Decimal("t.product_total - t.discount_total + t.total_tax - t.shipping_tax")),
        ("total", Json::Decimal("t.total_amount")),
        ("balance", Json::Decimal("t.total_amount - t.total_paid")),
        ("isPaid", Json::Bool("t.total_paid >= t.total_amount")),
    ])
}

/// The SQL of this dialect over one schema, built once.
pub struct Sql {
    schema: String,
    /// The document expression, over `t` and `c`.
    document: String,
    /// The document of the active order with uuid `$1`.
    one: String,
    /// The document of the order with id `$1` (a PUT's answer, in its transaction).
    by_id: String,
}

impl Sql {
    pub fn new(schema: &str) -> Self {
        let document = document(schema);
        let from = format!("{schema}.sales_orders t LEFT JOIN {schema}.customers c ON c.id = t.customer_id");
        Self {
            one: format!("SELECT ({document})::text FROM {from} WHERE t.uuid = $1 AND t.status = 'Active'"),
            by_id: format!("SELECT ({document})::text FROM {from} WHERE t.id = $1"),
            document,
            schema: schema.to_string(),
        }
    }
}

/// A validated listing request: the SQL of its page and of its count, with parameters.
pub struct Listing {
    /// `SELECT count(*)` of the matching orders; takes `params[..count_params]`.
    pub count_sql: String,
    /// The page's documents as JSON text, in order; takes every parameter.
    pub page_sql: String,
    pub params: Vec<Param>,
    pub count_params: usize,
}

/// A Unix time in seconds, within the years 1 to 9999 (as every other dialect's bound).
fn unix(pairs: &Pairs, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(secs) = integer(pairs, name)? else { return Ok(None) };
    DateTime::from_timestamp(secs, 0)
        .filter(|t| timestamp::representable(*t))
        .map(Some)
        .ok_or_else(|| bad(name, format!("{secs} is outside the years 0001 to 9999")))
}

impl Listing {
    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        borrowed(&self.params)
    }

    /// Reads the query string's parameters (decoded pairs) into the SQL of `sql`'s schema.
    pub fn parse(pairs: &Pairs, sql: &Sql) -> Result<Self, ApiError> {
        let schema = &sql.schema;
        let mut w = Where::default();
        let start = unix(pairs, "startDate")?;
        let end = unix(pairs, "endDate")?;
        if let (Some(s), Some(e)) = (start, end) {
            if s > e {
                return Err(bad("startDate", "must not be after endDate"));
            }
        }
        if let Some(s) = start {
            let p = w.bind(s);
            w.and(format!("t.created_at >= {p}"));
        }
        if let Some(e) = end {
            // Inclusive: the whole second of endDate.
            let p = w.bind(e + TimeDelta::seconds(1));
            w.and(format!("t.created_at < {p}"));
        }
        if let Some(since) = unix(pairs, "since")? {
            // Strict: revision > since, and revision is the whole second of updated_at.
            let p = w.bind(since + TimeDelta::seconds(1));
            w.and(format!("t.updated_at >= {p}"));
        }
        if let Some(q) = text(pairs, "query")? {
            // Two index lookups (orders' own texts, customers' name and email) joined by id:
            // an OR across the two tables would scan every order.
            let p = w.bind(q.to_string());
            w.and(format!(
                "t.id IN (SELECT o.id FROM {schema}.sales_orders o WHERE {ORDER_SEARCH} @@ websearch_to_tsquery('simple', {p})
                          UNION
                          SELECT o.id FROM {schema}.customers k JOIN {schema}.sales_orders o ON o.customer_id = k.id
                           WHERE {CUSTOMER_SEARCH} @@ websearch_to_tsquery('simple', {p}))"
            ));
        }
        let size = match integer(pairs, "size")? {
            None => DEFAULT_SIZE,
            Some(n) if SIZES.contains(&n) => n,
            Some(n) => return Err(bad("size", format!("must be 20, 40 or 80, not {n}"))),
        };
        let page = match integer(pairs, "page")? {
            None => 0,
            Some(n) if (0..=MAX_PAGE).contains(&n) => n,
            Some(n) => return Err(bad("page", format!("must be from 0 to {MAX_PAGE}, not {n}"))),
        };
        let offset = page * size;

        let count_params = w.params.len();
        let conditions = w.conditions.join(" AND ");
        let count_sql = format!("SELECT count(*) FROM {schema}.sales_orders t WHERE {conditions}");
        let limit = w.bind(size);
        let offset = w.bind(offset);
        // The page's rows first (an index walk), then the documents of those rows alone.
        let page_sql = format!(
            "SELECT ({document})::text
               FROM (SELECT t.id, t.created_at, t.uuid FROM {schema}.sales_orders t WHERE {conditions}
                      ORDER BY t.created_at DESC, t.uuid LIMIT {limit} OFFSET {offset}) p
               JOIN {schema}.sales_orders t ON t.id = p.id
               LEFT JOIN {schema}.customers c ON c.id = t.customer_id
              ORDER BY p.created_at DESC, p.uuid",
            document = sql.document,
        );
        Ok(Self { count_sql, page_sql, params: w.params, count_params })
    }
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The store handle must be ours: another is a 404, as a webstore of other stores is.
fn check_store(state: &AppState, store: &str) -> Result<(), ApiError> {
    if store == state.tenant {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no store {store:?}")))
    }
}

fn path_error(e: PathRejection) -> ApiError {
    ApiError::bad_request("invalid_path", e.body_text())
}

fn is_uuid(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The order `…/orders/{file}` names: `<uuid>.json` (count.json has a route of its own, so
/// its 405s list the one method it takes).
fn target(state: &AppState, path: Result<Path<(String, String)>, PathRejection>) -> Result<String, ApiError> {
    let Path((store, file)) = path.map_err(path_error)?;
    check_store(state, &store)?;
    match file.strip_suffix(".json") {
        Some(uuid) if is_uuid(uuid) => Ok(uuid.to_ascii_lowercase()),
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no order {file:?}: an order is <uuid>.json, 32 hex digits"))),
    }
}

fn no_order(uuid: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no order with uuid {uuid}"))
}

fn pairs(query: Option<String>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect()
}

/// `GET /{store}/api/v2/sales/orders.json`: a bare array of documents.
pub async fn list(State(state): State<Arc<AppState>>, store: Result<Path<String>, PathRejection>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    check_store(&state, &store.map_err(path_error)?.0)?;
    let listing = Listing::parse(&pairs(query), &state.webstore)?;
    let client = state.pool.get().await.map_err(ApiError::database)?;
    let statement = client.prepare_cached(&listing.page_sql).await.map_err(ApiError::database)?;
    let rows = client.query(&statement, &listing.params()).await.map_err(ApiError::database)?;
    let mut body = super::documents_body("[", &rows, 0, 1);
    body.push(']');
    Ok(json(StatusCode::OK, body))
}

/// `GET …/orders/count.json`: the bare integer for the listing's filters.
pub async fn count(State(state): State<Arc<AppState>>, store: Result<Path<String>, PathRejection>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    check_store(&state, &store.map_err(path_error)?.0)?;
    let listing = Listing::parse(&pairs(query), &state.webstore)?;
    let client = state.pool.get().await.map_err(ApiError::database)?;
    let statement = client.prepare_cached(&listing.count_sql).await.map_err(ApiError::database)?;
    let row = client.query_one(&statement, &listing.params()[..listing.count_params]).await.map_err(ApiError::database)?;
    Ok(json(StatusCode::OK, row.get::<_, i64>(0).to_string()))
}

/// `GET …/orders/{uuid}.json`: one document.
pub async fn get(State(state): State<Arc<AppState>>, path: Result<Path<(String, String)>, PathRejection>) -> Result<Response, ApiError> {
    let uuid = target(&state, path)?;
    let client = state.pool.get().await.map_err(ApiError::database)?;
    let statement = client.prepare_cached(&state.webstore.one).await.map_err(ApiError::database)?;
    match client.query_opt(&statement, &[&uuid]).await.map_err(ApiError::database)? {
        Some(row) => Ok(json(StatusCode::OK, row.get(0))),
        None => Err(no_order(&uuid)),
    }
}

/// `PUT …/orders/{uuid}.json`: updates the writable fields; answers the new document.
pub async fn put(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let uuid = target(&state, path)?;
    let body = body.map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.body_text()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}")))?;
    let document = update::update(&state, &uuid, &value).await?;
    Ok(json(StatusCode::OK, document))
}

/// `DELETE …/orders/{uuid}.json`: the order stops being active, as deletions are seen by
/// the export and the Postgres source (`sales_order.deleted`); later GETs are 404.
pub async fn delete(State(state): State<Arc<AppState>>, path: Result<Path<(String, String)>, PathRejection>) -> Result<Response, ApiError> {
    let uuid = target(&state, path)?;
    let client = state.pool.get().await.map_err(ApiError::database)?;
    let deleted = client
        .execute(&format!("UPDATE {}.sales_orders SET status = 'Deleted' WHERE uuid = $1 AND status = 'Active'", state.webstore.schema), &[&uuid])
        .await
        .map_err(ApiError::database)?;
    if deleted == 0 {
        return Err(no_order(&uuid));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(query: &str) -> u16 {
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        Listing::parse(&pairs, &Sql::new("public")).err().map(|e| e.status.as_u16()).unwrap_or(200)
    }

    #[test]
    fn statuses_of_bad_input() {
        assert_eq!(status(""), 200);
        assert_eq!(status("size=80&page=3&startDate=1265627628&endDate=1265627628&since=0&query=x"), 200);
        for bad in ["size=10", "size=x", "page=-1", "page=x", "page=9223372036854775807&size=80", "since=1.5", "startDate=x", "endDate=999999999999999", "startDate=2&endDate=1", "query=a%00b", "startDate=+&since=+", "since=+", "size=+40", "page=1+", "size=%2B40"] {
            assert_eq!(status(bad), 400, "{bad}");
        }
    }

    #[test]
    fn uuids_are_32_hex_digits() {
        assert!(is_uuid("06429e75a8ea11de80c09314b8ee4e52"));
        assert!(is_uuid("06429E75A8EA11DE80C09314B8EE4E52"));
        assert!(!is_uuid("06429e75-a8ea-11de-80c0-9314b8ee4e52"));
        assert!(!is_uuid("06429e75a8ea11de80c09314b8ee4e5g"));
    }
}
