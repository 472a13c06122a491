//! The embedded sink: JSON lines in local files, rotated by size, so that sluice keeps its
//! prediction log without a broker. `predictions.jsonl` rotates to `predictions.jsonl.1`,
//! that one to `.2`, and so on; files past `max_files` are deleted.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::config::FileSinkConfig;
use super::{Counters, Entry, Sink, Stream};

pub struct FileSink {
    files: [RotatingFile; 2],
    counters: Arc<Counters>,
}

impl FileSink {
    pub fn open(config: &FileSinkConfig, counters: Arc<Counters>) -> Result<FileSink, String> {
        let open = |path: &Path| RotatingFile::open(path, config.max_file_size, config.max_files);
        Ok(FileSink {
            files: [open(&config.path)?, open(&config.events_path)?],
            counters,
        })
    }
}

impl Sink for FileSink {
    fn offer(&mut self, entry: Entry) -> Result<(), Entry> {
        let stream = entry.stream;
        let file = &mut self.files[stream as usize];
        if let Err(error) = file.write_line(&entry.payload) {
            // A full or vanished disk: count the record as failed and carry on; the next
            // write reopens the file.
            self.counters.failed(stream, 1);
            file.broken(&error);
        }
        Ok(())
    }

    fn idle(&mut self) {
        for (i, file) in self.files.iter_mut().enumerate() {
            let stream = if i == 0 {
                Stream::Predictions
            } else {
                Stream::Events
            };
            match file.flush() {
                Ok(written) if written > 0 => self.counters.delivered(stream, written),
                Ok(_) => {}
                Err(error) => {
                    self.counters.failed(stream, file.unflushed);
                    file.unflushed = 0;
                    file.broken(&error);
                }
            }
        }
    }

    fn close(&mut self, _deadline: Instant) -> u64 {
        self.idle();
        0
    }
}

struct RotatingFile {
    path: PathBuf,
    max_size: u64,
    max_files: usize,
    writer: Option<BufWriter<File>>,
    size: u64,
    /// Records written into the buffer since the last flush.
    unflushed: u64,
    last_error_log: Option<Instant>,
}

impl RotatingFile {
    fn open(path: &Path, max_size: u64, max_files: usize) -> Result<RotatingFile, String> {
        let mut file = RotatingFile {
            path: path.to_path_buf(),
            max_size,
            max_files,
            writer: None,
            size: 0,
            unflushed: 0,
            last_error_log: None,
        };
        file.reopen()
            .map_err(|e| format!("cannot open prediction log {}: {e}", path.display()))?;
        Ok(file)
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.writer = Some(BufWriter::with_capacity(256 << 10, file));
        Ok(())
    }

    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_size {
            self.rotate()?;
        }
        if self.writer.is_none() {
            self.reopen()?;
        }
        if let Some(writer) = self.writer.as_mut() {
            writer.write_all(line)?;
            writer.write_all(b"\n")?;
        }
        self.size += len;
        self.unflushed += 1;
        Ok(())
    }

    /// Writes the buffer out; returns how many records that made durable.
    fn flush(&mut self) -> std::io::Result<u64> {
        if let Some(writer) = self.writer.as_mut() {
            writer.flush()?;
        }
        Ok(std::mem::take(&mut self.unflushed))
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        // Records buffered so far belong to the file being rotated out.
        if let Some(mut writer) = self.writer.take() {
            writer.flush()?;
        }
        let numbered = |n: usize| {
            let mut name = self.path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.max_files == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.max_files));
            for n in (1..self.max_files).rev() {
                let from = numbered(n);
                if from.exists() {
                    std::fs::rename(&from, numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.reopen()
    }

    fn broken(&mut self, error: &std::io::Error) {
        self.writer = None;
        let quiet = self
            .last_error_log
            .is_some_and(|at| at.elapsed().as_secs() < 10);
        if !quiet {
            tracing::warn!(path = %self.path.display(), %error, "prediction log file write failed");
            self.last_error_log = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(stream: Stream, text: &str) -> Entry {
        Entry {
            stream,
            key: "k".into(),
            payload: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileSinkConfig {
            path: dir.path().join("p.jsonl"),
            events_path: dir.path().join("e.jsonl"),
            max_file_size: 100,
            max_files: 2,
        };
        let counters = Arc::new(Counters::default());
        let mut sink = FileSink::open(&config, Arc::clone(&counters)).unwrap();
        let line = format!("{{\"n\":\"{}\"}}", "x".repeat(40)); // 49 bytes + newline
        for _ in 0..7 {
            sink.offer(entry(Stream::Predictions, &line)).ok().unwrap();
        }
        sink.offer(entry(Stream::Events, "{\"e\":1}")).ok().unwrap();
        sink.close(Instant::now());
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        // 7 lines at 2 per file: live has 1, .1 and .2 have 2 each, the oldest 2 are gone.
        assert_eq!(read("p.jsonl").lines().count(), 1);
        assert_eq!(read("p.jsonl.1").lines().count(), 2);
        assert_eq!(read("p.jsonl.2").lines().count(), 2);
        assert!(!dir.path().join("p.jsonl.3").exists());
        assert_eq!(read("e.jsonl"), "{\"e\":1}\n");
        let delivered = |s: Stream| counters.delivered[s as usize].load(Ordering::Relaxed);
        assert_eq!(delivered(Stream::Predictions), 7);
        assert_eq!(delivered(Stream::Events), 1);
    }

    use std::sync::atomic::Ordering;
}
