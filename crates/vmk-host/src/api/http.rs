//! What every route shares: the state, error answers, JSON bodies and answers, names from
//! the path, and host calls on the blocking pool.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use vmk_api::model::{validate_name, HostError};

use crate::host_api::HostApi;

/// Largest request body accepted (413 above).
pub const BODY_LIMIT: usize = 1 << 20;

#[derive(Clone)]
pub(super) struct AppState {
    pub(super) host: Arc<dyn HostApi>,
    /// Becomes true when the server shuts down (ends attached consoles).
    pub(super) shutdown: watch::Receiver<bool>,
    /// See [`BODY_READ_TIMEOUT`](super::BODY_READ_TIMEOUT).
    pub(super) body_timeout: Duration,
}

/// An error answer: `{"error": message}` with a status.
#[derive(Debug)]
pub(super) struct ApiErr {
    status: StatusCode,
    message: String,
}

impl ApiErr {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> ApiErr {
        ApiErr {
            status,
            message: message.into(),
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> ApiErr {
        ApiErr::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<HostError> for ApiErr {
    fn from(e: HostError) -> ApiErr {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiErr::new(status, e.to_string())
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        json(
            self.status,
            &ErrorBody {
                error: &self.message,
            },
        )
    }
}

pub(super) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            Body::from(body),
        )
            .into_response(),
        // Only maps with non-string keys fail, and the model has none.
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot serialize the answer: {e}"),
        )
            .into_response(),
    }
}

/// Runs a host call on the blocking pool (host calls may do file I/O). A panicking host call
/// becomes a 500 and the server goes on.
pub(super) async fn call<T, F>(state: &AppState, f: F) -> Result<T, ApiErr>
where
    T: Send + 'static,
    F: FnOnce(&dyn HostApi) -> Result<T, HostError> + Send + 'static,
{
    let host = state.host.clone();
    tokio::task::spawn_blocking(move || f(&*host))
        .await
        .map_err(|e| {
            ApiErr::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the host failed while answering this request ({e}); see its log"),
            )
        })?
        .map_err(ApiErr::from)
}

/// A VM name from the path, checked with [`validate_name`] (after percent-decoding, so
/// `%2F` is a `/` and refused).
pub(super) struct VmName(pub(super) String);

impl<S: Send + Sync> FromRequestParts<S> for VmName {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(name) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| {
                    ApiErr::bad_request(format!("bad VM name in the path: {}", e.body_text()))
                })?;
        validate_name("VM", &name)?;
        Ok(VmName(name))
    }
}

/// Whether the request says its body is JSON (`application/json` or `application/*+json`,
/// parameters such as `charset` allowed).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads the body within [`BODY_LIMIT`] and the state's body timeout
/// ([`BODY_READ_TIMEOUT`](super::BODY_READ_TIMEOUT)).
async fn body_bytes(req: Request, state: &AppState) -> Result<Bytes, ApiErr> {
    let timeout = state.body_timeout;
    let read = tokio::time::timeout(timeout, Bytes::from_request(req, state))
        .await
        .map_err(|_| {
            ApiErr::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s (is Content-Length right?)",
                    timeout.as_secs_f64()
                ),
            )
        })?;
    read.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiErr::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than the limit of {BODY_LIMIT} bytes"),
            )
        } else {
            ApiErr::new(
                e.status(),
                format!("cannot read the request body: {}", e.body_text()),
            )
        }
    })
}

/// Parses a JSON body into `T` with serde's precise message and the path of the offending
/// field. Anything after the value (a second value, garbage) is refused too. The body, and
/// every value that becomes a struct, must be a JSON object: serde's derived structs also
/// accept an array and fill the fields by position, which would get round the refusal of
/// unknown fields (`[9000]` as a vSwitch update).
fn parse_json<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<T, ApiErr> {
    let raw: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiErr::bad_request(format!("invalid JSON body: {e}")))?;
    if !raw.is_object() {
        return Err(ApiErr::bad_request(format!(
            "the request body must be a JSON object ({{\"field\": value, ...}}), not {}",
            json_kind(&raw)
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ApiErr::bad_request(if path == "." {
            format!("invalid JSON body: {inner}")
        } else {
            format!("invalid JSON body: {path}: {inner}")
        })
    })?;
    de.end()
        .map_err(|e| ApiErr::bad_request(format!("invalid JSON body: {e}")))?;
    // What became a struct is an object when written back: where the request had an array
    // there, it filled the struct by position.
    let written = serde_json::to_value(&value).map_err(|e| {
        ApiErr::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot check the request body: {e}"),
        )
    })?;
    if let Some(path) = array_for_object(&raw, &written, String::new()) {
        return Err(ApiErr::bad_request(format!(
            "invalid JSON body: {path}: must be a JSON object, not an array"
        )));
    }
    Ok(value)
}

/// The path of the first place where `sent` has an array and `parsed` an object.
fn array_for_object(
    sent: &serde_json::Value,
    parsed: &serde_json::Value,
    at: String,
) -> Option<String> {
    use serde_json::Value;
    match (sent, parsed) {
        (Value::Array(_), Value::Object(_)) => Some(at),
        (Value::Object(s), Value::Object(p)) => s.iter().find_map(|(k, v)| {
            let at = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            p.get(k).and_then(|pv| array_for_object(v, pv, at))
        }),
        (Value::Array(s), Value::Array(p)) => s
            .iter()
            .zip(p)
            .enumerate()
            .find_map(|(i, (sv, pv))| array_for_object(sv, pv, format!("{at}[{i}]"))),
        _ => None,
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn unsupported_media_type() -> ApiErr {
    ApiErr::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "the request body must be JSON with `Content-Type: application/json`",
    )
}

/// A required JSON body.
pub(super) struct JsonBody<T>(pub(super) T);

impl<T: DeserializeOwned + Serialize> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiErr;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(unsupported_media_type());
        }
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// An optional JSON body: an empty body is `None`.
pub(super) struct OptionalJsonBody<T>(pub(super) Option<T>);

impl<T: DeserializeOwned + Serialize> FromRequest<AppState> for OptionalJsonBody<T> {
    type Rejection = ApiErr;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let json = is_json(req.headers());
        let bytes = body_bytes(req, state).await?;
        if bytes.is_empty() {
            return Ok(OptionalJsonBody(None));
        }
        if !json {
            return Err(unsupported_media_type());
        }
        parse_json(&bytes).map(|v| OptionalJsonBody(Some(v)))
    }
}

/// Query parameters, refused with a JSON 400 when malformed or unknown.
pub(super) fn query<T: DeserializeOwned>(parts_uri: &axum::http::Uri) -> Result<T, ApiErr> {
    Query::<T>::try_from_uri(parts_uri)
        .map(|Query(q)| q)
        .map_err(|e| ApiErr::bad_request(format!("bad query string: {}", e.body_text())))
}
