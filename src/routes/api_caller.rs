//! Who called the server API: the app's backend with `Authorization: Bearer <API_KEY>`, or an
//! operator signed in to the console (its session cookie plus the console's header).
//! Extracting an [`ApiCaller`] is the check.

use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::future::LocalBoxFuture;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use super::AppState;
use crate::console::{CALL_HEADER, COOKIE, ConsoleSession};
use crate::error::ApiError;

/// Who called the server API: the backend with the API key, or an operator from the console
/// (its session cookie plus the console's header). Extracting it is the check.
#[derive(Debug, Clone)]
pub enum ApiCaller {
    Backend,
    Console(ConsoleSession),
}

impl std::fmt::Display for ApiCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiCaller::Backend => f.write_str("the server API"),
            ApiCaller::Console(session) => write!(f, "console {}", session.id),
        }
    }
}

impl ApiCaller {
    /// Writes an operator's action to the log with the console session's id (the backend's
    /// calls are its own to log).
    pub fn note(&self, action: std::fmt::Arguments<'_>) {
        if let ApiCaller::Console(session) = self {
            log::info!("console {}: {action}", session.id);
        }
    }
}

impl FromRequest for ApiCaller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { api_caller(&req).await })
    }
}

async fn api_caller(req: &HttpRequest) -> Result<ApiCaller, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or(ApiError::NotFound)?;
    let presented = req.headers().get(header::AUTHORIZATION);
    if presented.is_none() && state.console.is_some() && req.cookie(COOKIE).is_some() {
        if !req.headers().contains_key(CALL_HEADER) {
            return Err(ApiError::ConsoleSessionRequired);
        }
        return console_session(req, state).await.map(ApiCaller::Console);
    }
    let Some(expected) = state.api_key.as_ref() else {
        return Err(match (state.console.is_some(), presented) {
            (false, _) => ApiError::NotFound,
            (true, None) => ApiError::ConsoleSessionRequired,
            (true, Some(_)) => ApiError::InvalidApiKey,
        });
    };
    let presented = presented
        .ok_or(ApiError::MissingApiKey)?
        // Bytes that are not visible ASCII cannot be the key: a wrong key, not a missing one.
        .to_str()
        .map_err(|_| ApiError::InvalidApiKey)?;
    let presented = Some(presented)
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim())
        .ok_or(ApiError::MissingApiKey)?;
    // Constant time, so response timing reveals nothing about the key.
    if bool::from(
        presented
            .as_bytes()
            .ct_eq(expected.expose_secret().as_bytes()),
    ) {
        Ok(ApiCaller::Backend)
    } else {
        Err(ApiError::InvalidApiKey)
    }
}

/// The session the request's cookie stands for, if it is valid and not signed out.
pub async fn console_session(
    req: &HttpRequest,
    state: &AppState,
) -> Result<ConsoleSession, ApiError> {
    let console = state.console.as_deref().ok_or(ApiError::NotFound)?;
    let session = req
        .cookie(COOKIE)
        .and_then(|cookie| console.session_of(cookie.value()))
        .ok_or(ApiError::ConsoleSessionRequired)?;
    match state.session.revocations.is_revoked(&session.id).await {
        Ok(false) => Ok(session),
        Ok(true) => Err(ApiError::ConsoleSessionRequired),
        Err(_) => Err(ApiError::DatabaseUnavailable),
    }
}
