//! The webstore orders API v2 (seed 003) in `order-cdc serve`, against real PostgreSQL:
//! every route and status, `since` strictness, size/page, startDate/endDate, query,
//! count.json against the listing, PUT and DELETE seen by the next listing, the other
//! dialects and the Postgres source, readonly fields refused, generated inputs that never
//! get a 5xx, POST /sales-orders and demo-load filling seed 003's fields, and index use.

mod common;

use std::collections::HashMap;
use std::time::Instant;

use common::server::*;
use common::*;
use order_cdc::server::webstore::{Listing, Sql};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::Method;
use serde_json::{json, Value};

const ORDERS: &str = "/acme/api/v2/sales/orders";
/// 2025-01-01T00:00:00Z and 2025-06-01T00:00:00Z.
const BASE_DATE: i64 = 1_735_689_600;
const BASE_REVISION: i64 = 1_748_736_000;

fn uuid(g: i64) -> String {
    format!("{g:032x}")
}

/// Order g of the fixture: created g hours after BASE_DATE (date), changed in second
/// g / 2 after BASE_REVISION (two orders per revision second).
fn date(g: i64) -> i64 {
    BASE_DATE + 3600 * g
}

fn revision(g: i64) -> i64 {
    BASE_REVISION + g / 2
}

/// 45 orders (the triggers off, so the times are ours): uuid g in hex; number WS-g;
/// reference REF-g; customer Acme (id 1) when g is even, Bolt (id 2) when odd; status
/// pending/shipped/returned by g % 3; every 15th not active. Order 1 has a line with a
/// tax and a payment.
async fn orders(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "BEGIN;
             SET LOCAL session_replication_role = replica;
             INSERT INTO customers (id, code, name, email) VALUES (1, 'ACME', 'Acme Wholesale', 'buyer@acme.example'),
                                                                  (2, 'BOLT', 'Bolt Supply', 'ops@bolt.example');
             INSERT INTO products (id, sku, name, uuid, weight) VALUES (1, 'SKU-1', 'Widget', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 0.5),
                                                                       (2, 'SKU-2', 'Gadget', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 1.25);
             INSERT INTO sales_orders (id, uuid, order_number, customer_po_number, status, order_status, customer_id,
                    customer_username, customer_email, product_total, total_tax, total_shipping, total_amount, created_at, updated_at)
             SELECT g, lpad(to_hex(g), 32, '0'), 'WS-' || g, 'REF-' || g, CASE WHEN g % 15 = 0 THEN 'Deleted' ELSE 'Active' END,
                    (ARRAY['pending','shipped','partially_refunded'])[1 + g % 3], 1 + g % 2, 'user' || g, 'c' || g || '@example.com',
                    20, 1.5, 5, 26.5,
                    '2025-01-01 00:00:00.25+00'::timestamptz + g * interval '1 hour',
                    '2025-06-01 00:00:00.5+00'::timestamptz + (g / 2) * interval '1 second'
               FROM generate_series(1, 45) g;
             INSERT INTO sales_order_items (id, sales_order_id, line_number, product_id, sku, name, quantity, unit_price, tax, total_weight, uuid)
                  VALUES (1, 1, 1, 1, 'SKU-1', 'Widget', 2, 10, 1.5, 1.0, 'cccccccccccccccccccccccccccccccc');
             INSERT INTO sales_order_item_taxes (sales_order_id, item_id, name, tax_group, taxtype, rate, total)
                  VALUES (1, 1, 'GST', 'STATE', 'SALES', 7.50, 1.50);
             INSERT INTO sales_order_payments (sales_order_id, uuid, status, total, method, name, gateway, currency, reference, data, testing, created_at)
                  VALUES (1, 'dddddddddddddddddddddddddddddddd', 'processed', 10.00, 'creditcard', 'Visa', 'stripe', 'EUR', 'ch_1',
                          '{\"last4\": \"4242\"}', true, '2025-01-01 02:00:00+00');
             UPDATE sales_orders SET total_paid = 10 WHERE id = 1;
             SELECT setval(pg_get_serial_sequence('sales_orders', 'id'), 100),
                    setval(pg_get_serial_sequence('sales_order_items', 'id'), 100),
                    setval(pg_get_serial_sequence('products', 'id'), 100),
                    setval(pg_get_serial_sequence('customers', 'id'), 100);
             COMMIT;",
        )
        .await
        .unwrap();
}

/// The active orders of the fixture that `keep` selects, in listing order (newest first).
fn expected(keep: impl Fn(i64) -> bool) -> Vec<String> {
    (1..=45).rev().filter(|g| g % 15 != 0 && keep(*g)).map(uuid).collect()
}

/// A request with the token; every response is JSON with a Date header.
async fn call(server: &TestServer, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
    let (status, dated, text) = server.send(method, path, Some(TOKEN), body).await;
    assert!(dated, "{path}: every response carries a Date header");
    if status == 204 {
        assert!(text.is_empty());
        return (status, Value::Null);
    }
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}")))
}

async fn get(server: &TestServer, path: &str) -> (u16, Value) {
    call(server, Method::GET, path, None).await
}

fn uuids(list: &Value) -> Vec<String> {
    list.as_array().unwrap_or_else(|| panic!("not an array: {list}")).iter().map(|o| o["uuid"].as_str().unwrap().to_string()).collect()
}

/// Every page of a listing at size 20, checked against count.json.
async fn walk(server: &TestServer, query: &str) -> Vec<String> {
    let mut all = Vec::new();
    for page in 0.. {
        let (status, list) = get(server, &format!("{ORDERS}.json?size=20&page={page}&{query}")).await;
        assert_eq!(status, 200, "{query}: {list}");
        let got = uuids(&list);
        let last = got.len() < 20;
        all.extend(got);
        if last {
            break;
        }
    }
    let (status, count) = get(server, &format!("{ORDERS}/count.json?{query}")).await;
    assert_eq!((status, count.as_u64()), (200, Some(all.len() as u64)), "{query}: count.json agrees with the listing");
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn the_listing_filters_pages_and_counts() {
    let (db, client) = TestDb::migrated().await;
    orders(&client).await;
    let server = TestServer::start(config(&db.url)).await;

    // The default: a bare array of 40, newest created first; page 1 has the other two.
    let (status, dated, text) = server.send(Method::GET, &format!("{ORDERS}.json"), Some(TOKEN), None).await;
    assert!(status == 200 && dated && text.starts_with(r#"[{"type":"orders","uuid":""#), "{status} {text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    let all = expected(|_| true);
    assert_eq!(all.len(), 42);
    assert_eq!(uuids(&list), all[..40]);
    let (_, rest) = get(&server, &format!("{ORDERS}.json?page=1")).await;
    assert_eq!(uuids(&rest), all[40..]);
    let (_, count) = get(&server, &format!("{ORDERS}/count.json")).await;
    assert_eq!(count, json!(42));
    for size in [20, 40, 80] {
        let (_, list) = get(&server, &format!("{ORDERS}.json?size={size}")).await;
        assert_eq!(uuids(&list), all[..size.min(42)], "size={size}");
    }

    // The document of seed 003, built by PostgreSQL; the single GET has the same one.
    let order_1 = json!({
        "type": "orders", "uuid": uuid(1), "revision": revision(1), "date": date(1), "number": "WS-1", "reference": "REF-1",
        "status": "shipped",
        "customer": {"id": 2, "code": "BOLT", "name": "Bolt Supply", "username": "user1", "email": "c1@example.com"},
        "lines": [{"type": "orderline", "uuid": "cccccccccccccccccccccccccccccccc", "productUUID": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                   "quantity": "2", "price": "10.00", "totalWeight": "1.0", "tax": "1.50", "subtotal": "20.00", "total": "21.50",
                   "taxes": [{"name": "GST", "group": "STATE", "taxtype": "SALES", "rate": "7.50", "total": "1.50"}]}],
        "payments": [{"type": "payment", "uuid": "dddddddddddddddddddddddddddddddd", "date": BASE_DATE + 7200, "status": "processed",
                      "total": "10.00", "method": "creditcard", "name": "Visa", "gateway": "stripe", "currency": "EUR",
                      "reference": "ch_1", "paymentMethodUUID": null, "error": null, "data": {"last4": "4242"}, "testing": true}],
        "shipmentsSubTotal": "5.00", "productsSubTotal": "20.00", "subtotal": "25.00", "shipmentsTax": "0.00", "productsTax": "1.50",
        "tax": "1.50", "taxes": [{"name": "GST", "group": "STATE", "taxtype": "SALES", "rate": "7.50", "total": "1.50"}],
        "shipmentsTotal": "5.00", "productsTotal": "21.50", "total": "26.50", "balance": "16.50", "isPaid": false
    });
    assert_eq!(rest[1], order_1);
    let (status, one) = get(&server, &format!("{ORDERS}/{}.json", uuid(1))).await;
    assert_eq!((status, &one), (200, &order_1));
    let (_, upper) = get(&server, &format!("{ORDERS}/{}.json", uuid(1).to_uppercase())).await;
    assert_eq!(upper, order_1, "hex is read in either case");
    let (_, two) = get(&server, &format!("{ORDERS}/{}.json", uuid(2))).await;
    assert_eq!((&two["status"], &two["customer"]["name"], &two["lines"], &two["payments"], &two["isPaid"]), (&json!("returned"), &json!("Acme Wholesale"), &json!([]), &json!([]), &json!(false)));
    let (_, three) = get(&server, &format!("{ORDERS}/{}.json", uuid(3))).await;
    assert_eq!(three["status"], "pending");

    // Filters, walked page by page and counted.
    let acme = |g: i64| g % 2 == 0;
    let cases: Vec<(String, Vec<String>)> = vec![
        (format!("since={}", revision(10)), expected(|g| revision(g) > revision(10))),
        (format!("since={}", revision(10) - 1), expected(|g| g >= 10)),
        (format!("since={}", BASE_REVISION - 1), all.clone()),
        (format!("since={}", revision(44)), vec![]),
        (format!("startDate={}&endDate={}", date(5), date(8)), expected(|g| (5..=8).contains(&g))),
        (format!("startDate={}&endDate={}", date(5) + 1, date(8) - 1), expected(|g| (6..=7).contains(&g))),
        (format!("endDate={}", date(3)), expected(|g| g <= 3)),
        (format!("startDate={}", date(40)), expected(|g| g >= 40)),
        (format!("startDate={}&endDate={}", date(7), date(7)), vec![uuid(7)]),
        ("query=WS-7".into(), vec![uuid(7)]),
        ("query=ws-15".into(), vec![]),
        ("query=REF-44".into(), vec![uuid(44)]),
        ("query=acme".into(), expected(acme)),
        ("query=bolt%20supply".into(), expected(|g| !acme(g))),
        ("query=c8@example.com".into(), vec![uuid(8)]),
        ("query=user9".into(), vec![uuid(9)]),
        ("query=nothing-here".into(), vec![]),
        ("query=".into(), all.clone()),
        (format!("query=acme&since={}&endDate={}", revision(20), date(30)), expected(|g| acme(g) && (22..=30).contains(&g))),
        ("other=ignored".into(), all.clone()),
    ];
    for (query, want) in &cases {
        assert_eq!(&walk(&server, query).await, want, "{query}");
    }
    let (_, past) = get(&server, &format!("{ORDERS}.json?size=80&page=1")).await;
    assert_eq!(past, json!([]));

    // The routes are described.
    let spec: Value = server.http.get(format!("{}/openapi.json", server.base)).send().await.unwrap().json().await.unwrap();
    let paths = &spec["paths"];
    let documented: Vec<&str> = paths["/{store}/api/v2/sales/orders.json"]["get"]["parameters"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(documented, ["store", "size", "page", "startDate", "endDate", "query", "since"]);
    assert!(paths["/{store}/api/v2/sales/orders/count.json"]["get"].is_object());
    for method in ["get", "put", "delete"] {
        assert!(paths["/{store}/api/v2/sales/orders/{uuid}.json"][method].is_object(), "{method}");
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_status_is_json_and_names_the_parameter() {
    let (db, client) = TestDb::migrated().await;
    orders(&client).await;
    let server = TestServer::start(config(&db.url)).await;

    for query in ["size=10", "size=x", "size=", "page=-1", "page=x", "page=9223372036854775807&size=80", "since=abc", "since=1.5",
        "startDate=1.5", "endDate=99999999999999", "startDate=10&endDate=5", "query=a%00b"]
    {
        let param = query.split('=').next().unwrap();
        for path in [format!("{ORDERS}.json?{query}"), format!("{ORDERS}/count.json?{query}")] {
            let (status, body) = get(&server, &path).await;
            if query == "size=" {
                assert_eq!(status, 200, "an empty value is an unset parameter");
                continue;
            }
            assert_eq!((status, &body["error"]["type"]), (400, &json!("invalid_parameter")), "{path}: {body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.starts_with(&format!("{param}:")), "{path}: the message names the parameter: {message}");
        }
    }

    // Auth comes first; then the store handle; then the order.
    let order = format!("{ORDERS}/{}.json", uuid(1));
    for (token, path) in [(None, format!("{ORDERS}.json")), (Some("wrong-token"), format!("{ORDERS}.json")), (None, order.clone()), (Some("wrong"), "/other/api/v2/sales/orders.json".into())] {
        let (status, dated, text) = server.send(Method::GET, &path, token, None).await;
        let body: Value = serde_json::from_str(&text).unwrap();
        assert!(dated);
        assert_eq!((status, &body["error"]["type"]), (401, &json!("unauthorized")), "{path}");
    }
    for path in [
        "/other/api/v2/sales/orders.json".to_string(),
        "/other/api/v2/sales/orders/count.json".into(),
        format!("/other/api/v2/sales/orders/{}.json", uuid(1)),
        format!("{ORDERS}/{}.json", uuid(15)),
        format!("{ORDERS}/{}.json", uuid(99)),
        format!("{ORDERS}/{}.xml", uuid(1)),
        format!("{ORDERS}/xyz.json"),
        format!("{ORDERS}/{}", uuid(1)),
        "/acme/api/v2/sales/other.json".into(),
    ] {
        let (status, body) = get(&server, &path).await;
        assert_eq!((status, &body["error"]["type"]), (404, &json!("not_found")), "{path}: {body}");
    }
    for (method, path) in [
        (Method::POST, format!("{ORDERS}.json")),
        (Method::DELETE, format!("{ORDERS}.json")),
        (Method::PUT, format!("{ORDERS}/count.json")),
        (Method::DELETE, format!("{ORDERS}/count.json")),
        (Method::POST, order.clone()),
    ] {
        let (status, body) = call(&server, method.clone(), &path, Some(&json!({}))).await;
        assert_eq!((status, &body["error"]["type"]), (405, &json!("method_not_allowed")), "{method} {path}: {body}");
    }
    for (method, path) in [(Method::PUT, format!("{ORDERS}/{}.json", uuid(15))), (Method::DELETE, format!("{ORDERS}/{}.json", uuid(99)))] {
        let (status, body) = call(&server, method.clone(), &path, Some(&json!({"number": "X"}))).await;
        assert_eq!((status, &body["error"]["type"]), (404, &json!("not_found")), "{method} {path}: {body}");
    }
    let r = server.http.put(format!("{}{order}", server.base)).bearer_auth(TOKEN).body("{oops").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["type"], "invalid_json");
    let r = server.http.put(format!("{}{order}", server.base)).bearer_auth(TOKEN).body(vec![b' '; 100_000]).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 413);
    db.drop_db().await;
}

/// PUT with its rules, DELETE, and both seen by the next listing, the export, the
/// wholesale listing and the Postgres source.
#[tokio::test(flavor = "multi_thread")]
async fn put_and_delete_are_seen_by_every_dialect_and_the_postgres_source() {
    let (db, client) = TestDb::migrated().await;
    orders(&client).await;
    let server = TestServer::start(config(&db.url)).await;
    let path = |g: i64| format!("{ORDERS}/{}.json", uuid(g));

    // Every writable field at once; a new line with a tax, the old list replaced.
    let change = json!({"number": "WS-2-NEW", "reference": "R2", "status": "invoiced",
        "customer": {"id": 2, "username": "u2", "email": "new@example.com"},
        "lines": [{"productUUID": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "quantity": "3", "price": "12.50",
                   "taxes": [{"name": "VAT", "group": "COUNTRY", "taxtype": "SALES", "rate": "20"}]}]});
    let (status, put) = call(&server, Method::PUT, &path(2), Some(&change)).await;
    assert_eq!(status, 200, "{put}");
    assert_eq!((&put["number"], &put["reference"], &put["status"], &put["date"]), (&json!("WS-2-NEW"), &json!("R2"), &json!("invoiced"), &json!(date(2))));
    assert_eq!(put["customer"], json!({"id": 2, "code": "BOLT", "name": "Bolt Supply", "username": "u2", "email": "new@example.com"}));
    let line = &put["lines"][0];
    assert!(line["uuid"].as_str().is_some_and(|u| u.len() == 32));
    assert_eq!(
        (&line["quantity"], &line["price"], &line["totalWeight"], &line["subtotal"], &line["tax"], &line["total"]),
        (&json!("3"), &json!("12.50"), &json!("3.750"), &json!("37.50"), &json!("7.50"), &json!("45.00"))
    );
    assert_eq!(line["taxes"], json!([{"name": "VAT", "group": "COUNTRY", "taxtype": "SALES", "rate": "20", "total": "7.50"}]));
    assert_eq!((&put["productsSubTotal"], &put["tax"], &put["total"], &put["balance"]), (&json!("37.50"), &json!("7.50"), &json!("50.00"), &json!("50.00")));
    let new_revision = put["revision"].as_i64().unwrap();
    assert!(new_revision > revision(45), "the change moved the revision to now");
    let (_, got) = get(&server, &path(2)).await;
    assert_eq!(got, put, "PUT answers the stored document");
    // The next listing from any earlier revision has it, and a strict since does not.
    assert!(walk(&server, &format!("since={}", new_revision - 1)).await.contains(&uuid(2)));
    assert!(!walk(&server, &format!("since={new_revision}")).await.contains(&uuid(2)));
    assert_eq!(walk(&server, "query=WS-2-NEW").await, vec![uuid(2)]);

    // The fetched document sent back is accepted; its stale copy is refused by revision.
    let (status, again) = call(&server, Method::PUT, &path(2), Some(&got)).await;
    assert_eq!((status, &again["lines"][0]["taxes"], &again["number"]), (200, &got["lines"][0]["taxes"], &got["number"]), "{again}");
    let (status, body) = call(&server, Method::PUT, &path(2), Some(&got)).await;
    if again["revision"] != got["revision"] {
        assert_eq!((status, &body["error"]["fields"][0]["field"]), (422, &json!("revision")), "{body}");
    }
    // Readonly fields with other values, unknown fields, bad values: named 422s.
    for (body, field) in [
        (json!({"total": "1.00"}), "total"),
        (json!({"type": "products"}), "type"),
        (json!({"uuid": uuid(3)}), "uuid"),
        (json!({"payments": [{}]}), "payments"),
        (json!({"colour": "red"}), "colour"),
        (json!({"status": "lost"}), "status"),
        (json!({"number": "WS-4"}), "number"),
        (json!({"number": ""}), "number"),
        (json!({"customer": {"id": 999}}), "customer.id"),
        (json!({"customer": {"name": "Renamed"}}), "customer.name"),
        (json!({"customer": {"email": "not-an-email"}}), "customer.email"),
        (json!({"lines": []}), "lines"),
        (json!({"lines": [{"productUUID": "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "quantity": 1}]}), "lines[0].productUUID"),
        (json!({"lines": [{"quantity": 1}]}), "lines[0].productUUID"),
        (json!({"lines": [{"productUUID": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "quantity": "1.5"}]}), "lines[0].quantity"),
        (json!({"lines": [{"productUUID": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "quantity": 1, "total": "5"}]}), "lines[0].total"),
        (json!({"lines": [{"uuid": "cccccccccccccccccccccccccccccccc", "productUUID": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "quantity": 1}]}), "lines[0].uuid"),
        (json!({"lines": [{"productUUID": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "quantity": 2147483647, "price": "999999999999"}]}), "lines"),
        (json!([]), "body"),
    ] {
        let (status, answer) = call(&server, Method::PUT, &path(2), Some(&body)).await;
        assert_eq!((status, &answer["error"]["type"]), (422, &json!("validation_error")), "{body}: {answer}");
        let fields: Vec<&str> = answer["error"]["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
        assert_eq!(fields, vec![field], "{body}");
    }
    let (_, unchanged) = get(&server, &path(2)).await;
    assert_eq!(unchanged["number"], "WS-2-NEW", "a refused PUT changes nothing");

    // A line kept by uuid keeps its identity and taxes; its tax follows its new quantity.
    let (status, one) = call(&server, Method::PUT, &path(1), Some(&json!({"lines": [{"uuid": "cccccccccccccccccccccccccccccccc", "quantity": 4}]}))).await;
    assert_eq!(status, 200, "{one}");
    let line = &one["lines"][0];
    assert_eq!((&line["uuid"], &line["quantity"], &line["tax"], &line["totalWeight"]), (&json!("cccccccccccccccccccccccccccccccc"), &json!("4"), &json!("3.00"), &json!("2.000")));
    assert_eq!((&one["productsSubTotal"], &one["tax"], &one["total"], &one["balance"]), (&json!("40.00"), &json!("3.00"), &json!("48.00"), &json!("38.00")));

    // DELETE: 204, then 404 everywhere in this dialect.
    let (status, _) = call(&server, Method::DELETE, &path(3), None).await;
    assert_eq!(status, 204);
    assert_eq!(get(&server, &path(3)).await.0, 404);
    assert_eq!(call(&server, Method::DELETE, &path(3), None).await.0, 404);
    assert!(!walk(&server, "").await.contains(&uuid(3)));
    let (status, gone) = call(&server, Method::PUT, &path(3), Some(&json!({"number": "X"}))).await;
    assert_eq!(status, 404, "{gone}");
    let row = client.query_one("SELECT status, updated_at > '2025-07-01' FROM sales_orders WHERE id = 3", &[]).await.unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, bool>(1)), ("Deleted".to_string(), true), "a deletion moves updated_at");

    // The export and the wholesale listing see the change and the deletion.
    wait_for_cutoff_past_writes(&client).await;
    let (exported, _, _) = server.run("2024-01-01", 1000).await;
    let numbers: HashMap<i64, &str> = exported.iter().map(|o| (o["order_id"].as_i64().unwrap(), o["order_number"].as_str().unwrap())).collect();
    assert_eq!(numbers.get(&2), Some(&"WS-2-NEW"));
    assert!(!numbers.contains_key(&3));
    assert_eq!(exported.iter().find(|o| o["order_id"] == 2).unwrap()["items"][0]["quantity"], 3);
    let r = server.http.get(format!("{}/api/orders/?order_number=WS-2-NEW&include=items", server.base)).header("X-API-Key", TOKEN).send().await.unwrap();
    let wholesale: Value = r.json().await.unwrap();
    assert_eq!(wholesale["data"][0]["id"], 2, "{wholesale}");
    assert_eq!(wholesale["data"][0]["items"][0]["unit_price"], 12.5);

    // The Postgres source publishes the change and a tombstone for the deletion.
    let topic = unique("webstore-pg");
    let setup = Setup::new(&Pipeline::new(&db.url, &topic));
    setup.run_once();
    let latest = latest_by_key(&read_topic(&topic));
    let two: Value = serde_json::from_str(latest["2"].text()).unwrap();
    assert_eq!(two["order_number"], "WS-2-NEW");
    assert!(latest["3"].value.is_none(), "the deleted order is a tombstone");
    assert_eq!(latest.len(), 45);
    db.drop_db().await;
}

/// POST /sales-orders and demo-load fill seed 003's fields.
#[tokio::test(flavor = "multi_thread")]
async fn created_and_demo_orders_have_seed_003_fields() {
    let (db, mut client) = TestDb::migrated().await;
    client
        .batch_execute("INSERT INTO products (id, sku, name, weight) VALUES (123, 'WIDGET-001', 'Premium Widget', 0.75), (124, 'WIDGET-002', 'Other', NULL);")
        .await
        .unwrap();
    let server = TestServer::start(config(&db.url)).await;
    let request = json!({"channel_id": 1, "order_number": "SO-1001", "order_date": "2025-03-24", "order_status": "shipped",
        "customer_po_number": "PO-7788", "customer_email": "buyer@example.com", "total_tax": 10.0, "total_shipping": 5.0,
        "bill_to": {"name": "A"}, "ship_to": {"name": "B"},
        "items": [{"product_id": 123, "quantity": 2, "unit_price": 10.0}, {"product_id": 124, "quantity": 1, "unit_price": 10.0}]});
    let (status, created) = server.post("/sales-orders", &request).await;
    assert_eq!(status, 201, "{created}");
    let (_, list) = get(&server, &format!("{ORDERS}.json")).await;
    let o = &list[0];
    let product: String = client.query_one("SELECT uuid FROM products WHERE id = 123", &[]).await.unwrap().get(0);
    assert_eq!((&o["number"], &o["reference"], &o["status"]), (&json!("SO-1001"), &json!("PO-7788"), &json!("shipped")));
    assert_eq!((&o["lines"][0]["productUUID"], &o["lines"][0]["totalWeight"], &o["lines"][1]["totalWeight"]), (&json!(product), &json!("1.500"), &json!("0")));
    assert_eq!((&o["lines"][0]["tax"], &o["lines"][1]["tax"], &o["tax"], &o["total"]), (&json!("6.66"), &json!("3.34"), &json!("10.00"), &json!("45.00")));
    assert_eq!(o["lines"][0]["taxes"], json!([{"name": "Tax", "group": null, "taxtype": "SALES", "rate": "33.33", "total": "6.66"}]));
    assert_eq!(o["taxes"], json!([{"name": "Tax", "group": null, "taxtype": "SALES", "rate": "33.33", "total": "10.00"}]));
    assert_eq!((&o["payments"], &o["balance"], &o["isPaid"]), (&json!([]), &json!("45.00"), &json!(false)));
    let (_, one) = get(&server, &format!("{ORDERS}/{}.json", o["uuid"].as_str().unwrap())).await;
    assert_eq!(&one, o);

    // An order written with only DESIGN.md's columns is a valid webstore order too.
    let id: i64 = client.query_one("INSERT INTO sales_orders (status, order_status) VALUES ('Active', 'fulfilled') RETURNING id", &[]).await.unwrap().get(0);
    let (_, list) = get(&server, &format!("{ORDERS}.json")).await;
    let bare = list.as_array().unwrap().iter().find(|o| o["number"] == format!("SO-{id}")).expect("listed");
    assert!(bare["uuid"].as_str().is_some_and(|u| u.len() == 32 && u.bytes().all(|b| b.is_ascii_hexdigit())), "{bare}");
    assert_eq!((&bare["status"], &bare["lines"], &bare["total"], &bare["isPaid"]), (&json!("shipped"), &json!([]), &json!("0.00"), &json!(true)));
    client.execute("DELETE FROM sales_orders WHERE id = $1", &[&id]).await.unwrap();

    assert_eq!(order_cdc::store::demo::load(&mut client, 100, 2).await.unwrap(), 100);
    let mut seen = std::collections::HashSet::new();
    let (mut paid, mut orders) = (0, 0);
    for page in 0..2 {
        let (_, list) = get(&server, &format!("{ORDERS}.json?size=80&page={page}")).await;
        for o in list.as_array().unwrap().iter().filter(|o| o["number"] != "SO-1001") {
            orders += 1;
            assert!(seen.insert(o["uuid"].as_str().unwrap().to_string()));
            assert_eq!(o["lines"].as_array().unwrap().len(), 2, "{o}");
            for line in o["lines"].as_array().unwrap() {
                assert!(line["productUUID"].as_str().is_some_and(|u| u.len() == 32) && line["totalWeight"] != "0", "{line}");
                assert_eq!(line["taxes"][0]["total"], line["tax"], "{line}");
            }
            let paid_now = o["isPaid"].as_bool().unwrap();
            assert_eq!(paid_now, o["balance"] == "0.00", "{o}");
            assert_eq!(o["payments"].as_array().unwrap().len(), usize::from(paid_now), "{o}");
            if paid_now {
                paid += 1;
                assert_eq!((&o["payments"][0]["total"], &o["payments"][0]["status"]), (&o["total"], &json!("processed")));
            }
            assert_eq!(o["shipmentsTax"], "6.00", "7.50 of tax, 0.75 on each of two lines");
        }
    }
    assert_eq!((orders, paid), (100, 50));
    db.drop_db().await;
}

/// Random parameters and PUT bodies never get a 5xx: only 200, 400, 404 or 422, always
/// with a JSON body of the documented shape.
#[test]
fn generated_requests_never_get_a_5xx() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (db, server) = rt.block_on(async {
        let (db, client) = TestDb::migrated().await;
        orders(&client).await;
        let server = TestServer::start(config(&db.url)).await;
        (db, server)
    });
    let names = prop::sample::select(vec!["size", "page", "startDate", "endDate", "query", "since", "other"]);
    let values = prop_oneof![
        any::<String>(),
        "-?[0-9]{1,22}",
        "(20|40|80|0|1)",
        "17[0-9]{8}(\\.[0-9]{0,3})?",
        "[%&=+;#\\\\_a-zA-Z0-9 @!:*|()'\"-]{0,20}",
    ];
    let query = prop::collection::vec((names, values, any::<bool>()), 0..5).prop_map(|pairs| {
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
    let check = |status: u16, text: &str, what: &str| -> Result<Value, TestCaseError> {
        let body: Value = serde_json::from_str(text).map_err(|_| TestCaseError::fail(format!("{what}: not JSON: {text}")))?;
        prop_assert!(matches!(status, 200 | 400 | 404 | 422), "{} for {}: {}", status, what, text);
        if status != 200 {
            prop_assert!(body["error"]["type"].is_string() && body["error"]["message"].is_string(), "{}: {}", what, text);
        }
        Ok(body)
    };
    let mut runner = TestRunner::new(Config { cases: 300, failure_persistence: None, ..Config::default() });
    runner
        .run(&(query, any::<bool>()), |(q, count)| {
            let path = format!("{ORDERS}{}?{q}", if count { "/count.json" } else { ".json" });
            let (status, _, text) = rt.block_on(server.send(Method::GET, &path, Some(TOKEN), None));
            let body = check(status, &text, &path)?;
            if status == 200 {
                prop_assert!(if count { body.is_u64() } else { body.is_array() }, "{}: {}", path, text);
            }
            Ok(())
        })
        .unwrap();

    // PUT bodies: the document's fields (and others) with values of every kind.
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "-?[0-9]{1,16}(\\.[0-9]{0,5})?".prop_map(Value::from),
        "[0-9a-fA-F]{31,33}".prop_map(Value::from),
        prop::sample::select(vec!["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "cccccccccccccccccccccccccccccccc", "pending", "orderline", "x@y.z"]).prop_map(Value::from),
    ];
    let object = |keys: Vec<&'static str>, values: BoxedStrategy<Value>| {
        prop::collection::vec((prop::sample::select(keys), values), 0..6).prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
    };
    let leaf = leaf.boxed();
    let taxes = prop::collection::vec(object(vec!["name", "group", "taxtype", "rate", "total", "x"], leaf.clone()), 0..3).prop_map(Value::from);
    let line_value = prop_oneof![3 => leaf.clone(), 1 => taxes.boxed()].boxed();
    let lines = prop::collection::vec(object(vec!["uuid", "productUUID", "quantity", "price", "taxes", "type", "total", "tax", "x"], line_value), 0..4).prop_map(Value::from);
    let customer = object(vec!["id", "username", "email", "name", "code", "x"], leaf.clone());
    let field = prop_oneof![4 => leaf.clone(), 1 => lines.boxed(), 1 => customer.boxed()].boxed();
    let body = prop_oneof![
        8 => object(vec!["number", "reference", "status", "customer", "lines", "type", "uuid", "revision", "total", "isPaid", "other"], field),
        1 => leaf,
    ];
    let target = prop::sample::select(vec![1i64, 2, 15, 99]);
    let mut runner = TestRunner::new(Config { cases: 300, failure_persistence: None, ..Config::default() });
    runner
        .run(&(body, target), |(body, g)| {
            let path = format!("{ORDERS}/{}.json", uuid(g));
            let (status, _, text) = rt.block_on(server.send(Method::PUT, &path, Some(TOKEN), Some(&body)));
            let answer = check(status, &text, &format!("PUT {path} {body}"))?;
            if status == 200 {
                prop_assert_eq!(&answer["type"], "orders");
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(db.drop_db());
}

/// The plan of a listing as the server runs it, as text.
async fn plan(client: &tokio_postgres::Client, query: &str) -> (String, String) {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let listing = Listing::parse(&pairs, &Sql::new("public")).unwrap_or_else(|e| panic!("{query}: {}", e.message));
    let params = listing.params();
    plans(client, (&listing.count_sql, &params[..listing.count_params]), (&listing.page_sql, &params)).await
}

/// `since` near the end, a search, and the default page do not scan 200,000 orders.
#[tokio::test(flavor = "multi_thread")]
async fn listings_use_indexes_on_a_large_table() {
    let (db, client) = TestDb::migrated().await;
    let started = Instant::now();
    // Changed 10 ms apart from 2025-06-01 00:00 (revisions 1748736000 to +2000), created in
    // an order unrelated to that, every 50th not active.
    client
        .batch_execute(
            "BEGIN;
             SET LOCAL session_replication_role = replica;
             INSERT INTO sales_orders (id, order_number, status, customer_email, created_at, updated_at)
             SELECT g, 'M-' || g, CASE WHEN g % 50 = 0 THEN 'Deleted' ELSE 'Active' END, 'c' || g % 1000 || '@example.com',
                    '2024-01-01'::timestamptz + (hashint4(g::int) % 1000000 + 1000000) * interval '1 second',
                    '2025-06-01'::timestamptz + g * interval '10 ms'
               FROM generate_series(1, 200000) g;
             COMMIT;",
        )
        .await
        .unwrap();
    client.batch_execute("VACUUM ANALYZE sales_orders").await.unwrap();
    let loaded = started.elapsed();
    for (query, checks_count) in [
        (format!("since={}", BASE_REVISION + 1990), true),
        (format!("since={}&size=80&page=2", BASE_REVISION + 1900), true),
        ("query=M-123456".to_string(), true),
        ("query=c7@example.com&size=80".to_string(), true),
        ("size=80&page=3".to_string(), false),
    ] {
        let (count, page) = plan(&client, &query).await;
        let plans: &[(&str, &String)] = if checks_count { &[("count", &count), ("page", &page)] } else { &[("page", &page)] };
        for (what, plan) in plans {
            assert!(!plan.contains("Seq Scan on sales_orders"), "{query}: the {what} scans the table:\n{plan}");
        }
        let ms = |plan: &str| plan.lines().find(|l| l.starts_with("Execution Time")).unwrap_or_default().to_string();
        println!("{query}\n  count: {}\n  page:  {}", ms(&count), ms(&page));
    }
    println!("loaded 200,000 orders in {loaded:?}");
    db.drop_db().await;
}

/// count.json takes GET alone, and its 405s say so in `Allow` (found by schemathesis: the
/// order route's methods were advertised, and the handler's 405 had no `Allow`); the last
/// page is one number whatever the size.
#[tokio::test(flavor = "multi_thread")]
async fn count_json_405s_list_the_methods_it_takes_and_the_last_page_is_documented() {
    let (db, client) = TestDb::migrated().await;
    orders(&client).await;
    let server = TestServer::start(config(&db.url)).await;
    for method in [Method::PUT, Method::DELETE, Method::OPTIONS, Method::POST] {
        let r = server.http.request(method.clone(), format!("{}{ORDERS}/count.json", server.base)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 405, "{method}");
        assert_eq!(r.headers()[reqwest::header::ALLOW], "GET,HEAD", "{method}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["type"], "method_not_allowed", "{method}");
    }
    assert_eq!(get(&server, &format!("{ORDERS}/count.json")).await.0, 200);
    // One last page for every size, as documented (found by schemathesis).
    let last = order_cdc::server::webstore::MAX_PAGE;
    assert_eq!(get(&server, &format!("{ORDERS}.json?page={last}&size=80")).await, (200, json!([])));
    let (status, body) = get(&server, &format!("{ORDERS}.json?page={}&size=20", last + 1)).await;
    assert_eq!((status, body["error"]["type"].as_str()), (400, Some("invalid_parameter")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("page:"), "{body}");
    db.drop_db().await;
}
