//! Shared test harness: onnxruntime as the reference (loaded from `ORT_DYLIB_PATH`), a tiny
//! `.npy` reader, a deterministic generator and the comparison with its tolerance.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::{Session, SessionInputValue};
use ort::value::{TensorRef, ValueType};
use sluice_trees::{OutputKind, Outputs, TreeModel};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// onnxruntime, or `None` (with a skip message) when it is not available and not required.
pub fn ort() -> Option<&'static Environment> {
    static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();
    let env = ENV.get_or_init(|| {
        let path = std::env::var("ORT_DYLIB_PATH")
            .ok()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| "ORT_DYLIB_PATH is not set".to_string())?;
        let builder = ort::init_from(&path).map_err(|e| format!("{path}: {e}"))?;
        builder
            .with_name("sluice-trees-tests")
            .build()
            .map_err(|e| format!("{path}: {e}"))
    });
    match env {
        Ok(env) => Some(env),
        Err(why) => {
            if std::env::var("SLUICE_REQUIRE_ORT").as_deref() == Ok("1") {
                panic!("onnxruntime is required (SLUICE_REQUIRE_ORT=1) but unavailable: {why}");
            }
            eprintln!("skipping the onnxruntime comparison: {why}");
            None
        }
    }
}

/// What a model returned: labels (int64 or string) and scores, for the first label and the
/// first scores output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prediction {
    pub labels: Option<Vec<i64>>,
    pub string_labels: Option<Vec<String>>,
    pub scores: Vec<f32>,
}

pub enum Rows<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

/// One-threaded onnxruntime session over `model`, so that it sums trees in order.
pub fn ort_session(env: &Environment, model: &[u8]) -> Session {
    Session::builder(env)
        .unwrap()
        .with_intra_threads(1)
        .unwrap()
        .with_inter_threads(1)
        .unwrap()
        .commit_from_memory(model)
        .expect("onnxruntime loads the model")
}

pub fn run_ort(session: &mut Session, rows: Rows<'_>, n: usize, features: usize) -> Prediction {
    let input = session.inputs()[0].name().to_string();
    let outputs: Vec<(String, ValueType)> = session
        .outputs()
        .iter()
        .map(|o| (o.name().to_string(), o.dtype().clone()))
        .collect();
    let shape = vec![n as i64, features as i64];
    let value: SessionInputValue<'_> = match rows {
        Rows::F32(v) => TensorRef::from_array_view((shape, v)).unwrap().into(),
        Rows::F64(v) => TensorRef::from_array_view((shape, v)).unwrap().into(),
    };
    let feeds: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![(Cow::Owned(input), value)];
    let result = session.run(feeds).expect("onnxruntime runs");
    let mut p = Prediction::default();
    for (name, ty) in outputs {
        let v = &result[name.as_str()];
        match ty {
            ValueType::Tensor {
                ty: ort::value::TensorElementType::Int64,
                ..
            } if p.labels.is_none() => {
                p.labels = Some(v.try_extract_tensor::<i64>().unwrap().1.to_vec())
            }
            ValueType::Tensor {
                ty: ort::value::TensorElementType::String,
                ..
            } if p.string_labels.is_none() => {
                p.string_labels = Some(v.try_extract_strings().unwrap().1)
            }
            ValueType::Tensor {
                ty: ort::value::TensorElementType::Float32,
                ..
            } if p.scores.is_empty() => {
                p.scores = v.try_extract_tensor::<f32>().unwrap().1.to_vec()
            }
            _ => {}
        }
    }
    p
}

pub fn run_trees(model: &TreeModel, rows: Rows<'_>, n: usize) -> Prediction {
    let mut out = Outputs::new();
    match rows {
        Rows::F32(v) => model.predict(v, n, &mut out).expect("predict"),
        Rows::F64(v) => model.predict_f64(v, n, &mut out).expect("predict"),
    }
    let has = |kind, dtype| {
        model
            .signature()
            .outputs
            .iter()
            .any(|o| o.kind == kind && o.dtype == dtype)
    };
    Prediction {
        labels: has(OutputKind::Label, sluice_trees::DType::I64).then(|| out.labels.clone()),
        string_labels: has(OutputKind::Label, sluice_trees::DType::String)
            .then(|| out.string_labels.clone()),
        scores: if has(OutputKind::Scores, sluice_trees::DType::F32) {
            out.scores.clone()
        } else {
            Vec::new()
        },
    }
}

/// Relative tolerance on scores, and the absolute floor below which values count as equal
/// (for probabilities near 0, where 1 - p loses the relative precision).
pub const REL: f32 = 1e-6;
pub const ABS: f32 = 1e-7;

pub fn close(a: f32, b: f32) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    a == b || (a - b).abs() <= ABS.max(REL * a.abs().max(b.abs()))
}

/// Panics with the first difference.
pub fn assert_agree(what: &str, ours: &Prediction, reference: &Prediction) {
    if let Err(why) = agree(ours, reference) {
        panic!("{what}: {why}");
    }
}

pub fn agree(ours: &Prediction, reference: &Prediction) -> Result<(), String> {
    if ours.labels != reference.labels {
        let i = first_diff(ours.labels.as_deref(), reference.labels.as_deref());
        return Err(format!(
            "labels differ at row {i:?}: ours {:?}, reference {:?}",
            ours.labels.as_ref().map(|l| &l[..l.len().min(20)]),
            reference.labels.as_ref().map(|l| &l[..l.len().min(20)])
        ));
    }
    if ours.string_labels != reference.string_labels {
        return Err(format!(
            "string labels differ: ours {:?}, reference {:?}",
            ours.string_labels, reference.string_labels
        ));
    }
    if ours.scores.len() != reference.scores.len() {
        return Err(format!(
            "{} scores, reference {}",
            ours.scores.len(),
            reference.scores.len()
        ));
    }
    for (i, (a, b)) in ours.scores.iter().zip(&reference.scores).enumerate() {
        if !close(*a, *b) {
            return Err(format!("score {i}: ours {a:e}, reference {b:e}"));
        }
    }
    Ok(())
}

fn first_diff(a: Option<&[i64]>, b: Option<&[i64]>) -> Option<usize> {
    let (a, b) = (a?, b?);
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// A float32 or float64 C-order `.npy` array: (values as f64, shape).
pub fn read_npy(bytes: &[u8]) -> (Vec<f64>, Vec<usize>) {
    assert_eq!(&bytes[..6], b"\x93NUMPY", "not an npy file");
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + len]).unwrap();
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_text = header.split("'shape': (").nth(1).unwrap();
    let shape: Vec<usize> = shape_text[..shape_text.find(')').unwrap()]
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    let data = &bytes[start + len..];
    let values = if header.contains("'<f4'") {
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect()
    } else if header.contains("'<f8'") {
        data.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    } else {
        panic!("unsupported npy dtype: {header}");
    };
    (values, shape)
}

/// splitmix64: deterministic rows without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}
