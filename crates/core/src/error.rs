//! The request-path error: one kind enum, mapped once (one table) to HTTP status codes and gRPC
//! codes. Handlers never pick status codes themselves.

use http::StatusCode;

/// What went wrong, in the terms a client can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request was malformed or does not fit the model.
    BadRequest,
    /// Unknown model, version or route.
    NotFound,
    /// A known route called with the wrong HTTP method.
    MethodNotAllowed,
    /// The body is larger than `server.max_body_size`.
    PayloadTooLarge,
    /// The answer would be larger than `server.max_response_size`.
    ResponseTooLarge,
    /// The client sent its request body too slowly (`server.connections.body_read_timeout`).
    BodyTimeout,
    /// A queue is full: try again shortly (answered with Retry-After).
    Overloaded,
    /// The model or server is not ready (loading, draining).
    Unavailable,
    /// The request did not finish within `server.request_timeout`.
    Timeout,
    /// The model itself failed while running a valid request.
    ModelFailure,
    /// A mutating call without credentials.
    Unauthorized,
    /// A mutating call with wrong credentials.
    Forbidden,
    /// The call conflicts with work in progress (e.g. a load of the same model).
    Conflict,
    /// A bug or an unexpected failure inside sluice.
    Internal,
}

impl ErrorKind {
    /// Stable snake_case name, used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::ResponseTooLarge => "response_too_large",
            ErrorKind::BodyTimeout => "body_timeout",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::ModelFailure => "model_failure",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Internal => "internal",
        }
    }

    /// Whether the failure is the server's (or the model's) rather than the request's: what
    /// error rates compare between versions. A malformed request fails on any version.
    pub fn is_server_side(self) -> bool {
        matches!(
            self,
            ErrorKind::ModelFailure
                | ErrorKind::Internal
                | ErrorKind::Timeout
                | ErrorKind::Overloaded
                | ErrorKind::Unavailable
        )
    }

    /// Whether the client should retry after a pause (sent as `Retry-After`).
    pub fn retry_after_secs(self) -> Option<u32> {
        match self {
            ErrorKind::Overloaded | ErrorKind::Unavailable => Some(1),
            _ => None,
        }
    }
}

impl ErrorKind {
    /// The one table from kinds to wire codes, HTTP status and gRPC code side by side, so the
    /// two protocols cannot drift apart.
    fn codes(self) -> (StatusCode, tonic::Code) {
        use tonic::Code;
        match self {
            ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, Code::InvalidArgument),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, Code::NotFound),
            ErrorKind::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, Code::Unimplemented),
            // gRPC reports an oversized message as RESOURCE_EXHAUSTED too.
            ErrorKind::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, Code::ResourceExhausted),
            // The request asks for more than the server will send: the client must ask for
            // fewer rows or outputs, as it must send a smaller body on a 413.
            ErrorKind::ResponseTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, Code::ResourceExhausted),
            // The client's fault, not the server's (504): 408 asks it to send faster.
            ErrorKind::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, Code::DeadlineExceeded),
            ErrorKind::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, Code::ResourceExhausted),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable),
            ErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, Code::DeadlineExceeded),
            ErrorKind::ModelFailure | ErrorKind::Internal => {
                (StatusCode::INTERNAL_SERVER_ERROR, Code::Internal)
            }
            ErrorKind::Unauthorized => (StatusCode::UNAUTHORIZED, Code::Unauthenticated),
            ErrorKind::Forbidden => (StatusCode::FORBIDDEN, Code::PermissionDenied),
            // A concurrent load of the same model: gRPC's code for "retry at a higher level".
            ErrorKind::Conflict => (StatusCode::CONFLICT, Code::Aborted),
        }
    }
}

impl From<ErrorKind> for StatusCode {
    fn from(kind: ErrorKind) -> StatusCode {
        kind.codes().0
    }
}

impl From<ErrorKind> for tonic::Code {
    fn from(kind: ErrorKind) -> tonic::Code {
        kind.codes().1
    }
}

/// A request-path failure: a kind and a message fit to show the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ServeError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ServeError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ServeError {
        ServeError {
            kind,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ServeError {
        ServeError::new(ErrorKind::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> ServeError {
        ServeError::new(ErrorKind::NotFound, message)
    }

    pub fn unknown_model(model: &str) -> ServeError {
        ServeError::not_found(format!("unknown model '{}'", truncate(model, ECHO_MAX)))
    }
}

/// Characters of a client-given name echoed in an error message.
pub const ECHO_MAX: usize = 200;

/// The longest error message sent: gRPC carries it in a header, and clients refuse status
/// headers past 16 KiB (grpc-go and grpcio's default metadata limit).
pub const MESSAGE_MAX: usize = 4096;

/// At most `max` characters of client-given text for an error message, with an ellipsis when
/// cut, so that an echoed name cannot make an answer (or a gRPC status header) huge.
pub fn truncate(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(text),
        Some((end, _)) => std::borrow::Cow::Owned(format!("{}...", &text[..end])),
    }
}

pub type ServeResult<T> = Result<T, ServeError>;

/// Every HTTP error answer: `{"error": message}` with the kind's status, and `Retry-After` when
/// the client should come back shortly.
#[cfg(feature = "axum")]
impl axum::response::IntoResponse for ServeError {
    fn into_response(self) -> axum::response::Response {
        use http::{HeaderValue, header};
        let body =
            serde_json::to_vec(&serde_json::json!({ "error": self.message })).unwrap_or_default();
        let mut response = axum::response::Response::new(axum::body::Body::from(body));
        *response.status_mut() = StatusCode::from(self.kind);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.kind.retry_after_secs() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.kind == ErrorKind::BodyTimeout {
            // The rest of the body may never come: the connection cannot carry another request.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // The kind travels with the answer, for layers below the handler (the connection loop
        // counts why it closes a connection).
        response.extensions_mut().insert(self.kind);
        response
    }
}

impl From<ServeError> for tonic::Status {
    fn from(error: ServeError) -> tonic::Status {
        let message = match truncate(&error.message, MESSAGE_MAX) {
            std::borrow::Cow::Borrowed(_) => error.message,
            std::borrow::Cow::Owned(cut) => cut,
        };
        tonic::Status::new(error.kind.into(), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_asks_for_retry() {
        assert_eq!(
            StatusCode::from(ErrorKind::Overloaded),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(ErrorKind::Overloaded.retry_after_secs(), Some(1));
        assert_eq!(ErrorKind::BadRequest.retry_after_secs(), None);
    }

    #[test]
    fn grpc_codes() {
        use tonic::Code;
        let expected = [
            (ErrorKind::BadRequest, Code::InvalidArgument),
            (ErrorKind::NotFound, Code::NotFound),
            (ErrorKind::MethodNotAllowed, Code::Unimplemented),
            (ErrorKind::PayloadTooLarge, Code::ResourceExhausted),
            (ErrorKind::ResponseTooLarge, Code::ResourceExhausted),
            (ErrorKind::BodyTimeout, Code::DeadlineExceeded),
            (ErrorKind::Overloaded, Code::ResourceExhausted),
            (ErrorKind::Unavailable, Code::Unavailable),
            (ErrorKind::Timeout, Code::DeadlineExceeded),
            (ErrorKind::ModelFailure, Code::Internal),
            (ErrorKind::Internal, Code::Internal),
            (ErrorKind::Unauthorized, Code::Unauthenticated),
            (ErrorKind::Forbidden, Code::PermissionDenied),
            (ErrorKind::Conflict, Code::Aborted),
        ];
        for (kind, code) in expected {
            assert_eq!(Code::from(kind), code, "{kind:?}");
        }
    }

    #[test]
    fn echoed_text_is_truncated() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate(&"x".repeat(300), 200).len(), 203);
        assert_eq!(truncate("ééé", 2), "éé...");
        let long = "m".repeat(100_000);
        assert!(ServeError::unknown_model(&long).message.len() < 300);
        let status = tonic::Status::from(ServeError::bad_request(long));
        assert!(status.message().len() <= MESSAGE_MAX + 3);
    }

    #[test]
    fn status_carries_our_message() {
        let status = tonic::Status::from(ServeError::bad_request(
            "input 'input': expected shape [-1,12], got [1,11]",
        ));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "input 'input': expected shape [-1,12], got [1,11]"
        );
    }
}
