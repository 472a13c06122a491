//! Atomic hot swap under load: versions are swapped 50 times while clients send requests
//! continuously. No request fails, every answer comes from the version published at the time,
//! and swapped-out versions are freed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::common::*;
use sluice_runtime::RuntimeChoice;

const TOKEN: &str = "swap-token";
const SWAPS: u64 = 50;
const CLIENTS: usize = 4;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// One client observation: the swap epoch before sending and after the answer, and the answer.
struct Observation {
    epoch_before: u64,
    epoch_after: u64,
    status: u16,
    version: Option<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_fail_nothing_and_leak_nothing() {
    let repo = scratch_repo(&bench_repo(), &[("mlp", 1), ("mlp", 2)]);
    let policy = |v: u64| {
        std::fs::write(
            repo.path().join("mlp/model.toml"),
            format!("version_policy = {{ specific = [{v}] }}\n"),
        )
        .unwrap();
    };
    policy(1);
    let runtime = if ort_available() {
        RuntimeChoice::Ort
    } else {
        RuntimeChoice::Tract
    };
    let mut config = test_config(repo.path(), runtime);
    config.admin.token = Some(TOKEN.into());
    let server = Arc::new(TestServer::start(config).await);

    // Epochs: even = stable, serving published[epoch / 2]; odd = a swap is in progress.
    let epoch = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let body = std::fs::read(fixtures().join("bench/mlp_request_b1.json")).unwrap();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (server, epoch, stop, body) =
            (server.clone(), epoch.clone(), stop.clone(), body.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Acquire) {
                let epoch_before = epoch.load(Ordering::SeqCst);
                let (status, answer) = server.post("/v2/models/mlp/infer", body.clone()).await;
                let epoch_after = epoch.load(Ordering::SeqCst);
                let version = answer["model_version"]
                    .as_str()
                    .and_then(|v| v.parse().ok());
                seen.push(Observation {
                    epoch_before,
                    epoch_after,
                    status,
                    version,
                });
            }
            seen
        }));
    }

    let mut published = vec![1u64];
    let swap = |to: u64| {
        let (server, epoch) = (server.clone(), epoch.clone());
        policy(to);
        async move {
            epoch.fetch_add(1, Ordering::SeqCst);
            let (status, report) = server
                .admin_post("/v2/repository/models/mlp/load", Some(TOKEN))
                .await;
            assert_eq!(status, 200, "{report}");
            epoch.fetch_add(1, Ordering::SeqCst);
            // A stable period between swaps, for requests that start and end within it.
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    };
    // Warm-up swaps so the allocator reaches its working size before memory is measured.
    for i in 0..10u64 {
        let to = if i % 2 == 0 { 2 } else { 1 };
        swap(to).await;
        published.push(to);
    }
    let rss_before = rss_bytes();
    for i in 0..SWAPS {
        let to = if i % 2 == 0 { 2 } else { 1 };
        swap(to).await;
        published.push(to);
    }
    stop.store(true, Ordering::Release);
    let mut observations = Vec::new();
    for client in clients {
        observations.extend(client.await.unwrap());
    }

    assert!(
        observations.len() > 200,
        "too little traffic to prove anything: {}",
        observations.len()
    );
    let failed = observations.iter().filter(|o| o.status != 200).count();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during swaps",
        observations.len()
    );
    let mut checked = 0;
    for o in &observations {
        if o.epoch_before == o.epoch_after && o.epoch_before % 2 == 0 {
            let expected = published[(o.epoch_before / 2) as usize];
            assert_eq!(
                o.version,
                Some(expected),
                "answer from a version not published at epoch {}",
                o.epoch_before
            );
            checked += 1;
        } else {
            // Across swaps, any version published during the request may answer, nothing else.
            let window =
                &published[(o.epoch_before / 2) as usize..=(o.epoch_after.div_ceil(2)) as usize];
            assert!(
                o.version.is_some_and(|v| window.contains(&v)),
                "version {:?} not in {window:?}",
                o.version
            );
        }
    }
    assert!(
        checked > 100,
        "too few requests fell in stable periods: {checked}"
    );

    // Every swapped-out version was freed: only the one serving version is alive.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while sluice::repository::alive_versions() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} versions alive",
            sluice::repository::alive_versions()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let growth = rss_bytes().saturating_sub(rss_before);
    assert!(
        growth < 64 << 20,
        "RSS grew by {} MiB over {SWAPS} swaps",
        growth >> 20
    );
    println!(
        "{} requests during {SWAPS} swaps, 0 failed; RSS growth {} KiB",
        observations.len(),
        growth >> 10
    );
}
