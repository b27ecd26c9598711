//! `GET /sales-orders/export` (seeds 000 and 001): active orders in `(updated_at, id)`
//! order, in a window `[since, cutoff)` whose cutoff is fixed by the run's first request
//! with the late-commit guard, continued with signed cursors.
//!
//! The body is assembled from the documents' JSON text: they are never parsed here.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::cursor::CursorPayload;
use super::error::ApiError;
use super::AppState;
use crate::store::cutoff;
use crate::timestamp;

pub const MAX_LIMIT: i64 = 1000;

/// The request, after validation.
struct Page {
    since: DateTime<Utc>,
    cutoff: DateTime<Utc>,
    after: Option<(DateTime<Utc>, i64)>,
    limit: i64,
}

fn parse_limit(raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    match super::orders::decimal(raw) {
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(Some(n)),
        _ => Err(ApiError::bad_request("invalid_parameter", format!("limit must be an integer from 1 to {MAX_LIMIT}, not {raw:?}"))),
    }
}

async fn page(state: &AppState, query: Option<String>) -> Result<Page, ApiError> {
    let (mut since, mut cursor, mut limit) = (None, None, None);
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "since" => since = Some(v.into_owned()),
            "cursor" => cursor = Some(v.into_owned()),
            "limit" => limit = Some(v.into_owned()),
            _ => {} // unknown parameters are ignored
        }
    }
    let limit = parse_limit(limit.as_deref())?;
    match (since, cursor) {
        (Some(_), Some(_)) => Err(ApiError::bad_request("invalid_parameter", "since and cursor cannot be combined: since starts a run, cursor continues one")),
        (None, None) => Err(ApiError::bad_request("invalid_parameter", "since (to start a run) or cursor (to continue one) is required")),
        (Some(since), None) => {
            let since = timestamp::parse(&since).map_err(|e| ApiError::bad_request("invalid_parameter", format!("since: {e}")))?;
            // The cutoff is the later of since and the server's: a since in the years
            // 0001-9999 keeps it RFC 3339, and PostgreSQL holds every such bound.
            if !timestamp::representable(since) {
                let message = format!("since: {} is outside the years 0001 to 9999 (UTC)", timestamp::format(since));
                return Err(ApiError::bad_request("invalid_parameter", message));
            }
            let client = state.pool.get().await.map_err(ApiError::database)?;
            let cut = cutoff::cutoff(&client, state.cutoff_mode).await.map_err(ApiError::database)?;
            Ok(Page { since, cutoff: cut.at.max(since), after: None, limit: limit.unwrap_or(MAX_LIMIT) })
        }
        (None, Some(cursor)) => {
            let p = state.cursors.decode(&cursor, Utc::now()).map_err(|e| ApiError::bad_request(e.kind(), e.to_string()))?;
            Ok(Page { since: p.since, cutoff: p.cutoff, after: Some(p.after), limit: limit.unwrap_or(p.limit) })
        }
    }
}

pub async fn export(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let page = page(&state, query).await?;
    let client = state.pool.get().await.map_err(ApiError::database)?;
    // One row more than the page tells whether there is a next page.
    let fetch = page.limit + 1;
    let rows = match page.after {
        None => {
            let statement = client.prepare_cached(&state.sql.first).await.map_err(ApiError::database)?;
            client.query(&statement, &[&page.since, &page.cutoff, &fetch]).await
        }
        Some((at, id)) => {
            let statement = client.prepare_cached(&state.sql.next).await.map_err(ApiError::database)?;
            client.query(&statement, &[&page.since, &page.cutoff, &fetch, &at, &id]).await
        }
    }
    .map_err(ApiError::database)?;
    let has_more = rows.len() as i64 > page.limit;
    let rows = &rows[..rows.len().min(page.limit as usize)];
    let next_cursor = match rows.last() {
        Some(last) if has_more => Some(state.cursors.encode(&CursorPayload {
            v: 1,
            kid: state.cursors.signing_key().to_string(),
            tenant: state.cursors.tenant().to_string(),
            since: page.since,
            cutoff: page.cutoff,
            after: (last.get(1), last.get(0)),
            limit: page.limit,
            exp: Utc::now() + state.cursor_ttl,
        })),
        _ => None,
    };

    let mut body = super::documents_body("{\"data\":[", rows, 2, 512);
    body.push_str("],\"next_cursor\":");
    match &next_cursor {
        Some(c) => {
            body.push('"');
            body.push_str(c); // base64url and '.': nothing to escape
            body.push('"');
        }
        None => body.push_str("null"),
    }
    body.push_str(&format!(
        ",\"has_more\":{has_more},\"meta\":{{\"rows\":{},\"cutoff\":\"{}\"}}}}",
        rows.len(),
        timestamp::format(page.cutoff)
    ));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
