//! The raw layers of configuration: defaults, `flotilla.toml`, `FLOTILLA_*` variables and flags,
//! each turned into typed values with the place they came from. Nothing here checks whether a
//! value makes sense; `resolve` does that once the layers are merged.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Serialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::presets::Framework;
use super::schema::{self, Key, Ty};
use super::{Location, Origin, Problem};

/// A value of one of the types in [`Ty`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Val {
    /// A string.
    Str(String),
    /// An integer (negative ones are kept, so the resolver can say "must be 0 or more").
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// An array of strings.
    List(Vec<String>),
    /// An array of integers.
    Ints(Vec<i64>),
}

impl std::fmt::Display for Val {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Val::Str(s) => write!(f, "{s:?}"),
            Val::Int(n) => write!(f, "{n}"),
            Val::Bool(b) => write!(f, "{b}"),
            Val::List(items) => write!(f, "{items:?}"),
            Val::Ints(items) => write!(f, "{items:?}"),
        }
    }
}

/// A value and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The value.
    pub val: Val,
    /// Its origin.
    pub origin: Origin,
}

/// Settings by dotted key path (`app.port`); later layers replace earlier ones.
pub type Settings = BTreeMap<String, Setting>;

/// The value a default gives, if it gives one.
fn default_val(default: schema::DefaultValue) -> Option<Val> {
    match default {
        schema::DefaultValue::Int(n) => Some(Val::Int(n)),
        schema::DefaultValue::Str(s) => Some(Val::Str(s.to_owned())),
        schema::DefaultValue::Bool(b) => Some(Val::Bool(b)),
        schema::DefaultValue::Required | schema::DefaultValue::Unset => None,
    }
}

/// The defaults of every key that has one, on the host provider (see [`aws_defaults`]).
pub fn defaults() -> Settings {
    let mut settings = Settings::new();
    for key in schema::KEYS {
        let Some(val) = default_val(key.default) else {
            continue;
        };
        settings.insert(
            key.path(),
            Setting {
                val,
                origin: Origin::Default,
            },
        );
    }
    settings
}

/// Replaces the defaults that differ on the AWS provider, where no layer set the key.
pub fn aws_defaults(settings: &mut Settings) {
    fill_unset(settings, schema::AWS_DEFAULTS, || Origin::Default);
}

/// Puts `framework`'s preset under every layer above the defaults: each key the preset sets
/// takes the preset's value unless the file, the environment or a flag set it.
pub fn apply_preset(settings: &mut Settings, framework: Framework) {
    fill_unset(settings, framework.preset(), || Origin::Preset {
        framework: framework.as_str().to_owned(),
    });
}

/// Sets each of `values` with `origin` where only a built-in default holds the key.
fn fill_unset(
    settings: &mut Settings,
    values: &[(&str, schema::DefaultValue)],
    origin: impl Fn() -> Origin,
) {
    for (path, value) in values {
        let Some(val) = default_val(*value) else {
            continue;
        };
        let unset = settings
            .get(*path)
            .is_none_or(|s| s.origin == Origin::Default);
        if unset {
            settings.insert(
                (*path).to_owned(),
                Setting {
                    val,
                    origin: origin(),
                },
            );
        }
    }
}

/// Line and column (both from 1, the column counted in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// Reads the settings a config file gives, reporting every problem in it: syntax errors, unknown
/// sections and keys (with the closest valid one), and values of the wrong type.
pub struct FileReader<'a> {
    /// The path as shown to the user.
    pub path: &'a str,
    /// The file's text.
    pub text: &'a str,
    /// Problems found so far.
    pub problems: Vec<Problem>,
    /// Settings found so far.
    pub settings: Settings,
    /// Where each section's header (or first key) is, for problems about a whole section.
    pub sections: BTreeMap<String, Location>,
    /// Whether the file has TOML syntax errors (then only those are reported).
    pub syntax_errors: bool,
}

impl<'a> FileReader<'a> {
    /// A reader over `text`, shown to the user as `path`.
    pub fn new(path: &'a str, text: &'a str) -> Self {
        FileReader {
            path,
            text,
            problems: Vec::new(),
            settings: Settings::new(),
            sections: BTreeMap::new(),
            syntax_errors: false,
        }
    }

    fn location(&self, span: Range<usize>) -> Location {
        let (line, column) = line_col(self.text, span.start);
        Location::File {
            path: self.path.to_owned(),
            line,
            column,
        }
    }

    fn origin(&self, span: Range<usize>) -> Origin {
        let (line, column) = line_col(self.text, span.start);
        Origin::File {
            path: self.path.to_owned(),
            line,
            column,
        }
    }

    fn problem(&mut self, span: Range<usize>, message: String) {
        let location = self.location(span);
        self.problems.push(Problem { location, message });
    }

    /// Parses the whole file.
    pub fn read(mut self) -> Self {
        let (root, errors) = DeTable::parse_recoverable(self.text);
        self.syntax_errors = !errors.is_empty();
        for error in errors {
            let span = error.span().unwrap_or(0..0);
            self.problem(span, format!("TOML syntax: {}", error.message()));
        }
        // After a syntax error the parser's recovery may have dropped or misplaced entries;
        // reporting what it made of them would only add confusing follow-on errors.
        if self.syntax_errors {
            return self;
        }
        let root = root.into_inner();
        for (key, value) in root.iter() {
            let name = key.get_ref().as_ref();
            if schema::is_free_section(name) {
                self.read_free_section(name, key.span(), value);
            } else if schema::is_section(name) {
                self.read_section(name, key.span(), value);
            } else if let Some(spec) = schema::find("", name) {
                self.read_value(spec, value);
            } else {
                self.unknown_top_level(name, key.span());
            }
        }
        self
    }

    /// Records where `section` is and returns its table, or reports that it is not one (`under`
    /// says what belongs under its header).
    fn section_table<'v, 't>(
        &mut self,
        section: &str,
        key_span: Range<usize>,
        value: &'v Spanned<DeValue<'t>>,
        under: &str,
    ) -> Option<&'v DeTable<'t>> {
        let location = self.location(key_span.clone());
        self.sections.insert(section.to_owned(), location);
        match value.get_ref() {
            DeValue::Table(table) => Some(table),
            other => {
                self.problem(
                    key_span,
                    format!(
                        "`{section}` must be a table ([{section}] with {under} under it), not {}",
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    fn read_section(
        &mut self,
        section: &str,
        key_span: Range<usize>,
        value: &Spanned<DeValue<'_>>,
    ) {
        let Some(table) = self.section_table(section, key_span, value, "keys") else {
            return;
        };
        for (key, value) in table.iter() {
            let name = key.get_ref().as_ref();
            match schema::find(section, name) {
                Some(spec) => self.read_value(spec, value),
                None => self.unknown_in_section(section, name, key.span()),
            }
        }
    }

    /// `[env]` or `[secrets]`: names of the app's environment variables, each with a value
    /// (`[env]`: a string, or a number or boolean written as one) or a reference (`[secrets]`).
    /// Names are checked by the resolver, which sees every layer.
    fn read_free_section(
        &mut self,
        section: &str,
        key_span: Range<usize>,
        value: &Spanned<DeValue<'_>>,
    ) {
        let Some(table) = self.section_table(section, key_span, value, "NAME = \"...\" lines")
        else {
            return;
        };
        for (key, value) in table.iter() {
            let name = key.get_ref().as_ref();
            let text = match (section, value.get_ref()) {
                (_, DeValue::String(s)) => Some(s.to_string()),
                ("env", DeValue::Integer(n)) => Some(n.to_string()),
                ("env", DeValue::Float(f)) => Some(f.to_string()),
                ("env", DeValue::Boolean(b)) => Some(b.to_string()),
                _ => None,
            };
            let Some(text) = text else {
                let what = if section == "secrets" {
                    "a reference in quotes, e.g. \"ssm:/my-app/database-url\""
                } else {
                    "a string (or a number or boolean)"
                };
                self.problem(
                    value.span(),
                    format!(
                        "`{section}.{name}` must be {what}, not {}",
                        type_name(value.get_ref())
                    ),
                );
                continue;
            };
            let origin = self.origin(value.span());
            self.settings.insert(
                format!("{section}.{name}"),
                Setting {
                    val: Val::Str(text),
                    origin,
                },
            );
        }
    }

    fn unknown_top_level(&mut self, name: &str, span: Range<usize>) {
        let mut candidates: Vec<&str> = schema::KEYS
            .iter()
            .filter(|k| k.section.is_empty())
            .map(|k| k.name)
            .collect();
        candidates.extend(schema::SECTIONS.iter().map(|(s, _)| *s));
        candidates.extend(schema::FREE_SECTIONS.iter().map(|(s, _)| *s));
        // A real key of a section, written at the top: say where it goes before guessing typos.
        let hint = if let Some(home) = section_of(name) {
            format!("; `{name}` belongs in [{home}]")
        } else if let Some(best) = schema::closest(name, candidates) {
            if schema::is_section(best) || schema::is_free_section(best) {
                format!("; did you mean [{best}]?")
            } else {
                format!("; did you mean `{best}`?")
            }
        } else {
            format!(
                "; valid top-level keys are `name` and `provider`, and sections {}",
                section_list()
            )
        };
        self.problem(span, format!("unknown key `{name}`{hint}"));
    }

    fn unknown_in_section(&mut self, section: &str, name: &str, span: Range<usize>) {
        let candidates = schema::KEYS
            .iter()
            .filter(|k| k.section == section)
            .map(|k| k.name);
        let hint = if let Some(home) = section_of(name).filter(|home| *home != section) {
            if home.is_empty() {
                format!("; `{name}` is a top-level key: move it above the first [section]")
            } else {
                format!("; `{name}` belongs in [{home}]")
            }
        } else if let Some(best) = schema::closest(name, candidates) {
            format!("; did you mean `{best}`?")
        } else {
            let keys: Vec<String> = schema::KEYS
                .iter()
                .filter(|k| k.section == section)
                .map(|k| format!("`{}`", k.name))
                .collect();
            format!("; keys of [{section}] are {}", keys.join(", "))
        };
        self.problem(span, format!("unknown key `{name}` in [{section}]{hint}"));
    }

    fn read_value(&mut self, key: &'static Key, value: &Spanned<DeValue<'_>>) {
        let span = value.span();
        match convert(key, value.get_ref()) {
            Ok(val) => {
                let origin = self.origin(span);
                self.settings.insert(key.path(), Setting { val, origin });
            }
            Err(Mismatch {
                message,
                span: inner,
            }) => {
                self.problem(inner.unwrap_or(span), message);
            }
        }
    }
}

/// The section a key name belongs to, if exactly one section has it (`""` for top level).
fn section_of(name: &str) -> Option<&'static str> {
    let mut homes = schema::KEYS.iter().filter(|k| k.name == name);
    let first = homes.next()?;
    homes.next().is_none().then_some(first.section)
}

fn section_list() -> String {
    let names: Vec<String> = schema::SECTIONS
        .iter()
        .map(|(s, _)| format!("[{s}]"))
        .collect();
    names.join(", ")
}

fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

struct Mismatch {
    message: String,
    span: Option<Range<usize>>,
}

fn mismatch(key: &Key, found: &DeValue<'_>) -> Mismatch {
    let mut message = format!(
        "`{}` must be {}, not {}",
        key.path(),
        key.ty.describe(),
        type_name(found)
    );
    match (key.ty, found) {
        (Ty::Int, DeValue::String(s)) if s.trim().parse::<i64>().is_ok() => {
            message.push_str(&format!(" (write {} without quotes)", s.trim()));
        }
        (Ty::Bool, DeValue::String(s)) if matches!(s.as_ref(), "true" | "false") => {
            message.push_str(&format!(" (write {s} without quotes)"));
        }
        (Ty::Str, DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_)) => {
            message.push_str(" (put it in quotes)");
        }
        (Ty::Int, DeValue::Float(_)) => message.push_str(" (use a whole number)"),
        (Ty::IntList, DeValue::Integer(n)) => {
            message.push_str(&format!(" (write [{}])", n.as_str()));
        }
        (Ty::StrList, DeValue::String(s)) => {
            message.push_str(&format!(" (write [{:?}])", s.as_ref()));
        }
        _ => {}
    }
    Mismatch {
        message,
        span: None,
    }
}

fn convert(key: &Key, value: &DeValue<'_>) -> Result<Val, Mismatch> {
    match (key.ty, value) {
        (Ty::Str, DeValue::String(s)) => Ok(Val::Str(s.to_string())),
        (Ty::Bool, DeValue::Boolean(b)) => Ok(Val::Bool(*b)),
        (Ty::Int, DeValue::Integer(n)) => i64::from_str_radix(n.as_str(), n.radix())
            .map(Val::Int)
            .map_err(|_| Mismatch {
                message: format!("`{}` is too large: {n}", key.path()),
                span: None,
            }),
        (Ty::StrList, DeValue::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items.iter() {
                match item.get_ref() {
                    DeValue::String(s) => out.push(s.to_string()),
                    other => {
                        return Err(Mismatch {
                            message: format!(
                                "`{}` must be an array of strings, but this item is {}",
                                key.path(),
                                type_name(other)
                            ),
                            span: Some(item.span()),
                        });
                    }
                }
            }
            Ok(Val::List(out))
        }
        (Ty::IntList, DeValue::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items.iter() {
                let parsed = match item.get_ref() {
                    DeValue::Integer(n) => i64::from_str_radix(n.as_str(), n.radix()).ok(),
                    _ => None,
                };
                match parsed {
                    Some(n) => out.push(n),
                    None => {
                        return Err(Mismatch {
                            message: format!(
                                "`{}` must be an array of integers, but this item is {}",
                                key.path(),
                                type_name(item.get_ref())
                            ),
                            span: Some(item.span()),
                        });
                    }
                }
            }
            Ok(Val::Ints(out))
        }
        _ => Err(mismatch(key, value)),
    }
}

/// Reads `FLOTILLA_<SECTION>_<KEY>` variables through `get`. An empty variable counts as unset.
/// Returns the settings they give and the problems with their values, each naming the variable.
pub fn read_env(get: &dyn Fn(&str) -> Option<String>) -> (Settings, Vec<Problem>) {
    let mut settings = Settings::new();
    let mut problems = Vec::new();
    for key in schema::KEYS {
        let var = key.env_var();
        let Some(raw) = get(&var).filter(|v| !v.is_empty()) else {
            continue;
        };
        let parsed = match key.ty {
            Ty::Str => Ok(Val::Str(raw.clone())),
            Ty::Int => raw
                .trim()
                .parse::<i64>()
                .map(Val::Int)
                .map_err(|_| format!("`{}` must be an integer, not {raw:?}", key.path())),
            Ty::Bool => match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(Val::Bool(true)),
                "false" | "0" | "no" => Ok(Val::Bool(false)),
                _ => Err(format!(
                    "`{}` must be true or false (or 1/0, yes/no), not {raw:?}",
                    key.path()
                )),
            },
            Ty::IntList => raw
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<i64>())
                .collect::<Result<Vec<_>, _>>()
                .map(Val::Ints)
                .map_err(|_| {
                    format!(
                        "`{}` must be comma-separated integers, not {raw:?}",
                        key.path()
                    )
                }),
            Ty::StrList => Ok(Val::List(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )),
        };
        match parsed {
            Ok(val) => {
                settings.insert(
                    key.path(),
                    Setting {
                        val,
                        origin: Origin::Env { var },
                    },
                );
            }
            Err(message) => problems.push(Problem {
                location: Location::Env { var },
                message,
            }),
        }
    }
    (settings, problems)
}

/// The prefix of the variables that set an `[env]` entry: `FLOTILLA_ENV_LOG_LEVEL=debug` sets
/// the app's `LOG_LEVEL`.
pub const APP_ENV_PREFIX: &str = "FLOTILLA_ENV_";

/// The prefix of the variables that set a `[secrets]` entry.
pub const APP_SECRET_PREFIX: &str = "FLOTILLA_SECRET_";

/// The `[env]` and `[secrets]` entries that `FLOTILLA_ENV_<NAME>` and `FLOTILLA_SECRET_<NAME>`
/// variables give (`vars` is the whole environment; an empty value counts as unset).
pub fn read_app_env(vars: &[(String, String)]) -> Settings {
    let mut settings = Settings::new();
    for (var, value) in vars {
        let entry = if let Some(name) = var.strip_prefix(APP_ENV_PREFIX) {
            format!("env.{name}")
        } else if let Some(name) = var.strip_prefix(APP_SECRET_PREFIX) {
            format!("secrets.{name}")
        } else {
            continue;
        };
        if value.is_empty() || entry.ends_with('.') {
            continue;
        }
        settings.insert(
            entry,
            Setting {
                val: Val::Str(value.clone()),
                origin: Origin::Env { var: var.clone() },
            },
        );
    }
    settings
}

/// The `[env]` (`--env`) or `[secrets]` (`--secret`) entries given as `NAME=VALUE` flags; a flag
/// without `=` is a problem.
pub fn read_app_flags(section: &str, flag: &str, given: &[String]) -> (Settings, Vec<Problem>) {
    let mut settings = Settings::new();
    let mut problems = Vec::new();
    for item in given {
        match item.split_once('=') {
            Some((name, value)) if !name.is_empty() => {
                settings.insert(
                    format!("{section}.{name}"),
                    Setting {
                        val: Val::Str(value.to_owned()),
                        origin: Origin::Flag {
                            flag: format!("{flag} {name}"),
                        },
                    },
                );
            }
            _ => problems.push(Problem {
                location: Location::Flag {
                    flag: flag.to_owned(),
                },
                message: format!("`{flag} {item}` must be written NAME=VALUE"),
            }),
        }
    }
    (settings, problems)
}

/// `FLOTILLA_*` variables flotilla sets for the processes it runs, which are not configuration.
pub const RUNTIME_VARS: &[&str] = &[
    "FLOTILLA_CONFIG",
    "FLOTILLA_DEPLOYMENT_NAME",
    "FLOTILLA_DEPLOYMENT_ID",
    "FLOTILLA_INSTANCE",
    "FLOTILLA_LOG",
];

/// Warnings for `FLOTILLA_*` variables that configure nothing, with the closest real one.
pub fn unknown_env_warnings(vars: impl IntoIterator<Item = String>) -> Vec<String> {
    let known: Vec<String> = schema::KEYS.iter().map(Key::env_var).collect();
    let mut warnings = Vec::new();
    for var in vars {
        if !var.starts_with("FLOTILLA_")
            || var.starts_with(APP_ENV_PREFIX)
            || var.starts_with(APP_SECRET_PREFIX)
            || known.contains(&var)
            || RUNTIME_VARS.contains(&var.as_str())
        {
            continue;
        }
        let lower = var.to_ascii_lowercase();
        let known_lower: Vec<String> = known.iter().map(|k| k.to_ascii_lowercase()).collect();
        let hint = schema::closest(&lower, known_lower.iter().map(String::as_str))
            .map(|best| format!("; did you mean {}?", best.to_ascii_uppercase()))
            .unwrap_or_default();
        warnings.push(format!(
            "environment variable {var} is not a flotilla setting and is ignored{hint}"
        ));
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_of_offsets() {
        let text = "a = 1\nbé = 2\n\nc";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 4), (1, 5));
        assert_eq!(line_col(text, 6), (2, 1));
        // The column counts characters, not bytes: `=` follows a two-byte `é`.
        assert_eq!(line_col(text, 10), (2, 4));
        assert_eq!(line_col(text, text.len()), (4, 2));
        assert_eq!(line_col(text, 999), (4, 2));
    }

    #[test]
    fn unknown_env_vars_are_warned_about_with_suggestions() {
        let warnings = unknown_env_warnings(vec![
            "FLOTILLA_APP_PROT".to_owned(),
            "FLOTILLA_APP_PORT".to_owned(),
            "FLOTILLA_DEPLOYMENT_ID".to_owned(),
            "PATH".to_owned(),
            "FLOTILLA_WHATEVER_ELSE_ENTIRELY".to_owned(),
        ]);
        assert_eq!(
            warnings,
            vec![
                "environment variable FLOTILLA_APP_PROT is not a flotilla setting and is ignored; \
                 did you mean FLOTILLA_APP_PORT?"
                    .to_owned(),
                "environment variable FLOTILLA_WHATEVER_ELSE_ENTIRELY is not a flotilla setting \
                 and is ignored"
                    .to_owned(),
            ]
        );
    }
}
