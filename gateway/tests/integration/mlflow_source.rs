//! An MLflow Model Registry as a model source, against a real tracking server the test starts
//! (`mlflow server` from the test virtualenv, sqlite backend, artifacts served by the server):
//! versions registered through MLflow's REST API, the `champion` alias moved, and sluice
//! following it: v2 rolled out under the guard and tagged promoted; a corrupt v3 refused and a
//! random-weights v4 rolled back, each tagged and the alias restored; a second model followed
//! through a signed webhook (and bad signatures refused); a version with no ONNX file named
//! as such. One server serves every step (it takes 15-30 s to start).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sluice::sources::MlflowSourceConfig;
use sluice::sources::mlflow::webhook;
use sluice_runtime::RuntimeChoice;

use crate::common::kafka::free_port;
use crate::common::services::{ServiceGroup, venv_tool, wait_ready};
use crate::common::*;

const SECRET: &str = "hook-secret";
const HOOK_PATH: &str = "/admin/v1/sources/mlflow/webhook";

struct Mlflow {
    _group: ServiceGroup,
    base: String,
    http: reqwest::Client,
}

impl Mlflow {
    async fn start(dir: &Path) -> Option<Mlflow> {
        let tool = venv_tool("mlflow")?;
        let port = free_port();
        let mut command = std::process::Command::new(tool);
        command
            .args(["server", "--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(dir.join("artifacts"))
            .args(["--workers", "1"])
            // Deliveries to sluice on loopback over plain HTTP.
            .env("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https")
            .env("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")
            // MLflow caches the webhook list for 60 s: the one created after the first alias
            // was set would go unused for a minute.
            .env("MLFLOW_WEBHOOK_CACHE_TTL", "1");
        let log = dir.join("mlflow.log");
        let group = ServiceGroup::spawn("mlflow server", command, &log);
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        wait_ready(&format!("{base}/health"), Duration::from_secs(90), &log).await;
        println!(
            "mlflow server ready in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Some(Mlflow {
            _group: group,
            base,
            http: reqwest::Client::new(),
        })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}/api/2.0{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("mlflow reachable");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "mlflow {path}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path_and_query: &str) -> Value {
        self.call(reqwest::Method::GET, path_and_query, None).await
    }

    /// A run whose `model/` artifact folder holds `files`, registered as the model's next
    /// version (as `mlflow.onnx.log_model` + `register_model` leave it).
    async fn register(&self, model: &str, files: &[(&str, Vec<u8>)]) -> u64 {
        let run = self
            .post("/mlflow/runs/create", json!({"experiment_id": "0"}))
            .await;
        let info = &run["run"]["info"];
        let artifact_uri = info["artifact_uri"].as_str().unwrap();
        let path = artifact_uri.trim_start_matches("mlflow-artifacts:/");
        for (name, bytes) in files {
            let url = format!(
                "{}/api/2.0/mlflow-artifacts/artifacts/{path}/model/{name}",
                self.base
            );
            let status = self
                .http
                .put(url)
                .body(bytes.clone())
                .send()
                .await
                .unwrap()
                .status();
            assert!(status.is_success(), "upload {name}: {status}");
        }
        let created = self
            .post(
                "/mlflow/model-versions/create",
                json!({"name": model, "source": format!("{artifact_uri}/model"),
                       "run_id": info["run_id"]}),
            )
            .await;
        created["model_version"]["version"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    async fn set_alias(&self, model: &str, version: u64) {
        self.post(
            "/mlflow/registered-models/alias",
            json!({"name": model, "alias": "champion", "version": version.to_string()}),
        )
        .await;
    }

    async fn alias(&self, model: &str) -> u64 {
        let answer = self
            .get(&format!(
                "/mlflow/registered-models/alias?name={model}&alias=champion"
            ))
            .await;
        answer["model_version"]["version"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    async fn tags(&self, model: &str, version: u64) -> BTreeMap<String, String> {
        let answer = self
            .get(&format!(
                "/mlflow/model-versions/get?name={model}&version={version}"
            ))
            .await;
        answer["model_version"]["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["key"].as_str().unwrap().to_string(),
                    t["value"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

/// A model folder as `mlflow.onnx.log_model` writes it: `MLmodel` and the file.
fn logged(file: &'static str, bytes: Vec<u8>) -> Vec<(&'static str, Vec<u8>)> {
    let mlmodel = b"flavors:\n  onnx:\n    onnx_version: 1.17.0\n    data: model.onnx\n";
    vec![("MLmodel", mlmodel.to_vec()), (file, bytes)]
}

fn bench_model(version: u64) -> Vec<u8> {
    std::fs::read(bench_repo().join(format!("mlp/{version}/model.onnx"))).unwrap()
}

fn source(tracking_uri: &str, model: &str) -> MlflowSourceConfig {
    toml::from_str(&format!(
        "tracking_uri = '{tracking_uri}'\nmodel = '{model}'\nalias = 'champion'\n"
    ))
    .unwrap()
}

/// Requests from a few clients in a loop, each answer's version recorded with when it came:
/// about 100 a second, enough for the guard, light enough not to weigh on the tests that run
/// beside this one.
const CLIENTS: usize = 2;

struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(Instant, String)>>>,
}

impl Load {
    fn start(server: &TestServer, model: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let rows = Arc::new(mlp_sample_rows());
        let url = server.url(&format!("/v2/models/{model}/infer"));
        let tasks = (0..CLIENTS)
            .map(|client| {
                let (stop, rows, url) = (Arc::clone(&stop), Arc::clone(&rows), url.clone());
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    let mut answers = Vec::new();
                    let mut i = client;
                    while !stop.load(Ordering::Relaxed) {
                        let row = &rows[i % rows.len()];
                        i += CLIENTS;
                        let body = json!({"inputs": [{"name": "input", "shape": [1, 64],
                                          "datatype": "FP32", "data": row}]});
                        if let Ok(response) = http.post(&url).json(&body).send().await
                            && let Ok(answer) = response.json::<Value>().await
                            && let Some(version) = answer["model_version"].as_str()
                        {
                            answers.push((Instant::now(), version.to_string()));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    answers
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn stop(self) -> Vec<(Instant, String)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.unwrap());
        }
        all.sort_by_key(|(at, _)| *at);
        all
    }
}

async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < timeout,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

async fn serving(server: &TestServer, model: &str) -> Option<u64> {
    let (_, view) = server.get(&format!("/admin/v1/models/{model}")).await;
    view["serving_version"].as_u64()
}

async fn source_view(server: &TestServer, name: &str) -> Value {
    let (_, body) = server.get("/admin/v1/sources").await;
    body["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no source {name} in {body:#}"))
}

async fn answered_by(server: &TestServer, model: &str) -> Option<String> {
    let request = std::fs::read(fixtures().join("bench/mlp_request_b1.json")).unwrap();
    let (status, body) = server
        .post(&format!("/v2/models/{model}/infer"), request)
        .await;
    (status == 200).then(|| body["model_version"].as_str().unwrap_or("").to_string())
}

/// Posts a webhook delivery to sluice, signed with `secret` at `timestamp`.
async fn deliver(server: &TestServer, secret: &str, timestamp: u64, body: &str) -> (u16, Value) {
    let timestamp = timestamp.to_string();
    let signature = webhook::sign(secret, "delivery-1", &timestamp, body.as_bytes());
    let response = server
        .client
        .post(server.url(HOOK_PATH))
        .header("content-type", "application/json")
        .header("X-MLflow-Delivery-Id", "delivery-1")
        .header("X-MLflow-Timestamp", &timestamp)
        .header("X-MLflow-Signature", signature)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sluice_follows_an_mlflow_alias_rolls_out_and_writes_back() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(mlflow) = Mlflow::start(scratch.path()).await else {
        eprintln!(
            "SKIPPED: mlflow source: no mlflow in the test virtualenv (scripts/python-deps.sh)"
        );
        return;
    };
    for model in ["digits", "digits_hooked"] {
        mlflow
            .post("/mlflow/registered-models/create", json!({"name": model}))
            .await;
        let v1 = mlflow
            .register(model, &logged("model.onnx", bench_model(1)))
            .await;
        mlflow.set_alias(model, v1).await;
    }
    // A registry without aliases: a stage is followed instead.
    mlflow
        .post(
            "/mlflow/registered-models/create",
            json!({"name": "digits_staged"}),
        )
        .await;
    let s1 = mlflow
        .register("digits_staged", &logged("model.onnx", bench_model(1)))
        .await;
    mlflow
        .post(
            "/mlflow/model-versions/transition-stage",
            json!({"name": "digits_staged", "version": s1.to_string(), "stage": "Production",
                   "archive_existing_versions": false}),
        )
        .await;

    // `digits` is polled and rolled out under the guard; `digits_hooked` is polled hourly, so
    // only a webhook brings its changes, and it has no [rollout] table (a new version becomes
    // primary at once).
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("digits")).unwrap();
    std::fs::write(
        repo.path().join("digits/model.toml"),
        // A loaded test machine's latency is no verdict here: the predictions are.
        "[rollout]\nsteps = [50, 100]\nstep_duration = \"1s\"\nmin_requests = 30\n\
         max_p99_ratio = 50.0\nwatch_period = \"1s\"\n",
    )
    .unwrap();
    let mut config = test_config(repo.path(), RuntimeChoice::Tract);
    config.rollout.tick = Duration::from_millis(100);
    config.runtime.batching = sluice_runtime::Batching::OFF;
    let mut polled = source(&mlflow.base, "digits");
    polled.poll_interval = Duration::from_millis(500);
    polled.restore_alias = true;
    let mut hooked = source(&mlflow.base, "digits_hooked");
    hooked.poll_interval = Duration::from_secs(3600);
    hooked.webhook_secret = Some(SECRET.into());
    let mut staged: MlflowSourceConfig = toml::from_str(&format!(
        "tracking_uri = '{}'\nmodel = 'digits_staged'\nstage = 'Production'\n\
         poll_interval = '500ms'\n",
        mlflow.base
    ))
    .unwrap();
    staged.serve_as = Some("staged".into());
    config.registry.mlflow = vec![polled, hooked, staged];
    let server = TestServer::start(config).await;
    for model in ["digits", "digits_hooked", "staged"] {
        eventually(Duration::from_secs(20), "v1 served", || async {
            serving(&server, model).await == Some(1)
        })
        .await;
    }
    let v1_dir = repo.path().join("digits/1");
    assert!(v1_dir.join("model.onnx").is_file() && v1_dir.join(".sluice-source.json").is_file());
    mlflow
        .post(
            "/mlflow/webhooks",
            json!({"name": "sluice", "url": server.url(HOOK_PATH), "secret": SECRET,
                   "events": [{"entity": "MODEL_VERSION_ALIAS", "action": "CREATED"}]}),
        )
        .await;

    // v2: the alias moves, sluice polls, rolls it out under load, promotes it, tags it.
    let load = Load::start(&server, "digits");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v2 = mlflow
        .register("digits", &logged("model.onnx", bench_model(2)))
        .await;
    let moved = Instant::now();
    mlflow.set_alias("digits", v2).await;
    loop {
        let (_, rollout) = server.get("/admin/v1/models/digits/rollout").await;
        if rollout["version"] == v2 && rollout["state"] == "promoted" {
            break;
        }
        if moved.elapsed() > Duration::from_secs(30) {
            let (_, model) = server.get("/admin/v1/models/digits").await;
            panic!("v2 not promoted within 30 s: {rollout:#}\n{model:#}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted = moved.elapsed();
    eventually(Duration::from_secs(10), "v2 tagged promoted", || async {
        mlflow
            .tags("digits", v2)
            .await
            .get("sluice.rollout")
            .map(String::as_str)
            == Some("promoted")
    })
    .await;
    assert_eq!(serving(&server, "digits").await, Some(v2));

    // v3: a corrupt file is refused, tagged, and the alias goes back to v2.
    let v3 = mlflow
        .register(
            "digits",
            &logged("model.onnx", b"not an onnx model".to_vec()),
        )
        .await;
    mlflow.set_alias("digits", v3).await;
    eventually(
        Duration::from_secs(15),
        "v3 refused and the alias restored",
        || async { mlflow.alias("digits").await == v2 },
    )
    .await;
    let tags = mlflow.tags("digits", v3).await;
    assert_eq!(
        tags.get("sluice.rollout").map(String::as_str),
        Some("refused"),
        "{tags:?}"
    );
    println!("v3 refused: {}", tags["sluice.rollout.reason"]);
    assert!(!repo.path().join("digits/3").exists());
    let view = source_view(&server, "mlflow:digits@champion").await;
    assert!(view["refused"]["digits/3"].is_string(), "{view:#}");

    // v4: random weights load but predict differently: rolled back by the guard, tagged
    // with the reason, the alias restored, the folder gone.
    let random = std::fs::read(fixtures().join("candidates/random/model.onnx")).unwrap();
    let v4 = mlflow
        .register("digits", &logged("model.onnx", random))
        .await;
    mlflow.set_alias("digits", v4).await;
    eventually(
        Duration::from_secs(30),
        "v4 rolled back, tagged, alias restored",
        || async {
            mlflow
                .tags("digits", v4)
                .await
                .get("sluice.rollout")
                .map(String::as_str)
                == Some("rolled_back")
                && mlflow.alias("digits").await == v2
        },
    )
    .await;
    let answers = load.stop().await;
    let reason = mlflow.tags("digits", v4).await["sluice.rollout.reason"].clone();
    println!("v4 rolled back: {reason}");
    assert!(reason.contains("predictions"), "{reason}");
    assert!(!repo.path().join("digits/4").exists());
    assert_eq!(serving(&server, "digits").await, Some(v2));
    let first_v2 = answers
        .iter()
        .find(|(at, version)| *at > moved && version == &v2.to_string())
        .expect("v2 answered")
        .0;
    println!(
        "poll (500 ms): alias move -> first request answered by v2 in {:.2} s; promoted after \
         {:.1} s",
        first_v2.duration_since(moved).as_secs_f64(),
        promoted.as_secs_f64()
    );

    // The webhook: bad deliveries are refused and change nothing.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = r#"{"entity": "model_version_alias", "action": "created", "data": {"name": "digits_hooked", "alias": "champion", "version": "2"}}"#;
    let (status, answer) = deliver(&server, "wrong-secret", now, body).await;
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("signature"),
        "{answer}"
    );
    let (status, answer) = deliver(&server, SECRET, now - 3600, body).await;
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("old"),
        "{answer}"
    );
    let (status, _) = server.post(HOOK_PATH, body).await;
    assert_eq!(status, 401);
    let (status, answer) = deliver(&server, SECRET, now, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["sources"], json!(["mlflow:digits_hooked@champion"]));
    assert_eq!(serving(&server, "digits_hooked").await, Some(1));

    // ... and MLflow's own delivery brings the new version at once (the poll is hourly).
    let h2 = mlflow
        .register("digits_hooked", &logged("model.onnx", bench_model(2)))
        .await;
    let moved = Instant::now();
    mlflow.set_alias("digits_hooked", h2).await;
    let took = eventually(Duration::from_secs(15), "webhook: v2 answering", || async {
        answered_by(&server, "digits_hooked").await == Some(h2.to_string())
    })
    .await;
    println!(
        "webhook: alias move -> first request answered by v2 in {:.2} s",
        took.as_secs_f64()
    );
    assert!(moved.elapsed() < Duration::from_secs(15));

    // A registry version without an ONNX file says so, and changes nothing.
    let h3 = mlflow
        .register("digits_hooked", &logged("model.pkl", b"pickle".to_vec()))
        .await;
    mlflow.set_alias("digits_hooked", h3).await;
    let name = "mlflow:digits_hooked@champion";
    eventually(Duration::from_secs(15), "h3 refused", || async {
        source_view(&server, name).await["refused"]["digits_hooked/3"].is_string()
    })
    .await;
    let view = source_view(&server, name).await;
    let reason = view["refused"]["digits_hooked/3"].as_str().unwrap();
    assert!(reason.contains("has no ONNX file"), "{reason}");
    assert!(reason.contains("model.pkl"), "{reason}");
    assert_eq!(serving(&server, "digits_hooked").await, Some(h2));
    let (_, model) = server.get("/admin/v1/models/digits_hooked").await;
    assert_eq!(model["sources"][0]["name"], name, "{model:#}");

    // `sluice ctl sources` shows both.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["ctl", "--url", &server.base, "sources"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("mlflow:digits@champion") && text.contains(name),
        "{text}"
    );

    // The registry goes away: serving goes on, the error shows in the model's view and the
    // source's gauge, and the checks back off.
    drop(mlflow);
    eventually(Duration::from_secs(20), "the outage reported", || async {
        let (_, model) = server.get("/admin/v1/models/digits").await;
        model["sources"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unreachable"))
    })
    .await;
    assert_eq!(answered_by(&server, "digits").await, Some(v2.to_string()));
    let up = server
        .metric("sluice_source_up{source=\"mlflow:digits@champion\"}")
        .await;
    assert_eq!(up, Some(0.0));
    server.stop().await;
}
