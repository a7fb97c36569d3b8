//! What rate of journeys each mode asks for, as a pure function of the mode
//! and the time spent in it.
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A constant rate, what a quiet shop sees.
    Steady,
    /// Steady, with a spike of `burst_factor` × every other `burst_period`.
    Burst,
    /// `overload_factor` × steady, without letting up: more than the stack can serve.
    Overload,
    /// Orders only, `flood_per_sec` of them: the queue behind Orders builds up, then drains.
    Flood,
    /// Nothing.
    Pause,
}

impl Mode {
    pub const ALL: [Mode; 5] = [Mode::Steady, Mode::Burst, Mode::Overload, Mode::Flood, Mode::Pause];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Steady => "steady",
            Mode::Burst => "burst",
            Mode::Overload => "overload",
            Mode::Flood => "flood",
            Mode::Pause => "pause",
        }
    }

    pub fn parse(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// The rates behind the modes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rates {
    /// Journeys started per second in steady mode.
    pub steady_per_sec: f64,
    pub burst_factor: f64,
    /// A burst lasts this long, then as long again at the steady rate.
    pub burst_period_ms: u64,
    pub overload_factor: f64,
    /// Orders placed per second in flood mode.
    pub flood_per_sec: f64,
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            steady_per_sec: 2.0,
            burst_factor: 5.0,
            burst_period_ms: 5_000,
            overload_factor: 100.0,
            flood_per_sec: 50.0,
        }
    }
}

impl Rates {
    pub fn check(&self) -> Result<(), String> {
        let rates = [self.steady_per_sec, self.burst_factor, self.overload_factor, self.flood_per_sec];
        let finite = rates.iter().all(|v| v.is_finite());
        if !finite || self.steady_per_sec < 0.0 || self.burst_factor < 1.0 || self.overload_factor < 1.0 {
            return Err("steady_per_sec must be >= 0 and the factors >= 1".into());
        }
        if !(0.0..=10_000.0).contains(&self.flood_per_sec) {
            return Err("flood_per_sec must be 0 to 10000".into());
        }
        if self.burst_period_ms == 0 {
            return Err("burst_period_ms must be > 0".into());
        }
        Ok(())
    }

    /// Journeys per second `mode` asks for, `in_mode` after it began.
    pub fn rate(&self, mode: Mode, in_mode: Duration) -> f64 {
        match mode {
            Mode::Steady => self.steady_per_sec,
            Mode::Burst => {
                let phase = in_mode.as_millis() / u128::from(self.burst_period_ms);
                if phase.is_multiple_of(2) { self.steady_per_sec * self.burst_factor } else { self.steady_per_sec }
            }
            Mode::Overload => self.steady_per_sec * self.overload_factor,
            Mode::Flood => self.flood_per_sec,
            Mode::Pause => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_has_its_rate() {
        let rates = Rates {
            steady_per_sec: 4.0,
            burst_factor: 5.0,
            burst_period_ms: 1_000,
            overload_factor: 10.0,
            flood_per_sec: 30.0,
        };
        assert_eq!(rates.rate(Mode::Steady, Duration::from_secs(7)), 4.0);
        assert_eq!(rates.rate(Mode::Overload, Duration::ZERO), 40.0);
        assert_eq!(rates.rate(Mode::Pause, Duration::ZERO), 0.0);
        assert_eq!(rates.rate(Mode::Flood, Duration::from_secs(3)), 30.0);
        // Bursts first, then as long at the steady rate, and again.
        assert_eq!(rates.rate(Mode::Burst, Duration::from_millis(10)), 20.0);
        assert_eq!(rates.rate(Mode::Burst, Duration::from_millis(1_500)), 4.0);
        assert_eq!(rates.rate(Mode::Burst, Duration::from_millis(2_100)), 20.0);
    }

    #[test]
    fn names_round_trip_and_bad_rates_are_refused() {
        for mode in Mode::ALL {
            assert_eq!(Mode::parse(mode.name()), Some(mode));
        }
        assert_eq!(Mode::parse("turbo"), None);
        assert!(Rates::default().check().is_ok());
        assert!(Rates { steady_per_sec: -1.0, ..Default::default() }.check().is_err());
        assert!(Rates { burst_factor: 0.5, ..Default::default() }.check().is_err());
        assert!(Rates { overload_factor: f64::NAN, ..Default::default() }.check().is_err());
        assert!(Rates { burst_period_ms: 0, ..Default::default() }.check().is_err());
        assert!(Rates { flood_per_sec: -1.0, ..Default::default() }.check().is_err());
        assert!(Rates { flood_per_sec: f64::INFINITY, ..Default::default() }.check().is_err());
    }
}
