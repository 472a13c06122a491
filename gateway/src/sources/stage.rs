//! Where every source's downloads become version folders: files land in a staging folder
//! inside the repository (hidden, so scans skip it, and on the same file system, so the move
//! is one rename), are checked (sizes, digests, and that the model builds and matches its
//! `model.toml`), and only then take the version's place. A refused download leaves nothing
//! in the repository.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

use crate::repository::{Loader, ModelConfig, ModelDir};

/// Hidden folder of the repository that holds downloads in progress.
pub const STAGING: &str = ".sluice-staging";
/// The file a source writes into each version folder it published: what it came from, so a
/// restart knows what it has and a source never deletes a folder it did not write.
pub const MARKER: &str = ".sluice-source.json";

/// A version folder being assembled: `<repo>/.sluice-staging/<unique>/<version>/`.
pub struct Staged {
    root: PathBuf,
    pub version: u64,
}

impl Staged {
    /// A fresh, empty staging folder for `model`'s `version` (left-overs of a crash are
    /// removed first).
    pub fn new(repo: &Path, model: &str, version: u64) -> std::io::Result<Staged> {
        let unique = format!(
            "{model}-{version}-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let root = repo.join(STAGING).join(unique);
        std::fs::create_dir_all(root.join(version.to_string()))?;
        Ok(Staged { root, version })
    }

    /// The version folder being filled.
    pub fn dir(&self) -> PathBuf {
        self.root.join(self.version.to_string())
    }

    /// Checks that the staged version builds with `model`'s runtime and matches the
    /// `model.toml` of `model_dir` (or the default when there is none); the CPU work runs on
    /// the blocking pool. Answers how long the check took.
    pub async fn verify_loads(
        &self,
        loader: &Arc<Loader>,
        model: &str,
        model_dir: &Path,
    ) -> Result<std::time::Duration, String> {
        let config = ModelConfig::read(model_dir)?;
        let staged = ModelDir {
            name: model.to_string(),
            path: self.root.clone(),
            config,
            versions: vec![self.version],
        };
        let loader = Arc::clone(loader);
        let version = self.version;
        let started = Instant::now();
        tokio::task::spawn_blocking(move || loader.build_one(&staged, version, None).map(|_| ()))
            .await
            .map_err(|e| format!("check task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        Ok(started.elapsed())
    }

    /// Moves the staged folder into `<repo>/<model>/<version>`, replacing what was there, and
    /// removes the staging folder.
    pub fn install(self, repo: &Path, model: &str) -> std::io::Result<PathBuf> {
        let model_dir = repo.join(model);
        std::fs::create_dir_all(&model_dir)?;
        let target = model_dir.join(self.version.to_string());
        if target.exists() {
            std::fs::rename(&target, self.root.join("replaced"))?;
        }
        std::fs::rename(self.dir(), &target)?;
        Ok(target)
        // `self` drops here and removes what is left (the replaced folder).
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Removes `<repo>/.sluice-staging` left over from a process that stopped mid-download.
pub fn clear_staging(repo: &Path) {
    let _ = std::fs::remove_dir_all(repo.join(STAGING));
}

/// The SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// Checks `<dir>/<file>` against `<dir>/<file>.sha256` when that exists (the `sha256sum`
/// format: the hex digest, optionally followed by the file name).
pub fn check_digest(dir: &Path, file: &str) -> Result<(), String> {
    let sidecar = dir.join(format!("{file}.sha256"));
    let text = match std::fs::read_to_string(&sidecar) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {file}.sha256: {e}")),
    };
    let want = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if want.len() != 64 || !want.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{file}.sha256 holds no SHA-256 digest"));
    }
    let got = sha256_file(&dir.join(file)).map_err(|e| format!("cannot read {file}: {e}"))?;
    if got != want {
        return Err(format!(
            "{file} does not match {file}.sha256 (sha256 {got}, expected {want}): an upload \
             in progress or a corrupt copy"
        ));
    }
    Ok(())
}

/// Writes a source's marker into a (staged) version folder.
pub fn write_marker<T: Serialize>(dir: &Path, marker: &T) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(marker).map_err(std::io::Error::other)?;
    std::fs::write(dir.join(MARKER), text)
}

/// A version folder's marker, when a source wrote one it can read.
pub fn read_marker<T: DeserializeOwned>(dir: &Path) -> Option<T> {
    let text = std::fs::read(dir.join(MARKER)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The version folders of `<repo>/<model>` that carry a readable marker, with it.
pub fn marked_versions<T: DeserializeOwned>(repo: &Path, model: &str) -> Vec<(u64, T)> {
    let Ok(entries) = std::fs::read_dir(repo.join(model)) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, T)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u64>().ok()?;
            Some((version, read_marker(&e.path())?))
        })
        .collect();
    found.sort_by_key(|(v, _)| *v);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_sidecar_is_checked_when_present() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx"), b"abc").unwrap();
        assert!(check_digest(dir.path(), "model.onnx").is_ok());
        let good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        std::fs::write(
            dir.path().join("model.onnx.sha256"),
            format!("{good}  model.onnx\n"),
        )
        .unwrap();
        assert!(check_digest(dir.path(), "model.onnx").is_ok());
        std::fs::write(dir.path().join("model.onnx"), b"ab").unwrap();
        let err = check_digest(dir.path(), "model.onnx").unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        std::fs::write(dir.path().join("model.onnx.sha256"), "nonsense").unwrap();
        assert!(check_digest(dir.path(), "model.onnx").is_err());
    }

    #[test]
    fn install_replaces_the_version_in_one_move_and_cleans_up() {
        let repo = tempfile::tempdir().unwrap();
        let old = repo.path().join("m/3");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("model.onnx"), b"old").unwrap();
        let staged = Staged::new(repo.path(), "m", 3).unwrap();
        std::fs::write(staged.dir().join("model.onnx"), b"new").unwrap();
        write_marker(&staged.dir(), &serde_json::json!({"from": "test"})).unwrap();
        staged.install(repo.path(), "m").unwrap();
        assert_eq!(std::fs::read(old.join("model.onnx")).unwrap(), b"new");
        let marked: Vec<(u64, serde_json::Value)> = marked_versions(repo.path(), "m");
        assert_eq!(marked.len(), 1);
        let left = std::fs::read_dir(repo.path().join(STAGING))
            .unwrap()
            .count();
        assert_eq!(left, 0);
    }
}
