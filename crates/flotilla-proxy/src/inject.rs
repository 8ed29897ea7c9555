//! Streaming insertion of the flotilla client `<script>` tag into HTML documents.
//!
//! [`insertion_point`] is a pure scanner over the start of a document: it skips a byte-order
//! mark, whitespace, comments, the doctype, processing instructions and the `<html>` tag, and then
//! places the script right after `<head ...>` if that is the next tag, or otherwise right there
//! (before the first element or text, which is where the parser would open `<head>` anyway).
//!
//! [`HtmlRewriter`] applies it to a body arriving in chunks: it holds back bytes only until the
//! scanner has decided (a few hundred bytes for real pages, at most [`MAX_PREFIX`]), then passes
//! every later chunk through. For `gzip` and `deflate` bodies it decompresses, inserts, and
//! compresses again with the same coding, flushing after every input chunk so that a streamed
//! page stays streamed. Identity bodies are spliced without copying.

use std::collections::{BTreeSet, VecDeque};
use std::io::{self, Write};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use flate2::Compression;
use flate2::write::{DeflateDecoder, GzEncoder, MultiGzDecoder, ZlibDecoder, ZlibEncoder};

use http::HeaderMap;
use http::header::CONTENT_SECURITY_POLICY;

use crate::csp::{self, Verdict};
use crate::headers::Coding;
use crate::route::Target;

/// The tag inserted into HTML documents when nothing needs declaring; see [`script_tag`].
pub(crate) const SCRIPT_TAG: &str = r#"<script src="/_flotilla/client.js"></script>"#;

/// The tag inserted into an HTML document. Following the client's wire contract, it declares
/// the deployment that served the page (`data-deployment`, the client's preferred source) and,
/// when they differ from the client's defaults, the affinity header and query parameter names.
/// `nonce` is the page's Content-Security-Policy nonce, if the policy needs one (see
/// [`crate::csp`]).
pub(crate) fn script_tag(
    deployment: Option<&str>,
    header: Option<&str>,
    query: Option<&str>,
    nonce: Option<&str>,
) -> Bytes {
    if deployment.is_none() && header.is_none() && query.is_none() && nonce.is_none() {
        return Bytes::from_static(SCRIPT_TAG.as_bytes());
    }
    let mut tag = String::with_capacity(SCRIPT_TAG.len() + 128);
    tag.push_str(r#"<script src="/_flotilla/client.js""#);
    for (attr, value) in [
        ("nonce", nonce),
        ("data-deployment", deployment),
        ("data-header", header),
        ("data-query", query),
    ] {
        if let Some(value) = value {
            tag.push(' ');
            tag.push_str(attr);
            tag.push_str("=\"");
            escape_attr(value, &mut tag);
            tag.push('"');
        }
    }
    tag.push_str("></script>");
    Bytes::from(tag)
}

/// The tag to insert into an HTML response with `headers`, served for the page host `host` by
/// `target`: carrying the page's Content-Security-Policy nonce when the policy lists one, or
/// `None` when the policy would block any tag the router could insert. A blocked page counts in
/// the target's [`crate::InstanceStats`] when `count` is set (a response with a body), and the
/// first one of each deployment is logged as a warning.
pub(crate) fn client_tag(
    headers: &HeaderMap,
    host: Option<&str>,
    target: &Target,
    attrs: (Option<&str>, Option<&str>),
    count: bool,
) -> Option<Bytes> {
    let values = headers
        .get_all(CONTENT_SECURITY_POLICY)
        .iter()
        .filter_map(|v| v.to_str().ok());
    match csp::verdict(values, host) {
        Verdict::Allowed { nonce } => Some(script_tag(
            target.deployment(),
            attrs.0,
            attrs.1,
            nonce.as_deref(),
        )),
        Verdict::Blocked { directive } => {
            if count {
                target.stats().record_csp_blocked();
                let deployment = target.deployment().unwrap_or("-");
                if first_block_of(deployment) {
                    tracing::warn!(
                        deployment,
                        upstream = %target.addr(),
                        policy = %directive,
                        "an HTML page's Content-Security-Policy blocks the injected browser client \
                         (no nonce to reuse, no 'self'), so its pages go out without it and tabs \
                         are not pinned to their version; add 'self' or a 'nonce-...' source to \
                         script-src (the router reuses the page's nonce). Said once per version; \
                         `flotilla status` counts such pages"
                    );
                }
            }
            None
        }
    }
}

/// Whether this is the first blocked page of `deployment` in this process.
fn first_block_of(deployment: &str) -> bool {
    static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    // Poison cannot leave a set half-updated.
    WARNED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(deployment.to_owned())
}

/// The host the browser asked for, without port: what a CSP host source is compared with.
pub(crate) fn page_host(headers: &HeaderMap, uri: &http::Uri) -> Option<String> {
    let authority = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(http::uri::Authority::as_str))?;
    let authority: http::uri::Authority = authority.parse().ok()?;
    Some(authority.host().to_owned())
}

/// Escapes text for a double-quoted HTML attribute value.
fn escape_attr(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '"' => out.push_str("&quot;"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
}

/// The most bytes held back while looking for the insertion point. A document whose start is
/// larger than this (an enormous leading comment) passes through without the script.
pub(crate) const MAX_PREFIX: usize = 16 * 1024;

/// Outcome of scanning the start of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// Insert the script at this byte offset.
    At(usize),
    /// The bytes so far do not decide; wait for more.
    NeedMore,
}

/// Finds where to insert the script in `doc`, the first bytes of an HTML document. `eof` says
/// whether `doc` is the whole document.
pub(crate) fn insertion_point(doc: &[u8], eof: bool) -> Scan {
    let need_more = |safe: usize| if eof { Scan::At(safe) } else { Scan::NeedMore };
    let mut pos = if doc.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    // Inserting here keeps everything skipped so far (doctype, comments, <html>) in front.
    let mut safe = pos;
    loop {
        while pos < doc.len() && doc[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let rest = &doc[pos..];
        if rest.is_empty() {
            return need_more(safe);
        }
        if rest[0] != b'<' {
            return Scan::At(safe);
        }
        if rest.len() < 2 {
            return need_more(safe);
        }
        match rest[1] {
            b'!' => {
                if rest.len() < 4 && b"<!--".starts_with(rest) {
                    return need_more(safe);
                }
                let end = if rest.starts_with(b"<!--") {
                    find(rest, 4, b"-->").map(|i| i + 3)
                } else {
                    find(rest, 2, b">").map(|i| i + 1)
                };
                match end {
                    Some(end) => pos += end,
                    None => return need_more(safe),
                }
                safe = pos;
            }
            b'?' => match find(rest, 2, b">") {
                Some(end) => {
                    pos += end + 1;
                    safe = pos;
                }
                None => return need_more(safe),
            },
            _ => {
                let is = |name: &[u8]| tag_is(rest, name, eof);
                match (is(b"html"), is(b"head")) {
                    (None, _) | (_, None) => return need_more(safe),
                    (Some(true), _) => match tag_end(rest) {
                        Some(end) => {
                            pos += end + 1;
                            safe = pos;
                        }
                        None => return need_more(safe),
                    },
                    (_, Some(true)) => {
                        return match tag_end(rest) {
                            Some(end) => Scan::At(pos + end + 1),
                            None => need_more(safe),
                        };
                    }
                    (Some(false), Some(false)) => return Scan::At(safe),
                }
            }
        }
    }
}

/// Whether `rest` (starting with `<`) opens a tag called `name` (case-insensitive). `None` when
/// more bytes are needed to tell.
fn tag_is(rest: &[u8], name: &[u8], eof: bool) -> Option<bool> {
    let after = 1 + name.len();
    let available = rest.len().min(after);
    if !rest[1..available].eq_ignore_ascii_case(&name[..available - 1]) {
        return Some(false);
    }
    match rest.get(after) {
        Some(&b) => Some(b == b'>' || b == b'/' || b.is_ascii_whitespace()),
        None if eof => Some(false),
        None => None,
    }
}

/// The offset of the `>` closing the tag that starts `rest`, skipping quoted attribute values.
fn tag_end(rest: &[u8]) -> Option<usize> {
    let mut quote = None;
    for (i, &b) in rest.iter().enumerate().skip(1) {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b == b'>' => return Some(i),
            None => {}
        }
    }
    None
}

fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Inserts the script tag into an uncompressed stream, holding bytes back only until the
/// insertion point is known.
#[derive(Debug)]
struct Splicer {
    prefix: BytesMut,
    done: bool,
    tag: Bytes,
}

impl Splicer {
    /// Feeds the next chunk; completed output goes to `out`.
    fn push(&mut self, chunk: Bytes, out: &mut Vec<Bytes>) {
        if self.done {
            if !chunk.is_empty() {
                out.push(chunk);
            }
            return;
        }
        // The common case: the whole decision fits in the first chunk, so splice it in place.
        let held = if self.prefix.is_empty() {
            chunk
        } else {
            self.prefix.extend_from_slice(&chunk);
            std::mem::take(&mut self.prefix).freeze()
        };
        match insertion_point(&held, false) {
            Scan::At(at) => self.splice(held, at, out),
            Scan::NeedMore if held.len() > MAX_PREFIX => {
                tracing::debug!(
                    held = held.len(),
                    "no insertion point in the start of an HTML body; passing it through"
                );
                self.done = true;
                out.push(held);
            }
            Scan::NeedMore => self.prefix = BytesMut::from(held),
        }
    }

    /// Ends the stream, emitting anything still held.
    fn finish(&mut self, out: &mut Vec<Bytes>) {
        if !self.done {
            let held = std::mem::take(&mut self.prefix).freeze();
            match insertion_point(&held, true) {
                Scan::At(at) => self.splice(held, at, out),
                Scan::NeedMore => unreachable_need_more(held, out),
            }
            self.done = true;
        }
    }

    fn splice(&mut self, held: Bytes, at: usize, out: &mut Vec<Bytes>) {
        self.done = true;
        if at > 0 {
            out.push(held.slice(..at));
        }
        out.push(self.tag.clone());
        if at < held.len() {
            out.push(held.slice(at..));
        }
    }
}

/// `insertion_point(_, true)` always decides; should that ever change, pass the bytes through
/// rather than lose them.
fn unreachable_need_more(held: Bytes, out: &mut Vec<Bytes>) {
    if !held.is_empty() {
        out.push(held);
    }
}

enum Decoder {
    Gzip(MultiGzDecoder<Vec<u8>>),
    Zlib(ZlibDecoder<Vec<u8>>),
    RawDeflate(DeflateDecoder<Vec<u8>>),
}

impl Decoder {
    fn write(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Decoder::Gzip(d) => {
                d.write_all(data)?;
                d.flush()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Zlib(d) => {
                d.write_all(data)?;
                d.flush()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::RawDeflate(d) => {
                d.write_all(data)?;
                d.flush()?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }

    fn finish(&mut self) -> io::Result<Vec<u8>> {
        match self {
            Decoder::Gzip(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Zlib(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::RawDeflate(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }
}

enum Encoder {
    Gzip(GzEncoder<Vec<u8>>),
    Zlib(ZlibEncoder<Vec<u8>>),
}

impl Encoder {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Zlib(e) => e.write_all(data),
        }
    }

    /// Sync-flushes so everything written so far can be decoded by the client now.
    fn flush(&mut self) -> io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => {
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
            Encoder::Zlib(e) => {
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
        }
    }

    fn finish(&mut self) -> io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => {
                e.try_finish()?;
                Ok(std::mem::take(e.get_mut()))
            }
            Encoder::Zlib(e) => {
                e.try_finish()?;
                Ok(std::mem::take(e.get_mut()))
            }
        }
    }
}

/// The coding pipeline around the splicer: decode, splice, encode.
enum Codec {
    Identity,
    /// Waiting for the first bytes of a `deflate` body to tell zlib from raw deflate.
    DeflatePending(Vec<u8>),
    /// Boxed: the codec states are large and only HTML bodies in gzip/deflate need them.
    Coded(Box<(Decoder, Encoder)>),
}

/// Rewrites one HTML response body, chunk by chunk.
pub(crate) struct HtmlRewriter {
    codec: Codec,
    splicer: Splicer,
    scratch: Vec<Bytes>,
}

impl std::fmt::Debug for HtmlRewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HtmlRewriter").finish_non_exhaustive()
    }
}

/// Compression level for re-encoded HTML: fast, since pages are small and latency matters more.
const LEVEL: Compression = Compression::new(4);

impl HtmlRewriter {
    /// A rewriter inserting `tag` (see [`script_tag`]) into a body in `coding`.
    pub(crate) fn new(coding: Coding, tag: Bytes) -> Self {
        let codec = match coding {
            Coding::Identity => Codec::Identity,
            Coding::Gzip => Codec::Coded(Box::new((
                Decoder::Gzip(MultiGzDecoder::new(Vec::new())),
                Encoder::Gzip(GzEncoder::new(Vec::new(), LEVEL)),
            ))),
            Coding::Deflate => Codec::DeflatePending(Vec::new()),
        };
        HtmlRewriter {
            codec,
            splicer: Splicer {
                prefix: BytesMut::new(),
                done: false,
                tag,
            },
            scratch: Vec::new(),
        }
    }

    /// Feeds the next chunk of the upstream body; output chunks are appended to `out`.
    pub(crate) fn push(&mut self, chunk: Bytes, out: &mut VecDeque<Bytes>) -> io::Result<()> {
        if let Codec::DeflatePending(held) = &mut self.codec {
            held.extend_from_slice(&chunk);
            if held.len() < 2 {
                return Ok(());
            }
            let first = Bytes::from(std::mem::take(held));
            self.codec = deflate_codec(&first);
            return self.push(first, out);
        }
        match &mut self.codec {
            Codec::Identity => {
                self.splicer.push(chunk, &mut self.scratch);
                out.extend(self.scratch.drain(..));
            }
            Codec::Coded(coders) => {
                let (decoder, encoder) = &mut **coders;
                let plain = decoder.write(&chunk)?;
                if !plain.is_empty() {
                    self.splicer.push(Bytes::from(plain), &mut self.scratch);
                }
                for piece in self.scratch.drain(..) {
                    encoder.write(&piece)?;
                }
                let coded = encoder.flush()?;
                if !coded.is_empty() {
                    out.push_back(Bytes::from(coded));
                }
            }
            Codec::DeflatePending(_) => {}
        }
        Ok(())
    }

    /// Ends the body: emits anything still held and closes the encoder.
    pub(crate) fn finish(&mut self, out: &mut VecDeque<Bytes>) -> io::Result<()> {
        if let Codec::DeflatePending(held) = &mut self.codec {
            let first = Bytes::from(std::mem::take(held));
            self.codec = deflate_codec(&first);
            if !first.is_empty() {
                self.push(first, out)?;
            }
        }
        match &mut self.codec {
            Codec::Identity => {
                self.splicer.finish(&mut self.scratch);
                out.extend(self.scratch.drain(..));
            }
            Codec::Coded(coders) => {
                let (decoder, encoder) = &mut **coders;
                let plain = decoder.finish()?;
                if !plain.is_empty() {
                    self.splicer.push(Bytes::from(plain), &mut self.scratch);
                }
                self.splicer.finish(&mut self.scratch);
                for piece in self.scratch.drain(..) {
                    encoder.write(&piece)?;
                }
                let coded = encoder.finish()?;
                if !coded.is_empty() {
                    out.push_back(Bytes::from(coded));
                }
            }
            Codec::DeflatePending(_) => {}
        }
        Ok(())
    }
}

/// HTTP's `deflate` is zlib-wrapped (RFC 9110 §8.4.1.2), but some servers send raw deflate;
/// a zlib stream starts with a header whose first two bytes, read big-endian, are a multiple of
/// 31 with compression method 8. Either way the client gets zlib back.
fn deflate_codec(first: &[u8]) -> Codec {
    let zlib = match first {
        [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => true,
    };
    let decoder = if zlib {
        Decoder::Zlib(ZlibDecoder::new(Vec::new()))
    } else {
        Decoder::RawDeflate(DeflateDecoder::new(Vec::new()))
    };
    Codec::Coded(Box::new((
        decoder,
        Encoder::Zlib(ZlibEncoder::new(Vec::new(), LEVEL)),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    use proptest::prelude::*;

    /// Runs the whole-document scanner and renders the result with the tag inserted.
    fn inserted(doc: &str) -> String {
        match insertion_point(doc.as_bytes(), true) {
            Scan::At(at) => format!("{}{}{}", &doc[..at], SCRIPT_TAG, &doc[at..]),
            Scan::NeedMore => panic!("eof must decide"),
        }
    }

    #[test]
    fn insertion_table() {
        fn check(doc: &str, expected: &str) {
            let expected = expected.replace("@", SCRIPT_TAG);
            assert_eq!(inserted(doc), expected, "doc {doc:?}");
        }
        check(
            "<html><head><title>x</title></head></html>",
            "<html><head>@<title>x</title></head></html>",
        );
        check(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head data-x='a>b'>\n<meta charset=utf-8>",
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head data-x='a>b'>@\n<meta charset=utf-8>",
        );
        check(
            "<!doctype html><HEAD><title>",
            "<!doctype html><HEAD>@<title>",
        );
        check(
            "<!-- a <head> in a comment --><head>",
            "<!-- a <head> in a comment --><head>@",
        );
        check("\u{feff}<head>", "\u{feff}<head>@");
        check(
            "<?xml version=\"1.0\"?><html><head/>",
            "<?xml version=\"1.0\"?><html><head/>@",
        );
        // No head: before the first element, after what must stay first.
        check(
            "<!DOCTYPE html><html><body><p>hi",
            "<!DOCTYPE html><html>@<body><p>hi",
        );
        check(
            "<!DOCTYPE html><title>t</title>",
            "<!DOCTYPE html>@<title>t</title>",
        );
        check("<body>", "@<body>");
        check("<header>not head</header>", "@<header>not head</header>");
        check("<htmlx>", "@<htmlx>");
        check("hello <b>world</b>", "@hello <b>world</b>");
        check("", "@");
        check("   ", "@   ");
        check("<!DOCTYPE html>", "<!DOCTYPE html>@");
        // Unterminated constructs at end of input: put the tag before them.
        check(
            "<!DOCTYPE html><!-- never closed",
            "<!DOCTYPE html>@<!-- never closed",
        );
        check("<html><head", "<html>@<head");
    }

    #[test]
    fn partial_input_waits_table() {
        fn check(doc: &str, expected: Scan) {
            assert_eq!(
                insertion_point(doc.as_bytes(), false),
                expected,
                "doc {doc:?}"
            );
        }
        check("", Scan::NeedMore);
        check("<", Scan::NeedMore);
        check("<!-", Scan::NeedMore);
        check("<!DOCTYPE ht", Scan::NeedMore);
        check("<!DOCTYPE html><he", Scan::NeedMore);
        check("<!DOCTYPE html><head", Scan::NeedMore);
        check("<!DOCTYPE html><head lang=\"a", Scan::NeedMore);
        check("<!DOCTYPE html><hea>", Scan::At(15));
        check("<!DOCTYPE html><div", Scan::At(15));
        check("<!DOCTYPE html><head>", Scan::At(21));
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("write to vec");
        e.finish().expect("finish to vec")
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("write to vec");
        e.finish().expect("finish to vec")
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("write to vec");
        e.finish().expect("finish to vec")
    }

    fn unzlib(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(data)
            .read_to_end(&mut out)
            .expect("valid zlib");
        out
    }

    /// Feeds `body` to a rewriter split at `cuts` and returns the concatenated output.
    fn rewrite(coding: Coding, body: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut rewriter = HtmlRewriter::new(coding, script_tag(None, None, None, None));
        let mut out = VecDeque::new();
        let mut start = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        cuts.sort_unstable();
        for cut in cuts.into_iter().chain([body.len()]) {
            rewriter
                .push(Bytes::copy_from_slice(&body[start..cut]), &mut out)
                .expect("valid input");
            start = cut;
        }
        rewriter.finish(&mut out).expect("valid input");
        out.into_iter().flat_map(|b| b.to_vec()).collect()
    }

    const PAGE: &str =
        "<!DOCTYPE html>\n<html><head><title>t</title></head><body>hello</body></html>";

    #[test]
    fn rewrites_each_coding() {
        let expected = inserted(PAGE);
        let plain = rewrite(Coding::Identity, PAGE.as_bytes(), &[3, 20]);
        assert_eq!(String::from_utf8_lossy(&plain), expected);
        let gz = rewrite(Coding::Gzip, &gzip(PAGE.as_bytes()), &[1, 11, 30]);
        assert_eq!(String::from_utf8_lossy(&gunzip(&gz)), expected);
        let z = rewrite(Coding::Deflate, &zlib(PAGE.as_bytes()), &[1]);
        assert_eq!(String::from_utf8_lossy(&unzlib(&z)), expected);
        let raw = rewrite(Coding::Deflate, &raw_deflate(PAGE.as_bytes()), &[1, 2]);
        assert_eq!(String::from_utf8_lossy(&unzlib(&raw)), expected);
    }

    #[test]
    fn script_tag_table() {
        fn check(d: Option<&str>, h: Option<&str>, q: Option<&str>, expected: &str) {
            assert_eq!(
                &script_tag(d, h, q, None)[..],
                expected.as_bytes(),
                "{d:?} {h:?} {q:?}"
            );
        }
        check(None, None, None, SCRIPT_TAG);
        check(
            Some("web-1"),
            None,
            None,
            r#"<script src="/_flotilla/client.js" data-deployment="web-1"></script>"#,
        );
        check(
            Some("a\"b<&>"),
            Some("X-App-Version"),
            Some("v"),
            r#"<script src="/_flotilla/client.js" data-deployment="a&quot;b&lt;&amp;&gt;" data-header="X-App-Version" data-query="v"></script>"#,
        );
        assert_eq!(
            &script_tag(Some("web-1"), None, None, Some("r4nd0m+/=="))[..],
            br#"<script src="/_flotilla/client.js" nonce="r4nd0m+/==" data-deployment="web-1"></script>"#,
        );
    }

    #[test]
    fn identity_first_chunk_is_spliced_without_holding() {
        let mut rewriter = HtmlRewriter::new(Coding::Identity, script_tag(None, None, None, None));
        let mut out = VecDeque::new();
        rewriter
            .push(Bytes::from_static(b"<head><title>"), &mut out)
            .expect("identity never fails");
        let got: Vec<&[u8]> = out.iter().map(|b| b.as_ref()).collect();
        assert_eq!(
            got,
            vec![&b"<head>"[..], SCRIPT_TAG.as_bytes(), &b"<title>"[..]]
        );
    }

    #[test]
    fn huge_leading_comment_passes_through_untouched() {
        let doc = format!("<!--{}--><head>", "x".repeat(MAX_PREFIX + 10));
        // The first chunks hold more than MAX_PREFIX bytes without deciding, so the rewriter
        // gives up before the head arrives.
        let out = rewrite(
            Coding::Identity,
            doc.as_bytes(),
            &[100, 5000, MAX_PREFIX + 5],
        );
        assert!(
            out == doc.as_bytes(),
            "output differs from input (len {})",
            out.len()
        );
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        let mut rewriter = HtmlRewriter::new(Coding::Gzip, script_tag(None, None, None, None));
        let mut out = VecDeque::new();
        let pushed = rewriter.push(Bytes::from_static(b"this is not gzip at all"), &mut out);
        let finished = rewriter.finish(&mut out);
        assert!(
            pushed.is_err() || finished.is_err(),
            "garbage must not decode as gzip"
        );
    }

    proptest! {
        /// Wherever the body is cut into chunks, the output is the same as for the whole body.
        #[test]
        fn chunking_does_not_change_output(
            head in "(<!DOCTYPE html>)?\\s{0,2}(<!--[a-z<> ]{0,8}-->)?(<html( lang=\"en\")?>)?\\s?(<head( x='>')?>|<body>|<p>|text)?",
            tail in "[a-z<>/ ]{0,40}",
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let doc = format!("{head}{tail}");
            let expected = inserted(&doc);
            let plain = rewrite(Coding::Identity, doc.as_bytes(), &cuts);
            prop_assert_eq!(String::from_utf8_lossy(&plain), expected.clone());
            let gz = gunzip(&rewrite(Coding::Gzip, &gzip(doc.as_bytes()), &cuts));
            prop_assert_eq!(String::from_utf8_lossy(&gz), expected);
        }
    }
}
