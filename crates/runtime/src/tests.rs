//! Which runtime `build` picks and why, and the native model files: against the example
//! models in `models/` and the tree crate's fixtures.

use std::path::{Path, PathBuf};

use super::*;
use sluice_core::tensor::{DataType, Tensor, TensorData, TensorSpec};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn example(model: &str, version: u64) -> PathBuf {
    workspace().join(format!("models/{model}/{version}/model.onnx"))
}

fn trees_fixture(name: &str) -> PathBuf {
    workspace().join("crates/trees/tests/fixtures").join(name)
}

/// Without ONNX Runtime, so that these tests mean the same on every machine.
fn pure_rust() -> Runtimes {
    Runtimes::new(&RuntimeConfig {
        allow_ort: false,
        ..RuntimeConfig::default()
    })
}

fn input(name: &str, datatype: DataType, shape: Vec<i64>) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype,
        shape,
    }
}

fn error(result: Result<Built, LoadError>) -> String {
    match result {
        Ok(built) => panic!("expected a load error, got {:?}", built.kind),
        Err(e) => e.0,
    }
}

/// The README's first request, on `credit` version 2.
const README_ROW: [f32; 10] = [0.1, -1.2, 0.3, 2.0, -0.5, 0.9, 1.1, -0.3, 0.0, 0.7];

#[test]
fn auto_runs_the_credit_models_on_trees_ahead_of_ort() {
    // With ONNX Runtime allowed too (and present where the machine has it): trees stays first.
    for runtimes in [pure_rust(), Runtimes::new(&RuntimeConfig::default())] {
        for version in [1, 2] {
            let built = runtimes
                .build(&example("credit", version), RuntimeChoice::Auto, 2, &[])
                .unwrap();
            assert_eq!(built.kind, RuntimeKind::Trees, "credit v{version}");
            assert!(
                built.reason.contains("faster than ONNX Runtime"),
                "{}",
                built.reason
            );
            assert_eq!(built.instances.len(), 2);
            assert_eq!(
                built.signature.inputs,
                vec![input("input", DataType::F32, vec![-1, 10])]
            );
            let outputs: Vec<(&str, DataType, &[i64])> = built
                .signature
                .outputs
                .iter()
                .map(|o| (o.name.as_str(), o.datatype, o.shape.as_slice()))
                .collect();
            assert_eq!(
                outputs,
                vec![
                    ("label", DataType::I64, &[-1][..]),
                    ("probabilities", DataType::F32, &[-1, 2][..])
                ]
            );
        }
    }
    let mut built = pure_rust()
        .build(&example("credit", 2), RuntimeChoice::Auto, 1, &[])
        .unwrap();
    let request = Tensor::new("input", vec![1, 10], TensorData::F32(README_ROW.to_vec())).unwrap();
    let outputs = built.instances[0].run(vec![request]).unwrap();
    assert_eq!(outputs[0].name, "label");
    assert_eq!(outputs[0].shape, vec![1]);
    assert_eq!(outputs[0].data, TensorData::I64(vec![1]));
    assert_eq!(outputs[1].shape, vec![1, 2]);
    let TensorData::F32(p) = &outputs[1].data else {
        panic!("probabilities are {:?}", outputs[1].data.datatype());
    };
    for (got, want) in p.iter().zip([0.27464086f32, 0.72535914]) {
        assert!((got - want).abs() <= 1e-6, "{p:?}");
    }
}

#[test]
fn auto_falls_through_with_the_refusal_for_a_non_tree_graph() {
    let built = pure_rust()
        .build(&example("digits", 1), RuntimeChoice::Auto, 1, &[])
        .unwrap();
    assert_eq!(built.kind, RuntimeKind::Tract);
    // The log says why trees did not take it and why ORT did not either.
    assert!(
        built
            .reason
            .contains("trees: not supported by the native tree evaluator"),
        "{}",
        built.reason
    );
    assert!(
        built.reason.contains("runtime.allow_ort = false"),
        "{}",
        built.reason
    );
    // Pinned, the refusal is the load error.
    let pinned = error(pure_rust().build(&example("digits", 1), RuntimeChoice::Trees, 1, &[]));
    assert!(
        pinned.starts_with("runtime 'trees' pinned: trees: "),
        "{pinned}"
    );
    assert!(pinned.contains("MatMul node"), "{pinned}");
    // And a disallowed ORT is not used even where its library is found.
    let ort = error(pure_rust().build(&example("digits", 1), RuntimeChoice::Ort, 1, &[]));
    assert!(ort.contains("runtime.allow_ort = false"), "{ort}");
}

#[test]
fn a_native_file_needs_a_declared_signature() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.txt");
    std::fs::copy(trees_fixture("lgbm_binary.txt"), &path).unwrap();
    let runtimes = pure_rust();
    let missing = error(runtimes.build(&path, RuntimeChoice::Auto, 1, &[]));
    assert!(
        missing.contains("model.txt (a LightGBM text model) carries no input signature")
            && missing.contains("declare exactly one input, 0 declared")
            && missing.contains("inputs = [{ name = \"input\""),
        "{missing}"
    );
    let shape = error(runtimes.build(
        &path,
        RuntimeChoice::Auto,
        1,
        &[input("x", DataType::F32, vec![8])],
    ));
    assert!(
        shape.contains("input 'x' must have shape [-1, features], declared [8]"),
        "{shape}"
    );
    let dtype = error(runtimes.build(
        &path,
        RuntimeChoice::Trees,
        1,
        &[input("x", DataType::I64, vec![-1, 8])],
    ));
    assert!(
        dtype.contains("input 'x' must be FP32 or FP64, declared INT64"),
        "{dtype}"
    );
    // Too few columns for the features the trees read: the library's reason.
    let narrow = error(runtimes.build(
        &path,
        RuntimeChoice::Auto,
        1,
        &[input("x", DataType::F32, vec![-1, 3])],
    ));
    assert!(narrow.contains("is configured with 3 features"), "{narrow}");
    for pinned in [RuntimeChoice::Ort, RuntimeChoice::Tract] {
        let e = error(runtimes.build(&path, pinned, 1, &[input("x", DataType::F32, vec![-1, 8])]));
        assert!(
            e.contains("which only runtime 'trees' runs")
                && e.contains(&format!("pins '{}'", pinned.as_str())),
            "{e}"
        );
    }

    let mut built = runtimes
        .build(
            &path,
            RuntimeChoice::Auto,
            1,
            &[input("features", DataType::F64, vec![-1, 8])],
        )
        .unwrap();
    assert_eq!(built.kind, RuntimeKind::Trees);
    assert_eq!(
        built.reason,
        "model.txt is a LightGBM text model: only trees runs it"
    );
    assert_eq!(
        built.signature.inputs,
        vec![input("features", DataType::F64, vec![-1, 8])]
    );
    let names: Vec<&str> = built
        .signature
        .outputs
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(names, ["label", "probabilities"]);
    let rows = Tensor::new("features", vec![3, 8], TensorData::F64(vec![0.5; 24])).unwrap();
    let outputs = built.instances[0].run(vec![rows]).unwrap();
    assert_eq!(outputs[0].shape, vec![3]);
    assert_eq!(outputs[1].shape, vec![3, 2]);
    // FP32 rows for an FP64 declaration are a clear error, not a panic.
    let wrong = Tensor::new("features", vec![1, 8], TensorData::F32(vec![0.5; 8])).unwrap();
    let e = built.instances[0].run(vec![wrong]).unwrap_err();
    assert_eq!(e.0, "trees: input 'features' expects FP64, got FP32");
}

#[test]
fn a_malformed_native_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    let text = std::fs::read_to_string(trees_fixture("xgb_binary.json")).unwrap();
    std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    let e = error(pure_rust().build(
        &path,
        RuntimeChoice::Auto,
        1,
        &[input("input", DataType::F32, vec![-1, 8])],
    ));
    assert!(e.starts_with("trees: "), "{e}");
}

#[test]
fn model_file_precedence() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(model_file(dir.path()), None);
    for (name, format) in [
        ("model.json", ModelFormat::XgBoost),
        ("model.txt", ModelFormat::LightGbm),
        ("model.onnx", ModelFormat::Onnx),
    ] {
        std::fs::write(dir.path().join(name), b"x").unwrap();
        let found = model_file(dir.path()).unwrap();
        assert_eq!(found, dir.path().join(name));
        assert_eq!(ModelFormat::of(&found), format);
    }
}

#[test]
fn runtime_choices_parse() {
    for choice in RuntimeChoice::ALL {
        assert_eq!(choice.as_str().parse::<RuntimeChoice>(), Ok(choice));
    }
    assert_eq!(
        "gpu".parse::<RuntimeChoice>(),
        Err("'gpu' is not one of auto, ort, tract, trees".to_string())
    );
    #[derive(serde::Deserialize)]
    struct Section {
        runtime: RuntimeChoice,
    }
    let section: Section = serde_json::from_str(r#"{"runtime": "trees"}"#).unwrap();
    assert_eq!(section.runtime, RuntimeChoice::Trees);
}
