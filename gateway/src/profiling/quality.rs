//! The offline quality `sluice profile --labels` stores: the version's answers on its profile
//! sample scored against the true labels by the live join's own rules
//! ([`Predicted::from_outputs`] and [`score`]), so that the baseline in `profile.json` and the
//! live accuracy per version are the same statistic on different rows.
//!
//! Classifiers only: the baseline the quality controller alerts on is an accuracy, and a
//! regressor has none (its live MAE and RMSE are shown without a baseline).

use sluice_core::tensor::{ModelSignature, Tensor};

use crate::drift::profile::OfflineQuality;
use crate::telemetry::quality::{OutputKind, Predicted, RowPrediction, Truth, exact_auc, score};

/// Refuses a model whose answers a class label cannot judge, saying why.
pub fn check_classifier(signature: &ModelSignature) -> Result<(), String> {
    if signature.inputs.len() != 1 {
        return Err(format!(
            "--labels needs the model run on the sample, and it has {} inputs (the sample \
             holds one)",
            signature.inputs.len()
        ));
    }
    match OutputKind::of(signature) {
        OutputKind::Class => Ok(()),
        other => Err(format!(
            "--labels takes class labels and the model's outputs are {}: the offline baseline \
             is an accuracy, for classifiers only (a regressor's live MAE and RMSE have no \
             baseline); profile it without --labels",
            other.as_str()
        )),
    }
}

/// Running sums over the sample's rows, run by run.
pub struct Scorer {
    labels: Vec<i64>,
    file: String,
    scored: usize,
    correct: usize,
    probability_rows: usize,
    log_loss_sum: f64,
    /// p(class 1) and whether the true class is 1, per row with two class probabilities.
    scores: Vec<f64>,
    positive: Vec<bool>,
}

impl Scorer {
    /// `labels` holds one class per sample row; `file` names them in the profile.
    pub fn new(labels: Vec<i64>, file: String) -> Scorer {
        Scorer {
            labels,
            file,
            scored: 0,
            correct: 0,
            probability_rows: 0,
            log_loss_sum: 0.0,
            scores: Vec::new(),
            positive: Vec::new(),
        }
    }

    /// Scores one run: `outputs` (every output, signature order) answered the `rows` sample
    /// rows from `start`.
    pub fn add(&mut self, start: usize, rows: usize, outputs: &[Tensor]) -> Result<(), String> {
        let predicted = Predicted::from_outputs(outputs, rows);
        for r in 0..rows {
            let row = start + r;
            let y = *self
                .labels
                .get(row)
                .ok_or("the labels file has fewer labels than the sample has rows")?;
            let prediction = predicted
                .row(r)
                .ok_or("the model answered fewer rows than it was given")?;
            if let RowPrediction::Class {
                probabilities: Some(p),
                ..
            } = prediction
                && usize::try_from(y).map_or(true, |k| k >= p.len())
            {
                return Err(format!(
                    "{} row {}: label {y} is not one of the model's {} classes (0 to {})",
                    self.file,
                    row + 1,
                    p.len(),
                    p.len() - 1
                ));
            }
            let scored = score(prediction, Truth::Label(y)).map_err(|_| {
                "the model's answer has no class label to compare the labels with".to_string()
            })?;
            self.scored += 1;
            self.correct += usize::from(scored.correct == Some(true));
            if let Some(loss) = scored.log_loss {
                self.probability_rows += 1;
                self.log_loss_sum += loss;
            }
            // The same rule as the live two-class AUC.
            if let RowPrediction::Class {
                probabilities: Some(p),
                ..
            } = prediction
                && p.len() == 2
            {
                self.scores.push(f64::from(p[1]));
                self.positive.push(y == 1);
            }
        }
        Ok(())
    }

    /// The numbers over every row. Log loss and ROC AUC are left out unless every row had
    /// class probabilities (two of them, for the AUC): a mean over part of the sample would
    /// not be the sample's.
    pub fn finish(self) -> Result<OfflineQuality, String> {
        if self.scored != self.labels.len() {
            return Err(format!(
                "scored {} of the sample's {} rows",
                self.scored,
                self.labels.len()
            ));
        }
        let rows = self.scored;
        let every = |n: usize| n == rows && rows > 0;
        Ok(OfflineQuality {
            labels: self.file,
            rows,
            accuracy: self.correct as f64 / rows.max(1) as f64,
            log_loss: every(self.probability_rows).then(|| self.log_loss_sum / rows as f64),
            roc_auc: if every(self.scores.len()) {
                exact_auc(&self.scores, &self.positive)
            } else {
                None
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::tensor::{DataType, TensorData, TensorSpec};

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn only_a_classifier_on_the_sample_takes_labels() {
        let input = spec("input", DataType::F32, &[-1, 4]);
        let classifier = ModelSignature {
            inputs: vec![input.clone()],
            outputs: vec![
                spec("label", DataType::I64, &[-1]),
                spec("probabilities", DataType::F32, &[-1, 2]),
            ],
        };
        assert_eq!(check_classifier(&classifier), Ok(()));
        let regressor = ModelSignature {
            inputs: vec![input.clone()],
            outputs: vec![spec("value", DataType::F32, &[-1, 1])],
        };
        let error = check_classifier(&regressor).unwrap_err();
        assert!(error.contains("outputs are values"), "{error}");
        assert!(error.contains("classifiers only"), "{error}");
        let two_inputs = ModelSignature {
            inputs: vec![input.clone(), input],
            ..classifier
        };
        assert!(
            check_classifier(&two_inputs)
                .unwrap_err()
                .contains("2 inputs")
        );
    }

    fn answer(labels: Vec<i64>, probabilities: Vec<f32>) -> Vec<Tensor> {
        let rows = labels.len();
        vec![
            Tensor::new("label", vec![rows], TensorData::I64(labels)).unwrap(),
            Tensor::new(
                "probabilities",
                vec![rows, 2],
                TensorData::F32(probabilities),
            )
            .unwrap(),
        ]
    }

    #[test]
    fn scores_runs_as_the_live_join_does() {
        let mut scorer = Scorer::new(vec![1, 0, 0, 1], "y.npy".into());
        // Rows 0 and 3 right, rows 1 and 2 wrong; over two runs.
        scorer
            .add(0, 2, &answer(vec![1, 1], vec![0.2, 0.8, 0.4, 0.6]))
            .unwrap();
        scorer
            .add(2, 2, &answer(vec![1, 1], vec![0.3, 0.7, 0.1, 0.9]))
            .unwrap();
        let q = scorer.finish().unwrap();
        assert_eq!((q.rows, q.accuracy), (4, 0.5));
        let expected = -(0.8f32.ln() + 0.4f32.ln() + 0.3f32.ln() + 0.9f32.ln()) / 4.0;
        assert!((q.log_loss.unwrap() - f64::from(expected)).abs() < 1e-6);
        // Positives score 0.8 and 0.9, negatives 0.6 and 0.7: all four pairs ordered.
        assert_eq!(q.roc_auc, Some(1.0));
        assert_eq!(q.labels, "y.npy");
    }

    #[test]
    fn a_label_outside_the_classes_is_refused() {
        let mut scorer = Scorer::new(vec![2], "y.txt".into());
        let error = scorer
            .add(0, 1, &answer(vec![1], vec![0.5, 0.5]))
            .unwrap_err();
        assert_eq!(
            error,
            "y.txt row 1: label 2 is not one of the model's 2 classes (0 to 1)"
        );
    }

    #[test]
    fn a_label_only_answer_has_accuracy_alone() {
        let mut scorer = Scorer::new(vec![3, 4], "y.txt".into());
        let labels = Tensor::new("label", vec![2], TensorData::I64(vec![3, 3])).unwrap();
        scorer.add(0, 2, &[labels]).unwrap();
        let q = scorer.finish().unwrap();
        assert_eq!((q.accuracy, q.log_loss, q.roc_auc), (0.5, None, None));
    }
}
