//! The commented `flotilla.toml` that `flotilla init` writes, generated from the key table so that
//! every key is documented and the template can never fall behind the schema.

use std::collections::BTreeMap;
use std::path::Path;

use super::ProviderKind;
use super::schema::{self, Key};

/// Width that documentation comments are wrapped to.
const WIDTH: usize = 98;

/// What `init` decided for the new file.
#[derive(Clone, Debug)]
pub struct InitValues {
    /// The deployment name.
    pub name: String,
    /// The provider.
    pub provider: ProviderKind,
    /// `[host] command`.
    pub command: String,
    /// `[host] build`, if the project kind suggests one.
    pub build: Option<String>,
    /// Why `command` and `build` were chosen, as a sentence for a comment.
    pub detected: &'static str,
}

/// A deployment name made from a directory name: lowercased, every run of other characters
/// turned into one hyphen, starting with a letter, at most 32 characters; `app` if nothing is left.
pub fn sanitise_name(dir_name: &str) -> String {
    let mut out = String::new();
    for c in dir_name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_start_matches(|c: char| !c.is_ascii_lowercase());
    let mut name: String = trimmed
        .chars()
        .take(flotilla_core::ids::MAX_NAME_LEN)
        .collect();
    while name.ends_with('-') {
        name.pop();
    }
    if name.is_empty() {
        "app".to_owned()
    } else {
        name
    }
}

/// Guesses how to build and start the app in `dir` from the files in it.
pub fn detect_commands(dir: &Path) -> (String, Option<String>, &'static str) {
    if dir.join("Cargo.toml").is_file() {
        (
            "cargo run --release --quiet".to_owned(),
            Some("cargo build --release".to_owned()),
            "Guessed from Cargo.toml (a Rust project); check it.",
        )
    } else if dir.join("package.json").is_file() {
        (
            "npm start".to_owned(),
            Some("npm ci".to_owned()),
            "Guessed from package.json (a Node.js project); check it.",
        )
    } else {
        (
            "./start.sh".to_owned(),
            None,
            "No Cargo.toml or package.json here: replace ./start.sh with your app's start command.",
        )
    }
}

/// A TOML basic string.
pub fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn default_literal(key: &Key, provider: ProviderKind) -> Option<String> {
    match schema::default_on(key, provider) {
        schema::DefaultValue::Int(n) => Some(n.to_string()),
        schema::DefaultValue::Str(s) => Some(toml_string(s)),
        schema::DefaultValue::Bool(b) => Some(b.to_string()),
        schema::DefaultValue::Required | schema::DefaultValue::Unset => None,
    }
}

fn comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > WIDTH && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

/// Renders the commented config file.
pub fn render(values: &InitValues) -> String {
    let mut set: BTreeMap<&str, String> = BTreeMap::new();
    set.insert("name", toml_string(&values.name));
    set.insert("provider", toml_string(values.provider.as_str()));
    if values.provider == ProviderKind::Host {
        set.insert("host.command", toml_string(&values.command));
        if let Some(build) = &values.build {
            set.insert("host.build", toml_string(build));
        }
    }

    let mut out = String::new();
    comment(
        &mut out,
        &format!(
            "flotilla configuration for `{}`, written by `flotilla init`. Check it with \
             `flotilla config check`; `flotilla --help` lists the commands.",
            values.name
        ),
    );
    out.push_str("#\n");
    comment(
        &mut out,
        "Precedence, lowest first: built-in defaults < this file < environment variables \
         FLOTILLA_<SECTION>_<KEY> (e.g. FLOTILLA_APP_PORT, FLOTILLA_NAME) < command-line flags \
         (--name, --provider).",
    );
    comment(
        &mut out,
        "Keys written out show their default value; keys commented out are optional and unset \
         (or, for the other provider's required keys, not needed with this provider), or show \
         the default that a framework preset ([app] framework) would replace: uncommenting one \
         overrides the preset.",
    );

    let mut current_section = "";
    for key in schema::KEYS {
        if key.section != current_section {
            current_section = key.section;
            out.push('\n');
            let about = schema::SECTIONS
                .iter()
                .find(|(s, _)| *s == key.section)
                .map_or("", |(_, about)| *about);
            comment(&mut out, about);
            out.push_str(&format!("[{}]\n", key.section));
        }
        out.push('\n');
        comment(&mut out, key.doc);
        if key.path() == "host.command" && values.provider == ProviderKind::Host {
            comment(&mut out, values.detected);
        }
        let preset_sets_it = super::presets::set_by_a_preset(&key.path());
        match set
            .get(key.path().as_str())
            .cloned()
            .or_else(|| default_literal(key, values.provider))
        {
            // Written out, the default would override a preset chosen later in this file.
            Some(literal) if preset_sets_it => {
                out.push_str(&format!("# {} = {literal}\n", key.name))
            }
            Some(literal) => out.push_str(&format!("{} = {literal}\n", key.name)),
            None => {
                let example = key.example.unwrap_or("\"\"");
                out.push_str(&format!("# {} = {example}\n", key.name));
            }
        }
    }
    for (section, about) in schema::FREE_SECTIONS {
        out.push('\n');
        comment(&mut out, about);
        out.push_str(&format!("[{section}]\n"));
        let example = if *section == "env" {
            "# LOG_LEVEL = \"info\""
        } else {
            "# DATABASE_URL = \"ssm:/my-app/database-url\""
        };
        out.push_str(example);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitised_names() {
        let check = |dir: &str, want: &str| assert_eq!(sanitise_name(dir), want, "{dir}");
        check("shop", "shop");
        check("My Shop_2", "my-shop-2");
        check("2fast", "fast");
        check("--weird--", "weird");
        check("___", "app");
        check("", "app");
        check("ÜberApp", "berapp");
        check(&"a".repeat(40), &"a".repeat(32));
        check(&format!("{}-b", "a".repeat(31)), &"a".repeat(31));
        for dir in ["x y", "tmp.Ab3kd9", "Ünïcödé", "a--b", "9-9"] {
            assert!(
                flotilla_core::DeploymentName::new(&sanitise_name(dir)).is_ok(),
                "{dir}"
            );
        }
    }

    #[test]
    fn toml_strings_round_trip() {
        for s in [
            "plain",
            "with \"quotes\"",
            "back\\slash",
            "tab\there",
            "new\nline",
        ] {
            let doc = format!("v = {}", toml_string(s));
            let parsed: toml::Table = toml::from_str(&doc).expect("valid TOML");
            assert_eq!(parsed["v"].as_str(), Some(s));
        }
    }

    #[test]
    fn comments_wrap_within_width() {
        let mut out = String::new();
        comment(&mut out, &"word ".repeat(60));
        assert!(out.lines().all(|l| l.len() <= WIDTH && l.starts_with("# ")));
        assert_eq!(out.split_whitespace().filter(|w| *w == "word").count(), 60);
    }
}
