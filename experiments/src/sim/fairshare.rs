//! Slurm's classic fair share: each account's core-time, decayed with a half-life, against
//! everyone's, for the multifactor priority of [`super::batch`].

use harvest_policies::hash::IdMap;

/// One account's usage: core-milliseconds, decayed, as of `since`, and the cores its
/// running jobs hold since then.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    core_ms: f64,
    cores: i64,
    since: u64,
}

impl Usage {
    /// Usage at `now`: the decayed past plus the running cores' integral, exactly
    /// (`dU/dt = cores - lambda U`).
    fn at(&self, now: u64, lambda: f64) -> f64 {
        let dt = now.saturating_sub(self.since) as f64;
        let cores = self.cores as f64;
        if lambda == 0.0 {
            return self.core_ms + cores * dt;
        }
        let d = (-lambda * dt).exp();
        self.core_ms * d + cores / lambda * (1.0 - d)
    }

    fn add(&mut self, now: u64, lambda: f64, cores: i64) {
        self.core_ms = self.at(now, lambda);
        self.since = now;
        self.cores += cores;
    }
}

/// Decayed usage by account, for the fair-share factor.
#[derive(Debug, Clone, Default)]
pub struct FairShare {
    lambda: f64,
    accounts: IdMap<u64, Usage>,
    total: Usage,
}

impl FairShare {
    pub fn new(half_life_ms: u64) -> Self {
        Self {
            lambda: if half_life_ms == 0 {
                0.0
            } else {
                std::f64::consts::LN_2 / half_life_ms as f64
            },
            ..Self::default()
        }
    }

    /// An account exists from its first job's submission (it has a share from then).
    pub fn open(&mut self, account: u64) {
        self.accounts.entry(account).or_default();
    }

    /// `cores` (negative: released) start or stop being used by `account` at `now`.
    pub fn charge(&mut self, account: u64, cores: i64, now: u64) {
        self.accounts
            .entry(account)
            .or_default()
            .add(now, self.lambda, cores);
        self.total.add(now, self.lambda, cores);
    }

    /// The account's decayed usage at `now`, core-seconds.
    pub fn usage_core_s(&self, account: u64, now: u64) -> f64 {
        self.accounts
            .get(&account)
            .map_or(0.0, |u| u.at(now, self.lambda) / 1000.0)
    }

    /// Slurm's classic fair-share factor `2^(-(U_a / U) / S_a)`, `S_a = 1 / accounts`.
    pub fn factor(&self, account: u64, now: u64) -> f64 {
        self.factor_given(account, now, self.total_at(now))
    }

    /// Every account's decayed usage at `now` (`U`, core-milliseconds), for
    /// [`FairShare::factor_given`]: a recalculation works it out once, not once an account.
    pub fn total_at(&self, now: u64) -> f64 {
        self.total.at(now, self.lambda)
    }

    /// [`FairShare::factor`] with `total` = [`FairShare::total_at`]`(now)`.
    pub fn factor_given(&self, account: u64, now: u64, total: f64) -> f64 {
        if total <= 0.0 {
            return 1.0;
        }
        let used = self
            .accounts
            .get(&account)
            .map_or(0.0, |u| u.at(now, self.lambda));
        let share = 1.0 / self.accounts.len().max(1) as f64;
        (-(used / total).max(0.0) / share).exp2()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HALF_LIFE_MS: u64 = 100_000;

    #[test]
    fn usage_decays_with_the_half_life_exactly() {
        // 2 cores from 0 to 100 s with a 100 s half-life: U = 2/l (1 - 2^-1) = 100/ln 2
        // core-s at 100 s (l = ln 2 / 100 s), half of it 100 s later; without decay 200.
        let mut f = FairShare::new(HALF_LIFE_MS);
        f.charge(1, 2, 0);
        f.charge(1, -2, 100_000);
        let at100 = 100.0 / std::f64::consts::LN_2;
        assert!((f.usage_core_s(1, 100_000) - at100).abs() < 1e-6);
        assert!((f.usage_core_s(1, 200_000) - at100 / 2.0).abs() < 1e-6);
        let mut n = FairShare::new(0);
        n.charge(1, 2, 0);
        n.charge(1, -2, 100_000);
        assert_eq!(n.usage_core_s(1, 300_000), 200.0);
    }

    #[test]
    fn fair_share_factor_is_slurms_classic_one_and_it_decays() {
        // A used 2 cores 0-100 s, B 2 cores 100-200 s. At 200 s, U_A = U_B / 2 (one more
        // half-life), so U_A / U = 1/3 and U_B / U = 2/3; two accounts, S = 1/2:
        // F_A = 2^(-2/3), F_B = 2^(-4/3). The account that used the machine earlier has
        // decayed below the recent one.
        let mut f = FairShare::new(HALF_LIFE_MS);
        f.open(1);
        f.open(2);
        assert_eq!(f.factor(1, 0), 1.0, "nothing used: every account at 1");
        f.charge(1, 2, 0);
        f.charge(1, -2, 100_000);
        assert!(
            (f.factor(1, 100_000) - 0.25).abs() < 1e-12,
            "A: U_A/U = 1, S = 1/2"
        );
        assert_eq!(f.factor(2, 100_000), 1.0);
        f.charge(2, 2, 100_000);
        f.charge(2, -2, 200_000);
        assert!((f.factor(1, 200_000) - (-2.0f64 / 3.0).exp2()).abs() < 1e-9);
        assert!((f.factor(2, 200_000) - (-4.0f64 / 3.0).exp2()).abs() < 1e-9);
        // Without decay both used 200 core-s: F = 2^-1 each.
        let mut n = FairShare::new(0);
        n.open(1);
        n.open(2);
        n.charge(1, 2, 0);
        n.charge(1, -2, 100_000);
        n.charge(2, 2, 100_000);
        n.charge(2, -2, 200_000);
        assert!((n.factor(1, 200_000) - 0.5).abs() < 1e-12);
        assert!((n.factor(2, 200_000) - 0.5).abs() < 1e-12);
    }
}
