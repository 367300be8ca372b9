//! Where the library crates' `tracing` events go: stderr, filtered by `VMK_LOG`. The setup
//! lives here, in the one binary that needs it, so that no library crate (nor vmk-base, which
//! has no dependencies) pulls in tracing-subscriber.

use tracing_subscriber::EnvFilter;

/// The environment variable that holds the filter (tracing-subscriber's `EnvFilter` syntax:
/// `warn`, `debug`, `info,vmk_host=debug`).
pub const LOG_ENV: &str = "VMK_LOG";
/// Without `VMK_LOG`: what the libraries printed before they logged (lifecycle, warnings).
const DEFAULT: &str = "info";

/// The filter for `value` (VMK_LOG), and a warning for the person when it does not parse.
fn filter(value: Option<&str>) -> (EnvFilter, Option<String>) {
    match value {
        None => (EnvFilter::new(DEFAULT), None),
        Some(v) => match EnvFilter::try_new(v) {
            Ok(f) => (f, None),
            Err(e) => (
                EnvFilter::new(DEFAULT),
                Some(format!(
                    "{LOG_ENV}={v:?} is not a log filter ({e}); using {DEFAULT}"
                )),
            ),
        },
    }
}

/// Installs the subscriber. The daemon's (`daemon`) lines carry the time and the module, as
/// a service log; other commands' lines only the level, as notes to whoever ran them.
pub fn init(daemon: bool) {
    let value = std::env::var(LOG_ENV).ok();
    let (filter, warning) = filter(value.as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Only fails if a subscriber is already set: then that one logs.
    let _ = if daemon {
        builder.try_init()
    } else {
        builder.without_time().with_target(false).try_init()
    };
    if let Some(w) = warning {
        eprintln!("vmk: warning: {w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_from_the_environment() {
        assert_eq!(filter(None).0.to_string(), "info");
        let (f, w) = filter(Some("warn,vmk_host=debug"));
        assert_eq!((f.to_string().as_str(), w), ("vmk_host=debug,warn", None));
        let (f, w) = filter(Some("vmk_host=[bad"));
        assert_eq!(f.to_string(), "info");
        assert!(w.is_some_and(|w| w.contains("VMK_LOG")));
    }
}
