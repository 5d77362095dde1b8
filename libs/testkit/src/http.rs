//! JSON over HTTP, and Petrel's error shape.

use reqwest::StatusCode;
use serde_json::Value;

/// Sends a request and returns the status and the JSON body, failing if the body is not JSON:
/// every answer of a Petrel API is, errors included.
pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text}"));
    (status, body)
}

/// The status and the JSON body of a response (`null` when empty), failing if the body is
/// something else.
pub(crate) async fn read(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let bytes = resp.bytes().await.expect("a body");
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{status}: body is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (status, value)
}

/// Checks `body` is Petrel's error shape with `code`, and returns its message for the test to
/// check further.
pub fn error_message(body: &Value, code: &str) -> String {
    assert_eq!(body["error"]["code"], code, "unexpected error body {body}");
    body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error without a message: {body}"))
        .to_owned()
}

/// Checks that a response (as [`crate::Service::send`] returns it) is a Petrel JSON error with
/// `status` and `code`, and a message.
#[track_caller]
pub fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "an error needs a message: {}",
        got.1
    );
}
