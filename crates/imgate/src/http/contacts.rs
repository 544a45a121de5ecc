//! `DELETE P/contacts/{contact_id}`: forget a person (docs/operations.md, "Erasure"). An
//! operator's endpoint: open in open mode, an API key in token mode (a user's token may
//! not erase anyone).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use imgate_protocol::ok_frame;

use super::AppState;
use super::error::ApiError;
use crate::erase::EraseError;

impl From<EraseError> for ApiError {
    fn from(e: EraseError) -> ApiError {
        match e {
            EraseError::Store(s) => s.into(),
            EraseError::State(s) => s.into(),
        }
    }
}

pub async fn erase(
    State(state): State<AppState>,
    headers: HeaderMap,
    contact: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    state.auth.operator(&headers)?;
    // A path that does not decode (bad UTF-8) gets the error frame, as every bad input.
    let Path(contact) = contact.map_err(|e| ApiError::BadRequest(format!("the contact id: {e}")))?;
    if contact.trim().is_empty() {
        return Err(ApiError::BadRequest("the contact id is empty".into()));
    }
    imgate_protocol::check_id("the contact id", &contact).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let report =
        crate::erase::erase(&state.store, state.inbox.as_deref(), state.wechat.as_deref(), &contact).await?;
    // The id and the counts, never what the messages said.
    tracing::info!(
        contact = %contact,
        messages = report.messages,
        mailboxes = report.mailboxes,
        media = report.media,
        conversations = report.conversations,
        follower = report.follower,
        "contact erased"
    );
    let body = serde_json::to_value(&report).unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "application/json")], ok_frame(&body)).into_response())
}
