/*! flotilla-client.js: keeps each browser tab on the application version that served its page,
    and on the same instance of that version. */
/*
 * Plain JavaScript, no build step, no dependencies. Include it synchronously, early in <head>,
 * before the application's own scripts:
 *
 *   <script src="/_flotilla/client.js" data-deployment="ID"
 *           data-header="X-Flotilla-Deployment" data-query="flotilla_deployment"
 *           data-tab-header="X-Flotilla-Tab" data-tab-query="flotilla_tab"></script>
 *
 * Every attribute is optional; the values shown are the defaults.
 *
 * Including it twice is harmless: the second copy only hands over a declared id the first lacked.
 *
 * WIRE CONTRACT (what the router / agent / injector and this file agree on)
 *
 * 1. Which version served this page. The headers of the page's own HTML response cannot be read
 *    from JavaScript, so the server declares the id in the page. Sources, first match wins:
 *      a. `data-deployment` on this <script> tag (what the injector writes; preferred);
 *      b. `<meta name="flotilla-deployment" content="ID">` anywhere in the document (looked up when
 *         this script runs and again at DOMContentLoaded if nothing was declared by then);
 *      c. a `Server-Timing: flotilla-deployment;desc="ID"` header on the HTML response, read from
 *         the Navigation Timing entry (works only where the browser exposes serverTiming, which
 *         Chromium does for secure contexts, including http://127.0.0.1 and http://localhost);
 *      d. a `flotilla_deployment` (the query name) parameter in the page's own URL.
 *    A declared id REPLACES whatever this tab stored before: a navigation (first load, link click,
 *    reload) never carries affinity, because browsers do not let scripts add headers to it, so the
 *    router sent it to the newest version and the page must now talk to that version. This is how
 *    "a reload of an old tab reaches the new version" works. When a page declares nothing, the id
 *    stored by an earlier page of this tab is dropped for the same reason, and the id is learned
 *    from the first same-origin fetch/XHR response that carries the `X-Flotilla-Deployment`
 *    header (later responses naming another id do not change it; only a new page does).
 *
 * 2. Storage. The id is kept per tab in sessionStorage under the key `flotilla:deployment`, never
 *    in a cookie (cookies are shared by every tab). The page's in-memory copy is authoritative for
 *    that page; sessionStorage mirrors it and is rewritten when a page returns from the
 *    back/forward cache, so two documents that shared a tab never mix their ids.
 *
 * 2b. The tab key: which instance of a version a tab talks to. A version may run several
 *    instances, each with its own memory (an app's in-memory session state, a WebSocket's
 *    server-side state). The host router sends every request carrying a tab key to the same
 *    healthy instance of its version (rendezvous hashing of the key), so a tab's reconnected
 *    WebSocket finds the instance that held its session. The key is an opaque random value,
 *    128 bits from crypto.getRandomValues written as a UUID (crypto.randomUUID where available),
 *    made once per tab when this script first runs in it and kept in sessionStorage under
 *    `flotilla:tab`, never in a cookie. It is the same for every page, reload and version of the
 *    tab (unlike the id, a navigation does not replace it: which instance holds a tab's session
 *    matters whichever version the tab is on) and different in every other tab. A stored value
 *    that is not a plausible key (1 to 64 characters of A-Z a-z 0-9 - _) is replaced. Without
 *    sessionStorage the key lives only as long as the page. It is a routing hint, not a secret
 *    and not an identity: do not authorise anything with it.
 *    A page without this client gets instance stickiness from the host router's per-version
 *    instance cookie instead (shared by the browser's tabs; see docs/sessions.md).
 *    Known limit: a browser that duplicates a tab (or opens a window with `window.open` from
 *    it) copies its sessionStorage, so the copy starts with the same key and shares the
 *    original's instance. Both still work; they only share an instance, which is harmless.
 *
 * 3. What is sent. Same-origin requests only (scheme, host and port equal to the page's; ws: counts
 *    as http: and wss: as https:). Cross-origin requests are never touched.
 *      - fetch and XMLHttpRequest: header `X-Flotilla-Deployment: ID` (name from `data-header`)
 *        once the id is known, and header `X-Flotilla-Tab: KEY` (name from `data-tab-header`)
 *        always, each unless the request already sets that header, which then wins.
 *      - WebSocket and EventSource (browsers cannot set headers on those): query parameters
 *        `flotilla_deployment=ID` (name from `data-query`) once the id is known, then
 *        `flotilla_tab=KEY` (name from `data-tab-query`) always, appended to the URL, each
 *        unless the URL already has that parameter (even empty), which then wins. Other query
 *        parameters are left byte for byte as written.
 *    The host router reads the tab key from `X-Flotilla-Tab` / `flotilla_tab` (header first);
 *    renaming them only makes sense for a server that reads the new names. A server that ignores
 *    the tab key loses nothing but instance stickiness.
 *
 * 4. Retired versions. A same-origin fetch/XHR response is a retirement signal when its status is
 *    410 or 409 (`[app] stale_status`) AND its body is this JSON object (Content-Type
 *    application/json; the body is what counts):
 *      {"error":"version_retired","retired":"<id>","current":"<id or null>","message":"..."}
 *    A bare 410 is NOT enough, not even one carrying the deployment header: the agent stamps that
 *    header on every response, including an application's own legitimate 410s, and an ALB
 *    fixed-response rule cannot add headers at all, so the body is the only reliable marker.
 *    A same-origin WebSocket closed with code 4410 (the router accepts a stale upgrade only to
 *    close it with that code and the reason "version_retired") is a retirement signal too.
 *    On the first signal of a page, a cancelable `flotilla:stale` CustomEvent is dispatched on
 *    `window` with `detail = {retired, current, message, url}`. Unless a listener calls
 *    `event.preventDefault()`, its default action removes the stored id and reloads the page,
 *    which reaches the newest version. It fires at most once per page. If the reloaded page
 *    still names the same retired version within 30 seconds (a cached copy of the HTML), the
 *    default action does not reload again and logs a console warning instead; the key
 *    `flotilla:stale-reload` in sessionStorage remembers the last such reload.
 *
 * 5. What JavaScript cannot see. A WebSocket upgrade answered 410 (an ALB fixed response) surfaces
 *    only as `error` plus `close` code 1006, and an EventSource answered 410 only as `error` with
 *    readyState CLOSED; the status and body are hidden from scripts. So when a same-origin
 *    WebSocket closes without ever opening or with code 1006 (and not with 4410, which says it
 *    all), or a same-origin EventSource fails permanently, this client sends
 *    one probe, `GET <this page's URL>` with the affinity header (at most one every 2 seconds;
 *    a failure within that time is probed when it is over; aborted once the status shows the
 *    version alive), and applies rule 4 to the probe's answer.
 *    Requests made by workers, service workers, navigator.sendBeacon, forms, <img>/<link>/<script>
 *    tags and import() carry no affinity; `window.flotilla.withAffinity(url)` adds the query
 *    parameters (id and tab key) to such a URL for apps that want it.
 *
 * API: window.flotilla = {
 *   deploymentId(),    // this page's id, or null while unknown
 *   source(),          // where it came from: "script", "meta", "server-timing", "url", "response"
 *   tabKey(),          // this tab's key (never null)
 *   header, query,     // the id's header and query parameter names in use
 *   tabHeader, tabQuery, // the tab key's header and query parameter names in use
 *   withAffinity(url)  // url with the query parameters added when same-origin
 * }
 */
(function () {
  "use strict";

  var DEFAULT_HEADER = "X-Flotilla-Deployment";
  var DEFAULT_QUERY = "flotilla_deployment";
  var STORAGE_KEY = "flotilla:deployment";
  var DEFAULT_TAB_HEADER = "X-Flotilla-Tab";
  var DEFAULT_TAB_QUERY = "flotilla_tab";
  var TAB_STORAGE_KEY = "flotilla:tab";
  var TAB_KEY_SHAPE = /^[A-Za-z0-9_-]{1,64}$/;
  var META_NAME = "flotilla-deployment";
  var TIMING_NAME = "flotilla-deployment";
  var STALE_EVENT = "flotilla:stale";
  var RETIRED_ERROR = "version_retired";
  var STALE_STATUSES = { 409: true, 410: true };
  var STALE_CLOSE_CODE = 4410;
  var PROBE_INTERVAL_MS = 2000;
  var RELOAD_KEY = "flotilla:stale-reload";
  var RELOAD_LOOP_MS = 30000;
  var INSTALLED = "__flotillaClient";

  if (typeof window === "undefined" || typeof document === "undefined") {
    return;
  }

  // currentScript is null only for module scripts; fall back to the tag the injector writes.
  var script =
    document.currentScript || document.querySelector('script[src*="/_flotilla/client.js"]');
  var dataset = (script && script.dataset) || {};

  function nonEmpty(value) {
    return typeof value === "string" && value.trim() !== "" ? value.trim() : null;
  }

  // A second copy of this file (an injected tag plus one the app added itself) must not wrap the
  // already wrapped functions again; it may only supply a declaration the first copy lacked.
  var existing = window[INSTALLED];
  if (existing) {
    var laterId = nonEmpty(dataset.deployment);
    if (laterId) {
      existing.adopt(laterId);
    }
    return;
  }

  var HEADER = nonEmpty(dataset.header) || DEFAULT_HEADER;
  var QUERY = nonEmpty(dataset.query) || DEFAULT_QUERY;
  var HEADER_LOWER = HEADER.toLowerCase();
  var TAB_HEADER = nonEmpty(dataset.tabHeader) || DEFAULT_TAB_HEADER;
  var TAB_QUERY = nonEmpty(dataset.tabQuery) || DEFAULT_TAB_QUERY;
  var TAB_HEADER_LOWER = TAB_HEADER.toLowerCase();

  var state = {
    id: null,
    source: null,
    declared: false,
    staleFired: false,
    lastProbe: 0,
    probeTimer: null,
  };

  // ---- storage ---------------------------------------------------------------------------------

  function storageWrite(id) {
    try {
      if (id) {
        window.sessionStorage.setItem(STORAGE_KEY, id);
      } else {
        window.sessionStorage.removeItem(STORAGE_KEY);
      }
    } catch (e) {
      // Storage can be disabled (privacy settings, sandboxed frames); the in-memory id still works.
    }
  }

  function setId(id, source) {
    state.id = id;
    state.source = id ? source : null;
    storageWrite(id);
  }

  function declare(id, source) {
    state.declared = true;
    setId(id, source);
  }

  // ---- the tab key -----------------------------------------------------------------------------

  function hex(byte) {
    return (byte < 16 ? "0" : "") + byte.toString(16);
  }

  // 128 random bits as a UUID (version 4 layout). Not a secret: only a routing hint.
  function newTabKey() {
    var cryptoObj = window.crypto;
    try {
      if (cryptoObj && typeof cryptoObj.randomUUID === "function") {
        return cryptoObj.randomUUID();
      }
    } catch (e) {
      // randomUUID exists only in secure contexts; getRandomValues works everywhere.
    }
    var bytes = new Uint8Array(16);
    if (cryptoObj && typeof cryptoObj.getRandomValues === "function") {
      cryptoObj.getRandomValues(bytes);
    } else {
      for (var i = 0; i < bytes.length; i++) {
        bytes[i] = Math.floor(Math.random() * 256);
      }
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    var out = "";
    for (var j = 0; j < bytes.length; j++) {
      out += hex(bytes[j]) + (j === 3 || j === 5 || j === 7 || j === 9 ? "-" : "");
    }
    return out;
  }

  // The tab's key: the stored one when it is plausible, otherwise a new one, stored for the rest
  // of the tab's life (reloads and later pages included).
  function tabKey() {
    var stored = null;
    try {
      stored = window.sessionStorage.getItem(TAB_STORAGE_KEY);
    } catch (e) {
      // No storage: the key lives as long as this page.
    }
    if (typeof stored === "string" && TAB_KEY_SHAPE.test(stored)) {
      return stored;
    }
    var key = newTabKey();
    try {
      window.sessionStorage.setItem(TAB_STORAGE_KEY, key);
    } catch (e) {
      // As above.
    }
    return key;
  }

  var TAB = tabKey();

  // ---- where this page's id comes from ---------------------------------------------------------

  function metaDeclaration() {
    var meta = document.querySelector('meta[name="' + META_NAME + '"]');
    return meta ? nonEmpty(meta.getAttribute("content")) : null;
  }

  function serverTimingDeclaration() {
    try {
      var entries = window.performance && performance.getEntriesByType
        ? performance.getEntriesByType("navigation")
        : [];
      var timings = (entries[0] && entries[0].serverTiming) || [];
      for (var i = 0; i < timings.length; i++) {
        if (timings[i].name === TIMING_NAME) {
          var id = nonEmpty(timings[i].description);
          if (id) {
            return id;
          }
        }
      }
    } catch (e) {
      // Navigation Timing is optional; the other sources still apply.
    }
    return null;
  }

  function urlDeclaration() {
    try {
      return nonEmpty(new URL(window.location.href).searchParams.get(QUERY));
    } catch (e) {
      return null;
    }
  }

  function declareFromPage() {
    var sources = [
      ["script", function () { return nonEmpty(dataset.deployment); }],
      ["meta", metaDeclaration],
      ["server-timing", serverTimingDeclaration],
      ["url", urlDeclaration],
    ];
    for (var i = 0; i < sources.length; i++) {
      var id = sources[i][1]();
      if (id) {
        declare(id, sources[i][0]);
        return true;
      }
    }
    return false;
  }

  if (!declareFromPage()) {
    // Whatever an earlier page of this tab stored belongs to that page's version, not this one's.
    setId(null, null);
    document.addEventListener("DOMContentLoaded", function () {
      var id = !state.declared && metaDeclaration();
      if (id) {
        declare(id, "meta");
      }
    });
  }

  // A page restored from the back/forward cache keeps its scripts' state, but a later page of the
  // tab may have overwritten the stored id meanwhile: put this page's id back. The tab key is the
  // tab's, not the page's, so it only needs to be there.
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) {
      storageWrite(state.id);
      try {
        if (!window.sessionStorage.getItem(TAB_STORAGE_KEY)) {
          window.sessionStorage.setItem(TAB_STORAGE_KEY, TAB);
        }
      } catch (e) {
        // No storage: nothing to restore.
      }
    }
  });

  // ---- URLs and origins ------------------------------------------------------------------------

  var HTTP_FOR_SOCKET = { "ws:": "http:", "wss:": "https:" };

  function resolve(url) {
    try {
      return new URL(String(url), document.baseURI);
    } catch (e) {
      return null;
    }
  }

  function isSameOrigin(parsed) {
    if (!parsed) {
      return false;
    }
    var scheme = HTTP_FOR_SOCKET[parsed.protocol] || parsed.protocol;
    if (scheme !== "http:" && scheme !== "https:") {
      return false;
    }
    return scheme + "//" + parsed.host === window.location.protocol + "//" + window.location.host;
  }

  // Appends the affinity parameter (when the id is known) and the tab key parameter, each unless
  // the URL has it already, without re-encoding the parameters already there. Returns null when
  // the URL must be left alone. A WebSocket URL given relative or as http(s): is written out as
  // ws(s):, which every browser accepts.
  function urlWithAffinity(url, forSocket) {
    var parsed = resolve(url);
    if (!isSameOrigin(parsed)) {
      return null;
    }
    var pairs = [];
    if (state.id && !parsed.searchParams.has(QUERY)) {
      pairs.push(encodeURIComponent(QUERY) + "=" + encodeURIComponent(state.id));
    }
    if (!parsed.searchParams.has(TAB_QUERY)) {
      pairs.push(encodeURIComponent(TAB_QUERY) + "=" + encodeURIComponent(TAB));
    }
    if (pairs.length === 0) {
      return null;
    }
    if (forSocket && parsed.protocol === "http:") {
      parsed.protocol = "ws:";
    } else if (forSocket && parsed.protocol === "https:") {
      parsed.protocol = "wss:";
    }
    var added = pairs.join("&");
    // `search` is "" for both "no query" and a bare "?".
    parsed.search = parsed.search ? parsed.search + "&" + added : "?" + added;
    return parsed.href;
  }

  // ---- retirement ------------------------------------------------------------------------------

  function isStaleStatus(status) {
    return STALE_STATUSES[status] === true;
  }

  function retiredSignal(status, text) {
    if (!isStaleStatus(status) || typeof text !== "string") {
      return null;
    }
    var body;
    try {
      body = JSON.parse(text);
    } catch (e) {
      return null;
    }
    return body && typeof body === "object" && body.error === RETIRED_ERROR ? body : null;
  }

  function stale(body, url) {
    if (state.staleFired) {
      return;
    }
    state.staleFired = true;
    var detail = {
      retired: typeof body.retired === "string" ? body.retired : state.id,
      current: typeof body.current === "string" ? body.current : null,
      message: typeof body.message === "string" ? body.message : null,
      url: url,
    };
    var event = new CustomEvent(STALE_EVENT, { cancelable: true, detail: detail });
    if (!window.dispatchEvent(event)) {
      return;
    }
    // A page that comes back still naming the version it was reloaded away from (an HTML copy
    // cached somewhere on the way) would reload forever; the second time, stop and say why.
    if (reloadedAwayFrom(detail.retired)) {
      if (window.console) {
        console.warn(
          "flotilla: version " + detail.retired + " is retired, and reloading brought it back " +
            "(a cached copy of the page?); not reloading again"
        );
      }
      return;
    }
    try {
      window.sessionStorage.setItem(
        RELOAD_KEY,
        JSON.stringify({ retired: detail.retired, at: Date.now() })
      );
    } catch (e) {
      // Without storage there is no loop guard; the reload is still the right default.
    }
    setId(null, null);
    window.location.reload();
  }

  function reloadedAwayFrom(retired) {
    try {
      var last = JSON.parse(window.sessionStorage.getItem(RELOAD_KEY) || "null");
      return !!last && last.retired === retired && Date.now() - last.at < RELOAD_LOOP_MS;
    } catch (e) {
      return false;
    }
  }

  // Learns the id from a response when the page has none yet. A stale answer names a retired
  // version, which is never worth learning.
  function learn(status, headerValue) {
    if (!isStaleStatus(status) && !state.id) {
      var id = nonEmpty(headerValue);
      if (id) {
        setId(id, "response");
      }
    }
  }

  // ---- fetch -----------------------------------------------------------------------------------

  var nativeFetch = window.fetch;
  if (typeof nativeFetch === "function") {
    var wrappedFetch = function fetch(input, init) {
      var url = input instanceof Request ? input.url : input;
      var parsed = resolve(url);
      if (!isSameOrigin(parsed)) {
        return nativeFetch.apply(window, arguments);
      }
      var request;
      try {
        // Building the Request the way fetch itself would keeps every init member and body as
        // given; the header is only added when the request does not already carry one.
        request = new Request(input, init);
        if (state.id && !request.headers.has(HEADER)) {
          request.headers.set(HEADER, state.id);
        }
        if (!request.headers.has(TAB_HEADER)) {
          request.headers.set(TAB_HEADER, TAB);
        }
      } catch (error) {
        return Promise.reject(error);
      }
      return nativeFetch.call(window, request).then(function (response) {
        learn(response.status, response.headers.get(HEADER));
        if (isStaleStatus(response.status) && !state.staleFired) {
          var status = response.status;
          response
            .clone()
            .text()
            .then(function (text) {
              var body = retiredSignal(status, text);
              if (body) {
                stale(body, request.url);
              }
            })
            .catch(function () {});
        }
        return response;
      });
    };
    window.fetch = wrappedFetch;
  }

  // ---- XMLHttpRequest --------------------------------------------------------------------------

  var XHR = window.XMLHttpRequest;
  if (typeof XHR === "function") {
    var pending = new WeakMap();
    var proto = XHR.prototype;
    var nativeOpen = proto.open;
    var nativeSetRequestHeader = proto.setRequestHeader;
    var nativeSend = proto.send;

    var xhrBodyText = function (xhr, done) {
      try {
        switch (xhr.responseType) {
          case "":
          case "text":
            done(xhr.responseText);
            return;
          case "json":
            done(xhr.response === null ? null : JSON.stringify(xhr.response));
            return;
          case "arraybuffer":
            done(xhr.response ? new TextDecoder().decode(xhr.response) : null);
            return;
          case "blob":
            if (xhr.response) {
              xhr.response.text().then(done, function () {});
            }
            return;
          default:
            return;
        }
      } catch (e) {
        // An unreadable body is simply not a retirement signal.
      }
    };

    var onXhrDone = function () {
      var xhr = this;
      var info = pending.get(xhr);
      if (!info || !info.sameOrigin || xhr.readyState !== 4) {
        return;
      }
      learn(xhr.status, xhr.getResponseHeader(HEADER));
      if (isStaleStatus(xhr.status) && !state.staleFired) {
        var status = xhr.status;
        xhrBodyText(xhr, function (text) {
          var body = retiredSignal(status, text);
          if (body) {
            stale(body, info.url);
          }
        });
      }
    };

    proto.open = function open(method, url) {
      var parsed = resolve(url);
      pending.set(this, {
        sameOrigin: isSameOrigin(parsed),
        url: parsed ? parsed.href : String(url),
        explicit: false,
        explicitTab: false,
        listening: pending.has(this) && pending.get(this).listening,
      });
      return nativeOpen.apply(this, arguments);
    };

    proto.setRequestHeader = function setRequestHeader(name, value) {
      var info = pending.get(this);
      var lower = String(name).toLowerCase();
      if (info && lower === HEADER_LOWER) {
        info.explicit = true;
      }
      if (info && lower === TAB_HEADER_LOWER) {
        info.explicitTab = true;
      }
      return nativeSetRequestHeader.apply(this, arguments);
    };

    proto.send = function send() {
      var info = pending.get(this);
      if (info && info.sameOrigin) {
        try {
          if (state.id && !info.explicit) {
            nativeSetRequestHeader.call(this, HEADER, state.id);
          }
          if (!info.explicitTab) {
            nativeSetRequestHeader.call(this, TAB_HEADER, TAB);
          }
        } catch (e) {
          // Not OPENED (the native send will throw its own error); leave it to that.
        }
        if (!info.listening) {
          info.listening = true;
          this.addEventListener("loadend", onXhrDone);
        }
      }
      return nativeSend.apply(this, arguments);
    };
  }

  // ---- WebSocket and EventSource ---------------------------------------------------------------

  // A WebSocket or EventSource answered 410 cannot tell scripts so; ask with a plain request.
  // GET, not HEAD, because a HEAD answer has no body to carry the retirement JSON; the page's own
  // URL, because it is safe to GET and never opens a stream; aborted as soon as the status shows
  // the version is alive, so a live version sends little more than headers.
  function probe() {
    if (state.staleFired || !state.id) {
      return;
    }
    // Too soon after the last probe: probe once more when the interval is over, so the latest
    // failure is always looked into (the one before may have been an ordinary network blip).
    var wait = state.lastProbe + PROBE_INTERVAL_MS - Date.now();
    if (wait > 0) {
      if (!state.probeTimer) {
        state.probeTimer = setTimeout(function () {
          state.probeTimer = null;
          probe();
        }, wait);
      }
      return;
    }
    state.lastProbe = Date.now();
    var controller = typeof AbortController === "function" ? new AbortController() : null;
    var target = window.location.href.split("#")[0];
    window
      .fetch(target, { cache: "no-store", signal: controller ? controller.signal : undefined })
      .then(function (response) {
        if (!isStaleStatus(response.status) && controller) {
          controller.abort();
        }
      })
      .catch(function () {});
  }

  var NativeWebSocket = window.WebSocket;
  if (typeof NativeWebSocket === "function") {
    // A subclass keeps `instanceof`, the static constants and app subclasses working.
    var WrappedWebSocket = class WebSocket extends NativeWebSocket {
      constructor(url, protocols) {
        var pinned = urlWithAffinity(url, true);
        var target = pinned || url;
        if (arguments.length > 1) {
          super(target, protocols);
        } else {
          super(target);
        }
        if (pinned || isSameOrigin(resolve(url))) {
          var opened = false;
          this.addEventListener("open", function () {
            opened = true;
          });
          var socketUrl = pinned || String(url);
          this.addEventListener("close", function (event) {
            if (event.code === STALE_CLOSE_CODE) {
              stale({ retired: state.id, current: null, message: event.reason || null }, socketUrl);
            } else if (!opened || event.code === 1006) {
              probe();
            }
          });
        }
      }
    };
    window.WebSocket = WrappedWebSocket;
  }

  var NativeEventSource = window.EventSource;
  if (typeof NativeEventSource === "function") {
    var WrappedEventSource = class EventSource extends NativeEventSource {
      constructor(url, init) {
        var pinned = urlWithAffinity(url, false);
        if (arguments.length > 1) {
          super(pinned || url, init);
        } else {
          super(pinned || url);
        }
        if (pinned || isSameOrigin(resolve(url))) {
          var source = this;
          this.addEventListener("error", function () {
            if (source.readyState === NativeEventSource.CLOSED) {
              probe();
            }
          });
        }
      }
    };
    window.EventSource = WrappedEventSource;
  }

  // ---- API -------------------------------------------------------------------------------------

  Object.defineProperty(window, INSTALLED, {
    value: {
      adopt: function (id) {
        if (!state.declared) {
          declare(id, "script");
        }
      },
    },
    enumerable: false,
    configurable: false,
    writable: false,
  });

  window.flotilla = Object.freeze({
    deploymentId: function () {
      return state.id;
    },
    source: function () {
      return state.source;
    },
    tabKey: function () {
      return TAB;
    },
    header: HEADER,
    query: QUERY,
    tabHeader: TAB_HEADER,
    tabQuery: TAB_QUERY,
    withAffinity: function (url) {
      return urlWithAffinity(url, false) || String(url);
    },
  });
})();
