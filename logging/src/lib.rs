//! How harvest's daemons (harvestd, harvest-scheduler, harvest-executor) log.
//!
//! One place for all three, so a site configures them alike:
//! - **Text** (the default): one plain line per event on stderr. ANSI colours only when stderr
//!   is a terminal. Under systemd (stderr is the journal stream that `JOURNAL_STREAM` names) no
//!   timestamp (journald stamps every line) and a `<N>` syslog priority prefix, which journald
//!   turns into the entry's priority (`journalctl -p warning` works).
//! - **JSON** (`log_format = "json"`, `--log-format json` or `HARVEST_LOG_FORMAT=json`): one
//!   object per line with `timestamp`, `level`, `target`, `fields` (the message and the event's
//!   fields) and `span`, for sites that ship logs to Elasticsearch, Loki or Splunk.
//! - **Levels**: `RUST_LOG` at start if set, else the configuration's `log_level`, else `info`;
//!   [`reload_on_sighup`] re-reads `log_level` from the configuration file on `SIGHUP`
//!   (`systemctl reload`) and applies it without a restart.
//!
//! Libraries only emit `tracing` events; the binaries call [`init`].

use std::io::IsTerminal;
use std::str::FromStr;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// The environment variable that picks the format when no flag or key does.
pub const FORMAT_ENV: &str = "HARVEST_LOG_FORMAT";
/// The level when neither `RUST_LOG` nor the configuration says.
pub const DEFAULT_LEVEL: &str = "info";

/// What a log line looks like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Plain lines, for a terminal, journald or syslog.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for Format {
    type Err = LogError;
    fn from_str(s: &str) -> Result<Self, LogError> {
        match s.trim() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(LogError::Format(other.to_owned())),
        }
    }
}

/// A logging setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log format {0:?} is not one of: text, json")]
    Format(String),
    #[error(
        "log level {value:?} is not valid ({message}): use a level (error, warn, info, debug, \
         trace) or directives such as \"info,harvest_agent=debug\""
    )]
    Level { value: String, message: String },
    #[error("cannot change the log level: {0}")]
    Reload(String),
    #[error("a logger is already installed: {0}")]
    Init(String),
}

/// Parses a level or `RUST_LOG`-style directives.
pub fn filter(level: &str) -> Result<EnvFilter, LogError> {
    EnvFilter::builder()
        .parse(level)
        .map_err(|e| LogError::Level {
            value: level.to_owned(),
            message: e.to_string(),
        })
}

/// How text lines are decorated, from where stderr goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    pub ansi: bool,
    pub timestamps: bool,
    /// `<N>` syslog priority prefixes (journald's `SyslogLevelPrefix`).
    pub priority_prefix: bool,
}

impl Output {
    /// For stderr as it is now: a terminal gets colours; the journal gets no timestamps and
    /// priority prefixes; anything else (a file, a pipe) plain timestamped lines.
    pub fn detect(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let journal = under_journal(env("JOURNAL_STREAM").as_deref(), stderr_identity());
        Self {
            ansi: !journal && std::io::stderr().is_terminal(),
            timestamps: !journal,
            priority_prefix: journal,
        }
    }
}

/// Whether stderr is the journal's stream: systemd sets `JOURNAL_STREAM=DEV:INODE` for a
/// service whose stderr goes to the journal; a child that redirected stderr elsewhere must not
/// drop its timestamps, so the pair must match stderr's.
pub fn under_journal(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    match (dev.parse::<u64>(), ino.parse::<u64>(), stderr) {
        (Ok(d), Ok(i), Some(s)) => (d, i) == s,
        _ => false,
    }
}

fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Prefixes each line with its syslog priority (`<3>` error ... `<7>` debug).
#[derive(Debug)]
struct Priority<F>(F);

impl<S, N, F> FormatEvent<S, N> for Priority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

type Filtered = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;

/// The formatting layer for `format` and `output`, writing to `writer` (stderr in the daemons,
/// a buffer in tests).
pub fn layer<S, W>(format: Format, output: Output, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let base = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        Format::Json => base
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        Format::Text => {
            let text = base.with_ansi(output.ansi);
            match (output.timestamps, output.priority_prefix) {
                (true, false) => text.boxed(),
                (true, true) => text
                    .event_format(Priority(tracing_subscriber::fmt::format()))
                    .boxed(),
                (false, false) => text.without_time().boxed(),
                (false, true) => text
                    .event_format(Priority(tracing_subscriber::fmt::format().without_time()))
                    .boxed(),
            }
        }
    }
}

/// The installed logger: its level can change while the daemon runs.
#[derive(Debug, Clone)]
pub struct Logging {
    level: reload::Handle<EnvFilter, Registry>,
}

impl Logging {
    /// Applies a new level (or directives).
    pub fn set_level(&self, level: &str) -> Result<(), LogError> {
        let f = filter(level)?;
        self.level
            .reload(f)
            .map_err(|e| LogError::Reload(e.to_string()))
    }
}

/// The level to start with: `RUST_LOG` if set, else the configuration's, else [`DEFAULT_LEVEL`].
pub fn start_level(env: &dyn Fn(&str) -> Option<String>, configured: Option<&str>) -> String {
    env("RUST_LOG")
        .filter(|v| !v.trim().is_empty())
        .or_else(|| configured.map(str::to_owned))
        .unwrap_or_else(|| DEFAULT_LEVEL.to_owned())
}

/// The format: `flag` (which clap may fill from [`FORMAT_ENV`]), else the configuration's, else
/// text.
pub fn pick_format(flag: Option<Format>, configured: Option<Format>) -> Format {
    flag.or(configured).unwrap_or_default()
}

/// Installs the logger on stderr as the process's global subscriber.
pub fn init(format: Format, level: &str) -> Result<Logging, LogError> {
    let env = |k: &str| std::env::var(k).ok();
    let (filter_layer, handle) = reload::Layer::new(filter(level)?);
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(layer::<Filtered, _>(
            format,
            Output::detect(&env),
            std::io::stderr,
        ))
        .try_init()
        .map_err(|e| LogError::Init(e.to_string()))?;
    Ok(Logging { level: handle })
}

/// Until the process ends: on each `SIGHUP`, reads the level again with `read_level` (the
/// configuration file's `log_level`, `None` for the default) and applies it. A bad file or
/// level is logged and the old level kept.
pub async fn reload_on_sighup<F>(logging: Logging, read_level: F)
where
    F: Fn() -> Result<Option<String>, String>,
{
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP: the log level cannot be reloaded");
            return std::future::pending().await;
        }
    };
    while hup.recv().await.is_some() {
        let level = match read_level() {
            Ok(l) => l.unwrap_or_else(|| DEFAULT_LEVEL.to_owned()),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: cannot read the configuration; log level unchanged");
                continue;
            }
        };
        match logging.set_level(&level) {
            Ok(()) => tracing::warn!(%level, "SIGHUP: log level reloaded from the configuration"),
            Err(e) => tracing::error!(error = %e, "SIGHUP: log level unchanged"),
        }
    }
    std::future::pending().await
}

/// A writer that keeps what is logged, for tests that read their own logs.
#[derive(Debug, Clone, Default)]
pub struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture lock")).into_owned()
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A subscriber that logs into `capture` at `level` in `format`, with `output`'s decorations;
/// its level handle too (tests use it with `tracing::subscriber::with_default`).
pub fn capturing(
    format: Format,
    output: Output,
    level: &str,
    capture: &Capture,
) -> Result<(impl Subscriber + Send + Sync + use<>, Logging), LogError> {
    let (filter_layer, handle) = reload::Layer::new(filter(level)?);
    let subscriber = tracing_subscriber::registry()
        .with(filter_layer)
        .with(layer::<Filtered, _>(format, output, capture.clone()));
    Ok((subscriber, Logging { level: handle }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Output = Output {
        ansi: false,
        timestamps: true,
        priority_prefix: false,
    };
    const JOURNAL: Output = Output {
        ansi: false,
        timestamps: false,
        priority_prefix: true,
    };

    fn log_with(format: Format, output: Output, level: &str) -> (String, Logging, Capture) {
        let capture = Capture::default();
        let (sub, logging) = capturing(format, output, level, &capture).unwrap();
        tracing::subscriber::with_default(sub, || {
            tracing::info!(node = "n1", "agent ready");
            tracing::debug!("hidden at info");
            tracing::warn!("a warning");
        });
        (capture.text(), logging, capture)
    }

    #[test]
    fn plain_text_has_no_colours_and_one_timestamp() {
        let (text, _, _) = log_with(Format::Text, PLAIN, "info");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(!text.contains('\u{1b}'), "ANSI escape in {text:?}");
        assert!(lines[0].contains(" INFO "), "{text}");
        assert!(lines[0].contains("agent ready node=\"n1\""), "{text}");
        // An RFC 3339 timestamp first.
        assert!(
            lines[0].as_bytes()[4] == b'-' && lines[0].contains('T'),
            "{text}"
        );
    }

    #[test]
    fn under_the_journal_lines_carry_a_priority_and_no_timestamp() {
        let (text, _, _) = log_with(Format::Text, JOURNAL, "info");
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("<6> INFO ") || lines[0].starts_with("<6>INFO "),
            "{text}"
        );
        assert!(lines[1].starts_with("<4>"), "{text}");
        assert!(
            !lines[0].contains("T0") && !lines[0].contains('Z'),
            "{text}"
        );
    }

    #[test]
    fn json_lines_are_objects_with_level_and_fields() {
        let (text, _, _) = log_with(Format::Json, PLAIN, "info");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v["timestamp"].is_string(), "{line}");
            assert!(v["level"].is_string(), "{line}");
        }
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["fields"]["message"], "agent ready");
        assert_eq!(first["fields"]["node"], "n1");
    }

    #[test]
    fn the_level_changes_while_running() {
        let capture = Capture::default();
        let (sub, logging) = capturing(Format::Text, PLAIN, "warn", &capture).unwrap();
        tracing::subscriber::with_default(sub, || {
            tracing::info!("before");
            logging.set_level("debug").unwrap();
            tracing::debug!("after");
            assert!(logging.set_level("nonsense=level=x").is_err());
            tracing::debug!("kept");
        });
        let text = capture.text();
        assert!(!text.contains("before"), "{text}");
        assert!(text.contains("after") && text.contains("kept"), "{text}");
    }

    #[test]
    fn journal_stream_must_name_stderr() {
        assert!(under_journal(Some("8:1234"), Some((8, 1234))));
        assert!(!under_journal(Some("8:1234"), Some((8, 99))));
        assert!(!under_journal(None, Some((8, 1234))));
        assert!(!under_journal(Some("junk"), Some((8, 1234))));
    }

    #[test]
    fn levels_and_formats_parse_with_clear_errors() {
        assert_eq!("json".parse::<Format>().unwrap(), Format::Json);
        let e = "xml".parse::<Format>().unwrap_err().to_string();
        assert!(e.contains("text, json"), "{e}");
        assert!(filter("info,harvest_agent=debug").is_ok());
        let e = filter("harvest_agent=loud").unwrap_err().to_string();
        assert!(e.contains("harvest_agent=loud"), "{e}");
        let env = |k: &str| (k == "RUST_LOG").then(|| "debug".to_owned());
        assert_eq!(start_level(&env, Some("warn")), "debug");
        assert_eq!(start_level(&|_| None, Some("warn")), "warn");
        assert_eq!(start_level(&|_| None, None), "info");
        assert_eq!(pick_format(None, Some(Format::Json)), Format::Json);
        assert_eq!(
            pick_format(Some(Format::Text), Some(Format::Json)),
            Format::Text
        );
    }
}
