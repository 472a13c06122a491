//! `sluice profile`: builds a version's `profile.json` from a sample of training rows, running
//! the model itself (through the same runtimes and `model.toml` settings the server uses) to
//! get the reference distribution of its prediction. With `--labels`, the same run's answers
//! are scored against the true labels ([`quality`]) and stored as the live accuracy alert's
//! baseline.

pub mod labels;
pub mod quality;

use std::path::PathBuf;

use crate::config::{Config, RuntimeChoice};
use crate::drift::profile::{
    ClassShare, ClassSource, Continuous, FeatureProfile, PredictionProfile, Profile, ProfileError,
    SCHEMA, SampleInfo,
};
use crate::drift::sample::{self, Sample, SampleError};
use crate::repository::{self, Loader, ModelDir};
use crate::telemetry::quality::MAX_KEPT_ROWS;
use labels::Labels;
use sluice_core::tensor::{DataType, ModelSignature, Tensor, TensorData};
use sluice_runtime::Backend;

/// Fine quantiles per feature by default: KS evaluated at 201 edges is within about 0.005 of
/// the exact statistic for continuous features, and a row's binary search takes 8 steps.
pub const DEFAULT_QUANTILES: usize = 200;
/// Rows per model run while predicting the sample.
const RUN_ROWS: usize = 256;
// The labels are scored run by run, and the live join keeps this many rows of an answer.
const _: () = assert!(RUN_ROWS <= MAX_KEPT_ROWS);

/// What to profile, as `sluice profile` takes it.
#[derive(Clone, Debug)]
pub struct ProfileRequest {
    pub model: String,
    pub version: u64,
    pub sample: PathBuf,
    /// Overrides the model's runtime choice for the prediction run.
    pub runtime: Option<RuntimeChoice>,
    /// Fine quantiles per feature; a multiple of 10.
    pub quantiles: usize,
    /// The input whose columns are the features; default: the first 2-D float input.
    pub input: Option<String>,
    /// Where to write; default: `<repository>/<model>/<version>/profile.json`.
    pub output: Option<PathBuf>,
    /// One true class label per sample row: the version's offline quality on the sample is
    /// stored in the profile (`quality`), the baseline of the live accuracy alert.
    pub labels: Option<PathBuf>,
}

/// The rows a profile is built from, as read from disk.
#[derive(Clone, Debug)]
pub struct ProfileRows {
    pub sample: Sample,
    /// The sample file's name, for the profile's reader.
    pub name: String,
    /// One label per sample row (`--labels`).
    pub labels: Option<Labels>,
}

/// Builds the profile `request` describes and writes it; returns where it went.
pub fn write_profile(
    config: &Config,
    request: &ProfileRequest,
) -> Result<(PathBuf, Profile), ProfileError> {
    let model = repository::read_model(&config.repository.path, &request.model)
        .map_err(|e| ProfileError::Model(e.to_string()))?;
    if !model.versions.contains(&request.version) {
        return Err(ProfileError::Model(format!(
            "model '{}' has no version {} (found: {:?})",
            model.name, request.version, model.versions
        )));
    }
    let loader = Loader::new(&config.runtime, &config.repository, &config.drift);
    let (signature, mut backend) = loader
        .build_one(&model, request.version, request.runtime)
        .map_err(|e| ProfileError::Model(format!("cannot load the model: {e}")))?;
    let sample = sample::read(&request.sample)?;
    let name = request
        .sample
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let labels = match &request.labels {
        Some(path) => {
            let labels = labels::read(path)?;
            if labels.values.len() != sample.rows {
                return Err(SampleError::Invalid {
                    path: path.display().to_string(),
                    message: format!(
                        "{} labels for the {} rows of {name}: the file needs one true label \
                         per sample row, in the sample's order",
                        labels.values.len(),
                        sample.rows
                    ),
                }
                .into());
            }
            Some(labels)
        }
        None => None,
    };
    let rows = ProfileRows {
        sample,
        name,
        labels,
    };
    let profile = build_profile(
        &model,
        request.version,
        &signature,
        backend.as_mut(),
        &rows,
        request,
    )?;
    let path = request.output.clone().unwrap_or_else(|| {
        model
            .version_dir(request.version)
            .join(crate::drift::profile::FILE_NAME)
    });
    profile.write(&path)?;
    Ok((path, profile))
}

/// The profile of `sample` for one model version.
pub fn build_profile(
    model: &ModelDir,
    version: u64,
    signature: &ModelSignature,
    backend: &mut dyn Backend,
    rows: &ProfileRows,
    request: &ProfileRequest,
) -> Result<Profile, ProfileError> {
    let fail = |message: String| ProfileError::Model(message);
    let sample = &rows.sample;
    if request.quantiles == 0
        || !request
            .quantiles
            .is_multiple_of(crate::drift::profile::PSI_BINS)
    {
        return Err(fail(format!(
            "quantiles must be a positive multiple of {}, got {}",
            crate::drift::profile::PSI_BINS,
            request.quantiles
        )));
    }
    let input = feature_input(signature, request.input.as_deref()).map_err(fail)?;
    if input.shape[1] >= 0 && input.shape[1] as usize != sample.columns {
        return Err(fail(format!(
            "input '{}' takes {} features, the sample has {} columns",
            input.name, input.shape[1], sample.columns
        )));
    }
    let names = feature_names(model, &input.name, sample.columns).map_err(fail)?;
    let mut features = Vec::with_capacity(names.len());
    for (j, name) in names.into_iter().enumerate() {
        let column: Vec<f64> = sample.column(j).collect();
        let feature = FeatureProfile::from_values(name.clone(), &column, request.quantiles)
            .ok_or_else(|| fail(format!("feature '{name}' has no values (all NaN)")))?;
        features.push(feature);
    }
    // Checked before the run, and the labels' values only once the model takes labels: a
    // regressor's float targets are refused for being a regressor's, not for their fractions.
    let mut scorer = match &rows.labels {
        Some(labels) => {
            quality::check_classifier(signature).map_err(fail)?;
            let classes = labels::classes(labels).map_err(fail)?;
            Some(quality::Scorer::new(classes, labels.file.clone()))
        }
        None => None,
    };
    let mut reference = choose_target(signature).map(Reference::new);
    let prediction = if signature.inputs.len() == 1 {
        if reference.is_some() || scorer.is_some() {
            run_sample(
                signature,
                backend,
                sample,
                input.datatype,
                |start, n, outputs| {
                    if let Some(reference) = &mut reference {
                        reference.add(n, outputs)?;
                    }
                    if let Some(scorer) = &mut scorer {
                        scorer.add(start, n, outputs)?;
                    }
                    Ok(())
                },
            )
            .map_err(fail)?;
        }
        reference.and_then(|r| r.finish(signature, request.quantiles))
    } else {
        // Other inputs are not in the sample, so the model cannot run on it.
        tracing::warn!(
            model = %model.name,
            "the model has several inputs: the profile has no prediction reference"
        );
        None
    };
    let quality = scorer
        .map(quality::Scorer::finish)
        .transpose()
        .map_err(fail)?;
    Ok(Profile {
        schema: SCHEMA.to_string(),
        model: model.name.clone(),
        version,
        input: input.name.clone(),
        sample: SampleInfo {
            file: rows.name.clone(),
            rows: sample.rows,
        },
        features,
        prediction,
        quality,
    })
}

/// The input named `wanted`, else the first 2-D float input.
fn feature_input<'a>(
    signature: &'a ModelSignature,
    wanted: Option<&str>,
) -> Result<&'a sluice_core::tensor::TensorSpec, String> {
    let usable = |s: &&sluice_core::tensor::TensorSpec| {
        matches!(s.datatype, DataType::F32 | DataType::F64) && s.shape.len() == 2
    };
    match wanted {
        Some(name) => signature
            .inputs
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("the model has no input '{name}'"))
            .and_then(|s| {
                if usable(&s) {
                    Ok(s)
                } else {
                    Err(format!("input '{name}' is not a 2-D FP32/FP64 input"))
                }
            }),
        None => signature
            .inputs
            .iter()
            .find(usable)
            .ok_or_else(|| "the model has no 2-D FP32/FP64 input to profile".to_string()),
    }
}

/// Names from `model.toml` when the input declares them, else `f0`, `f1`, ...
fn feature_names(model: &ModelDir, input: &str, columns: usize) -> Result<Vec<String>, String> {
    let declared = model
        .config
        .inputs
        .iter()
        .find(|i| i.name == input)
        .map(|i| i.features.clone())
        .unwrap_or_default();
    if declared.is_empty() {
        return Ok((0..columns).map(|j| format!("f{j}")).collect());
    }
    if declared.len() != columns {
        return Err(format!(
            "model.toml names {} features for input '{input}', the sample has {columns} columns",
            declared.len()
        ));
    }
    Ok(declared)
}

/// What of the model's output the profile tracks (see [`PredictionProfile`] for the rule).
enum Target {
    Score { output: usize, column: usize },
    Argmax { output: usize, classes: usize },
    Label { output: usize },
}

fn choose_target(signature: &ModelSignature) -> Option<Target> {
    let float = signature.outputs.iter().enumerate().find_map(|(i, s)| {
        if !matches!(s.datatype, DataType::F32 | DataType::F64) {
            return None;
        }
        match s.shape.as_slice() {
            [_] | [_, 1] => Some(Target::Score {
                output: i,
                column: 0,
            }),
            [_, 2] => Some(Target::Score {
                output: i,
                column: 1,
            }),
            [_, c] if *c > 2 => Some(Target::Argmax {
                output: i,
                classes: *c as usize,
            }),
            _ => None,
        }
    });
    float.or_else(|| {
        signature
            .outputs
            .iter()
            .position(|s| {
                !matches!(
                    s.datatype,
                    DataType::F32 | DataType::F64 | DataType::Bytes | DataType::Bool
                ) && matches!(s.shape.as_slice(), [_] | [_, 1])
            })
            .map(|output| Target::Label { output })
    })
}

/// Runs the model over the sample, [`RUN_ROWS`] rows at a time, handing each run's answer
/// (every output, signature order) to `each` with its first row and its row count.
fn run_sample(
    signature: &ModelSignature,
    backend: &mut dyn Backend,
    sample: &Sample,
    datatype: DataType,
    mut each: impl FnMut(usize, usize, &[Tensor]) -> Result<(), String>,
) -> Result<(), String> {
    let input = &signature.inputs[0];
    for start in (0..sample.rows).step_by(RUN_ROWS) {
        let rows = RUN_ROWS.min(sample.rows - start);
        let values = &sample.values[start * sample.columns..(start + rows) * sample.columns];
        let data = match datatype {
            DataType::F64 => TensorData::F64(values.to_vec()),
            _ => TensorData::F32(values.iter().map(|&v| v as f32).collect()),
        };
        let tensor = Tensor::new(input.name.clone(), vec![rows, sample.columns], data)
            .map_err(|e| e.to_string())?;
        let outputs = backend
            .run(vec![tensor])
            .map_err(|e| format!("the model failed on the sample: {e}"))?;
        each(start, rows, &outputs)?;
    }
    Ok(())
}

/// The prediction's reference distribution, gathered run by run.
struct Reference {
    target: Target,
    scores: Vec<f64>,
    classes: Vec<i64>,
}

impl Reference {
    fn new(target: Target) -> Reference {
        Reference {
            target,
            scores: Vec::new(),
            classes: Vec::new(),
        }
    }

    fn add(&mut self, rows: usize, outputs: &[Tensor]) -> Result<(), String> {
        let output = match self.target {
            Target::Score { output, .. }
            | Target::Argmax { output, .. }
            | Target::Label { output } => outputs
                .get(output)
                .ok_or("the model returned fewer outputs than it declares")?,
        };
        let width: usize = output.shape.iter().skip(1).product();
        let floats: Vec<f64> = match &output.data {
            TensorData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::F64(v) => v.clone(),
            _ => Vec::new(),
        };
        match self.target {
            Target::Score { column, .. } => self
                .scores
                .extend((0..rows).filter_map(|r| floats.get(r * width + column).copied())),
            Target::Argmax { .. } => self.classes.extend((0..rows).filter_map(|r| {
                let row = floats.get(r * width..(r + 1) * width)?;
                let best = row
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| !v.is_nan())
                    .max_by(|a, b| a.1.total_cmp(b.1))?;
                Some(best.0 as i64)
            })),
            Target::Label { .. } => self.classes.extend(integers(&output.data)),
        }
        Ok(())
    }

    fn finish(self, signature: &ModelSignature, quantiles: usize) -> Option<PredictionProfile> {
        let output = |i: usize| signature.outputs[i].name.clone();
        let Reference {
            target,
            scores,
            classes,
        } = self;
        match target {
            Target::Score { output: i, column } => {
                Continuous::from_values(scores, quantiles).map(|distribution| {
                    PredictionProfile::Score {
                        output: output(i),
                        column,
                        distribution,
                    }
                })
            }
            Target::Argmax {
                output: i,
                classes: c,
            } => Some(PredictionProfile::Class {
                output: output(i),
                source: ClassSource::Argmax,
                classes: shares((0..c as i64).collect(), &classes),
            }),
            Target::Label { output: i } => {
                let mut seen = classes.clone();
                seen.sort_unstable();
                seen.dedup();
                Some(PredictionProfile::Class {
                    output: output(i),
                    source: ClassSource::Label,
                    classes: shares(seen, &classes),
                })
            }
        }
    }
}

/// The share of `values` equal to each of `classes`.
fn shares(classes: Vec<i64>, values: &[i64]) -> Vec<ClassShare> {
    let total = values.len().max(1) as f64;
    classes
        .into_iter()
        .map(|class| ClassShare {
            class,
            proportion: values.iter().filter(|&&v| v == class).count() as f64 / total,
        })
        .collect()
}

fn integers(data: &TensorData) -> Vec<i64> {
    match data {
        TensorData::I64(v) => v.clone(),
        TensorData::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
        TensorData::I16(v) => v.iter().map(|&x| i64::from(x)).collect(),
        TensorData::I8(v) => v.iter().map(|&x| i64::from(x)).collect(),
        TensorData::U8(v) => v.iter().map(|&x| i64::from(x)).collect(),
        TensorData::U16(v) => v.iter().map(|&x| i64::from(x)).collect(),
        TensorData::U32(v) => v.iter().map(|&x| i64::from(x)).collect(),
        TensorData::U64(v) => v.iter().filter_map(|&x| i64::try_from(x).ok()).collect(),
        _ => Vec::new(),
    }
}
