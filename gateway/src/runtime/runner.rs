//! Runs a model's backends on dedicated threads, fed by one bounded queue. The async side only
//! enqueues and awaits a oneshot reply, so a slow model never stalls the reactor, and a full
//! queue is refused at once instead of growing without bound.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

use super::Backend;
use crate::error::{ErrorKind, ServeError, ServeResult};
use crate::tensor::Tensor;

/// Sizes of one runner.
#[derive(Clone, Debug)]
pub struct RunnerOptions {
    /// Requests that may wait for a worker.
    pub queue_capacity: usize,
    /// Thread name prefix, e.g. `churn-v1`.
    pub name: String,
}

/// One queued inference.
pub struct Job {
    inputs: Vec<Tensor>,
    enqueued: Instant,
    deadline: Instant,
    reply: oneshot::Sender<ServeResult<RunOutput>>,
}

/// A finished inference and where its time went.
#[derive(Debug)]
pub struct RunOutput {
    pub outputs: Vec<Tensor>,
    pub queue_wait: Duration,
    pub compute: Duration,
}

/// Handle to a pool of worker threads. Dropping the last handle closes the queue; the workers
/// finish what is queued and exit, which frees the model.
pub struct Runner {
    queue: Sender<Job>,
    name: String,
}

impl Runner {
    /// Starts one worker thread per backend instance.
    pub fn start(
        instances: Vec<Box<dyn Backend>>,
        options: RunnerOptions,
    ) -> std::io::Result<Runner> {
        let (queue, jobs) = crossbeam_channel::bounded(options.queue_capacity);
        for (i, backend) in instances.into_iter().enumerate() {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("{}-{i}", options.name))
                .spawn(move || work(backend, jobs))?;
        }
        Ok(Runner {
            queue,
            name: options.name,
        })
    }

    /// Queues `inputs` and waits for the result. Fails at once with `Overloaded` when the queue
    /// is full, and with `Timeout` when the deadline passes first.
    pub async fn run(&self, inputs: Vec<Tensor>, deadline: Instant) -> ServeResult<RunOutput> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            inputs,
            enqueued: Instant::now(),
            deadline,
            reply,
        };
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ServeError::new(
                    ErrorKind::Overloaded,
                    format!("model {} is overloaded: its queue is full", self.name),
                ));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ServeError::new(
                    ErrorKind::Unavailable,
                    format!("model {} is shutting down", self.name),
                ));
            }
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ServeError::new(
                ErrorKind::Internal,
                format!("model {} dropped the request", self.name),
            )),
            Err(_) => Err(timed_out()),
        }
    }

    /// Requests waiting for a worker right now.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

fn timed_out() -> ServeError {
    ServeError::new(
        ErrorKind::Timeout,
        "request timed out before the model answered",
    )
}

fn work(mut backend: Box<dyn Backend>, jobs: Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        // The client gave up (timeout or disconnect): do not spend the model on it.
        if job.reply.is_closed() {
            continue;
        }
        let started = Instant::now();
        if started >= job.deadline {
            let _ = job.reply.send(Err(timed_out()));
            continue;
        }
        let queue_wait = started - job.enqueued;
        // A panic inside a model must not take the worker (or the server) down with it.
        let result = catch_unwind(AssertUnwindSafe(|| backend.run(job.inputs)));
        let compute = started.elapsed();
        let answer = match result {
            Ok(Ok(outputs)) => Ok(RunOutput {
                outputs,
                queue_wait,
                compute,
            }),
            Ok(Err(error)) => {
                tracing::warn!(%error, "model failed on a request");
                Err(ServeError::new(
                    ErrorKind::ModelFailure,
                    format!("model failed: {error}"),
                ))
            }
            Err(_) => {
                tracing::error!("model panicked on a request");
                Err(ServeError::new(
                    ErrorKind::ModelFailure,
                    "model failed on this request",
                ))
            }
        };
        let _ = job.reply.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::BackendError;
    use crate::tensor::TensorData;

    struct Echo;
    impl Backend for Echo {
        fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
            Ok(inputs)
        }
    }

    struct Panics;
    impl Backend for Panics {
        fn run(&mut self, _: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
            panic!("boom")
        }
    }

    fn input() -> Vec<Tensor> {
        vec![Tensor::new("x", vec![1], TensorData::F32(vec![1.0])).unwrap()]
    }

    fn options() -> RunnerOptions {
        RunnerOptions {
            queue_capacity: 4,
            name: "test-v1".into(),
        }
    }

    #[tokio::test]
    async fn runs_and_survives_panics() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let echo = Runner::start(vec![Box::new(Echo)], options()).unwrap();
        let out = echo.run(input(), deadline).await.unwrap();
        assert_eq!(out.outputs, input());

        let panics = Runner::start(vec![Box::new(Panics)], options()).unwrap();
        for _ in 0..3 {
            let err = panics.run(input(), deadline).await.unwrap_err();
            assert_eq!(err.kind, ErrorKind::ModelFailure);
        }
    }

    #[tokio::test]
    async fn expired_requests_are_not_run() {
        let echo = Runner::start(vec![Box::new(Echo)], options()).unwrap();
        let err = echo.run(input(), Instant::now()).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout);
    }
}
