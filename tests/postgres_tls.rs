//! TLS to PostgreSQL, against the local server (Debian's cluster has `ssl = on` with its
//! self-signed "snakeoil" certificate for `localhost`): libpq's sslmode meanings hold.

mod common;

use std::time::Duration;

use common::*;
use order_cdc::secret::SecretUrl;
use order_cdc::store;

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// Whether the session of a connection made by order-cdc's store is encrypted, or why it
/// could not connect.
async fn encrypted(url: &str) -> Result<bool, String> {
    let client = store::connect(&SecretUrl::new(url), Duration::from_secs(10), "order-cdc/tls-test").await.map_err(|e| e.to_string())?;
    let row = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap();
    Ok(row.get(0))
}

fn with(url: &str, params: &str) -> String {
    format!("{url}{}{params}", if url.contains('?') { '&' } else { '?' })
}

#[tokio::test]
async fn sslmode_means_what_it_means_in_libpq() {
    let url = database_url();
    let ssl: String = connect(&url).await.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(ssl, "on", "the local PostgreSQL must offer TLS for this test (Debian's cluster does)");
    assert!(std::path::Path::new(SNAKEOIL).exists(), "{SNAKEOIL} is missing (Debian's ssl-cert package makes it)");
    let localhost = url.replacen("127.0.0.1", "localhost", 1);

    // prefer, the default: encrypted when offered; disable: plain.
    assert_eq!(encrypted(&url).await, Ok(true));
    assert_eq!(encrypted(&with(&url, "sslmode=require")).await, Ok(true));
    assert_eq!(encrypted(&with(&url, "sslmode=disable")).await, Ok(false));

    // verify-full: the chain and the host name. The certificate names localhost.
    let full = format!("sslmode=verify-full&sslrootcert={SNAKEOIL}");
    assert_eq!(encrypted(&with(&localhost, &full)).await, Ok(true));
    let wrong_host = encrypted(&with(&url, &full)).await.unwrap_err();
    assert!(wrong_host.contains("certificate"), "{wrong_host}");
    println!("verify-full against 127.0.0.1: {wrong_host}");
    // verify-ca: the chain only.
    assert_eq!(encrypted(&with(&url, &format!("sslmode=verify-ca&sslrootcert={SNAKEOIL}"))).await, Ok(true));
    // Without a CA file the public web roots apply, and a self-signed certificate fails.
    let unknown = encrypted(&with(&localhost, "sslmode=verify-full")).await.unwrap_err();
    assert!(unknown.contains("certificate"), "{unknown}");
    assert!(!unknown.contains(":postgres@"), "no password in errors: {unknown}");
}

/// The daemon end to end over a verified TLS connection.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_reads_over_verified_tls() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 2_000, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 ms'").await;
    let url = with(&db.url.replacen("127.0.0.1", "localhost", 1), &format!("sslmode=verify-full&sslrootcert={SNAKEOIL}"));
    let topic = unique("tls");
    let p = Pipeline::new(&url, &topic);
    let setup = Setup::new(&p);
    tokio::task::block_in_place(|| setup.run_once());
    let latest = latest_by_key(&read_topic(&topic));
    let expected = export_documents(&client).await;
    assert_eq!(latest.len(), expected.len());
    for (id, doc) in &expected {
        assert_eq!(latest[id].text(), doc);
    }
    db.drop_db().await;
}
