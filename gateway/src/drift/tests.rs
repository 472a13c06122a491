//! The drift numbers against an independent computation: scipy's `ks_2samp` and a plain numpy
//! 10-decile PSI (`tests/fixtures/drift/make_drift_reference.py`), for the churn bench sample
//! against shifted copies of it, fed through a live window row by row.

use std::path::{Path, PathBuf};

use super::profile::{
    ClassShare, ClassSource, Continuous, FeatureProfile, PredictionProfile, Profile, SCHEMA,
    SampleInfo,
};
use super::sample::{self, Sample};
use super::{DriftMonitor, stats};
use crate::drift::DriftConfig;
use sluice_core::tensor::{DataType, ModelSignature, Tensor, TensorData, TensorSpec};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn spec(name: &str, datatype: DataType, shape: Vec<i64>) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype,
        shape,
    }
}

fn signature(features: i64) -> ModelSignature {
    ModelSignature {
        inputs: vec![spec("input", DataType::F32, vec![-1, features])],
        outputs: vec![spec("label", DataType::I64, vec![-1])],
    }
}

fn feature_profile(reference: &Sample) -> Profile {
    Profile {
        schema: SCHEMA.into(),
        model: "churn".into(),
        version: 1,
        input: "input".into(),
        sample: SampleInfo {
            file: "churn_sample.npy".into(),
            rows: reference.rows,
        },
        features: (0..reference.columns)
            .map(|j| FeatureProfile {
                name: format!("f{j}"),
                distribution: Continuous::from_values(reference.column(j), 200).unwrap(),
                nan_rows: None,
                distinct_values: None,
            })
            .collect(),
        prediction: None,
        quality: None,
    }
}

/// Sends `live` through the monitor the way requests would: batches of a few rows.
fn observe(monitor: &DriftMonitor, live: &Sample) {
    for start in (0..live.rows).step_by(7) {
        let rows = 7.min(live.rows - start);
        let values = &live.values[start * live.columns..(start + rows) * live.columns];
        let data = TensorData::F32(values.iter().map(|&v| v as f32).collect());
        let tensor = Tensor::new("input", vec![rows, live.columns], data).unwrap();
        monitor.observe_inputs(&[tensor]);
    }
}

#[test]
fn ks_and_psi_match_scipy_and_numpy() {
    let reference = sample::read(&fixtures().join("bench/churn_sample.npy")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("drift/churn_drift_reference.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(expected["epsilon"].as_f64(), Some(stats::PSI_EPSILON));
    let profile = feature_profile(&reference);
    assert!(profile.problems().is_empty(), "{:?}", profile.problems());
    let cases = expected["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 2);
    for (case, want) in cases {
        let live = sample::read(
            &fixtures()
                .join("drift")
                .join(want["file"].as_str().unwrap()),
        )
        .unwrap();
        let monitor = DriftMonitor::new(&profile, &signature(12), &DriftConfig::default()).unwrap();
        observe(&monitor, &live);
        let report = monitor.report();
        assert_eq!(report.window_rows, live.rows as u64);
        let want = want["features"].as_array().unwrap();
        assert_eq!(report.features.len(), want.len());
        let largest = |stat: &str| {
            report
                .features
                .iter()
                .zip(want)
                .map(|(g, w)| {
                    let got = if stat == "ks" { g.ks } else { g.psi };
                    (got.unwrap() - w[stat].as_f64().unwrap()).abs()
                })
                .fold(0.0, f64::max)
        };
        eprintln!(
            "{case}: largest |ks - scipy| {:.2e}, |psi - numpy| {:.2e}",
            largest("ks"),
            largest("psi")
        );
        for (got, want) in report.features.iter().zip(want) {
            let (ks, psi) = (got.ks.unwrap(), got.psi.unwrap());
            let (want_ks, want_psi) = (want["ks"].as_f64().unwrap(), want["psi"].as_f64().unwrap());
            assert_eq!(got.name, want["name"].as_str().unwrap());
            assert_eq!(got.rows, live.rows as u64);
            assert!(
                (ks - want_ks).abs() <= 0.01,
                "{case} {}: ks {ks} vs scipy {want_ks}",
                got.name
            );
            assert!(
                (psi - want_psi).abs() <= 0.01,
                "{case} {}: psi {psi} vs numpy {want_psi}",
                got.name
            );
        }
    }
}

#[test]
fn snapshot_counts_add_up() {
    let reference = sample::read(&fixtures().join("bench/churn_sample.npy")).unwrap();
    let monitor = DriftMonitor::new(
        &feature_profile(&reference),
        &signature(12),
        &DriftConfig::default(),
    )
    .unwrap();
    observe(&monitor, &reference);
    let snapshot = monitor.snapshot();
    assert_eq!(snapshot.rows, 1000);
    for feature in &snapshot.features {
        assert_eq!(feature.bins.len(), 202);
        assert_eq!(feature.bins.iter().sum::<u64>(), 1000);
        assert_eq!(feature.psi_bins.len(), 10);
        // The reference itself: every decile bin holds its tenth.
        assert!(feature.psi_bins.iter().all(|&n| n == 100), "{feature:?}");
    }
    // The reference against itself: no drift at all.
    let report = monitor.report();
    assert!(report.features.iter().all(|f| f.psi == Some(0.0)));
    assert!(report.features.iter().all(|f| f.ks.unwrap() < 1e-12));
}

#[test]
fn class_predictions_and_misfits() {
    let reference = sample::read(&fixtures().join("bench/churn_sample.npy")).unwrap();
    let mut profile = feature_profile(&reference);
    profile.prediction = Some(PredictionProfile::Class {
        output: "label".into(),
        source: ClassSource::Label,
        classes: vec![
            ClassShare {
                class: 0,
                proportion: 0.8,
            },
            ClassShare {
                class: 1,
                proportion: 0.2,
            },
        ],
    });
    let monitor = DriftMonitor::new(&profile, &signature(12), &DriftConfig::default()).unwrap();
    // Half zeros, half ones, and one class the reference never saw.
    let labels = Tensor::new("label", vec![5], TensorData::I64(vec![0, 1, 0, 1, 7])).unwrap();
    monitor.observe_outputs(&[labels]);
    let prediction = monitor.report().prediction.unwrap();
    assert_eq!(prediction.rows, 5);
    assert_eq!(prediction.ks, None);
    let want = stats::psi(&[0.8, 0.2, 0.0], &[2, 2, 1]).unwrap();
    assert!((prediction.psi.unwrap() - want).abs() < 1e-12);

    // A profile for another model is refused with the reason.
    let err = DriftMonitor::new(&profile, &signature(11), &DriftConfig::default())
        .err()
        .unwrap();
    assert!(err.contains("11 features, the profile 12"), "{err}");
    profile.input = "x".into();
    let err = DriftMonitor::new(&profile, &signature(12), &DriftConfig::default())
        .err()
        .unwrap();
    assert!(err.contains("no input 'x'"), "{err}");
}

#[test]
fn profile_round_trips_through_json() {
    let reference = sample::read(&fixtures().join("bench/churn_sample.npy")).unwrap();
    let profile = feature_profile(&reference);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("profile.json");
    profile.write(&path).unwrap();
    // serde_json parses floats to within an ulp (exact parsing is an opt-in feature that
    // would slow every JSON request), so compare with a tolerance.
    let back = Profile::read(&path).unwrap();
    assert_eq!(back.features.len(), profile.features.len());
    for (a, b) in back.features.iter().zip(&profile.features) {
        let (a, b) = (&a.distribution, &b.distribution);
        for (x, y) in a
            .quantiles
            .iter()
            .zip(&b.quantiles)
            .chain(a.psi.edges.iter().zip(&b.psi.edges))
        {
            assert!((x - y).abs() <= 1e-12 * y.abs().max(1.0), "{x} vs {y}");
        }
        assert_eq!(a.cdf.len(), b.cdf.len());
    }
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("sluice.profile.v1", "sluice.profile.v9");
    std::fs::write(&path, text).unwrap();
    let err = Profile::read(&path).unwrap_err().to_string();
    assert!(err.contains("expected 'sluice.profile.v1'"), "{err}");
}
