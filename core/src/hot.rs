//! How long an executor's worker busy-polls for the next request after answering one (rFaaS's
//! hot mode), in the notation the executor's `--hot`, the CLI's `lease acquire --hot` and the
//! Python client's `hot=` share, and as the wire carries it (`ExecutorOptions.hot_window_us`).

use std::fmt;
use std::time::Duration;

use crate::units::{format_duration, parse_duration};

/// A worker's busy-poll window after each answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HotWindow {
    /// Never block: the lowest latency, and the leased core burnt while the lease is idle.
    Always,
    /// Busy-poll this long, then block in `poll`. Zero is warm mode.
    For(Duration),
}

impl HotWindow {
    /// Warm mode: always block (no busy-polling). A lease's executor runs warm unless its
    /// request asks for more.
    pub const WARM: HotWindow = HotWindow::For(Duration::ZERO);

    /// Parses `always`, `warm` (or `0`), or a duration (`100us`, `5ms`); `-1` is `always`, as
    /// on the wire.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "always" | "-1" => Ok(Self::Always),
            "warm" | "0" => Ok(Self::WARM),
            d => parse_duration(d)
                .map(Self::For)
                .map_err(|e| format!("{e}; or 'always' (hot) or 'warm'")),
        }
    }

    /// As `ExecutorOptions.hot_window_us` carries it: -1 always, 0 warm, else microseconds
    /// (saturating at `i64::MAX`).
    pub fn to_wire_us(self) -> i64 {
        match self {
            Self::Always => -1,
            Self::For(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        }
    }

    /// From `ExecutorOptions.hot_window_us`: any negative value is always hot.
    pub fn from_wire_us(us: i64) -> Self {
        match u64::try_from(us) {
            Ok(us) => Self::For(Duration::from_micros(us)),
            Err(_) => Self::Always,
        }
    }
}

/// `always`, `warm`, or the window in the notation [`parse_duration`] reads (`250us`, `1ms`):
/// what [`HotWindow::parse`] reads back as the same value.
impl fmt::Display for HotWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Always => f.write_str("always"),
            Self::For(d) if d.is_zero() => f.write_str("warm"),
            Self::For(d) => f.write_str(&format_duration(d)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_words_and_durations() {
        assert_eq!(HotWindow::parse("always").unwrap(), HotWindow::Always);
        assert_eq!(HotWindow::parse("-1").unwrap(), HotWindow::Always);
        assert_eq!(HotWindow::parse("warm").unwrap(), HotWindow::WARM);
        assert_eq!(HotWindow::parse(" 0 ").unwrap(), HotWindow::WARM);
        assert_eq!(
            HotWindow::parse("100us").unwrap(),
            HotWindow::For(Duration::from_micros(100))
        );
        let err = HotWindow::parse("soon").unwrap_err();
        assert!(err.contains("always") && err.contains("soon"), "{err}");
    }

    #[test]
    fn round_trips_through_the_wire_and_its_own_text() {
        for w in [
            HotWindow::Always,
            HotWindow::WARM,
            HotWindow::For(Duration::from_micros(250)),
            HotWindow::For(Duration::from_millis(1)),
            HotWindow::For(Duration::from_secs(60)),
        ] {
            assert_eq!(HotWindow::from_wire_us(w.to_wire_us()), w);
            assert_eq!(HotWindow::parse(&w.to_string()).unwrap(), w, "{w}");
        }
        assert_eq!(HotWindow::Always.to_wire_us(), -1);
        assert_eq!(HotWindow::WARM.to_wire_us(), 0);
        assert_eq!(HotWindow::from_wire_us(-7), HotWindow::Always);
        assert_eq!(HotWindow::For(Duration::MAX).to_wire_us(), i64::MAX);
        assert_eq!(HotWindow::Always.to_string(), "always");
        assert_eq!(HotWindow::WARM.to_string(), "warm");
        assert_eq!(
            HotWindow::For(Duration::from_micros(250)).to_string(),
            "250us"
        );
    }
}
