//! Istio's MeshConfig (`istio-system/istio`, key `mesh`) as [`MeshSettings`].

use crate::istio;
use crate::routing::convert::{self, Problems};
use crate::settings::{AccessLogOutput, MeshSettings, OutboundTrafficPolicy};

/// Istio's MeshConfig as [`MeshSettings`]; `field` prefixes the paths in errors (e.g.
/// `data.mesh`).
pub fn mesh_settings(
    config: &istio::MeshConfig,
    field: &str,
) -> Result<MeshSettings, Vec<(String, String)>> {
    let mut p = Problems::default();
    let outbound_traffic_policy = match config
        .outbound_traffic_policy
        .as_ref()
        .and_then(|o| o.mode.as_deref())
    {
        None | Some("ALLOW_ANY") => OutboundTrafficPolicy::AllowAny,
        Some("REGISTRY_ONLY") => OutboundTrafficPolicy::RegistryOnly,
        Some(other) => {
            p.add(
                format!("{field}.outboundTrafficPolicy.mode"),
                format!("unknown mode {other:?}: expected ALLOW_ANY or REGISTRY_ONLY"),
            );
            OutboundTrafficPolicy::AllowAny
        }
    };
    let protocol_detection_timeout = convert::opt_duration(
        &mut p,
        &format!("{field}.protocolDetectionTimeout"),
        config.protocol_detection_timeout.as_ref(),
    );
    let access_log = match config.access_log_file.as_deref() {
        None | Some("/dev/stdout") => AccessLogOutput::Stdout,
        Some("") => AccessLogOutput::Off,
        Some(other) => {
            p.add(
                format!("{field}.accessLogFile"),
                format!(
                    "{other:?}: shunt writes its access log to the node proxy's stdout only: \
                     use \"/dev/stdout\", or \"\" to turn it off"
                ),
            );
            AccessLogOutput::Stdout
        }
    };
    if p.is_empty() {
        Ok(MeshSettings {
            outbound_traffic_policy,
            protocol_detection_timeout,
            access_log,
        })
    } else {
        Err(p.list)
    }
}
