//! The export document of seed 001 assembled in Rust. Building JSON text is most of what
//! PostgreSQL spends on a page (`store::document`), so the source reads typed rows instead
//! (binary protocol: integers, `float8`, text, raw dates and timestamps) and writes the
//! JSON bytes itself, byte for byte what the SQL builder yields (`store::json_text`). That
//! takes the work off the order database; on the two-core bench machine, which runs the
//! database too, it is as fast as the SQL builder (README, Benchmark). The SQL builder
//! stays as the fallback: for a table whose columns are not of the reference schema's
//! types, and for a page holding a value the assembly cannot write identically.
//!
//! A page is one order query and one query per child table, pipelined on one connection
//! inside a read-only REPEATABLE READ transaction: one round trip, and one snapshot, as
//! the single SQL statement had (a child changed between two snapshots would otherwise
//! publish a version of its order early).

use std::collections::HashMap;
use std::ops::Range;

use chrono::{DateTime, Utc};
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

use super::document::{Json, EXPORT_CHILDREN, EXPORT_ORDER};
use super::json_text::{self, Exotic};

/// The columns the order query reads before the document's fields: the key, its
/// `updated_at` and the `deleted` predicate.
pub const LEADING_COLUMNS: usize = 3;

/// How a field is read: the SQL of its typed column, and the types that column may have
/// for the bytes to match the SQL builder's. `None` for a kind the assembly does not write.
fn column(json: &Json) -> Option<(String, &'static [Type])> {
    Some(match json {
        // `(e)::text` of an integer is its decimal digits.
        Json::Number(e) => (format!("({e})"), &[Type::INT2, Type::INT4, Type::INT8]),
        // The same cast the SQL builder makes, done by PostgreSQL; only the text is ours.
        Json::Money(e) => (format!("({e})::float8"), &[Type::FLOAT8]),
        Json::Text(e) => (format!("({e})::text"), &[Type::TEXT]),
        // The session is in UTC (`store::connect`), so `to_char` of a date is its day.
        Json::Date(e) => (format!("({e})"), &[Type::DATE]),
        // Of a timestamptz this is a plain timestamp: the UTC wall clock, as to_char sees it.
        Json::Timestamp(e) => (format!("({e}) AT TIME ZONE 'UTC'"), &[Type::TIMESTAMP]),
        Json::Bool(_) | Json::Decimal(_) | Json::Second(_) | Json::Raw(_) => return None,
    })
}

fn columns(fields: &[(&str, Json)]) -> Option<Vec<(String, &'static [Type])>> {
    fields.iter().map(|(_, json)| column(json)).collect()
}

fn select_list(columns: &[(String, &'static [Type])]) -> String {
    columns.iter().map(|(sql, _)| sql.as_str()).collect::<Vec<_>>().join(", ")
}

/// The SQL of the assembly.
pub struct ExportSql {
    /// Appended to the order query's leading columns: the document's fields, then `t.id`.
    pub order_columns: String,
    /// One query per child table, `$1` being the page's keys.
    pub children: Vec<String>,
}

/// Integer columns that are joined on: children to their order.
const JOIN_TYPES: &[Type] = &[Type::INT2, Type::INT4, Type::INT8];

impl ExportSql {
    /// `schema` holds the child tables; `order_ids` is an SQL array of the page's order
    /// ids (`t.id`) from parameter `$1`, e.g. `$1::text[]::bigint[]`.
    pub fn new(schema: &str, order_ids: &str) -> Option<Self> {
        let order = columns(EXPORT_ORDER)?;
        let children = EXPORT_CHILDREN
            .iter()
            .map(|c| {
                let a = c.alias;
                // An index scan per order: with `sales_order_id = ANY(ids)` the planner
                // prefers a (parallel) scan of the whole table, 5-10 times slower at 2% of
                // it. `OFFSET 0` keeps the subquery from being flattened into a join; an
                // ORDER BY there would do that too, but costs a sort node per order (a
                // quarter of the children's time), where the one sort below is cheap.
                Some(format!(
                    "SELECT {a}.sales_order_id, {}\n  FROM unnest({order_ids}) AS k(id)\n CROSS JOIN LATERAL (SELECT * FROM {schema}.{} {a} WHERE {a}.sales_order_id = k.id OFFSET 0) {a}\n ORDER BY {a}.sales_order_id, {order}",
                    select_list(&columns(c.fields)?),
                    c.table,
                    order = c.order
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { order_columns: format!("{}, t.id", select_list(&order)), children })
    }
}

/// The prepared queries of the assembly on one connection.
pub struct ExportStatements {
    orders: Statement,
    children: Vec<Statement>,
}

/// The types a field list's columns may have.
fn types(fields: &[(&str, Json)]) -> Vec<&'static [Type]> {
    fields.iter().filter_map(|(_, json)| column(json)).map(|(_, types)| types).collect()
}

/// Whether a statement's columns from `first` on have the types the assembly reads.
fn typed(statement: &Statement, first: usize, wanted: &[&[Type]]) -> bool {
    let actual = statement.columns().get(first..).unwrap_or_default();
    actual.len() == wanted.len() && actual.iter().zip(wanted).all(|(c, types)| types.contains(c.type_()))
}

impl ExportStatements {
    /// Prepares the assembly's queries (`orders` is the whole order query). `None` when the
    /// session or a column's type would make the bytes differ: the SQL builder serves.
    pub async fn prepare(client: &Client, orders: &str, sql: &ExportSql) -> Result<Option<Self>, tokio_postgres::Error> {
        // float8 text is the shortest round trip only while extra_float_digits > 0.
        let digits: String = client.query_one("SELECT current_setting('extra_float_digits')", &[]).await?.get(0);
        if digits.trim().parse::<i32>().map_or(true, |d| d <= 0) {
            return Ok(None);
        }
        let orders = client.prepare(orders).await?;
        if !typed(&orders, LEADING_COLUMNS, &[types(EXPORT_ORDER), vec![JOIN_TYPES]].concat()) {
            return Ok(None);
        }
        let mut children = Vec::with_capacity(sql.children.len());
        for (child, query) in EXPORT_CHILDREN.iter().zip(&sql.children) {
            let statement = client.prepare(query).await?;
            if !typed(&statement, 0, &[vec![JOIN_TYPES], types(child.fields)].concat()) {
                return Ok(None);
            }
            children.push(statement);
        }
        Ok(Some(Self { orders, children }))
    }

    /// The orders of one page (`ids`, up to `cutoff`) with their documents, in key order.
    pub async fn fetch(&self, client: &Client, ids: &[String], cutoff: &DateTime<Utc>) -> Result<Vec<ExportRow>, tokio_postgres::Error> {
        // Every request is queued on the first poll, in this order, so the COMMIT runs even
        // if this future is dropped later: the connection never stays inside the transaction.
        let ids: &(dyn ToSql + Sync) = &ids;
        let (order_params, child_params) = ([ids, cutoff], [ids]);
        let (begin, orders, children, commit) = futures::join!(
            client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"),
            client.query(&self.orders, &order_params),
            futures::future::join_all(self.children.iter().map(|s| client.query(s, &child_params))),
            client.batch_execute("COMMIT"),
        );
        begin?;
        let orders = orders?;
        let children = children.into_iter().collect::<Result<Vec<_>, _>>()?;
        commit?;
        Ok(assemble(&orders, &children))
    }
}

/// One order of a page.
pub struct ExportRow {
    pub key: String,
    pub updated_at: DateTime<Utc>,
    pub deleted: Option<bool>,
    /// `None` for a deleted order, whose document is never published; `Exotic` when it
    /// holds a value only PostgreSQL writes right: the SQL builder builds that order.
    pub document: Result<Option<String>, Exotic>,
}

/// The child rows of each order: a range of the query's rows, which come sorted by order.
fn by_order(rows: &[Row]) -> HashMap<i64, Range<usize>> {
    let mut ranges: HashMap<i64, Range<usize>> = HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        // Typed at prepare (`JOIN_TYPES`) and never NULL (`= ANY` leaves NULL out).
        if let Ok(Int(id)) = row.try_get(0) {
            ranges.entry(id).and_modify(|r| r.end = i + 1).or_insert(i..i + 1);
        }
    }
    ranges
}

fn assemble(orders: &[Row], children: &[Vec<Row>]) -> Vec<ExportRow> {
    let grouped: Vec<_> = children.iter().map(|rows| by_order(rows)).collect();
    orders
        .iter()
        .map(|row| {
            let deleted: Option<bool> = row.get(2);
            let document = match deleted {
                Some(true) => Ok(None),
                _ => document(row, children, &grouped).map(Some),
            };
            ExportRow { key: row.get(0), updated_at: row.get(1), deleted, document }
        })
        .collect()
}

/// The export document of one order row and its children.
fn document(row: &Row, children: &[Vec<Row>], grouped: &[HashMap<i64, Range<usize>>]) -> Result<String, Exotic> {
    let Int(id) = row.try_get(LEADING_COLUMNS + EXPORT_ORDER.len()).map_err(|_| Exotic)?;
    let mut out = String::with_capacity(1536);
    out.push('{');
    fields(&mut out, row, LEADING_COLUMNS, EXPORT_ORDER)?;
    for ((child, rows), ranges) in EXPORT_CHILDREN.iter().zip(children).zip(grouped) {
        out.push_str(",\"");
        out.push_str(child.name);
        out.push_str("\":[");
        for (n, child_row) in ranges.get(&id).map_or(&[][..], |r| &rows[r.clone()]).iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push('{');
            fields(&mut out, child_row, 1, child.fields)?;
            out.push('}');
        }
        out.push(']');
    }
    out.push('}');
    Ok(out)
}

/// `"name":value` for each field, read from the row's columns from `first` on.
fn fields(out: &mut String, row: &Row, first: usize, fields: &[(&str, Json)]) -> Result<(), Exotic> {
    for (i, (name, json)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(name);
        out.push_str("\":");
        value(out, row, first + i, json)?;
    }
    Ok(())
}

fn value(out: &mut String, row: &Row, col: usize, json: &Json) -> Result<(), Exotic> {
    fn get<'a, T: FromSql<'a>>(row: &'a Row, col: usize) -> Result<Option<T>, Exotic> {
        row.try_get(col).map_err(|_| Exotic)
    }
    match json {
        Json::Number(_) => match get(row, col)? {
            Some(Int(v)) => json_text::int(out, v),
            None => out.push_str("null"),
        },
        Json::Money(_) => match get(row, col)? {
            Some(v) => json_text::float8(out, v)?,
            None => out.push_str("null"),
        },
        Json::Text(_) => match get::<&str>(row, col)? {
            Some(v) => json_text::text(out, v),
            None => out.push_str("null"),
        },
        Json::Date(_) => match get(row, col)? {
            Some(Days(v)) => json_text::date(out, v)?,
            None => out.push_str("null"),
        },
        Json::Timestamp(_) => match get(row, col)? {
            Some(Micros(v)) => json_text::timestamp(out, v),
            None => out.push_str("null"),
        },
        Json::Bool(_) | Json::Decimal(_) | Json::Second(_) | Json::Raw(_) => return Err(Exotic),
    }
    Ok(())
}

type FromSqlError = Box<dyn std::error::Error + Sync + Send>;

/// Any integer column, widened.
struct Int(i64);

impl<'a> FromSql<'a> for Int {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, FromSqlError> {
        Ok(Int(match *ty {
            Type::INT2 => i16::from_sql(ty, raw)?.into(),
            Type::INT4 => i32::from_sql(ty, raw)?.into(),
            _ => i64::from_sql(ty, raw)?,
        }))
    }

    fn accepts(ty: &Type) -> bool {
        JOIN_TYPES.contains(ty)
    }
}

/// A `date` as PostgreSQL stores it (days from 2000-01-01, ±infinity included), which
/// chrono cannot hold whole.
struct Days(i32);

impl<'a> FromSql<'a> for Days {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, FromSqlError> {
        Ok(Days(i32::from_be_bytes(raw.try_into()?)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::DATE
    }
}

/// A `timestamp` as PostgreSQL stores it (microseconds from 2000-01-01, ±infinity).
struct Micros(i64);

impl<'a> FromSql<'a> for Micros {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, FromSqlError> {
        Ok(Micros(i64::from_be_bytes(raw.try_into()?)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMP
    }
}
