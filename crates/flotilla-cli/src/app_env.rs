//! The app's environment for a new version: `[env]` and `[secrets]` from the configuration and,
//! on the host provider, the variables of `[host] secrets_file`. Values of secrets are never
//! printed: errors name the file, the line and the variable, never what follows the `=`.

use std::collections::BTreeMap;
use std::path::Path;

use flotilla_engine::ports::{AppEnv, SecretSource};

use crate::config::{Config, ProviderKind};

/// Why the app's environment could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AppEnvError {
    /// The secrets file cannot be read.
    #[error(
        "cannot read the secrets file {path}: {source}; fix [host] secrets_file or create the file"
    )]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the secrets file is not `NAME=VALUE`.
    #[error("{path}:{line}: {message}")]
    BadLine {
        /// The file.
        path: String,
        /// The line, from 1.
        line: usize,
        /// What is wrong (never the value).
        message: String,
    },
}

/// The environment a version deployed now gets.
pub fn for_deploy(config: &Config) -> Result<AppEnv, AppEnvError> {
    let mut env = AppEnv {
        vars: config.env.vars.clone(),
        secrets: BTreeMap::new(),
    };
    match config.provider {
        ProviderKind::Aws => {
            env.secrets = config
                .env
                .secrets
                .iter()
                .map(|(k, v)| (k.clone(), SecretSource::Reference(v.clone())))
                .collect();
        }
        ProviderKind::Host => {
            if let Some(path) = &config.host.secrets_file {
                for (name, value) in read_secrets_file(path)? {
                    env.secrets.insert(name, SecretSource::Value(value));
                }
            }
        }
    }
    // A name both plain and secret: the secret wins, as the more deliberate of the two.
    let secret_names: Vec<String> = env.secrets.keys().cloned().collect();
    for name in secret_names {
        env.vars.remove(&name);
    }
    Ok(env)
}

/// The variable names a secrets file defines, for `config check` (values are not returned).
pub fn secret_names(path: &Path) -> Result<Vec<String>, AppEnvError> {
    Ok(read_secrets_file(path)?
        .into_iter()
        .map(|(k, _)| k)
        .collect())
}

/// Reads a `.env`-style file: `NAME=VALUE` lines (an optional `export ` before the name), blank
/// lines and `#` comments; a value may be quoted with `'...'` (taken as is) or `"..."` (with
/// `\n`, `\"` and `\\` escapes).
pub fn read_secrets_file(path: &Path) -> Result<Vec<(String, String)>, AppEnvError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AppEnvError::Unreadable {
        path: shown.clone(),
        source,
    })?;
    parse_dotenv(&text).map_err(|(line, message)| AppEnvError::BadLine {
        path: shown,
        line,
        message,
    })
}

/// Parses `.env` text; a problem comes with its line number.
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((name, value)) = line.split_once('=') else {
            return Err((line_no, "expected NAME=VALUE".to_owned()));
        };
        let name = name.trim();
        crate::config::check_env_name(name).map_err(|m| (line_no, m))?;
        let value = unquote(value.trim()).ok_or_else(|| {
            (
                line_no,
                format!("the value of {name} has an unclosed quote"),
            )
        })?;
        if let Some(existing) = out.iter_mut().find(|(k, _)| k == name) {
            existing.1 = value;
        } else {
            out.push((name.to_owned(), value));
        }
    }
    Ok(out)
}

fn unquote(value: &str) -> Option<String> {
    if let Some(inner) = value.strip_prefix('\'') {
        return inner.strip_suffix('\'').map(str::to_owned);
    }
    if let Some(inner) = value.strip_prefix('"') {
        let inner = inner.strip_suffix('"')?;
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        }
        return Some(out);
    }
    // Unquoted: a ` #` starts a comment.
    let value = value.split(" #").next().unwrap_or("").trim_end();
    Some(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines_comments_exports_and_quotes() {
        let text = "# comment\n\nexport A=1\nB = two words # note\nC='x # y'\nD=\"line\\nnext \\\"q\\\"\"\nA=again\nE=\n";
        let got = parse_dotenv(text).expect("valid");
        assert_eq!(
            got,
            vec![
                ("A".to_owned(), "again".to_owned()),
                ("B".to_owned(), "two words".to_owned()),
                ("C".to_owned(), "x # y".to_owned()),
                ("D".to_owned(), "line\nnext \"q\"".to_owned()),
                ("E".to_owned(), String::new()),
            ]
        );
    }

    #[test]
    fn bad_lines_name_the_line_and_never_the_value() {
        let (line, message) = parse_dotenv("OK=1\njust-a-secret-value\n").expect_err("bad");
        assert_eq!(line, 2);
        assert!(!message.contains("just-a-secret-value"), "{message}");
        let (line, message) = parse_dotenv("A=1\nTOKEN=\"abc\n").expect_err("bad");
        assert_eq!(line, 2);
        assert!(
            message.contains("TOKEN") && !message.contains("abc"),
            "{message}"
        );
        let (_, message) = parse_dotenv("FLOTILLA_X=1").expect_err("reserved");
        assert!(message.contains("reserved"), "{message}");
    }
}
