//! Dynamic batching: requests waiting for the same model version are stacked along the first
//! (batch) axis, run once, and the outputs sliced back, so that each request gets exactly its
//! own rows. Requests that carry several rows are stacked as they are.

use serde::{Deserialize, Serialize};

use sluice_core::tensor::{ModelSignature, Tensor, TensorData};

/// How a model version batches. The default stacks what is already queued and never waits
/// for company: measured, it costs nothing at low concurrency and pays at high (README,
/// "Runtimes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Batching {
    /// Most rows in one run (a single request with more rows still runs, alone); 1 turns
    /// batching off.
    pub max_batch_size: usize,
    /// Longest the first request of a batch waits for company, in microseconds; 0 takes only
    /// the requests already waiting.
    pub max_queue_delay_us: u64,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max_batch_size: 8,
            max_queue_delay_us: 0,
        }
    }
}

impl Batching {
    /// No batching: every request runs alone.
    pub const OFF: Batching = Batching {
        max_batch_size: 1,
        max_queue_delay_us: 0,
    };

    /// Whether requests are stacked at all.
    pub fn enabled(&self) -> bool {
        self.max_batch_size > 1
    }

    pub fn problems(&self, path: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_batch_size < 1 {
            problems.push(format!(
                "{path}.max_batch_size must be at least 1 (1 turns batching off)"
            ));
        }
        if self.max_queue_delay_us > 1_000_000 {
            problems.push(format!(
                "{path}.max_queue_delay_us must be at most 1000000 (1 s)"
            ));
        }
        problems
    }
}

/// Whether a model can batch at all: every input's first axis is dynamic.
pub fn signature_batches(signature: &ModelSignature) -> bool {
    signature
        .inputs
        .iter()
        .all(|s| s.shape.first() == Some(&-1))
}

/// Rows a request carries (its first input's first axis).
pub fn rows(inputs: &[Tensor]) -> usize {
    inputs
        .first()
        .and_then(|t| t.shape.first())
        .copied()
        .unwrap_or(0)
}

/// Whether two requests can share a run: same types and same shapes but for the first axis.
pub fn compatible(a: &[Tensor], b: &[Tensor]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.datatype() == y.datatype()
                && !x.shape.is_empty()
                && x.shape.len() == y.shape.len()
                && x.shape[1..] == y.shape[1..]
        })
}

/// Stacks compatible requests' inputs along the first axis.
pub fn stack(requests: Vec<Vec<Tensor>>) -> Vec<Tensor> {
    let mut requests = requests.into_iter();
    let Some(mut stacked) = requests.next() else {
        return Vec::new();
    };
    for inputs in requests {
        for (into, tensor) in stacked.iter_mut().zip(inputs) {
            into.shape[0] += tensor.shape[0];
            into.data.append(tensor.data);
        }
    }
    stacked
}

/// Slices a stacked run's outputs back into one answer per request (`rows` each, in order).
/// `None` when an output does not have one row per input row (the model's outputs do not
/// follow the batch axis), in which case the requests must run one by one.
pub fn split(outputs: Vec<Tensor>, rows: &[usize]) -> Option<Vec<Vec<Tensor>>> {
    let total: usize = rows.iter().sum();
    let mut answers: Vec<Vec<Tensor>> = rows
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for output in outputs {
        if output.shape.first() != Some(&total) {
            return None;
        }
        let per_row = output.data.len().checked_div(total).unwrap_or(0);
        let mut start = 0;
        for (answer, &n) in answers.iter_mut().zip(rows) {
            let mut shape = output.shape.clone();
            shape[0] = n;
            let data: TensorData = output.data.slice(start * per_row, (start + n) * per_row);
            answer.push(Tensor {
                name: output.name.clone(),
                shape,
                data,
            });
            start += n;
        }
    }
    Some(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(rows: usize, first: f32) -> Vec<Tensor> {
        let data: Vec<f32> = (0..rows * 2).map(|i| first + i as f32).collect();
        vec![Tensor::new("x", vec![rows, 2], TensorData::F32(data)).unwrap()]
    }

    #[test]
    fn stack_then_split_gives_each_request_its_rows() {
        let requests = vec![request(1, 0.0), request(3, 100.0), request(2, 200.0)];
        let rows: Vec<usize> = requests.iter().map(|r| super::rows(r)).collect();
        assert!(compatible(&requests[0], &requests[1]));
        let stacked = stack(requests.clone());
        assert_eq!(stacked[0].shape, vec![6, 2]);
        let answers = split(stacked, &rows).unwrap();
        assert_eq!(answers.len(), 3);
        for (answer, request) in answers.iter().zip(&requests) {
            assert_eq!(answer, request);
        }
    }

    #[test]
    fn incompatible_and_unbatched_outputs() {
        let wide = vec![Tensor::new("x", vec![1, 3], TensorData::F32(vec![0.0; 3])).unwrap()];
        assert!(!compatible(&request(1, 0.0), &wide));
        let ints = vec![Tensor::new("x", vec![1, 2], TensorData::I64(vec![0; 2])).unwrap()];
        assert!(!compatible(&request(1, 0.0), &ints));
        // An output without the batch axis cannot be split back.
        let summary = vec![Tensor::new("sum", vec![1], TensorData::F32(vec![1.0])).unwrap()];
        assert!(split(summary, &[1, 1]).is_none());
    }
}
