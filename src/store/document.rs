//! The export document of seed 001, built by PostgreSQL from the reference schema. It
//! leaves the database as JSON text and reaches Kafka as those bytes: never parsed into
//! structs and encoded again.
//!
//! The SQL is generated from field lists. Each field is written by plain text
//! concatenation, which PostgreSQL does about a third faster than `json_build_object`
//! (that one looks up every argument's type on every row), and building documents is
//! where the database spends its time. Strings are escaped by `to_json(text)`; NULL
//! becomes `null` field by field, because one NULL would otherwise blank the whole `||`.

/// How a column becomes a JSON value.
#[derive(Clone, Copy)]
pub enum Json<'a> {
    /// A number column (integer, numeric).
    Number(&'a str),
    /// A boolean column.
    Bool(&'a str),
    /// Money: `numeric` written as the shortest float (`128.23`, `12.5`), as seed 001 shows.
    Money(&'a str),
    /// A decimal as a JSON string of its exact `numeric` text (`"112.48"`), as seed 003
    /// writes decimals; numbers need no escaping.
    Decimal(&'a str),
    /// Text, escaped.
    Text(&'a str),
    /// A `date`, as `YYYY-MM-DD`.
    Date(&'a str),
    /// A timestamp: UTC, microseconds, `Z`.
    Timestamp(&'a str),
    /// A timestamp to the second, as seed 002 writes them: `YYYY-MM-DD HH:MM:SS` in UTC.
    /// The fraction is cut, never rounded, so a row shows the second it falls in.
    Second(&'a str),
    /// An SQL expression that already yields JSON text (never NULL).
    Raw(&'a str),
}

impl Json<'_> {
    fn sql(&self) -> String {
        match self {
            Json::Number(e) | Json::Bool(e) => format!("coalesce(({e})::text, 'null')"),
            Json::Money(e) => format!("coalesce(({e})::float8::text, 'null')"),
            Json::Decimal(e) => format!(r#"coalesce('"' || ({e})::text || '"', 'null')"#),
            Json::Text(e) => format!("coalesce(to_json(({e})::text)::text, 'null')"),
            Json::Date(e) => format!(r#"coalesce('"' || to_char({e}, 'YYYY-MM-DD') || '"', 'null')"#),
            Json::Timestamp(e) => format!(r#"coalesce('"' || {} || '"', 'null')"#, ts(e)),
            Json::Second(e) => format!(r#"coalesce('"' || to_char(({e}) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '"', 'null')"#),
            Json::Raw(e) => e.to_string(),
        }
    }
}

/// A timestamp the way every document writes it: UTC, microseconds, `Z`.
pub fn ts(expr: &str) -> String {
    format!(r#"to_char(({expr}) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#)
}

/// An SQL text expression that yields the JSON object of these fields.
pub fn object(fields: &[(&str, Json)]) -> String {
    let mut sql = String::from("'{'");
    for (i, (name, value)) in fields.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        sql.push_str(&format!("\n || '{sep}\"{name}\":' || {}", value.sql()));
    }
    sql.push_str(" || '}'");
    sql
}

/// An SQL text expression that yields the JSON array of `object` over the rows of `from`
/// (which names its alias), in `order` (`[]` when there are none).
pub fn array(object: &str, from: &str, order: &str) -> String {
    format!("coalesce((SELECT '[' || string_agg({object}, ',' ORDER BY {order}) || ']' FROM {from}), '[]')")
}

/// The fields of the export document's order (alias `t`, a row of `sales_orders`), in
/// document order; its child arrays follow them. One list serves both builders: the SQL
/// of `export_document` and the assembly in Rust (`store::export`).
pub const EXPORT_ORDER: &[(&str, Json<'static>)] = &[
    ("order_id", Json::Number("t.id")),
    ("order_number", Json::Text("t.order_number")),
    ("status", Json::Text("t.status")),
    ("order_status", Json::Text("t.order_status")),
    ("total_amount", Json::Money("t.total_amount")),
    ("total_tax", Json::Money("t.total_tax")),
    ("total_shipping", Json::Money("t.total_shipping")),
    ("total_paid", Json::Money("t.total_paid")),
    ("customer_id", Json::Number("t.customer_id")),
    ("customer_username", Json::Text("t.customer_username")),
    ("customer_email", Json::Text("t.customer_email")),
    ("order_date", Json::Date("t.order_date")),
    ("created_at", Json::Timestamp("t.created_at")),
    ("updated_at", Json::Timestamp("t.updated_at")),
];

/// A child array of the export document: the rows of `table` (alias `alias`) whose
/// `sales_order_id` is the order's id, in `order`.
pub struct Child {
    pub name: &'static str,
    pub table: &'static str,
    pub alias: &'static str,
    pub fields: &'static [(&'static str, Json<'static>)],
    pub order: &'static str,
}

pub const EXPORT_CHILDREN: &[Child] = &[
    Child {
        name: "items",
        table: "sales_order_items",
        alias: "i",
        fields: &[
            ("order_item_id", Json::Number("i.id")),
            ("sku", Json::Text("i.sku")),
            ("name", Json::Text("i.name")),
            ("quantity", Json::Number("i.quantity")),
            ("price", Json::Money("i.unit_price")),
            ("tax", Json::Money("i.tax")),
            ("quantity_ordered", Json::Number("i.quantity")),
            ("quantity_shipped", Json::Number("i.quantity_shipped")),
            ("quantity_cancelled", Json::Number("i.quantity_cancelled")),
            ("created_at", Json::Timestamp("i.created_at")),
            ("updated_at", Json::Timestamp("i.updated_at")),
        ],
        order: "i.line_number, i.id",
    },
    Child {
        name: "shipments",
        table: "shipments",
        alias: "s",
        fields: &[
            ("shipment_id", Json::Number("s.id")),
            ("carrier", Json::Text("s.carrier")),
            ("service", Json::Text("s.service")),
            ("tracking_number", Json::Text("s.tracking_number")),
            ("status", Json::Text("s.status")),
            ("shipped_at", Json::Timestamp("s.shipped_at")),
            ("created_at", Json::Timestamp("s.created_at")),
            ("updated_at", Json::Timestamp("s.updated_at")),
        ],
        order: "s.id",
    },
    Child {
        name: "fulfillment_orders",
        table: "fulfillment_orders",
        alias: "f",
        fields: &[
            ("fulfillment_order_id", Json::Number("f.id")),
            ("order_number", Json::Text("f.order_number")),
            ("status", Json::Text("f.status")),
            ("warehouse_group_id", Json::Number("f.warehouse_group_id")),
            ("created_at", Json::Timestamp("f.created_at")),
            ("updated_at", Json::Timestamp("f.updated_at")),
        ],
        order: "f.id",
    },
];

/// The SQL expression (over alias `t`, a row of `sales_orders`) that yields the export
/// document as JSON text. `schema` is the quoted schema of the order table, where the
/// child tables live too. The source assembles the same bytes in Rust (`store::export`)
/// and keeps this as its fallback; tests keep it as the oracle.
pub fn export_document(schema: &str) -> String {
    let children: Vec<String> = EXPORT_CHILDREN
        .iter()
        .map(|c| array(&object(c.fields), &format!("{schema}.{} {a} WHERE {a}.sales_order_id = t.id", c.table, a = c.alias), c.order))
        .collect();
    let mut fields: Vec<(&str, Json)> = EXPORT_ORDER.to_vec();
    fields.extend(EXPORT_CHILDREN.iter().zip(&children).map(|(c, sql)| (c.name, Json::Raw(sql))));
    object(&fields)
}

/// Orders that are no longer active leave the export; the source turns them into
/// `sales_order.deleted` events.
pub const EXPORT_DELETED: &str = "t.status IS DISTINCT FROM 'Active'";
