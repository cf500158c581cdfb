//! One module per subcommand; each exposes an async `run`. [`client`] is the one place a command
//! makes its collector client.
pub mod admin;
pub mod agent;
pub mod collector;
pub mod consume;
pub mod kafka;
pub mod metrics;
pub mod processor;
pub mod produce;
pub mod tap;
pub mod top;

/// The environment variable that sets every collector request's deadline (default 30 s).
pub const REQUEST_TIMEOUT_ENV: &str = "FERRY_REQUEST_TIMEOUT";

/// A client for the collector at `url` (`http://` or `https://`) with `security`'s CA, client
/// certificate and token, and the request timeout of `FERRY_REQUEST_TIMEOUT` (e.g. `5s`) or the
/// default. A bad URL, unreadable certificate or bad timeout is a usage error.
pub fn client(
    url: &str,
    security: &ferry_core::security::ClientSecurity,
) -> anyhow::Result<ferry_core::client::CollectorClient> {
    use crate::cli::UsageError;
    let c = ferry_core::client::CollectorClient::with_security(url, security)
        .map_err(|e| UsageError(e.to_string()))?;
    Ok(match std::env::var(REQUEST_TIMEOUT_ENV) {
        Ok(v) => {
            let d: ferry_core::config::Duration = v
                .parse()
                .map_err(|e| UsageError(format!("{REQUEST_TIMEOUT_ENV}: {e}")))?;
            c.with_timeout(d.get())
        }
        Err(_) => c,
    })
}
