//! The one error shape of the server: `{"error": {"type": …, "message": …}}`, plus
//! `fields` for validation errors. Every failure answers with it, never with a 5xx for
//! bad input and never with a stack trace.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path in the request, e.g. `items[0].quantity`.
    pub field: String,
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub fields: Vec<FieldError>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), fields: Vec::new() }
    }

    pub fn bad_request(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, kind, message)
    }

    pub fn validation(fields: Vec<FieldError>) -> Self {
        let message = format!("{} field(s) are invalid", fields.len());
        Self { status: StatusCode::UNPROCESSABLE_ENTITY, kind: "validation_error", message, fields }
    }

    /// A database failure: logged in full, answered without internals.
    pub fn database(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "database request failed");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the order database is unavailable; retry later")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            message: &'a str,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            fields: &'a [FieldError],
        }
        let body = serde_json::to_string(&Body { error: Inner { kind: self.kind, message: &self.message, fields: &self.fields } })
            .expect("an error serialises");
        let mut response = (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}
