//! Records become events: CloudEvents 1.0 in the Kafka protocol binding.
//!
//! Binary mode (default): the value is the order document exactly as the source gave it
//! and the attributes travel as `ce_*` headers. Structured mode: the value is the JSON
//! event with the document pasted in as `data`, still byte for byte. A deleted order is a
//! `sales_order.deleted` event; in binary mode its value is null, a tombstone.

use std::borrow::Cow;
use std::fmt::Write;

use rdkafka::message::{Header, OwnedHeaders};
use xxhash_rust::xxh3::xxh3_64;

use crate::config::Envelope;
use crate::source::{Record, RecordBody};
use crate::timestamp;

pub const TYPE_CHANGED: &str = "sales_order.changed";
pub const TYPE_DELETED: &str = "sales_order.deleted";
/// The dead-letter header that says why a record could not become an event.
pub const ERROR_HEADER: &str = "order_cdc_error";

/// How a pipeline's records are encoded.
#[derive(Debug, Clone)]
pub struct EventFormat {
    pub envelope: Envelope,
    /// The CloudEvents `source` attribute.
    pub source: String,
    pub pipeline: String,
}

/// A record ready to produce.
pub struct Event<'a> {
    pub key: &'a str,
    /// Borrowed in binary mode: the document bytes go to librdkafka without a copy.
    pub value: Option<Cow<'a, [u8]>>,
    pub headers: OwnedHeaders,
}

impl Event<'_> {
    pub fn payload(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }
}

impl EventFormat {
    /// `ce_id`: `<key>@<updated_at in µs>:<version>`, where the version is the xxh3-64 of
    /// the document bytes in 16 hex digits, or `deleted` for a deletion.
    ///
    /// Deterministic, so a re-delivered change has the id of the first delivery and
    /// consumers may drop equal `ce_source` + `ce_id` as duplicates. `updated_at` alone
    /// does not name a version: a source that shows whole seconds gives two changes within
    /// one second the same one, and a consumer would drop the second as a duplicate. The
    /// hash is of what the consumer receives, so equal ids mean equal documents. xxh3 is
    /// specified and fixed (ids stay stable across releases) and costs next to nothing
    /// per event; the id is built in one allocation.
    pub fn event_id(record: &Record) -> String {
        let mut id = String::with_capacity(record.key.len() + 40);
        // Writing to a String cannot fail.
        let _ = write!(id, "{}@{}:", record.key, record.updated_at.timestamp_micros());
        match &record.body {
            RecordBody::Document(doc) => {
                let _ = write!(id, "{:016x}", xxh3_64(doc.as_bytes()));
            }
            RecordBody::Deleted => id.push_str("deleted"),
            RecordBody::Bad { .. } => unreachable!("bad records go to the dead-letter topic"),
        }
        id
    }

    /// Encodes a good record (a document or a deletion) as an event.
    pub fn encode<'a>(&self, record: &'a Record) -> Event<'a> {
        let (kind, document) = match &record.body {
            RecordBody::Document(doc) => (TYPE_CHANGED, Some(doc.as_str())),
            RecordBody::Deleted => (TYPE_DELETED, None),
            RecordBody::Bad { .. } => unreachable!("bad records go to the dead-letter topic"),
        };
        let id = Self::event_id(record);
        let time = timestamp::format(record.updated_at);
        match self.envelope {
            Envelope::Binary => {
                let mut headers = OwnedHeaders::new_with_capacity(7)
                    .insert(header("ce_specversion", "1.0"))
                    .insert(header("ce_id", &id))
                    .insert(header("ce_source", &self.source))
                    .insert(header("ce_type", kind))
                    .insert(header("ce_time", &time))
                    .insert(header("ce_subject", &record.key));
                if document.is_some() {
                    headers = headers.insert(header("content-type", "application/json"));
                }
                Event { key: &record.key, value: document.map(|d| Cow::Borrowed(d.as_bytes())), headers }
            }
            Envelope::Structured => {
                let mut value = String::with_capacity(document.map_or(0, str::len) + 256);
                value.push_str(r#"{"specversion":"1.0","id":"#);
                push_json_str(&mut value, &id);
                value.push_str(r#","source":"#);
                push_json_str(&mut value, &self.source);
                value.push_str(r#","type":"#);
                push_json_str(&mut value, kind);
                value.push_str(r#","time":"#);
                push_json_str(&mut value, &time);
                value.push_str(r#","subject":"#);
                push_json_str(&mut value, &record.key);
                value.push_str(r#","datacontenttype":"application/json","data":"#);
                value.push_str(document.unwrap_or("null"));
                value.push('}');
                let headers = OwnedHeaders::new_with_capacity(1).insert(header("content-type", "application/cloudevents+json; charset=UTF-8"));
                Event { key: &record.key, value: Some(Cow::Owned(value.into_bytes())), headers }
            }
        }
    }

    /// A record that cannot become an event, for the dead-letter topic: its raw bytes and
    /// the reason.
    pub fn dead_letter<'a>(&self, record: &'a Record, reason: &str, raw: &'a [u8]) -> Event<'a> {
        let headers = OwnedHeaders::new_with_capacity(4)
            .insert(header(ERROR_HEADER, reason))
            .insert(header("order_cdc_pipeline", &self.pipeline))
            .insert(header("ce_source", &self.source))
            .insert(header("ce_subject", &record.key));
        Event { key: &record.key, value: Some(Cow::Borrowed(raw)), headers }
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header { key, value: Some(value) }
}

fn push_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a string serialises"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rdkafka::message::Headers;

    fn record(body: RecordBody) -> Record {
        Record { key: "1001".into(), updated_at: chrono::Utc.timestamp_micros(1_705_314_600_123_456).unwrap(), body }
    }

    fn format(envelope: Envelope) -> EventFormat {
        EventFormat { envelope, source: "postgresql://db:5432/shop/sales_orders".into(), pipeline: "orders".into() }
    }

    fn headers(e: &Event) -> Vec<(String, String)> {
        e.headers
            .iter()
            .map(|h| (h.key.to_string(), String::from_utf8(h.value.unwrap().to_vec()).unwrap()))
            .collect()
    }

    #[test]
    fn binary_mode_passes_the_document_through_and_heads_it() {
        let doc = r#"{"order_id": 1001,  "total": 1.50}"#;
        let r = record(RecordBody::Document(doc.into()));
        let e = format(Envelope::Binary).encode(&r);
        assert_eq!(e.payload().unwrap(), doc.as_bytes());
        assert_eq!(e.key, "1001");
        let h = headers(&e);
        assert!(h.contains(&("ce_id".into(), format!("1001@1705314600123456:{:016x}", xxh3_64(doc.as_bytes())))));
        assert!(h.contains(&("ce_type".into(), TYPE_CHANGED.into())));
        assert!(h.contains(&("ce_time".into(), "2024-01-15T10:30:00.123456Z".into())));
        assert!(h.contains(&("content-type".into(), "application/json".into())));
    }

    #[test]
    fn a_deletion_is_a_tombstone() {
        let r = record(RecordBody::Deleted);
        let e = format(Envelope::Binary).encode(&r);
        assert!(e.payload().is_none());
        assert!(headers(&e).contains(&("ce_type".into(), TYPE_DELETED.into())));
        assert!(headers(&e).contains(&("ce_id".into(), "1001@1705314600123456:deleted".into())));
    }

    #[test]
    fn an_id_names_one_version_of_one_order() {
        let id = |body: RecordBody| EventFormat::event_id(&record(body));
        let doc = |status: &str| RecordBody::Document(format!(r#"{{"order_id":1001,"status":"{status}"}}"#));
        // Fixed for good: consumers keep ids across releases to drop redeliveries.
        assert_eq!(id(doc("pending")), "1001@1705314600123456:7cd8803cce2b01c4");
        assert_eq!(id(doc("pending")), id(doc("pending")), "a redelivery keeps its id");
        assert_ne!(id(doc("pending")), id(doc("shipped")), "two versions with one updated_at differ");
        assert_ne!(id(RecordBody::Deleted), id(doc("pending")), "a deletion differs from the versions before it");
    }

    #[test]
    fn structured_mode_embeds_the_document_verbatim() {
        let doc = r#"{"order_id":1001,"note":"say \"hi\""}"#;
        let r = record(RecordBody::Document(doc.into()));
        let e = format(Envelope::Structured).encode(&r);
        let text = std::str::from_utf8(e.payload().unwrap()).unwrap();
        assert!(text.ends_with(&format!(r#""data":{doc}}}"#)), "{text}");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["id"], EventFormat::event_id(&r), "the id of binary mode's ce_id");
        assert_eq!(v["subject"], "1001");
        assert_eq!(v["data"]["note"], "say \"hi\"");
    }
}
