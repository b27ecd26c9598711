//! The `webstore_api` source against our own `order-cdc serve` dialect of seed 003 (in
//! process, over the reference schema): every order arrives byte-equal to the listing's
//! document, a `PUT` arrives as the newest version, and with `reconcile` a `DELETE` arrives
//! as a tombstone.

mod common;

use std::collections::HashMap;

use common::server::{TestServer, TOKEN};
use common::{assert_topic_matches, insert_orders, latest_by_key, read_topic, unique, Pipeline, Setup, TestDb};
use serde_json::value::RawValue;
use tokio::task::block_in_place;

/// Every order the served listing holds, each as its exact bytes, by uuid.
async fn served(server: &TestServer, url: &str) -> HashMap<String, String> {
    let mut orders = HashMap::new();
    for page in 0.. {
        let body = server.http.get(format!("{url}?size=80&page={page}")).bearer_auth(TOKEN).send().await.unwrap().text().await.unwrap();
        let listing: Vec<&RawValue> = serde_json::from_str(&body).unwrap();
        if listing.is_empty() {
            return orders;
        }
        for order in listing {
            let doc: serde_json::Value = serde_json::from_str(order.get()).unwrap();
            orders.insert(doc["uuid"].as_str().unwrap().to_string(), order.get().to_string());
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn served_orders_arrive_byte_equal_and_a_put_and_a_delete_follow() {
    let (db, client) = TestDb::migrated().await;
    // 5,000 orders created in one second, about 140 sharing each revision second.
    insert_orders(&client, 1, 5_000, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '7 ms'").await;
    let server = TestServer::start(common::server::config(&db.url)).await;
    let url = format!("{}/acme/api/v2/sales/orders.json", server.base);
    let topic = unique("served_webstore");
    let mut p = Pipeline::new("", &topic);
    p.source = Some(format!(
        "kind = \"webstore_api\"\nurl = \"{url}\"\nsize = 80\nsettle = \"2s\"\nreconcile = \"1ms\"\nheaders = {{ Authorization = \"Bearer {TOKEN}\" }}"
    ));
    let setup = Setup::new(&p);
    block_in_place(|| setup.run_once());
    let expected = served(&server, &url).await;
    assert_eq!(expected.len(), 5_000);
    let (events, duplicates) = block_in_place(|| assert_topic_matches(&topic, &expected));
    println!("served webstore dialect: {events} events for 5000 orders, {duplicates} duplicates");

    // One order changed and one deleted through the dialect itself.
    let (changed, deleted) = {
        let mut uuids = expected.keys();
        (uuids.next().unwrap().clone(), uuids.next().unwrap().clone())
    };
    let item = |uuid: &str| format!("{}/acme/api/v2/sales/orders/{uuid}.json", server.base);
    let put = server.http.put(item(&changed)).bearer_auth(TOKEN).json(&serde_json::json!({"reference": "changed-by-test"})).send().await.unwrap();
    assert!(put.status().is_success(), "PUT: {} {}", put.status(), put.text().await.unwrap());
    let delete = server.http.delete(item(&deleted)).bearer_auth(TOKEN).send().await.unwrap();
    assert!(delete.status().is_success(), "DELETE: {}", delete.status());
    let now = server.http.get(item(&changed)).bearer_auth(TOKEN).send().await.unwrap().text().await.unwrap();
    assert!(now.contains("changed-by-test"));

    block_in_place(|| setup.run_once());
    let latest = latest_by_key(&block_in_place(|| read_topic(&topic)));
    assert_eq!(latest[&changed].text(), now, "the PUT is the order's newest event, byte for byte");
    assert_eq!(latest[&deleted].value, None, "the DELETE is a tombstone");
    assert_eq!(latest[&deleted].headers.get("ce_type").map(String::as_str), Some("sales_order.deleted"));
    let tombstones = latest.values().filter(|e| e.value.is_none()).count();
    assert_eq!(tombstones, 1, "no live order is tombstoned");
    db.drop_db().await;
}
