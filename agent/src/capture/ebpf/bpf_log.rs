//! The programs' aya-log output (`shunt-agent --bpf-log LEVEL`): the level they report at,
//! which lives in `SETTINGS` (so programs adopted from an earlier agent follow this one's), and
//! their ring buffer, `AYA_LOGS`. `crate::bpf_log` forwards the records to the agent's log.

use aya::Ebpf;
use aya::maps::{Array, MapData};
use aya_log::EbpfLogger;
use shunt_common::{
    LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_OFF, LOG_TRACE, LOG_WARN, Settings, map_names,
};

use super::Error;

/// How much the programs report. Off by default: then each log site costs the programs one
/// array lookup and a branch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum BpfLogLevel {
    #[default]
    Off,
    /// Failed map inserts (a full map), a connection sk_lookup could not steer.
    Error,
    /// And: refused direct connections to 15001/15006, an original destination the proxy
    /// asked for and capture did not have.
    Warn,
    /// And: shortcut fallbacks to the TCP stack, splices whose far socket is gone.
    Info,
    /// And: original-destination questions about sockets that were never captured.
    Debug,
    Trace,
}

impl BpfLogLevel {
    /// `Settings::log_level`.
    #[must_use]
    pub const fn settings_value(self) -> u32 {
        match self {
            Self::Off => LOG_OFF,
            Self::Error => LOG_ERROR,
            Self::Warn => LOG_WARN,
            Self::Info => LOG_INFO,
            Self::Debug => LOG_DEBUG,
            Self::Trace => LOG_TRACE,
        }
    }
}

/// See `EbpfCapture::start_bpf_log`.
pub fn start<L: log::Log>(
    ebpf: &mut Ebpf,
    level: BpfLogLevel,
    logger: L,
) -> Result<Option<EbpfLogger<L>>, Error> {
    {
        const NAME: &str = map_names::SETTINGS;
        let map = ebpf.map_mut(NAME).ok_or(Error::MissingMap { map: NAME })?;
        let mut settings: Array<&mut MapData, Settings> =
            Array::try_from(map).map_err(|error| map_error(NAME, "opening", error))?;
        let mut current = settings
            .get(&0, 0)
            .map_err(|error| map_error(NAME, "reading", error))?;
        current.log_level = level.settings_value();
        settings
            .set(0, &current, 0)
            .map_err(|error| map_error(NAME, "writing", error))?;
    }
    if level == BpfLogLevel::Off {
        return Ok(None);
    }
    EbpfLogger::init_with_logger(ebpf, logger)
        .map(Some)
        .map_err(|error| Error::BpfLog {
            error: Box::new(error),
        })
}

fn map_error(map: &'static str, action: &'static str, error: aya::maps::MapError) -> Error {
    Error::Map {
        map,
        action,
        error: Box::new(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_aya_logs_own_and_ordered() {
        let cases = [
            (BpfLogLevel::Off, LOG_OFF),
            (BpfLogLevel::Error, aya_log::Level::Error as u32),
            (BpfLogLevel::Warn, aya_log::Level::Warn as u32),
            (BpfLogLevel::Info, aya_log::Level::Info as u32),
            (BpfLogLevel::Debug, aya_log::Level::Debug as u32),
            (BpfLogLevel::Trace, aya_log::Level::Trace as u32),
        ];
        for window in cases.windows(2) {
            assert!(window[0].1 < window[1].1, "{window:?}");
        }
        for (level, value) in cases {
            assert_eq!(level.settings_value(), value, "{level:?}");
        }
    }
}
