//! `GET /api/orders/` (seed 002) in `order-cdc serve`, against real PostgreSQL: every
//! parameter and error status, the window rules a syncing client relies on (inclusive
//! lower bounds, upper bounds through the end of the second or day, `id` as the last sort
//! key), generated inputs that never get a 5xx, the status-history trigger, an order
//! created by `POST /sales-orders` in every dialect, and index use on 1,000,000 orders.

mod common;

use std::time::{Duration, Instant};

use common::server::*;
use common::*;
use order_cdc::server::orders::Listing;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

/// GET with the API key in the header; status, `Date` header presence and the body.
async fn list(server: &TestServer, query: &str) -> (u16, Value) {
    get(server, &format!("/api/orders/?{query}"), Some(TOKEN)).await
}

async fn get(server: &TestServer, path_and_query: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = server.http.get(format!("{}{path_and_query}", server.base));
    if let Some(key) = key {
        request = request.header("X-API-Key", key);
    }
    let r = request.send().await.unwrap();
    assert!(r.headers().contains_key("date"), "every response carries a Date header");
    let status = r.status().as_u16();
    (status, r.json().await.expect("a JSON body"))
}

fn ids(page: &Value) -> Vec<i64> {
    page["data"].as_array().unwrap_or_else(|| panic!("no data in {page}")).iter().map(|o| o["id"].as_i64().unwrap()).collect()
}

async fn ids_of(server: &TestServer, query: &str) -> Vec<i64> {
    let (status, page) = list(server, query).await;
    assert_eq!(status, 200, "{query}: {page}");
    ids(&page)
}

/// Twelve orders with known fields (the triggers off, so the times are ours):
/// order g has customer 1 (Acme) when odd, 2 (Bolt) when even, 99 (no record, username
/// `zed`) for g = 6; user g % 3; status pending/confirmed/shipped by g % 3; PO-g; total
/// 50·g; created 2025-01-0g 10:00:00; updated 2025-06-01 00:00:g.5; placed an hour after
/// creation except when g % 4 = 0. Order 12 is not active.
async fn twelve_orders(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "BEGIN;
             SET LOCAL session_replication_role = replica;
             INSERT INTO customers (id, code, name, email) VALUES (1, 'ACME', 'Acme Wholesale', 'buyer@acme.example'),
                                                                  (2, 'BOLT', 'Bolt Supply', 'ops@bolt.example');
             INSERT INTO products (id, sku, name) VALUES (1, 'SKU-1', 'Widget');
             INSERT INTO sales_orders (id, order_number, status, order_status, customer_id, customer_username, customer_email,
                    user_id, customer_po_number, customer_notes, product_total, discount_total, total_tax, total_shipping,
                    total_amount, created_at, updated_at, placed_at)
             SELECT g, 'SO-' || g, CASE WHEN g = 12 THEN 'Deleted' ELSE 'Active' END,
                    (ARRAY['pending','confirmed','shipped'])[1 + g % 3],
                    CASE WHEN g = 6 THEN 99 WHEN g % 2 = 1 THEN 1 ELSE 2 END,
                    CASE WHEN g = 6 THEN 'zed' END, 'c' || g || '@example.com',
                    g % 3, 'PO-' || g, 'note ' || g, 50 * g + 5, 5, 1.5, 3.5, 50 * g,
                    '2025-01-01 10:00:00+00'::timestamptz + (g - 1) * interval '1 day',
                    '2025-06-01 00:00:00.5+00'::timestamptz + g * interval '1 second',
                    CASE WHEN g % 4 <> 0 THEN '2025-01-01 11:00:00+00'::timestamptz + (g - 1) * interval '1 day' END
               FROM generate_series(1, 12) g;
             INSERT INTO sales_order_items (sales_order_id, line_number, product_id, sku, name, quantity, unit_price, tax)
                  VALUES (1, 1, 1, 'SKU-1', 'Widget', 2, 27.50, 1.5);
             INSERT INTO shipments (sales_order_id, carrier, tracking_number, status, shipped_at)
                  VALUES (1, 'UPS', '1Z999', 'shipped', '2025-01-02 08:00:00+00');
             INSERT INTO sales_order_status_history (sales_order_id, from_status, to_status, changed_by, changed_at)
                  VALUES (1, NULL, 'pending', 'alice', '2025-01-01 10:00:00+00'), (1, 'pending', 'confirmed', 'bob', '2025-01-01 10:30:00+00');
             COMMIT;",
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_parameter_filters_sorts_and_pages() {
    let (db, client) = TestDb::migrated().await;
    twelve_orders(&client).await;
    let server = TestServer::start(config(&db.url)).await;
    let all: Vec<i64> = (1..=11).collect();

    // The default: active orders only, by created_at; the meta of the seed.
    let (status, page) = list(&server, "").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), all);
    assert_eq!(page["meta"]["tenant_id"], "acme");
    assert_eq!(page["meta"]["sort"], "created_at");
    assert_eq!(page["meta"]["pagination"], json!({"page": 1, "per_page": 50, "total": 11, "total_pages": 1}));
    assert_eq!(page["meta"]["filters"], json!({}));
    assert!(page["meta"]["timings_ms"]["total"].as_f64().is_some());
    // Without the slash too.
    let (status, bare) = get(&server, "/api/orders", Some(TOKEN)).await;
    assert_eq!((status, ids(&bare)), (200, all.clone()));

    // The document of the seed's example, times in UTC to the second, no optional sections.
    let first = &page["data"][0];
    assert_eq!(
        first,
        &json!({"id": 1, "order_number": "SO-1",
                "customer": {"id": 1, "name": "Acme Wholesale", "code": "ACME", "email": "buyer@acme.example"},
                "user_id": 1, "currency": "USD", "status": "confirmed", "po_number": "PO-1", "notes": "note 1",
                "totals": {"subtotal": 55, "discount_total": 5, "tax_total": 1.5, "shipping_total": 3.5, "grand_total": 50},
                "placed_at": "2025-01-01 11:00:00", "created_at": "2025-01-01 10:00:00", "updated_at": "2025-06-01 00:00:01"})
    );
    // A customer without a record shows what the order says of its buyer.
    assert_eq!(page["data"][5]["customer"], json!({"id": 99, "name": "zed", "code": null, "email": "c6@example.com"}));
    assert_eq!(page["data"][3]["placed_at"], Value::Null);

    // include
    let (_, page) = list(&server, "include=items,shipments,status_history&order_number=SO-1").await;
    let o = &page["data"][0];
    assert_eq!(o["items"][0]["sku"], "SKU-1");
    assert_eq!((o["items"][0]["qty"].as_i64(), o["items"][0]["unit_price"].as_f64(), o["items"][0]["line_total"].as_f64()), (Some(2), Some(27.5), Some(55.0)));
    assert_eq!(o["shipments"][0]["tracking_number"], "1Z999");
    assert_eq!(o["shipments"][0]["shipped_at"], "2025-01-02 08:00:00");
    assert_eq!(o["status_history"][1], json!({"id": 2, "from_status": "pending", "status": "confirmed", "changed_by": "bob", "changed_at": "2025-01-01 10:30:00"}));
    let (_, page) = list(&server, "include=shipments&order_number=SO-1").await;
    assert!(page["data"][0].get("items").is_none() && page["data"][0].get("shipments").is_some());

    // Filters, one by one.
    let cases: &[(&str, Vec<i64>)] = &[
        ("status=pending,shipped", vec![2, 3, 5, 6, 8, 9, 11]),
        ("status=confirmed", vec![1, 4, 7, 10]),
        ("status=canceled", vec![]),
        ("customer_id=1", vec![1, 3, 5, 7, 9, 11]),
        ("customer_id=99", vec![6]),
        ("user_id=0", vec![3, 6, 9]),
        ("order_number=SO-10", vec![10]),
        ("order_number=SO-12", vec![]),
        ("po_number=PO-7", vec![7]),
        ("q=acme", vec![1, 3, 5, 7, 9, 11]),
        ("q=bolt", vec![2, 4, 8, 10]),
        ("q=so-1", vec![1, 10, 11]),
        ("q=po-4", vec![4]),
        ("q=ZED", vec![6]),
        ("q=%25", vec![]),
        ("q=_", vec![]),
        ("min_total=100&max_total=300", vec![2, 3, 4, 5, 6]),
        ("min_total=500", vec![10, 11]),
        ("max_total=99.99", vec![1]),
        ("filter_on=created_at&date_from=2025-01-03&date_to=2025-01-05", vec![3, 4, 5]),
        ("date_from=2025-01-03 10:00:00&date_to=2025-01-05 09:59:59", vec![3, 4]),
        ("filter_on=updated_at&date_from=2025-06-01 00:00:03&date_to=2025-06-01 00:00:05", vec![3, 4, 5]),
        ("filter_on=updated_at&date_from=2025-06-01T00:00:03.6Z&date_to=2025-06-01T02:00:05%2B02:00", vec![4, 5]),
        ("filter_on=placed_at&date_from=2025-01-02&date_to=2025-01-07", vec![2, 3, 5, 6, 7]),
        ("placed_from=2025-01-02 11:00:00&placed_to=2025-01-03 11:00:00", vec![2, 3]),
        ("placed_to=2025-01-02", vec![1, 2]),
        ("updated_since=2025-06-01 00:00:10", vec![10, 11]),
        ("updated_since=2025-06-01+00:00:10", vec![10, 11]),
        ("updated_since=2025-06-01T02:00:10+02:00", vec![10, 11]),
        ("updated_since=2025-06-01T00:00:10Z&customer_id=1", vec![11]),
        ("status=shipped&customer_id=2&min_total=300", vec![8]),
        ("api_key=ignored-when-the-header-is-given&unknown=1", all.clone()),
    ];
    for (query, expected) in cases {
        assert_eq!(&ids_of(&server, query).await, expected, "{query}");
    }
    let (_, page) = list(&server, "status=pending,shipped&date_to=2025-01-31&filter_on=placed_at&min_total=10").await;
    assert_eq!(
        page["meta"]["filters"],
        json!({"status": ["pending", "shipped"], "filter_on": "placed_at", "date_to": "2025-01-31 23:59:59", "min_total": 10.0})
    );

    // Sorting: every sortable field both ways, `id` last in the last key's direction.
    for (field, column) in [
        ("created_at", "t.created_at"),
        ("updated_at", "t.updated_at"),
        ("placed_at", "t.placed_at"),
        ("grand_total", "t.total_amount"),
        ("order_number", "t.order_number"),
        ("status", "t.order_status"),
        ("customer_name", "coalesce(c.name, t.customer_username)"),
    ] {
        for (prefix, dir) in [("", "ASC"), ("-", "DESC")] {
            let sql = format!(
                "SELECT t.id FROM sales_orders t LEFT JOIN customers c ON c.id = t.customer_id WHERE t.status = 'Active' ORDER BY {column} {dir}, t.id {dir}"
            );
            let expected: Vec<i64> = client.query(&sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
            let (status, page) = list(&server, &format!("sort={prefix}{field}")).await;
            assert_eq!((status, ids(&page)), (200, expected), "sort={prefix}{field}");
            assert_eq!(page["meta"]["sort"], format!("{prefix}{field}"));
        }
    }
    assert_eq!(ids_of(&server, "sort=status,-grand_total").await, vec![10, 7, 4, 1, 9, 6, 3, 11, 8, 5, 2]);
    assert_eq!(ids_of(&server, "sort=customer_name,grand_total").await, vec![1, 3, 5, 7, 9, 11, 2, 4, 8, 10, 6]);

    // Pages: consecutive pages are the whole list once, total_pages rounds up.
    let mut walked = Vec::new();
    for n in 1..=4 {
        let (status, page) = list(&server, &format!("per_page=3&page={n}&sort=-updated_at")).await;
        assert_eq!(status, 200);
        assert_eq!(page["meta"]["pagination"], json!({"page": n, "per_page": 3, "total": 11, "total_pages": 4}));
        walked.extend(ids(&page));
    }
    assert_eq!(walked, (1..=11).rev().collect::<Vec<_>>());
    let (_, past) = list(&server, "per_page=3&page=5").await;
    assert_eq!((ids(&past), &past["meta"]["pagination"]["total"]), (vec![], &json!(11)));
    assert_eq!(ids_of(&server, "per_page=250").await.len(), 11);
    assert_eq!(ids_of(&server, "per_page=1&page=11").await, vec![11]);
    // The route is described.
    let spec: Value = server.http.get(format!("{}/openapi.json", server.base)).send().await.unwrap().json().await.unwrap();
    let documented: Vec<&str> = spec["paths"]["/api/orders/"]["get"]["parameters"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for name in ["status", "customer_id", "user_id", "order_number", "po_number", "q", "min_total", "max_total", "filter_on", "date_from", "date_to", "placed_from", "placed_to", "updated_since", "include", "sort", "page", "per_page", "api_key"] {
        assert!(documented.contains(&name), "{name} is not in openapi.json");
    }
    db.drop_db().await;
}

/// The window rules of a syncing client, at the microsecond edges.
#[tokio::test(flavor = "multi_thread")]
async fn date_bounds_are_inclusive_through_the_end_of_the_second_or_day() {
    let (db, client) = TestDb::migrated().await;
    let times = [
        (1, "2025-02-28 23:59:59.999999"),
        (2, "2025-03-01 00:00:00"),
        (3, "2025-03-01 12:00:00"),
        (4, "2025-03-01 12:00:00.999999"),
        (5, "2025-03-01 12:00:01"),
        (6, "2025-03-01 23:59:59.999999"),
        (7, "2025-03-02 00:00:00"),
    ];
    for (id, at) in times {
        insert_orders(&client, id, 1, &format!("'{at}+00'::timestamptz")).await;
    }
    let server = TestServer::start(config(&db.url)).await;
    let window = |from: &str, to: &str| format!("filter_on=updated_at&date_from={from}&date_to={to}&sort=updated_at");
    for (query, expected) in [
        (window("2025-03-01", "2025-03-01"), vec![2, 3, 4, 5, 6]),
        (window("2025-03-01 12:00:00", "2025-03-01 12:00:00"), vec![3, 4]),
        (window("2025-03-01T12:00:00Z", "2025-03-01T12:00:01Z"), vec![3, 4, 5]),
        (window("2025-03-01T13:00:00%2B01:00", "2025-03-01T13:00:00+01:00"), vec![3, 4]),
        (window("2025-02-28 23:59:59", "2025-02-28 23:59:59"), vec![1]),
        (window("2025-03-01 12:00:00.5", "2025-03-01 12:00:00.5"), vec![4]),
        ("updated_since=2025-03-01 12:00:00&sort=updated_at".to_string(), vec![3, 4, 5, 6, 7]),
        ("updated_since=2025-03-01&sort=updated_at".to_string(), vec![2, 3, 4, 5, 6, 7]),
    ] {
        assert_eq!(ids_of(&server, &query).await, expected, "{query}");
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_and_every_error_status() {
    let (db, client) = TestDb::migrated().await;
    twelve_orders(&client).await;
    let server = TestServer::start(config(&db.url)).await;

    let (status, body) = get(&server, "/api/orders/", None).await;
    assert_eq!((status, &body["error"]["type"]), (401, &json!("missing_api_key")), "{body}");
    assert_eq!(body["error"]["message"], "api_key is required (use X-API-Key header or api_key param).");
    let (status, body) = get(&server, "/api/orders/", Some("wrong-key")).await;
    assert_eq!((status, &body["error"]["type"]), (401, &json!("invalid_api_key")));
    let (status, body) = get(&server, "/api/orders/?api_key=wrong-key", None).await;
    assert_eq!((status, &body["error"]["type"]), (401, &json!("invalid_api_key")));
    let (status, page) = get(&server, &format!("/api/orders/?api_key={TOKEN}&per_page=2"), None).await;
    assert_eq!((status, ids(&page)), (200, vec![1, 2]));
    assert!(page["meta"]["filters"].get("api_key").is_none(), "the key is never echoed");
    // Authentication comes before validation: a bad request without a key says 401.
    let (status, _) = get(&server, "/api/orders/?per_page=1000", None).await;
    assert_eq!(status, 401);
    // The export's bearer token is not this API's key scheme.
    let r = server.http.get(format!("{}/api/orders/", server.base)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);

    for (query, code, param) in [
        ("page=abc", 400, "page"),
        ("per_page=ten", 400, "per_page"),
        ("customer_id=1.5", 400, "customer_id"),
        ("user_id=x", 400, "user_id"),
        ("min_total=abc", 400, "min_total"),
        ("max_total=1e9", 400, "max_total"),
        ("date_from=yesterday", 400, "date_from"),
        ("date_to=2025-02-30", 400, "date_to"),
        ("placed_from=2025-13-01", 400, "placed_from"),
        ("placed_to=soon", 400, "placed_to"),
        ("updated_since=2025-06-01T25:00:00", 400, "updated_since"),
        ("filter_on=shipped_at", 400, "filter_on"),
        ("include=items,lines", 400, "include"),
        ("sort=id", 400, "sort"),
        ("sort=-updated_at,total", 400, "sort"),
        ("q=a%00b", 400, "q"),
        ("per_page=1000", 422, "per_page"),
        ("per_page=0", 422, "per_page"),
        ("page=0", 422, "page"),
        ("page=-1", 422, "page"),
        ("page=9223372036854775807&per_page=250", 422, "page"),
        ("min_total=-1", 422, "min_total"),
        ("min_total=500&max_total=100", 422, "min_total"),
        ("date_from=2025-02-01&date_to=2025-01-31", 422, "date_from"),
        ("placed_from=2025-02-01 00:00:01&placed_to=2025-02-01 00:00:00", 422, "placed_from"),
    ] {
        let (status, body) = list(&server, query).await;
        assert_eq!(status, code, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("{query}: {body}"));
        assert!(message.starts_with(&format!("{param}:")), "{query}: the message names the parameter: {message}");
        let kind = if code == 400 { "invalid_parameter" } else { "unprocessable_parameter" };
        assert_eq!(body["error"]["type"], kind, "{query}");
    }
    // A field the seed does not sort by is named.
    let (_, body) = list(&server, "sort=-id").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("\"id\""), "{body}");
    db.drop_db().await;
}

/// Random parameters and values, encoded or not, never get a 5xx: only 200, 400 or 422,
/// always with a JSON body of the documented shape.
#[test]
fn generated_queries_never_get_a_5xx() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (db, server) = rt.block_on(async {
        let (db, client) = TestDb::migrated().await;
        twelve_orders(&client).await;
        let server = TestServer::start(config(&db.url)).await;
        (db, server)
    });
    let names = prop::sample::select(vec![
        "status", "customer_id", "user_id", "order_number", "po_number", "q", "min_total", "max_total", "filter_on",
        "date_from", "date_to", "placed_from", "placed_to", "updated_since", "include", "sort", "page", "per_page", "api_key",
        "other",
    ]);
    let values = prop_oneof![
        any::<String>(),
        "[0-9]{1,25}",
        "-?[0-9]{0,20}(\\.[0-9]{0,20})?",
        "[0-9]{4,6}-[0-9]{1,2}-[0-9]{1,2}([ T+][0-9]{1,2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?([Z+ -][0-9]{2}(:?[0-9]{2})?)?)?",
        "-?(created_at|updated_at|placed_at|grand_total|status|customer_name|id|order_number)(,-?(created_at|status|x))*",
        "(items|shipments|status_history|x|,){0,5}",
        "[%&=+;#\\\\_a-z0-9 ]{0,20}",
    ];
    let query = prop::collection::vec((names, values, any::<bool>()), 0..6).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v, raw)| {
                // Half the values go unencoded, as a careless client sends them.
                let v = if raw { v.replace(['&', '#'], "") } else { url::form_urlencoded::byte_serialize(v.as_bytes()).collect() };
                format!("{k}={v}")
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    let mut runner = TestRunner::new(Config { cases: 400, failure_persistence: None, ..Config::default() });
    runner
        .run(&query, |q| {
            let url = format!("{}/api/orders/?{q}", server.base);
            let (status, body) = rt.block_on(async {
                let r = server.http.get(&url).header("X-API-Key", TOKEN).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            });
            let body: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{q}: not JSON: {body}"));
            prop_assert!(matches!(status, 200 | 400 | 401 | 422), "{} for {}: {}", status, q, body);
            if status == 200 {
                prop_assert!(body["meta"]["pagination"]["total"].is_i64() && body["data"].is_array(), "{}: {}", q, body);
            } else {
                prop_assert!(body["error"]["type"].is_string() && body["error"]["message"].is_string(), "{}: {}", q, body);
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(db.drop_db());
}

/// The trigger writes a history row on insert and on every change of `order_status`
/// (never for other changes), with who from `order_cdc.changed_by` or else the role, on an
/// order written with only the columns DESIGN.md names.
#[tokio::test(flavor = "multi_thread")]
async fn the_status_trigger_writes_history() {
    let (db, client) = TestDb::migrated().await;
    client
        .batch_execute(
            "BEGIN; SET LOCAL order_cdc.changed_by = 'alice';
             INSERT INTO sales_orders (id, status, order_status) VALUES (1, 'Active', 'pending'); COMMIT;
             BEGIN; SET LOCAL order_cdc.changed_by = 'bob';
             UPDATE sales_orders SET order_status = 'confirmed' WHERE id = 1; COMMIT;
             UPDATE sales_orders SET order_status = 'confirmed', customer_notes = 'same status' WHERE id = 1;
             UPDATE sales_orders SET customer_notes = 'no status change' WHERE id = 1;
             UPDATE sales_orders SET order_status = 'shipped' WHERE id = 1;",
        )
        .await
        .unwrap();
    let role: String = client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    let rows: Vec<(Option<String>, String, String)> = client
        .query("SELECT from_status, to_status, changed_by FROM sales_order_status_history WHERE sales_order_id = 1 ORDER BY changed_at, id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (None, "pending".to_string(), "alice".to_string()),
            (Some("pending".into()), "confirmed".into(), "bob".into()),
            (Some("confirmed".into()), "shipped".into(), role.clone()),
        ]
    );
    let server = TestServer::start(config(&db.url)).await;
    let (_, page) = list(&server, "include=status_history").await;
    let history: Vec<(&str, &str)> = page["data"][0]["status_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["status"].as_str().unwrap(), h["changed_by"].as_str().unwrap()))
        .collect();
    assert_eq!(history, vec![("pending", "alice"), ("confirmed", "bob"), ("shipped", role.as_str())]);
    // Written with only DESIGN.md's columns, the order is listed with the defaults.
    let o = &page["data"][0];
    assert_eq!((&o["order_number"], &o["currency"], &o["totals"]["discount_total"], &o["placed_at"]), (&json!("SO-1"), &json!("USD"), &json!(0), &Value::Null));
    db.drop_db().await;
}

/// An order created through `POST /sales-orders` carries the new fields and appears in
/// the listing and in the export.
#[tokio::test(flavor = "multi_thread")]
async fn an_order_created_by_post_appears_in_every_dialect() {
    let (db, client) = TestDb::migrated().await;
    client
        .batch_execute(
            "INSERT INTO products (id, sku, name) VALUES (123, 'WIDGET-001', 'Premium Widget');
             INSERT INTO customers (id, code, name, email) VALUES (55, 'ACME', 'Acme Wholesale', 'buyer@example.com');",
        )
        .await
        .unwrap();
    let server = TestServer::start(config(&db.url)).await;
    let request = json!({"channel_id": 1, "order_number": "SO-1001", "order_date": "2025-03-24", "order_status": "pending",
        "customer_id": 55, "user_id": 77, "customer_po_number": "PO-7788", "customer_notes": "Ship complete",
        "discount_total": 50.0, "total_tax": 95.0, "total_shipping": 30.0,
        "bill_to": {"name": "A"}, "ship_to": {"name": "B"}, "items": [{"product_id": 123, "quantity": 4, "unit_price": 300.0}]});
    let (status, created) = server.post("/sales-orders", &request).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["data"]["total"], 1275.0, "items 1200 - discount 50 + tax 95 + shipping 30");
    let id = created["data"]["id"].as_i64().unwrap();

    let (status, page) = list(&server, "order_number=SO-1001&include=items,status_history").await;
    assert_eq!(status, 200);
    let o = &page["data"][0];
    assert_eq!(o["id"], id);
    assert_eq!(o["customer"], json!({"id": 55, "name": "Acme Wholesale", "code": "ACME", "email": "buyer@example.com"}));
    assert_eq!((&o["user_id"], &o["po_number"], &o["notes"]), (&json!(77), &json!("PO-7788"), &json!("Ship complete")));
    assert_eq!(o["totals"], json!({"subtotal": 1200, "discount_total": 50, "tax_total": 95, "shipping_total": 30, "grand_total": 1275}));
    assert_eq!(o["placed_at"], o["created_at"], "an order created through the API is placed then");
    assert_eq!(o["items"][0]["qty"], 4);
    assert_eq!(o["status_history"][0]["status"], "pending");
    assert_eq!(o["status_history"][0]["changed_by"], "user:77");

    wait_for_cutoff_past_writes(&client).await;
    let (orders, _, _) = server.run("2024-01-01", 100).await;
    assert_eq!(orders.iter().map(|o| o["order_id"].as_i64().unwrap()).collect::<Vec<_>>(), vec![id]);

    // A customer that does not exist and a discount above the items' total are field errors.
    let mut bad = request.clone();
    bad["order_number"] = json!("SO-1002");
    bad["customer_id"] = json!(56);
    let (status, body) = server.post("/sales-orders", &bad).await;
    assert_eq!((status, &body["error"]["fields"][0]["field"]), (422, &json!("customer_id")), "{body}");
    bad["customer_id"] = json!(55);
    bad["discount_total"] = json!(1200.01);
    let (status, body) = server.post("/sales-orders", &bad).await;
    assert_eq!((status, &body["error"]["fields"][0]["field"]), (422, &json!("discount_total")), "{body}");
    db.drop_db().await;
}

/// The plan of a request as the server runs it (its SQL and parameters), as text.
async fn plan(client: &tokio_postgres::Client, query: &str) -> (String, String) {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let listing = Listing::parse(&pairs, "public").unwrap_or_else(|e| panic!("{query}: {}", e.message));
    let params = listing.params();
    plans(client, (&listing.count_sql, &params[..listing.count_params]), (&listing.page_sql, &params)).await
}

/// The sync pattern walks the `(updated_at, id)` index on 1,000,000 orders: no sequential
/// scan for the page or its total.
#[tokio::test(flavor = "multi_thread")]
async fn the_sync_pattern_uses_the_updated_at_index_on_a_million_orders() {
    let (db, client) = TestDb::migrated().await;
    let started = Instant::now();
    // 1,000,000 orders, 10 ms apart in updated_at (2025-01-01 00:00 to 02:46:40), created
    // in random order, every 50th not active.
    client
        .batch_execute(
            "BEGIN;
             SET LOCAL session_replication_role = replica;
             INSERT INTO sales_orders (id, order_number, status, order_status, customer_id, total_amount, created_at, updated_at, placed_at)
             SELECT g, 'M-' || g, CASE WHEN g % 50 = 0 THEN 'Deleted' ELSE 'Active' END,
                    (ARRAY['pending','confirmed','shipped'])[1 + g % 3], g % 1000, g % 997,
                    '2024-01-01'::timestamptz + (hashint4(g::int) % 1000000 + 1000000) * interval '1 second',
                    '2025-01-01'::timestamptz + g * interval '10 ms',
                    '2024-06-01'::timestamptz + g * interval '1 second'
               FROM generate_series(1, 1000000) g;
             COMMIT;",
        )
        .await
        .unwrap();
    client.batch_execute("VACUUM ANALYZE sales_orders").await.unwrap();
    let loaded = started.elapsed();
    for query in [
        // The lead's sync walk: a closed window on updated_at, deep in the table, page 3.
        "filter_on=updated_at&date_from=2025-01-01 01:00:00&date_to=2025-01-01 01:01:39&sort=updated_at&page=3&per_page=250",
        // Its first run: from the epoch to the end of the window.
        "filter_on=updated_at&date_from=1970-01-01 00:00:00&date_to=2025-01-01 00:00:30&sort=updated_at&page=1&per_page=250",
        // Deltas.
        "updated_since=2025-01-01 02:45:00&sort=updated_at&per_page=250",
        "updated_since=2025-01-01 02:45:00&sort=-updated_at&per_page=250&include=items,shipments,status_history",
    ] {
        let (count, page) = plan(&client, query).await;
        for (what, plan) in [("count", &count), ("page", &page)] {
            assert!(!plan.contains("Seq Scan on sales_orders"), "{query}: the {what} scans the table:\n{plan}");
            assert!(plan.contains("updated_at_id on sales_orders"), "{query}: the {what} does not use the (updated_at, id) index:\n{plan}");
        }
        let ms = |plan: &str| plan.lines().find(|l| l.starts_with("Execution Time")).unwrap_or_default().to_string();
        println!("{query}\n  count: {}\n  page:  {}", ms(&count), ms(&page));
    }
    // And over HTTP, with the server's own timing.
    let server = TestServer::start(config(&db.url)).await;
    let started = Instant::now();
    let (status, page) =
        list(&server, "filter_on=updated_at&date_from=2025-01-01 01:00:00&date_to=2025-01-01 01:01:39&sort=updated_at&page=3&per_page=250").await;
    assert_eq!(status, 200);
    assert_eq!(page["meta"]["pagination"]["total"], 9_800, "10,000 orders in 100 s, 1 in 50 not active");
    assert_eq!(ids(&page).len(), 250);
    println!("loaded 1,000,000 orders in {loaded:?}; a page of 250 over HTTP in {:?} (meta.timings_ms {})", started.elapsed(), page["meta"]["timings_ms"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    db.drop_db().await;
}

/// `demo-load` fills what seed 002 shows: customers with codes, users, discounts, placed
/// times, PO numbers and the first status in the history.
#[tokio::test(flavor = "multi_thread")]
async fn demo_load_fills_the_listing() {
    let (db, mut client) = TestDb::migrated().await;
    assert_eq!(order_cdc::store::demo::load(&mut client, 300, 2).await.unwrap(), 300);
    let server = TestServer::start(config(&db.url)).await;
    let (status, page) = list(&server, "per_page=250&page=2&include=items,status_history&sort=-updated_at").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["meta"]["pagination"]["total"], 300);
    assert_eq!(ids(&page).len(), 50);
    for o in page["data"].as_array().unwrap() {
        assert!(o["customer"]["code"].as_str().is_some_and(|c| c.starts_with('C')), "{o}");
        assert!(o["user_id"].is_i64() && o["placed_at"].is_string() && o["po_number"].is_string(), "{o}");
        let t = &o["totals"];
        let sum = t["subtotal"].as_f64().unwrap() - t["discount_total"].as_f64().unwrap() + t["tax_total"].as_f64().unwrap() + t["shipping_total"].as_f64().unwrap();
        assert!((sum - t["grand_total"].as_f64().unwrap()).abs() < 1e-6, "{o}");
        assert_eq!(o["items"].as_array().unwrap().len(), 2);
        assert_eq!(o["status_history"][0]["status"], o["status"]);
        assert_eq!(o["status_history"][0]["changed_by"], "demo-load");
    }
    assert!(!ids_of(&server, "q=C0001&per_page=250").await.is_empty(), "customer codes are searched");
    db.drop_db().await;
}

/// The last day RFC 3339 can write is a valid upper bound, though its end (exclusive) is
/// in the year 10000, and an instant past it is a 400 naming the parameter; the last page
/// is one number whatever per_page is (both found by schemathesis).
#[tokio::test(flavor = "multi_thread")]
async fn the_last_day_and_the_last_page_are_documented_bounds() {
    let (db, client) = TestDb::migrated().await;
    twelve_orders(&client).await;
    let server = TestServer::start(config(&db.url)).await;
    let every = list(&server, "").await.1["meta"]["pagination"]["total"].clone();
    for to in ["9999-12-31", "9999-12-31 23:59:59", "9999-12-31T23:59:59.5Z"] {
        let (status, page) = list(&server, &format!("filter_on=updated_at&date_from=0001-01-01&date_to={to}")).await;
        assert_eq!((status, &page["meta"]["pagination"]["total"]), (200, &every), "{to}: {page}");
        assert_eq!(page["meta"]["filters"]["date_to"], "9999-12-31 23:59:59", "{to}");
    }
    let (status, body) = list(&server, "placed_to=9999-12-31T23:59:59-00:01").await;
    assert_eq!((status, body["error"]["type"].as_str()), (400, Some("invalid_parameter")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("placed_to:"), "{body}");
    // One last page for every per_page, as documented.
    let last = order_cdc::server::orders::MAX_PAGE;
    assert_eq!(list(&server, &format!("page={last}&per_page=250")).await.0, 200);
    let (status, body) = list(&server, &format!("page={}&per_page=1", last + 1)).await;
    assert_eq!((status, body["error"]["type"].as_str()), (422, Some("unprocessable_parameter")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("page:"), "{body}");
    db.drop_db().await;
}
