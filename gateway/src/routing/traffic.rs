//! A model's traffic policy: which version is primary, which canary takes what share (sticky
//! by a request key when one is named), and which shadow sees a sample of requests.

use serde::{Deserialize, Serialize};

use super::ModelRoutes;
use sluice_core::request::stable_hash;

/// Canary weights are kept in basis points of a percent: 0.01 % resolution.
const WEIGHT_SCALE: f64 = 100.0;
/// Points in the split space (100 % = 10,000 points).
const SPLIT_POINTS: u64 = 10_000;

/// A canary weight in percent, as the split's points.
pub fn weight_points(percent: f64) -> u64 {
    (percent * WEIGHT_SCALE).round() as u64
}

/// The policy as the admin API reads and writes it (versions as strings, like v2 does).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a traffic policy: an object with primary, canary, shadow or sticky_key"
)]
pub struct TrafficPolicy {
    /// Version answering requests that name none; unset: the newest loaded version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// A version taking a share of the unversioned traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryPolicy>,
    /// A version that sees a sample of requests after they are answered, and answers nobody.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowPolicy>,
    /// Header (HTTP) or request parameter (v2 JSON, gRPC) whose value keeps a caller on one
    /// side of the split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_key: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a canary: an object with \"version\" and \"weight\""
)]
pub struct CanaryPolicy {
    pub version: String,
    /// Percent of unversioned requests, 0 to 100, in steps of 0.01.
    pub weight: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a shadow: an object with \"version\" and \"sample_rate\""
)]
pub struct ShadowPolicy {
    pub version: String,
    /// Fraction of answered requests copied to the shadow, 0 to 1.
    pub sample_rate: f64,
}

/// The policy checked against the loaded versions, in the form routing uses per request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Traffic {
    pub primary: Option<u64>,
    pub canary: Option<(u64, u64)>,
    pub shadow: Option<(u64, f64)>,
    pub sticky_key: Option<String>,
}

impl TrafficPolicy {
    /// Checks the whole policy against the loaded versions; every problem is named.
    pub fn validate(&self, routes: &ModelRoutes) -> Result<Traffic, Vec<String>> {
        let mut problems = Vec::new();
        let mut loaded = |field: &str, version: &str| -> Option<u64> {
            match version.parse::<u64>() {
                Ok(v) if routes.versions.contains_key(&v) => Some(v),
                Ok(v) => {
                    let have: Vec<String> = routes.versions.keys().map(u64::to_string).collect();
                    problems.push(format!(
                        "{field}: version {v} is not loaded (loaded: {})",
                        have.join(", ")
                    ));
                    None
                }
                Err(_) => {
                    problems.push(format!("{field}: '{version}' is not a version number"));
                    None
                }
            }
        };
        let primary = self.primary.as_deref().map(|v| loaded("primary", v));
        let canary = self
            .canary
            .as_ref()
            .map(|c| (loaded("canary.version", &c.version), c.weight));
        let shadow = self
            .shadow
            .as_ref()
            .map(|s| (loaded("shadow.version", &s.version), s.sample_rate));
        if let Some((_, weight)) = canary
            && !(0.0..=100.0).contains(&weight)
        {
            problems.push(format!(
                "canary.weight: {weight} is not a percentage from 0 to 100"
            ));
        }
        if let Some((_, rate)) = shadow
            && !(0.0..=1.0).contains(&rate)
        {
            problems.push(format!(
                "shadow.sample_rate: {rate} is not a fraction from 0 to 1"
            ));
        }
        let effective_primary = primary
            .flatten()
            .or_else(|| routes.versions.keys().next_back().copied());
        if let (Some((Some(c), _)), Some(p)) = (canary, effective_primary)
            && c == p
        {
            problems.push(format!("canary.version: {c} is already the primary"));
        }
        if let (Some((Some(s), _)), Some(p)) = (shadow, effective_primary)
            && s == p
        {
            problems.push(format!(
                "shadow.version: {s} is the primary; a shadow must be another version"
            ));
        }
        if let Some(key) = &self.sticky_key
            && (key.is_empty() || http::HeaderName::from_bytes(key.as_bytes()).is_err())
        {
            problems.push(format!("sticky_key: '{key}' is not a valid header name"));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Traffic {
            primary: primary.flatten(),
            canary: canary.and_then(|(v, w)| Some((v?, weight_points(w)))),
            shadow: shadow.and_then(|(v, r)| Some((v?, r))),
            sticky_key: self.sticky_key.as_ref().map(|k| k.to_ascii_lowercase()),
        })
    }
}

impl Traffic {
    /// Back to the admin API's form.
    pub fn to_policy(&self) -> TrafficPolicy {
        TrafficPolicy {
            primary: self.primary.map(|v| v.to_string()),
            canary: self.canary.map(|(version, points)| CanaryPolicy {
                version: version.to_string(),
                weight: points as f64 / WEIGHT_SCALE,
            }),
            shadow: self.shadow.map(|(version, sample_rate)| ShadowPolicy {
                version: version.to_string(),
                sample_rate,
            }),
            sticky_key: self.sticky_key.clone(),
        }
    }

    /// Whether a request with this key (or, without one, this random draw) goes to the canary.
    /// With a key the point is a stable hash, so a key keeps its side while the weight holds,
    /// and raising the weight only moves keys from primary to canary.
    pub fn picks_canary(&self, key: Option<&str>) -> bool {
        let Some((_, points)) = self.canary else {
            return false;
        };
        let point = match key {
            Some(key) => stable_hash(key.as_bytes()) % SPLIT_POINTS,
            None => rand::random::<u64>() % SPLIT_POINTS,
        };
        point < points
    }

    /// Whether this request is copied to the shadow.
    pub fn samples_shadow(&self) -> Option<u64> {
        let (version, rate) = self.shadow?;
        (rate > 0.0 && rand::random::<f64>() < rate).then_some(version)
    }

    /// Drops parts that name versions no longer loaded (after a reload or unload).
    pub fn retain_loaded(&mut self, loaded: impl Fn(u64) -> bool) {
        self.primary = self.primary.filter(|v| loaded(*v));
        self.canary = self.canary.filter(|(v, _)| loaded(*v));
        self.shadow = self.shadow.filter(|(v, _)| loaded(*v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic(weight: f64) -> Traffic {
        Traffic {
            canary: Some((2, (weight * WEIGHT_SCALE).round() as u64)),
            ..Default::default()
        }
    }

    #[test]
    fn random_split_matches_the_weight() {
        for weight in [1.0, 10.0, 50.0] {
            let t = traffic(weight);
            let n = 20_000;
            let canary = (0..n).filter(|_| t.picks_canary(None)).count();
            let share = canary as f64 * 100.0 / n as f64;
            assert!(
                (share - weight).abs() < 1.0,
                "weight {weight}: share {share}"
            );
        }
        assert!(!(0..1000).any(|_| traffic(0.0).picks_canary(None)));
        assert!((0..1000).all(|_| traffic(100.0).picks_canary(None)));
    }

    #[test]
    fn sticky_keys_only_move_towards_the_canary() {
        let keys: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
        let at = |w: f64| -> Vec<bool> {
            keys.iter()
                .map(|k| traffic(w).picks_canary(Some(k)))
                .collect()
        };
        let ten = at(10.0);
        assert_eq!(ten, at(10.0), "same key, same side");
        let thirty = at(30.0);
        for (before, after) in ten.iter().zip(&thirty) {
            assert!(!before || *after, "a canary key went back to primary");
        }
        let share = thirty.iter().filter(|c| **c).count();
        assert!((250..=350).contains(&share), "{share} of 1000 keys at 30%");
    }

    #[test]
    fn weights_keep_hundredths() {
        let t = traffic(0.01);
        assert_eq!(t.canary, Some((2, 1)));
        assert_eq!(t.to_policy().canary.unwrap().weight, 0.01);
    }
}
