//! HTTP Basic auth as A1111's `--api-auth user:pass[,user2:pass2]` (`modules/api/api.py:
//! Api.auth`): every route asks for it when credentials are set, and the 401 bodies are
//! A1111's (no `WWW-Authenticate` header, as its error handler drops it). Passwords and names
//! are compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// One `user:pass` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

/// Why `--api-auth` cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--api-auth: \"{0}\" is not user:password (pairs are separated by commas)")]
pub struct BadCredentials(pub String);

/// Reads `user:pass[,user2:pass2]` (A1111 splits each pair at its first `:`).
pub fn parse_credentials(text: &str) -> Result<Vec<Credential>, BadCredentials> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once(':') {
            Some((user, password)) if !user.is_empty() => Ok(Credential {
                user: user.to_string(),
                password: password.to_string(),
            }),
            _ => Err(BadCredentials(pair.to_string())),
        })
        .collect()
}

fn unauthorized(detail: &str) -> ApiError {
    ApiError::http(StatusCode::UNAUTHORIZED, detail)
}

/// Whether `given` is one of `known`: every pair is compared, each in constant time.
fn matches(known: &[Credential], user: &str, password: &str) -> bool {
    known.iter().fold(false, |found, c| {
        let same = c.user.as_bytes().ct_eq(user.as_bytes())
            & c.password.as_bytes().ct_eq(password.as_bytes());
        found | bool::from(same)
    })
}

/// Checks a request's `Authorization: Basic …` against `known` (FastAPI `HTTPBasic`'s
/// answers: no header or another scheme "Not authenticated", undecodable "Invalid
/// authentication credentials", unknown "Incorrect username or password").
pub fn check(known: &[Credential], authorization: Option<&str>) -> Result<(), ApiError> {
    let Some((scheme, value)) = authorization.and_then(|a| a.trim().split_once(' ')) else {
        return Err(unauthorized("Not authenticated"));
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(unauthorized("Not authenticated"));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
        return Err(unauthorized("Invalid authentication credentials"));
    };
    if matches(known, user, password) {
        Ok(())
    } else {
        Err(unauthorized("Incorrect username or password"))
    }
}

/// The middleware: passes requests with known credentials, answers the others 401.
pub async fn require(
    State(known): State<Arc<Vec<Credential>>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    check(&known, authorization)?;
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_parse_and_check() {
        let known = parse_credentials("ann:se:cret, bob:pw").unwrap();
        assert_eq!(known[0].password, "se:cret");
        assert!(parse_credentials("nobody").is_err());
        assert!(parse_credentials(":pw").is_err());
        let basic = |text: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(text)
            )
        };
        assert!(check(&known, Some(&basic("bob:pw"))).is_ok());
        assert!(check(&known, Some(&basic("ann:se:cret"))).is_ok());
        let detail = |auth: Option<&str>| match check(&known, auth) {
            Err(ApiError::Http { detail, status }) if status == 401 => detail,
            other => panic!("{other:?}"),
        };
        assert_eq!(detail(None), "Not authenticated");
        assert_eq!(detail(Some("Bearer x")), "Not authenticated");
        assert_eq!(
            detail(Some("Basic %%%")),
            "Invalid authentication credentials"
        );
        assert_eq!(
            detail(Some(&basic("bob:nope"))),
            "Incorrect username or password"
        );
    }
}
