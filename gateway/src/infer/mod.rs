//! The one inference path every protocol goes through: resolve the version, check the inputs
//! against its signature, run it on the model's workers, select the outputs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod config;
pub mod shadow;

pub use config::TrafficConfig;

use crate::expectations::Flagged;
use crate::outcomes::Outcomes;
use crate::outcomes::record::MAX_ID_LENGTH;
use crate::predlog::PredictionLog;
use crate::predlog::record::{
    PREDICTION_SCHEMA, PredictionRecord, ShadowComparison, inputs_json, latency_us, new_request_id,
};
use crate::repository::LoadedVersion;
use crate::routing::{Route, Router};
use crate::telemetry::metrics::InferenceEvent;
use shadow::{ShadowJob, Shadower};
use sluice_core::error::{ServeError, ServeResult};
use sluice_core::tensor::{ModelSignature, Tensor};
use sluice_core::{InferRequest, InferResponse, Protocol, RequestKeys, Variant};
use sluice_runtime::RunOutput;

/// The core inference service.
pub struct Inference {
    router: Arc<Router>,
    request_timeout: Duration,
    shadow: Shadower,
    log: PredictionLog,
    /// Inferences in progress across all models and protocols; beyond it requests are refused
    /// at once (503), so a flood cannot pile up work and memory behind the per-model queues.
    in_flight: tokio::sync::Semaphore,
    /// `server.max_response_size`: answers whose outputs hold more bytes are refused (413)
    /// before any protocol encodes them.
    max_response_size: usize,
    /// Where predictions wait for their ground-truth outcomes; `None`: no join.
    outcomes: Option<Arc<Outcomes>>,
}

/// The request header that carries a request id for protocols without an id field (V1), and
/// that every answer carries back.
pub const REQUEST_ID_HEADER: &str = "sluice-request-id";

impl Inference {
    pub fn new(
        router: Arc<Router>,
        request_timeout: Duration,
        shadow: Shadower,
        log: PredictionLog,
        max_concurrent_requests: usize,
    ) -> Inference {
        Inference {
            router,
            request_timeout,
            shadow,
            log,
            in_flight: tokio::sync::Semaphore::new(max_concurrent_requests),
            max_response_size: usize::MAX,
            outcomes: None,
        }
    }

    /// Keeps every answered prediction in `outcomes`' index for its outcome to join.
    pub fn with_outcomes(mut self, outcomes: Arc<Outcomes>) -> Inference {
        self.outcomes = Some(outcomes);
        self
    }

    pub fn outcomes(&self) -> Option<&Arc<Outcomes>> {
        self.outcomes.as_ref()
    }

    /// Caps the raw size of an answer's outputs (`server.max_response_size`).
    pub fn with_max_response_size(mut self, bytes: usize) -> Inference {
        self.max_response_size = bytes;
        self
    }

    /// Shadow comparison totals.
    pub fn shadow(&self) -> &Shadower {
        &self.shadow
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Resolves the version a request would be served by, so that decoders that need the
    /// signature (V1 has no datatypes) can use the same version the request then runs on.
    pub fn resolve(&self, model: &str, version: Option<&str>) -> ServeResult<Arc<LoadedVersion>> {
        self.router.resolve(model, version)
    }

    /// Routes the request (URL version, else the traffic policy), runs it, and hands a
    /// sampled copy to the shadow once the answer is ready.
    pub async fn infer(&self, request: InferRequest) -> ServeResult<InferResponse> {
        let route = self.route(&request.model, request.version.as_deref(), &request.keys)?;
        self.infer_routed(route, request).await
    }

    /// Where a request would go, for decoders that need the target's signature first (V1 has
    /// no datatypes); pass the result to [`Inference::infer_routed`].
    pub fn route(
        &self,
        model: &str,
        version: Option<&str>,
        keys: &RequestKeys,
    ) -> ServeResult<Route> {
        self.router.route(model, version, |key| keys.get(key))
    }

    pub async fn infer_routed(
        &self,
        route: Route,
        mut request: InferRequest,
    ) -> ServeResult<InferResponse> {
        let _permit = self.in_flight.try_acquire().map_err(|_| {
            ServeError::new(
                sluice_core::error::ErrorKind::Overloaded,
                "server is overloaded: too many requests in flight",
            )
        })?;
        // The id every answer carries (the client's, or one made here): what ties the request's
        // log records together (its answer and its shadow) and what its outcome names.
        let id = request
            .id
            .take()
            .or_else(|| header_request_id(&request.keys.headers))
            .unwrap_or_else(new_request_id);
        let log_id = self.log.enabled().then(|| id.clone());
        request.id = Some(id);
        let Some(shadow) = route.shadow else {
            return self
                .infer_on(route.target, route.variant, request, log_id)
                .await;
        };
        // Only sampled requests pay for the copy of their inputs.
        let inputs = request.inputs.clone();
        let protocol = request.protocol;
        let response = self
            .infer_on(route.target, route.variant, request, log_id.clone())
            .await?;
        self.shadow.submit(ShadowJob {
            target: shadow,
            primary_version: response.version,
            inputs,
            primary_outputs: response.outputs.clone(),
            protocol,
            log_id,
        });
        Ok(response)
    }

    /// Runs the request on an already resolved version.
    pub async fn infer_on(
        &self,
        target: Arc<LoadedVersion>,
        variant: Variant,
        request: InferRequest,
        log_id: Option<String>,
    ) -> ServeResult<InferResponse> {
        let started = Instant::now();
        let rows = request_rows(&request.inputs);
        let protocol = request.protocol;
        // Written now, while the request still has them (the run takes the tensors), from the
        // client's own JSON text where the decoder kept it.
        let logged_inputs = log_id
            .as_ref()
            .filter(|_| self.log.wants_inputs())
            .map(|_| inputs_json(&request.inputs, &request.inputs_json));
        let deadline = started + self.request_timeout;
        let ticket = match (&self.outcomes, request.id.as_deref()) {
            (Some(outcomes), Some(id)) if id.len() <= MAX_ID_LENGTH => {
                outcomes.begin(id, &target, variant)
            }
            _ => None,
        };
        let mut flagged = Flagged::default();
        let (selection, run) = match select_outputs(&target.signature, request.outputs.as_deref()) {
            Ok(selection) => (
                selection,
                run_version(
                    &target,
                    variant,
                    request.inputs,
                    deadline,
                    Some(&mut flagged),
                )
                .await,
            ),
            Err(e) => (None, Err(e)),
        };
        // An answer too large to send is a failed request: checked before the outcome is
        // recorded, so the window, the metrics and the log record say what the client got.
        let run = run.and_then(|run| {
            let answered: Vec<&Tensor> = match &selection {
                Some(keep) => keep.iter().filter_map(|&i| run.outputs.get(i)).collect(),
                None => run.outputs.iter().collect(),
            };
            check_response_size(answered, self.max_response_size).map(|()| run)
        });
        let summary = RunSummary {
            variant,
            protocol,
            rows,
            elapsed: started.elapsed(),
            run: run.as_ref(),
        };
        let entry = log_id.as_deref().map(|id| LogEntry {
            id,
            inputs: logged_inputs.as_deref(),
            shadow: None,
            expectations: Some(&flagged).filter(|f| !f.is_empty()),
        });
        record_run(&target, &summary, &self.log, entry);
        if let (Some(outcomes), Some(ticket)) = (&self.outcomes, ticket) {
            let outputs = run.as_ref().ok().map(|r| r.outputs.as_slice());
            outcomes.finish(ticket, outputs, rows);
        }
        let mut run = run?;
        let mut outputs = std::mem::take(&mut run.outputs);
        if let Some(keep) = selection {
            outputs = keep
                .into_iter()
                .filter_map(|i| outputs.get(i).cloned())
                .collect();
        }
        Ok(InferResponse {
            model: target.model.clone(),
            version: target.version,
            variant,
            id: request.id,
            outputs,
        })
    }
}

/// A usable `sluice-request-id` header: non-empty and at most [`MAX_ID_LENGTH`] bytes.
fn header_request_id(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= MAX_ID_LENGTH)
        .map(str::to_string)
}

/// Rows in a request: the batch dimension of its first input.
fn request_rows(inputs: &[Tensor]) -> usize {
    inputs
        .first()
        .and_then(|t| t.shape.first())
        .copied()
        .unwrap_or(1)
}

/// Runs `inputs` on one version, whichever side of the split asked: validated and put in
/// signature order, checked against the data expectations (with `flagged`; shadow copies pass
/// `None`: their request was admitted by the primary, and their answer reaches nobody),
/// counted into drift, run on the version's workers, and the prediction counted for the guard
/// (before output selection: the guard compares what the model predicted, whatever the client
/// asked to see). A rejected request never reaches drift or the model.
async fn run_version(
    target: &LoadedVersion,
    variant: Variant,
    inputs: Vec<Tensor>,
    deadline: Instant,
    flagged: Option<&mut Flagged>,
) -> ServeResult<RunOutput> {
    let inputs = order_inputs(&target.signature, inputs)?;
    if let Some(flagged) = flagged {
        target.check_expectations(&inputs, flagged)?;
    }
    target.observe_inputs(&inputs);
    let run = target.runner.run(inputs, deadline).await?;
    target.windows.predictions.record(variant, &run.outputs);
    target.observe_outputs(&run.outputs);
    Ok(run)
}

/// What one run of a version came to.
struct RunSummary<'a> {
    variant: Variant,
    protocol: Protocol,
    rows: usize,
    elapsed: Duration,
    /// Every output the model returned (signature order) with the runner's timings, or why
    /// it failed.
    run: Result<&'a RunOutput, &'a ServeError>,
}

/// The prediction-log side of a run.
struct LogEntry<'a> {
    id: &'a str,
    /// The record's `inputs` array, already JSON.
    inputs: Option<&'a [u8]>,
    /// For a shadow run: how its answer compared with the primary's.
    shadow: Option<ShadowComparison>,
    /// The data-expectation violations of a flagged request.
    expectations: Option<&'a Flagged>,
}

/// The one place a run is recorded: the version's rolling window (what the guard and the
/// stats endpoint read), its metrics, and its prediction-log record.
fn record_run(
    target: &LoadedVersion,
    summary: &RunSummary<'_>,
    log: &PredictionLog,
    entry: Option<LogEntry<'_>>,
) {
    let server_failure = summary.run.is_err_and(|e| e.kind.is_server_side());
    target
        .windows
        .get(summary.variant)
        .record(summary.elapsed, server_failure);
    let run = summary.run.ok();
    target.metrics.record(&InferenceEvent {
        variant: summary.variant,
        protocol: summary.protocol,
        outcome: summary.run.map(|_| ()).map_err(|e| e.kind),
        total: summary.elapsed,
        queue: run.map(|r| r.queue_wait),
        compute: run.map(|r| r.compute),
        batch_rows: run.and_then(|r| r.batch_rows),
        rows: summary.rows,
    });
    let Some(entry) = entry else {
        return;
    };
    let (status, error, outputs) = match summary.run {
        Ok(run) => ("ok", None, run.outputs.as_slice()),
        Err(e) => (e.kind.as_str(), Some(e.message.as_str()), &[][..]),
    };
    let record = PredictionRecord {
        schema: PREDICTION_SCHEMA,
        timestamp: std::time::SystemTime::now(),
        request_id: entry.id,
        model: &target.model,
        version: target.version,
        variant: summary.variant,
        protocol: summary.protocol.as_str(),
        status,
        error,
        latency_us: latency_us(summary.elapsed),
        rows: summary.rows,
        outputs,
        inputs: entry.inputs,
        shadow: entry.shadow,
        expectations: entry.expectations,
    };
    log.prediction(entry.id.to_string(), record.to_json());
}

/// Checks every input against the signature (presence, datatype, shape, one batch size) and
/// puts them in the signature's order. Every message names the input and what was expected.
pub fn order_inputs(signature: &ModelSignature, inputs: Vec<Tensor>) -> ServeResult<Vec<Tensor>> {
    // Most clients send the inputs in the signature's order (one input, usually): those are
    // checked where they are, without a map by name (profiled: three allocations and a hash
    // per input on every request).
    let in_order = inputs.len() == signature.inputs.len()
        && inputs
            .iter()
            .zip(&signature.inputs)
            .all(|(tensor, spec)| tensor.name == spec.name);
    let ordered = if in_order {
        inputs
    } else {
        reorder_inputs(signature, inputs)?
    };
    let mut batch: Option<(usize, &str)> = None;
    for (spec, tensor) in signature.inputs.iter().zip(&ordered) {
        check_input(spec, tensor, &mut batch)?;
    }
    Ok(ordered)
}

fn input_names(signature: &ModelSignature) -> Vec<&str> {
    signature.inputs.iter().map(|s| s.name.as_str()).collect()
}

/// The inputs in signature order, refusing unknown, repeated and missing names.
fn reorder_inputs(signature: &ModelSignature, inputs: Vec<Tensor>) -> ServeResult<Vec<Tensor>> {
    let expected = input_names(signature);
    let mut by_name: HashMap<String, Tensor> = HashMap::with_capacity(inputs.len());
    for tensor in inputs {
        if !expected.contains(&tensor.name.as_str()) {
            return Err(ServeError::bad_request(format!(
                "unexpected input '{}'; the model takes {}",
                sluice_core::error::truncate(&tensor.name, sluice_core::error::ECHO_MAX),
                quoted_list(&expected)
            )));
        }
        if by_name.contains_key(&tensor.name) {
            return Err(ServeError::bad_request(format!(
                "input '{}' is given twice",
                tensor.name
            )));
        }
        by_name.insert(tensor.name.clone(), tensor);
    }
    signature
        .inputs
        .iter()
        .map(|spec| {
            by_name.remove(&spec.name).ok_or_else(|| {
                ServeError::bad_request(format!(
                    "missing input '{}'; the model takes {}",
                    spec.name,
                    quoted_list(&expected)
                ))
            })
        })
        .collect()
}

/// One input against its spec; `batch` carries the first dynamic-batch input's rows.
fn check_input<'a>(
    spec: &'a sluice_core::tensor::TensorSpec,
    tensor: &Tensor,
    batch: &mut Option<(usize, &'a str)>,
) -> ServeResult<()> {
    if tensor.datatype() != spec.datatype {
        return Err(ServeError::bad_request(format!(
            "input '{}': expected datatype {}, got {}",
            spec.name,
            spec.datatype,
            tensor.datatype()
        )));
    }
    spec.check_shape(&tensor.shape)
        .map_err(ServeError::bad_request)?;
    // Every decoder builds tensors through `Tensor::new`; this keeps a shape that does not
    // describe its data (or overflows) from ever reaching a runtime, whoever built it.
    if sluice_core::tensor::checked_element_count(&tensor.shape) != Some(tensor.data.len()) {
        return Err(ServeError::bad_request(format!(
            "input '{}': shape {} does not describe its {} values",
            spec.name,
            sluice_core::tensor::format_dims(
                &tensor.shape.iter().map(|&d| d as i64).collect::<Vec<_>>()
            ),
            tensor.data.len()
        )));
    }
    // Inputs whose first axis is dynamic share the batch axis: they must agree on it.
    if spec.shape.first() == Some(&-1) {
        let rows = tensor.shape[0];
        match *batch {
            Some((want, first)) if want != rows => {
                return Err(ServeError::bad_request(format!(
                    "input '{}' has {rows} rows but input '{first}' has {want}",
                    spec.name
                )));
            }
            None => *batch = Some((rows, spec.name.as_str())),
            _ => {}
        }
    }
    Ok(())
}

/// Refuses an answer whose outputs hold more than `limit` bytes in their raw form (what the
/// binary and gRPC encodings send; JSON adds to it), before any encoder builds a body.
pub fn check_response_size<'a>(
    outputs: impl IntoIterator<Item = &'a Tensor>,
    limit: usize,
) -> ServeResult<()> {
    let size = outputs
        .into_iter()
        .map(|t| sluice_protocol::raw::encoded_len(&t.data))
        .fold(0usize, usize::saturating_add);
    if size > limit {
        return Err(ServeError::new(
            sluice_core::error::ErrorKind::ResponseTooLarge,
            format!(
                "the answer would hold {size} bytes of outputs, more than the limit of {limit} \
                 bytes (server.max_response_size); ask for fewer rows or outputs"
            ),
        ));
    }
    Ok(())
}

/// Indices of the requested outputs in signature order, or `None` for all. Naming an output
/// twice is refused: it would only multiply the answer.
fn select_outputs(
    signature: &ModelSignature,
    requested: Option<&[String]>,
) -> ServeResult<Option<Vec<usize>>> {
    let Some(requested) = requested.filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let names: Vec<&str> = signature.outputs.iter().map(|s| s.name.as_str()).collect();
    if let Some((_, name)) = requested
        .iter()
        .enumerate()
        .find(|(i, name)| requested[..*i].contains(name))
    {
        return Err(ServeError::bad_request(format!(
            "output '{}' is requested more than once; name each output once",
            sluice_core::error::truncate(name, sluice_core::error::ECHO_MAX)
        )));
    }
    requested
        .iter()
        .map(|name| {
            names.iter().position(|n| n == name).ok_or_else(|| {
                ServeError::bad_request(format!(
                    "unknown output '{}'; the model produces {}",
                    sluice_core::error::truncate(name, sluice_core::error::ECHO_MAX),
                    quoted_list(&names)
                ))
            })
        })
        .collect::<ServeResult<Vec<_>>>()
        .map(Some)
}

fn quoted_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    quoted.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::tensor::{DataType, TensorData, TensorSpec};

    fn signature() -> ModelSignature {
        let spec = |name: &str, datatype, shape: Vec<i64>| TensorSpec {
            name: name.into(),
            datatype,
            shape,
        };
        ModelSignature {
            inputs: vec![
                spec("a", DataType::F32, vec![-1, 2]),
                spec("b", DataType::I64, vec![-1]),
            ],
            outputs: vec![spec("y", DataType::F32, vec![-1])],
        }
    }

    fn a(rows: usize) -> Tensor {
        Tensor::new("a", vec![rows, 2], TensorData::F32(vec![0.0; rows * 2])).unwrap()
    }

    fn b(rows: usize) -> Tensor {
        Tensor::new("b", vec![rows], TensorData::I64(vec![0; rows])).unwrap()
    }

    #[test]
    fn reorders_and_validates() {
        let ordered = order_inputs(&signature(), vec![b(3), a(3)]).unwrap();
        assert_eq!(ordered[0].name, "a");
        let err = |inputs| order_inputs(&signature(), inputs).unwrap_err().message;
        assert_eq!(
            err(vec![a(1)]),
            "missing input 'b'; the model takes 'a', 'b'"
        );
        assert!(err(vec![a(1), b(1), a(1)]).contains("given twice"));
        assert!(err(vec![a(2), b(3)]).contains("has 3 rows but input 'a' has 2"));
        let wrong_type = Tensor::new("b", vec![1], TensorData::F32(vec![0.0])).unwrap();
        assert_eq!(
            err(vec![a(1), wrong_type]),
            "input 'b': expected datatype INT64, got FP32"
        );
    }

    #[test]
    fn output_selection() {
        assert_eq!(select_outputs(&signature(), None).unwrap(), None);
        assert_eq!(
            select_outputs(&signature(), Some(&["y".to_string()])).unwrap(),
            Some(vec![0])
        );
        assert!(select_outputs(&signature(), Some(&["z".to_string()])).is_err());
        let twice = ["y".to_string(), "y".to_string()];
        assert_eq!(
            select_outputs(&signature(), Some(&twice))
                .unwrap_err()
                .message,
            "output 'y' is requested more than once; name each output once"
        );
    }

    #[test]
    fn response_size_is_capped() {
        let outputs = vec![a(4)];
        assert!(check_response_size(&outputs, 32).is_ok());
        let err = check_response_size(&outputs, 31).unwrap_err();
        assert_eq!(err.kind, sluice_core::error::ErrorKind::ResponseTooLarge);
        assert!(err.message.contains("server.max_response_size"));
    }

    #[test]
    fn unknown_outputs_are_named_briefly() {
        let long = "z".repeat(100_000);
        let err = select_outputs(&signature(), Some(std::slice::from_ref(&long))).unwrap_err();
        assert!(err.message.len() < 400, "{}", err.message.len());
    }
}
