//! What a page's Content-Security-Policy means for the injected client script: pure parsing of
//! the `Content-Security-Policy` header values into a [`Verdict`].
//!
//! The injected tag is `<script src="/_flotilla/client.js">`: an external, same-origin,
//! parser-inserted script. For such a script the browser consults, in each enforced policy, the
//! first of `script-src-elem`, `script-src` and `default-src` that the policy has (CSP Level 3
//! §6.8.2); every enforced policy must allow it. A policy allows it when the directive
//!
//! - carries a `'nonce-…'` source, and the tag carries that nonce (the router copies it), or
//! - without `'strict-dynamic'`: `'self'`, `*`, an `http:`/`https:` scheme source, or a host
//!   source matching the page's own host (and our path, if the source has one).
//!
//! `'unsafe-inline'` never allows an external script, and with `'strict-dynamic'` only nonces
//! and hashes count; hashes of an external script need an `integrity` attribute, which the tag
//! does not have, so they never allow it either. Report-only policies
//! (`Content-Security-Policy-Report-Only`) block nothing and are not read here.
//!
//! Where a policy cannot be judged exactly (a port or scheme in a host source, an unknown host),
//! the verdict leans to "allowed": injecting a tag that turns out blocked costs what it cost
//! before, while withholding one that would have run loses the tab's version pinning.

use crate::client_js::CLIENT_PATH;

/// What to do with the client script tag on a page with these policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Insert the tag, with this nonce if any (a nonce the policies list, harmless where a policy
    /// allows the script without it).
    Allowed {
        /// The nonce to give the tag.
        nonce: Option<String>,
    },
    /// Every tag the router could insert would be blocked: insert nothing.
    Blocked {
        /// The directive that blocks it, as the policy wrote it (for the log).
        directive: String,
    },
}

/// One enforced policy's say on the client script.
#[derive(Debug, Default)]
struct Need {
    /// The script runs without a nonce.
    plain: bool,
    /// Nonces that let it run.
    nonces: Vec<String>,
    /// The governing directive, as written.
    directive: String,
}

/// The verdict for a response whose `Content-Security-Policy` header values are `values` (each
/// may hold several policies separated by commas), on a page served for `host` (the request's
/// `Host`, without port; `None` when unknown).
pub(crate) fn verdict<'a>(
    values: impl IntoIterator<Item = &'a str>,
    host: Option<&str>,
) -> Verdict {
    let needs: Vec<Need> = values
        .into_iter()
        .flat_map(|value| value.split(','))
        .filter_map(|policy| need(policy, host))
        .collect();
    let strict: Vec<&Need> = needs.iter().filter(|n| !n.plain).collect();
    if let Some(blocking) = strict.iter().find(|n| n.nonces.is_empty()) {
        return Verdict::Blocked {
            directive: blocking.directive.clone(),
        };
    }
    let Some((first, rest)) = strict.split_first() else {
        // Nothing demands a nonce; a listed one does no harm and covers a host source misjudged.
        let nonce = needs.iter().find_map(|n| n.nonces.first().cloned());
        return Verdict::Allowed { nonce };
    };
    // A tag carries one nonce: it must be one every nonce-demanding policy lists.
    match first
        .nonces
        .iter()
        .find(|nonce| rest.iter().all(|n| n.nonces.contains(nonce)))
    {
        Some(nonce) => Verdict::Allowed {
            nonce: Some(nonce.clone()),
        },
        None => Verdict::Blocked {
            directive: rest
                .iter()
                .find(|n| !n.nonces.iter().any(|x| first.nonces.contains(x)))
                .map_or_else(|| first.directive.clone(), |n| n.directive.clone()),
        },
    }
}

/// The say of one serialized policy; `None` when it has no directive governing scripts.
fn need(policy: &str, host: Option<&str>) -> Option<Need> {
    let mut found: [Option<&str>; 3] = [None; 3];
    for directive in policy.split(';') {
        let directive = directive.trim_matches(is_ascii_ws);
        let name = directive
            .split(is_ascii_ws)
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let slot = match name.as_str() {
            "script-src-elem" => 0,
            "script-src" => 1,
            "default-src" => 2,
            _ => continue,
        };
        // A repeated directive is ignored; the first one counts.
        found[slot].get_or_insert(directive);
    }
    let directive = found.into_iter().flatten().next()?;
    let sources: Vec<&str> = directive.split(is_ascii_ws).skip(1).collect();
    let strict_dynamic = sources
        .iter()
        .any(|s| s.eq_ignore_ascii_case("'strict-dynamic'"));
    let nonces = sources.iter().filter_map(|s| nonce_of(s)).collect();
    let plain = !strict_dynamic && sources.iter().any(|s| allows_by_location(s, host));
    Some(Need {
        plain,
        nonces,
        directive: directive.chars().take(200).collect(),
    })
}

fn is_ascii_ws(c: char) -> bool {
    c.is_ascii_whitespace()
}

/// The value of a `'nonce-…'` source whose value is valid base64 (CSP3 `base64-value`).
fn nonce_of(source: &str) -> Option<String> {
    let inner = source.strip_prefix('\'')?.strip_suffix('\'')?;
    let (prefix, value) = inner.split_at_checked(6)?;
    if !prefix.eq_ignore_ascii_case("nonce-") {
        return None;
    }
    let body = value.trim_end_matches('=');
    let valid = !body.is_empty()
        && value.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'));
    valid.then(|| value.to_owned())
}

/// Whether `source` allows a same-origin script at [`CLIENT_PATH`] by where it comes from.
fn allows_by_location(source: &str, host: Option<&str>) -> bool {
    let lower = source.to_ascii_lowercase();
    match lower.as_str() {
        "'self'" | "*" | "http:" | "https:" => return true,
        _ => {}
    }
    if lower.starts_with('\'') || (lower.ends_with(':') && !lower.contains('/')) {
        // Other keywords ('none', 'unsafe-inline', hashes, nonces) and other schemes (data:,
        // blob:) do not allow an external script from the page's own origin.
        return false;
    }
    host_source_matches(&lower, host)
}

/// `[scheme "://"] host [":" port] [path]` against the page's host and the client's path. Scheme
/// and port are not checked (the router cannot tell what the browser sees).
fn host_source_matches(source: &str, host: Option<&str>) -> bool {
    let rest = source.split_once("://").map_or(source, |(_, rest)| rest);
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let source_host = authority
        .rsplit_once(':')
        .filter(|(_, port)| *port == "*" || port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(authority, |(h, _)| h);
    let host_ok = match host {
        None => true,
        Some(host) => {
            let host = host.to_ascii_lowercase();
            match source_host.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => source_host == "*" || source_host == host,
            }
        }
    };
    let path_ok = path.is_empty()
        || if path.ends_with('/') {
            CLIENT_PATH.starts_with(path)
        } else {
            CLIENT_PATH == path
        };
    host_ok && path_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(nonce: Option<&str>) -> Verdict {
        Verdict::Allowed {
            nonce: nonce.map(str::to_owned),
        }
    }

    fn blocked(directive: &str) -> Verdict {
        Verdict::Blocked {
            directive: directive.to_owned(),
        }
    }

    #[test]
    fn verdict_table() {
        fn check(headers: &[&str], expected: Verdict) {
            assert_eq!(
                verdict(headers.iter().copied(), Some("app.example.com")),
                expected,
                "{headers:?}"
            );
        }
        // No policy, or none about scripts.
        check(&[], allowed(None));
        check(&["img-src 'none'; frame-ancestors 'none'"], allowed(None));
        check(&[""], allowed(None));
        // The nonce is reused, whatever its case of keyword; '=' padding kept.
        check(&["script-src 'nonce-abc123'"], allowed(Some("abc123")));
        check(
            &["script-src 'NONCE-QUJD+/_-=='"],
            allowed(Some("QUJD+/_-==")),
        );
        // A malformed nonce is no nonce.
        check(
            &["script-src 'nonce-a b'"],
            blocked("script-src 'nonce-a b'"),
        );
        check(&["script-src 'nonce-'"], blocked("script-src 'nonce-'"));
        check(
            &["script-src 'nonce-ab==='"],
            blocked("script-src 'nonce-ab==='"),
        );
        // default-src governs when script-src is absent; script-src-elem comes first.
        check(&["default-src 'nonce-d'"], allowed(Some("d")));
        check(&["default-src 'none'; script-src 'self'"], allowed(None));
        check(&["script-src 'self'; default-src 'none'"], allowed(None));
        check(
            &["script-src 'nonce-s'; script-src-elem 'nonce-e'"],
            allowed(Some("e")),
        );
        check(&["default-src 'none'"], blocked("default-src 'none'"));
        // Directive names are case-insensitive; a repeated directive is ignored.
        check(&["SCRIPT-SRC 'self'"], allowed(None));
        check(
            &["script-src 'none'; script-src 'self'"],
            blocked("script-src 'none'"),
        );
        // Location sources allow the same-origin script; a nonce listed beside them is still used.
        check(&["script-src 'self' 'nonce-n'"], allowed(Some("n")));
        check(&["script-src *"], allowed(None));
        check(&["script-src https:"], allowed(None));
        check(&["script-src app.example.com"], allowed(None));
        check(&["script-src https://app.example.com:443"], allowed(None));
        check(&["script-src *.example.com"], allowed(None));
        check(&["script-src app.example.com/_flotilla/"], allowed(None));
        check(
            &["script-src app.example.com/static/"],
            blocked("script-src app.example.com/static/"),
        );
        check(
            &["script-src https://cdn.example.org"],
            blocked("script-src https://cdn.example.org"),
        );
        check(
            &["script-src data: blob:"],
            blocked("script-src data: blob:"),
        );
        // 'unsafe-inline' never allows an external script, with or without a nonce (CSP3 ignores
        // it beside a nonce or hash anyway); hashes need integrity, which the tag lacks.
        check(
            &["script-src 'unsafe-inline'"],
            blocked("script-src 'unsafe-inline'"),
        );
        check(
            &["script-src 'unsafe-inline' 'nonce-r'"],
            allowed(Some("r")),
        );
        check(
            &["script-src 'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"],
            blocked("script-src 'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"),
        );
        // 'strict-dynamic' disables location sources: only the nonce lets the tag run.
        check(
            &["script-src 'strict-dynamic' 'nonce-k' https: 'unsafe-inline'"],
            allowed(Some("k")),
        );
        check(
            &["script-src 'strict-dynamic' 'self'"],
            blocked("script-src 'strict-dynamic' 'self'"),
        );
        // Several policies, in one header (commas) or several: each must allow it.
        check(
            &["default-src 'self', script-src 'nonce-x'"],
            allowed(Some("x")),
        );
        check(
            &["script-src 'self'", "script-src 'nonce-y'"],
            allowed(Some("y")),
        );
        check(
            &["script-src 'nonce-a' 'nonce-b'", "script-src 'nonce-b'"],
            allowed(Some("b")),
        );
        check(
            &["script-src 'nonce-a'", "script-src 'nonce-b'"],
            blocked("script-src 'nonce-b'"),
        );
        check(
            &["script-src 'nonce-a', script-src 'none'"],
            blocked("script-src 'none'"),
        );
        check(
            &["script-src 'self', img-src *", "object-src 'none'"],
            allowed(None),
        );
    }

    #[test]
    fn an_unknown_host_lets_host_sources_allow() {
        assert_eq!(
            verdict(["script-src https://cdn.example.org"], None),
            allowed(None)
        );
        assert_eq!(
            verdict(["script-src app.example.com"], Some("APP.example.com")),
            allowed(None)
        );
    }
}
