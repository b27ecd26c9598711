//! The export document assembled in Rust (`store::export`) must be the very bytes
//! PostgreSQL's SQL builder (`store::document`, kept as the oracle) yields: consumers
//! compare, hash and deduplicate them. Thousands of orders with hostile values (every
//! control character, quotes, backslashes, astral unicode, NULL in every field, numeric
//! NaN/Infinity and scales 0..14, µs timestamps in BC and six-digit years, duplicate and
//! NULL line numbers, orders without children and with sixty) are read both ways, and
//! again through `run --once` from the topic; then random scalars by the hundred thousand
//! go through each of PostgreSQL's output routines the assembly mirrors.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use order_cdc::store::export::{ExportSql, ExportStatements};
use order_cdc::store::{document, json_text};
use rand::Rng;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

const ORDERS: i64 = 3000;

/// Loose columns (no NOT NULL but the keys, no CHECK, unconstrained numeric money) and
/// orders whose every field cycles through hostile values, triggers off.
const HOSTILE: &str = r#"
DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT conrelid::regclass AS tbl, conname FROM pg_constraint WHERE contype = 'c' AND connamespace = 'public'::regnamespace LOOP
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.tbl, r.conname);
  END LOOP;
  FOR r IN SELECT attrelid::regclass AS tbl, attname FROM pg_attribute
            WHERE attrelid IN ('sales_orders'::regclass, 'sales_order_items'::regclass, 'shipments'::regclass, 'fulfillment_orders'::regclass)
              AND attnum > 0 AND attnotnull AND NOT attisdropped AND attname NOT IN ('id', 'sales_order_id')
              AND NOT (attrelid = 'sales_orders'::regclass AND attname = 'updated_at') LOOP
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP NOT NULL', r.tbl, r.attname);
  END LOOP;
END $$;
ALTER TABLE sales_orders ALTER total_amount TYPE numeric, ALTER total_paid TYPE numeric, ALTER total_shipping TYPE numeric;
ALTER TABLE sales_order_items ALTER unit_price TYPE numeric, ALTER tax TYPE numeric;

CREATE FUNCTION h_text(n bigint) RETURNS text LANGUAGE sql AS $f$
  SELECT (ARRAY[NULL, '', 'plain', 'quote " inside', E'back\\slash \\\\ twice', E'\\u0000 as text',
                (SELECT string_agg(chr(c), '') FROM generate_series(1, 31) c), chr(127) || 'del',
                'é ü ß ñ', '日本語テキスト', '😀🎉 astral 𝄞 𐍈', E'\u2028\u2029 separators', '</script>', '{"json":[1,2]}',
                E'tab\tnew\nline\rcr\bbs\fff', repeat('x', 3000), '  spaces  ', 'null', '\/', E'\x1f\x01"\\'
         ])[n % 20 + 1] || CASE WHEN n % 7 = 0 THEN chr((n % 31 + 1)::int) ELSE '' END
$f$;
CREATE FUNCTION h_money(n bigint) RETURNS numeric LANGUAGE sql AS $f$
  SELECT CASE WHEN n % 3 = 0 THEN round(((random() - 0.5) * 10 ^ (n % 24 - 10))::numeric, (n % 15)::int)
         ELSE (ARRAY[NULL, 0, 1, 0.1, 0.01, 9.99, 128.23, 12.5, 1e20, 0.000015, 0.00001, 0.0001, 123456789012345.6,
                     1234567890123456, 1e15, 1e14, -0.5, -128.23, 'NaN', 'Infinity', '-Infinity', 1e300, 1e-300,
                     99999999999999.99, 0.30000000000000004, 1.005, 2.675, 123.456789012345678901234567890, -0.0, 100]::numeric[])[n % 30 + 1] END
$f$;
CREATE FUNCTION h_int(n bigint) RETURNS bigint LANGUAGE sql AS $f$
  SELECT (ARRAY[NULL, 0, -1, 1, 9223372036854775807, -9223372036854775808, 42, 2147483647, -2147483648, n])[n % 10 + 1]
$f$;
CREATE FUNCTION h_int4(n bigint) RETURNS integer LANGUAGE sql AS $f$
  SELECT (ARRAY[NULL, 0, -1, 1, 2147483647, -2147483648, 3, n % 1000])[n % 8 + 1]
$f$;
CREATE FUNCTION h_ts(n bigint) RETURNS timestamptz LANGUAGE sql AS $f$
  SELECT CASE WHEN n % 3 = 0 THEN '2000-01-01 00:00:00+00'::timestamptz + (random() - 0.5) * interval '2000000 days'
         ELSE (ARRAY[NULL, '2000-01-01 00:00:00+00', '1999-12-31 23:59:59.999999+00', '1970-01-01 00:00:00+00',
                     '1969-07-20 20:17:40.000001+00', '0001-01-01 00:00:00+00 BC', '4713-11-24 00:00:00+00 BC',
                     '0001-01-01 00:00:00+00', '0099-12-31 23:59:59.5+00', '9999-12-31 23:59:59.999999+00',
                     '10000-01-01 00:00:00+00', '294276-12-31 23:59:59.999999+00', 'infinity', '-infinity',
                     '2024-02-29 12:34:56.789012+00', '1900-02-28 23:59:59.999999+00', '0044-03-15 12:00:00.000001+00 BC'
               ]::timestamptz[])[n % 17 + 1] END
$f$;
CREATE FUNCTION h_date(n bigint) RETURNS date LANGUAGE sql AS $f$
  SELECT CASE WHEN n % 3 = 0 THEN '2000-01-01'::date + (random() * 2000000 - 1000000)::int
         ELSE (ARRAY[NULL, '4713-01-01 BC', '0001-12-31 BC', '0001-01-01', '1999-12-31', '2000-01-01', '2000-02-29',
                     '1900-03-01', '9999-12-31', '10000-01-01', '200000-02-29', '294276-12-31', 'infinity', '-infinity'
               ]::date[])[n % 14 + 1] END
$f$;

BEGIN;
SET LOCAL session_replication_role = replica;
SET LOCAL TIME ZONE 'UTC';
INSERT INTO sales_orders (id, order_number, status, order_status, total_amount, total_tax, total_shipping, total_paid,
                          customer_id, customer_username, customer_email, order_date, created_at, updated_at)
  SELECT CASE WHEN g % 100 = 0 THEN 9000000000000000000 + g ELSE g END,
         CASE WHEN g % 17 = 0 THEN NULL ELSE h_text(g) || g END, h_text(g * 3), h_text(g * 5 + 1),
         h_money(g), round(abs(random() * 10 ^ (g % 12))::numeric, 2), h_money(g * 7 + 2), h_money(g * 11 + 5),
         h_int(g), h_text(g * 13 + 2), h_text(g * 17 + 3), h_date(g), h_ts(g * 3 + 1),
         '1970-01-01 00:00:00+00'::timestamptz + random() * interval '19000 days'
    FROM generate_series(1, __ORDERS__) g;
INSERT INTO sales_order_items (sales_order_id, line_number, sku, name, quantity, unit_price, tax, quantity_shipped,
                               quantity_cancelled, created_at, updated_at)
  SELECT o.id, CASE WHEN l % 4 = 0 THEN NULL ELSE (l * 7) % 5 END, h_text(o.g + l), h_text(o.g * 3 + l * 5),
         h_int4(o.g + l), h_money(o.g * 3 + l), h_money(o.g + l * 7), h_int4(o.g * 5 + l), h_int4(l),
         h_ts(o.g + l), h_ts(o.g * 7 + l * 3)
    FROM (SELECT id, id % 1000000 AS g FROM sales_orders) o, generate_series(1, CASE WHEN o.g % 50 = 0 THEN 60 ELSE o.g % 5 END) l;
INSERT INTO shipments (sales_order_id, carrier, service, tracking_number, status, shipped_at, created_at, updated_at)
  SELECT o.id, h_text(o.g + l), h_text(o.g * 2 + l), h_text(o.g * 3 + l), h_text(o.g * 5 + l),
         h_ts(o.g + l), h_ts(o.g * 2 + l), h_ts(o.g * 3 + l)
    FROM (SELECT id, id % 1000000 AS g FROM sales_orders) o, generate_series(1, o.g % 3) l;
INSERT INTO fulfillment_orders (sales_order_id, order_number, status, warehouse_group_id, created_at, updated_at)
  SELECT o.id, h_text(o.g * 11 + l), h_text(o.g + l * 3), h_int(o.g + l), h_ts(o.g * 5 + l), h_ts(o.g + l * 11)
    FROM (SELECT id, id % 1000000 AS g FROM sales_orders) o, generate_series(1, o.g % 4) l;
COMMIT;
"#;

/// A session as the source opens it (UTC, `store::connect`).
async fn session(db: &TestDb) -> Client {
    let url = order_cdc::secret::SecretUrl::new(db.url.clone());
    order_cdc::store::connect(&url, Duration::from_secs(10), "export-document-test").await.expect("connect")
}

/// The SQL builder's document of every order: the oracle.
async fn oracle(client: &Client) -> HashMap<String, String> {
    let sql = format!("SELECT t.id::text, ({})::text FROM sales_orders t", document::export_document("public"));
    client.query(&sql, &[]).await.expect("oracle documents").iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_assembled_export_document_is_byte_identical_to_postgresql_s_for_hostile_orders() {
    let (db, client) = TestDb::migrated().await;
    client.batch_execute(&HOSTILE.replace("__ORDERS__", &ORDERS.to_string())).await.expect("hostile orders");
    let session = session(&db).await;
    let expected = oracle(&session).await;
    assert_eq!(expected.len() as i64, ORDERS);

    // The assembly itself, page by page. Orders with money of 2^53 or more (1e20, 1e300 and
    // the like) or a date past the last timestamp are left to the SQL builder; the others
    // must be the oracle's bytes.
    let sql = ExportSql::new("public", "$1::text[]::bigint[]").expect("the export fields are all assembled");
    let orders = format!(
        "SELECT t.id::text, t.updated_at, false, {} FROM sales_orders t WHERE t.id = ANY($1::text[]::bigint[]) AND t.updated_at < $2 ORDER BY t.updated_at, t.id",
        sql.order_columns
    );
    let statements = ExportStatements::prepare(&session, &orders, &sql).await.expect("prepare").expect("the assembly serves these tables");
    let mut ids: Vec<String> = expected.keys().cloned().collect();
    ids.sort();
    let cutoff: DateTime<Utc> = Utc::now();
    let (mut compared, mut bytes, mut exotic) = (0, 0, 0);
    for page in ids.chunks(1000) {
        let rows = statements.fetch(&session, page, &cutoff).await.expect("page query");
        assert_eq!(rows.len(), page.len());
        for row in rows {
            let Ok(document) = row.document else {
                exotic += 1;
                continue;
            };
            let document = document.expect("not deleted");
            let want = &expected[&row.key];
            assert!(document == *want, "order {}: assembled\n{document}\nPostgreSQL\n{want}", row.key);
            compared += 1;
            bytes += document.len();
        }
    }
    assert_eq!(compared + exotic, ORDERS);
    assert!(compared > ORDERS / 2, "most orders are assembled in Rust: {compared} of {ORDERS}");
    println!("{compared} orders ({bytes} bytes) assembled byte-identical to the SQL builder; {exotic} left to it");

    // And end to end: run --once publishes those bytes.
    let topic = unique("export_doc");
    let mut pipeline = Pipeline::new(&db.url, &topic);
    pipeline.source_extra = "document = \"export\"\ndeleted = \"false\"";
    let setup = Setup::new(&pipeline);
    wait_for_cutoff_past_writes(&client).await;
    setup.run_once();
    let (events, duplicates) = assert_topic_matches(&topic, &expected);
    println!("run --once: {events} events, {duplicates} duplicates, every value byte-identical");
    db.drop_db().await;
}

/// One text column of a query over one array parameter, in order.
async fn texts(session: &Client, sql: &str, values: &(dyn ToSql + Sync)) -> Vec<String> {
    session.query(sql, &[values]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn random_scalars_are_written_as_postgresql_writes_them() {
    let db = TestDb::create().await;
    let session = session(&db).await;
    let mut rng = rand::rng();
    const N: usize = 100_000;

    // float8::text: any bit pattern, short decimals as money is, and ties: from 2^47 to
    // 2^48 a double is a multiple of 1/32, so k + 0.125 (or .375, .625, .875) needs three
    // decimals while 17 digits keep two, and both neighbours (.12 and .13) read back the
    // same: the shortest digits must go to the even one, as PostgreSQL's Ryu does.
    let floats: Vec<f64> = (0..N)
        .map(|i| match i % 4 {
            0 => f64::from_bits(rng.random()),
            1 => format!("{}e{}", rng.random_range(-999_999_999i64..999_999_999), rng.random_range(-30..30)).parse().unwrap(),
            2 => rng.random_range(-1e6..1e6_f64),
            _ => (rng.random_range(1u64 << 47..1 << 48) as f64 + [0.125, 0.375, 0.625, 0.875][i % 16 / 4]) * if i % 32 < 16 { 1.0 } else { -1.0 },
        })
        .collect();
    let pg = texts(&session, "SELECT v::text FROM unnest($1::float8[]) WITH ORDINALITY u(v, n) ORDER BY n", &floats).await;
    let mut exotic = 0;
    for (v, want) in floats.iter().zip(&pg) {
        let mut ours = String::new();
        match json_text::float8(&mut ours, *v) {
            Ok(()) => assert_eq!(&ours, want, "float8 {:e} ({:#x})", v, v.to_bits()),
            Err(_) => {
                assert!(v.abs() >= 9_007_199_254_740_992.0, "float8 {v:e} below 2^53 left to PostgreSQL");
                exotic += 1;
            }
        }
    }

    // to_json(text): strings drawn from controls, quotes, backslashes, ASCII and beyond.
    let pool: Vec<char> = (1u32..0x80).chain([0xe9, 0x2028, 0xfeff, 0xffff, 0x1f600, 0x10ffff]).filter_map(char::from_u32).collect();
    let strings: Vec<String> = (0..N).map(|_| (0..rng.random_range(0..12)).map(|_| pool[rng.random_range(0..pool.len())]).collect()).collect();
    let pg = texts(&session, "SELECT to_json(v)::text FROM unnest($1::text[]) WITH ORDINALITY u(v, n) ORDER BY n", &strings).await;
    for (s, want) in strings.iter().zip(&pg) {
        let mut ours = String::new();
        json_text::text(&mut ours, s);
        assert_eq!(&ours, want, "text {s:?}");
    }

    // Timestamps across the whole range (4713 BC .. 294276 AD), to the microsecond.
    let micros: Vec<i64> = (0..N).map(|_| rng.random_range(-211_813_488_000_000_000i64..9_223_371_331_200_000_000)).collect();
    let pg = texts(&session, r#"SELECT '"' || to_char('2000-01-01'::timestamp + (v / 86400000000) * interval '1 day' + (v % 86400000000) * interval '1 microsecond',
                                     'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '"'
                 FROM unnest($1::int8[]) WITH ORDINALITY u(v, n) ORDER BY n"#, &micros).await;
    for (v, want) in micros.iter().zip(&pg) {
        let mut ours = String::new();
        json_text::timestamp(&mut ours, *v);
        assert_eq!(&ours, want, "timestamp of {v} µs");
    }

    // Dates from 4713 BC to the last a timestamp holds.
    let days: Vec<i32> = (0..N).map(|_| rng.random_range(-2_451_545..109_203_528 - 2_451_545)).collect();
    let pg = texts(&session, r#"SELECT '"' || to_char('2000-01-01'::date + v, 'YYYY-MM-DD') || '"' FROM unnest($1::int4[]) WITH ORDINALITY u(v, n) ORDER BY n"#, &days).await;
    for (v, want) in days.iter().zip(&pg) {
        let mut ours = String::new();
        json_text::date(&mut ours, *v).expect("within the timestamp range");
        assert_eq!(&ours, want, "date {v} days from 2000");
    }
    println!("{N} each of floats ({exotic} of 2^53 or more left to PostgreSQL), strings, timestamps and dates written as PostgreSQL writes them");
    db.drop_db().await;
}
