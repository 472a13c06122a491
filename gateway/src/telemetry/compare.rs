//! Comparing a shadow's answer with the primary's: label agreement for classifier-style
//! outputs (integer or string vectors, one value per row), and the largest absolute and
//! relative differences for floating-point tensors.

use serde::Serialize;

use sluice_core::tensor::{Tensor, TensorData};

/// One request's comparison.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Comparison {
    /// Rows with a label output in both answers.
    pub label_rows: u64,
    /// Of those, rows whose labels are equal.
    pub agreeing_rows: u64,
    pub max_abs_diff: f64,
    pub max_rel_diff: f64,
    pub sum_abs_diff: f64,
    /// Floating-point values compared.
    pub values: u64,
    /// Outputs present in one answer but not the other, or of another shape or type.
    pub mismatched_outputs: u64,
}

pub fn compare(primary: &[Tensor], shadow: &[Tensor]) -> Comparison {
    let mut c = Comparison::default();
    for p in primary {
        let Some(s) = shadow.iter().find(|s| s.name == p.name) else {
            c.mismatched_outputs += 1;
            continue;
        };
        if s.shape != p.shape || s.datatype() != p.datatype() {
            c.mismatched_outputs += 1;
            continue;
        }
        match (&p.data, &s.data) {
            (TensorData::F32(a), TensorData::F32(b)) => floats(
                &mut c,
                a.iter().map(|&x| f64::from(x)),
                b.iter().map(|&x| f64::from(x)),
            ),
            (TensorData::F64(a), TensorData::F64(b)) => {
                floats(&mut c, a.iter().copied(), b.iter().copied())
            }
            (a, b) if p.shape.len() == 1 => {
                let (rows, agreeing) = labels(a, b);
                c.label_rows += rows;
                c.agreeing_rows += agreeing;
            }
            _ => {}
        }
    }
    c
}

fn floats(c: &mut Comparison, a: impl Iterator<Item = f64>, b: impl Iterator<Item = f64>) {
    for (x, y) in a.zip(b) {
        let abs = (x - y).abs();
        let scale = x.abs().max(y.abs());
        let rel = if scale > 0.0 { abs / scale } else { 0.0 };
        c.max_abs_diff = c.max_abs_diff.max(abs);
        c.max_rel_diff = c.max_rel_diff.max(rel);
        c.sum_abs_diff += abs;
        c.values += 1;
    }
}

/// (rows, rows equal) for two label vectors of the same type.
fn labels(a: &TensorData, b: &TensorData) -> (u64, u64) {
    fn count<T: PartialEq>(a: &[T], b: &[T]) -> (u64, u64) {
        let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
        (a.len() as u64, equal as u64)
    }
    match (a, b) {
        (TensorData::I64(a), TensorData::I64(b)) => count(a, b),
        (TensorData::I32(a), TensorData::I32(b)) => count(a, b),
        (TensorData::U8(a), TensorData::U8(b)) => count(a, b),
        (TensorData::Bool(a), TensorData::Bool(b)) => count(a, b),
        (TensorData::Bytes(a), TensorData::Bytes(b)) => count(a, b),
        _ => (0, 0),
    }
}

/// Running totals of a shadow's comparisons, as the admin API shows them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ShadowSummary {
    pub primary_version: u64,
    /// Copies that ran and were compared.
    pub compared: u64,
    /// Copies the shadow failed on (never seen by clients).
    pub failed: u64,
    /// Copies dropped because the shadow queue was full.
    pub dropped: u64,
    pub label_rows: u64,
    pub agreeing_rows: u64,
    /// agreeing_rows / label_rows; absent before any label was compared.
    pub agreement: Option<f64>,
    pub max_abs_diff: f64,
    pub max_rel_diff: f64,
    pub mean_abs_diff: Option<f64>,
    pub mismatched_outputs: u64,
    #[serde(skip)]
    sum_abs_diff: f64,
    #[serde(skip)]
    values: u64,
}

impl ShadowSummary {
    pub fn add(&mut self, c: &Comparison) {
        self.compared += 1;
        self.label_rows += c.label_rows;
        self.agreeing_rows += c.agreeing_rows;
        self.max_abs_diff = self.max_abs_diff.max(c.max_abs_diff);
        self.max_rel_diff = self.max_rel_diff.max(c.max_rel_diff);
        self.sum_abs_diff += c.sum_abs_diff;
        self.values += c.values;
        self.mismatched_outputs += c.mismatched_outputs;
        self.agreement =
            (self.label_rows > 0).then(|| self.agreeing_rows as f64 / self.label_rows as f64);
        self.mean_abs_diff = (self.values > 0).then(|| self.sum_abs_diff / self.values as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, shape: Vec<usize>, data: TensorData) -> Tensor {
        Tensor::new(name, shape, data).unwrap()
    }

    #[test]
    fn labels_and_floats() {
        let primary = [
            t("label", vec![3], TensorData::I64(vec![1, 0, 2])),
            t("p", vec![3], TensorData::F32(vec![0.5, 0.25, 1.0])),
        ];
        let shadow = [
            t("label", vec![3], TensorData::I64(vec![1, 1, 2])),
            t("p", vec![3], TensorData::F32(vec![0.5, 0.5, 0.5])),
        ];
        let c = compare(&primary, &shadow);
        assert_eq!((c.label_rows, c.agreeing_rows), (3, 2));
        assert_eq!(c.max_abs_diff, 0.5);
        assert_eq!(c.max_rel_diff, 0.5);
        assert_eq!(c.values, 3);
        let mut summary = ShadowSummary::default();
        summary.add(&c);
        summary.add(&c);
        assert_eq!(summary.agreement, Some(2.0 / 3.0));
        assert_eq!(summary.mean_abs_diff, Some(0.25));
    }

    #[test]
    fn mismatched_outputs_are_counted() {
        let primary = [t("a", vec![1], TensorData::F32(vec![1.0]))];
        let shadow = [t("a", vec![1], TensorData::F64(vec![1.0]))];
        assert_eq!(compare(&primary, &shadow).mismatched_outputs, 1);
        assert_eq!(compare(&primary, &[]).mismatched_outputs, 1);
    }
}
