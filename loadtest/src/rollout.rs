//! The rollout scenario (`--rollout VERSION`): start a guarded rollout through sluice's admin
//! API, keep the load on, and print the rollout's timeline as it happens (state, step, weight,
//! canary and primary error rate and p99, the last decision) until the guard has finished with
//! it: promoted and watched, rolled back, or aborted.
//!
//! The load runs in back-to-back one-second runs whose recorders are merged, so that it can
//! stop as soon as the rollout ends without teaching every connection loop a second way to stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::time::Instant;

use crate::run::{Config, Summary};
use crate::stats::Recorder;

/// Length of each load run between checks for the rollout's end.
const CHUNK: Duration = Duration::from_secs(1);

/// What the scenario needs besides the load itself.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// `http://host:port`, from the load's URL.
    pub base: String,
    pub model: String,
    /// The rollout request body (`version` and any overrides).
    pub request: Value,
    /// Bearer token for the admin API.
    pub token: Option<String>,
    /// How often to print a timeline line.
    pub interval: Duration,
    /// Give up (and abort the rollout) after this long.
    pub limit: Duration,
}

/// The model named in a KServe v2 or V1 URL path (`/v2/models/{m}/...`, `/v1/models/{m}:...`).
pub fn model_from_path(path: &str) -> Option<String> {
    let rest = path.split("/models/").nth(1)?;
    let name = rest.split(['/', ':']).next()?;
    (!name.is_empty()).then(|| name.to_string())
}

struct Admin {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<String>,
}

impl Admin {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = body
            .map(serde_json::to_vec)
            .transpose()?
            .unwrap_or_default();
        let response = self
            .client
            .request(request.body(Full::new(Bytes::from(body)))?)
            .await
            .with_context(|| format!("admin call {path}"))?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }
}

/// Runs the scenario; returns what the load measured over the whole rollout.
pub async fn run(config: &Config, scenario: Scenario) -> anyhow::Result<Summary> {
    let admin = Admin {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base: scenario.base.clone(),
        token: scenario.token.clone(),
    };
    let rollouts = format!("/admin/v1/models/{}/rollouts", scenario.model);
    let rollout = format!("/admin/v1/models/{}/rollout", scenario.model);
    let (status, answer) = admin
        .call(Method::POST, &rollouts, Some(&scenario.request))
        .await?;
    if status != 201 {
        bail!(
            "the rollout was refused ({status}): {}",
            answer["error"].as_str().unwrap_or(&answer.to_string())
        );
    }
    println!("{}", header_line());
    let began = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load_until(config.clone(), Arc::clone(&done)));
    let mut last = answer;
    let mut ticks = tokio::time::interval(scenario.interval);
    loop {
        ticks.tick().await;
        let (status, now) = admin.call(Method::GET, &rollout, None).await?;
        if status == 200 {
            last = now;
        }
        println!("{}", line(began.elapsed(), &last));
        if last["phase"] == "finished" {
            break;
        }
        if began.elapsed() > scenario.limit {
            eprintln!(
                "the rollout did not finish within {}; aborting it",
                humantime::format_duration(scenario.limit)
            );
            admin.call(Method::DELETE, &rollout, None).await?;
            break;
        }
    }
    done.store(true, Ordering::Relaxed);
    let summary = load.await.context("the load task failed")??;
    println!();
    for decision in last["timeline"].as_array().into_iter().flatten() {
        println!(
            "  {:>7.2}s  {:<10} {:>6}%  {}",
            decision["elapsed_s"].as_f64().unwrap_or(0.0),
            decision["decision"].as_str().unwrap_or(""),
            decision["weight"],
            decision["reason"].as_str().unwrap_or("")
        );
    }
    println!(
        "\nrollout {}: {}\n",
        last["state"].as_str().unwrap_or("?"),
        last["reason"].as_str().unwrap_or("")
    );
    Ok(summary)
}

/// Back-to-back runs of `CHUNK` until `done`, merged.
async fn load_until(config: Config, done: Arc<AtomicBool>) -> anyhow::Result<Summary> {
    let chunk = Config {
        warmup: Duration::ZERO,
        duration: CHUNK,
        progress: false,
        ..config.clone()
    };
    let began = Instant::now();
    let mut merged = Recorder::new(config.timeout)?;
    while !done.load(Ordering::Relaxed) {
        let summary = crate::run(&chunk).await?;
        merged.merge(&summary.recorder)?;
    }
    // Whole milliseconds read better in the report than nanoseconds.
    let elapsed = Duration::from_millis(began.elapsed().as_millis() as u64);
    Ok(Summary {
        recorder: merged,
        duration: elapsed,
        connections: config.connections,
    })
}

fn header_line() -> String {
    format!(
        "{:>8}  {:<12} {:>5} {:>7}  {:>22}  {:>22}  last decision",
        "elapsed", "state", "step", "weight", "canary err / p99 / n", "primary err / p99 / n"
    )
}

fn side(v: &Value) -> String {
    if v.is_null() {
        return format!("{:>22}", "-");
    }
    let rate = v["error_rate"]
        .as_f64()
        .map_or("-".into(), |r| format!("{:.2}%", r * 100.0));
    let p99 = v["p99_ms"]
        .as_f64()
        .map_or("-".into(), |p| format!("{p:.2}ms"));
    format!(
        "{:>22}",
        format!("{rate} / {p99} / {}", v["requests"].as_u64().unwrap_or(0))
    )
}

/// One timeline line from a `GET .../rollout` answer.
fn line(elapsed: Duration, r: &Value) -> String {
    let step = match (r["step_index"].as_u64(), r["plan"]["steps"].as_array()) {
        (Some(i), Some(steps)) => format!("{}/{}", i + 1, steps.len()),
        _ => r["phase"].as_str().unwrap_or("-").to_string(),
    };
    let comparison = &r["comparison"];
    let last = r["timeline"]
        .as_array()
        .and_then(|t| t.last())
        .map(|d| {
            format!(
                "{}: {}",
                d["decision"].as_str().unwrap_or(""),
                d["reason"].as_str().unwrap_or("")
            )
        })
        .unwrap_or_default();
    format!(
        "{:>7.2}s  {:<12} {:>5} {:>6.1}%  {}  {}  {last}",
        elapsed.as_secs_f64(),
        r["state"].as_str().unwrap_or("-"),
        step,
        r["weight"].as_f64().unwrap_or(0.0),
        side(&comparison["canary"]),
        side(&comparison["primary"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_model_in_a_url_path() {
        assert_eq!(
            model_from_path("/v2/models/mlp/infer").as_deref(),
            Some("mlp")
        );
        assert_eq!(
            model_from_path("/v2/models/mlp/versions/1/infer").as_deref(),
            Some("mlp")
        );
        assert_eq!(
            model_from_path("/v1/models/churn:predict").as_deref(),
            Some("churn")
        );
        assert_eq!(model_from_path("/v2/health/ready"), None);
    }

    #[test]
    fn formats_a_timeline_line() {
        let r = serde_json::json!({
            "state": "progressing", "phase": "step", "step_index": 1, "weight": 25.0,
            "plan": {"steps": [5, 25, 50, 100]},
            "comparison": {
                "canary": {"error_rate": 0.0, "p99_ms": 1.28, "requests": 312},
                "primary": {"error_rate": 0.001, "p99_ms": 1.15, "requests": 2210}
            },
            "timeline": [{"decision": "step", "reason": "step 1 of 4 passed"}]
        });
        let text = line(Duration::from_millis(3250), &r);
        assert!(
            text.starts_with("   3.25s  progressing    2/4   25.0%"),
            "{text}"
        );
        assert!(text.contains("0.00% / 1.28ms / 312"), "{text}");
        assert!(text.contains("0.10% / 1.15ms / 2210"), "{text}");
        assert!(text.ends_with("step: step 1 of 4 passed"), "{text}");
    }
}
