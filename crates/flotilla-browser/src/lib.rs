//! Drives headless Chromium from tests: launch it through chromedriver, open tabs, run
//! JavaScript, wait for conditions, take screenshots, and clean every process up afterwards.
//!
//! Modules:
//! - `browser`: [`Browser`] (one Chromium with its own chromedriver and profile) and [`Tab`].
//! - `process`: chromedriver as a child on a free loopback port, and the guard that kills it and
//!   everything it started, by PID, when the browser is dropped.
//! - `image`: side-by-side composition of screenshots for [`Browser::screenshot_tabs`].
//! - `artifacts`: where tests save screenshots ([`artifacts_dir`], `test-artifacts/`).
//! - `error`: [`BrowserError`].
//!
//! Chromium and chromedriver come from Debian's `chromium` and `chromium-driver` packages,
//! installed by `scripts/install-browser.sh`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), flotilla_browser::BrowserError> {
//! use std::time::Duration;
//! let browser = flotilla_browser::Browser::launch().await?;
//! let a = browser.first_tab();
//! a.goto("http://127.0.0.1:8080/").await?;
//! let b = browser.new_tab().await?;
//! b.goto("http://127.0.0.1:8080/").await?;
//! let id = a.eval("return window.flotilla.deploymentId();").await?;
//! let echoed = a.eval_async("const r = await fetch('/echo'); return await r.json();").await?;
//! a.wait_for("the socket to open", "return window.socketOpen === true;", Duration::from_secs(5))
//!     .await?;
//! let shot = flotilla_browser::artifact_path("two-tabs.png")?;
//! browser.screenshot_tabs(&[&a, &b], &shot).await?;
//! browser.close().await?;
//! # let _ = (id, echoed);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod artifacts;
mod browser;
mod error;
mod image;
mod process;

pub use artifacts::{artifact_path, artifacts_dir};
pub use browser::{Browser, BrowserConfig, CHROMIUM_FLAGS, Tab};
pub use error::BrowserError;
pub use process::is_alive;
