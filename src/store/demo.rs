//! Demo orders for the reference schema (`order-cdc demo-load`): the README's demo and the
//! benchmarks load realistic orders with it, fast, in plain SQL.

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::StoreError;

const CHUNK: i64 = 50_000;

/// Inserts `orders` new orders with `items_per_order` items each (and a fulfillment order
/// for every other one). Their `updated_at` values are spread one millisecond apart,
/// ending now. Returns the number of orders inserted.
///
/// Bulk loading skips the triggers (`session_replication_role = replica`, which needs a
/// superuser): otherwise each item would touch its order once more.
pub async fn load(client: &mut Client, orders: i64, items_per_order: i32) -> Result<i64, StoreError> {
    let end: DateTime<Utc> = client
        .query_one("SELECT now()", &[])
        .await
        .map_err(StoreError::db("reading the clock"))?
        .get(0);
    let mut done = 0;
    while done < orders {
        let n = CHUNK.min(orders - done);
        let tx = client.transaction().await.map_err(StoreError::db("starting the load"))?;
        tx.batch_execute("SET LOCAL session_replication_role = replica").await.map_err(|e| {
            StoreError::Schema(format!("demo-load needs a superuser (to load without per-row triggers): {e}"))
        })?;
        tx.execute(
            "INSERT INTO products (sku, name, upc)
             SELECT 'SKU-' || g, 'Product ' || g, lpad(g::text, 12, '0') FROM generate_series(1, 100) g
             ON CONFLICT (sku) DO NOTHING",
            &[],
        )
        .await
        .map_err(StoreError::db("loading products"))?;
        tx.execute(
            "WITH o AS (
                INSERT INTO sales_orders (order_number, channel_id, order_status, order_date, customer_id,
                    customer_username, customer_email, bill_to, ship_to, product_total, total_tax,
                    total_shipping, total_amount, created_at, updated_at)
                SELECT 'DEMO-' || md5(random()::text || g), 1,
                    (ARRAY['pending','awaiting_shipment','processing','shipped'])[1 + g % 4],
                    ($3::timestamptz)::date, 1000 + g % 5000, 'customer' || g % 5000,
                    'customer' || g % 5000 || '@example.com',
                    jsonb_build_object('name', 'Customer ' || g % 5000, 'city', 'Anytown', 'country', 'US'),
                    jsonb_build_object('name', 'Customer ' || g % 5000, 'city', 'Anytown', 'country', 'US'),
                    99.98, 7.50, 5.00, 112.48, $3::timestamptz - interval '1 day',
                    $3::timestamptz - ($1::bigint - g) * interval '1 millisecond'
                  FROM generate_series($2::bigint + 1, $2::bigint + $4::bigint) g
                RETURNING id, order_number, created_at, updated_at),
             items AS (
                INSERT INTO sales_order_items (sales_order_id, line_number, product_id, sku, name, upc,
                    quantity, unit_price, tax, created_at, updated_at)
                SELECT o.id, l, p.id, p.sku, p.name, p.upc, 1 + (o.id + l) % 3, 10 + o.id % 50, 0.75,
                       o.created_at, o.updated_at
                  FROM o CROSS JOIN generate_series(1, $5::int) l
                  JOIN products p ON p.sku = 'SKU-' || (1 + (o.id * 7 + l) % 100))
             INSERT INTO fulfillment_orders (sales_order_id, order_number, status, warehouse_group_id, created_at, updated_at)
             SELECT o.id, o.order_number || '-A', 'pending', 1 + o.id % 3, o.created_at, o.updated_at
               FROM o WHERE o.id % 2 = 0",
            &[&orders, &done, &end, &n, &items_per_order],
        )
        .await
        .map_err(StoreError::db("loading orders"))?;
        tx.commit().await.map_err(StoreError::db("committing the load"))?;
        done += n;
    }
    Ok(done)
}
