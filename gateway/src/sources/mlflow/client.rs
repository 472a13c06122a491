//! The few calls of MLflow's REST API the registry source makes: where an alias (or stage)
//! points, where a version's files are, the files themselves through the tracking server's
//! artifact proxy (`mlflow-artifacts`), and the tags and alias it writes back.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::sources::config::MlflowSourceConfig;

/// A failed call: `Transient` may pass (unreachable, timed out, 5xx, auth) and is retried with
/// backoff; `Refused` is the registry's final word on this version (no such version, no
/// artifacts) and is not retried until the alias moves.
#[derive(Debug)]
pub enum MlflowError {
    Transient(String),
    Refused(String),
}

impl std::fmt::Display for MlflowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MlflowError::Transient(m) | MlflowError::Refused(m) => f.write_str(m),
        }
    }
}

/// One entry of an artifact folder.
#[derive(Debug, Clone)]
pub struct ArtifactFile {
    pub name: String,
    pub is_dir: bool,
    pub size: Option<u64>,
}

enum Auth {
    None,
    Bearer(String),
    Basic(String, String),
}

pub struct MlflowClient {
    http: reqwest::Client,
    base: String,
    auth: Auth,
}

/// MLflow answers `{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": ...}`.
fn error_text(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            let code = v["error_code"].as_str().unwrap_or("").to_string();
            let message = v["message"].as_str()?.to_string();
            Some(format!("{code}: {message}"))
        })
        .unwrap_or_else(|| sluice_core::error::truncate(body.trim(), 200).to_string())
}

impl MlflowClient {
    pub fn new(config: &MlflowSourceConfig) -> Result<MlflowClient, String> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let auth = match (
            config
                .username
                .clone()
                .or_else(|| env("MLFLOW_TRACKING_USERNAME")),
            config
                .password
                .clone()
                .or_else(|| env("MLFLOW_TRACKING_PASSWORD")),
            env("MLFLOW_TRACKING_TOKEN"),
        ) {
            (_, _, Some(token)) => Auth::Bearer(token),
            (Some(user), Some(password), None) => Auth::Basic(user, password),
            _ => Auth::None,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Room for a big model file; registry calls answer in milliseconds.
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| format!("cannot build the MLflow client: {e}"))?;
        Ok(MlflowClient {
            http,
            base: config.tracking_uri.trim_end_matches('/').to_string(),
            auth,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.auth {
            Auth::None => request,
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::Basic(user, password) => request.basic_auth(user, Some(password)),
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, MlflowError> {
        let response = request.send().await.map_err(|e| {
            MlflowError::Transient(format!("{what}: {} unreachable: {e}", self.base))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let message = format!("{what}: MLflow answered {status}: {}", error_text(&body));
        // A client error is the registry's answer about this entity (no such version, no
        // such alias: MLflow answers 400 INVALID_PARAMETER_VALUE for those); auth, overload
        // and a restarting server may pass.
        let transient =
            matches!(status.as_u16(), 401 | 403 | 408 | 429) || !status.is_client_error();
        if !transient {
            Err(MlflowError::Refused(message))
        } else {
            Err(MlflowError::Transient(message))
        }
    }

    async fn get_json(
        &self,
        path: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<Value, MlflowError> {
        let response = self
            .send(self.request(reqwest::Method::GET, path).query(query), what)
            .await?;
        response
            .json()
            .await
            .map_err(|e| MlflowError::Transient(format!("{what}: unreadable answer: {e}")))
    }

    async fn post_json(&self, path: &str, body: &Value, what: &str) -> Result<Value, MlflowError> {
        let response = self
            .send(self.request(reqwest::Method::POST, path).json(body), what)
            .await?;
        Ok(response.json().await.unwrap_or(Value::Null))
    }

    /// The version an alias points to; `None` when the alias is not set.
    pub async fn alias_version(
        &self,
        model: &str,
        alias: &str,
    ) -> Result<Option<u64>, MlflowError> {
        let answer = self
            .get_json(
                "/api/2.0/mlflow/registered-models/alias",
                &[("name", model), ("alias", alias)],
                "get alias",
            )
            .await;
        match answer {
            Ok(v) => Ok(version_of(&v["model_version"])),
            Err(MlflowError::Refused(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The newest version in a stage; `None` when the stage is empty.
    pub async fn stage_version(
        &self,
        model: &str,
        stage: &str,
    ) -> Result<Option<u64>, MlflowError> {
        let answer = self
            .post_json(
                "/api/2.0/mlflow/registered-models/get-latest-versions",
                &json!({ "name": model, "stages": [stage] }),
                "get latest versions",
            )
            .await?;
        Ok(answer["model_versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(version_of)
            .max())
    }

    /// Where the version's files are (`model-versions/get-download-uri`).
    pub async fn download_uri(&self, model: &str, version: u64) -> Result<String, MlflowError> {
        let version = version.to_string();
        let answer = self
            .get_json(
                "/api/2.0/mlflow/model-versions/get-download-uri",
                &[("name", model), ("version", &version)],
                "get download uri",
            )
            .await?;
        answer["artifact_uri"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| {
                MlflowError::Refused("get download uri: no artifact_uri in the answer".into())
            })
    }

    /// The entries of an artifact folder (a path below the proxy's root).
    pub async fn list_artifacts(&self, path: &str) -> Result<Vec<ArtifactFile>, MlflowError> {
        let answer = self
            .get_json(
                "/api/2.0/mlflow-artifacts/artifacts",
                &[("path", path)],
                "list artifacts",
            )
            .await?;
        Ok(answer["files"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| {
                Some(ArtifactFile {
                    name: f["path"].as_str()?.to_string(),
                    is_dir: f["is_dir"].as_bool().unwrap_or(false),
                    size: f["file_size"]
                        .as_u64()
                        .or_else(|| f["file_size"].as_str()?.parse().ok()),
                })
            })
            .collect())
    }

    /// Downloads an artifact file into `target`; answers its size.
    pub async fn download(&self, path: &str, target: &Path) -> Result<u64, MlflowError> {
        let url_path = format!("/api/2.0/mlflow-artifacts/artifacts/{path}");
        let mut response = self
            .send(
                self.request(reqwest::Method::GET, &url_path),
                "download artifact",
            )
            .await?;
        let broke = |e: String| MlflowError::Transient(format!("download of {path}: {e}"));
        let mut file = tokio::fs::File::create(target)
            .await
            .map_err(|e| broke(e.to_string()))?;
        let mut written = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| broke(e.to_string()))? {
            written += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| broke(e.to_string()))?;
        }
        file.sync_all().await.map_err(|e| broke(e.to_string()))?;
        Ok(written)
    }

    pub async fn set_tag(
        &self,
        model: &str,
        version: u64,
        key: &str,
        value: &str,
    ) -> Result<(), MlflowError> {
        self.post_json(
            "/api/2.0/mlflow/model-versions/set-tag",
            &json!({ "name": model, "version": version.to_string(), "key": key, "value": value }),
            "set tag",
        )
        .await
        .map(|_| ())
    }

    pub async fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: u64,
    ) -> Result<(), MlflowError> {
        self.post_json(
            "/api/2.0/mlflow/registered-models/alias",
            &json!({ "name": model, "alias": alias, "version": version.to_string() }),
            "set alias",
        )
        .await
        .map(|_| ())
    }
}

/// A model version's number (MLflow sends it as a string).
fn version_of(v: &Value) -> Option<u64> {
    v["version"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v["version"].as_u64())
}

/// The proxy path of an `mlflow-artifacts:` URI (`mlflow-artifacts:/0/abc/artifacts/model`,
/// also with an authority: `mlflow-artifacts://host:5000/0/...`).
pub fn proxy_path(artifact_uri: &str) -> Result<String, String> {
    let Some(rest) = artifact_uri.strip_prefix("mlflow-artifacts:") else {
        return Err(format!(
            "the version's files are at '{artifact_uri}', which sluice cannot read: serve \
             artifacts through the tracking server (mlflow server --artifacts-destination ...; \
             URIs 'mlflow-artifacts:/...')"
        ));
    };
    let path = match rest.strip_prefix("//") {
        Some(with_authority) => with_authority.split_once('/').map_or("", |(_, p)| p),
        None => rest,
    };
    Ok(path.trim_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_uris() {
        assert_eq!(
            proxy_path("mlflow-artifacts:/0/abc/artifacts/model").unwrap(),
            "0/abc/artifacts/model"
        );
        assert_eq!(
            proxy_path("mlflow-artifacts://mlflow:5000/1/models/m-1/artifacts").unwrap(),
            "1/models/m-1/artifacts"
        );
        let err = proxy_path("s3://bucket/x").unwrap_err();
        assert!(err.contains("artifacts-destination"), "{err}");
    }

    #[test]
    fn mlflow_errors_are_read() {
        assert_eq!(
            error_text(r#"{"error_code":"RESOURCE_DOES_NOT_EXIST","message":"no alias"}"#),
            "RESOURCE_DOES_NOT_EXIST: no alias"
        );
        assert_eq!(error_text("  bad gateway "), "bad gateway");
        assert_eq!(version_of(&json!({"version": "3"})), Some(3));
    }
}
