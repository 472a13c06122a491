//! The model repository on disk (`<repo>/<model>/<int version>/model.onnx`, or `model.txt`
//! (LightGBM) or `model.json` (XGBoost) in that precedence, optional `<repo>/<model>/model.toml`), and loading a version into a served [`LoadedVersion`]:
//! read -> build -> validate -> warm up. Nothing here touches the routing state; callers
//! publish what loaded.

mod loader;
mod model_config;

use std::path::{Path, PathBuf};

mod config;
#[cfg(test)]
pub mod testing;

pub use config::{ObjectStoreConfig, RepositoryConfig, VersionPolicy};
pub use loader::{LoadedVersion, Loader, alive_versions};
pub use model_config::{DeclaredInput, ModelConfig};

/// One model folder as found on disk.
#[derive(Clone, Debug)]
pub struct ModelDir {
    pub name: String,
    pub path: PathBuf,
    pub config: ModelConfig,
    /// Version folders that contain a model file, highest first.
    pub versions: Vec<u64>,
}

/// A repository or model folder that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("cannot read model repository {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unknown model '{0}': no such folder in the repository")]
    UnknownModel(String),
    #[error("model '{model}': {message}")]
    BadModel { model: String, message: String },
}

/// Model names become URL path segments and metric labels: keep them plain.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Every model folder in the repository, sorted by name. Plain files (scripts, READMEs) and
/// hidden folders are not models and are skipped; a folder with a bad name or `model.toml`
/// is reported in the second list without stopping the others.
pub fn scan(repo: &Path) -> Result<(Vec<ModelDir>, Vec<RepositoryError>), RepositoryError> {
    let entries = std::fs::read_dir(repo).map_err(|source| RepositoryError::Unreadable {
        path: repo.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.') && name != "__pycache__")
        .collect();
    names.sort();
    let mut models = Vec::new();
    let mut problems = Vec::new();
    for name in names {
        match read_model(repo, &name) {
            Ok(model) => models.push(model),
            Err(e) => problems.push(e),
        }
    }
    Ok((models, problems))
}

/// Reads one model folder: its `model.toml` and which version folders hold a model file.
pub fn read_model(repo: &Path, name: &str) -> Result<ModelDir, RepositoryError> {
    let bad = |message: String| RepositoryError::BadModel {
        model: name.to_string(),
        message,
    };
    if !valid_model_name(name) {
        return Err(bad(
            "model names may hold only letters, digits, '_', '-' and '.'".into(),
        ));
    }
    let path = repo.join(name);
    if !path.is_dir() {
        return Err(RepositoryError::UnknownModel(name.to_string()));
    }
    let config = ModelConfig::read(&path).map_err(bad)?;
    let mut versions: Vec<u64> = std::fs::read_dir(&path)
        .map_err(|e| bad(format!("cannot read folder: {e}")))?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|v| sluice_runtime::model_file(&path.join(v.to_string())).is_some())
        .collect();
    versions.sort_unstable_by(|a, b| b.cmp(a));
    Ok(ModelDir {
        name: name.to_string(),
        path,
        config,
        versions,
    })
}

impl ModelDir {
    pub fn version_dir(&self, version: u64) -> PathBuf {
        self.path.join(version.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_model_name("churn"));
        assert!(valid_model_name("fraud-v2.onnx_model"));
        assert!(!valid_model_name(".hidden"));
        assert!(!valid_model_name("a/b"));
        assert!(!valid_model_name(""));
    }

    #[test]
    fn scan_finds_versions_and_skips_files() {
        let repo = tempfile::tempdir().unwrap();
        for v in ["1", "3", "notaversion"] {
            let dir = repo.path().join("m").join(v);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("model.onnx"), b"x").unwrap();
        }
        // A version folder without a model file is not a version (e.g. still being copied).
        std::fs::create_dir_all(repo.path().join("m/4")).unwrap();
        std::fs::write(repo.path().join("make_examples.py"), b"").unwrap();
        let (models, problems) = scan(repo.path()).unwrap();
        assert!(problems.is_empty());
        assert_eq!(models.len(), 1);
        assert_eq!(models[0].versions, vec![3, 1]);
    }

    #[test]
    fn bad_model_toml_is_reported_not_fatal() {
        let repo = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(repo.path().join("good/1")).unwrap();
        std::fs::create_dir_all(repo.path().join("bad/1")).unwrap();
        std::fs::write(repo.path().join("bad/model.toml"), "runtime = 'gpu'").unwrap();
        let (models, problems) = scan(repo.path()).unwrap();
        assert_eq!(models.len(), 1);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].to_string().contains("model 'bad'"));
    }
}
