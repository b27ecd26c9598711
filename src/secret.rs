//! Values that must never reach a log line, an error message or a metric label.

use std::fmt;

use schemars::JsonSchema;
use serde::Deserialize;

/// A secret string (token, password). `Debug` and `Display` print `[redacted]`; the value
/// is only reachable through [`Secret::expose`], so every use of it is greppable.
#[derive(Clone, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A connection URL that may carry a password (`postgres://user:pw@host/db`). It prints
/// with the password replaced, so it is safe in logs, errors and fingerprints.
#[derive(Clone, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without its password: `postgres://user:***@host/db`. Key/value connection
    /// strings (`host=… password=…`) get the same treatment.
    pub fn redacted(&self) -> String {
        if let Ok(mut url) = url::Url::parse(&self.0) {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            let query: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k.eq_ignore_ascii_case("password") { "***".into() } else { v.into_owned() };
                    (k.into_owned(), v)
                })
                .collect();
            if !query.is_empty() {
                url.query_pairs_mut().clear().extend_pairs(query);
            }
            return url.to_string();
        }
        self.0
            .split_whitespace()
            .map(|part| match part.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => part.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
    }

    #[test]
    fn url_passwords_are_replaced() {
        let u = SecretUrl::new("postgres://app:hunter2@db:5432/orders?sslmode=require");
        assert_eq!(u.redacted(), "postgres://app:***@db:5432/orders?sslmode=require");
        assert!(!format!("{u:?}").contains("hunter2"));
        let q = SecretUrl::new("postgres://app@db/orders?password=hunter2");
        assert!(!q.redacted().contains("hunter2"));
        let kv = SecretUrl::new("host=db user=app password=hunter2 dbname=orders");
        assert_eq!(kv.redacted(), "host=db user=app password=*** dbname=orders");
    }
}
