//! Memory stays flat under load with nobody scraping `/metrics` (issue 20): the `sluice`
//! binary serves a few hundred thousand inferences, pipelined over keep-alive connections, and
//! its resident set (VmRSS from /proc) may not grow past a bound. Not timed: the request count
//! is fixed and nothing asserts how long it took. `SLUICE_SOAK_REQUESTS` sets the count;
//! `SLUICE_SOAK_SCRAPE=1` scrapes every 5 s, for comparison.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Requests per connection write: pipelined, so the client costs little next to the server.
const PIPELINE: usize = 32;
const CONNECTIONS: usize = 8;

struct Sluice {
    child: Child,
    http: String,
    metrics: String,
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Sluice {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    // tract: the same memory behaviour on every machine, ONNX Runtime or not. The outcome
    // index is bounded by count: here small enough that the warm-up fills it, so that what is
    // measured after is what does not stay bounded.
    std::fs::write(
        &config,
        "[server]\nhost = \"127.0.0.1\"\n[runtime]\ndefault = \"tract\"\ninstances = 1\n\
         [prediction_log]\nsink = \"none\"\n[drift]\nenabled = false\n\
         [outcomes]\nmax_predictions = 10000\n",
    )
    .unwrap();
    let mut child = serve_command(&config, &examples_repo()).spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let field = |line: &str, key: &str| {
        line.split(key)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
    };
    for line in stdout.lines() {
        let line = line.unwrap();
        if let (Some(http), Some(metrics)) = (field(&line, "http="), field(&line, "metrics=")) {
            return Sluice {
                child,
                http,
                metrics,
            };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("sluice exited before it was ready");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Sends `batches` pipelined batches on one connection, reading every answer (all 200).
async fn drive(addr: String, request: std::sync::Arc<Vec<u8>>, batches: usize) {
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let burst: Vec<u8> = request.repeat(PIPELINE);
    let mut buf = Vec::with_capacity(1 << 16);
    let mut chunk = vec![0u8; 1 << 16];
    for _ in 0..batches {
        stream.write_all(&burst).await.unwrap();
        let mut answered = 0;
        while answered < PIPELINE {
            // Parse whole answers off the front of the buffer.
            while let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&buf[..end]).unwrap();
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap();
                if buf.len() < end + 4 + length {
                    break;
                }
                buf.drain(..end + 4 + length);
                answered += 1;
            }
            if answered == PIPELINE {
                break;
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "server closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn run(addr: &str, request: &std::sync::Arc<Vec<u8>>, requests: usize) {
    let batches = requests / (PIPELINE * CONNECTIONS);
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| tokio::spawn(drive(addr.to_string(), request.clone(), batches)))
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_without_a_scraper() {
    let requests: usize = std::env::var("SLUICE_SOAK_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120_000);
    let scrape = std::env::var("SLUICE_SOAK_SCRAPE").is_ok_and(|v| v == "1");
    let sluice = start();
    let pid = sluice.child.id();
    // The cheapest inference: the smallest example model, one row.
    let body = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 64],
        "datatype": "FP32", "data": vec![0.0; 64]}]})
    .to_string();
    let request = std::sync::Arc::new(
        format!(
            "POST /v2/models/digits/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    );
    let scraper = scrape.then(|| {
        let url = format!("http://{}/metrics", sluice.metrics);
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let _ = client.get(&url).send().await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    });
    // Warm up: allocator pools, connection buffers, every series created once.
    run(&sluice.http, &request, 20_000).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before = rss_kib(pid);
    let started = Instant::now();
    let step = requests / 4;
    for quarter in 1..=4 {
        run(&sluice.http, &request, step).await;
        println!(
            "after {} requests ({:?}): VmRSS {} KiB (start {before} KiB)",
            quarter * step,
            started.elapsed(),
            rss_kib(pid)
        );
    }
    // Past one upkeep interval, as a quiet server would be.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = rss_kib(pid);
    if let Some(scraper) = scraper {
        scraper.abort();
    }
    let growth = after.saturating_sub(before);
    println!(
        "{requests} requests, scraper {}: VmRSS {before} -> {after} KiB (+{growth} KiB, {:.1} \
         bytes/request)",
        if scrape { "every 5 s" } else { "none" },
        growth as f64 * 1024.0 / requests as f64
    );
    // Unbounded samples cost 80-100 bytes a request (+10 MiB here); allocator noise is ~1 MiB.
    assert!(
        growth < 6 * 1024,
        "VmRSS grew by {growth} KiB over {requests} requests with no scraper"
    );
}
