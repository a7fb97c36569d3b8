//! What a canary is: its steps and thresholds, configurable per service.
//! What it keeps between analyses is `canary_state`. Pure.

use serde::{Deserialize, Serialize};

use kit_core::error::DomainError;

/// One step: the canary's share of traffic, and how long it is held (the
/// clock runs only while there is traffic to judge).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryStep {
    pub weight: u32,
    /// `10m`, `30s`, `1500ms` (or milliseconds as a number).
    #[serde(with = "duration_text", default)]
    pub duration: u64,
}

/// Steps and thresholds; `[deployer.canary.<service>]` in the TOML config
/// sets them for a service (fields left out take these defaults), and a
/// deploy request may set any of them again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CanaryConfig {
    /// Ascending weights; the last is 100 (promotion).
    pub steps: Vec<CanaryStep>,
    /// How often the canary is analysed.
    #[serde(with = "duration_text")]
    pub analysis_interval: u64,
    /// How long stable stays (at weight 0) after promotion, for a rollback.
    #[serde(with = "duration_text")]
    pub rollback_window: u64,
    /// Error rates at or below this never fail (0.001 = 0.1 %).
    pub error_floor: f64,
    /// A canary failing more than this many times stable's rate (and
    /// significantly) is rolled back at once.
    pub error_fast_factor: f64,
    /// The latency quantile compared (0.95).
    pub quantile: f64,
    /// The canary's quantile may exceed stable's by this share and pass a step …
    pub latency_margin: f64,
    /// … and beyond this share it is rolled back at once.
    pub latency_fast_margin: f64,
    /// Added to both margins, in milliseconds: differences this small are
    /// below what a user notices and within what a fresh instance's cold
    /// read cache makes (a canary's 0.6 ms against stable's cached 0.3 ms
    /// is no regression).
    pub latency_slack_ms: f64,
    /// Significance level of every test (split among the latency tests).
    pub alpha: f64,
    /// Requests each side needs before any verdict; 0: ln(20) / error_floor,
    /// enough that a canary failing at the floor shows it with 95 % chance.
    pub min_samples: u64,
    /// Orders' completion rate may drop this much (0.03 = 3 points) …
    pub business_margin: f64,
    /// … judged once both sides finished this many sagas.
    pub business_min_sagas: u64,
}

/// The capstone design's progression: 5 % for 10 min, 10 % for 15, 25 % for
/// 20, 50 % for 30, 75 % for 20, then 100 %.
fn design_steps() -> Vec<CanaryStep> {
    [(5, 10), (10, 15), (25, 20), (50, 30), (75, 20), (100, 0)]
        .into_iter()
        .map(|(weight, minutes)| CanaryStep { weight, duration: minutes * 60_000 })
        .collect()
}

impl Default for CanaryConfig {
    fn default() -> Self {
        Self {
            steps: design_steps(),
            analysis_interval: 5_000,
            // The design: "rollback available for 24 hours".
            rollback_window: 24 * 3_600_000,
            error_floor: 0.001,
            error_fast_factor: 5.0,
            quantile: 0.95,
            latency_margin: 0.10,
            latency_fast_margin: 0.50,
            latency_slack_ms: 5.0,
            alpha: 0.01,
            min_samples: 0,
            business_margin: 0.03,
            business_min_sagas: 30,
        }
    }
}

const DAY_MS: u64 = 24 * 3_600_000;

impl CanaryConfig {
    pub fn check(&self) -> Result<(), DomainError> {
        let invalid = |m: &str| Err(DomainError::invalid(format!("canary: {m}")));
        if self.steps.is_empty() || self.steps.len() > 20 {
            return invalid("1 to 20 steps");
        }
        let weights: Vec<u32> = self.steps.iter().map(|s| s.weight).collect();
        if weights.windows(2).any(|w| w[0] >= w[1]) || weights[0] == 0 || weights.last() != Some(&100) {
            return invalid("step weights must rise from above 0 to 100");
        }
        if self.steps.iter().any(|s| s.duration > DAY_MS) {
            return invalid("a step lasts at most a day");
        }
        if !(100..=600_000).contains(&self.analysis_interval) {
            return invalid("analysis_interval must be 100ms to 10m");
        }
        if self.rollback_window > 7 * DAY_MS {
            return invalid("rollback_window must be at most 7 days");
        }
        let unit = |v: f64| v.is_finite() && v > 0.0 && v < 1.0;
        if !unit(self.error_floor) || !unit(self.alpha) || self.alpha > 0.2 || !(0.5..1.0).contains(&self.quantile) {
            return invalid("error_floor in (0, 1), alpha in (0, 0.2], quantile in [0.5, 1)");
        }
        let margins = [self.latency_margin, self.latency_fast_margin, self.business_margin];
        if margins.iter().any(|m| !m.is_finite() || *m < 0.0 || *m > 100.0) {
            return invalid("margins must be between 0 and 100");
        }
        if !self.latency_slack_ms.is_finite() || !(0.0..=60_000.0).contains(&self.latency_slack_ms) {
            return invalid("latency_slack_ms must be 0 to 60000");
        }
        if !self.error_fast_factor.is_finite() || self.error_fast_factor < 1.0 || self.error_fast_factor > 1_000.0 {
            return invalid("error_fast_factor must be 1 to 1000");
        }
        if self.min_samples > 10_000_000 || self.business_min_sagas > 10_000_000 {
            return invalid("min_samples and business_min_sagas at most 10 000 000");
        }
        Ok(())
    }

    /// The service's configured settings with `patch`'s fields over them.
    pub fn patched(&self, patch: Option<&serde_json::Value>) -> Result<Self, DomainError> {
        let Some(patch) = patch else { return Ok(self.clone()) };
        let serde_json::Value::Object(fields) = patch else {
            return Err(DomainError::invalid("canary settings must be an object"));
        };
        let mut merged = serde_json::to_value(self).map_err(|e| DomainError::invalid(e.to_string()))?;
        if let serde_json::Value::Object(base) = &mut merged {
            for (key, value) in fields {
                base.insert(key.clone(), value.clone());
            }
        }
        serde_json::from_value(merged).map_err(|e| DomainError::invalid(format!("canary settings: {e}")))
    }
}

/// Durations as `10m`/`30s`/`1500ms` text, or milliseconds as a number.
mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(ms: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        let text = humantime::format_duration(std::time::Duration::from_millis(*ms)).to_string();
        serializer.serialize_str(&text)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Millis(u64),
        Human(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        match Text::deserialize(deserializer)? {
            Text::Millis(ms) => Ok(ms),
            Text::Human(text) => super::parse_duration_ms(&text).map_err(D::Error::custom),
        }
    }
}

/// Parses `10m`-style text (the CLI's flags) into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    humantime::parse_duration(text.trim())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|e| format!("{text:?} is not a duration like 10m, 30s, 1500ms: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_design_table() {
        let config = CanaryConfig::default();
        assert!(config.check().is_ok());
        let steps: Vec<(u32, u64)> = config.steps.iter().map(|s| (s.weight, s.duration / 60_000)).collect();
        assert_eq!(steps, [(5, 10), (10, 15), (25, 20), (50, 30), (75, 20), (100, 0)]);
    }

    #[test]
    fn settings_come_from_toml_and_requests_and_garbage_is_refused() {
        let toml = r#"
            steps = [{ weight = 10, duration = "2s" }, { weight = 100 }]
            analysis_interval = "500ms"
            min_samples = 40
        "#;
        let config: CanaryConfig = figment_free_toml(toml);
        assert_eq!(config.steps[0].duration, 2_000);
        assert_eq!(config.analysis_interval, 500);
        assert_eq!(config.error_floor, 0.001, "unset fields keep their defaults");
        let patched = config.patched(Some(&serde_json::json!({ "error_floor": 0.02 }))).unwrap_or_default();
        assert_eq!((patched.error_floor, patched.min_samples), (0.02, 40));
        let bad = [
            serde_json::json!({ "steps": [] }),
            serde_json::json!({ "steps": [{ "weight": 50 }, { "weight": 10 }, { "weight": 100 }] }),
            serde_json::json!({ "steps": [{ "weight": 10 }, { "weight": 90 }] }),
            serde_json::json!({ "steps": [{ "weight": 0 }, { "weight": 100 }] }),
            serde_json::json!({ "steps": [{ "weight": 10, "duration": "soon" }, { "weight": 100 }] }),
            serde_json::json!({ "analysis_interval": "1ms" }),
            serde_json::json!({ "error_floor": 1.5 }),
            serde_json::json!({ "alpha": 0 }),
            serde_json::json!({ "latency_margin": -1 }),
            serde_json::json!({ "error_fast_factor": 0.5 }),
            serde_json::json!({ "nonsense": 1 }),
            serde_json::json!([1, 2]),
        ];
        for patch in bad {
            let result = CanaryConfig::default().patched(Some(&patch)).and_then(|c| c.check().map(|()| c));
            assert!(result.is_err(), "{patch}");
        }
    }

    fn figment_free_toml(text: &str) -> CanaryConfig {
        let value: serde_json::Value = toml_to_json(text);
        serde_json::from_value(value).unwrap_or_default()
    }

    fn toml_to_json(text: &str) -> serde_json::Value {
        let parsed: toml::Value = toml::from_str(text).unwrap_or(toml::Value::Table(Default::default()));
        serde_json::to_value(parsed).unwrap_or_default()
    }

    #[test]
    fn durations_read_as_text() {
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert!(parse_duration_ms("ten").is_err());
    }
}
