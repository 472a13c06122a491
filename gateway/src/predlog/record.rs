//! The records sluice writes: one `sluice.prediction.v1` object per prediction (primary,
//! canary, direct and shadow runs) and one `sluice.event.v1` object per lifecycle change.
//! Both are serialised on the request path into exact bytes, so that the backlog's memory
//! bound counts what is really held.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::expectations::Flagged;
use crate::telemetry::compare::Comparison;
use sluice_core::Variant;
use sluice_core::tensor::Tensor;
use sluice_protocol::v2::{JsonData, write_tensors};

pub const PREDICTION_SCHEMA: &str = "sluice.prediction.v1";
pub const EVENT_SCHEMA: &str = "sluice.event.v1";

/// One prediction, as written to the log.
#[derive(Serialize)]
pub struct PredictionRecord<'a> {
    pub schema: &'static str,
    #[serde(serialize_with = "rfc3339")]
    pub timestamp: SystemTime,
    /// The client's request id, or one sluice generated. Records of one request (its primary
    /// answer and its shadow copy) share it, and it is their Kafka key.
    pub request_id: &'a str,
    pub model: &'a str,
    pub version: u64,
    pub variant: Variant,
    pub protocol: &'static str,
    /// "ok", or the error kind (bad_request, timeout, model_failure, ...).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// Time from decoded request to result, queueing included.
    pub latency_us: u64,
    /// Rows in the request (the batch dimension of its first input).
    pub rows: usize,
    #[serde(serialize_with = "tensors")]
    pub outputs: &'a [Tensor],
    /// The inputs array, already JSON ([`inputs_json`]): written before the run, from the
    /// client's own text where it has it, so the tensors need not be kept for the record.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "some_raw")]
    pub inputs: Option<&'a [u8]>,
    /// For shadow runs: how the shadow's answer compared with the primary's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowComparison>,
    /// For a request that broke the model's data expectations (`on_violation = "flag"`):
    /// how many values, and the first few (row, feature, rule, value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expectations: Option<&'a Flagged>,
}

impl PredictionRecord<'_> {
    pub fn to_json(&self) -> Vec<u8> {
        // Sized for the usual record up front: growing the buffer step by step cost more than
        // writing the fields (profiled). The fields before `outputs` take ~230 bytes, each
        // output's name, type and shape ~60, each value up to ~24; 320 + 24 per value fell a
        // few bytes short of the bench's churn record (689 bytes), which then reallocated.
        let values: usize = self.outputs.iter().map(|t| t.data.len()).sum();
        let inputs = self.inputs.map_or(0, <[u8]>::len);
        let mut out = Vec::with_capacity(256 + 64 * self.outputs.len() + 24 * values + inputs);
        self.write(&mut out);
        out
    }

    /// The same bytes as the derived `Serialize` (a test holds them equal), written field by
    /// field: the derived form went through serde's map machinery for every key and through
    /// `Display` for the timestamp, ~a third of the record's cost (profiled).
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"schema\":");
        json(out, self.schema);
        out.extend_from_slice(b",\"timestamp\":\"");
        write_rfc3339_micros(out, self.timestamp);
        out.extend_from_slice(b"\",\"request_id\":");
        json(out, self.request_id);
        out.extend_from_slice(b",\"model\":");
        json(out, self.model);
        out.extend_from_slice(b",\"version\":");
        json(out, &self.version);
        out.extend_from_slice(b",\"variant\":");
        json(out, &self.variant);
        out.extend_from_slice(b",\"protocol\":");
        json(out, self.protocol);
        out.extend_from_slice(b",\"status\":");
        json(out, self.status);
        if let Some(error) = self.error {
            out.extend_from_slice(b",\"error\":");
            json(out, error);
        }
        out.extend_from_slice(b",\"latency_us\":");
        json(out, &self.latency_us);
        out.extend_from_slice(b",\"rows\":");
        json(out, &self.rows);
        out.extend_from_slice(b",\"outputs\":");
        write_tensors(out, self.outputs, &[]);
        if let Some(inputs) = self.inputs {
            out.extend_from_slice(b",\"inputs\":");
            out.extend_from_slice(inputs);
        }
        if let Some(shadow) = &self.shadow {
            out.extend_from_slice(b",\"shadow\":");
            json(out, shadow);
        }
        if let Some(expectations) = self.expectations {
            out.extend_from_slice(b",\"expectations\":");
            json(out, expectations);
        }
        out.push(b'}');
    }
}

/// One value in its JSON form (strings escaped, numbers as serde_json writes them).
fn json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Numbers, strings and plain structs of them always serialise into memory.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// A request's inputs as the record's `inputs` array, each input's data copied from the
/// client's text where `as_sent` has it (see [`sluice_protocol::v2::write_tensors`]).
pub fn inputs_json(inputs: &[Tensor], as_sent: &[Option<Box<str>>]) -> Vec<u8> {
    let values: usize = inputs.iter().map(|t| t.data.len()).sum();
    let mut out = Vec::with_capacity(64 * inputs.len() + 24 * values);
    write_tensors(&mut out, inputs, as_sent);
    out
}

/// `2023-11-14T22:13:20.123456Z`, as `humantime::format_rfc3339_micros` writes it (times
/// before 1970 as 1970).
fn write_rfc3339_micros(out: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    put_digits(out, year, 4);
    for (sep, value, width) in [
        (b'-', month, 2),
        (b'-', day, 2),
        (b'T', of_day / 3600, 2),
        (b':', of_day / 60 % 60, 2),
        (b':', of_day % 60, 2),
        (b'.', u64::from(since.subsec_micros()), 6),
    ] {
        out.push(sep);
        put_digits(out, value, width);
    }
    out.push(b'Z');
}

/// The low `width` decimal digits of `value`, zero-padded.
fn put_digits(out: &mut Vec<u8>, value: u64, width: u32) {
    for k in (0..width).rev() {
        out.push(b'0' + (value / 10u64.pow(k) % 10) as u8);
    }
}

/// Year, month and day of the `days`th day after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for the proleptic Gregorian calendar).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The shadow's comparison with the primary, in a shadow record.
#[derive(Debug, Serialize)]
pub struct ShadowComparison {
    pub primary_version: u64,
    pub label_rows: u64,
    pub agreeing_rows: u64,
    pub max_abs_diff: f64,
    pub max_rel_diff: f64,
    pub mismatched_outputs: u64,
}

impl ShadowComparison {
    pub fn new(primary_version: u64, c: &Comparison) -> ShadowComparison {
        ShadowComparison {
            primary_version,
            label_rows: c.label_rows,
            agreeing_rows: c.agreeing_rows,
            max_abs_diff: c.max_abs_diff,
            max_rel_diff: c.max_rel_diff,
            mismatched_outputs: c.mismatched_outputs,
        }
    }
}

/// A lifecycle change: what happened, to which model, who asked and why.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub schema: &'static str,
    #[serde(serialize_with = "rfc3339")]
    pub timestamp: SystemTime,
    pub kind: EventKind,
    pub model: String,
    /// The version the event is about, when it is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Who asked: "start-up", "repository poller", "token holder at ADDR", "guard".
    pub actor: String,
    /// Why, in words.
    pub reason: String,
    /// Kind-specific facts (versions loaded, the policy in force, the numbers behind a
    /// rollback).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Versions were loaded and published.
    Load,
    /// A load failed; nothing changed.
    LoadFailed,
    /// A model was removed from serving.
    Unload,
    /// The primary version changed.
    Swap,
    /// The traffic policy changed.
    Traffic,
    RolloutStep,
    Promote,
    Rollback,
    Drift,
    /// The live accuracy alert was raised or cleared.
    Quality,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Load => "load",
            EventKind::LoadFailed => "load_failed",
            EventKind::Unload => "unload",
            EventKind::Swap => "swap",
            EventKind::Traffic => "traffic",
            EventKind::RolloutStep => "rollout_step",
            EventKind::Promote => "promote",
            EventKind::Rollback => "rollback",
            EventKind::Drift => "drift",
            EventKind::Quality => "quality",
        }
    }
}

impl Event {
    pub fn new(
        kind: EventKind,
        model: impl Into<String>,
        actor: impl ToString,
        reason: impl Into<String>,
    ) -> Event {
        Event {
            schema: EVENT_SCHEMA,
            timestamp: SystemTime::now(),
            kind,
            model: model.into(),
            version: None,
            actor: actor.to_string(),
            reason: reason.into(),
            details: serde_json::Value::Null,
        }
    }

    pub fn version(mut self, version: u64) -> Event {
        self.version = Some(version);
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Event {
        self.details = details;
        self
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A request id for requests that brought none: unique within the process (a counter) and,
/// with overwhelming odds, across processes and restarts (a random prefix).
pub fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let prefix = *PREFIX.get_or_init(rand::random::<u64>);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // "{prefix:016x}-{n:012x}", without the formatting machinery (this runs per request).
    let mut id = String::with_capacity(29);
    push_hex(&mut id, prefix, 16);
    id.push('-');
    push_hex(&mut id, n, 12);
    id
}

/// Appends the low `digits` hex digits of `value`, zero-padded.
fn push_hex(out: &mut String, value: u64, digits: u32) {
    for shift in (0..digits).rev() {
        let nibble = (value >> (4 * shift)) & 0xf;
        out.push(char::from_digit(nibble as u32, 16).unwrap_or('0'));
    }
}

pub fn latency_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*t))
}

#[derive(Serialize)]
struct TensorJson<'a> {
    name: &'a str,
    datatype: sluice_core::tensor::DataType,
    shape: &'a [usize],
    data: JsonData<'a>,
}

fn tensors<S: Serializer>(tensors: &&[Tensor], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(tensors.iter().map(|t| TensorJson {
        name: &t.name,
        datatype: t.datatype(),
        shape: &t.shape,
        data: JsonData(&t.data),
    }))
}

/// Already-written JSON, as itself (serde_json's serializer writes a `RawValue` verbatim).
fn some_raw<S: Serializer>(raw: &Option<&[u8]>, s: S) -> Result<S::Ok, S::Error> {
    match raw {
        Some(bytes) => serde_json::from_slice::<&RawValue>(bytes)
            .map_err(serde::ser::Error::custom)?
            .serialize(s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::tensor::TensorData;

    #[test]
    fn a_prediction_record_has_the_documented_fields() {
        let outputs = vec![Tensor::new("label", vec![1], TensorData::I64(vec![1])).unwrap()];
        let inputs = vec![Tensor::new("x", vec![1, 2], TensorData::F32(vec![0.5, 2.0])).unwrap()];
        let record = PredictionRecord {
            schema: PREDICTION_SCHEMA,
            timestamp: SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            request_id: "r-1",
            model: "churn",
            version: 2,
            variant: Variant::Canary,
            protocol: "v2_json",
            status: "ok",
            error: None,
            latency_us: 180,
            rows: 1,
            outputs: &outputs,
            inputs: Some(&inputs_json(&inputs, &[])),
            shadow: None,
            expectations: None,
        };
        let value: serde_json::Value = serde_json::from_slice(&record.to_json()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "schema": "sluice.prediction.v1",
                "timestamp": "2023-11-14T22:13:20.123456Z",
                "request_id": "r-1",
                "model": "churn",
                "version": 2,
                "variant": "canary",
                "protocol": "v2_json",
                "status": "ok",
                "latency_us": 180,
                "rows": 1,
                "outputs": [{"name": "label", "datatype": "INT64", "shape": [1], "data": [1]}],
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 2.0]}],
            })
        );
    }

    #[test]
    fn the_written_record_is_the_serde_form() {
        let outputs = vec![
            Tensor::new("label", vec![2], TensorData::I64(vec![1, 0])).unwrap(),
            Tensor::new("p\"q", vec![2, 1], TensorData::F32(vec![0.25, 1e-9])).unwrap(),
        ];
        let inputs = inputs_json(
            &[Tensor::new("x", vec![1], TensorData::F64(vec![-3.5])).unwrap()],
            &[],
        );
        let shadow = ShadowComparison {
            primary_version: 1,
            label_rows: 2,
            agreeing_rows: 1,
            max_abs_diff: 0.5,
            max_rel_diff: 1.0,
            mismatched_outputs: 0,
        };
        let record = |inputs, shadow, error| PredictionRecord {
            schema: PREDICTION_SCHEMA,
            timestamp: SystemTime::now(),
            request_id: "id\n1",
            model: "m",
            version: 3,
            variant: Variant::Shadow,
            protocol: "grpc",
            status: "ok",
            error,
            latency_us: 7,
            rows: 2,
            outputs: &outputs,
            inputs,
            shadow,
            expectations: None,
        };
        for r in [
            record(Some(&inputs[..]), Some(shadow), Some("bad \"x\"")),
            record(None, None, None),
        ] {
            assert_eq!(
                String::from_utf8(r.to_json()).unwrap(),
                serde_json::to_string(&r).unwrap()
            );
        }
    }

    #[test]
    fn inputs_are_copied_as_sent_where_the_text_is_kept() {
        let inputs = [
            Tensor::new("a", vec![1, 2], TensorData::F32(vec![0.1, 2.0])).unwrap(),
            Tensor::new("b", vec![1], TensorData::I64(vec![7])).unwrap(),
        ];
        let sent: Box<str> = "[0.10000000149011612, 2]".into();
        let json = inputs_json(&inputs, &[Some(sent), None]);
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"[{"name":"a","datatype":"FP32","shape":[1,2],"data":[0.10000000149011612, 2]},{"name":"b","datatype":"INT64","shape":[1],"data":[7]}]"#
        );
        // Without texts, every value is formatted.
        let formatted: serde_json::Value =
            serde_json::from_slice(&inputs_json(&inputs, &[])).unwrap();
        assert_eq!(formatted[0]["data"], serde_json::json!([0.1, 2.0]));
    }

    #[test]
    fn timestamps_are_humantimes_rfc3339() {
        let mut t = SystemTime::UNIX_EPOCH;
        // Every day for 1200 years from 1970, leap years and centuries included, at odd times.
        for step in 0..438_300u64 {
            let at = t + Duration::from_micros(step * 7_919_123 % 86_400_000_000);
            let mut out = Vec::new();
            write_rfc3339_micros(&mut out, at);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                humantime::format_rfc3339_micros(at).to_string()
            );
            t += Duration::from_secs(86_400);
        }
    }

    #[test]
    fn generated_request_ids_differ() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 29);
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        let mut hex = String::new();
        push_hex(&mut hex, 0xab, 4);
        assert_eq!(hex, "00ab");
    }
}
