//! HTTP/2 PINGs on an HBONE connection, both sides.

use super::Settings;

/// PINGs the peer every `ping_interval`; resolves when one is unanswered for `ping_timeout`
/// or fails (the caller then closes the connection).
pub(super) async fn keepalive(ping: Option<h2::PingPong>, settings: Settings) {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(settings.ping_interval).await;
        match tokio::time::timeout(settings.ping_timeout, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::debug!(%error, "HBONE PING failed");
                return;
            }
            Err(_) => return,
        }
    }
}

