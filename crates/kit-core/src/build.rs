//! Which build this process is: the version instances register with unless
//! told otherwise (`--version`). The binary sets it once at start (the crate
//! version and the git commit it was built from, baked in by its build
//! script); a library used on its own reports the crate version.
use std::sync::OnceLock;

static VERSION: OnceLock<&'static str> = OnceLock::new();

/// Sets the build version; the first call wins.
pub fn set_version(version: &'static str) {
    let _ = VERSION.set(version);
}

/// The build version: `0.1.0+1a2b3c4d5e6f`, or the crate version if unset.
pub fn version() -> &'static str {
    VERSION.get().copied().unwrap_or(env!("CARGO_PKG_VERSION"))
}
