//! Heap allocations per request: one batch-1 v2 JSON request for the bench churn model through
//! the whole HTTP path of a real server (socket, hyper, routing, decode, inference, metrics,
//! prediction log, encode, and the background threads' share), counted by a global allocator
//! that wraps the one the `sluice` binary uses. The client is a plain blocking socket with
//! buffers made up front, so every allocation counted is the server's.
//!
//! Prints allocations and allocated bytes per request for the defaults (file prediction log
//! with inputs), the log off, and the model run on its worker threads (`inline_max_us = 0`).
//!
//!     cargo bench -p sluice --bench alloc_per_request

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice::config::Config;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Built with `ALLOC_SYSTEM=1` in the environment: the C library's malloc instead of
/// mimalloc, so that heaptrack (which hooks malloc) can say where the allocations come from.
const SYSTEM: bool = option_env!("ALLOC_SYSTEM").is_some();

struct Counting;

// SAFETY: every call is passed straight to mimalloc, which upholds `GlobalAlloc`'s contract;
// the counters are plain atomics and never allocate.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's layout is passed on unchanged.
        unsafe {
            if SYSTEM {
                std::alloc::System.alloc(layout)
            } else {
                mimalloc::MiMalloc.alloc(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from `alloc`/`realloc` above, with this layout.
        unsafe {
            if SYSTEM {
                std::alloc::System.dealloc(ptr, layout)
            } else {
                mimalloc::MiMalloc.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: as in `alloc`.
        unsafe {
            if SYSTEM {
                std::alloc::System.alloc_zeroed(layout)
            } else {
                mimalloc::MiMalloc.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new as u64, Ordering::Relaxed);
        // SAFETY: as in `dealloc`; `new` is the caller's.
        unsafe {
            if SYSTEM {
                std::alloc::System.realloc(ptr, layout, new)
            } else {
                mimalloc::MiMalloc.realloc(ptr, layout, new)
            }
        }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Requests counted per setting: the full count under `cargo bench`, a smoke run under
/// `cargo test --all-targets` (which runs benches without `--bench`); `ALLOC_REQUESTS` sets it.
fn requests_per_run() -> usize {
    if let Some(n) = std::env::var("ALLOC_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        n
    } else if std::env::args().any(|a| a == "--bench") {
        20_000
    } else {
        300
    }
}

/// A keep-alive HTTP/1.1 client that allocates nothing per request.
struct Client {
    stream: TcpStream,
    request: Vec<u8>,
    buffer: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr, body: &[u8]) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut request = format!(
            "POST /v2/models/churn/infer HTTP/1.1\r\nhost: {addr}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        Client {
            stream,
            request,
            buffer: vec![0; 64 << 10],
        }
    }

    /// Sends the request and reads the whole answer; returns its status.
    fn call(&mut self) -> u16 {
        self.stream.write_all(&self.request).expect("write");
        let mut filled = 0;
        loop {
            let n = self.stream.read(&mut self.buffer[filled..]).expect("read");
            assert!(n > 0, "server closed the connection");
            filled += n;
            let got = &self.buffer[..filled];
            let Some(head_end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = &got[..head_end];
            let length = content_length(head).expect("content-length");
            if filled >= head_end + 4 + length {
                return parse_status(head);
            }
        }
    }
}

fn content_length(head: &[u8]) -> Option<usize> {
    head.split(|&b| b == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        if !line[..colon].eq_ignore_ascii_case(b"content-length") {
            return None;
        }
        std::str::from_utf8(&line[colon + 1..])
            .ok()?
            .trim()
            .parse()
            .ok()
    })
}

fn parse_status(head: &[u8]) -> u16 {
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn config(repo: &Path, log_dir: &Path, log: bool, inline: bool) -> Config {
    let mut config = Config::default();
    config.server.host = "127.0.0.1".into();
    config.server.http_port = 0;
    config.server.grpc_port = 0;
    config.server.metrics_port = 0;
    config.repository.path = repo.to_path_buf();
    config.repository.poll_interval = None;
    config.runtime.instances = 2;
    config.runtime.allow_ort = false;
    if !inline {
        config.runtime.inline_max_us = 0;
    }
    config.prediction_log.file.path = log_dir.join("predictions.jsonl");
    config.prediction_log.file.events_path = log_dir.join("events.jsonl");
    if !log {
        config.prediction_log.sink = sluice::predlog::SinkChoice::None;
    }
    config
}

fn measure(label: &str, config: Config, body: &[u8]) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = runtime
        .block_on(sluice::Server::start(config))
        .expect("server starts");
    let mut client = Client::connect(server.http_addr, body);
    for _ in 0..200 {
        assert_eq!(client.call(), 200);
    }
    let n = requests_per_run();
    let (allocations, bytes) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    for _ in 0..n {
        assert_eq!(client.call(), 200);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations;
    let bytes = BYTES.load(Ordering::Relaxed) - bytes;
    println!(
        "{label:44} {:7.1} allocations/request {:9.0} bytes/request  ({n} requests)",
        allocations as f64 / n as f64,
        bytes as f64 / n as f64
    );
    drop(client);
    server.shutdown();
    drop(server);
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
}

fn main() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bench");
    let body = std::fs::read(fixtures.join("churn_request_b1.json")).expect("request");
    // Only churn: the count is for one model, and mlp would need ONNX Runtime or tract.
    let repo = tempfile::tempdir().expect("tempdir");
    let version = repo.path().join("churn/1");
    std::fs::create_dir_all(&version).expect("repo");
    std::fs::copy(
        fixtures.join("repo/churn/1/model.onnx"),
        version.join("model.onnx"),
    )
    .expect("model");
    let logs = tempfile::tempdir().expect("tempdir");
    measure(
        "churn b1, defaults (file log with inputs)",
        config(repo.path(), logs.path(), true, true),
        &body,
    );
    measure(
        "churn b1, prediction_log.sink = none",
        config(repo.path(), logs.path(), false, true),
        &body,
    );
    measure(
        "churn b1, defaults, run on the workers",
        config(repo.path(), logs.path(), true, false),
        &body,
    );
}
