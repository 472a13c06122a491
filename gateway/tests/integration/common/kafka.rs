//! A real Kafka-protocol broker for tests: `tansu`, started on a free port with its own
//! SQLite file, stopped (and restartable on the same port and data) at will; and a consumer
//! that reads a whole topic back.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// Whether `tansu` can be run. CI sets `SLUICE_REQUIRE_KAFKA=1` so that a missing broker
/// fails the run instead of skipping the Kafka tests.
pub fn tansu_available() -> bool {
    let found = Command::new("tansu")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            !std::env::var("SLUICE_REQUIRE_KAFKA").is_ok_and(|v| v == "1"),
            "SLUICE_REQUIRE_KAFKA=1 but `tansu` is not on PATH (scripts/kafka.sh installs it)"
        );
        eprintln!("skipped: `tansu` is not on PATH");
    }
    found
}

/// A tansu broker process; killed on drop.
pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
    /// Holds the broker's SQLite file, which survives a stop and resume.
    dir: PathBuf,
    _scratch: tempfile::TempDir,
}

impl Tansu {
    pub fn start() -> Tansu {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut broker = Tansu {
            child: None,
            port,
            dir: dir.path().to_path_buf(),
            _scratch: dir,
        };
        broker.resume();
        broker
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and data, and waits until it accepts connections.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let child = Command::new("tansu")
            .arg("broker")
            .args(["--listener-url", &self.url()])
            .args(["--advertised-listener-url", &self.url()])
            // tansu reads the SQLite path relative to its working directory.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the broker (SIGKILL: an outage, not a polite shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Creates a topic with `partitions` partitions and topic configs such as
    /// "cleanup.policy=compact".
    pub fn create_topic_with(&self, name: &str, partitions: u32, configs: &[&str]) {
        let mut command = Command::new("tansu");
        command
            .args(["topic", "create", name, "--broker", &self.url()])
            .args(["--partitions", &partitions.to_string()]);
        for config in configs {
            command.args(["--config", config]);
        }
        let status = command
            .stdout(Stdio::null())
            .status()
            .expect("run tansu topic create");
        assert!(status.success(), "tansu topic create {name}");
    }

    pub fn create_topic(&self, name: &str) {
        let status = Command::new("tansu")
            .args(["topic", "create", name, "--broker", &self.url()])
            .stdout(Stdio::null())
            .status()
            .expect("run tansu topic create");
        assert!(status.success(), "tansu topic create {name}");
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads `topic` from the beginning until `expected` records have arrived (or `timeout`),
/// and returns each record's key and JSON payload.
pub fn consume(
    brokers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<(String, Value)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "sluice-tests")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let mut assignment = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            assignment
                .add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    while records.len() < expected && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let key = message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                let payload: Value = serde_json::from_slice(message.payload().unwrap_or_default())
                    .expect("each record is JSON");
                records.push((key, payload));
            }
            Some(Err(error)) => eprintln!("consumer: {error}"),
            None => {}
        }
    }
    // Anything beyond `expected` (a duplicate) would show up within a short grace period.
    let grace = Instant::now() + Duration::from_millis(500);
    while Instant::now() < grace {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let payload: Value =
                serde_json::from_slice(message.payload().unwrap_or_default()).unwrap();
            let key = message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            records.push((key, payload));
        }
    }
    records
}
