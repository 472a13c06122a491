//! The `[traffic]` config section: the shadow runs' budget.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrafficConfig {
    /// Shadow copies that may run at once, across all models. Small on purpose: shadows must
    /// never take the CPU that answers clients.
    pub shadow_workers: usize,
    /// Shadow copies that may wait; beyond it copies are dropped and counted.
    pub shadow_queue: usize,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        TrafficConfig {
            shadow_workers: 1,
            shadow_queue: 256,
        }
    }
}

impl TrafficConfig {
    /// Every problem with this section, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.shadow_workers == 0 {
            problems.push("traffic.shadow_workers must be at least 1".into());
        }
        if self.shadow_queue == 0 {
            problems.push("traffic.shadow_queue must be at least 1".into());
        }
        problems
    }
}
