//! Repository polling: picks up new, rewritten and removed version folders by itself.
//!
//! A change is acted on only once it has been seen unchanged on two consecutive scans, so a
//! model file still being copied in is never loaded half-written. Each observed state is acted
//! on once: a version that fails to load is not retried until its files change again (the
//! failure is visible in the admin API), and a model unloaded through the API stays unloaded
//! until its folder changes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::control::ModelControl;
use crate::lifecycle::{Actor, ModelManager};
use crate::repository::{self, ModelDir};

/// What a model folder looked like on one scan: the versions its policy selects with the
/// names, sizes and modification times of their model files (whichever of model.onnx,
/// model.txt, model.json takes precedence) and drift profiles, and the same for `model.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Observation {
    /// (version, model file, profile.json)
    versions: Vec<(u64, Option<ModelFingerprint>, Option<Fingerprint>)>,
    config: Option<Fingerprint>,
}

/// A file's size and modification time.
type Fingerprint = (u64, SystemTime);

/// Which model file a version folder holds, and its fingerprint: a `model.onnx` that appears
/// next to a `model.txt` takes over, even with the same size and time.
type ModelFingerprint = (std::path::PathBuf, Fingerprint);

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

fn observe(models: &ModelManager, dir: &ModelDir) -> Observation {
    Observation {
        versions: models
            .loader()
            .versions_to_load(dir)
            .into_iter()
            .map(|v| {
                (
                    v,
                    sluice_runtime::model_file(&dir.version_dir(v))
                        .and_then(|file| Some((fingerprint(&file)?, file)))
                        .map(|(print, file)| (file, print)),
                    fingerprint(&dir.version_dir(v).join(crate::drift::profile::FILE_NAME)),
                )
            })
            .collect(),
        config: fingerprint(&dir.path.join("model.toml")),
    }
}

/// Scans every `interval` until shutdown and asks `control` for what it finds. In a fleet
/// every replica then loads the same versions; each replica's poller may ask, and the control
/// topic keeps the first of equal requests.
pub async fn poll(
    models: Arc<ModelManager>,
    control: Arc<dyn ModelControl>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let actor = Actor::new("repository poller");
    // The state each model was last acted on; start-up has just loaded what is on disk.
    let mut applied: HashMap<String, Observation> = HashMap::new();
    let mut previous: HashMap<String, Observation> = HashMap::new();
    if let Ok((dirs, _)) = repository::scan(&models.loader().repository) {
        for dir in dirs {
            applied.insert(dir.name.clone(), observe(&models, &dir));
        }
    }
    previous.clone_from(&applied);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stopped| *stopped) => return,
        }
        let dirs = match repository::scan(&models.loader().repository) {
            Ok((dirs, _)) => dirs,
            Err(error) => {
                tracing::warn!(%error, "repository poll failed");
                continue;
            }
        };
        let mut current: HashMap<String, Observation> = HashMap::new();
        for dir in &dirs {
            current.insert(dir.name.clone(), observe(&models, dir));
        }
        for (name, seen) in &current {
            let settled = previous.get(name) == Some(seen);
            if !settled || applied.get(name) == Some(seen) {
                continue;
            }
            applied.insert(name.clone(), seen.clone());
            let _ = control.load(name, &actor).await;
        }
        // Folders that are gone (seen gone twice) stop being served.
        let served: Vec<String> = models.router().snapshot().models.keys().cloned().collect();
        for name in served {
            if !current.contains_key(&name)
                && !previous.contains_key(&name)
                && applied.remove(&name).is_some()
            {
                let _ = control.unload(&name, &actor).await;
            }
        }
        previous = current;
    }
}
