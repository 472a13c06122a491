//! MLflow registry webhooks (MLflow 3.3+): checking a delivery's signature and reading which
//! model it is about. MLflow signs `{delivery_id}.{timestamp}.{body}` with HMAC-SHA256 under
//! the webhook's secret and sends `X-MLflow-Signature: v1,<base64>`, `X-MLflow-Delivery-Id`
//! and `X-MLflow-Timestamp` (Unix seconds) (`mlflow/webhooks/delivery.py`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const SIGNATURE_HEADER: &str = "x-mlflow-signature";
pub const TIMESTAMP_HEADER: &str = "x-mlflow-timestamp";
pub const DELIVERY_ID_HEADER: &str = "x-mlflow-delivery-id";

/// A delivery as it arrived.
pub struct Delivery<'a> {
    pub delivery_id: &'a str,
    pub timestamp: &'a str,
    pub signature: &'a str,
    pub body: &'a [u8],
}

/// Why a delivery was refused (the sender is told, in these words).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("{0}")]
    Malformed(String),
    #[error("the signature does not match (wrong secret, or the body was changed)")]
    BadSignature,
    #[error("the delivery is {age_s} s old, older than the {max_s} s accepted")]
    TooOld { age_s: u64, max_s: u64 },
    #[error("the delivery's timestamp is in the future")]
    FromTheFuture,
}

/// The signature MLflow sends for this delivery under `secret`: `v1,<base64>`.
pub fn sign(secret: &str, delivery_id: &str, timestamp: &str, body: &[u8]) -> String {
    let digest = mac(secret, delivery_id, timestamp, body)
        .map(|m| m.finalize().into_bytes().to_vec())
        .unwrap_or_default();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// HMAC-SHA256 over `{delivery_id}.{timestamp}.{body}`; `None` never happens (HMAC takes keys
/// of any length) but is not unwrapped on a request path.
fn mac(secret: &str, delivery_id: &str, timestamp: &str, body: &[u8]) -> Option<Hmac<Sha256>> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(delivery_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

/// Checks the delivery's age, then its signature under `secret` (in constant time).
pub fn verify(
    secret: &str,
    delivery: &Delivery<'_>,
    now: SystemTime,
    max_age: Duration,
) -> Result<(), WebhookError> {
    check_age(delivery.timestamp, now, max_age)?;
    let encoded = delivery
        .signature
        .strip_prefix("v1,")
        .ok_or_else(|| WebhookError::Malformed("the signature is not 'v1,<base64>'".into()))?;
    let given = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| WebhookError::Malformed("the signature is not base64".into()))?;
    let want = mac(
        secret,
        delivery.delivery_id,
        delivery.timestamp,
        delivery.body,
    )
    .ok_or(WebhookError::BadSignature)?
    .finalize()
    .into_bytes();
    if bool::from(want.as_slice().ct_eq(&given)) {
        Ok(())
    } else {
        Err(WebhookError::BadSignature)
    }
}

fn check_age(timestamp: &str, now: SystemTime, max_age: Duration) -> Result<(), WebhookError> {
    let sent: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| WebhookError::Malformed("the timestamp is not Unix seconds".into()))?;
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // A minute of clock skew between the tracking server and sluice is fine.
    if sent > now + 60 {
        return Err(WebhookError::FromTheFuture);
    }
    let age = now.saturating_sub(sent);
    if age > max_age.as_secs() {
        return Err(WebhookError::TooOld {
            age_s: age,
            max_s: max_age.as_secs(),
        });
    }
    Ok(())
}

/// What a delivery is about: `{"entity": "model_version_alias", "action": "created",
/// "data": {"name": ..., "alias": ..., "version": ...}}`.
#[derive(Debug, PartialEq, Eq)]
pub struct Event {
    pub entity: String,
    pub action: String,
    /// The registered model it concerns.
    pub model: Option<String>,
}

pub fn parse_event(body: &[u8]) -> Result<Event, WebhookError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("the body is not JSON: {e}")))?;
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    Ok(Event {
        entity: text(&value["entity"]).unwrap_or_default(),
        action: text(&value["action"]).unwrap_or_default(),
        model: text(&value["data"]["name"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"entity": "model_version_alias", "action": "created", "data": {"name": "churn", "alias": "champion", "version": "2"}}"#;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_signature_made_as_mlflow_makes_it_verifies() {
        // mlflow.webhooks.delivery._generate_hmac_signature("s3cret", "d-1", "1700000000",
        // BODY) in MLflow 3.17.2.
        let signature = "v1,OAWVyLq2CyiL7zyU/ri1K3Zo8COB4tgbLhybl5ZDuoA=";
        assert_eq!(sign("s3cret", "d-1", "1700000000", BODY), signature);
        let delivery = Delivery {
            delivery_id: "d-1",
            timestamp: "1700000000",
            signature,
            body: BODY,
        };
        let max = Duration::from_secs(300);
        assert_eq!(verify("s3cret", &delivery, at(1_700_000_010), max), Ok(()));
        assert_eq!(
            verify("other", &delivery, at(1_700_000_010), max),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify("s3cret", &delivery, at(1_700_000_400), max),
            Err(WebhookError::TooOld {
                age_s: 400,
                max_s: 300
            })
        );
        assert_eq!(
            verify("s3cret", &delivery, at(1_699_999_000), max),
            Err(WebhookError::FromTheFuture)
        );
        let changed = Delivery {
            body: br#"{"data": {"name": "other"}}"#,
            ..delivery
        };
        assert_eq!(
            verify("s3cret", &changed, at(1_700_000_010), max),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn events_name_their_model() {
        let event = parse_event(BODY).unwrap();
        assert_eq!(event.entity, "model_version_alias");
        assert_eq!(event.model.as_deref(), Some("churn"));
        assert!(parse_event(b"not json").is_err());
    }
}
