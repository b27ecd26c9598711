//! Demo orders for the reference schema (`order-cdc demo-load`): the README's demo and the
//! benchmarks load realistic orders with it, fast, in plain SQL.

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::StoreError;

const CHUNK: i64 = 50_000;

/// Inserts `orders` new orders with `items_per_order` items each (and a fulfillment order
/// for every other one), for 5,000 customers with codes; every order has a user, a
/// placed time, a discount on every third one, and its first status in the history.
/// For seed 003, every line has a weight and one tax, the tax not on the lines is the
/// shipping's, and every other order is paid by one processed payment. Uuids are the
/// columns' defaults. Their `updated_at` values are spread one millisecond apart,
/// ending now. Returns the number of orders inserted.
///
/// Why this is a tool for an idle database: those values lie before the load's own
/// transactions began, which no writer of a real order system does (`updated_at` is its
/// transaction's `now()`), so the late-commit guard cannot hold a cutoff for them, and a
/// daemon running during the load may pass some of them for good. Load, then run.
///
/// Bulk loading skips the triggers (`session_replication_role = replica`, which needs a
/// superuser): otherwise each item would touch its order once more. So the history's first
/// entry, which the trigger would write, is written here.
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
            "INSERT INTO products (sku, name, upc, weight)
             SELECT 'SKU-' || g, 'Product ' || g, lpad(g::text, 12, '0'), (1 + g % 7) * 0.25 FROM generate_series(1, 100) g
             ON CONFLICT (sku) DO NOTHING",
            &[],
        )
        .await
        .map_err(StoreError::db("loading products"))?;
        tx.batch_execute(
            "INSERT INTO customers (id, code, name, email)
             SELECT 1000 + g, 'C' || lpad(g::text, 4, '0'), 'Customer ' || g, 'customer' || g || '@example.com'
               FROM generate_series(0, 4999) g
             ON CONFLICT DO NOTHING;
             SELECT setval(pg_get_serial_sequence('customers', 'id'), greatest((SELECT max(id) FROM customers), 6000))",
        )
        .await
        .map_err(StoreError::db("loading customers"))?;
        tx.execute(
            "WITH o AS (
                INSERT INTO sales_orders (order_number, channel_id, order_status, order_date, customer_id,
                    customer_username, customer_email, bill_to, ship_to, product_total, total_tax,
                    total_shipping, total_amount, created_at, updated_at, user_id, discount_total, placed_at,
                    customer_po_number, shipping_tax, total_paid)
                SELECT 'DEMO-' || md5(random()::text || g), 1,
                    (ARRAY['pending','awaiting_shipment','processing','shipped'])[1 + g % 4],
                    ($3::timestamptz)::date, 1000 + g % 5000, 'customer' || g % 5000,
                    'customer' || g % 5000 || '@example.com',
                    jsonb_build_object('name', 'Customer ' || g % 5000, 'city', 'Anytown', 'country', 'US'),
                    jsonb_build_object('name', 'Customer ' || g % 5000, 'city', 'Anytown', 'country', 'US'),
                    99.98, 7.50, 5.00, CASE WHEN g % 3 = 0 THEN 107.48 ELSE 112.48 END, $3::timestamptz - interval '1 day',
                    $3::timestamptz - ($1::bigint - g) * interval '1 millisecond', 1 + g % 50,
                    CASE WHEN g % 3 = 0 THEN 5.00 ELSE 0 END, $3::timestamptz - interval '1 day' + interval '1 minute',
                    'PO-' || g, greatest(0, 7.50 - 0.75 * $5::int),
                    CASE WHEN g % 2 = 0 THEN CASE WHEN g % 3 = 0 THEN 107.48 ELSE 112.48 END ELSE 0 END
                  FROM generate_series($2::bigint + 1, $2::bigint + $4::bigint) g
                RETURNING id, order_number, order_status, created_at, updated_at, placed_at, total_paid),
             payments AS (
                INSERT INTO sales_order_payments (sales_order_id, status, total, method, name, gateway, currency,
                    reference, testing, created_at, updated_at)
                SELECT o.id, 'processed', o.total_paid, 'creditcard', 'Credit card', 'demo', 'USD',
                       'DEMO-PAY-' || o.id, true, o.placed_at, o.placed_at
                  FROM o WHERE o.total_paid > 0),
             history AS (
                INSERT INTO sales_order_status_history (sales_order_id, to_status, changed_by, changed_at)
                SELECT o.id, o.order_status, 'demo-load', o.placed_at FROM o),
             items AS (
                INSERT INTO sales_order_items (sales_order_id, line_number, product_id, sku, name, upc,
                    quantity, unit_price, tax, created_at, updated_at, total_weight)
                SELECT o.id, l, p.id, p.sku, p.name, p.upc, 1 + (o.id + l) % 3, 10 + o.id % 50, 0.75,
                       o.created_at, o.updated_at, (1 + (o.id + l) % 3) * coalesce(p.weight, 0)
                  FROM o CROSS JOIN generate_series(1, $5::int) l
                  JOIN products p ON p.sku = 'SKU-' || (1 + (o.id * 7 + l) % 100)
                RETURNING id, sales_order_id, quantity, unit_price, tax),
             taxes AS (
                INSERT INTO sales_order_item_taxes (sales_order_id, item_id, name, tax_group, taxtype, rate, total)
                SELECT i.sales_order_id, i.id, 'Sales tax', 'STATE', 'SALES', round(i.tax * 100 / (i.quantity * i.unit_price), 2), i.tax
                  FROM items i)
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
