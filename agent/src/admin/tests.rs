use std::path::Path;

use super::client::{self, AdminClient};
use super::*;
use crate::capture::CaptureOptions;

const CONFIG: &str = "
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
status: {podIP: 10.0.0.5}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: http}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec: {hosts: [web]}
";

fn workload() -> api::Workload {
    api::Workload {
        namespace: "shop".into(),
        name: "web".into(),
        uid: "shop/web".into(),
        ip: Some("10.0.0.5".parse().unwrap()),
        captured: false,
        reason: "not opted in".into(),
        netns: None,
        netns_cookie: None,
        proxy: "n/a".into(),
    }
}

/// An admin server over a capture that is already uninstalled (nothing eBPF is needed).
struct Admin {
    _dir: tempfile::TempDir,
    client: AdminClient,
    shutdown: CancellationToken,
}

async fn start() -> Admin {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("config");
    std::fs::create_dir(&config_dir).unwrap();
    std::fs::write(config_dir.join("node.yaml"), CONFIG).unwrap();
    let snapshot = Snapshot::load(&config_dir).unwrap();
    let (_, config) = watch::channel(Arc::new(snapshot));
    let (_, node) = watch::channel(NodeView {
        proxy: api::ProxyStatus {
            connected: true,
            pid: Some(9),
        },
        workloads: vec![workload()],
    });
    let context = Arc::new(AdminContext {
        capture: SharedCapture::uninstalled(),
        installed: Installed {
            ebpf: CaptureOptions {
                instance: "test".into(),
                bpffs: None,
                cgroup: None,
                sockmap_shortcut: true,
            },
            iptables_records: dir.path().join("iptables"),
        },
        config,
        node,
        uninstalled: CancellationToken::new(),
    });
    let socket = dir.path().join("admin.sock");
    let server = AdminServer::bind(&socket).unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(server.run(context, shutdown.clone()));
    Admin {
        client: AdminClient::new(&socket, None),
        _dir: dir,
        shutdown,
    }
}

#[tokio::test]
async fn workloads_and_config_are_served_as_json() {
    let admin = start().await;
    let workloads: Vec<api::Workload> = admin.client.get("/workloads").await.unwrap();
    assert_eq!(workloads, vec![workload()]);

    let dump: api::ConfigDump = admin.client.get("/config").await.unwrap();
    assert_eq!(dump.config.pods.len(), 1);
    assert_eq!(
        dump.config.services.len(),
        0,
        "the bad Service is not loaded"
    );
    assert_eq!(dump.config.istio[0].object["kind"], "VirtualService");
    let errors: Vec<_> = dump.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        vec![format!(
            "{}: Service shop/web: spec.ports[0].port: expected an integer 1-65535, got \"http\"",
            dump.dir.join("node.yaml").display()
        )]
    );
    admin.shutdown.cancel();
}

#[tokio::test]
async fn errors_are_json_with_a_status_that_fits() {
    let admin = start().await;
    let cases = [
        (
            Method::GET,
            "/status",
            503,
            "capture was uninstalled; the agent is stopping",
        ),
        (
            Method::GET,
            "/maps/MESHED_NETNS",
            503,
            "capture was uninstalled; the agent is stopping",
        ),
        (
            Method::POST,
            "/uninstall",
            503,
            "capture was uninstalled; the agent is stopping",
        ),
        (
            Method::POST,
            "/workloads",
            405,
            "/workloads takes GET, not POST",
        ),
        (
            Method::GET,
            "/uninstall",
            405,
            "/uninstall takes POST, not GET",
        ),
        (
            Method::GET,
            "/nope",
            404,
            "no such endpoint GET /nope; there are GET /status, GET /workloads, GET /config, \
             GET /maps/<NAME> and POST /uninstall",
        ),
    ];
    for (method, path, status, message) in cases {
        let result = if method == Method::GET {
            admin.client.get::<serde_json::Value>(path).await
        } else {
            admin.client.post::<serde_json::Value>(path).await
        };
        match result {
            Err(client::Error::Refused {
                status: got,
                message: got_message,
            }) => {
                assert_eq!(
                    (got.as_u16(), got_message.as_str()),
                    (status, message),
                    "{method} {path}"
                );
            }
            other => panic!("{method} {path}: {other:?}"),
        }
    }
    admin.shutdown.cancel();
}

#[tokio::test]
async fn a_missing_agent_is_named_with_its_instance() {
    let socket = Path::new("/nonexistent/shunt/admin.sock");
    let err = AdminClient::new(socket, Some("blue"))
        .get::<serde_json::Value>("/status")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no agent at /nonexistent/shunt/admin.sock: is shunt-agent running with --instance blue?"
    );
}
