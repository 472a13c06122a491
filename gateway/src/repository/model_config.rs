//! `model.toml`: optional per-model settings next to the version folders.

use std::path::Path;

use serde::Deserialize;

use super::VersionPolicy;
use crate::expectations::ExpectationsConfig;
use crate::rollout::{RolloutConfig, RolloutOverrides};
use sluice_core::tensor::{DataType, TensorSpec, format_dims};
use sluice_runtime::RuntimeChoice;

/// Everything a model folder may override; unset fields fall back to the server config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Runtime for this model ("auto", "trees", "ort", "tract").
    pub runtime: Option<RuntimeChoice>,
    /// Which versions stay loaded; defaults to `repository.version_policy`.
    pub version_policy: Option<VersionPolicy>,
    /// Worker threads per loaded version; defaults to `runtime.instances`.
    pub instances: Option<usize>,
    /// Dynamic batching, e.g. `{ max_batch_size = 32, max_queue_delay_us = 200 }`, or
    /// `{ max_batch_size = 1 }` for none; defaults to `runtime.batching`.
    pub batching: Option<sluice_runtime::Batching>,
    /// Inputs the model must declare. A version whose file disagrees is refused at load time,
    /// so a wrongly exported model never replaces a good one. LightGBM `model.txt` and XGBoost
    /// `model.json` files carry no signature: for them this is the signature (one
    /// `[-1, features]` FP32 or FP64 input).
    #[serde(default)]
    pub inputs: Vec<DeclaredInput>,
    /// A guarded rollout for new versions (fields as in the server's `[rollout]` section, each
    /// optional). With it, a version folder that appears (picked up by polling or loaded
    /// through the API) is rolled out step by step against the current primary, which stays
    /// pinned, instead of becoming primary at once.
    pub rollout: Option<RolloutOverrides>,
    /// Data expectations checked on every request before the model runs: per feature of the
    /// input, a range, NaN and allowed values, declared or derived from `profile.json`.
    pub expectations: Option<ExpectationsConfig>,
}

/// An input the operator expects the model to take.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredInput {
    pub name: String,
    /// v2 datatype name, e.g. "FP32".
    pub datatype: String,
    /// Shape with -1 for dynamic dimensions, e.g. [-1, 12].
    pub shape: Vec<i64>,
    /// Names of the columns of a `[-1, F]` input, for drift profiles and metrics; unnamed
    /// columns are called `f0`, `f1`, ...
    #[serde(default)]
    pub features: Vec<String>,
}

impl ModelConfig {
    /// Reads `<model dir>/model.toml`; a missing file is the default config.
    pub fn read(model_dir: &Path) -> Result<ModelConfig, String> {
        let path = model_dir.join("model.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ModelConfig::default()),
            Err(e) => return Err(format!("cannot read model.toml: {e}")),
        };
        let config: ModelConfig =
            toml::from_str(&text).map_err(|e| format!("invalid model.toml: {e}"))?;
        let mut problems = Vec::new();
        if config.instances == Some(0) {
            problems.push("instances must be at least 1".to_string());
        }
        if let Some(batching) = &config.batching {
            problems.extend(batching.problems("batching"));
        }
        if let Some(rollout) = &config.rollout {
            if rollout.version.is_some() {
                problems.push(
                    "rollout.version: not allowed here; the new version folder is the candidate"
                        .to_string(),
                );
            }
            // Checked against the built-in defaults: what the table sets must be valid whatever
            // the server's `[rollout]` section says.
            let plan = RolloutConfig::default().plan(rollout);
            problems.extend(
                plan.err()
                    .into_iter()
                    .flatten()
                    .map(|p| format!("rollout.{p}")),
            );
        }
        if let Some(expectations) = &config.expectations {
            problems.extend(expectations.problems());
        }
        for input in &config.inputs {
            if DataType::parse(&input.datatype).is_none() {
                problems.push(format!(
                    "inputs.{}: unknown datatype '{}'",
                    input.name, input.datatype
                ));
            }
            let columns = input.shape.last().copied().unwrap_or(0);
            if !input.features.is_empty()
                && (input.shape.len() != 2 || columns != input.features.len() as i64)
            {
                problems.push(format!(
                    "inputs.{}: {} feature names for shape {}",
                    input.name,
                    input.features.len(),
                    format_dims(&input.shape)
                ));
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(format!("invalid model.toml: {}", problems.join("; ")))
        }
    }

    /// The declared inputs as tensor specs (datatypes were checked when the file was read).
    pub fn declared_inputs(&self) -> Vec<TensorSpec> {
        self.inputs
            .iter()
            .filter_map(|d| {
                Some(TensorSpec {
                    name: d.name.clone(),
                    datatype: DataType::parse(&d.datatype)?,
                    shape: d.shape.clone(),
                })
            })
            .collect()
    }

    /// Checks the model's real inputs against the declared ones; every mismatch is named.
    pub fn check_inputs(&self, actual: &[TensorSpec]) -> Result<(), String> {
        if self.inputs.is_empty() {
            return Ok(());
        }
        let mut problems = Vec::new();
        for declared in &self.inputs {
            match actual.iter().find(|a| a.name == declared.name) {
                None => problems.push(format!("declared input '{}' is missing", declared.name)),
                Some(a) => {
                    if a.datatype.as_str() != declared.datatype {
                        problems.push(format!(
                            "input '{}' is {}, declared {}",
                            a.name, a.datatype, declared.datatype
                        ));
                    }
                    if a.shape != declared.shape {
                        problems.push(format!(
                            "input '{}' has shape {}, declared {}",
                            a.name,
                            format_dims(&a.shape),
                            format_dims(&declared.shape)
                        ));
                    }
                }
            }
        }
        for a in actual {
            if !self.inputs.iter().any(|d| d.name == a.name) {
                problems.push(format!("input '{}' is not declared", a.name));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "model inputs do not match model.toml: {}",
                problems.join("; ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_inputs_are_enforced() {
        let config: ModelConfig =
            toml::from_str(r#"inputs = [{ name = "input", datatype = "FP32", shape = [-1, 12] }]"#)
                .unwrap();
        let spec = |shape: Vec<i64>| TensorSpec {
            name: "input".into(),
            datatype: DataType::F32,
            shape,
        };
        assert!(config.check_inputs(&[spec(vec![-1, 12])]).is_ok());
        let err = config.check_inputs(&[spec(vec![-1, 11])]).unwrap_err();
        assert!(err.contains("has shape [-1,11], declared [-1,12]"), "{err}");
    }

    #[test]
    fn a_rollout_table_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("model.toml"),
            "[rollout]\nsteps = [10, 100]\nstep_duration = \"5s\"\n",
        )
        .unwrap();
        let config = ModelConfig::read(dir.path()).unwrap();
        let rollout = config.rollout.unwrap();
        assert_eq!(rollout.steps, Some(vec![10.0, 100.0]));
        std::fs::write(
            dir.path().join("model.toml"),
            "[rollout]\nversion = \"3\"\nsteps = [0]\n",
        )
        .unwrap();
        let err = ModelConfig::read(dir.path()).unwrap_err();
        assert!(err.contains("rollout.version: not allowed"), "{err}");
        assert!(err.contains("rollout.steps[0]"), "{err}");
    }

    #[test]
    fn parses_the_example() {
        let config: ModelConfig =
            toml::from_str("runtime = \"tract\"\nversion_policy = { latest = 1 }\n").unwrap();
        assert_eq!(config.runtime, Some(RuntimeChoice::Tract));
        assert_eq!(config.version_policy, Some(VersionPolicy::Latest(1)));
    }
}
