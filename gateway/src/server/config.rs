//! The `[server]` and `[admin]` config sections: listeners, limits, shutdown, and who may change
//! models.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_core::units::{byte_size, human_duration};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token that mutating calls (load, unload, traffic) must present. The
    /// `SLUICE_ADMIN_TOKEN` environment variable wins over it. With no token at all, mutations
    /// are accepted from loopback clients only.
    pub token: Option<String>,
    /// File holding the token (its first line), e.g. a mounted Kubernetes secret.
    pub token_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address every listener binds to.
    pub host: String,
    /// KServe v2 / V1 REST port (0 picks a free port).
    pub http_port: u16,
    /// KServe v2 gRPC port (0 picks a free port).
    pub grpc_port: u16,
    /// Prometheus metrics port (0 picks a free port).
    pub metrics_port: u16,
    /// Largest accepted request body, e.g. "8MiB"; larger bodies get 413.
    #[serde(with = "byte_size")]
    pub max_body_size: u64,
    /// Largest answer, in bytes of output tensors, e.g. "32MiB"; a request whose outputs
    /// would be larger is answered 413 (gRPC RESOURCE_EXHAUSTED) instead.
    #[serde(with = "byte_size")]
    pub max_response_size: u64,
    /// Inference requests in progress at once, across all models and protocols; more are
    /// refused at once with 503 + Retry-After.
    pub max_concurrent_requests: usize,
    /// Longest a request may take, queueing included, before it is answered with 504.
    #[serde(with = "human_duration")]
    pub request_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish before exit.
    #[serde(with = "human_duration")]
    pub drain_timeout: Duration,
    /// Timeouts and limits of client connections (`[server.connections]`).
    pub connections: super::connections::ConnectionConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: default_host(),
            http_port: 8000,
            grpc_port: 8001,
            metrics_port: 8002,
            max_body_size: 8 * 1024 * 1024,
            // Four times the body limit: outputs are rarely larger than inputs, and a request
            // cannot multiply its answer past it.
            max_response_size: 32 * 1024 * 1024,
            max_concurrent_requests: 4096,
            request_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            connections: Default::default(),
        }
    }
}

/// All interfaces, as Triton does; bind to 127.0.0.1 to keep sluice private to the host.
fn default_host() -> String {
    "0.0.0.0".to_string()
}

impl ServerConfig {
    /// Every problem with this section, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let s = self;
        let ports = [
            ("server.http_port", s.http_port),
            ("server.grpc_port", s.grpc_port),
            ("server.metrics_port", s.metrics_port),
        ];
        for (i, (name_a, a)) in ports.iter().enumerate() {
            for (name_b, b) in &ports[i + 1..] {
                if *a != 0 && a == b {
                    problems.push(format!("{name_a} and {name_b} are both {a}"));
                }
            }
        }
        if s.host.parse::<std::net::IpAddr>().is_err() {
            problems.push(format!(
                "server.host: '{}' is not an IP address (e.g. 0.0.0.0 or 127.0.0.1)",
                s.host
            ));
        }
        if s.max_concurrent_requests == 0 {
            problems.push("server.max_concurrent_requests must be at least 1".into());
        }
        if s.max_body_size == 0 {
            problems.push("server.max_body_size must be greater than 0".into());
        }
        if s.request_timeout.is_zero() {
            problems.push("server.request_timeout must be greater than 0".into());
        }
        if s.max_response_size == 0 {
            problems.push("server.max_response_size must be greater than 0".into());
        }
        problems.extend(s.connections.problems());
        problems
    }
}

impl AdminConfig {
    /// Every problem with this section, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.token.as_deref().is_some_and(str::is_empty) {
            problems.push("admin.token is empty: remove it or set a secret".into());
        }
        if let Some(file) = &self.token_file
            && !file.is_file()
        {
            problems.push(format!(
                "admin.token_file: {} does not exist",
                file.display()
            ));
        }
        problems
    }
}
