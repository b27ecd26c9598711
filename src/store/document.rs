//! The export document of seed 001, built by PostgreSQL from the reference schema. It
//! leaves the database as JSON text and reaches Kafka as those bytes: never parsed into
//! structs and encoded again.

/// A timestamp the way every document writes it: UTC, microseconds, `Z`.
pub fn ts(expr: &str) -> String {
    format!(r#"to_char(({expr}) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#)
}

/// The SQL expression (over alias `t`, a row of `sales_orders`) that yields the export
/// document as `json`. Money is stored as `numeric` and written as the shortest float
/// (`128.23`, `12.5`), as the seed's example shows. `schema` is the quoted schema of the order table, where the child
/// tables live too.
pub fn export_document(schema: &str) -> String {
    format!(
        r#"json_build_object(
    'order_id', t.id,
    'order_number', t.order_number,
    'status', t.status,
    'order_status', t.order_status,
    'total_amount', t.total_amount::float8,
    'total_tax', t.total_tax::float8,
    'total_shipping', t.total_shipping::float8,
    'total_paid', t.total_paid::float8,
    'customer_id', t.customer_id,
    'customer_username', t.customer_username,
    'customer_email', t.customer_email,
    'order_date', t.order_date,
    'created_at', {created},
    'updated_at', {updated},
    'items', coalesce((
        SELECT json_agg(json_build_object(
            'order_item_id', i.id,
            'sku', i.sku,
            'name', i.name,
            'quantity', i.quantity,
            'price', i.unit_price::float8,
            'tax', i.tax::float8,
            'quantity_ordered', i.quantity,
            'quantity_shipped', i.quantity_shipped,
            'quantity_cancelled', i.quantity_cancelled,
            'created_at', {i_created},
            'updated_at', {i_updated}) ORDER BY i.line_number, i.id)
        FROM {schema}.sales_order_items i WHERE i.sales_order_id = t.id), '[]'::json),
    'shipments', coalesce((
        SELECT json_agg(json_build_object(
            'shipment_id', s.id,
            'carrier', s.carrier,
            'service', s.service,
            'tracking_number', s.tracking_number,
            'status', s.status,
            'shipped_at', {s_shipped},
            'created_at', {s_created},
            'updated_at', {s_updated}) ORDER BY s.id)
        FROM {schema}.shipments s WHERE s.sales_order_id = t.id), '[]'::json),
    'fulfillment_orders', coalesce((
        SELECT json_agg(json_build_object(
            'fulfillment_order_id', f.id,
            'order_number', f.order_number,
            'status', f.status,
            'warehouse_group_id', f.warehouse_group_id,
            'created_at', {f_created},
            'updated_at', {f_updated}) ORDER BY f.id)
        FROM {schema}.fulfillment_orders f WHERE f.sales_order_id = t.id), '[]'::json))"#,
        created = ts("t.created_at"),
        updated = ts("t.updated_at"),
        i_created = ts("i.created_at"),
        i_updated = ts("i.updated_at"),
        s_shipped = ts("s.shipped_at"),
        s_created = ts("s.created_at"),
        s_updated = ts("s.updated_at"),
        f_created = ts("f.created_at"),
        f_updated = ts("f.updated_at"),
    )
}

/// Orders that are no longer active leave the export; the source turns them into
/// `sales_order.deleted` events.
pub const EXPORT_DELETED: &str = "t.status IS DISTINCT FROM 'Active'";
