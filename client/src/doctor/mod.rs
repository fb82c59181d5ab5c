//! `harvest doctor`: checks a node (or the scheduler from anywhere) and says what is wrong and how
//! to fix it.
//!
//! - [`checks`]: one function per check that turns what was observed into a [`Check`]
//!   (verdict, what is wrong, how to fix it). Pure: inputs are parameters, so unit tests drive
//!   every verdict without a cluster.
//! - [`probe`]: gathers those inputs on the real system (Slurm's commands, files, munge, the
//!   agent's query socket, the scheduler) behind small traits, and runs the checks in order.
//!
//! A check that lacks its inputs (no Slurm node on this host, no scheduler HTTP address) is
//! skipped and says what to pass; skips do not count against the exit code.

pub mod checks;
pub mod probe;

use serde::Serialize;

/// A check's verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    #[default]
    Ok,
    /// Not checked (its inputs are missing here); does not fail the run.
    Skip,
    /// Works, but something will bite (a certificate near expiry, clocks drifting).
    Warn,
    Fail,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Skip => "skip",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// A stable name: `slurm`, `plugstack`, `cgroup`, `munge`, `agent:<node>`, `ledger:<node>`,
    /// `cert:<path>`, `clock`, `scheduler`, `executor:<lease>`.
    pub name: String,
    pub verdict: Verdict,
    /// What was found (for a failure: what is wrong).
    pub summary: String,
    /// How to fix it (absent when nothing needs fixing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: impl Into<String>, summary: impl Into<String>) -> Self {
        Self::new(name, Verdict::Ok, summary, None::<String>)
    }

    pub fn skip(name: impl Into<String>, summary: impl Into<String>) -> Self {
        Self::new(name, Verdict::Skip, summary, None::<String>)
    }

    pub fn warn(
        name: impl Into<String>,
        summary: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(name, Verdict::Warn, summary, Some(fix))
    }

    pub fn fail(
        name: impl Into<String>,
        summary: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(name, Verdict::Fail, summary, Some(fix))
    }

    fn new(
        name: impl Into<String>,
        verdict: Verdict,
        summary: impl Into<String>,
        fix: Option<impl Into<String>>,
    ) -> Self {
        Self {
            name: name.into(),
            verdict,
            summary: summary.into(),
            fix: fix.map(Into::into),
        }
    }
}

/// Every check of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The worst verdict (`ok` when every check passed or was skipped).
    pub verdict: Verdict,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(checks: Vec<Check>) -> Self {
        let verdict = checks
            .iter()
            .map(|c| c.verdict)
            .filter(|v| *v != Verdict::Skip)
            .max()
            .unwrap_or(Verdict::Ok);
        Self { verdict, checks }
    }

    pub fn count(&self, verdict: Verdict) -> usize {
        self.checks.iter().filter(|c| c.verdict == verdict).count()
    }

    /// One line per check, then what to do for each that is not ok.
    pub fn text(&self) -> String {
        // Names line up up to NAME_WIDTH; a longer one (a certificate's path) gets its own line.
        const NAME_WIDTH: usize = 12;
        let width = self
            .checks
            .iter()
            .map(|c| c.name.len())
            .filter(|l| *l <= NAME_WIDTH)
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            let label = c.verdict.label();
            if c.name.len() > width {
                out.push_str(&format!("{label:<4}  {}\n", c.name));
                out.push_str(&format!("      {:<width$}  {}\n", "", c.summary));
            } else {
                out.push_str(&format!("{label:<4}  {:<width$}  {}\n", c.name, c.summary));
            }
            if let Some(fix) = &c.fix {
                out.push_str(&format!("      {:<width$}  fix: {fix}\n", ""));
            }
        }
        out.push_str(&format!(
            "{}: {} ok, {} warn, {} failed, {} skipped\n",
            match self.verdict {
                Verdict::Ok | Verdict::Skip => "all is well",
                Verdict::Warn => "warnings",
                Verdict::Fail => "problems found",
            },
            self.count(Verdict::Ok),
            self.count(Verdict::Warn),
            self.count(Verdict::Fail),
            self.count(Verdict::Skip),
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_verdict_wins_and_skips_do_not_count() {
        let r = Report::new(vec![Check::ok("a", "fine"), Check::skip("b", "no input")]);
        assert_eq!(r.verdict, Verdict::Ok);
        let r = Report::new(vec![
            Check::ok("a", "fine"),
            Check::warn("b", "soon", "renew"),
            Check::skip("c", "-"),
        ]);
        assert_eq!(r.verdict, Verdict::Warn);
        let r = Report::new(vec![
            Check::fail("a", "broken", "mend it"),
            Check::warn("b", "soon", "renew"),
        ]);
        assert_eq!(r.verdict, Verdict::Fail);
    }

    #[test]
    fn text_names_each_check_its_verdict_and_its_fix() {
        let r = Report::new(vec![
            Check::ok("munge", "a credential was made and decoded"),
            Check::fail("agent:n1", "no harvestd answers", "start harvestd"),
        ]);
        let t = r.text();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ok    munge "), "{t}");
        assert!(
            lines[1].starts_with("FAIL  agent:n1  no harvestd answers"),
            "{t}"
        );
        assert!(
            lines[2].trim_start().starts_with("fix: start harvestd"),
            "{t}"
        );
        assert_eq!(
            lines[3],
            "problems found: 1 ok, 0 warn, 1 failed, 0 skipped"
        );
    }

    #[test]
    fn json_has_stable_names() {
        let r = Report::new(vec![Check::warn("clock", "3 s ahead", "run chrony")]);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["verdict"], "warn");
        assert_eq!(v["checks"][0]["name"], "clock");
        assert_eq!(v["checks"][0]["verdict"], "warn");
        assert_eq!(v["checks"][0]["fix"], "run chrony");
    }
}
