//! KServe v2 over gRPC, end to end: real sockets, real models, the client generated from our
//! own `.proto`. (Compatibility with the official Triton client is `triton_client.rs`.)

use crate::common::*;
use serde_json::Value;
use sluice_core::tensor::{DataType, TensorData};
use sluice_protocol::grpc::proto;
use sluice_protocol::raw;
use sluice_runtime::RuntimeChoice;
use tonic::Code;
use tonic::transport::Channel;

use proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};

type Client = GrpcInferenceServiceClient<Channel>;

async fn client(server: &TestServer) -> Client {
    let addr = server.server.as_ref().expect("running").grpc_addr;
    GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("gRPC connect")
}

/// A v2 JSON fixture request as a gRPC request with raw inputs.
fn raw_request(model: &str, version: &str, fixture: &Value) -> proto::ModelInferRequest {
    let mut request = proto::ModelInferRequest {
        model_name: model.into(),
        model_version: version.into(),
        ..Default::default()
    };
    for input in fixture["inputs"].as_array().unwrap() {
        let data: Vec<f32> = input["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        request.inputs.push(InferInputTensor {
            name: input["name"].as_str().unwrap().into(),
            datatype: "FP32".into(),
            shape: serde_json::from_value(input["shape"].clone()).unwrap(),
            ..Default::default()
        });
        request
            .raw_input_contents
            .push(raw::encode(&TensorData::F32(data)).into());
    }
    request
}

/// The response's raw outputs as v2 JSON, for `assert_outputs_match`.
fn as_json(response: &proto::ModelInferResponse) -> Value {
    let outputs: Vec<Value> = response
        .outputs
        .iter()
        .zip(&response.raw_output_contents)
        .map(|(output, bytes)| {
            let datatype = DataType::parse(&output.datatype).unwrap();
            let shape: Vec<usize> = output.shape.iter().map(|&d| d as usize).collect();
            let data = raw::decode(&output.name, datatype, &shape, bytes).unwrap();
            let data = match data {
                TensorData::F32(v) => serde_json::json!(v),
                TensorData::I64(v) => serde_json::json!(v),
                other => panic!("unexpected output type {other:?}"),
            };
            serde_json::json!({
                "name": output.name, "datatype": output.datatype, "shape": output.shape, "data": data
            })
        })
        .collect();
    serde_json::json!({ "outputs": outputs })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_models_match_onnxruntime() {
    for runtime in runtimes() {
        let server = TestServer::start(test_config(&bench_repo(), runtime)).await;
        let mut grpc = client(&server).await;
        let cases = [
            ("churn", "", "churn", 1),
            ("mlp", "1", "mlp", 1),
            ("mlp", "2", "mlp_v2", 2),
            ("mlp", "", "mlp_v2", 2),
        ];
        for (model, version, stem, answered_by) in cases {
            if runtime == RuntimeChoice::Tract && model == "churn" {
                continue;
            }
            for batch in [1, 8] {
                let fixture =
                    read_json(&fixtures().join(format!("bench/{stem}_request_b{batch}.json")));
                let expected =
                    read_json(&fixtures().join(format!("bench/{stem}_expected_b{batch}.json")));
                let mut request = raw_request(model, version, &fixture);
                request.id = format!("req-{batch}");
                let response = grpc.model_infer(request).await.expect("infer").into_inner();
                let context = format!("{runtime:?} {model} v{version} b{batch}");
                assert_eq!(response.model_name, model, "{context}");
                assert_eq!(response.model_version, answered_by.to_string(), "{context}");
                assert_eq!(response.id, format!("req-{batch}"), "{context}");
                assert!(response.outputs.iter().all(|o| o.contents.is_none()));
                assert_outputs_match(&as_json(&response), &expected, 1e-5, &context);
            }
        }
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_contents_and_output_selection() {
    let server = TestServer::start(test_config(&bench_repo(), RuntimeChoice::Tract)).await;
    let mut grpc = client(&server).await;
    let fixture = read_json(&fixtures().join("bench/mlp_request_b1.json"));
    let expected = read_json(&fixtures().join("bench/mlp_expected_b1.json"));
    let mut request = raw_request("mlp", "1", &fixture);
    let bytes = request.raw_input_contents.remove(0);
    let values = raw::decode("input", DataType::F32, &[64], &bytes).unwrap();
    let TensorData::F32(values) = values else {
        unreachable!()
    };
    request.inputs[0].contents = Some(proto::InferTensorContents {
        fp32_contents: values,
        ..Default::default()
    });
    request.outputs = vec![InferRequestedOutputTensor {
        name: "probabilities".into(),
        ..Default::default()
    }];
    let response = grpc.model_infer(request).await.expect("infer").into_inner();
    assert_eq!(response.outputs.len(), 1);
    assert_eq!(response.outputs[0].name, "probabilities");
    let mut expected = expected;
    expected["outputs"]
        .as_array_mut()
        .unwrap()
        .retain(|o| o["name"] == "probabilities");
    assert_outputs_match(&as_json(&response), &expected, 1e-5, "typed mlp");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_our_code_and_message() {
    let server = TestServer::start(test_config(&bench_repo(), RuntimeChoice::Tract)).await;
    let mut grpc = client(&server).await;
    let fixture = read_json(&fixtures().join("bench/mlp_request_b1.json"));

    let mut unknown = raw_request("mlp", "", &fixture);
    unknown.model_name = "nope".into();
    let status = grpc.model_infer(unknown).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "unknown model 'nope'");

    let mut bad_shape = raw_request("mlp", "", &fixture);
    bad_shape.inputs[0].shape = vec![2, 32];
    let status = grpc.model_infer(bad_shape).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "input 'input': expected shape [-1,64], got [2,32]"
    );

    let mut short = raw_request("mlp", "", &fixture);
    short.raw_input_contents[0] = short.raw_input_contents[0].slice(4..);
    let status = grpc.model_infer(short).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("input 'input': shape [1,64] of FP32 needs 256 bytes"),
        "{}",
        status.message()
    );

    let mut no_version = raw_request("mlp", "7", &fixture);
    no_version.id = String::new();
    let status = grpc.model_infer(no_version).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("no loaded version 7"),
        "{}",
        status.message()
    );

    // Not ready is an answer, not an error, as Triton gives it.
    let ready = grpc
        .model_ready(proto::ModelReadyRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .expect("model ready")
        .into_inner();
    assert!(!ready.ready);

    // tract refuses the churn tree ensemble: the index says so, with the reason.
    let index = grpc
        .repository_index(proto::RepositoryIndexRequest::default())
        .await
        .expect("index")
        .into_inner();
    let churn = index
        .models
        .iter()
        .find(|m| m.name == "churn")
        .expect("churn listed");
    assert_eq!(churn.state, "UNAVAILABLE");
    assert!(
        churn.reason.contains("mislabelled by tract"),
        "{}",
        churn.reason
    );
    let loaded: Vec<(&str, &str, &str)> = index
        .models
        .iter()
        .filter(|m| m.name == "mlp")
        .map(|m| (m.name.as_str(), m.version.as_str(), m.state.as_str()))
        .collect();
    assert_eq!(loaded, [("mlp", "1", "READY"), ("mlp", "2", "READY")]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_readiness_and_shutdown() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let server = TestServer::start(test_config(&bench_repo(), RuntimeChoice::Tract)).await;
    let addr = server.server.as_ref().unwrap().grpc_addr;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "inference.GRPCInferenceService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(status.status(), ServingStatus::Serving, "{service:?}");
    }
    let live = GrpcInferenceServiceClient::new(channel)
        .server_live(proto::ServerLiveRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(live.live);
    // After shutdown the listener drains and closes: new calls fail.
    server.stop().await;
    let after = GrpcInferenceServiceClient::connect(format!("http://{addr}")).await;
    assert!(
        after.is_err(),
        "the gRPC port still accepts connections after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_calls_need_the_admin_token() {
    let mut config = test_config(&bench_repo(), RuntimeChoice::Tract);
    config.admin.token = Some("s3cret".into());
    let server = TestServer::start(config).await;
    let mut grpc = client(&server).await;
    let unload = |token: Option<&str>| {
        let mut request = tonic::Request::new(proto::RepositoryModelUnloadRequest {
            model_name: "mlp".into(),
            ..Default::default()
        });
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().unwrap();
            request.metadata_mut().insert("authorization", value);
        }
        request
    };
    let status = grpc
        .repository_model_unload(unload(None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = grpc
        .repository_model_unload(unload(Some("guess")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "wrong admin token");

    grpc.repository_model_unload(unload(Some("s3cret")))
        .await
        .expect("unload with the token");
    let ready = |name: &str| proto::ModelReadyRequest {
        name: name.into(),
        version: String::new(),
    };
    assert!(
        !grpc
            .model_ready(ready("mlp"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );

    let mut load = tonic::Request::new(proto::RepositoryModelLoadRequest {
        model_name: "mlp".into(),
        ..Default::default()
    });
    load.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    grpc.repository_model_load(load)
        .await
        .expect("load with the token");
    assert!(
        grpc.model_ready(ready("mlp"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    server.stop().await;
}

/// A sticky key in the call's metadata (or a string request parameter) keeps a caller on one
/// side of a canary split, as the same header does over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_keys_work_over_grpc() {
    let repo = scratch_repo(&bench_repo(), &[("mlp", 1), ("mlp", 2)]);
    let mut config = test_config(repo.path(), RuntimeChoice::Tract);
    config.admin.token = Some("t".into());
    let server = TestServer::start(config).await;
    let policy = serde_json::json!({"primary": "1", "canary": {"version": "2", "weight": 50.0},
                                    "sticky_key": "x-user-id"});
    let response = server
        .client
        .put(server.url("/admin/v1/models/mlp/traffic"))
        .bearer_auth("t")
        .json(&policy)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let mut grpc = client(&server).await;
    let fixture = read_json(&fixtures().join("bench/mlp_request_b1.json"));
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..40 {
        let key = format!("user-{user}");
        let mut versions = std::collections::BTreeSet::new();
        for attempt in 0..4 {
            let mut message = raw_request("mlp", "", &fixture);
            let request = if attempt % 2 == 0 {
                let mut request = tonic::Request::new(message);
                request
                    .metadata_mut()
                    .insert("x-user-id", key.parse().unwrap());
                request
            } else {
                message.parameters.insert(
                    "x-user-id".into(),
                    proto::InferParameter {
                        parameter_choice: Some(
                            proto::infer_parameter::ParameterChoice::StringParam(key.clone()),
                        ),
                    },
                );
                tonic::Request::new(message)
            };
            let response = grpc.model_infer(request).await.expect("infer").into_inner();
            versions.insert(response.model_version);
        }
        assert_eq!(
            versions.len(),
            1,
            "{key} moved between versions: {versions:?}"
        );
        seen.extend(versions);
    }
    assert_eq!(seen.len(), 2, "a 50% split over 40 keys used only {seen:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_the_request_id_in_the_message_and_the_metadata() {
    let server = TestServer::start(test_config(&bench_repo(), RuntimeChoice::Tract)).await;
    let mut grpc = client(&server).await;
    let fixture = read_json(&fixtures().join("bench/mlp_request_b1.json"));
    let mut request = raw_request("mlp", "1", &fixture);
    request.id = "grpc-7".into();
    let response = grpc.model_infer(request).await.expect("infer");
    assert_eq!(
        response.metadata().get("sluice-request-id").unwrap(),
        "grpc-7"
    );
    assert_eq!(response.into_inner().id, "grpc-7");
    // Without one, sluice makes one and says it both ways.
    let response = grpc
        .model_infer(raw_request("mlp", "1", &fixture))
        .await
        .expect("infer");
    let header = response
        .metadata()
        .get("sluice-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let id = response.into_inner().id;
    assert_eq!((id.len(), header), (29, id.clone()));
    server.stop().await;
}
