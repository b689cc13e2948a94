//! The HTTP/2 settings of HBONE connections (the why is in the module docs of `hbone`).

use std::time::Duration;

/// HTTP/2 settings of HBONE connections (see the module docs for the why).
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub stream_window: u32,
    pub connection_window: u32,
    pub max_frame_size: u32,
    pub max_streams_per_connection: u32,
    pub server_max_streams: u32,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub idle_timeout: Duration,
}

/// ztunnel's defaults.
pub const SETTINGS: Settings = Settings {
    stream_window: 4 * 1024 * 1024,
    connection_window: 16 * 1024 * 1024,
    max_frame_size: 1024 * 1024,
    max_streams_per_connection: 100,
    server_max_streams: 200,
    ping_interval: Duration::from_secs(10),
    ping_timeout: Duration::from_secs(20),
    idle_timeout: Duration::from_secs(5 * 60),
};

