//! Memory sizes and durations as users write them.
//!
//! Sizes follow Slurm's `--mem` notation: a whole number with an optional `K`, `M`, `G` or `T`
//! suffix (binary units, case-insensitive, an optional trailing `B`/`iB`), megabytes when there is
//! none. Durations take a unit: `250us`, `500ms`, `2s`, `5m`, `1h`.

use std::time::Duration;

/// A size or duration that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitParseError {
    #[error(
        "invalid memory size {0:?}: write a whole number with an optional unit, e.g. 512M, 4G or 1024 (MiB)"
    )]
    Size(String),
    #[error("memory size {0:?} is too large")]
    SizeOverflow(String),
    #[error("invalid duration {0:?}: write a number with a unit, e.g. 250us, 500ms, 2s, 5m or 1h")]
    Duration(String),
}

/// Parses a memory size in Slurm's notation into MiB, rounding up partial MiB (`1K` is 1 MiB).
pub fn parse_memory_mib(text: &str) -> Result<u64, UnitParseError> {
    let t = text.trim();
    let err = || UnitParseError::Size(text.to_owned());
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(err());
    }
    let n: u64 = num
        .parse()
        .map_err(|_| UnitParseError::SizeOverflow(text.to_owned()))?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let kib = match unit {
        "K" => n,
        "" | "M" => n
            .checked_mul(1 << 10)
            .ok_or_else(|| UnitParseError::SizeOverflow(text.to_owned()))?,
        "G" => n
            .checked_mul(1 << 20)
            .ok_or_else(|| UnitParseError::SizeOverflow(text.to_owned()))?,
        "T" => n
            .checked_mul(1 << 30)
            .ok_or_else(|| UnitParseError::SizeOverflow(text.to_owned()))?,
        _ => return Err(err()),
    };
    Ok(kib.div_ceil(1 << 10))
}

/// Parses a duration with a unit (`us`, `ms`, `s`, `m`, `h`); fractions are allowed (`1.5s`).
pub fn parse_duration(text: &str) -> Result<Duration, UnitParseError> {
    let t = text.trim();
    let err = || UnitParseError::Duration(text.to_owned());
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(err)?;
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| err())?;
    let secs_per_unit = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(value * secs_per_unit).map_err(|_| err())
}

/// Writes a duration in the notation [`parse_duration`] reads, with the largest unit that
/// divides it exactly (`1h`, `5m`, `2s`, `50ms`, `250us`), so that a printed default reads back
/// as the same value. Sub-microsecond parts are dropped.
pub fn format_duration(d: Duration) -> String {
    let us = d.as_micros();
    for (unit, per) in [
        ("h", 3_600_000_000u128),
        ("m", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1_000),
    ] {
        if us != 0 && us.is_multiple_of(per) {
            return format!("{}{unit}", us / per);
        }
    }
    format!("{us}us")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_slurm_notation() {
        assert_eq!(parse_memory_mib("512M").unwrap(), 512);
        assert_eq!(parse_memory_mib("512").unwrap(), 512);
        assert_eq!(parse_memory_mib("4G").unwrap(), 4096);
        assert_eq!(parse_memory_mib("4g").unwrap(), 4096);
        assert_eq!(parse_memory_mib("2GiB").unwrap(), 2048);
        assert_eq!(parse_memory_mib("1T").unwrap(), 1 << 20);
        assert_eq!(parse_memory_mib("1K").unwrap(), 1);
        assert_eq!(parse_memory_mib("2048K").unwrap(), 2);
        for bad in ["", "M", "-1G", "1.5G", "4X", "G4"] {
            assert!(parse_memory_mib(bad).is_err(), "{bad:?} should fail");
        }
        assert!(matches!(
            parse_memory_mib("99999999999999999999T"),
            Err(UnitParseError::SizeOverflow(_))
        ));
    }

    #[test]
    fn durations_with_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "5", "ms", "5 parsecs", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn formatted_durations_read_back() {
        for (d, text) in [
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_millis(50), "50ms"),
            (Duration::from_micros(250), "250us"),
            (Duration::ZERO, "0us"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text).unwrap(), d, "{text} reads back");
        }
    }
}
