//! The `tracing` subscriber both binaries install.

/// Installs the global subscriber: human-readable lines on stderr, or one JSON
/// object per line when `SWITCHYARD_LOG_FORMAT=json`. The level comes from
/// `RUST_LOG` (default `info`).
pub fn init(component: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("SWITCHYARD_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if result.is_ok() {
        tracing::debug!(component, "logging initialised");
    }
}
