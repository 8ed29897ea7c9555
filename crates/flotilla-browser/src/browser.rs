//! The browser and its tabs: headless Chromium launched through chromedriver, tabs that can be
//! opened and used in any order, JavaScript evaluation, bounded waits and screenshots.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::wd::{Capabilities, TimeoutConfiguration, WindowHandle};
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::sync::{Mutex, MutexGuard};
use tokio::time::Instant;

use crate::error::BrowserError;
use crate::image;
use crate::process::DriverProcess;

/// The Chromium flags every browser of this crate gets: headless, no sandbox (tests run as root in
/// containers), and nothing that reaches out to the network on its own (no QUIC, no background
/// updates, no sync), so the only traffic is the test's.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// How often [`Tab::wait_for`] re-evaluates its condition.
const POLL: Duration = Duration::from_millis(50);

/// Where to find the programs, and the limits that keep a test bounded.
#[derive(Debug, Clone)]
pub struct BrowserConfig {
    /// The Chromium executable. Default: `$FLOTILLA_CHROMIUM`, else Debian's real binary
    /// `/usr/lib/chromium/chromium` (skipping the `/usr/bin/chromium` shell wrapper, which adds
    /// flags from `/etc/chromium.d` and an extra process), else `/usr/bin/chromium`.
    pub chromium: PathBuf,
    /// The chromedriver executable. Default: `$FLOTILLA_CHROMEDRIVER`, else `/usr/bin/chromedriver`.
    pub chromedriver: PathBuf,
    /// Viewport size of every tab, in CSS pixels. Default 1024x768.
    pub window_size: (u32, u32),
    /// Longest wait for chromedriver to be ready and for Chromium to open. Default 60 s (a loaded
    /// 2-core machine can be slow to start Chromium; an idle one takes about a second).
    pub start_timeout: Duration,
    /// Longest a single script may run. Default 30 s.
    pub script_timeout: Duration,
    /// Longest a navigation may take to load. Default 30 s.
    pub page_load_timeout: Duration,
    /// Flags added after [`CHROMIUM_FLAGS`], the profile directory and the window size.
    pub extra_args: Vec<String>,
}

impl Default for BrowserConfig {
    fn default() -> Self {
        BrowserConfig {
            chromium: env_path("FLOTILLA_CHROMIUM").unwrap_or_else(default_chromium),
            chromedriver: env_path("FLOTILLA_CHROMEDRIVER")
                .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver")),
            window_size: (1024, 768),
            start_timeout: Duration::from_secs(60),
            script_timeout: Duration::from_secs(30),
            page_load_timeout: Duration::from_secs(30),
            extra_args: Vec::new(),
        }
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn default_chromium() -> PathBuf {
    let real = Path::new("/usr/lib/chromium/chromium");
    if real.is_file() {
        real.to_path_buf()
    } else {
        PathBuf::from("/usr/bin/chromium")
    }
}

/// State shared by a browser and its tabs.
struct Shared {
    client: Client,
    /// The tab WebDriver commands currently go to. WebDriver has one current window per session,
    /// so every tab operation takes this lock, switches if needed, and runs its command.
    focused: Mutex<Option<WindowHandle>>,
}

/// A headless Chromium driven through its own chromedriver.
///
/// Dropping it kills chromedriver, Chromium and every helper process they started (found by PID:
/// descendants of chromedriver, and processes naming this browser's private profile directory),
/// then deletes the profile. [`Browser::close`] ends the session politely first.
pub struct Browser {
    shared: Arc<Shared>,
    first: WindowHandle,
    // Field order is drop order: the processes die before their profile directory is removed.
    driver: DriverProcess,
    workdir: tempfile::TempDir,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("webdriver", &self.driver.url())
            .field("workdir", &self.workdir.path())
            .finish_non_exhaustive()
    }
}

impl Browser {
    /// Launches a browser with [`BrowserConfig::default`].
    pub async fn launch() -> Result<Browser, BrowserError> {
        Browser::launch_with(BrowserConfig::default()).await
    }

    /// Launches chromedriver on a free loopback port and opens a Chromium session through it,
    /// with a fresh profile in a temporary directory.
    pub async fn launch_with(config: BrowserConfig) -> Result<Browser, BrowserError> {
        for (what, path) in [
            ("chromium", &config.chromium),
            ("chromedriver", &config.chromedriver),
        ] {
            if !path.is_file() {
                return Err(BrowserError::MissingBinary {
                    what,
                    path: path.clone(),
                });
            }
        }
        let workdir = tempfile::Builder::new()
            .prefix("flotilla-browser-")
            .tempdir()
            .map_err(|source| BrowserError::Io {
                action: "create browser work directory in",
                path: std::env::temp_dir(),
                source,
            })?;
        let profile = workdir.path().join("profile");
        std::fs::create_dir(&profile).map_err(|source| BrowserError::Io {
            action: "create profile directory",
            path: profile.clone(),
            source,
        })?;

        let driver = {
            let chromedriver = config.chromedriver.clone();
            let dir = workdir.path().to_path_buf();
            let marker = profile.display().to_string();
            let timeout = config.start_timeout;
            tokio::task::spawn_blocking(move || {
                DriverProcess::start(&chromedriver, &dir, marker, timeout)
            })
            .await
            .map_err(|e| BrowserError::DriverStart {
                reason: format!("the start-up task failed: {e}"),
                log_tail: String::new(),
            })??
        };

        let capabilities = capabilities(&config, &profile);
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities);
        let webdriver = driver.url();
        let client =
            match tokio::time::timeout(config.start_timeout, builder.connect(&webdriver)).await {
                Ok(Ok(client)) => client,
                Ok(Err(source)) => {
                    return Err(BrowserError::Session {
                        source,
                        log_tail: driver.log_tail(),
                    });
                }
                Err(_) => {
                    return Err(BrowserError::DriverStart {
                        reason: format!("Chromium did not open within {:?}", config.start_timeout),
                        log_tail: driver.log_tail(),
                    });
                }
            };
        client
            .update_timeouts(TimeoutConfiguration::new(
                Some(config.script_timeout),
                Some(config.page_load_timeout),
                Some(Duration::ZERO),
            ))
            .await
            .map_err(BrowserError::command("set timeouts"))?;
        let first = client
            .window()
            .await
            .map_err(BrowserError::command("get current tab"))?;
        let shared = Arc::new(Shared {
            client,
            focused: Mutex::new(Some(first.clone())),
        });
        Ok(Browser {
            shared,
            first,
            driver,
            workdir,
        })
    }

    /// The tab the browser opened with.
    pub fn first_tab(&self) -> Tab {
        Tab {
            shared: Arc::clone(&self.shared),
            handle: self.first.clone(),
        }
    }

    /// Opens a new, blank tab. It does not take the focus until it is used.
    pub async fn new_tab(&self) -> Result<Tab, BrowserError> {
        let created = self
            .shared
            .client
            .new_window(true)
            .await
            .map_err(BrowserError::command("open new tab"))?;
        Ok(Tab {
            shared: Arc::clone(&self.shared),
            handle: created.handle,
        })
    }

    /// Screenshots `tabs` and writes them side by side, left to right, as one PNG at `path`
    /// (parent directories are created).
    pub async fn screenshot_tabs(&self, tabs: &[&Tab], path: &Path) -> Result<(), BrowserError> {
        let mut images = Vec::with_capacity(tabs.len());
        for tab in tabs {
            images.push(image::decode(&tab.screenshot_png().await?)?);
        }
        write_file(path, &image::encode(&image::side_by_side(&images))?)
    }

    /// The PIDs of chromedriver and every live process it started; for tests that check cleanup.
    pub fn process_ids(&self) -> Vec<u32> {
        self.driver.process_ids()
    }

    /// The last lines of chromedriver's log, for diagnosing a failure.
    pub fn driver_log_tail(&self) -> String {
        self.driver.log_tail()
    }

    /// Ends the WebDriver session (Chromium exits cleanly), then drops the browser, which kills
    /// whatever is left.
    pub async fn close(self) -> Result<(), BrowserError> {
        let ended = self.shared.client.clone().close().await;
        drop(self);
        ended.map_err(BrowserError::command("end session"))
    }
}

/// The WebDriver capabilities that launch Chromium with this crate's flags and a private profile.
fn capabilities(config: &BrowserConfig, profile: &Path) -> Capabilities {
    let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    args.push(format!(
        "--window-size={},{}",
        config.window_size.0, config.window_size.1
    ));
    args.extend(config.extra_args.iter().cloned());
    let mut caps = Capabilities::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": config.chromium.display().to_string(), "args": args }),
    );
    caps
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), BrowserError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| BrowserError::Io {
            action: "create directory",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(path, bytes).map_err(|source| BrowserError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

/// One tab of a [`Browser`]. Cheap to clone; every method first makes this tab WebDriver's
/// current one, so tabs can be used in any order (commands of different tabs are serialised).
#[derive(Clone)]
pub struct Tab {
    shared: Arc<Shared>,
    handle: WindowHandle,
}

impl std::fmt::Debug for Tab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tab")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

/// Runs an async function body and reports its outcome through WebDriver's async callback.
/// Inside the body, `arguments` are the caller's arguments (the callback is not among them).
const ASYNC_WRAPPER_HEAD: &str = "const __flotillaDone = arguments[arguments.length - 1];\n\
     const __flotillaArgs = Array.prototype.slice.call(arguments, 0, -1);\n\
     (async function () {\n";
const ASYNC_WRAPPER_TAIL: &str = "\n}).apply(null, __flotillaArgs).then(\n\
     (value) => __flotillaDone({ ok: value === undefined ? null : value }),\n\
     (error) => __flotillaDone({ error: String((error && error.stack) || error) }));";

impl Tab {
    async fn focus(&self) -> Result<MutexGuard<'_, Option<WindowHandle>>, BrowserError> {
        let mut focused = self.shared.focused.lock().await;
        if focused.as_ref() != Some(&self.handle) {
            self.shared
                .client
                .switch_to_window(self.handle.clone())
                .await
                .map_err(BrowserError::command("switch to tab"))?;
            *focused = Some(self.handle.clone());
        }
        Ok(focused)
    }

    /// Navigates to `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> Result<(), BrowserError> {
        let _focus = self.focus().await?;
        self.shared
            .client
            .goto(url)
            .await
            .map_err(BrowserError::command("navigate"))
    }

    /// Reloads the page, as the browser's reload button does, and waits for it to load.
    pub async fn reload(&self) -> Result<(), BrowserError> {
        let _focus = self.focus().await?;
        self.shared
            .client
            .refresh()
            .await
            .map_err(BrowserError::command("reload"))
    }

    /// The URL of the page the tab shows.
    pub async fn url(&self) -> Result<String, BrowserError> {
        let _focus = self.focus().await?;
        let url = self
            .shared
            .client
            .current_url()
            .await
            .map_err(BrowserError::command("get url"))?;
        Ok(url.to_string())
    }

    /// Runs `body` as the body of a synchronous function in the page and returns what it
    /// `return`s, as JSON (`null` when it returns nothing).
    pub async fn eval(&self, body: &str) -> Result<Value, BrowserError> {
        self.eval_with(body, Vec::new()).await
    }

    /// Like [`Tab::eval`], with `args` available to the body as `arguments`.
    pub async fn eval_with(&self, body: &str, args: Vec<Value>) -> Result<Value, BrowserError> {
        let _focus = self.focus().await?;
        self.shared
            .client
            .execute(body, args)
            .await
            .map_err(script_error)
    }

    /// Runs `body` as the body of an `async` function in the page, awaits it, and returns what it
    /// `return`s. A thrown error or rejected promise becomes [`BrowserError::Script`].
    pub async fn eval_async(&self, body: &str) -> Result<Value, BrowserError> {
        self.eval_async_with(body, Vec::new()).await
    }

    /// Like [`Tab::eval_async`], with `args` available to the body as `arguments`.
    pub async fn eval_async_with(
        &self,
        body: &str,
        args: Vec<Value>,
    ) -> Result<Value, BrowserError> {
        let script = format!("{ASYNC_WRAPPER_HEAD}{body}{ASYNC_WRAPPER_TAIL}");
        let outcome = {
            let _focus = self.focus().await?;
            self.shared
                .client
                .execute_async(&script, args)
                .await
                .map_err(script_error)?
        };
        async_outcome(outcome)
    }

    /// Re-evaluates `condition` (a synchronous function body, as for [`Tab::eval`]) every 50 ms
    /// until it returns a truthy value, and returns that value. Errors while evaluating (a page
    /// in the middle of navigating, say) count as "not yet". Fails with
    /// [`BrowserError::Timeout`], naming `what` and the last value seen, after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        condition: &str,
        timeout: Duration,
    ) -> Result<Value, BrowserError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now()).max(POLL);
            let last = match tokio::time::timeout(left, self.eval(condition)).await {
                Ok(Ok(value)) if truthy(&value) => return Ok(value),
                Ok(Ok(value)) => value.to_string(),
                Ok(Err(e)) => format!("error: {e}"),
                Err(_) => "the evaluation itself did not finish".into(),
            };
            if Instant::now() >= deadline {
                return Err(BrowserError::Timeout {
                    what: what.to_string(),
                    waited: timeout,
                    last,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `sessionStorage.getItem(key)` in the page.
    pub async fn session_storage(&self, key: &str) -> Result<Option<String>, BrowserError> {
        let value = self
            .eval_with(
                "return window.sessionStorage.getItem(arguments[0]);",
                vec![json!(key)],
            )
            .await?;
        Ok(value.as_str().map(str::to_string))
    }

    /// Names of the cookies the browser holds for the page's URL (as WebDriver sees them, which
    /// includes HttpOnly cookies that `document.cookie` hides).
    pub async fn cookie_names(&self) -> Result<Vec<String>, BrowserError> {
        let _focus = self.focus().await?;
        let cookies = self
            .shared
            .client
            .get_all_cookies()
            .await
            .map_err(BrowserError::command("get cookies"))?;
        Ok(cookies.iter().map(|c| c.name().to_string()).collect())
    }

    /// Deletes every cookie the browser holds for the page's URL (HttpOnly ones included).
    pub async fn delete_cookies(&self) -> Result<(), BrowserError> {
        let _focus = self.focus().await?;
        self.shared
            .client
            .delete_all_cookies()
            .await
            .map_err(BrowserError::command("delete cookies"))
    }

    /// A PNG screenshot of the tab's viewport.
    pub async fn screenshot_png(&self) -> Result<Vec<u8>, BrowserError> {
        let _focus = self.focus().await?;
        self.shared
            .client
            .screenshot()
            .await
            .map_err(BrowserError::command("take screenshot"))
    }

    /// Writes a PNG screenshot of the tab's viewport to `path` (parent directories are created).
    pub async fn screenshot(&self, path: &Path) -> Result<(), BrowserError> {
        write_file(path, &self.screenshot_png().await?)
    }

    /// Closes the tab. Other tabs stay usable.
    pub async fn close(self) -> Result<(), BrowserError> {
        let mut focused = self.focus().await?;
        self.shared
            .client
            .close_window()
            .await
            .map_err(BrowserError::command("close tab"))?;
        *focused = None;
        Ok(())
    }
}

/// JavaScript truthiness of a JSON value.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// A script error reported by the page becomes [`BrowserError::Script`]; anything else is a
/// failed command.
fn script_error(error: fantoccini::error::CmdError) -> BrowserError {
    match error {
        fantoccini::error::CmdError::Standard(e)
            if e.error == fantoccini::error::ErrorStatus::JavascriptError =>
        {
            BrowserError::Script {
                message: e.message.into_owned(),
            }
        }
        other => BrowserError::Command {
            command: "execute script",
            source: other,
        },
    }
}

/// Unpacks what [`ASYNC_WRAPPER_TAIL`] reported.
fn async_outcome(outcome: Value) -> Result<Value, BrowserError> {
    match outcome {
        Value::Object(mut map) => {
            if let Some(value) = map.remove("ok") {
                Ok(value)
            } else if let Some(error) = map.remove("error") {
                Err(BrowserError::Script {
                    message: error
                        .as_str()
                        .map_or_else(|| error.to_string(), str::to_string),
                })
            } else {
                Err(BrowserError::Script {
                    message: format!("unexpected result {map:?}"),
                })
            }
        }
        other => Err(BrowserError::Script {
            message: format!("unexpected result {other}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truthiness_follows_javascript() {
        let check = |value: Value, expected: bool| {
            assert_eq!(truthy(&value), expected, "{value}");
        };
        check(json!(null), false);
        check(json!(false), false);
        check(json!(0), false);
        check(json!(0.0), false);
        check(json!(""), false);
        check(json!(true), true);
        check(json!(2), true);
        check(json!("0"), true);
        check(json!([]), true);
        check(json!({}), true);
    }

    #[test]
    fn async_outcomes() {
        assert_eq!(async_outcome(json!({"ok": 5})).expect("ok"), json!(5));
        assert_eq!(async_outcome(json!({"ok": null})).expect("ok"), json!(null));
        let message = |v: Value| match async_outcome(v) {
            Err(BrowserError::Script { message }) => message,
            other => panic!("expected a script error, got {other:?}"),
        };
        assert_eq!(message(json!({"error": "TypeError: x"})), "TypeError: x");
        assert!(message(json!({"other": 1})).contains("unexpected"));
        assert!(message(json!(3)).contains("unexpected"));
    }

    #[test]
    fn capabilities_carry_the_required_flags_profile_and_binary() {
        let config = BrowserConfig {
            chromium: PathBuf::from("/opt/chromium"),
            extra_args: vec!["--lang=en".into()],
            ..BrowserConfig::default()
        };
        let caps = capabilities(&config, Path::new("/tmp/p"));
        let options = &caps["goog:chromeOptions"];
        assert_eq!(options["binary"], json!("/opt/chromium"));
        let args: Vec<&str> = options["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for flag in CHROMIUM_FLAGS {
            assert!(args.contains(flag), "{flag} missing from {args:?}");
        }
        assert!(args.contains(&"--user-data-dir=/tmp/p"));
        assert!(args.contains(&"--window-size=1024,768"));
        assert_eq!(args.last(), Some(&"--lang=en"));
    }

    #[tokio::test]
    async fn a_missing_chromedriver_says_how_to_install_it() {
        let config = BrowserConfig {
            // Any existing file will do: the check for chromedriver must fail first.
            chromium: PathBuf::from("/bin/sh"),
            chromedriver: PathBuf::from("/nonexistent/chromedriver"),
            ..BrowserConfig::default()
        };
        let error = Browser::launch_with(config).await.expect_err("must fail");
        let text = error.to_string();
        assert!(
            matches!(
                error,
                BrowserError::MissingBinary {
                    what: "chromedriver",
                    ..
                }
            ),
            "{text}"
        );
        assert!(text.contains("/nonexistent/chromedriver"), "{text}");
        assert!(text.contains("scripts/install-browser.sh"), "{text}");
    }
}
