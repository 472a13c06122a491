//! `--protocol grpc`: the same closed loop over KServe v2 gRPC (`ModelInfer`), one HTTP/2
//! connection per simulated client with one call in flight, so that its numbers compare with the
//! HTTP/1.1 mode's at the same `--connections`.
//!
//! The request is built once from the v2 JSON body given with `--body` (inputs become
//! `raw_input_contents`, as the official Triton client sends them) and the model and version in
//! the `--url` path (`/v2/models/{m}[/versions/{v}]/infer`); host and port are the gRPC
//! listener's. The messages are the server's own, generated once in `sluice-protocol` (a
//! leaf crate, so the load generator still links nothing of the server). Answers are not
//! decoded: the body is drained and `grpc-status` read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::progress::Progress;
use crate::run::{Config, Summary, Window};
use crate::stats::{ErrorKind, Recorder};
use sluice_protocol::grpc::proto::ModelInferRequest;
use sluice_protocol::grpc::proto::model_infer_request::InferInputTensor;

const METHOD_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

/// One `ModelInfer` call, framed and ready to be sent by every connection.
#[derive(Debug, Clone)]
pub struct GrpcTemplate {
    uri: Uri,
    /// The length-prefixed message: shared by every request, never copied.
    body: Bytes,
}

impl GrpcTemplate {
    /// Builds the call from the `--url` (whose path names the model) and a v2 JSON body.
    pub fn new(url: &Uri, v2_json: &[u8]) -> anyhow::Result<Self> {
        let (model, version) = model_from_path(url.path())?;
        let request = request_from_v2_json(model, version, v2_json)?;
        let message = request.encode_to_vec();
        let mut body = BytesMut::with_capacity(5 + message.len());
        // gRPC message framing: not compressed, then the length as a 4-byte big-endian integer.
        body.put_u8(0);
        body.put_u32(u32::try_from(message.len()).context("request message over 4 GiB")?);
        body.put_slice(&message);
        let authority = url.authority().context("--url has no host")?.clone();
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(METHOD_PATH)
            .build()
            .context("cannot build the gRPC URI")?;
        Ok(GrpcTemplate {
            uri,
            body: body.freeze(),
        })
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        request
    }
}

/// `/v2/models/{m}/infer` or `/v2/models/{m}/versions/{v}/infer`.
fn model_from_path(path: &str) -> anyhow::Result<(&str, &str)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["v2", "models", model, "infer"] => Ok((model, "")),
        ["v2", "models", model, "versions", version, "infer"] => Ok((model, version)),
        _ => bail!(
            "with --protocol grpc, the --url path names the model as \
             /v2/models/{{m}}[/versions/{{v}}]/infer, got {path}"
        ),
    }
}

/// A v2 JSON inference body as a `ModelInferRequest` with raw inputs.
fn request_from_v2_json(
    model: &str,
    version: &str,
    body: &[u8],
) -> anyhow::Result<ModelInferRequest> {
    let json: Value = serde_json::from_slice(body).context("--body is not v2 JSON")?;
    let inputs = json["inputs"]
        .as_array()
        .context("--body has no \"inputs\" array")?;
    let mut request = ModelInferRequest {
        model_name: model.to_owned(),
        model_version: version.to_owned(),
        ..Default::default()
    };
    for input in inputs {
        let name = input["name"].as_str().context("an input has no name")?;
        let datatype = input["datatype"]
            .as_str()
            .with_context(|| format!("input {name} has no datatype"))?;
        let shape: Vec<i64> = serde_json::from_value(input["shape"].clone())
            .with_context(|| format!("input {name}: bad shape"))?;
        let mut values = Vec::new();
        flatten(&input["data"], &mut values);
        let raw = raw_values(datatype, &values).with_context(|| format!("input {name}"))?;
        request.inputs.push(InferInputTensor {
            name: name.to_owned(),
            datatype: datatype.to_owned(),
            shape,
            ..Default::default()
        });
        request.raw_input_contents.push(Bytes::from(raw));
    }
    Ok(request)
}

fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        other => out.push(other),
    }
}

/// The raw little-endian layout of the KServe v2 protocol; BYTES with 4-byte length prefixes.
fn raw_values(datatype: &str, values: &[&Value]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    for value in values {
        let bad = || format!("value {value} does not fit {datatype}");
        match datatype {
            "FP32" => out.put_f32_le(value.as_f64().with_context(bad)? as f32),
            "FP64" => out.put_f64_le(value.as_f64().with_context(bad)?),
            "INT32" => out.put_i32_le(i32::try_from(value.as_i64().with_context(bad)?)?),
            "INT64" => out.put_i64_le(value.as_i64().with_context(bad)?),
            "BOOL" => out.put_u8(u8::from(value.as_bool().with_context(bad)?)),
            "BYTES" => {
                let text = value.as_str().with_context(bad)?;
                out.put_u32_le(u32::try_from(text.len())?);
                out.put_slice(text.as_bytes());
            }
            other => bail!("datatype {other} is not supported by --protocol grpc"),
        }
    }
    Ok(out)
}

/// Runs the load over gRPC: `connections` HTTP/2 connections, each with one call in flight.
pub async fn run(config: &Config, template: GrpcTemplate) -> anyhow::Result<Summary> {
    let template = Arc::new(template);
    let start = Instant::now() + config.warmup;
    let window = Window {
        start,
        end: start + config.duration,
    };
    let mut tasks = Vec::with_capacity(config.connections);
    let mut progress = Progress::default();
    for _ in 0..config.connections {
        let recorder = Recorder::new(config.timeout)?.with_live(progress.counter());
        tasks.push(tokio::spawn(run_connection(
            config.addr,
            Arc::clone(&template),
            window,
            config.timeout,
            recorder,
        )));
    }
    let printer = config.progress.then(|| progress.spawn(window));
    crate::run::summarize(config, tasks, printer).await
}

/// One connection's loop until the window ends, reconnecting when it breaks.
async fn run_connection(
    addr: SocketAddr,
    template: Arc<GrpcTemplate>,
    window: Window,
    timeout: Duration,
    mut recorder: Recorder,
) -> Recorder {
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let record = |recorder: &mut Recorder, kind| {
        if window.contains(Instant::now()) {
            recorder.error(kind);
        }
    };
    loop {
        let now = Instant::now();
        if now >= window.end {
            return recorder;
        }
        let deadline = (now + timeout).min(window.end);
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            match tokio::time::timeout_at(deadline, connect(addr)).await {
                Ok(Ok(fresh)) => sender = Some(fresh),
                _ => {
                    record(&mut recorder, ErrorKind::Connect);
                    // Do not hammer a server that is down.
                    tokio::time::sleep(Duration::from_millis(50).min(window.end - now)).await;
                    continue;
                }
            }
        }
        let Some(live) = sender.as_mut() else {
            continue;
        };
        let started = Instant::now();
        match tokio::time::timeout_at(deadline, call(live, template.request())).await {
            Ok(Ok(status)) => {
                let finished = Instant::now();
                if window.contains(finished) {
                    recorder.response(status, finished - started);
                }
            }
            Ok(Err(_)) => {
                record(&mut recorder, ErrorKind::Io);
                sender = None;
            }
            Err(_) if Instant::now() >= window.end => return recorder,
            Err(_) => record(&mut recorder, ErrorKind::Timeout),
        }
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the connection closes; a broken one shows up as a failed call.
        let _ = connection.await;
    });
    Ok(sender)
}

/// One call: the HTTP status a gRPC status corresponds to (200 for OK).
async fn call(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<StatusCode> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    if response.status() != StatusCode::OK {
        return Ok(response.status());
    }
    // A call that fails before any message is answered "trailers-only", status in the headers.
    let mut grpc_status = response.headers().get("grpc-status").cloned();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(trailers) = frame?.into_trailers() {
            grpc_status = trailers.get("grpc-status").cloned().or(grpc_status);
        }
    }
    let code = grpc_status
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
        .context("answer without grpc-status")?;
    Ok(http_equivalent(code))
}

/// gRPC status codes as the HTTP statuses a report counts (the usual gRPC-to-HTTP mapping).
fn http_equivalent(code: u16) -> StatusCode {
    match code {
        0 => StatusCode::OK,
        3 | 9 | 11 => StatusCode::BAD_REQUEST,
        5 => StatusCode::NOT_FOUND,
        4 => StatusCode::GATEWAY_TIMEOUT,
        7 => StatusCode::FORBIDDEN,
        8 => StatusCode::TOO_MANY_REQUESTS,
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        16 => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_raw_request_from_v2_json() {
        let url: Uri = "http://127.0.0.1:8001/v2/models/churn/versions/2/infer"
            .parse()
            .unwrap();
        let body = br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[[1,2.5]]},
                        {"name":"s","shape":[1],"datatype":"BYTES","data":["hi"]}]}"#;
        let template = GrpcTemplate::new(&url, body).unwrap();
        assert_eq!(template.uri.path(), METHOD_PATH);
        let length = u32::from_be_bytes(template.body[1..5].try_into().unwrap()) as usize;
        assert_eq!(template.body.len(), 5 + length);
        let request = ModelInferRequest::decode(&template.body[5..]).unwrap();
        assert_eq!(request.model_name, "churn");
        assert_eq!(request.model_version, "2");
        assert_eq!(request.inputs[0].shape, vec![1, 2]);
        let mut floats = Vec::new();
        floats.put_f32_le(1.0);
        floats.put_f32_le(2.5);
        assert_eq!(request.raw_input_contents[0], floats);
        assert_eq!(&request.raw_input_contents[1][..], b"\x02\x00\x00\x00hi");
    }

    #[test]
    fn the_url_names_the_model() {
        assert_eq!(model_from_path("/v2/models/m/infer").unwrap(), ("m", ""));
        assert!(model_from_path("/v1/models/m:predict").is_err());
        assert_eq!(http_equivalent(3), StatusCode::BAD_REQUEST);
        assert_eq!(http_equivalent(0), StatusCode::OK);
    }
}
