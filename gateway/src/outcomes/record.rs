//! Outcome records as clients send them: a batch on `POST /v2/models/{m}/outcomes`, or one
//! `sluice.outcome.v1` record per Kafka message. Every field is checked before anything is
//! joined, so a bad record refuses its whole batch and changes nothing.

use serde_json::{Map, Value};

use super::index::Truthful;
use crate::telemetry::quality::{MAX_KEPT_ROWS, Truth};

pub const OUTCOME_SCHEMA: &str = "sluice.outcome.v1";
/// The longest request id an outcome may name (ids sluice generates are 29 bytes).
pub const MAX_ID_LENGTH: usize = 256;

/// One checked outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct OutcomeRecord {
    pub id: String,
    pub outcome: Truthful,
}

/// One checked Kafka record: its model and its outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicRecord {
    pub model: String,
    pub record: OutcomeRecord,
    /// Set by the replica that forwarded an outcome it could not join (see
    /// [`super::Outcomes::apply`]), so that it skips its own record when it reads it back.
    pub origin: Option<String>,
}

impl TopicRecord {
    /// The `sluice.outcome.v1` form of an outcome a replica forwards.
    pub fn to_json(&self) -> Vec<u8> {
        let mut value = serde_json::json!({
            "schema": OUTCOME_SCHEMA,
            "model": self.model,
            "id": self.record.id,
            "row": self.record.outcome.row,
        });
        let (field, truth) = match self.record.outcome.truth {
            Truth::Label(l) => ("label", serde_json::json!(l)),
            Truth::Value(v) => ("value", serde_json::json!(v)),
            Truth::Reward(r) => ("reward", serde_json::json!(r)),
        };
        value[field] = truth;
        if let Some(origin) = &self.origin {
            value["origin"] = serde_json::json!(origin);
        }
        serde_json::to_vec(&value).unwrap_or_default()
    }
}

/// Reads `{"outcomes": [...]}`; `max_batch` bounds the records of one call. The error names
/// the record and the field.
pub fn parse_batch(body: &[u8], max_batch: usize) -> Result<Vec<OutcomeRecord>, BatchError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| BatchError::Invalid(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(mut top) = value else {
        return Err(BatchError::Invalid(
            "the body must be an object: {\"outcomes\": [...]}".into(),
        ));
    };
    let outcomes = top.remove("outcomes").ok_or_else(|| {
        BatchError::Invalid("the body has no 'outcomes': send {\"outcomes\": [...]}".into())
    })?;
    if let Some(other) = top.keys().next() {
        return Err(BatchError::Invalid(format!(
            "unknown field '{}'; the body has only 'outcomes'",
            sluice_core::error::truncate(other, 64)
        )));
    }
    let Value::Array(records) = outcomes else {
        return Err(BatchError::Invalid("'outcomes' must be an array".into()));
    };
    if records.len() > max_batch {
        return Err(BatchError::TooMany {
            given: records.len(),
            limit: max_batch,
        });
    }
    records
        .into_iter()
        .enumerate()
        .map(|(i, record)| {
            let Value::Object(fields) = record else {
                return Err(BatchError::Invalid(format!(
                    "outcomes[{i}] must be an object"
                )));
            };
            parse_fields(fields, &[])
                .map_err(|reason| BatchError::Invalid(format!("outcomes[{i}]: {reason}")))
        })
        .collect()
}

/// Why a batch was refused.
#[derive(Debug, PartialEq)]
pub enum BatchError {
    Invalid(String),
    TooMany { given: usize, limit: usize },
}

/// Reads one `sluice.outcome.v1` Kafka record: `{"schema": "sluice.outcome.v1", "model":
/// "churn", "id": "...", "label": 1}` (`value` or `reward` instead of `label`; `row` for a
/// request of several rows).
pub fn parse_topic_record(payload: &[u8]) -> Result<TopicRecord, String> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(mut fields) = value else {
        return Err("a record must be a JSON object".into());
    };
    match fields.remove("schema") {
        Some(Value::String(s)) if s == OUTCOME_SCHEMA => {}
        Some(other) => {
            return Err(format!(
                "'schema' must be \"{OUTCOME_SCHEMA}\", not {}",
                sluice_core::error::truncate(&other.to_string(), 64)
            ));
        }
        None => return Err(format!("'schema' is missing (\"{OUTCOME_SCHEMA}\")")),
    }
    let model = match fields.remove("model") {
        Some(Value::String(m)) if !m.is_empty() => m,
        _ => return Err("'model' must be the model's name".into()),
    };
    let origin = match fields.remove("origin") {
        Some(Value::String(o)) => Some(o),
        Some(_) => return Err("'origin' must be a string".into()),
        None => None,
    };
    let record = parse_fields(fields, &["timestamp"])?;
    Ok(TopicRecord {
        model,
        record,
        origin,
    })
}

fn parse_fields(mut fields: Map<String, Value>, ignored: &[&str]) -> Result<OutcomeRecord, String> {
    let id = match fields.remove("id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID_LENGTH => id,
        Some(Value::String(id)) if id.is_empty() => return Err("'id' is empty".into()),
        Some(Value::String(_)) => {
            return Err(format!("'id' is longer than {MAX_ID_LENGTH} bytes"));
        }
        Some(_) => return Err("'id' must be a string (the request id)".into()),
        None => return Err("'id' is missing (the request id the answer carried)".into()),
    };
    let row = match fields.remove("row") {
        None => 0,
        Some(v) => v
            .as_u64()
            .and_then(|r| usize::try_from(r).ok())
            .filter(|&r| r < MAX_KEPT_ROWS)
            .ok_or_else(|| format!("'row' must be an integer from 0 to {}", MAX_KEPT_ROWS - 1))?,
    };
    let mut truth = None;
    for (name, value) in fields {
        if ignored.contains(&name.as_str()) {
            continue;
        }
        let parsed = match name.as_str() {
            "label" => Truth::Label(
                value
                    .as_i64()
                    .ok_or("'label' must be an integer (the true class)")?,
            ),
            "value" => Truth::Value(finite(&value).ok_or("'value' must be a finite number")?),
            "reward" => Truth::Reward(finite(&value).ok_or("'reward' must be a finite number")?),
            other => {
                return Err(format!(
                    "unknown field '{}'; a record has 'id', one of 'label', 'value' or 'reward', \
                     and optionally 'row'",
                    sluice_core::error::truncate(other, 64)
                ));
            }
        };
        if truth.replace(parsed).is_some() {
            return Err("give one of 'label', 'value' or 'reward', not several".into());
        }
    }
    let truth = truth.ok_or("one of 'label', 'value' or 'reward' is needed")?;
    Ok(OutcomeRecord {
        id,
        outcome: Truthful { row, truth },
    })
}

fn finite(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(body: &str) -> String {
        match parse_batch(body.as_bytes(), 10) {
            Err(BatchError::Invalid(m)) => m,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn reads_each_kind_and_names_what_is_wrong() {
        let batch = parse_batch(
            br#"{"outcomes": [{"id": "a", "label": 3}, {"id": "b", "value": 0.7, "row": 2},
                {"id": "c", "reward": 1}]}"#,
            10,
        )
        .unwrap();
        assert_eq!(batch[0].outcome.truth, Truth::Label(3));
        assert_eq!(
            (batch[1].outcome.row, batch[1].outcome.truth),
            (2, Truth::Value(0.7))
        );
        assert_eq!(batch[2].outcome.truth, Truth::Reward(1.0));
        assert_eq!(
            invalid(r#"[1]"#),
            "the body must be an object: {\"outcomes\": [...]}"
        );
        assert!(invalid(r#"{"outcome": []}"#).contains("no 'outcomes'"));
        assert!(invalid(r#"{"outcomes": {}}"#).contains("must be an array"));
        assert_eq!(
            invalid(r#"{"outcomes": [{"id": "a", "label": "cat"}]}"#),
            "outcomes[0]: 'label' must be an integer (the true class)"
        );
        assert!(
            invalid(r#"{"outcomes": [{"id": 7, "label": 1}]}"#).contains("'id' must be a string")
        );
        assert!(invalid(r#"{"outcomes": [{"label": 1}]}"#).contains("'id' is missing"));
        assert!(invalid(r#"{"outcomes": [{"id": "a"}]}"#).contains("one of 'label'"));
        assert!(
            invalid(r#"{"outcomes": [{"id": "a", "label": 1, "reward": 1}]}"#)
                .contains("not several")
        );
        assert!(
            invalid(r#"{"outcomes": [{"id": "a", "lable": 1}]}"#).contains("unknown field 'lable'")
        );
        assert!(invalid(r#"{"outcomes": [{"id": "a", "label": 1, "row": -1}]}"#).contains("'row'"));
        assert!(
            invalid(r#"{"outcomes": [{"id": "a", "value": 1e999}]}"#).contains("not valid JSON")
                || invalid(r#"{"outcomes": [{"id": "a", "value": 1e999}]}"#).contains("finite")
        );
        let many = format!(
            r#"{{"outcomes": [{}]}}"#,
            [r#"{"id": "a", "label": 1}"#; 11].join(",")
        );
        assert_eq!(
            parse_batch(many.as_bytes(), 10),
            Err(BatchError::TooMany {
                given: 11,
                limit: 10
            })
        );
    }

    #[test]
    fn reads_topic_records() {
        let r = parse_topic_record(
            br#"{"schema": "sluice.outcome.v1", "model": "churn", "id": "x", "label": 1,
                "timestamp": "2026-12-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!((r.model.as_str(), r.record.id.as_str()), ("churn", "x"));
        let forwarded = TopicRecord {
            origin: Some("replica-a".into()),
            ..r.clone()
        };
        assert_eq!(parse_topic_record(&forwarded.to_json()), Ok(forwarded));
        assert!(
            parse_topic_record(br#"{"model": "churn", "id": "x", "label": 1}"#)
                .unwrap_err()
                .contains("'schema' is missing")
        );
        assert!(
            parse_topic_record(br#"{"schema": "sluice.outcome.v1", "id": "x", "label": 1}"#)
                .unwrap_err()
                .contains("'model'")
        );
    }
}
