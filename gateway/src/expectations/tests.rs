use super::*;
use crate::drift::profile::SCHEMA;
use sluice_core::error::ErrorKind;
use sluice_core::tensor::TensorSpec;

fn signature(datatype: DataType, width: i64) -> ModelSignature {
    ModelSignature {
        inputs: vec![TensorSpec {
            name: "input".into(),
            datatype,
            shape: vec![-1, width],
        }],
        outputs: vec![],
    }
}

fn config(text: &str) -> ExpectationsConfig {
    let config: ExpectationsConfig = toml::from_str(text).unwrap();
    assert!(config.problems().is_empty(), "{:?}", config.problems());
    config
}

fn names() -> Vec<String> {
    vec!["age".into(), "tenure".into(), "plan".into()]
}

fn build(text: &str, profile: Option<&Profile>) -> Result<Expectations, String> {
    let names = names();
    let declared: Vec<(&str, &[String])> = vec![("input", &names)];
    Expectations::build(
        "churn",
        1,
        &config(text),
        profile,
        &signature(DataType::F32, 3),
        &declared,
    )
}

fn rows(values: &[[f32; 3]]) -> Vec<Tensor> {
    let flat: Vec<f32> = values.iter().flatten().copied().collect();
    vec![Tensor::new("input", vec![values.len(), 3], TensorData::F32(flat)).unwrap()]
}

fn check(e: &Expectations, inputs: &[Tensor]) -> (ServeResult<()>, Flagged) {
    let mut flagged = Flagged::default();
    let result = e.check(inputs, &mut flagged);
    (result, flagged)
}

const DECLARED: &str = r#"
on_violation = "reject"
[features.tenure]
max = 96.5
min = 0
[features.plan]
allowed = [0, 1, 2]
allow_nan = false
"#;

#[test]
fn reject_names_the_input_row_feature_and_rule() {
    let e = build(DECLARED, None).unwrap();
    let ok = rows(&[[30.0, 96.5, 2.0], [f32::NAN, 0.0, 0.0]]);
    assert_eq!(check(&e, &ok).0, Ok(()));
    let above = rows(&[
        [30.0, 1.0, 0.0],
        [30.0, 1.0, 0.0],
        [30.0, 1.0, 0.0],
        [30.0, 1200.0, 0.0],
    ]);
    let err = check(&e, &above).0.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadRequest);
    assert_eq!(
        err.message,
        "input 'input' row 3 feature 'tenure': 1200 is above the expected maximum 96.5 \
         (model.toml expectations)"
    );
    let below = check(&e, &rows(&[[0.0, -0.5, 0.0]])).0.unwrap_err();
    assert!(
        below
            .message
            .contains("feature 'tenure': -0.5 is below the expected minimum 0"),
        "{}",
        below.message
    );
    let nan = check(&e, &rows(&[[0.0, 1.0, f32::NAN]])).0.unwrap_err();
    assert!(
        nan.message
            .contains("row 0 feature 'plan': NaN (a missing value) is not expected"),
        "{}",
        nan.message
    );
    let code = check(&e, &rows(&[[0.0, 1.0, 7.0]])).0.unwrap_err();
    assert!(
        code.message
            .contains("feature 'plan': 7 is not one of the expected values [0, 1, 2]"),
        "{}",
        code.message
    );
}

#[test]
fn flag_serves_and_keeps_the_first_violations() {
    let e = build(&DECLARED.replace("reject", "flag"), None).unwrap();
    let many: Vec<[f32; 3]> = (0..20).map(|_| [0.0, 100.0, 5.0]).collect();
    let (result, flagged) = check(&e, &rows(&many));
    assert_eq!(result, Ok(()));
    assert_eq!(flagged.violations, 40);
    assert_eq!(flagged.first.len(), SHOWN_VIOLATIONS);
    assert_eq!(
        flagged.first[0],
        Violation {
            row: 0,
            feature: "tenure".into(),
            rule: Rule::Max,
            value: 100.0
        }
    );
    assert_eq!(flagged.first[1].rule, Rule::Allowed);
    let json = serde_json::to_value(&flagged).unwrap();
    assert_eq!(json["first"][1]["rule"], "allowed");
    assert_eq!(json["violations"], 40);
    // A clean request allocates nothing.
    let (_, clean) = check(&e, &rows(&[[0.0, 1.0, 1.0]]));
    assert!(clean.is_empty() && clean.first.capacity() == 0);
}

#[test]
fn fp32_values_meet_bounds_written_in_decimal() {
    let e = build(
        "on_violation = \"reject\"\n[features.age]\nmax = 0.1\n",
        None,
    )
    .unwrap();
    assert_eq!(check(&e, &rows(&[[0.1, 0.0, 0.0]])).0, Ok(()));
    let err = check(&e, &rows(&[[0.2, 0.0, 0.0]])).0.unwrap_err();
    assert!(err.message.contains("0.2 is above"), "{}", err.message);
}

#[test]
fn integer_and_fp64_inputs_are_checked() {
    let config = config("on_violation = \"reject\"\n[features.f1]\nmin = 0\nmax = 10\n");
    for (datatype, data) in [
        (DataType::I64, TensorData::I64(vec![5, 11])),
        (DataType::F64, TensorData::F64(vec![5.0, 10.5])),
        (DataType::I32, TensorData::I32(vec![5, 11])),
    ] {
        let e = Expectations::build("m", 1, &config, None, &signature(datatype, 2), &[]).unwrap();
        let t = vec![Tensor::new("input", vec![1, 2], data).unwrap()];
        let err = check(&e, &t).0.unwrap_err();
        assert!(
            err.message.contains("row 0 feature 'f1'"),
            "{}",
            err.message
        );
    }
}

fn profile() -> Profile {
    let column = |values: Vec<f64>, name: &str| {
        FeatureProfile::from_values(name.into(), &values, 10).unwrap()
    };
    let mut features = vec![
        column((0..=100).map(f64::from).collect(), "age"),
        column((0..=50).map(|v| f64::from(v) / 2.0).collect(), "tenure"),
        column((0..60).map(|v| f64::from(v % 3)).collect(), "plan"),
    ];
    // Training had missing ages.
    features[0].nan_rows = Some(4);
    // From JSON, as a reader would get it (and whatever optional parts a profile gains).
    serde_json::from_value(serde_json::json!({
        "schema": SCHEMA,
        "model": "churn",
        "version": 1,
        "input": "input",
        "sample": {"file": "sample.csv", "rows": 101},
        "features": features,
    }))
    .unwrap()
}

#[test]
fn rules_derive_from_the_profile_with_a_margin() {
    let profile = profile();
    let e = build(
        "on_violation = \"reject\"\nderive = \"profile\"\nmargin = 0.1\n",
        Some(&profile),
    )
    .unwrap();
    // age: [0, 100] widened to [-10, 110], NaN allowed (training had some).
    assert_eq!(
        check(
            &e,
            &rows(&[[-10.0, 0.0, 0.0], [110.0, 0.0, 0.0], [f32::NAN, 0.0, 0.0]])
        )
        .0,
        Ok(())
    );
    let err = check(&e, &rows(&[[110.5, 0.0, 0.0]])).0.unwrap_err();
    assert_eq!(
        err.message,
        "input 'input' row 0 feature 'age': 110.5 is above the expected maximum 110 (training \
         range 0 to 100 in profile.json, widened by margin 0.1)"
    );
    // tenure: [0, 25] -> [-2.5, 27.5], and no NaN in training.
    let err = check(&e, &rows(&[[0.0, f32::NAN, 0.0]])).0.unwrap_err();
    assert!(err.message.contains("had none"), "{}", err.message);
    assert!(check(&e, &rows(&[[0.0, 27.6, 0.0]])).0.is_err());
    // plan: 3 distinct integers, a categorical column.
    let err = check(&e, &rows(&[[0.0, 0.0, 1.5]])).0.unwrap_err();
    assert!(
        err.message
            .contains("1.5 is not one of the expected values [0, 1, 2]"),
        "{}",
        err.message
    );
}

#[test]
fn overrides_replace_derived_rules() {
    let profile = profile();
    let text = r#"
on_violation = "reject"
derive = "profile"
categorical_values = 0
[features.age]
max = inf
allow_nan = false
[features.tenure]
max = 40
"#;
    let e = build(text, Some(&profile)).unwrap();
    assert_eq!(check(&e, &rows(&[[1e6, 39.0, 1.5]])).0, Ok(()));
    let err = check(&e, &rows(&[[f32::NAN, 0.0, 0.0]])).0.unwrap_err();
    assert!(
        err.message.contains("(model.toml expectations)"),
        "{}",
        err.message
    );
    let err = check(&e, &rows(&[[0.0, 41.0, 0.0]])).0.unwrap_err();
    assert!(
        err.message.contains("expected maximum 40 (model.toml"),
        "{}",
        err.message
    );
}

#[test]
fn an_older_profile_gets_no_nan_rule() {
    let mut profile = profile();
    for f in &mut profile.features {
        f.nan_rows = None;
        f.distinct_values = None;
    }
    let e = build(
        "on_violation = \"reject\"\nderive = \"profile\"\n",
        Some(&profile),
    )
    .unwrap();
    assert_eq!(check(&e, &rows(&[[f32::NAN, f32::NAN, 1.5]])).0, Ok(()));
}

#[test]
fn bad_tables_are_named() {
    let problems = |text: &str| {
        toml::from_str::<ExpectationsConfig>(text)
            .unwrap()
            .problems()
    };
    let p = problems("[features.tenure]\nmin = 5\nmax = 1\n");
    assert_eq!(p, ["expectations.features.tenure: min 5 is above max 1"]);
    assert!(problems("margin = -1\nderive = \"profile\"\n")[0].contains("margin"));
    assert!(problems("on_violation = \"flag\"\n")[0].contains("nothing to check"));
    assert!(problems("[features.x]\n")[0].contains("empty"));
    assert!(toml::from_str::<ExpectationsConfig>("on_violation = \"drop\"\n").is_err());
    assert!(toml::from_str::<ExpectationsConfig>("[features.x]\nmaximum = 1\n").is_err());

    let err = build("[features.tenur]\nmax = 1\n", None).unwrap_err();
    assert!(
        err.contains("no feature 'tenur' in input 'input' (its features: age, tenure, plan)"),
        "{err}"
    );
    // A derived minimum above a declared maximum.
    let profile = profile();
    let err = build(
        "derive = \"profile\"\n[features.age]\nmax = -50\n",
        Some(&profile),
    )
    .unwrap_err();
    assert!(
        err.contains("expectations.features.age: min -10 is above"),
        "{err}"
    );
    let bytes = ModelSignature {
        inputs: vec![TensorSpec {
            name: "text".into(),
            datatype: DataType::Bytes,
            shape: vec![-1, 1],
        }],
        outputs: vec![],
    };
    let err = Expectations::build(
        "m",
        1,
        &config("[features.f0]\nmax = 1\n"),
        None,
        &bytes,
        NAMES_DECLARED,
    )
    .unwrap_err();
    assert!(err.contains("no 2-D FP32, FP64 or integer input"), "{err}");
}

const NAMES_DECLARED: DeclaredFeatures<'static> = &[];

#[test]
fn a_missing_profile_refuses_derived_expectations() {
    let dir = tempfile::tempdir().unwrap();
    let config = config("derive = \"profile\"\n");
    let err = for_version(
        "m",
        3,
        dir.path(),
        Some(&config),
        &signature(DataType::F32, 3),
        &[],
    )
    .unwrap_err();
    assert!(err.contains("version 3 has no profile.json"), "{err}");
    assert!(
        for_version("m", 3, dir.path(), None, &signature(DataType::F32, 3), &[])
            .unwrap()
            .is_none()
    );
}

#[test]
fn allowed_sets_as_masks_and_sorted() {
    let bits = Allowed::<f32>::new(&[-1.0, 0.0, 3.0]);
    assert!(matches!(bits, Allowed::Bits { .. }));
    for (x, want) in [
        (-1.0, true),
        (-0.0, true),
        (3.0, true),
        (1.0, false),
        (0.5, false),
    ] {
        assert_eq!(bits.contains(x), want, "{x}");
    }
    assert!(!bits.contains(-2.0) && !bits.contains(100.0) && !bits.contains(f32::INFINITY));
    let sorted = Allowed::<f64>::new(&[0.0, 2.5, 100.0]);
    assert!(matches!(sorted, Allowed::Sorted(_)));
    assert!(sorted.contains(100.0) && sorted.contains(-0.0) && !sorted.contains(1.0));
}
