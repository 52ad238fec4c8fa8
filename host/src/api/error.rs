//! The API's errors in A1111 v1.10.1's JSON shapes (`modules/api/api.py:
//! api_middleware.handle_exception` and FastAPI's own handlers): routing errors as
//! `{"detail": "Not Found"}`, validation as `{"detail": [{loc, msg, type}]}`, everything else
//! as `{"error", "detail", "body", "errors"}` with its status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

/// One entry of a 422 `detail` list (pydantic v1's error shape).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationItem {
    /// Where: `["body", "steps"]`, `["query", "skip_current_image"]`.
    pub loc: Vec<Value>,
    /// pydantic's message, e.g. "value is not a valid integer".
    pub msg: String,
    /// pydantic's error type, e.g. "type_error.integer".
    #[serde(rename = "type")]
    pub kind: String,
}

impl ValidationItem {
    /// An error of the body field `field`.
    pub fn body(field: &str, msg: impl Into<String>, kind: impl Into<String>) -> Self {
        ValidationItem {
            loc: vec![json!("body"), json!(field)],
            msg: msg.into(),
            kind: kind.into(),
        }
    }
}

/// An error answer of the API.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// 404 `{"detail": "Not Found"}`: no such route (FastAPI's shape).
    #[error("Not Found")]
    NotFound,
    /// 405 `{"detail": "Method Not Allowed"}`.
    #[error("Method Not Allowed")]
    MethodNotAllowed,
    /// 422 `{"detail": [...]}`: the body is not JSON or a field has the wrong type.
    #[error("validation failed: {0:?}")]
    Validation(Vec<ValidationItem>),
    /// An `HTTPException` raised by a handler: `{"error": "HTTPException", "detail", "body":
    /// "", "errors": ""}` with its status (A1111's handler drops its headers).
    #[error("{status}: {detail}")]
    Http {
        /// The status.
        status: StatusCode,
        /// A1111's `detail` text.
        detail: String,
    },
    /// Any other exception: 500 `{"error": type name, "detail": "", "body": "", "errors":
    /// str(e)}`.
    #[error("{error}: {errors}")]
    Exception {
        /// The exception's type name as A1111 would show it ("RuntimeError", "KeyError").
        error: String,
        /// Its message.
        errors: String,
    },
}

impl ApiError {
    /// An `HTTPException` with `status` and `detail`.
    pub fn http(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError::Http {
            status,
            detail: detail.into(),
        }
    }

    /// A1111's answer to an image that cannot be decoded: 500 "Invalid encoded image".
    pub fn invalid_image() -> Self {
        Self::http(StatusCode::INTERNAL_SERVER_ERROR, "Invalid encoded image")
    }

    /// A 500 `RuntimeError` with `message` (a job that failed, a model not found).
    pub fn runtime(message: impl Into<String>) -> Self {
        ApiError::Exception {
            error: "RuntimeError".into(),
            errors: message.into(),
        }
    }

    /// A 422 for one body field.
    pub fn field(field: &str, msg: impl Into<String>, kind: impl Into<String>) -> Self {
        ApiError::Validation(vec![ValidationItem::body(field, msg, kind)])
    }

    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Http { status, .. } => *status,
            ApiError::Exception { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body it answers with.
    pub fn body(&self) -> Value {
        match self {
            ApiError::NotFound => json!({"detail": "Not Found"}),
            ApiError::MethodNotAllowed => json!({"detail": "Method Not Allowed"}),
            ApiError::Validation(items) => json!({ "detail": items }),
            ApiError::Http { detail, .. } => json!({
                "error": "HTTPException",
                "detail": detail,
                "body": "",
                "errors": "",
            }),
            ApiError::Exception { error, errors } => json!({
                "error": error,
                "detail": "",
                "body": "",
                "errors": errors,
            }),
        }
    }
}

/// A1111's exception body with its keys in A1111's order.
#[derive(Serialize)]
struct ExceptionBody<'a> {
    error: &'a str,
    detail: &'a str,
    body: &'a str,
    errors: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Http { detail, .. } => {
                let body = ExceptionBody {
                    error: "HTTPException",
                    detail,
                    body: "",
                    errors: "",
                };
                (status, Json(body)).into_response()
            }
            ApiError::Exception { error, errors } => {
                let body = ExceptionBody {
                    error,
                    detail: "",
                    body: "",
                    errors,
                };
                (status, Json(body)).into_response()
            }
            _ => (status, Json(self.body())).into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_a1111_shapes() {
        assert_eq!(ApiError::NotFound.body(), json!({"detail": "Not Found"}));
        assert_eq!(
            ApiError::invalid_image().body(),
            json!({"error": "HTTPException", "detail": "Invalid encoded image", "body": "", "errors": ""})
        );
        assert_eq!(ApiError::invalid_image().status(), 500);
        let error = ApiError::field(
            "steps",
            "value is not a valid integer",
            "type_error.integer",
        );
        assert_eq!(
            error.body(),
            json!({"detail": [{"loc": ["body", "steps"], "msg": "value is not a valid integer", "type": "type_error.integer"}]})
        );
        assert_eq!(
            ApiError::runtime("model 'x' not found").body(),
            json!({"error": "RuntimeError", "detail": "", "body": "", "errors": "model 'x' not found"})
        );
    }
}
