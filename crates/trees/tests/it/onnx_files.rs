//! The bench churn model and the example credit models, against onnxruntime.

use crate::harness::{
    Rng, Rows, assert_agree, ort, ort_session, read_fixture, read_npy, run_ort, run_trees,
};
use sluice_trees::{DType, OutputKind, TreeModel};

/// The churn sample, plus the same rows with every third value replaced by NaN (the model
/// tracks missing values on some nodes).
fn churn_rows() -> (Vec<f32>, usize, usize) {
    let (values, shape) = read_npy(&read_fixture("churn_sample.npy"));
    let (n, f) = (shape[0], shape[1]);
    let mut rows: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    rows.extend(
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| if i % 3 == 0 { f32::NAN } else { v as f32 }),
    );
    (rows, 2 * n, f)
}

#[test]
fn churn_signature() {
    let model = TreeModel::from_onnx(&read_fixture("churn.onnx")).unwrap();
    let sig = model.signature();
    assert_eq!(sig.input.name, "input");
    assert_eq!(sig.input.dtype, DType::F32);
    assert_eq!(sig.input.features, 12);
    let outs: Vec<_> = sig
        .outputs
        .iter()
        .map(|o| (o.name.as_str(), o.kind, o.dtype, o.shape(3)))
        .collect();
    assert_eq!(
        outs,
        vec![
            ("label", OutputKind::Label, DType::I64, vec![3]),
            ("probabilities", OutputKind::Scores, DType::F32, vec![3, 2]),
        ]
    );
    assert_eq!(model.n_trees(), 100);
}

#[test]
fn churn_agrees_with_onnxruntime() {
    let Some(env) = ort() else { return };
    let bytes = read_fixture("churn.onnx");
    let model = TreeModel::from_onnx(&bytes).unwrap();
    let mut session = ort_session(env, &bytes);
    let (rows, n, f) = churn_rows();
    let reference = run_ort(&mut session, Rows::F32(&rows), n, f);
    let ours = run_trees(&model, Rows::F32(&rows), n);
    assert_agree("churn, 2000 rows at once", &ours, &reference);
    // One row at a time takes onnxruntime's single-row path.
    for r in (0..n).step_by(97) {
        let row = &rows[r * f..(r + 1) * f];
        let reference = run_ort(&mut session, Rows::F32(row), 1, f);
        let ours = run_trees(&model, Rows::F32(row), 1);
        assert_agree(&format!("churn row {r}"), &ours, &reference);
    }
}

#[test]
fn credit_models_agree_with_onnxruntime() {
    let Some(env) = ort() else { return };
    for version in [1, 2] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../models/credit/{version}/model.onnx"));
        let bytes = std::fs::read(&path).unwrap();
        let model = TreeModel::from_onnx(&bytes).unwrap();
        assert_eq!(model.signature().input.features, 10);
        let mut session = ort_session(env, &bytes);
        let mut rng = Rng(version);
        let n = 500;
        let rows: Vec<f32> = (0..n * 10)
            .map(|i| {
                if i % 17 == 0 {
                    f32::NAN
                } else {
                    (rng.unit() * 3.0) as f32
                }
            })
            .collect();
        let reference = run_ort(&mut session, Rows::F32(&rows), n, 10);
        let ours = run_trees(&model, Rows::F32(&rows), n);
        assert_agree(&format!("credit v{version}"), &ours, &reference);
    }
}
