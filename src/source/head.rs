//! What an event needs from an API's order document: its id and its change time, read
//! from two named top-level fields in one pass that builds no values for anything else
//! and stops once it has both. The document itself goes on as the exact bytes the API sent.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// The two fields of a document, as found.
#[derive(Default)]
pub struct Head {
    id: Option<serde_json::Value>,
    updated_at: Option<serde_json::Value>,
}

impl Head {
    fn complete(&self) -> bool {
        self.id.is_some() && self.updated_at.is_some()
    }
}

/// Reads the two fields into `head`, which outlives the read: the read stops at the
/// second field, and serde_json then reports the rest of the object as unread.
struct Finder<'h, 'f> {
    fields: HeadFields<'f>,
    head: &'h mut Head,
}

/// Which top-level fields hold the id and the change time.
#[derive(Clone, Copy)]
pub struct HeadFields<'f> {
    pub id: &'f str,
    pub updated_at: &'f str,
}

/// A map key, borrowed from the page unless it has escapes.
#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> DeserializeSeed<'de> for Finder<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Finder<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    /// A document whose id and change time come first (as seed 001 writes them, before
    /// its items) is read no further: the rest is most of its bytes. The first of
    /// duplicate keys counts, where a whole read would keep the last; RFC 8259 leaves
    /// duplicates to the reader.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(key)) = map.next_key()? {
            if key == self.fields.id && self.head.id.is_none() {
                self.head.id = Some(map.next_value()?);
            } else if key == self.fields.updated_at && self.head.updated_at.is_none() {
                self.head.updated_at = Some(map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
            if self.head.complete() {
                break;
            }
        }
        Ok(())
    }
}

impl HeadFields<'_> {
    /// The document's key (a number or a non-empty string, as text) and its change-time
    /// value, or why it cannot become an event: `(key so far, reason)`.
    ///
    /// `raw` was read whole as part of its page, so its structure is sound: a read that
    /// stopped early reports the unread rest as an error, and only a read without both
    /// fields failed. (serde_json checks `\u` escapes in the keys read here but not in
    /// what a page skips over; a lone surrogate in a later key, like one in any value,
    /// passes through as the API sent it.)
    pub fn read(self, raw: &RawValue) -> Result<(String, serde_json::Value), (String, String)> {
        let mut head = Head::default();
        let read = Finder { fields: self, head: &mut head }.deserialize(&mut serde_json::Deserializer::from_str(raw.get()));
        if read.is_err() && !head.complete() {
            return Err((String::new(), "the record is not a JSON object".to_string()));
        }
        let key = match head.id {
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(serde_json::Value::String(s)) if !s.is_empty() => s,
            _ => return Err((String::new(), format!("the record has no {}", self.id))),
        };
        match head.updated_at {
            Some(at) => Ok((key, at)),
            None => Err((key, format!("the record has no valid {}", self.updated_at))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: HeadFields = HeadFields { id: "id", updated_at: "at" };

    fn read(doc: &str) -> Result<(String, serde_json::Value), (String, String)> {
        FIELDS.read(&RawValue::from_string(doc.to_string()).unwrap())
    }

    #[test]
    fn the_read_stops_at_the_second_field_and_finds_them_in_any_order() {
        let at = serde_json::json!("2024-01-15T10:30:00Z");
        assert_eq!(read(r#"{"id": 1, "at": "2024-01-15T10:30:00Z", "items": [{"id": 2, "at": 3}]}"#), Ok(("1".into(), at.clone())));
        assert_eq!(read(r#"{"items": [{"id": 2}], "at": "2024-01-15T10:30:00Z", "x": {"id": 9}, "id": "A-1"}"#), Ok(("A-1".into(), at.clone())));
        assert_eq!(read(r#"{"id": 1, "at": "2024-01-15T10:30:00Z", "id": 5}"#), Ok(("1".into(), at)), "the first of duplicate keys");
        assert_eq!(read(r#"{"id": 1, "items": [{"at": 3}]}"#), Err(("1".into(), "the record has no valid at".into())), "a nested field is not the document's");
        assert_eq!(read(r#"{"at": 3}"#), Err((String::new(), "the record has no id".into())));
        assert_eq!(read(r#"[{"id": 1, "at": 3}]"#), Err((String::new(), "the record is not a JSON object".into())));
        assert_eq!(read(r#""id""#), Err((String::new(), "the record is not a JSON object".into())));
    }
}
