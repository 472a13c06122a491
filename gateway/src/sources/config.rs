//! The `[registry]` section: model registries sluice follows. Object storage is configured
//! with the repository (`repository.path = "s3://..."`, `[repository.s3]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_core::units::human_duration;

/// `[registry]`: the registries whose models sluice serves and follows.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// `[[registry.mlflow]]`: one entry per registered model (and alias) to follow.
    pub mlflow: Vec<MlflowSourceConfig>,
}

/// One registered model in an MLflow Model Registry, followed through an alias (or, for old
/// registries, a stage). When the alias moves, the version it names is downloaded, checked,
/// and rolled out under the guard with the model's `[rollout]` table (or made primary when
/// the model has none); a rollback is written back to the registry as a tag.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MlflowSourceConfig {
    /// The tracking server, e.g. "http://mlflow:5000". Artifacts are downloaded through its
    /// artifact proxy (`mlflow server` serves artifacts by default).
    pub tracking_uri: String,
    /// The registered model's name in MLflow.
    pub model: String,
    /// The alias to follow, e.g. "champion".
    #[serde(default)]
    pub alias: Option<String>,
    /// A stage to follow instead of an alias ("Production", "Staging"), for registries from
    /// before aliases.
    #[serde(default)]
    pub stage: Option<String>,
    /// The name sluice serves the model under (a folder of the repository); default: `model`.
    /// A `model.toml` in that folder applies as for any model (its `[rollout]` table decides
    /// how a new version is rolled out).
    #[serde(default)]
    pub serve_as: Option<String>,
    /// How often to ask the registry where the alias points, e.g. "30s". A webhook delivery
    /// asks at once.
    #[serde(default = "default_poll_interval", with = "human_duration")]
    pub poll_interval: Duration,
    /// After a rollback (or a refused version), point the alias back at the version that kept
    /// serving, so the registry says what serves. Off by default: then only a tag says so.
    #[serde(default)]
    pub restore_alias: bool,
    /// Basic-auth user (else `MLFLOW_TRACKING_USERNAME`). A bearer token is taken from
    /// `MLFLOW_TRACKING_TOKEN`.
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password (else `MLFLOW_TRACKING_PASSWORD`).
    #[serde(default)]
    pub password: Option<String>,
    /// The shared secret of the MLflow webhook that posts to
    /// `/admin/v1/sources/mlflow/webhook`; without one, deliveries for this model are refused.
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// Oldest webhook delivery accepted (by its `X-MLflow-Timestamp`), against replays.
    #[serde(default = "default_webhook_max_age", with = "human_duration")]
    pub webhook_max_age: Duration,
}

/// A registry is asked a few times a minute: an alias moves rarely and a webhook brings news
/// at once.
fn default_poll_interval() -> Duration {
    Duration::from_secs(30)
}

/// Five minutes, as Stripe's and MLflow's own examples of signed webhooks use.
fn default_webhook_max_age() -> Duration {
    Duration::from_secs(300)
}

impl MlflowSourceConfig {
    /// The model name sluice serves this registered model under.
    pub fn served_name(&self) -> &str {
        self.serve_as.as_deref().unwrap_or(&self.model)
    }

    /// What the source follows, for messages: "alias champion", "stage Production".
    pub fn pointer(&self) -> String {
        match (&self.alias, &self.stage) {
            (Some(alias), _) => format!("alias {alias}"),
            (None, Some(stage)) => format!("stage {stage}"),
            (None, None) => "nothing".into(),
        }
    }

    /// The source's name in `sluice ctl sources` and the metrics: "mlflow:churn@champion".
    pub fn source_name(&self) -> String {
        let pointer = self
            .alias
            .as_deref()
            .or(self.stage.as_deref())
            .unwrap_or("");
        format!("mlflow:{}@{pointer}", self.model)
    }
}

impl RegistryConfig {
    /// Every problem with this section, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut served = std::collections::BTreeSet::new();
        for (i, source) in self.mlflow.iter().enumerate() {
            let at = format!("registry.mlflow[{i}]");
            if !(source.tracking_uri.starts_with("http://")
                || source.tracking_uri.starts_with("https://"))
            {
                problems.push(format!(
                    "{at}.tracking_uri: '{}' must start with http:// or https://",
                    source.tracking_uri
                ));
            }
            if source.model.is_empty() {
                problems.push(format!("{at}.model must name a registered model"));
            }
            match (&source.alias, &source.stage) {
                (None, None) => problems.push(format!("{at}: set alias (or stage)")),
                (Some(_), Some(_)) => {
                    problems.push(format!("{at}: set alias or stage, not both"));
                }
                _ => {}
            }
            let name = source.served_name();
            if !crate::repository::valid_model_name(name) {
                problems.push(format!(
                    "{at}.serve_as: '{name}' is not a valid model name (letters, digits, '_', \
                     '-', '.')"
                ));
            }
            if !served.insert(name.to_string()) {
                problems.push(format!(
                    "{at}: model '{name}' is already fed by another registry entry"
                ));
            }
            if source.poll_interval < Duration::from_millis(100) {
                problems.push(format!("{at}.poll_interval must be at least 100ms"));
            }
            if source.username.is_some() != source.password.is_some() {
                problems.push(format!("{at}: username and password go together"));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_entries() {
        let config: RegistryConfig = toml::from_str(
            r#"
            [[mlflow]]
            tracking_uri = "http://mlflow:5000"
            model = "churn"
            alias = "champion"
            restore_alias = true
            [[mlflow]]
            tracking_uri = "mlflow:5000"
            model = "churn"
            alias = "a"
            stage = "Production"
            poll_interval = "10ms"
            "#,
        )
        .unwrap();
        assert_eq!(config.mlflow[0].poll_interval, Duration::from_secs(30));
        assert_eq!(config.mlflow[0].source_name(), "mlflow:churn@champion");
        let problems = config.problems();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].contains("registry.mlflow[1].tracking_uri"));
        assert!(problems[2].contains("already fed"), "{problems:#?}");
    }
}
