//! LightGBM text and XGBoost JSON models against the libraries' own predictions
//! (`make_fixtures.py`), and their ONNX conversions against onnxruntime.

use crate::harness::{
    Rows, assert_agree, close, ort, ort_session, read_fixture, read_npy, run_ort, run_trees,
};
use sluice_trees::{NativeInput, Outputs, TreeModel};

const FEATURES: usize = 8;

fn sample() -> (Vec<f32>, usize) {
    let (values, shape) = read_npy(&read_fixture("sample.npy"));
    assert_eq!(shape[1], FEATURES);
    (values.iter().map(|&v| v as f32).collect(), shape[0])
}

fn input() -> NativeInput {
    NativeInput {
        name: "input".into(),
        features: FEATURES,
    }
}

/// Our scores and labels against the library's expected [N, C] scores; classifiers' labels
/// are the first maximum of the expected probabilities.
fn check(name: &str, model: &TreeModel) {
    let (rows, n) = sample();
    let (expected, shape) = read_npy(&read_fixture(&format!("{name}_expected.npy")));
    let columns = shape[1];
    let mut out = Outputs::new();
    model.predict(&rows, n, &mut out).unwrap();
    assert_eq!(out.scores.len(), n * columns, "{name}");
    for (i, (&ours, &theirs)) in out.scores.iter().zip(&expected).enumerate() {
        assert!(
            close(ours, theirs as f32),
            "{name} score {i} (row {}): ours {ours:e}, library {theirs:e}",
            i / columns
        );
    }
    let classifier = model.signature().outputs.len() == 2;
    if classifier {
        for r in 0..n {
            let row = &expected[r * columns..(r + 1) * columns];
            let best = (0..columns).fold(0, |b, k| if row[k] > row[b] { k } else { b });
            assert_eq!(out.labels[r], best as i64, "{name} label of row {r}");
        }
    }
    // The same through predict_f64 (LightGBM reads doubles; XGBoost narrows to float).
    let wide: Vec<f64> = rows.iter().map(|&v| v as f64).collect();
    let mut out64 = Outputs::new();
    model.predict_f64(&wide, n, &mut out64).unwrap();
    assert_eq!(out64.scores, out.scores, "{name} via predict_f64");
}

#[test]
fn lightgbm_text_models_match_lightgbm() {
    for name in ["lgbm_binary", "lgbm_multiclass", "lgbm_regression"] {
        let text = String::from_utf8(read_fixture(&format!("{name}.txt"))).unwrap();
        let model =
            TreeModel::from_lightgbm_text(&text, input()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(model.n_trees() % 20, 0, "{name}");
        check(name, &model);
    }
}

#[test]
fn xgboost_json_models_match_xgboost() {
    for name in ["xgb_binary", "xgb_multiclass", "xgb_regression"] {
        let text = String::from_utf8(read_fixture(&format!("{name}.json"))).unwrap();
        let model =
            TreeModel::from_xgboost_json(&text, input()).unwrap_or_else(|e| panic!("{name}: {e}"));
        check(name, &model);
    }
}

#[test]
fn onnx_conversions_agree_with_onnxruntime() {
    let Some(env) = ort() else { return };
    let (rows, n) = sample();
    for name in [
        "lgbm_binary",
        "lgbm_multiclass",
        "lgbm_regression",
        "xgb_binary",
        "xgb_multiclass",
        "xgb_regression",
    ] {
        let bytes = read_fixture(&format!("{name}.onnx"));
        let model = TreeModel::from_onnx(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut session = ort_session(env, &bytes);
        let reference = run_ort(&mut session, Rows::F32(&rows), n, FEATURES);
        let ours = run_trees(&model, Rows::F32(&rows), n);
        assert_agree(name, &ours, &reference);
    }
}

#[test]
fn native_input_must_cover_the_features() {
    let text = String::from_utf8(read_fixture("lgbm_binary.txt")).unwrap();
    let narrow = NativeInput {
        name: "input".into(),
        features: 3,
    };
    let err = TreeModel::from_lightgbm_text(&text, narrow).unwrap_err();
    assert!(
        err.to_string().contains("configured with 3 features"),
        "{err}"
    );
}
