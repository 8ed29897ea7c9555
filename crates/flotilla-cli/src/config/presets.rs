//! Framework presets (`[app] framework`): the affinity names, health path and stale signals a web
//! framework already understands, as one table of key → value per framework.
//!
//! A preset is a layer between flotilla's built-in defaults and the file: it replaces only values
//! that no file line, `FLOTILLA_*` variable or flag set, so every key it sets can be overridden
//! one by one, and `config check` shows its values with the origin "preset NAME".

use serde::Serialize;

use super::schema::DefaultValue::{self, Bool, Str};

/// A framework with a preset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Framework {
    /// No preset: flotilla's own defaults.
    None,
    /// Pulse (pulse-framework): the names its own deploy plugins, pulse-aws and pulse-railway,
    /// use, so its client's stale-affinity handling works unchanged.
    Pulse,
    /// Streamlit: its health endpoint, and the injected browser client for affinity (Streamlit
    /// has no affinity parameter of its own).
    Streamlit,
}

impl Framework {
    /// Every framework, in the order the docs list them.
    pub const ALL: [Framework; 3] = [Framework::None, Framework::Pulse, Framework::Streamlit];

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Framework::None => "none",
            Framework::Pulse => "pulse",
            Framework::Streamlit => "streamlit",
        }
    }

    /// The framework spelled `name` in the config, if there is one.
    pub fn parse(name: &str) -> Option<Framework> {
        Framework::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// The keys this framework's preset sets, by dotted path, with their values.
    pub fn preset(self) -> &'static [(&'static str, DefaultValue)] {
        match self {
            Framework::None => &[],
            Framework::Pulse => PULSE,
            Framework::Streamlit => STREAMLIT,
        }
    }
}

/// Whether any framework's preset sets the key at `path` (`init` leaves such keys commented out,
/// so that choosing a framework later takes effect).
pub fn set_by_a_preset(path: &str) -> bool {
    Framework::ALL
        .iter()
        .any(|f| f.preset().iter().any(|(p, _)| *p == path))
}

/// Pulse. pulse-aws and pulse-railway route on `pulse_deployment` (and pulse-railway on
/// `x-pulse-deployment` too); pulse-framework serves its health at `{api_prefix}/health`,
/// `/_pulse/health` by default (pulse-aws's ALB health check). Pulse itself does not put the
/// version on its requests: its deploy plugins add it to the prerender's directives, from their
/// own environment variables. Without such a plugin, the injected browser client adds it (under
/// Pulse's names) to the page's fetches and to Socket.IO's URL, plus the tab key that keeps the
/// tab on the process holding its render session; a plugin's own `pulse_deployment` is left as
/// it is. Pulse's stale signals: pulse-railway answers an unknown deployment with 409 and
/// `x-pulse-stale-affinity: 1`, on which `pulseFetch` hard-reloads the page; a Socket.IO URL
/// carrying `pulse_reload_on_stale_affinity=1` wants to be sent to the current version instead,
/// where the client notices the new version and reloads by itself.
const PULSE: &[(&str, DefaultValue)] = &[
    ("app.affinity_header", Str("x-pulse-deployment")),
    ("app.affinity_query", Str("pulse_deployment")),
    ("app.health_path", Str("/_pulse/health")),
    ("app.inject_client", Bool(true)),
    ("app.stale_status", DefaultValue::Int(409)),
    ("app.stale_header", Str("x-pulse-stale-affinity: 1")),
    (
        "app.stale_socket_reroute_query",
        Str("pulse_reload_on_stale_affinity=1"),
    ),
];

/// Streamlit. Its server answers `/_stcore/health`; its page and its one WebSocket
/// (`/_stcore/stream`) carry no version of their own, so the injected browser client keeps the
/// tab's version and adds it to the socket's URL. Streamlit knows no stale signal of its own: the
/// built-in one (410, and `flotilla:stale` in the browser client) applies.
const STREAMLIT: &[(&str, DefaultValue)] = &[
    ("app.health_path", Str("/_stcore/health")),
    ("app.inject_client", Bool(true)),
];

#[cfg(test)]
mod tests {
    use super::super::schema;
    use super::*;

    #[test]
    fn names_round_trip() {
        for framework in Framework::ALL {
            assert_eq!(Framework::parse(framework.as_str()), Some(framework));
        }
        assert_eq!(Framework::parse("Pulse"), None);
        assert_eq!(Framework::parse("django"), None);
    }

    #[test]
    fn every_preset_key_exists_with_its_type() {
        for framework in Framework::ALL {
            for (path, value) in framework.preset() {
                let key = schema::find_path(path)
                    .unwrap_or_else(|| panic!("{} sets unknown key {path}", framework.as_str()));
                let matches = matches!(
                    (key.ty, value),
                    (schema::Ty::Str, Str(_))
                        | (schema::Ty::Bool, Bool(_))
                        | (schema::Ty::Int, DefaultValue::Int(_))
                );
                assert!(matches, "{}: {path} has the wrong type", framework.as_str());
                assert_ne!(*path, "app.framework", "a preset cannot choose a preset");
            }
        }
    }
}
