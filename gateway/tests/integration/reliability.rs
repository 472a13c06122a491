//! Hostile input and hostile clients (issue 20), end to end: the exact bad requests, over real
//! sockets, against real models. Timings are liveness bounds only ("closed before 10 s when the
//! timeout is 1 s"), never measurements.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};
use sluice::config::Config;
use sluice_protocol::grpc::proto;
use sluice_runtime::RuntimeChoice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use proto::grpc_inference_service_client::GrpcInferenceServiceClient;

fn config(runtime: RuntimeChoice) -> Config {
    test_config(&examples_repo(), runtime)
}

/// A config whose connection limits a test can outlast in a second or two.
fn short_timeouts() -> Config {
    let mut config = config(RuntimeChoice::Tract);
    let c = &mut config.server.connections;
    c.header_read_timeout = Duration::from_secs(1);
    c.body_read_timeout = Duration::from_secs(1);
    c.idle_timeout = Duration::from_secs(1);
    config
}

fn digits(shape: Value, data: Value) -> Value {
    json!({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}]})
}

fn error_of(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not a JSON error: {body}"))
}

/// Reads until the server closes the connection (or `limit` passes); returns what it sent and
/// how long the close took.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, started.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "connection still open after {limit:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// The JSON body of a raw HTTP/1 answer.
fn raw_json(answer: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(answer);
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflowing_shapes_are_refused_before_the_runtime() {
    for runtime in runtimes() {
        let server = TestServer::start(config(runtime)).await;
        let twelve = json!(vec![0.0; 12]);
        let sixty_four = json!(vec![0.0; 64]);
        // The requests, and the same wrap-arounds at the model's own width (where the
        // old check let them through to the runtime).
        let cases = [
            digits(json!([4611686018427387905u64, 12]), twelve),
            digits(json!([4611686018427387904u64, 12]), json!([])),
            digits(json!([1u64 << 58, 64]), json!([])),
            digits(json!([4611686018427387905u64, 64]), sixty_four),
            digits(json!([1u64 << 62, 0]), json!([])),
        ];
        for request in cases {
            let (status, body) = server.post_json("/v2/models/digits/infer", &request).await;
            let message = error_of(&body);
            assert_eq!(status, 400, "{runtime:?} {request}: {body}");
            assert!(
                message.starts_with("input 'input': shape [") && message.contains("too large"),
                "{message}"
            );
        }
        // Binary framing and gRPC raw contents take the same shape check.
        let header = json!({"inputs": [{"name": "input", "shape": [1u64 << 58, 64],
            "datatype": "FP32", "parameters": {"binary_data_size": 0}}]})
        .to_string();
        let response = server
            .client
            .post(server.url("/v2/models/digits/infer"))
            .header("inference-header-content-length", header.len())
            .body(header)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert!(error_of(&body).contains("too large"), "{body}");

        let mut grpc = grpc_client(&server).await;
        let request = proto::ModelInferRequest {
            model_name: "digits".into(),
            inputs: vec![proto::model_infer_request::InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![4611686018427387904, 64],
                ..Default::default()
            }],
            raw_input_contents: vec![Vec::new().into()],
            ..Default::default()
        };
        let status = grpc.model_infer(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("too large"),
            "{}",
            status.message()
        );
        // Still serving.
        let (status, _) = server
            .post_json(
                "/v2/models/digits/infer",
                &digits(json!([1, 64]), json!(vec![0.0; 64])),
            )
            .await;
        assert_eq!(status, 200);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_cannot_be_amplified() {
    let mut cfg = config(RuntimeChoice::Tract);
    // digits answers 8 bytes of label and 40 of probabilities per row.
    cfg.server.max_response_size = 400;
    let server = TestServer::start(cfg).await;
    let row = json!(vec![1.0; 64]);
    let mut twice = digits(json!([1, 64]), row.clone());
    twice["outputs"] = json!([{"name": "label"}, {"name": "label"}]);
    let (status, body) = server.post_json("/v2/models/digits/infer", &twice).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        error_of(&body),
        "output 'label' is requested more than once; name each output once"
    );

    let (status, _) = server
        .post_json("/v2/models/digits/infer", &digits(json!([1, 64]), row))
        .await;
    assert_eq!(status, 200);
    // 4 rows: 192 raw bytes, but more as JSON text; 16 rows: 768 raw bytes.
    for rows in [4, 16] {
        let (status, body) = server
            .post_json(
                "/v2/models/digits/infer",
                &digits(json!([rows, 64]), json!(vec![1.0; 64 * rows])),
            )
            .await;
        assert_eq!(status, 413, "{body}");
        assert!(
            error_of(&body).contains("server.max_response_size"),
            "{body}"
        );
    }
    let mut grpc = grpc_client(&server).await;
    let request = proto::ModelInferRequest {
        model_name: "digits".into(),
        inputs: vec![proto::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![16, 64],
            ..Default::default()
        }],
        raw_input_contents: vec![vec![0u8; 16 * 64 * 4].into()],
        ..Default::default()
    };
    let status = grpc.model_infer(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json_and_says_what_was_wrong() {
    let server = TestServer::start(config(RuntimeChoice::Tract)).await;
    // A path segment that is not UTF-8 once percent-decoded (axum's rejection was text/plain).
    let response = server
        .client
        .get(server.url("/v2/models/%ff%fe/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "{response:?}"
    );
    let body: Value = response.json().await.unwrap();
    assert!(error_of(&body).contains("path"), "{body}");

    // serde's own words named internal types.
    let (status, body) = server
        .post_json("/v2/models/digits/infer", &json!({"inputs": ["x"]}))
        .await;
    assert_eq!(status, 400);
    let message = error_of(&body);
    assert!(
        !message.contains("V2Input") && message.contains("an input: an object with"),
        "{message}"
    );
    let (status, body) = server
        .post_json("/v2/models/digits/infer", &json!(["x"]))
        .await;
    assert_eq!(status, 400);
    assert!(!error_of(&body).contains("V2Request"), "{body}");

    let (status, body) = server
        .get("/v2/models/digits/versions/99999999999999999999/ready")
        .await;
    assert_eq!(status, 400);
    assert!(error_of(&body).contains("is too large"), "{body}");

    let mut row = vec![json!(0.0); 64];
    row[3] = json!(1e39);
    let (status, body) = server
        .post_json(
            "/v2/models/digits/infer",
            &digits(json!([1, 64]), json!(row)),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        error_of(&body).contains("input 'input': value 1e39 is out of range for FP32"),
        "{body}"
    );

    // hyper answers heads it cannot parse by itself; those answers are JSON too.
    let addr = server.server.as_ref().unwrap().http_addr;
    let huge_header = format!(
        "GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(100 << 10)
    );
    for (request, want) in [
        (b"GARBAGE \x01\r\n\r\n".to_vec(), 400),
        (huge_header.into_bytes(), 431),
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(&request).await;
        let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
        let (status, body) = raw_json(&answer);
        assert_eq!(status, want, "{body}");
        assert!(!error_of(&body).is_empty());
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_closed() {
    let server = TestServer::start(short_timeouts()).await;
    let addr = server.server.as_ref().unwrap().http_addr;

    // Slowloris: a request head a byte at a time is cut off, the 1 s header timeout counted
    // from its first byte.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let head = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-a: bbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let mut closed_after = None;
    for &byte in head.iter().cycle().take(200) {
        if slow.write_all(&[byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await
        {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("slowloris connection still open after 20 s");
    println!("slowloris connection closed after {closed_after:?} (header_read_timeout 1s)");
    assert!(closed_after < Duration::from_secs(10));

    // An idle kept-alive connection is closed after its request.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, idle_for) = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    println!("idle keep-alive connection closed after {idle_for:?} (idle_timeout 1s)");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));

    // A chunked body announcing 2^63 bytes is not waited on.
    let mut chunked = TcpStream::connect(addr).await.unwrap();
    chunked
        .write_all(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              transfer-encoding: chunked\r\n\r\n8000000000000000\r\n{\"inputs\":",
        )
        .await
        .unwrap();
    let (answer, cut_after) = read_until_closed(&mut chunked, Duration::from_secs(10)).await;
    println!("2^63-byte chunked body answered and closed after {cut_after:?}");
    let (status, body) = raw_json(&answer);
    assert!(status == 408 || status == 400, "{status} {body}");

    // The same holds for gRPC: an idle connection is closed.
    let mut grpc = grpc_client(&server).await;
    grpc.server_live(proto::ServerLiveRequest {}).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let metrics = server.metrics_text().await;
    for reason in ["header_timeout", "idle", "body_timeout"] {
        let series =
            format!("sluice_connections_closed_total{{listener=\"http\",reason=\"{reason}\"}}");
        assert!(
            series_value(&metrics, &series).is_some_and(|n| n >= 1.0),
            "{series} missing in\n{metrics}"
        );
    }
    assert!(
        series_value(
            &metrics,
            "sluice_connections_closed_total{listener=\"grpc\",reason=\"idle\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let mut cfg = config(RuntimeChoice::Tract);
    cfg.server.connections.max_connections = 4;
    let server = TestServer::start(cfg).await;
    let addr = server.server.as_ref().unwrap().http_addr;
    let live = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(live).await.unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        open.push(stream);
    }
    // Connection 5 is accepted by the kernel and closed by sluice without an answer.
    let mut fifth = TcpStream::connect(addr).await.unwrap();
    let _ = fifth.write_all(live).await;
    let (answer, closed_after) = read_until_closed(&mut fifth, Duration::from_secs(10)).await;
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    println!("connection over the cap closed after {closed_after:?}");
    // The open ones still work, and closing one makes room.
    open[0].write_all(live).await.unwrap();
    let mut buf = [0u8; 512];
    let n = open[0].read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = TcpStream::connect(addr).await.unwrap();
        let _ = again.write_all(live).await;
        let mut buf = [0u8; 512];
        if let Ok(n) = again.read(&mut buf).await
            && buf[..n].starts_with(b"HTTP/1.1 200")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = server.metrics_text().await;
    assert!(
        series_value(
            &metrics,
            "sluice_connections_closed_total{listener=\"http\",reason=\"over_limit\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_connections_open{listener=\"http\"}"));
    server.stop().await;
}

async fn grpc_client(server: &TestServer) -> GrpcInferenceServiceClient<tonic::transport::Channel> {
    let addr = server.server.as_ref().unwrap().grpc_addr;
    GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("gRPC connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_bounded_and_failed_loads_leave_nothing() {
    let server = TestServer::start(config(RuntimeChoice::Tract)).await;
    let mut grpc = grpc_client(&server).await;
    let long = "m".repeat(100_000);
    let request = proto::ModelInferRequest {
        model_name: long.clone(),
        ..Default::default()
    };
    let status = grpc.model_infer(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().len() < 1024, "{}", status.message().len());
    assert!(status.message().contains("at most 255 bytes"));
    let (status, body) = server
        .get(&format!("/v2/models/{}/ready", "m".repeat(10_000)))
        .await;
    assert_eq!(status, 404);
    assert!(error_of(&body).len() < 1024);

    // A load of a name that was never a model: 404, and no trace of it anywhere.
    let (status, body) = server
        .admin_post("/v2/repository/models/ghost-model/load", None)
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, models) = server.get("/admin/v1/models").await;
    assert_eq!(status, 200);
    assert!(!models.to_string().contains("ghost-model"), "{models}");
    assert!(!server.metrics_text().await.contains("ghost-model"));

    // Triton's load parameters: refused the same way on both protocols.
    let response = server
        .client
        .post(server.url("/v2/repository/models/digits/load"))
        .json(&json!({"parameters": {"config": "{}"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    let http_message = error_of(&body).to_string();
    let mut parameters = std::collections::HashMap::new();
    parameters.insert(
        "config".to_string(),
        proto::ModelRepositoryParameter {
            parameter_choice: Some(
                proto::model_repository_parameter::ParameterChoice::StringParam("{}".into()),
            ),
        },
    );
    let status = grpc
        .repository_model_load(proto::RepositoryModelLoadRequest {
            model_name: "digits".into(),
            parameters,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), http_message);
    // A plain load (no body, or no parameters) still works.
    let (status, body) = server
        .admin_post("/v2/repository/models/digits/load", None)
        .await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}
