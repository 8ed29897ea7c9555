//! Which host a new connection is for, read from its first bytes without consuming them: the
//! server name (SNI) of a TLS ClientHello, or the `Host` header of an HTTP/1.x request head.
//!
//! Pure: the front door peeks at a connection's bytes (`MSG_PEEK`) and asks [`tls_server_name`]
//! or [`http_host`] whether they say; [`Sniff::NeedMore`] means peek again once more arrived.

/// The most bytes the front door reads before deciding; a ClientHello or request head larger
/// than this is refused.
pub const MAX_SNIFF_BYTES: usize = 16 * 1024;

/// What the first bytes of a connection say about its host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sniff {
    /// The host name, normalized by [`normalize_host`].
    Host(String),
    /// Too few bytes yet to tell.
    NeedMore,
    /// A complete ClientHello or request head that names no host (a TLS client connecting by IP
    /// address, an HTTP/1.0 request without `Host`).
    NoHost,
    /// Not what the listener speaks, or malformed; the reason is for the log.
    Invalid(&'static str),
}

/// The server name a TLS ClientHello asks for (RFC 8446 §4.1.2, RFC 6066 §3).
///
/// Handshake messages may be split over several TLS records; the records are joined until the
/// ClientHello is complete.
pub fn tls_server_name(bytes: &[u8]) -> Sniff {
    let handshake = match join_handshake_records(bytes) {
        Ok(h) => h,
        Err(sniff) => return sniff,
    };
    match client_hello_server_name(&handshake) {
        Ok(Some(name)) => match normalize_host(&name) {
            Some(host) => Sniff::Host(host),
            None => Sniff::Invalid("the server name is not a host name"),
        },
        Ok(None) => Sniff::NoHost,
        Err(reason) => Sniff::Invalid(reason),
    }
}

/// Concatenates the payloads of the handshake records at the start of `bytes` until they hold a
/// whole handshake message; `Err(NeedMore)` if they do not yet.
fn join_handshake_records(mut bytes: &[u8]) -> Result<Vec<u8>, Sniff> {
    const HANDSHAKE: u8 = 22;
    let mut handshake = Vec::new();
    loop {
        let Some(header) = bytes.get(..5) else {
            return Err(Sniff::NeedMore);
        };
        if header[0] != HANDSHAKE {
            return Err(Sniff::Invalid("not a TLS handshake"));
        }
        if header[1] != 3 {
            return Err(Sniff::Invalid("not a TLS record version"));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16 * 1024 + 256 {
            return Err(Sniff::Invalid("a TLS record of an impossible length"));
        }
        let Some(payload) = bytes.get(5..5 + len) else {
            return Err(Sniff::NeedMore);
        };
        handshake.extend_from_slice(payload);
        bytes = &bytes[5 + len..];
        if handshake.len() >= 4 {
            let message_len = usize::from(handshake[1]) << 16
                | usize::from(handshake[2]) << 8
                | usize::from(handshake[3]);
            if handshake.len() >= 4 + message_len {
                handshake.truncate(4 + message_len);
                return Ok(handshake);
            }
            if 4 + message_len > MAX_SNIFF_BYTES {
                return Err(Sniff::Invalid(
                    "a ClientHello larger than the front door reads",
                ));
            }
        }
    }
}

/// A cursor over a handshake message that fails with a reason instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.bytes.len() < n {
            return Err("a truncated ClientHello");
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// The `host_name` of the `server_name` extension of a complete ClientHello message.
fn client_hello_server_name(message: &[u8]) -> Result<Option<String>, &'static str> {
    const CLIENT_HELLO: u8 = 1;
    const SERVER_NAME: u16 = 0;
    const HOST_NAME: u8 = 0;
    let mut r = Reader { bytes: message };
    if r.u8()? != CLIENT_HELLO {
        return Err("the first handshake message is not a ClientHello");
    }
    r.take(3)?; // length, already checked
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    if r.bytes.is_empty() {
        return Ok(None); // no extensions at all
    }
    let mut extensions = Reader { bytes: r.vec16()? };
    while !extensions.bytes.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind != SERVER_NAME {
            continue;
        }
        let mut list = Reader {
            bytes: Reader { bytes: data }.vec16()?,
        };
        while !list.bytes.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == HOST_NAME {
                return std::str::from_utf8(name)
                    .map(|s| Some(s.to_owned()))
                    .map_err(|_| "the server name is not text");
            }
        }
        return Ok(None);
    }
    Ok(None)
}

/// The `Host` of an HTTP/1.x request head (the request line and headers, up to the blank line).
pub fn http_host(bytes: &[u8]) -> Sniff {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n");
    let head = match end {
        Some(end) => &bytes[..end + 2],
        None if bytes.len() >= MAX_SNIFF_BYTES => {
            return Sniff::Invalid("a request head larger than the front door reads");
        }
        None => {
            // A request line that is not HTTP/1.x can be refused before it ends.
            if bytes.starts_with(b"PRI * HTTP/2.0") {
                return Sniff::Invalid("HTTP/2 without TLS is not served");
            }
            return Sniff::NeedMore;
        }
    };
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let Some(request_line) = lines.next() else {
        return Sniff::Invalid("an empty request");
    };
    let Ok(request_line) = std::str::from_utf8(request_line) else {
        return Sniff::Invalid("a request line that is not text");
    };
    let mut parts = request_line.split(' ');
    let (Some(_method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Sniff::Invalid("a malformed request line");
    };
    if !version.starts_with("HTTP/1.") {
        return Sniff::Invalid("not an HTTP/1.x request");
    }
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon].eq_ignore_ascii_case(b"host") {
            continue;
        }
        let Ok(value) = std::str::from_utf8(&line[colon + 1..]) else {
            return Sniff::Invalid("a Host header that is not text");
        };
        return match normalize_host(value.trim()) {
            Some(host) => Sniff::Host(host),
            None => Sniff::Invalid("a Host header that is not a host name"),
        };
    }
    // An absolute-form target names the host too (RFC 9112 §3.2.2).
    if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        let authority = rest.split('/').next().unwrap_or_default();
        return match normalize_host(authority) {
            Some(host) => Sniff::Host(host),
            None => Sniff::Invalid("a request target whose host is not a host name"),
        };
    }
    Sniff::NoHost
}

/// A host name as registrations and lookups compare it: lower case, without a port or a trailing
/// dot; an IPv6 literal keeps its brackets. `None` if it is not a host name (empty, a user part,
/// characters a DNS name or address cannot have).
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        let close = rest.find(']')?;
        let tail = &rest[close + 1..];
        if !(tail.is_empty() || valid_port(tail.strip_prefix(':')?)) {
            return None;
        }
        let inner = &rest[..close];
        if inner.is_empty()
            || !inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return None;
        }
        return Some(format!("[{}]", inner.to_ascii_lowercase()));
    } else if let Some((host, port)) = raw.rsplit_once(':') {
        if !valid_port(port) {
            return None;
        }
        host
    } else {
        raw
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    // A leading `*.` is a registration's wildcard; lookups never carry one.
    let labels = host.strip_prefix("*.").unwrap_or(host);
    labels
        .split('.')
        .all(valid_label)
        .then(|| host.to_ascii_lowercase())
}

fn valid_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as a TLS client sends it, built field by field (RFC 8446 §4.1.2).
    fn client_hello(server_name: Option<&str>, padding: usize) -> Vec<u8> {
        let mut extensions = Vec::new();
        if let Some(name) = server_name {
            let mut entry = vec![0u8];
            entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
            entry.extend_from_slice(name.as_bytes());
            let mut list = (entry.len() as u16).to_be_bytes().to_vec();
            list.extend_from_slice(&entry);
            // An unrelated extension first (supported_versions), as real clients send several.
            extensions.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
            extensions.extend_from_slice(&0u16.to_be_bytes());
            extensions.extend_from_slice(&(list.len() as u16).to_be_bytes());
            extensions.extend_from_slice(&list);
        }
        // Padding (RFC 7685), to make a ClientHello that spans records.
        extensions.extend_from_slice(&21u16.to_be_bytes());
        extensions.extend_from_slice(&(padding as u16).to_be_bytes());
        extensions.extend(std::iter::repeat_n(0u8, padding));
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.extend_from_slice(&[0]); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(&extensions);
        let mut message = vec![1];
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend_from_slice(&body);
        message
    }

    /// `message` as TLS records of at most `chunk` bytes of payload each.
    fn records(message: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in message.chunks(chunk) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    #[test]
    fn reads_the_server_name_of_a_client_hello() {
        let bytes = records(&client_hello(Some("Shop.Example.com"), 10), 16 * 1024);
        assert_eq!(
            tls_server_name(&bytes),
            Sniff::Host("shop.example.com".into())
        );
    }

    #[test]
    fn a_client_hello_split_over_records_and_reads_is_joined() {
        let bytes = records(&client_hello(Some("a.example"), 3000), 500);
        assert_eq!(tls_server_name(&bytes), Sniff::Host("a.example".into()));
        for cut in [0, 1, 4, 5, 6, 400, 505, bytes.len() - 1] {
            assert_eq!(
                tls_server_name(&bytes[..cut]),
                Sniff::NeedMore,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_client_hello_without_a_server_name_names_no_host() {
        let bytes = records(&client_hello(None, 4), 16 * 1024);
        assert_eq!(tls_server_name(&bytes), Sniff::NoHost);
    }

    #[test]
    fn plain_http_on_the_tls_port_is_invalid() {
        assert!(matches!(
            tls_server_name(b"GET / HTTP/1.1\r\n"),
            Sniff::Invalid(_)
        ));
    }

    #[test]
    fn a_truncated_extension_is_invalid_not_a_panic() {
        let mut message = client_hello(Some("a.example"), 0);
        // Claim a longer extension block than there is, keeping the message length honest.
        let ext_len_at = 4 + 2 + 32 + 1 + 4 + 2;
        message[ext_len_at] = 0xff;
        let bytes = records(&message, 16 * 1024);
        assert!(matches!(tls_server_name(&bytes), Sniff::Invalid(_)));
    }

    #[test]
    fn reads_the_host_of_a_request_head() {
        let cases: &[(&[u8], Sniff)] = &[
            (
                b"GET / HTTP/1.1\r\nHost: Shop.example:8080\r\n\r\n",
                Sniff::Host("shop.example".into()),
            ),
            (
                b"GET / HTTP/1.1\r\nuser-agent: x\r\nhOsT:blog.example.\r\n\r\n",
                Sniff::Host("blog.example".into()),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
                Sniff::Host("[::1]".into()),
            ),
            (
                b"GET http://a.example/x HTTP/1.1\r\n\r\n",
                Sniff::Host("a.example".into()),
            ),
            (b"GET / HTTP/1.0\r\n\r\n", Sniff::NoHost),
            (b"GET / HTTP/1.1\r\nHost: a.exa", Sniff::NeedMore),
            (b"", Sniff::NeedMore),
            (
                b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
                Sniff::Invalid("a Host header that is not a host name"),
            ),
            (
                b"GET / SPDY/3\r\n\r\n",
                Sniff::Invalid("not an HTTP/1.x request"),
            ),
            (
                b"PRI * HTTP/2.0\r\n",
                Sniff::Invalid("HTTP/2 without TLS is not served"),
            ),
            (
                b"\x16\x03\x01\x00\x10\r\n\r\n",
                Sniff::Invalid("a malformed request line"),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                &http_host(bytes),
                want,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn an_endless_request_head_is_refused() {
        let mut bytes = b"GET / HTTP/1.1\r\nX: ".to_vec();
        bytes.resize(MAX_SNIFF_BYTES, b'a');
        assert!(matches!(http_host(&bytes), Sniff::Invalid(_)));
    }

    #[test]
    fn normalizes_host_names() {
        let cases = [
            ("Example.COM", Some("example.com")),
            ("example.com.", Some("example.com")),
            ("example.com:443", Some("example.com")),
            ("*.example.com", Some("*.example.com")),
            ("[2001:DB8::1]:8443", Some("[2001:db8::1]")),
            ("127.0.0.1:8080", Some("127.0.0.1")),
            ("", None),
            ("example.com:", None),
            ("user@example.com", None),
            ("exa mple.com", None),
            ("a..b", None),
            ("[::1", None),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_host(raw).as_deref(), want, "{raw:?}");
        }
    }
}
