//! The configuration reference (docs/config.md) and the commented configuration files installed
//! under /etc/harvest, both generated from the configuration structs so that neither can drift:
//!
//! - the keys, their order and their meaning come from the structs' source (`pub key: Type`
//!   fields and the `///` comments above them), read at compile time with `include_str!`;
//! - the defaults come from serializing each struct's `Default` value, the same value the daemon
//!   starts from;
//! - every serialized key must be a documented field and every field must have a comment, or
//!   the generator fails and names the field.

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// One TOML table of a configuration file, described by one Rust struct.
#[derive(Debug)]
pub struct Section {
    /// The table's header (`interference`, `access.per_user`), empty for the top level.
    pub table: &'static str,
    /// Whether the table is an array of tables (`[[access.per_group]]`).
    pub array: bool,
    /// The struct's name and the source file that declares it.
    pub struct_name: &'static str,
    pub source_path: &'static str,
    pub source: &'static str,
    /// The struct's default, serialized; `None` for array tables, which have no default element.
    pub defaults: Option<toml::Table>,
}

/// One configuration file.
#[derive(Debug)]
pub struct ConfigFile {
    /// The file's name under /etc/harvest.
    pub file: &'static str,
    /// Who reads it, and how it is pointed at it (Markdown).
    pub reader: &'static str,
    /// A paragraph above the keys: what the file is for.
    pub intro: &'static str,
    pub sections: Vec<Section>,
}

/// A field of a configuration struct as its source declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub ty: String,
    pub doc: String,
}

fn defaults<T: Serialize>(value: &T) -> toml::Table {
    toml::Table::try_from(value).expect("a configuration's default serializes as a TOML table")
}

/// harvest's configuration files, in the order the reference lists them.
pub fn files() -> Vec<ConfigFile> {
    let agent = harvest_agent::config::Config::default();
    let scheduler = harvest_scheduler::config::Config::default();
    let client = harvest_client::locate::ClientConfig::default();
    vec![
        ConfigFile {
            file: "harvestd.toml",
            reader: "`harvestd run --node NODE --config /etc/harvest/harvestd.toml`",
            intro: "The node agent, one per Slurm node. Command-line options (`--run-dir`, \
                    `--state-dir`, `--cgroup-root`, `--scheduler`) override the file. Durations \
                    take a unit (`250ms`, `1s`, `5m`, `1h`) and are at most 365 days.",
            sections: vec![
                Section {
                    table: "",
                    array: false,
                    struct_name: "Config",
                    source_path: "node-agent/src/config.rs",
                    source: include_str!("../../node-agent/src/config.rs"),
                    defaults: Some(defaults(&agent)),
                },
                Section {
                    table: "interference",
                    array: false,
                    struct_name: "InterferenceConfig",
                    source_path: "node-agent/src/interference/settings.rs",
                    source: include_str!("../../node-agent/src/interference/settings.rs"),
                    defaults: Some(defaults(&agent.interference)),
                },
            ],
        },
        ConfigFile {
            file: "harvest-scheduler.toml",
            reader: "`harvest-scheduler --config /etc/harvest/harvest-scheduler.toml`",
            intro: "The scheduler (and its standbys, which read the same file). `--listen`, \
                    `--http` and `--policy` override the file. Every `*_ms` key is at most \
                    31536000000 (365 days).",
            sections: vec![
                Section {
                    table: "",
                    array: false,
                    struct_name: "Config",
                    source_path: "scheduler/src/config.rs",
                    source: include_str!("../../scheduler/src/config.rs"),
                    defaults: Some(defaults(&scheduler)),
                },
                Section {
                    table: "access",
                    array: false,
                    struct_name: "AccessConfig",
                    source_path: "scheduler/src/access.rs",
                    source: include_str!("../../scheduler/src/access.rs"),
                    defaults: Some(defaults(&scheduler.access)),
                },
                Section {
                    table: "access.per_user",
                    array: false,
                    struct_name: "Caps",
                    source_path: "scheduler/src/access.rs",
                    source: include_str!("../../scheduler/src/access.rs"),
                    defaults: Some(defaults(&scheduler.access.per_user)),
                },
                Section {
                    table: "access.per_group",
                    array: true,
                    struct_name: "GroupCaps",
                    source_path: "scheduler/src/access.rs",
                    source: include_str!("../../scheduler/src/access.rs"),
                    defaults: None,
                },
            ],
        },
        ConfigFile {
            file: "client.toml",
            reader: "the `harvest` CLI and the client libraries, when neither `--config`, \
                     `$HARVEST_CONFIG` nor `~/.config/harvest/client.toml` names another file",
            intro: "Where clients find the scheduler and how they make credentials. \
                    `--scheduler`, `$HARVEST_SCHEDULER`, `$HARVEST_CA` and \
                    `$HARVEST_SCHEDULER_UID` override it.",
            sections: vec![Section {
                table: "",
                array: false,
                struct_name: "ClientConfig",
                source_path: "client/src/locate.rs",
                source: include_str!("../../client/src/locate.rs"),
                defaults: Some(defaults(&client)),
            }],
        },
    ]
}

/// The fields of `pub struct NAME { ... }` in `source`, in declaration order, without those
/// marked `#[serde(skip)]`.
pub fn parse_fields(source: &str, struct_name: &str) -> Result<Vec<Field>> {
    let header = format!("pub struct {struct_name} {{");
    let mut lines = source.lines().skip_while(|l| l.trim() != header);
    lines
        .next()
        .with_context(|| format!("no `{header}` line"))?;
    let mut fields = Vec::new();
    let mut doc: Vec<String> = Vec::new();
    let mut skip = false;
    for line in lines {
        let t = line.trim();
        if t == "}" {
            return Ok(fields);
        }
        if let Some(text) = t.strip_prefix("///") {
            doc.push(text.trim().to_owned());
        } else if t.starts_with("#[") {
            skip |= t.contains("serde(skip)");
        } else if let Some(rest) = t.strip_prefix("pub ") {
            let (name, ty) = rest
                .split_once(':')
                .with_context(|| format!("cannot read the field line `{t}`"))?;
            if !skip {
                fields.push(Field {
                    name: name.trim().to_owned(),
                    ty: ty.trim().trim_end_matches(',').to_owned(),
                    doc: doc.join(" "),
                });
            }
            doc.clear();
            skip = false;
        } else if !(t.is_empty() || t.starts_with("//")) {
            bail!(
                "cannot read `{t}` in struct {struct_name}: a field is `pub name: Type,` on one \
                 line"
            );
        }
    }
    bail!("struct {struct_name} has no closing `}}`")
}

/// A key as the reference and the configuration files show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub name: String,
    pub doc: String,
    /// The default as TOML (`"1s"`, `1024`, `true`), `None` when the key is unset by default.
    pub default: Option<String>,
    /// Whether the key must be given (a field of an array table that is not an `Option`).
    pub required: bool,
    /// The table this key holds, when it is one (documented in its own section).
    pub table: Option<String>,
}

/// The keys of one section, checked against its serialized default.
pub fn keys(section: &Section) -> Result<Vec<Key>> {
    let place = || format!("struct {} in {}", section.struct_name, section.source_path);
    let fields = parse_fields(section.source, section.struct_name).with_context(place)?;
    let mut keys = Vec::new();
    for field in &fields {
        if field.doc.is_empty() {
            bail!(
                "{}: field `{}` has no /// comment; every configuration key is documented there \
                 (docs/config.md is generated from it)",
                place(),
                field.name
            );
        }
        let value = section.defaults.as_ref().and_then(|d| d.get(&field.name));
        let nested = match value {
            Some(toml::Value::Table(_)) => Some(qualify(section.table, &field.name)),
            Some(toml::Value::Array(a)) if a.is_empty() && field.ty.starts_with("Vec<") => {
                // An array of tables (`Vec<GroupCaps>`) is documented in its own section when
                // one exists; an empty list of scalars is a plain default.
                let name = qualify(section.table, &field.name);
                files()
                    .iter()
                    .flat_map(|f| &f.sections)
                    .any(|s| s.table == name)
                    .then_some(name)
            }
            _ => None,
        };
        keys.push(Key {
            name: field.name.clone(),
            doc: field.doc.clone(),
            default: value.map(toml_inline),
            required: section.defaults.is_none() && !field.ty.starts_with("Option<"),
            table: nested,
        });
    }
    if let Some(defaults) = &section.defaults {
        for name in defaults.keys() {
            if !fields.iter().any(|f| &f.name == name) {
                bail!(
                    "{}: the default serializes key `{name}`, but no `pub {name}: ...` field was \
                     found (a serde rename is not supported by the generator)",
                    place()
                );
            }
        }
    }
    Ok(keys)
}

fn qualify(table: &str, key: &str) -> String {
    if table.is_empty() {
        key.to_owned()
    } else {
        format!("{table}.{key}")
    }
}

/// A value on one line, as it is written after `key = `.
fn toml_inline(value: &toml::Value) -> String {
    match value {
        toml::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(toml_inline).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

fn header(section: &Section) -> String {
    if section.array {
        format!("[[{}]]", section.table)
    } else {
        format!("[{}]", section.table)
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// docs/config.md.
pub fn reference() -> Result<String> {
    let mut out = String::new();
    out.push_str("# Configuration reference\n\n");
    out.push_str(&wrap(
        "<!-- Generated by `cargo run -p harvest-xtask -- config-doc > docs/config.md` from the \
         configuration structs; do not edit. `cargo test -p harvest-xtask` fails when this page \
         differs from what the generator prints. -->",
        100,
        "",
    ));
    out.push('\n');
    out.push_str(&wrap(
        "Every key of harvest's configuration files, its default and what it does. The files are \
         TOML; every key is optional unless marked required, and an unknown key is an error that \
         names the key and the file. The Debian packages install each file under `/etc/harvest/` \
         with every key commented out at its default ([deploy.md](deploy.md)). The SPANK \
         plugin's options are arguments on its `plugstack.conf` line, listed in \
         [spank-plugin.md](spank-plugin.md).",
        100,
        "",
    ));
    for file in files() {
        write!(out, "\n## `{}`\n\n", file.file)?;
        out.push_str(&wrap(
            &format!("{} Read by {}.", file.intro, file.reader),
            100,
            "",
        ));
        for section in &file.sections {
            if !section.table.is_empty() {
                write!(out, "\n### `{}`\n", header(section))?;
                let doc = struct_doc(section.source, section.struct_name);
                if !doc.is_empty() {
                    out.push('\n');
                    out.push_str(&wrap(&doc, 100, ""));
                }
            }
            out.push_str("\n| key | default | meaning |\n|---|---|---|\n");
            for key in keys(section)? {
                let default = match (&key.table, &key.default, key.required) {
                    (Some(table), _, _) => format!("see [`[{table}]`](#{})", anchor(table)),
                    (None, Some(value), _) => format!("`{}`", cell(value)),
                    (None, None, true) => "required".to_owned(),
                    (None, None, false) => "not set".to_owned(),
                };
                writeln!(out, "| `{}` | {} | {} |", key.name, default, cell(&key.doc))?;
            }
        }
    }
    Ok(out)
}

/// The anchor GitHub gives a `### `[table]`` heading.
fn anchor(table: &str) -> String {
    table
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        .collect()
}

/// The `///` comment above `pub struct NAME`.
fn struct_doc(source: &str, struct_name: &str) -> String {
    let header = format!("pub struct {struct_name} {{");
    let lines: Vec<&str> = source.lines().collect();
    let Some(at) = lines.iter().position(|l| l.trim() == header) else {
        return String::new();
    };
    let mut doc = Vec::new();
    for line in lines[..at].iter().rev() {
        let t = line.trim();
        if let Some(text) = t.strip_prefix("///") {
            doc.push(text.trim());
        } else if !t.starts_with("#[") {
            break;
        }
    }
    doc.reverse();
    doc.join(" ")
}

/// `text` in lines of at most `width` columns (a longer word stands alone), each starting with
/// `prefix`.
fn wrap(text: &str, width: usize, prefix: &str) -> String {
    let mut out = String::new();
    let mut line = String::from(prefix);
    for word in text.split_whitespace() {
        if line.len() > prefix.len() {
            if line.len() + 1 + word.len() > width {
                out.push_str(line.trim_end());
                out.push('\n');
                line = String::from(prefix);
            } else {
                line.push(' ');
            }
        }
        line.push_str(word);
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out
}

/// `text` as `# ` comment lines of at most 99 columns.
fn comment(out: &mut String, text: &str) {
    out.push_str(&wrap(text, 99, "# "));
}

/// The commented configuration file installed as /etc/harvest/`file.file`: every key commented
/// out at its default, with its meaning above it.
pub fn commented_file(file: &ConfigFile) -> Result<String> {
    let mut out = String::new();
    comment(
        &mut out,
        &format!(
            "/etc/harvest/{}. {} Read by {}.",
            file.file, file.intro, file.reader
        ),
    );
    comment(
        &mut out,
        "Every key is shown commented out with its default: uncomment and change what this site \
         needs. Every key is explained in config.md under /usr/share/doc/harvest-agent, harvest-scheduler \
         or harvest (docs/config.md in the sources).",
    );
    for section in &file.sections {
        out.push('\n');
        if !section.table.is_empty() {
            let doc = struct_doc(section.source, section.struct_name);
            if !doc.is_empty() {
                comment(&mut out, &doc);
            }
            writeln!(out, "#{}", header(section))?;
        }
        for key in keys(section)? {
            if key.table.is_some() {
                continue;
            }
            out.push('\n');
            comment(&mut out, &key.doc);
            match (&key.default, key.required) {
                (Some(value), _) => writeln!(out, "#{} = {value}", key.name)?,
                (None, true) => writeln!(out, "#{} =   # required", key.name)?,
                (None, false) => writeln!(out, "#{} =   # not set by default", key.name)?,
            }
        }
    }
    Ok(out)
}

/// What a commented file gives when every `#key = value` line that has a value, and every
/// plain table header, is uncommented: the test reads it back with the daemons' own parsers.
pub fn uncomment_defaults(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let is_header = rest.starts_with('[') && !rest.starts_with("[[");
        let is_value = rest
            .split_once(" = ")
            .is_some_and(|(k, v)| !k.contains(' ') && !k.is_empty() && !v.trim().starts_with('#'));
        if is_header || is_value {
            out.push_str(rest);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = r#"
/// A thing.
#[derive(Debug)]
#[serde(deny_unknown_fields, default)]
pub struct Thing {
    /// Not in the file.
    #[serde(skip)]
    pub node: String,
    /// How often.
    /// Twice.
    #[serde(deserialize_with = "duration")]
    pub period: Duration,
    // a plain comment
    pub bare: u32,
}
"#;

    #[test]
    fn fields_come_with_their_comments_and_skips_are_left_out() {
        let fields = parse_fields(SOURCE, "Thing").unwrap();
        assert_eq!(
            fields,
            vec![
                Field {
                    name: "period".into(),
                    ty: "Duration".into(),
                    doc: "How often. Twice.".into()
                },
                Field {
                    name: "bare".into(),
                    ty: "u32".into(),
                    doc: String::new()
                },
            ]
        );
        assert_eq!(struct_doc(SOURCE, "Thing"), "A thing.");
        assert!(parse_fields(SOURCE, "Other").is_err());
    }

    #[test]
    fn an_undocumented_field_is_an_error_that_names_it() {
        let section = Section {
            table: "",
            array: false,
            struct_name: "Thing",
            source_path: "thing.rs",
            source: SOURCE,
            defaults: Some(toml::Table::new()),
        };
        let err = format!("{:#}", keys(&section).unwrap_err());
        assert!(err.contains("`bare` has no /// comment"), "{err}");
    }

    #[test]
    fn a_serialized_key_without_a_field_is_an_error() {
        let source = "pub struct T {\n    /// Documented.\n    pub a: u32,\n}\n";
        let mut defaults = toml::Table::new();
        defaults.insert("a".into(), 1.into());
        defaults.insert("renamed".into(), 2.into());
        let section = Section {
            table: "",
            array: false,
            struct_name: "T",
            source_path: "t.rs",
            source,
            defaults: Some(defaults),
        };
        let err = format!("{:#}", keys(&section).unwrap_err());
        assert!(err.contains("key `renamed`"), "{err}");
    }

    #[test]
    fn uncommenting_keeps_values_and_plain_headers_only() {
        let text = "# intro\n#a = 1\n#b =   # not set by default\n#[t]\n#[[arr]]\n# x = y z\n";
        assert_eq!(uncomment_defaults(text), "a = 1\n[t]\n");
    }
}
