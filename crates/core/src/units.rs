//! Serde forms for the units config files use: durations in human form ("250ms", "5m") and
//! byte sizes ("8MiB"). Every subsystem's config section uses these, so they live at the bottom.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Durations in human form ("250ms", "30s", "5m").
pub mod human_duration {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("'{text}' is not a duration like \"250ms\": {e}"))
        })
    }
}

/// An optional human duration.
pub mod optional_duration {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => human_duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        human_duration::deserialize(d).map(Some)
    }
}

/// Sizes as "8MiB", "512KiB", "1GiB", "1000" (bytes) or a bare integer.
pub mod byte_size {
    use super::*;

    pub fn serialize<S: serde::Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*n)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(
            untagged,
            expecting = "a size: a number of bytes or a string like \"8MiB\""
        )]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(n),
            Raw::Text(text) => parse(&text).ok_or_else(|| {
                serde::de::Error::custom(format!("'{text}' is not a size like \"8MiB\""))
            }),
        }
    }

    pub fn parse(text: &str) -> Option<u64> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().ok()?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return None,
        };
        number.checked_mul(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(byte_size::parse("8MiB"), Some(8 << 20));
        assert_eq!(byte_size::parse("1000"), Some(1000));
        assert_eq!(byte_size::parse("12 KiB"), Some(12 << 10));
        assert_eq!(byte_size::parse("lots"), None);
    }
}
