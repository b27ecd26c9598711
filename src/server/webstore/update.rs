//! `PUT …/orders/{uuid}.json` (seed 003): the writable fields are `number`, `reference`,
//! `status`, `customer` (its `id`, `username`, `email`) and `lines` (each line's `uuid`,
//! `productUUID`, `quantity`, `price` and `taxes` with `name`, `group`, `taxtype`, `rate`).
//!
//! Every other field of the document is readonly. A readonly field sent with the value
//! the order has is accepted, so a client may send back the document it fetched with its
//! changes; a different value is refused with a 422 field error that names it. Sending
//! back a stale `revision` is therefore refused too: the order changed since it was read.
//!
//! `lines` is the whole new list, in order: a line whose `uuid` is one of the order's
//! keeps its identity, a line without one (or with an unknown one) is new and needs a
//! `productUUID`, and the order's lines left out are removed. The tax total of every
//! changed line is `quantity × price × rate / 100` (rounded to cents); the line's `tax`,
//! weight and the order's totals follow, and `updated_at` moves with the change (the
//! touch triggers), so every dialect and the Postgres source see it.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::Transaction;

use super::super::create::{is_email, money, nul_path, Checker, MAX_CENTS, MAX_TEXT};
use super::super::error::{ApiError, FieldError};
use super::super::orders::{borrowed, Param};
use super::super::AppState;
use super::{is_uuid, no_order, STATUSES};

const MAX_LINES: usize = 1000;
const MAX_TAXES: usize = 10;
/// The largest products subtotal a PUT may set, in cents: with at most `MAX_TAXES` taxes
/// of at most 100% on every line, every total then fits the `numeric(14,2)` columns.
const MAX_SUBTOTAL: i128 = MAX_CENTS as i128 / (MAX_TAXES as i128 + 2);

#[derive(Debug, Clone, PartialEq)]
struct Tax {
    name: String,
    group: Option<String>,
    taxtype: Option<String>,
    /// The rate as given (`"7.00"`): PostgreSQL keeps its scale.
    rate: String,
}

#[derive(Debug)]
struct Line {
    /// Its place in the request, for error paths.
    index: usize,
    /// The uuid of the order's line it updates.
    existing: Option<String>,
    /// The uuid a new line asks for.
    uuid: Option<String>,
    /// A product to (re)base the line on.
    product: Option<String>,
    quantity: i32,
    cents: i64,
    /// New taxes for the line (replacing its own).
    taxes: Option<Vec<Tax>>,
    /// Whether its quantity, price, product or taxes change: its totals are recomputed.
    touched: bool,
}

#[derive(Debug, Default)]
struct Change {
    number: Option<String>,
    reference: Option<Option<String>>,
    status: Option<String>,
    customer_id: Option<Option<i64>>,
    username: Option<Option<String>>,
    email: Option<Option<String>>,
    lines: Option<Vec<Line>>,
}

/// A non-negative decimal given as a JSON string or number (`"2.5"`, `4`) with at most
/// `scale` decimals: its whole part and its fraction's digits.
fn decimal(v: &Value, scale: usize) -> Option<(i64, String)> {
    let s = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let (whole, fraction) = match s.split_once('.') {
        Some((w, f)) if !f.is_empty() => (w, f),
        Some(_) => return None,
        None => (s.as_str(), ""),
    };
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || whole.len() > 15 || !digits(whole) || fraction.len() > scale || !digits(fraction) {
        return None;
    }
    Some((whole.parse().ok()?, fraction.to_string()))
}

/// A whole, positive quantity (`"4"`, `4`, `"4.0"`): order lines hold whole units.
fn quantity(v: &Value) -> Option<i32> {
    let (whole, fraction) = decimal(v, 6)?;
    (fraction.bytes().all(|b| b == b'0') && whole >= 1).then(|| i32::try_from(whole).ok()).flatten()
}

/// A price in cents (at most two decimals).
fn cents(v: &Value) -> Option<i64> {
    let (whole, fraction) = decimal(v, 2)?;
    Some(whole * 100 + format!("{fraction:0<2}").parse::<i64>().ok()?)
}

/// A tax rate in percent, 0 to 100, with at most four decimals; kept as given.
fn rate(v: &Value) -> Option<String> {
    let (whole, fraction) = decimal(v, 4)?;
    let whole_percent = fraction.bytes().all(|b| b == b'0');
    (whole < 100 || (whole == 100 && whole_percent)).then(|| if fraction.is_empty() { whole.to_string() } else { format!("{whole}.{fraction}") })
}

/// A field the client may only send unchanged.
fn readonly(c: &mut Checker, path: &str, given: &Value, stored: Option<&Value>) {
    match stored {
        None => c.fail(path, "is not a field of this resource"),
        Some(s) if s == given => {}
        Some(_) => c.fail(path, "is readonly: leave it out or send it unchanged"),
    }
}

fn uuid(c: &mut Checker, v: &Value, path: &str) -> Option<String> {
    match v {
        Value::String(s) if is_uuid(s) => Some(s.to_ascii_lowercase()),
        _ => {
            c.fail(path, "must be a uuid: 32 hex digits");
            None
        }
    }
}

fn read_customer(c: &mut Checker, value: &Value, stored: &Value, change: &mut Change) {
    let Some(obj) = value.as_object() else { return c.fail("customer", "must be an object") };
    for (key, v) in obj {
        let path = format!("customer.{key}");
        match key.as_str() {
            "id" => change.customer_id = Some(c.integer(obj, key, &path, false)),
            "username" => change.username = Some(c.text(obj, key, &path, false, Some(MAX_TEXT))),
            "email" => {
                let email = c.text(obj, key, &path, false, Some(MAX_TEXT));
                if email.as_deref().is_some_and(|e| !is_email(e)) {
                    c.fail(&path, "must be an email address");
                }
                change.email = Some(email);
            }
            other => readonly(c, &path, v, stored.get(other)),
        }
    }
}

fn read_taxes(c: &mut Checker, value: &Value, path: &str, stored: Option<&Value>) -> Option<Vec<Tax>> {
    let Some(list) = value.as_array() else {
        c.fail(path, "must be an array of taxes");
        return None;
    };
    if list.len() > MAX_TAXES {
        c.fail(path, format!("must have at most {MAX_TAXES} taxes"));
    }
    let mut taxes = Vec::new();
    for (j, tax) in list.iter().enumerate() {
        let path = format!("{path}[{j}]");
        let Some(obj) = tax.as_object() else {
            c.fail(&path, "must be an object");
            continue;
        };
        for (key, v) in obj {
            if !["name", "group", "taxtype", "rate"].contains(&key.as_str()) {
                let stored = stored.and_then(|s| s.get(j)).and_then(|t| t.get(key));
                readonly(c, &format!("{path}.{key}"), v, stored);
            }
        }
        let name = c.text(obj, "name", &format!("{path}.name"), true, Some(MAX_TEXT));
        let group = c.text(obj, "group", &format!("{path}.group"), false, Some(MAX_TEXT));
        let taxtype = c.text(obj, "taxtype", &format!("{path}.taxtype"), false, Some(MAX_TEXT));
        let rate = match obj.get("rate") {
            None | Some(Value::Null) => {
                c.fail(&format!("{path}.rate"), "is required");
                None
            }
            Some(v) => rate(v).or_else(|| {
                c.fail(&format!("{path}.rate"), "must be a percentage from 0 to 100 with at most four decimals, such as \"7.00\"");
                None
            }),
        };
        if let (Some(name), Some(rate)) = (name, rate) {
            taxes.push(Tax { name, group, taxtype, rate });
        }
    }
    Some(taxes)
}

/// The taxes of a stored line, to tell whether a request changes them.
fn stored_taxes(line: &Value) -> Vec<Tax> {
    let text = |t: &Value, k: &str| t.get(k).and_then(Value::as_str).map(String::from);
    line["taxes"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|t| Tax { name: text(t, "name").unwrap_or_default(), group: text(t, "group"), taxtype: text(t, "taxtype"), rate: text(t, "rate").unwrap_or_default() })
                .collect()
        })
        .unwrap_or_default()
}

fn read_line(c: &mut Checker, index: usize, obj: &Map<String, Value>, stored: &HashMap<String, &Value>) -> Option<Line> {
    let path = |k: &str| format!("lines[{index}].{k}");
    let given_uuid = match obj.get("uuid") {
        None | Some(Value::Null) => None,
        Some(v) => Some(uuid(c, v, &path("uuid"))?),
    };
    let current = given_uuid.as_ref().and_then(|u| stored.get(u)).copied();
    for (key, v) in obj {
        match (key.as_str(), current) {
            ("uuid" | "productUUID" | "quantity" | "price" | "taxes", _) => {}
            ("type", _) if v == "orderline" => {}
            ("type", _) => c.fail(&path(key), "must be \"orderline\""),
            (other, Some(line)) => readonly(c, &path(other), v, line.get(other)),
            ("totalWeight" | "tax" | "subtotal" | "total", None) => c.fail(&path(key), "is readonly"),
            (_, None) => c.fail(&path(key), "is not a field of an order line"),
        }
    }
    let product = match obj.get("productUUID") {
        None | Some(Value::Null) => None,
        Some(v) => Some(uuid(c, v, &path("productUUID"))?),
    };
    let units = match obj.get("quantity") {
        None | Some(Value::Null) => current.and_then(|l| quantity(&l["quantity"])),
        Some(v) => Some(quantity(v).or_else(|| {
            c.fail(&path("quantity"), "must be a whole number of units from 1 to 2147483647");
            None
        })?),
    };
    let price = match obj.get("price") {
        None | Some(Value::Null) => Some(current.and_then(|l| cents(&l["price"])).unwrap_or(0)),
        Some(v) => Some(cents(v).or_else(|| {
            c.fail(&path("price"), "must be an amount of at least 0 with at most two decimals, such as \"12.50\"");
            None
        })?),
    };
    let taxes = match obj.get("taxes") {
        None | Some(Value::Null) => None,
        Some(v) => Some(read_taxes(c, v, &path("taxes"), current.map(|l| &l["taxes"]))?),
    };
    let Some(units) = units else {
        c.fail(&path("quantity"), "is required for a new line");
        return None;
    };
    match current {
        None => {
            if product.is_none() {
                c.fail(&path("productUUID"), "is required for a new line");
            }
            Some(Line { index, existing: None, uuid: given_uuid, product, quantity: units, cents: price?, taxes, touched: true })
        }
        Some(line) => {
            let product = product.filter(|p| line["productUUID"].as_str() != Some(p.as_str()));
            let taxes = taxes.filter(|t| *t != stored_taxes(line));
            let touched = product.is_some()
                || taxes.is_some()
                || Some(units) != quantity(&line["quantity"])
                || price != cents(&line["price"]);
            Some(Line { index, existing: given_uuid, uuid: None, product, quantity: units, cents: price?, taxes, touched })
        }
    }
}

fn read_lines(c: &mut Checker, value: &Value, stored: &Value) -> Option<Vec<Line>> {
    let Some(list) = value.as_array() else {
        c.fail("lines", "must be an array of order lines");
        return None;
    };
    if list.is_empty() {
        c.fail("lines", "must have at least one line");
    } else if list.len() > MAX_LINES {
        c.fail("lines", format!("must have at most {MAX_LINES} lines"));
    }
    let stored: HashMap<String, &Value> =
        stored.as_array().into_iter().flatten().filter_map(|l| Some((l["uuid"].as_str()?.to_string(), l))).collect();
    let mut seen = BTreeSet::new();
    let mut lines = Vec::new();
    for (i, line) in list.iter().enumerate() {
        let Some(obj) = line.as_object() else {
            c.fail(&format!("lines[{i}]"), "must be an object");
            continue;
        };
        let Some(line) = read_line(c, i, obj, &stored) else { continue };
        if let Some(u) = line.existing.as_ref().or(line.uuid.as_ref()) {
            if !seen.insert(u.clone()) {
                c.fail(&format!("lines[{i}].uuid"), "appears on two lines");
            }
        }
        lines.push(line);
    }
    let subtotal: i128 = lines.iter().map(|l| l.quantity as i128 * l.cents as i128).sum();
    if subtotal > MAX_SUBTOTAL {
        c.fail("lines", "the order total is too large");
    }
    Some(lines)
}

/// Reads a request against the order's current document.
fn read(body: &Value, current: &Value) -> Result<Change, ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::validation(vec![FieldError { field: "body".into(), message: "must be a JSON object".into() }]));
    };
    if let Some(path) = nul_path(body, "") {
        let field = if path.is_empty() { "body".to_string() } else { path };
        return Err(ApiError::validation(vec![FieldError { field, message: "must not contain NUL characters".into() }]));
    }
    let mut c = Checker::default();
    let mut change = Change::default();
    for (key, value) in obj {
        match key.as_str() {
            "number" => change.number = c.text(obj, key, key, true, Some(MAX_TEXT)),
            "reference" => change.reference = Some(c.text(obj, key, key, false, Some(MAX_TEXT))),
            "status" => match value.as_str().filter(|s| STATUSES.contains(s)) {
                Some(s) => change.status = Some(s.to_string()),
                None => c.fail("status", format!("must be one of {}", STATUSES.join(", "))),
            },
            "customer" => read_customer(&mut c, value, &current["customer"], &mut change),
            "lines" => change.lines = read_lines(&mut c, value, &current["lines"]),
            other => readonly(&mut c, other, value, current.get(other)),
        }
    }
    if c.errors.is_empty() {
        Ok(change)
    } else {
        Err(ApiError::validation(c.errors))
    }
}

impl Change {
    fn is_empty(&self) -> bool {
        self.number.is_none()
            && self.reference.is_none()
            && self.status.is_none()
            && self.customer_id.is_none()
            && self.username.is_none()
            && self.email.is_none()
            && self.lines.is_none()
    }
}

/// What the database still has to confirm: the customer and the products exist, and a
/// new line's uuid is not another order's.
async fn check(tx: &Transaction<'_>, s: &str, id: i64, change: &Change) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    if let Some(Some(customer)) = change.customer_id {
        let found = tx.query_opt(&format!("SELECT 1 FROM {s}.customers WHERE id = $1"), &[&customer]).await.map_err(ApiError::database)?;
        if found.is_none() {
            errors.push(FieldError { field: "customer.id".into(), message: format!("customer {customer} does not exist") });
        }
    }
    let lines = change.lines.as_deref().unwrap_or_default();
    let products: Vec<&str> = lines.iter().filter_map(|l| l.product.as_deref()).collect();
    let known: BTreeSet<String> = tx
        .query(&format!("SELECT uuid FROM {s}.products WHERE uuid = ANY($1)"), &[&products])
        .await
        .map_err(ApiError::database)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let wanted: Vec<&str> = lines.iter().filter_map(|l| l.uuid.as_deref()).collect();
    let taken: BTreeSet<String> = tx
        .query(&format!("SELECT uuid FROM {s}.sales_order_items WHERE uuid = ANY($1) AND sales_order_id <> $2"), &[&wanted, &id])
        .await
        .map_err(ApiError::database)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for line in lines {
        if line.product.as_ref().is_some_and(|p| !known.contains(p)) {
            errors.push(FieldError { field: format!("lines[{}].productUUID", line.index), message: "no product has this uuid".into() });
        }
        if line.uuid.as_ref().is_some_and(|u| taken.contains(u)) {
            errors.push(FieldError { field: format!("lines[{}].uuid", line.index), message: "is the uuid of another order's line".into() });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

/// Writes the change; the touch triggers move the order's `updated_at`.
async fn apply(tx: &Transaction<'_>, s: &str, id: i64, change: &Change) -> Result<(), tokio_postgres::Error> {
    let mut sets = Vec::new();
    let mut values: Vec<Param> = vec![Box::new(id)];
    let mut set = |column: &str, value: Param| {
        values.push(value);
        sets.push(format!("{column} = ${}", values.len()));
    };
    if let Some(v) = &change.number {
        set("order_number", Box::new(v.clone()));
    }
    if let Some(v) = &change.reference {
        set("customer_po_number", Box::new(v.clone()));
    }
    if let Some(v) = &change.status {
        set("webstore_status", Box::new(v.clone()));
    }
    if let Some(v) = change.customer_id {
        set("customer_id", Box::new(v));
    }
    if let Some(v) = &change.username {
        set("customer_username", Box::new(v.clone()));
    }
    if let Some(v) = &change.email {
        set("customer_email", Box::new(v.clone()));
    }
    if !sets.is_empty() {
        tx.execute(&format!("UPDATE {s}.sales_orders SET {} WHERE id = $1", sets.join(", ")), &borrowed(&values)).await?;
    }
    let Some(lines) = &change.lines else { return Ok(()) };
    let kept: Vec<&str> = lines.iter().filter_map(|l| l.existing.as_deref()).collect();
    tx.execute(&format!("DELETE FROM {s}.sales_order_items WHERE sales_order_id = $1 AND uuid <> ALL($2)"), &[&id, &kept]).await?;
    let mut touched: Vec<i64> = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let number = n as i32 + 1;
        let price = money(line.cents);
        let item: i64 = match &line.existing {
            Some(uuid) => {
                let row = tx
                    .query_one(
                        &format!("UPDATE {s}.sales_order_items SET line_number = $2, quantity = $3, unit_price = $4::text::numeric WHERE uuid = $1 RETURNING id"),
                        &[uuid, &number, &line.quantity, &price],
                    )
                    .await?;
                if let Some(product) = &line.product {
                    tx.execute(
                        &format!(
                            "UPDATE {s}.sales_order_items i SET (product_id, sku, name, upc) = (SELECT p.id, p.sku, p.name, p.upc FROM {s}.products p WHERE p.uuid = $2) WHERE i.id = $1"
                        ),
                        &[&row.get::<_, i64>(0), product],
                    )
                    .await?;
                }
                row.get(0)
            }
            None => tx
                .query_one(
                    &format!(
                        "INSERT INTO {s}.sales_order_items (sales_order_id, line_number, product_id, sku, name, upc, quantity, unit_price, uuid)
                         SELECT $1, $2, p.id, p.sku, p.name, p.upc, $3, $4::text::numeric, coalesce($6, {s}.order_cdc_new_uuid())
                           FROM {s}.products p WHERE p.uuid = $5
                         RETURNING id"
                    ),
                    &[&id, &number, &line.quantity, &price, &line.product, &line.uuid],
                )
                .await?
                .get(0),
        };
        if let Some(taxes) = &line.taxes {
            tx.execute(&format!("DELETE FROM {s}.sales_order_item_taxes WHERE item_id = $1"), &[&item]).await?;
            for (position, t) in taxes.iter().enumerate() {
                tx.execute(
                    &format!(
                        "INSERT INTO {s}.sales_order_item_taxes (sales_order_id, item_id, position, name, tax_group, taxtype, rate)
                         VALUES ($1, $2, $3, $4, $5, $6, $7::text::numeric)"
                    ),
                    &[&id, &item, &(position as i32), &t.name, &t.group, &t.taxtype, &t.rate],
                )
                .await?;
            }
        }
        if line.touched {
            touched.push(item);
        }
    }
    tx.execute(
        &format!(
            "UPDATE {s}.sales_order_item_taxes x SET total = round(i.quantity * i.unit_price * x.rate / 100, 2)
               FROM {s}.sales_order_items i WHERE i.id = x.item_id AND x.item_id = ANY($1)"
        ),
        &[&touched],
    )
    .await?;
    tx.execute(
        &format!(
            "UPDATE {s}.sales_order_items i
                SET tax = coalesce((SELECT sum(x.total) FROM {s}.sales_order_item_taxes x WHERE x.item_id = i.id), 0),
                    total_weight = i.quantity * coalesce((SELECT p.weight FROM {s}.products p WHERE p.id = i.product_id), 0)
              WHERE i.id = ANY($1)"
        ),
        &[&touched],
    )
    .await?;
    tx.execute(
        &format!(
            "UPDATE {s}.sales_orders t
                SET product_total = l.subtotal,
                    discount_total = least(t.discount_total, l.subtotal),
                    total_tax = l.tax + t.shipping_tax,
                    total_amount = l.subtotal - least(t.discount_total, l.subtotal) + l.tax + t.shipping_tax + t.total_shipping
               FROM (SELECT coalesce(sum(i.quantity * i.unit_price), 0) AS subtotal, coalesce(sum(i.tax), 0) AS tax
                       FROM {s}.sales_order_items i WHERE i.sales_order_id = $1) l
              WHERE t.id = $1"
        ),
        &[&id],
    )
    .await?;
    Ok(())
}

/// A write the checks could not foresee (a concurrent writer took the number or a line's
/// uuid, a total overflows): a field error, never a 5xx.
fn write_error(e: tokio_postgres::Error) -> ApiError {
    let field = |field: &str, message: &str| ApiError::validation(vec![FieldError { field: field.into(), message: message.into() }]);
    let constraint = e.as_db_error().and_then(|d| d.constraint());
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION && constraint == Some("sales_orders_order_number_key") => {
            field("number", "is the number of another order")
        }
        Some(c) if *c == SqlState::UNIQUE_VIOLATION && constraint == Some("sales_order_items_uuid") => {
            field("lines", "a line's uuid is the uuid of another order's line")
        }
        Some(c) if *c == SqlState::NUMERIC_VALUE_OUT_OF_RANGE || *c == SqlState::CHECK_VIOLATION => {
            field("lines", "a total is out of range")
        }
        _ => ApiError::database(e),
    }
}

/// Updates the active order `uuid` from `body`; returns its new document.
pub(super) async fn update(state: &AppState, uuid: &str, body: &Value) -> Result<String, ApiError> {
    let s = &state.webstore.schema;
    let mut client = state.pool.get().await.map_err(ApiError::database)?;
    let tx = client.transaction().await.map_err(ApiError::database)?;
    let id: i64 = tx
        .query_opt(&format!("SELECT id FROM {s}.sales_orders WHERE uuid = $1 AND status = 'Active' FOR UPDATE"), &[&uuid])
        .await
        .map_err(ApiError::database)?
        .ok_or_else(|| no_order(uuid))?
        .get(0);
    let current: String = tx.query_one(&state.webstore.by_id, &[&id]).await.map_err(ApiError::database)?.get(0);
    let change = read(body, &serde_json::from_str::<Value>(&current).map_err(ApiError::database)?)?;
    if change.is_empty() {
        return Ok(current);
    }
    check(&tx, s, id, &change).await?;
    apply(&tx, s, id, &change).await.map_err(write_error)?;
    let document: String = tx.query_one(&state.webstore.by_id, &[&id]).await.map_err(ApiError::database)?.get(0);
    tx.commit().await.map_err(ApiError::database)?;
    Ok(document)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored() -> Value {
        json!({"type": "orders", "uuid": "0123456789abcdef0123456789abcdef", "revision": 10, "number": "N-1",
               "customer": {"id": null, "code": null, "name": null, "username": "u", "email": null},
               "lines": [{"type": "orderline", "uuid": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "productUUID": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
                          "quantity": "2", "price": "10.00", "totalWeight": "0", "tax": "1.50", "subtotal": "20.00", "total": "21.50",
                          "taxes": [{"name": "VAT", "group": null, "taxtype": "SALES", "rate": "7.50", "total": "1.50"}]}],
               "total": "21.50"})
    }

    /// The fields a request is refused for, sorted.
    fn fields(body: Value) -> Vec<String> {
        let mut fields: Vec<String> = match read(&body, &stored()) {
            Ok(_) => Vec::new(),
            Err(e) => e.fields.into_iter().map(|f| f.field).collect(),
        };
        fields.sort();
        fields
    }

    #[test]
    fn the_stored_document_sent_back_changes_nothing_readonly() {
        assert!(fields(stored()).is_empty());
        let change = read(&stored(), &stored()).unwrap();
        assert!(!change.lines.as_ref().unwrap()[0].touched, "an unchanged line is not recomputed");
    }

    #[test]
    fn readonly_and_unknown_fields_are_named() {
        let mut b = stored();
        b["revision"] = json!(9);
        b["total"] = json!("1.00");
        b["isPaid"] = json!(true);
        b["customer"]["name"] = json!("X");
        b["lines"][0]["tax"] = json!("9.99");
        b["lines"][0]["taxes"][0]["total"] = json!("2.00");
        b["lines"][0]["type"] = json!("line");
        assert_eq!(
            fields(b),
            vec!["customer.name", "isPaid", "lines[0].tax", "lines[0].taxes[0].total", "lines[0].type", "revision", "total"]
        );
    }

    #[test]
    fn writable_fields_are_checked() {
        let b = json!({"number": "", "status": "lost", "customer": {"email": "nope", "id": "x"},
                       "lines": [{"quantity": "2.5", "price": "-1"}, {"uuid": "xyz"}, {"productUUID": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "quantity": 1, "taxes": [{"rate": "101"}]}]});
        assert_eq!(
            fields(b),
            vec!["customer.email", "customer.id", "lines[0].quantity", "lines[1].uuid", "lines[2].taxes[0].name", "lines[2].taxes[0].rate", "number", "status"]
        );
        assert_eq!(fields(json!({"lines": []})), vec!["lines"]);
        assert_eq!(fields(json!([])), vec!["body"]);
        assert_eq!(fields(json!({"reference": "a\u{0}"})), vec!["reference"]);
    }

    #[test]
    fn decimals() {
        assert_eq!(quantity(&json!("4")), Some(4));
        assert_eq!(quantity(&json!(4.0)), Some(4));
        assert_eq!(quantity(&json!("2.5")), None);
        assert_eq!(quantity(&json!("0")), None);
        assert_eq!(quantity(&json!("3000000000")), None);
        assert_eq!(cents(&json!("12.5")), Some(1250));
        assert_eq!(cents(&json!(7)), Some(700));
        assert_eq!(cents(&json!("1.234")), None);
        assert_eq!(cents(&json!("1.")), None);
        assert_eq!(rate(&json!("7.00")), Some("7.00".into()));
        assert_eq!(rate(&json!(100)), Some("100".into()));
        assert_eq!(rate(&json!("100.5")), None);
        assert_eq!(rate(&json!("1e2")), None);
    }
}
