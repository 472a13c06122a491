//! Runs a model's backends on dedicated threads, fed by one bounded queue. The async side only
//! enqueues and awaits a oneshot reply, so a slow model never stalls the reactor, and a full
//! queue is refused at once instead of growing without bound.
//!
//! Models whose measured run is a few microseconds run inline instead, on the caller's thread
//! ([`Runner::with_inline`]): for them the hand-off (a queue push, a worker wake-up, a oneshot
//! reply and the reactor's wake-up) costs several times the run itself (profiled: the
//! hand-off was ~15 % of sluice's CPU on the bench churn model, whose run is ~2 us). The rule,
//! decided once at load: a request runs inline when its rows times the version's measured
//! batch-1 run fit in `runtime.inline_max_us`, and an instance is free right now; otherwise
//! it queues for the workers as before. So an inline run never blocks the reactor for more
//! than that budget, and never waits for an instance.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

use super::Backend;
use super::batch::{self, Batching};
use sluice_core::error::{ErrorKind, ServeError, ServeResult};
use sluice_core::tensor::Tensor;

/// Sizes of one runner.
#[derive(Clone, Debug)]
pub struct RunnerOptions {
    /// Requests that may wait for a worker.
    pub queue_capacity: usize,
    /// Thread name prefix, e.g. `churn-v1`.
    pub name: String,
    /// Stack concurrent requests into one run; `None` runs each request alone.
    pub batching: Option<Batching>,
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
    /// Rows in the stacked run this request was part of; `None` when it ran alone.
    pub batch_rows: Option<usize>,
}

/// Handle to a pool of worker threads. Dropping the last handle closes the queue; the workers
/// finish what is queued and exit, which frees the model.
pub struct Runner {
    queue: Sender<Job>,
    name: String,
    /// The backend instances; worker `i` runs on slot `i`, inline callers take any free one.
    slots: Arc<[Mutex<Box<dyn Backend>>]>,
    /// Most rows a request may have to run inline; 0: never inline.
    inline_rows: usize,
    /// Where inline callers start looking for a free slot, so that they spread over them.
    next_slot: AtomicUsize,
}

/// Locks a slot; a poisoned lock (a panic while held, which `execute` prevents) still holds a
/// usable backend, exactly as a worker thread keeps its backend after a caught panic.
fn lock(slot: &Mutex<Box<dyn Backend>>) -> MutexGuard<'_, Box<dyn Backend>> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Runner {
    /// Starts one worker thread per backend instance.
    pub fn start(
        instances: Vec<Box<dyn Backend>>,
        options: RunnerOptions,
    ) -> std::io::Result<Runner> {
        let (queue, jobs) = crossbeam_channel::bounded(options.queue_capacity);
        let slots: Arc<[Mutex<Box<dyn Backend>>]> = instances.into_iter().map(Mutex::new).collect();
        for i in 0..slots.len() {
            let jobs = jobs.clone();
            let batching = options.batching;
            let slots = Arc::clone(&slots);
            std::thread::Builder::new()
                .name(format!("{}-{i}", options.name))
                .spawn(move || work(&slots[i], jobs, batching))?;
        }
        Ok(Runner {
            queue,
            name: options.name,
            slots,
            inline_rows: 0,
            next_slot: AtomicUsize::new(0),
        })
    }

    /// Lets requests run inline, on the caller's thread, when their rows times `measured` (one
    /// batch-1 run of this model, timed at load) fit in `budget`. A zero budget, or a model
    /// slower than it, keeps every request on the workers.
    pub fn with_inline(mut self, measured: Duration, budget: Duration) -> Runner {
        let per_row = measured.as_nanos().max(1);
        self.inline_rows = usize::try_from(budget.as_nanos() / per_row).unwrap_or(usize::MAX);
        self
    }

    /// Most rows a request may have to run inline (0: none do).
    pub fn inline_rows(&self) -> usize {
        self.inline_rows
    }

    /// A free instance for an inline run, if the request qualifies and one is free now.
    fn inline_slot(&self, inputs: &[Tensor]) -> Option<MutexGuard<'_, Box<dyn Backend>>> {
        if self.inline_rows == 0 || batch::rows(inputs) > self.inline_rows {
            return None;
        }
        let n = self.slots.len();
        let start = self.next_slot.fetch_add(1, Ordering::Relaxed);
        (0..n).find_map(|k| match self.slots[(start + k) % n].try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        })
    }

    /// Queues `inputs` and waits for the result. Fails at once with `Overloaded` when the queue
    /// is full, and with `Timeout` when the deadline passes first.
    pub async fn run(&self, inputs: Vec<Tensor>, deadline: Instant) -> ServeResult<RunOutput> {
        if let Some(mut backend) = self.inline_slot(&inputs) {
            if Instant::now() >= deadline {
                return Err(timed_out());
            }
            let started = Instant::now();
            let outputs = execute(backend.as_mut(), inputs)?;
            return Ok(RunOutput {
                outputs,
                queue_wait: Duration::ZERO,
                compute: started.elapsed(),
                batch_rows: None,
            });
        }
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

/// A job still worth running: the client is waiting and its deadline has not passed.
fn live(job: Job) -> Option<Job> {
    // The client gave up (timeout or disconnect): do not spend the model on it.
    if job.reply.is_closed() {
        return None;
    }
    if Instant::now() >= job.deadline {
        let _ = job.reply.send(Err(timed_out()));
        return None;
    }
    Some(job)
}

fn work(slot: &Mutex<Box<dyn Backend>>, jobs: Receiver<Job>, batching: Option<Batching>) {
    // A job taken from the queue that could not join the last batch starts the next one.
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let Some(first) = live(first) else { continue };
        let Some(batching) = batching else {
            run_alone(lock(slot).as_mut(), first);
            continue;
        };
        // An idle queue means no company is coming soon: run at once rather than make a lone
        // request pay the delay. Batches form when requests arrive faster than the worker
        // runs them, which is when batching pays.
        if jobs.is_empty() {
            run_alone(lock(slot).as_mut(), first);
            continue;
        }
        // Wait for company at most until the first job has waited max_queue_delay in total.
        let until = first.enqueued + Duration::from_micros(batching.max_queue_delay_us);
        let mut rows = batch::rows(&first.inputs);
        let mut batch = vec![first];
        while rows < batching.max_batch_size {
            let next = match jobs.recv_deadline(until) {
                Ok(job) => job,
                Err(_) => break,
            };
            let Some(next) = live(next) else { continue };
            let next_rows = batch::rows(&next.inputs);
            if rows + next_rows > batching.max_batch_size
                || !batch::compatible(&batch[0].inputs, &next.inputs)
            {
                carried = Some(next);
                break;
            }
            rows += next_rows;
            batch.push(next);
        }
        let mut backend = lock(slot);
        if batch.len() == 1 {
            batch
                .into_iter()
                .for_each(|job| run_alone(backend.as_mut(), job));
        } else {
            run_batch(backend.as_mut(), batch);
        }
    }
}

/// Runs the backend, turning errors and panics into the client-facing error.
fn execute(backend: &mut dyn Backend, inputs: Vec<Tensor>) -> ServeResult<Vec<Tensor>> {
    // A panic inside a model must not take the worker (or the server) down with it.
    match catch_unwind(AssertUnwindSafe(|| backend.run(inputs))) {
        Ok(Ok(outputs)) => Ok(outputs),
        Ok(Err(error)) => {
            // The runtime's message names its own source files and internals: it goes to the
            // log in full, the client gets what it can act on.
            tracing::warn!(%error, "model failed on a request");
            Err(ServeError::new(
                ErrorKind::ModelFailure,
                "the model failed on this request; the server log has the details",
            ))
        }
        Err(_) => {
            tracing::error!("model panicked on a request");
            Err(ServeError::new(
                ErrorKind::ModelFailure,
                "model failed on this request",
            ))
        }
    }
}

fn run_alone(backend: &mut dyn Backend, job: Job) {
    let started = Instant::now();
    let queue_wait = started - job.enqueued;
    let answer = execute(backend, job.inputs).map(|outputs| RunOutput {
        outputs,
        queue_wait,
        compute: started.elapsed(),
        batch_rows: None,
    });
    let _ = job.reply.send(answer);
}

/// Runs several jobs as one stacked inference. If the stacked run fails, or its outputs do not
/// follow the batch axis, each job runs alone, so one request never answers for another.
fn run_batch(backend: &mut dyn Backend, jobs: Vec<Job>) {
    let started = Instant::now();
    let rows: Vec<usize> = jobs.iter().map(|j| batch::rows(&j.inputs)).collect();
    let stacked = batch::stack(jobs.iter().map(|j| j.inputs.clone()).collect());
    let answers = execute(backend, stacked)
        .ok()
        .and_then(|outputs| batch::split(outputs, &rows));
    let Some(answers) = answers else {
        jobs.into_iter().for_each(|job| run_alone(backend, job));
        return;
    };
    let compute = started.elapsed();
    let total: usize = rows.iter().sum();
    for (job, outputs) in jobs.into_iter().zip(answers) {
        let _ = job.reply.send(Ok(RunOutput {
            outputs,
            queue_wait: started - job.enqueued,
            compute,
            batch_rows: Some(total),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackendError;
    use sluice_core::tensor::TensorData;

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
            batching: None,
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

    /// Echoes its input after a pause, so that concurrent requests queue up behind it.
    struct SlowEcho;
    impl Backend for SlowEcho {
        fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
            std::thread::sleep(Duration::from_millis(5));
            Ok(inputs)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batching_stacks_requests_and_returns_each_its_own_rows() {
        let runner = std::sync::Arc::new(
            Runner::start(
                vec![Box::new(SlowEcho)],
                RunnerOptions {
                    queue_capacity: 64,
                    name: "batch-v1".into(),
                    batching: Some(Batching {
                        max_batch_size: 16,
                        max_queue_delay_us: 2_000,
                    }),
                },
            )
            .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut tasks = Vec::new();
        for i in 0..40usize {
            let runner = runner.clone();
            // Requests of 1 or 2 rows, each row holding its request's number.
            let rows = 1 + i % 2;
            let input = Tensor::new(
                "x",
                vec![rows, 3],
                TensorData::F32(vec![i as f32; rows * 3]),
            )
            .unwrap();
            tasks.push(tokio::spawn(async move {
                (
                    input.clone(),
                    runner.run(vec![input], deadline).await.unwrap(),
                )
            }));
        }
        let mut stacked = 0;
        for task in tasks {
            let (input, output) = task.await.unwrap();
            assert_eq!(
                output.outputs,
                vec![input],
                "a request got rows that are not its own"
            );
            if let Some(rows) = output.batch_rows {
                assert!(rows <= 16, "batch of {rows} rows over the limit");
                stacked += 1;
            }
        }
        assert!(
            stacked > 20,
            "only {stacked} of 40 queued requests were stacked"
        );
    }

    /// Answers the name of the thread it ran on, as a one-value tensor's name.
    struct WhereAmI;
    impl Backend for WhereAmI {
        fn run(&mut self, _: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
            let here = std::thread::current().name().unwrap_or("").to_string();
            Ok(vec![
                Tensor::new(here, vec![1], TensorData::F32(vec![0.0])).unwrap(),
            ])
        }
    }

    #[tokio::test]
    async fn fast_models_run_inline_within_their_row_budget() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let rows =
            |n: usize| vec![Tensor::new("x", vec![n], TensorData::F32(vec![1.0; n])).unwrap()];
        let runner = Runner::start(vec![Box::new(WhereAmI)], options())
            .unwrap()
            .with_inline(Duration::from_micros(2), Duration::from_micros(20));
        assert_eq!(runner.inline_rows(), 10);
        let ran_on = |out: RunOutput| out.outputs[0].name.clone();
        let here = std::thread::current().name().unwrap_or("").to_string();
        assert_eq!(ran_on(runner.run(rows(10), deadline).await.unwrap()), here);
        // Over the budget: handed to the worker thread.
        assert_eq!(
            ran_on(runner.run(rows(11), deadline).await.unwrap()),
            "test-v1-0"
        );
        // A model slower than the budget never runs inline.
        let slow = Runner::start(vec![Box::new(WhereAmI)], options())
            .unwrap()
            .with_inline(Duration::from_micros(30), Duration::from_micros(20));
        assert_eq!(slow.inline_rows(), 0);
        assert_eq!(
            ran_on(slow.run(rows(1), deadline).await.unwrap()),
            "test-v1-0"
        );
        // Panics inline are a failed request, and the instance keeps serving.
        let panics = Runner::start(vec![Box::new(Panics)], options())
            .unwrap()
            .with_inline(Duration::from_micros(1), Duration::from_micros(20));
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
