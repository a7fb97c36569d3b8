//! Canary analysis: the canary's figures against stable's over the same
//! stretch of time, judged with tests that know how many samples they have.
//! Pure: the controller gathers the figures; this says what they mean.
//!
//! - Errors: Fisher's exact test of two proportions (one-sided: the canary
//!   fails more), counted only above an absolute floor; more than
//!   `error_fast_factor` × stable's rate rolls back at once.
//! - Latency: the Mann-Whitney rank test over both samples says whether the
//!   canary is slower at all; the effect must also be larger than the margin,
//!   judged on confidence bounds of both p95s widened to the histogram's
//!   bucket edges — so neither a few slow requests nor a shift smaller than
//!   the buckets can resolve fails a healthy version.
//! - Orders' completion (the business check), when both sides finished sagas.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};
use statrs::function::gamma::ln_gamma;

use kit_core::red::Totals;

use crate::canary::CanaryConfig;

/// The chance we accept of a canary at exactly the error floor showing no
/// failure at all in the minimum sample: n = ln(1/β) / floor (≈ 3 / floor).
pub const MISS_CHANCE: f64 = 0.05;

/// Requests each side needs before any verdict.
pub fn min_samples(config: &CanaryConfig) -> u64 {
    if config.min_samples > 0 {
        return config.min_samples;
    }
    ((1.0 / MISS_CHANCE).ln() / config.error_floor).ceil() as u64
}

/// What one version did since the step began.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Side {
    /// Its instances' own server figures, by gRPC method.
    pub methods: BTreeMap<String, Totals>,
    /// Its callers' figures for calls it answered (gateway and east-west).
    pub calls: Totals,
    /// Sagas its instances finished, and how many of them completed (Orders).
    #[serde(default)]
    pub sagas: Option<(f64, f64)>,
}

impl Side {
    /// Every method together.
    pub fn server(&self) -> Totals {
        let mut sum = Totals::default();
        for totals in self.methods.values() {
            sum.add(totals);
        }
        sum
    }
}

/// Where one check stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    /// Too few samples to judge; the step waits.
    Wait,
    /// Worse, beyond the margin: the step does not pass.
    Fail,
    /// Far worse: rolled back at once.
    FailFast,
}

/// One check's figures and verdict, as `rollout status` shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    /// The canary's and stable's figure (a rate in %, or a latency in ms).
    pub canary: Option<f64>,
    pub stable: Option<f64>,
    pub unit: String,
    pub canary_samples: f64,
    pub stable_samples: f64,
    /// The test's one-sided p-value, when it ran.
    pub p_value: Option<f64>,
    /// Why, in words.
    pub detail: String,
    /// A check that only advises (too few samples never holds the step).
    #[serde(default)]
    pub advisory: bool,
}

/// Every check of one analysis.
pub fn judge(canary: &Side, stable: &Side, config: &CanaryConfig) -> Vec<Check> {
    let min = min_samples(config) as f64;
    let (canary_server, stable_server) = (canary.server(), stable.server());
    let mut checks = vec![
        error_check("errors (server side)", &canary_server, &stable_server, min, config),
        error_check("errors (callers' side)", &canary.calls, &stable.calls, min, config),
    ];
    // Per method, only where both sides have the minimum sample: a method
    // few call never holds a step, and the overall check still covers it.
    let judged: Vec<(&String, &Totals, &Totals)> = canary
        .methods
        .iter()
        .filter_map(|(method, c)| stable.methods.get(method).map(|s| (method, c, s)))
        .filter(|(_, c, s)| c.requests >= min && s.requests >= min)
        .collect();
    // Bonferroni: each latency test at alpha / tests keeps the family's alpha.
    let alpha = config.alpha / (1 + judged.len()) as f64;
    checks.push(latency_check(
        &format!("p{} latency", quantile_name(config)),
        &canary_server,
        &stable_server,
        min,
        alpha,
        config,
    ));
    for (method, c, s) in judged {
        let short = method.rsplit('/').next().unwrap_or(method);
        let mut check =
            latency_check(&format!("p{} latency of {short}", quantile_name(config)), c, s, min, alpha, config);
        check.advisory = true;
        checks.push(check);
    }
    if let (Some(c), Some(s)) = (canary.sagas, stable.sagas) {
        checks.push(completion_check(c, s, config));
    }
    checks
}

fn quantile_name(config: &CanaryConfig) -> String {
    format!("{}", (config.quantile * 100.0).round())
}

fn waiting(name: &str, unit: &str, c: f64, s: f64, min: f64) -> Check {
    Check {
        name: name.into(),
        verdict: Verdict::Wait,
        canary: None,
        stable: None,
        unit: unit.into(),
        canary_samples: c,
        stable_samples: s,
        p_value: None,
        detail: format!("{c} requests on the canary and {s} on stable; {min} each needed to judge"),
        advisory: false,
    }
}

fn error_check(name: &str, canary: &Totals, stable: &Totals, min: f64, config: &CanaryConfig) -> Check {
    let (nc, ns) = (canary.requests, stable.requests);
    if nc < min || ns < min {
        return waiting(name, "%", nc, ns, min);
    }
    let (rc, rs) = (canary.errors / nc, stable.errors / ns);
    let p = fisher_greater(canary.errors, nc, stable.errors, ns);
    let fast = rc > config.error_fast_factor * rs;
    let verdict = if rc <= config.error_floor || p >= config.alpha {
        Verdict::Pass
    } else if fast {
        Verdict::FailFast
    } else {
        Verdict::Fail
    };
    let detail = format!(
        "{} of {nc} failed on the canary ({:.3} %), {} of {ns} on stable ({:.3} %); floor {:.3} %, p = {p:.2e}{}",
        canary.errors,
        rc * 100.0,
        stable.errors,
        rs * 100.0,
        config.error_floor * 100.0,
        if verdict > Verdict::Wait && fast {
            format!(", over {}× stable's rate", config.error_fast_factor)
        } else {
            String::new()
        }
    );
    rate_check(name, verdict, (rc, rs), (nc, ns), p, detail)
}

/// A check of two rates (shown in %), judged with a test's p-value.
fn rate_check(name: &str, verdict: Verdict, rates: (f64, f64), samples: (f64, f64), p: f64, detail: String) -> Check {
    Check {
        name: name.into(),
        verdict,
        canary: Some(rates.0 * 100.0),
        stable: Some(rates.1 * 100.0),
        unit: "%".into(),
        canary_samples: samples.0,
        stable_samples: samples.1,
        p_value: Some(p),
        detail,
        advisory: false,
    }
}

fn latency_check(name: &str, canary: &Totals, stable: &Totals, min: f64, alpha: f64, config: &CanaryConfig) -> Check {
    let (nc, ns) = (canary.requests, stable.requests);
    if nc < min || ns < min {
        return waiting(name, "ms", nc, ns, min);
    }
    let q = config.quantile;
    let z = normal_quantile(1.0 - alpha);
    let p = mann_whitney_greater(&canary.buckets, &stable.buckets).unwrap_or(1.0);
    let canary_q = kit_core::red::quantile(&canary.buckets, q).map(|s| s * 1e3);
    let stable_q = kit_core::red::quantile(&stable.buckets, q).map(|s| s * 1e3);
    let bounds = (quantile_interval(&canary.buckets, q, z), quantile_interval(&stable.buckets, q, z));
    let (verdict, detail) = match bounds {
        (Some((canary_low, _)), Some((_, stable_high))) => {
            let (low_ms, high_ms) = (canary_low * 1e3, stable_high * 1e3);
            let beyond = |margin: f64| p < alpha && low_ms > high_ms * (1.0 + margin) + config.latency_slack_ms;
            let verdict = if beyond(config.latency_fast_margin) {
                Verdict::FailFast
            } else if beyond(config.latency_margin) {
                Verdict::Fail
            } else {
                Verdict::Pass
            };
            let detail = format!(
                "canary {} ms (at least {low_ms:.1}), stable {} ms (at most {high_ms:.1}); rank test p = {p:.2e} \
                 (alpha {alpha:.1e}); allowed +{:.0} %, +{:.0} % rolls back at once (each + {} ms)",
                text(canary_q),
                text(stable_q),
                config.latency_margin * 100.0,
                config.latency_fast_margin * 100.0,
                config.latency_slack_ms
            );
            (verdict, detail)
        }
        _ => (Verdict::Pass, "no latency samples".to_string()),
    };
    Check {
        name: name.into(),
        verdict,
        canary: canary_q,
        stable: stable_q,
        unit: "ms".into(),
        canary_samples: nc,
        stable_samples: ns,
        p_value: Some(p),
        detail,
        advisory: false,
    }
}

fn text(ms: Option<f64>) -> String {
    ms.map_or_else(|| "?".into(), |ms| format!("{ms:.1}"))
}

/// Orders' completion rate per version: sagas finished, and completed.
fn completion_check(canary: (f64, f64), stable: (f64, f64), config: &CanaryConfig) -> Check {
    let ((nc, cc), (ns, cs)) = (canary, stable);
    let name = "orders completed";
    let min = config.business_min_sagas as f64;
    if nc < min || ns < min {
        let mut check = waiting(name, "%", nc, ns, min);
        check.advisory = true;
        check.detail = format!("{nc} sagas finished on the canary, {ns} on stable; {min} each needed (advisory)");
        return check;
    }
    let (rc, rs) = (cc / nc, cs / ns);
    // Fewer completions is more non-completions: the same one-sided test.
    let p = fisher_greater(nc - cc, nc, ns - cs, ns);
    let verdict = if p < config.alpha && rs - rc > config.business_margin { Verdict::Fail } else { Verdict::Pass };
    let detail = format!(
        "{cc} of {nc} completed on the canary, {cs} of {ns} on stable; {:.0} points worse fails; p = {p:.2e}",
        config.business_margin * 100.0
    );
    rate_check(name, verdict, (rc, rs), (nc, ns), p, detail)
}

fn normal_quantile(p: f64) -> f64 {
    Normal::new(0.0, 1.0).map(|n| n.inverse_cdf(p.clamp(1e-12, 1.0 - 1e-12))).unwrap_or(3.0)
}

fn normal_upper_tail(z: f64) -> f64 {
    Normal::new(0.0, 1.0).map(|n| n.sf(z)).unwrap_or(0.5)
}

fn ln_choose(n: f64, k: f64) -> f64 {
    ln_gamma(n + 1.0) - ln_gamma(k + 1.0) - ln_gamma(n - k + 1.0)
}

/// One-sided p-value that the first proportion (x1 of n1) is above the
/// second (x2 of n2): Fisher's exact test, the hypergeometric upper tail.
/// Exact at the small counts a 0.1 % floor meets, where the normal
/// approximation would call one failure in 300 "significant".
pub fn fisher_greater(x1: f64, n1: f64, x2: f64, n2: f64) -> f64 {
    let (x1, n1, x2, n2) = (x1.round(), n1.round(), x2.round(), n2.round());
    let (k, n) = (x1 + x2, n1 + n2);
    if n1 <= 0.0 || n2 <= 0.0 || k <= 0.0 {
        return 1.0;
    }
    let top = k.min(n1);
    if top - x1 > 200_000.0 {
        // Counts this large: the normal approximation is exact enough.
        return two_proportion_z(x1, n1, x2, n2);
    }
    let denominator = ln_choose(n, n1);
    let mut p = 0.0;
    let mut i = x1;
    while i <= top {
        let term = (ln_choose(k, i) + ln_choose(n - k, n1 - i) - denominator).exp();
        p += term;
        if term < p * 1e-15 && i > k * n1 / n {
            break;
        }
        i += 1.0;
    }
    p.min(1.0)
}

/// The pooled two-proportion z-test, one-sided.
fn two_proportion_z(x1: f64, n1: f64, x2: f64, n2: f64) -> f64 {
    let pooled = (x1 + x2) / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se <= 0.0 { 1.0 } else { normal_upper_tail((x1 / n1 - x2 / n2) / se) }
}

/// Counts per bucket (not cumulative) of both histograms over the union of
/// their bounds.
fn aligned(a: &[(f64, f64)], b: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut bounds: Vec<f64> = a.iter().chain(b).map(|(le, _)| *le).collect();
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    let at = |h: &[(f64, f64)], le: f64| h.iter().take_while(|(l, _)| *l <= le).last().map_or(0.0, |(_, c)| *c);
    let mut previous = (0.0, 0.0);
    bounds
        .iter()
        .map(|&le| {
            let now = (at(a, le), at(b, le));
            let counts = ((now.0 - previous.0).max(0.0), (now.1 - previous.1).max(0.0));
            previous = now;
            counts
        })
        .collect()
}

/// One-sided p-value that the first sample (cumulative histogram buckets)
/// tends to be larger than the second: the Mann-Whitney U test, normal
/// approximation with the correction for ties (a bucket is one tied rank).
pub fn mann_whitney_greater(first: &[(f64, f64)], second: &[(f64, f64)]) -> Option<f64> {
    let counts = aligned(first, second);
    let (n1, n2): (f64, f64) = counts.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    if n1 <= 0.0 || n2 <= 0.0 {
        return None;
    }
    // U: pairs where the first is larger, ties counting half.
    let (mut u, mut below, mut ties) = (0.0, 0.0, 0.0);
    for &(x, y) in &counts {
        u += x * (below + y / 2.0);
        below += y;
        let t = x + y;
        ties += t * t * t - t;
    }
    let n = n1 + n2;
    let variance = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if variance <= 0.0 {
        return Some(1.0);
    }
    let z = (u - n1 * n2 / 2.0 - 0.5) / variance.sqrt();
    Some(normal_upper_tail(z))
}

/// A confidence interval for the q-quantile of a histogram: the order
/// statistics at n·q ∓ z·√(n·q·(1-q)) (distribution-free), widened to the
/// edges of the buckets they fall in, since where inside a bucket a value lay
/// is not known. In seconds; `None` without observations.
pub fn quantile_interval(buckets: &[(f64, f64)], q: f64, z: f64) -> Option<(f64, f64)> {
    let n = buckets.last()?.1;
    if n <= 0.0 {
        return None;
    }
    let spread = z * (n * q * (1.0 - q)).sqrt();
    let (low_rank, high_rank) = ((n * q - spread).max(1.0), (n * q + spread + 1.0).min(n));
    let mut lower = 0.0;
    let mut previous = 0.0;
    let mut found_lower = false;
    for &(le, count) in buckets {
        if !found_lower && count >= low_rank {
            lower = previous;
            found_lower = true;
        }
        if count >= high_rank {
            return Some((lower, le));
        }
        previous = le;
    }
    Some((lower, f64::INFINITY))
}

/// The verdict of a whole analysis: the worst check that counts.
pub fn overall(checks: &[Check]) -> Verdict {
    checks
        .iter()
        .map(|c| if c.advisory && c.verdict == Verdict::Wait { Verdict::Pass } else { c.verdict })
        .max()
        .unwrap_or(Verdict::Wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values_ms: &[(f64, f64)]) -> Vec<(f64, f64)> {
        // (value in ms, how many) → cumulative buckets on the servers' bounds.
        let bounds: Vec<f64> = kit_telemetry::metrics::FINE_BUCKETS.iter().copied().chain([f64::INFINITY]).collect();
        bounds.iter().map(|&le| (le, values_ms.iter().filter(|(v, _)| v / 1e3 <= le).map(|(_, n)| n).sum())).collect()
    }

    fn totals(values_ms: &[(f64, f64)], errors: f64) -> Totals {
        let buckets = histogram(values_ms);
        Totals { requests: buckets.last().map_or(0.0, |b| b.1), errors, buckets }
    }

    fn side(t: Totals) -> Side {
        Side { methods: [("/p.S/Get".to_string(), t.clone())].into(), calls: t, sagas: None }
    }

    #[test]
    fn the_minimum_sample_makes_the_floor_detectable() {
        let config = CanaryConfig::default();
        // ln(20) / 0.001 = 2995.7: a canary failing at the floor shows no
        // failure in that many requests with a chance of 5 %.
        assert_eq!(min_samples(&config), 2_996);
        assert!((1.0 - config.error_floor).powf(2_996.0) <= MISS_CHANCE);
        assert_eq!(min_samples(&CanaryConfig { min_samples: 50, ..config }), 50);
    }

    #[test]
    fn fisher_matches_known_values() {
        // One failure in 300 against none in 6000: the failure lands on the
        // canary with chance 300/6300 — not significant.
        assert!((fisher_greater(1.0, 300.0, 0.0, 6_000.0) - 300.0 / 6_300.0).abs() < 1e-9);
        // The tea-tasting table (3 of 4 against 1 of 4): p = 17/70.
        assert!((fisher_greater(3.0, 4.0, 1.0, 4.0) - 17.0 / 70.0).abs() < 1e-9);
        assert_eq!(fisher_greater(0.0, 100.0, 0.0, 100.0), 1.0);
        assert!(fisher_greater(30.0, 300.0, 3.0, 6_000.0) < 1e-20);
        // Large counts: the z-test path agrees in direction.
        assert!(fisher_greater(2_000.0, 400_000.0, 1_000.0, 400_000.0) < 1e-9);
    }

    #[test]
    fn rank_test_sees_a_shift_and_not_noise() {
        let stable = histogram(&[(4.0, 900.0), (7.0, 100.0)]);
        let same = histogram(&[(4.0, 450.0), (7.0, 50.0)]);
        let slower = histogram(&[(7.0, 450.0), (12.0, 50.0)]);
        assert!(mann_whitney_greater(&same, &stable).unwrap_or(0.0) > 0.3);
        assert!(mann_whitney_greater(&slower, &stable).unwrap_or(1.0) < 1e-6);
        // Faster is not "greater".
        assert!(mann_whitney_greater(&stable, &slower).unwrap_or(0.0) > 0.99);
        assert_eq!(mann_whitney_greater(&[], &stable), None);
    }

    #[test]
    fn quantile_bounds_hold_the_bucket_edges() {
        let h = histogram(&[(4.0, 1_000.0)]);
        let (low, high) = quantile_interval(&h, 0.95, 2.33).unwrap_or_default();
        assert!(low <= 0.004 && high >= 0.004, "{low} {high}");
        assert_eq!(quantile_interval(&[], 0.95, 2.33), None);
    }

    #[test]
    fn errors_are_judged_on_floor_significance_and_the_fast_path() {
        let config = CanaryConfig { min_samples: 200, ..CanaryConfig::default() };
        let stable = side(totals(&[(4.0, 4_000.0)], 4.0));
        let check = |canary: Totals| {
            judge(&side(canary), &stable, &config)
                .into_iter()
                .find(|c| c.name.starts_with("errors (server"))
                .map(|c| c.verdict)
        };
        assert_eq!(check(totals(&[(4.0, 100.0)], 50.0)), Some(Verdict::Wait), "below the minimum sample");
        assert_eq!(check(totals(&[(4.0, 400.0)], 40.0)), Some(Verdict::FailFast), "10 % against 0.1 %");
        assert_eq!(check(totals(&[(4.0, 400.0)], 1.0)), Some(Verdict::Pass), "one failure is noise");
        // 0.4 % against 0.1 %: significant with enough samples, but 4×, not 5×.
        let stable_big = side(totals(&[(4.0, 100_000.0)], 100.0));
        let canary = side(totals(&[(4.0, 20_000.0)], 80.0));
        let verdict = judge(&canary, &stable_big, &config).into_iter().find(|c| c.name.starts_with("errors (server"));
        assert_eq!(verdict.map(|c| c.verdict), Some(Verdict::Fail));
    }

    #[test]
    fn latency_fails_on_a_real_regression_only() {
        let config = CanaryConfig { min_samples: 200, ..CanaryConfig::default() };
        let stable = side(totals(&[(3.0, 1_900.0), (8.0, 100.0)], 0.0));
        let latency = |canary: &[(f64, f64)]| {
            let checks = judge(&side(totals(canary, 0.0)), &stable, &config);
            checks.into_iter().find(|c| c.name == "p95 latency").map(|c| c.verdict)
        };
        assert_eq!(latency(&[(3.0, 950.0), (8.0, 50.0)]), Some(Verdict::Pass), "the same");
        // 3 % slower: significant perhaps, but within the buckets' resolution and the margin.
        assert_eq!(latency(&[(3.09, 950.0), (8.24, 50.0)]), Some(Verdict::Pass), "3 % slower");
        // 200 ms slower on every call.
        assert_eq!(latency(&[(203.0, 950.0), (208.0, 50.0)]), Some(Verdict::FailFast));
        // 60 % slower: beyond the +10 % margin, not provably beyond +50 % —
        // when no slack is allowed; within the default 5 ms slack it passes.
        let spike = side(totals(&[(3.0, 2_000.0)], 0.0));
        let canary = side(totals(&[(4.8, 1_000.0)], 0.0));
        let p95 = |config: &CanaryConfig| {
            judge(&canary, &spike, config).into_iter().find(|c| c.name == "p95 latency").map(|c| c.verdict)
        };
        assert_eq!(p95(&CanaryConfig { latency_slack_ms: 0.0, ..config.clone() }), Some(Verdict::Fail));
        assert_eq!(p95(&config), Some(Verdict::Pass), "1.8 ms slower is within the slack");
        // A fresh canary's cold cache (0.6 ms) against stable's warm one (0.3 ms): no regression.
        let warm = side(totals(&[(0.3, 2_000.0)], 0.0));
        let cold = side(totals(&[(0.6, 1_000.0)], 0.0));
        let checks = judge(&cold, &warm, &config);
        assert_eq!(checks.iter().find(|c| c.name == "p95 latency").map(|c| c.verdict), Some(Verdict::Pass));
    }

    #[test]
    fn orders_completion_is_judged_once_there_are_sagas() {
        let config = CanaryConfig { min_samples: 10, ..CanaryConfig::default() };
        let with_sagas = |finished: f64, completed: f64| Side { sagas: Some((finished, completed)), ..Side::default() };
        let completion = |canary: Side, stable: Side| {
            judge(&canary, &stable, &config).into_iter().find(|c| c.name == "orders completed")
        };
        let few = completion(with_sagas(10.0, 2.0), with_sagas(400.0, 390.0)).unwrap_or_else(|| panic!("judged"));
        assert!(few.verdict == Verdict::Wait && few.advisory, "too few sagas only advises");
        let worse = completion(with_sagas(200.0, 150.0), with_sagas(400.0, 390.0)).map(|c| c.verdict);
        assert_eq!(worse, Some(Verdict::Fail), "75 % against 97.5 % completed");
        let same = completion(with_sagas(200.0, 194.0), with_sagas(400.0, 390.0)).map(|c| c.verdict);
        assert_eq!(same, Some(Verdict::Pass));
        assert!(completion(Side::default(), Side::default()).is_none(), "not Orders: no business check");
    }

    #[test]
    fn the_overall_verdict_is_the_worst_that_counts() {
        let check = |verdict, advisory| Check {
            name: String::new(),
            verdict,
            canary: None,
            stable: None,
            unit: String::new(),
            canary_samples: 0.0,
            stable_samples: 0.0,
            p_value: None,
            detail: String::new(),
            advisory,
        };
        assert_eq!(overall(&[check(Verdict::Pass, false), check(Verdict::Wait, true)]), Verdict::Pass);
        assert_eq!(overall(&[check(Verdict::Pass, false), check(Verdict::Wait, false)]), Verdict::Wait);
        assert_eq!(overall(&[check(Verdict::Wait, false), check(Verdict::FailFast, true)]), Verdict::FailFast);
    }
}
