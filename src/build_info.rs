//! What this build is: its version, git commit and build date (set by `build.rs`), as
//! `ticketgate --version`, `GET /api/nodes` and the console show them, so that a rolling
//! deploy's mixed versions are visible.

/// The crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit built (12 hex digits), or `unknown` outside a checkout.
pub const COMMIT: &str = env!("TICKETGATE_COMMIT");
/// The build date, YYYY-MM-DD (UTC).
pub const BUILD_DATE: &str = env!("TICKETGATE_BUILD_DATE");
/// `--version`'s text after the command's name.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TICKETGATE_COMMIT"),
    ", built ",
    env!("TICKETGATE_BUILD_DATE"),
    ")"
);
