//! What an event needs from an API's order document: its id and its change time, read
//! from two named top-level fields in one pass that builds no values for anything else.
//! The document itself goes on as the exact bytes the API sent.

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

/// Which top-level fields hold the id and the change time.
#[derive(Clone, Copy)]
pub struct HeadFields<'f> {
    pub id: &'f str,
    pub updated_at: &'f str,
}

/// A map key, borrowed from the page unless it has escapes.
#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> DeserializeSeed<'de> for HeadFields<'_> {
    type Value = Head;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Head, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HeadFields<'_> {
    type Value = Head;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Head, A::Error> {
        let mut head = Head::default();
        while let Some(Key(key)) = map.next_key()? {
            if key == self.id {
                head.id = Some(map.next_value()?);
            } else if key == self.updated_at {
                head.updated_at = Some(map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(head)
    }
}

impl HeadFields<'_> {
    /// The document's key (a number or a non-empty string, as text) and its change-time
    /// value, or why it cannot become an event: `(key so far, reason)`.
    pub fn read(self, raw: &RawValue) -> Result<(String, serde_json::Value), (String, String)> {
        let head = self
            .deserialize(&mut serde_json::Deserializer::from_str(raw.get()))
            .map_err(|_| (String::new(), "the record is not a JSON object".to_string()))?;
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
