//! `shuntctl status`: the agent's summary, then what its capture mode reports.

use anyhow::Context as _;
use serde::Deserialize as _;
use shunt_api::admin::{CaSource, CaStatus, CaptureReport, Status};
use shunt_api::capture::{Attachment, CaptureMode, CaptureStatus, IptablesStatus};

use crate::output::{self, Output};
use crate::table::{Table, or_dash, yes_no};
use shunt_api::admin_client::AdminClient;

const PATH: &str = "/status";

pub async fn run(agent: &AdminClient, output: Output) -> anyhow::Result<String> {
    let body: serde_json::Value = agent.get(PATH).await?;
    match output {
        Output::Json => Ok(output::json(&body)),
        Output::Table => Ok(status(&decode(body)?)),
    }
}

/// An untagged `CaptureReport` that fails to decode says only that no variant matched, so
/// the report is decoded again as the type `capture_mode` names, for an error naming the field.
fn decode(body: serde_json::Value) -> anyhow::Result<Status> {
    let error = match serde_json::from_value::<Status>(body.clone()) {
        Ok(status) => return Ok(status),
        Err(error) => error,
    };
    let detail = body.get("capture").and_then(|capture| {
        let mode = body
            .get("capture_mode")
            .map_or(Ok(CaptureMode::default()), CaptureMode::deserialize)
            .ok()?;
        let error = match mode {
            CaptureMode::Ebpf => CaptureStatus::deserialize(capture).err(),
            CaptureMode::Iptables => IptablesStatus::deserialize(capture).err(),
        }?;
        Some(anyhow::Error::new(error).context(format!(
            "its capture report does not read as {} capture's",
            mode.name()
        )))
    });
    let error = detail.unwrap_or_else(|| anyhow::Error::new(error));
    Err(error).with_context(|| format!("unexpected answer from {PATH}"))
}

fn status(status: &Status) -> String {
    let mut out = String::new();
    let mut summary = Table::new(&["", ""]);
    let rows = [
        ["instance".into(), status.instance.clone()],
        ["capture".into(), status.capture_mode.name().into()],
        [
            "pin dir".into(),
            or_dash(status.pin_dir.as_ref().map(|p| p.display())),
        ],
        [
            "cgroup".into(),
            or_dash(status.cgroup.as_ref().map(|p| p.display())),
        ],
        [
            "sockmap shortcut".into(),
            if status.sockmap_shortcut { "on" } else { "off" }.into(),
        ],
        [
            "proxy".into(),
            match (status.proxy.connected, status.proxy.pid) {
                (true, Some(pid)) => format!("connected (pid {pid})"),
                (true, None) => "connected".into(),
                (false, Some(pid)) if status.proxy.refused.is_some() => {
                    format!("refused (pid {pid})")
                }
                (false, _) => "not connected".into(),
            },
        ],
    ];
    for row in rows.into_iter().chain(status.ca.iter().flat_map(ca_rows)) {
        summary.row(row.into());
    }
    // The header row of this two-column table is empty: skip it.
    out.extend(summary.render().lines().skip(1).map(|l| format!("{l}\n")));
    // Said in full, apart from the table: it tells the operator what to change.
    if let Some(reason) = &status.proxy.refused {
        out.push_str(&format!("\nproxy refused: {reason}\n"));
    }
    if let Some(ca) = &status.ca {
        if let Some(error) = &ca.error {
            out.push_str(&format!("\nca not serving: {error}\n"));
        }
        if let Some(note) = &ca.note {
            out.push_str(&format!("\nca: {note}\n"));
        }
    }
    match (status.capture_mode, &status.capture) {
        (CaptureMode::Ebpf, CaptureReport::Ebpf(capture)) => ebpf(&mut out, capture),
        (CaptureMode::Iptables, CaptureReport::Iptables(capture)) => iptables(&mut out, capture),
        // Untagged, the report is decoded by its shape alone, which can disagree with the mode.
        (mode, report) => out.push_str(&format!(
            "\ncapture report not shown: capture mode is {} but the report reads as {} \
             capture's (an agent of another version?)\n",
            mode.name(),
            report_mode(report).name()
        )),
    }
    out
}

/// The CA mode's rows of the summary: state, where its key comes from, its roots, the file
/// the proxies read them from.
fn ca_rows(ca: &CaStatus) -> Vec<[String; 2]> {
    let mut state = match (ca.serving, &ca.error) {
        (Some(addr), _) => format!("serving on {addr}"),
        (None, Some(_)) => format!("not serving on {} (see below)", ca.listen),
        (None, None) => format!("starting on {}", ca.listen),
    };
    if ca.allow_unauthenticated {
        state.push_str(", UNAUTHENTICATED: any caller gets any identity");
    }
    let mut rows = vec![["ca".into(), state]];
    if let Some(source) = &ca.source {
        rows.push([
            "ca source".into(),
            match source {
                CaSource::Secret { namespace, name } => format!("Secret {namespace}/{name}"),
                CaSource::SelfSigned { dir } => format!("self-signed root in {}", dir.display()),
            },
        ]);
    }
    for (index, root) in ca.roots.iter().enumerate() {
        rows.push([
            if index == 0 {
                "ca root"
            } else {
                "ca extra root"
            }
            .into(),
            format!(
                "{} (SHA-256 {}), until {}",
                root.subject, root.sha256, root.not_after
            ),
        ]);
    }
    if let Some(file) = &ca.root_file {
        rows.push(["ca root file".into(), file.display().to_string()]);
    }
    rows
}

fn report_mode(report: &CaptureReport) -> CaptureMode {
    match report {
        CaptureReport::Ebpf(_) => CaptureMode::Ebpf,
        CaptureReport::Iptables(_) => CaptureMode::Iptables,
    }
}

/// As in the JSON (`snake_case`), which is what this column always showed.
fn attachment(attachment: Attachment) -> &'static str {
    match attachment {
        Attachment::Attached => "attached",
        Attachment::Adopted => "adopted",
        Attachment::NotAttached => "not_attached",
        Attachment::PerPod => "per_pod",
    }
}

/// eBPF capture: programs, per-pod links, maps, counters, the kernel probe.
fn ebpf(out: &mut String, capture: &CaptureStatus) {
    let mut programs = Table::new(&[
        "PROGRAM",
        "TYPE",
        "ATTACH POINT",
        "ATTACHMENT",
        "LINK",
        "PROG",
        "LINK PIN",
    ]);
    for p in &capture.programs {
        programs.row(vec![
            p.name.to_string(),
            p.program_type.to_string(),
            p.attach_point.clone(),
            attachment(p.attachment).to_owned(),
            or_dash(p.link.map(|l| l.link_id)),
            or_dash(p.link.map(|l| l.program_id)),
            or_dash(p.link_pin.as_ref().map(|p| p.display())),
        ]);
    }
    out.push('\n');
    out.push_str(&programs.render());
    for p in &capture.programs {
        if let Some(note) = &p.note {
            out.push_str(&format!("note: {}: {note}\n", p.name));
        }
    }

    out.push_str(&format!(
        "\nsk_lookup attached in {} pod netns\n",
        capture.pods.len()
    ));
    if !capture.pods.is_empty() {
        let mut pods = Table::new(&["NETNS-COOKIE", "POD IP", "LINK", "LINK PIN"]);
        for pod in &capture.pods {
            pods.row(vec![
                pod.netns_cookie.to_string(),
                or_dash(pod.pod_ip),
                or_dash(pod.link.map(|l| l.link_id)),
                pod.link_pin.display().to_string(),
            ]);
        }
        out.push_str(&pods.render());
    }

    let mut maps = Table::new(&["MAP", "ENTRIES", "MAX", "PIN"]);
    for map in &capture.maps {
        maps.row(vec![
            map.name.to_string(),
            map.entries.to_string(),
            map.max_entries.to_string(),
            map.pin.display().to_string(),
        ]);
    }
    out.push('\n');
    out.push_str(&maps.render());

    let mut counters = Table::new(&["COUNTER", "VALUE"]);
    for (name, value) in &capture.counters {
        counters.row(vec![name.clone(), value.to_string()]);
    }
    out.push('\n');
    out.push_str(&counters.render());

    let kernel = &capture.kernel;
    out.push_str(&format!(
        "\nkernel {} (BTF: {}; cgroup2: {}; bpffs: {})\n",
        kernel.kernel_release,
        yes_no(kernel.btf_vmlinux),
        or_dash(kernel.cgroup2_mount.as_ref().map(|p| p.display())),
        or_dash(kernel.bpffs_mount.as_ref().map(|p| p.display())),
    ));
    let mut features = Table::new(&["FEATURE", "SUPPORTED", "SINCE", "IF MISSING, DISABLES"]);
    for f in &kernel.features {
        features.row(vec![
            f.name.to_string(),
            match (f.supported, &f.error) {
                (Some(supported), _) => yes_no(supported),
                (None, Some(error)) => format!("unknown ({error})"),
                (None, None) => "unknown".into(),
            },
            f.since.to_string(),
            f.missing_disables.to_string(),
        ]);
    }
    out.push_str(&features.render());
    for f in kernel.features.iter().filter(|f| f.is_missing()) {
        out.push_str(&format!(
            "missing: {} (Linux {}+): no {}\n",
            f.name, f.since, f.missing_disables
        ));
    }
    for error in &capture.errors {
        out.push_str(&format!("error: {error}\n"));
    }
}

/// iptables capture: each pod's rules.
fn iptables(out: &mut String, status: &IptablesStatus) {
    out.push_str(&format!(
        "\n{} ({}); rules in {} pod netns\n",
        status.iptables,
        status.record_dir.display(),
        status.pods.len()
    ));
    let mut pods = Table::new(&["NETNS-COOKIE", "POD IP", "NETNS", "RULES"]);
    for pod in &status.pods {
        pods.row(vec![
            pod.netns_cookie.to_string(),
            pod.pod_ip.to_string(),
            pod.netns.display().to_string(),
            pod.rules.len().to_string(),
        ]);
    }
    out.push_str(&pods.render());
    for pod in &status.pods {
        out.push_str(&format!("\n{}:\n", pod.netns.display()));
        for rule in &pod.rules {
            out.push_str(&format!("  {rule}\n"));
        }
    }
    for error in &status.errors {
        out.push_str(&format!("error: {error}\n"));
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use shunt_api::admin::ProxyStatus;
    use shunt_api::capture::PodRulesStatus;

    use super::*;

    /// An eBPF status as the agent sends it: every column, with and without its optional parts.
    fn ebpf_body() -> serde_json::Value {
        serde_json::json!({
            "instance": "default",
            "capture_mode": "ebpf",
            "pin_dir": "/sys/fs/bpf/shunt/default",
            "cgroup": "/sys/fs/cgroup",
            "sockmap_shortcut": true,
            "proxy": {"connected": true, "pid": 4242},
            "capture": {
                "instance": "default",
                "pin_dir": "/sys/fs/bpf/shunt/default",
                "bpffs": "/sys/fs/bpf",
                "cgroup": "/sys/fs/cgroup",
                "sockmap_shortcut": true,
                "programs": [
                    {"name": "connect4", "program_type": "cgroup/connect4",
                     "attach_point": "/sys/fs/cgroup", "attachment": "adopted",
                     "link_pin": "/sys/fs/bpf/shunt/default/links/connect4",
                     "link": {"link_id": 7, "program_id": 31},
                     "note": "the pinned link runs program 31, not 40"},
                    {"name": "sk_lookup", "program_type": "sk_lookup", "attach_point": "pod netns",
                     "attachment": "per_pod", "link_pin": null, "link": null, "note": null},
                    {"name": "sk_msg", "program_type": "sk_msg", "attach_point": "SOCKHASH",
                     "attachment": "not_attached", "link_pin": null, "link": null, "note": null},
                    {"name": "sendmsg4", "program_type": "cgroup/sendmsg4",
                     "attach_point": "/sys/fs/cgroup", "attachment": "attached",
                     "link_pin": "/sys/fs/bpf/shunt/default/links/sendmsg4",
                     "link": {"link_id": 8, "program_id": 32}, "note": null},
                ],
                "pods": [
                    {"netns_cookie": 4097,
                     "link_pin": "/sys/fs/bpf/shunt/default/links/sk_lookup_4097",
                     "link": {"link_id": 9, "program_id": 33}, "pod_ip": "10.0.0.1"},
                    {"netns_cookie": 4098,
                     "link_pin": "/sys/fs/bpf/shunt/default/links/sk_lookup_4098",
                     "link": null, "pod_ip": null},
                ],
                "maps": [
                    {"name": "MESHED_NETNS", "pin": "/sys/fs/bpf/shunt/default/maps/MESHED_NETNS",
                     "entries": 2, "max_entries": 4096},
                    {"name": "STATS", "pin": "/sys/fs/bpf/shunt/default/maps/STATS",
                     "entries": 1, "max_entries": 1},
                ],
                "counters": {"connect4_redirected": 12, "connect4_passed": 3},
                "kernel": {
                    "kernel_release": "6.8.0-49-generic",
                    "btf_vmlinux": true,
                    "cgroup2_mount": "/sys/fs/cgroup",
                    "bpffs_mount": null,
                    "features": [
                        {"name": "sk_lookup", "supported": true, "since": "5.9",
                         "missing_disables": "inbound capture"},
                        {"name": "bpf_sk_assign", "supported": false, "since": "5.7",
                         "missing_disables": "the sockmap shortcut"},
                        {"name": "bpf_loop", "supported": null, "since": "5.17",
                         "missing_disables": "nothing", "error": "EPERM"},
                        {"name": "ring buffer", "supported": null, "since": "5.8",
                         "missing_disables": "events"},
                    ],
                },
                "errors": ["reading STATS: permission denied"],
            },
        })
    }

    /// `ebpf_body` down to one program: no pods, maps, counters, features, notes or errors.
    fn bare_ebpf_body() -> serde_json::Value {
        let mut body = ebpf_body();
        body["sockmap_shortcut"] = false.into();
        body["proxy"]["pid"] = serde_json::Value::Null;
        let capture = &mut body["capture"];
        let mut program = capture["programs"][0].take();
        program["note"] = serde_json::Value::Null;
        capture["programs"] = serde_json::json!([program]);
        for list in ["pods", "maps", "errors"] {
            capture[list] = serde_json::json!([]);
        }
        capture["counters"] = serde_json::json!({});
        capture["kernel"]["features"] = serde_json::json!([]);
        body
    }

    fn iptables_status() -> Status {
        Status {
            instance: "default".into(),
            capture_mode: CaptureMode::Iptables,
            pin_dir: None,
            cgroup: None,
            sockmap_shortcut: false,
            capture: CaptureReport::Iptables(IptablesStatus {
                iptables: "iptables v1.8.9 (nf_tables)".into(),
                record_dir: "/run/shunt/default/iptables".into(),
                pods: vec![PodRulesStatus {
                    netns_cookie: 4097,
                    netns: PathBuf::from("/run/netns/web"),
                    pod_ip: [10, 0, 0, 1].into(),
                    rules: vec!["-A SHUNT_REDIRECT -p tcp -j REDIRECT --to-ports 15001".into()],
                }],
                errors: vec![],
            }),
            proxy: ProxyStatus::default(),
            ca: None,
        }
    }

    #[test]
    fn ebpf_status_shows_programs_pods_maps_counters_and_the_kernel() {
        for (body, expected) in [
            (
                ebpf_body(),
                "instance          default\n\
                 capture           ebpf\n\
                 pin dir           /sys/fs/bpf/shunt/default\n\
                 cgroup            /sys/fs/cgroup\n\
                 sockmap shortcut  on\n\
                 proxy             connected (pid 4242)\n\
                 \n\
                 PROGRAM    TYPE             ATTACH POINT    ATTACHMENT    LINK  PROG  LINK PIN\n\
                 connect4   cgroup/connect4  /sys/fs/cgroup  adopted       7     31    /sys/fs/bpf/shunt/default/links/connect4\n\
                 sk_lookup  sk_lookup        pod netns       per_pod       -     -     -\n\
                 sk_msg     sk_msg           SOCKHASH        not_attached  -     -     -\n\
                 sendmsg4   cgroup/sendmsg4  /sys/fs/cgroup  attached      8     32    /sys/fs/bpf/shunt/default/links/sendmsg4\n\
                 note: connect4: the pinned link runs program 31, not 40\n\
                 \n\
                 sk_lookup attached in 2 pod netns\n\
                 NETNS-COOKIE  POD IP    LINK  LINK PIN\n\
                 4097          10.0.0.1  9     /sys/fs/bpf/shunt/default/links/sk_lookup_4097\n\
                 4098          -         -     /sys/fs/bpf/shunt/default/links/sk_lookup_4098\n\
                 \n\
                 MAP           ENTRIES  MAX   PIN\n\
                 MESHED_NETNS  2        4096  /sys/fs/bpf/shunt/default/maps/MESHED_NETNS\n\
                 STATS         1        1     /sys/fs/bpf/shunt/default/maps/STATS\n\
                 \n\
                 COUNTER              VALUE\n\
                 connect4_passed      3\n\
                 connect4_redirected  12\n\
                 \n\
                 kernel 6.8.0-49-generic (BTF: yes; cgroup2: /sys/fs/cgroup; bpffs: -)\n\
                 FEATURE        SUPPORTED        SINCE  IF MISSING, DISABLES\n\
                 sk_lookup      yes              5.9    inbound capture\n\
                 bpf_sk_assign  no               5.7    the sockmap shortcut\n\
                 bpf_loop       unknown (EPERM)  5.17   nothing\n\
                 ring buffer    unknown          5.8    events\n\
                 missing: bpf_sk_assign (Linux 5.7+): no the sockmap shortcut\n\
                 error: reading STATS: permission denied\n",
            ),
            (
                bare_ebpf_body(),
                "instance          default\n\
                 capture           ebpf\n\
                 pin dir           /sys/fs/bpf/shunt/default\n\
                 cgroup            /sys/fs/cgroup\n\
                 sockmap shortcut  off\n\
                 proxy             connected\n\
                 \n\
                 PROGRAM   TYPE             ATTACH POINT    ATTACHMENT  LINK  PROG  LINK PIN\n\
                 connect4  cgroup/connect4  /sys/fs/cgroup  adopted     7     31    /sys/fs/bpf/shunt/default/links/connect4\n\
                 \n\
                 sk_lookup attached in 0 pod netns\n\
                 \n\
                 MAP  ENTRIES  MAX  PIN\n\
                 \n\
                 COUNTER  VALUE\n\
                 \n\
                 kernel 6.8.0-49-generic (BTF: yes; cgroup2: /sys/fs/cgroup; bpffs: -)\n\
                 FEATURE  SUPPORTED  SINCE  IF MISSING, DISABLES\n",
            ),
        ] {
            assert_eq!(status(&decode(body).unwrap()), expected);
        }
    }

    #[test]
    fn a_refused_proxy_is_shown_with_the_reason() {
        let mut refused = iptables_status();
        refused.proxy = ProxyStatus {
            connected: false,
            pid: Some(77),
            refused: Some("the proxy (pid 77) runs in cgroup /cg/x, outside ...".into()),
        };
        let cases = [
            (
                refused,
                vec![
                    "proxy             refused (pid 77)",
                    "\nproxy refused: the proxy (pid 77) runs in cgroup /cg/x",
                ],
            ),
            (iptables_status(), vec!["proxy             not connected"]),
        ];
        for (status_body, parts) in cases {
            let out = status(&status_body);
            for part in parts {
                assert!(out.contains(part), "{part:?} in:\n{out}");
            }
        }
    }

    fn ca_status() -> CaStatus {
        CaStatus {
            listen: "0.0.0.0:15012".parse().unwrap(),
            serving: Some("0.0.0.0:15012".parse().unwrap()),
            source: Some(CaSource::Secret {
                namespace: "istio-system".into(),
                name: "cacerts".into(),
            }),
            roots: vec![
                shunt_api::admin::CaRootStatus {
                    subject: "O=cluster.local".into(),
                    sha256: "AB:CD".into(),
                    not_after: "2036-01-01T00:00:00Z".into(),
                },
                shunt_api::admin::CaRootStatus {
                    subject: "O=next".into(),
                    sha256: "EF:01".into(),
                    not_after: "2037-01-01T00:00:00Z".into(),
                },
            ],
            root_file: Some("/var/lib/shunt/default/ca/root-cert.pem".into()),
            allow_unauthenticated: false,
            error: None,
            note: None,
        }
    }

    #[test]
    fn the_ca_mode_shows_its_state_source_roots_and_what_to_fix() {
        let self_signed = CaStatus {
            source: Some(CaSource::SelfSigned {
                dir: "/var/lib/shunt/default/ca/self-signed".into(),
            }),
            roots: ca_status().roots[..1].to_vec(),
            allow_unauthenticated: true,
            note: Some("Secret istio-system/cacerts changed since the CA started".into()),
            ..ca_status()
        };
        let failed = CaStatus {
            serving: None,
            source: None,
            roots: Vec::new(),
            root_file: None,
            error: Some("Secret istio-system/cacerts has no ca-key.pem".into()),
            ..ca_status()
        };
        let starting = CaStatus {
            error: None,
            ..failed.clone()
        };
        let cases = [
            (
                Some(ca_status()),
                "ca                serving on 0.0.0.0:15012\n\
                 ca source         Secret istio-system/cacerts\n\
                 ca root           O=cluster.local (SHA-256 AB:CD), until 2036-01-01T00:00:00Z\n\
                 ca extra root     O=next (SHA-256 EF:01), until 2037-01-01T00:00:00Z\n\
                 ca root file      /var/lib/shunt/default/ca/root-cert.pem\n",
            ),
            (
                Some(self_signed),
                "ca                serving on 0.0.0.0:15012, UNAUTHENTICATED: any caller gets any identity\n\
                 ca source         self-signed root in /var/lib/shunt/default/ca/self-signed\n\
                 ca root           O=cluster.local (SHA-256 AB:CD), until 2036-01-01T00:00:00Z\n\
                 ca root file      /var/lib/shunt/default/ca/root-cert.pem\n\
                 \n\
                 ca: Secret istio-system/cacerts changed since the CA started\n",
            ),
            (
                Some(failed),
                "ca                not serving on 0.0.0.0:15012 (see below)\n\
                 \n\
                 ca not serving: Secret istio-system/cacerts has no ca-key.pem\n",
            ),
            (
                Some(starting),
                "ca                starting on 0.0.0.0:15012\n",
            ),
            // No CA mode: nothing about it.
            (None, ""),
        ];
        let head = "instance          default\n\
                    capture           iptables\n\
                    pin dir           -\n\
                    cgroup            -\n\
                    sockmap shortcut  off\n\
                    proxy             not connected\n";
        for (ca, expected) in cases {
            let out = status(&Status {
                ca,
                ..iptables_status()
            });
            // Up to the capture report.
            let summary = out.split("\niptables v1.8.9").next().unwrap();
            assert_eq!(summary, format!("{head}{expected}"));
        }
    }

    #[test]
    fn iptables_status_shows_the_mode_and_each_pods_rules() {
        let out = status(&iptables_status());
        for part in [
            "capture           iptables",
            "pin dir           -",
            "iptables v1.8.9 (nf_tables)",
            "4097          10.0.0.1  /run/netns/web  1",
            "  -A SHUNT_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        ] {
            assert!(out.contains(part), "{part:?} in:\n{out}");
        }
    }

    #[test]
    fn an_iptables_body_decodes_as_iptables() {
        let body = serde_json::to_value(iptables_status()).unwrap();
        let decoded = decode(body).unwrap();
        assert!(
            matches!(decoded.capture, CaptureReport::Iptables(_)),
            "{decoded:?}"
        );
    }

    #[test]
    fn a_report_that_disagrees_with_the_mode_is_named_not_shown() {
        let ebpf = decode(ebpf_body()).unwrap();
        let iptables = iptables_status();
        for (mode, capture, expected) in [
            (
                CaptureMode::Iptables,
                ebpf.capture,
                "capture mode is iptables but the report reads as ebpf capture's",
            ),
            (
                CaptureMode::Ebpf,
                iptables.capture.clone(),
                "capture mode is ebpf but the report reads as iptables capture's",
            ),
        ] {
            let out = status(&Status {
                capture_mode: mode,
                capture,
                ..iptables.clone()
            });
            assert!(
                out.ends_with(&format!(
                    "\ncapture report not shown: {expected} (an agent of another version?)\n"
                )),
                "{out}"
            );
        }
    }

    #[test]
    fn an_undecodable_report_is_named_by_the_field_its_mode_lacks() {
        let mut ebpf = ebpf_body();
        ebpf["capture"].as_object_mut().unwrap().remove("kernel");
        let mut iptables = serde_json::to_value(iptables_status()).unwrap();
        iptables["capture"]
            .as_object_mut()
            .unwrap()
            .remove("record_dir");
        let mut no_capture = ebpf_body();
        no_capture.as_object_mut().unwrap().remove("capture");
        for (body, expected) in [
            (
                ebpf,
                "unexpected answer from /status: its capture report does not read as ebpf \
                 capture's: missing field `kernel`",
            ),
            (
                iptables,
                "unexpected answer from /status: its capture report does not read as \
                 iptables capture's: missing field `record_dir`",
            ),
            (
                no_capture,
                "unexpected answer from /status: missing field `capture`",
            ),
        ] {
            assert_eq!(format!("{:#}", decode(body).unwrap_err()), expected);
        }
    }

    #[test]
    fn attachments_are_named_as_in_the_json() {
        for a in [
            Attachment::Attached,
            Attachment::Adopted,
            Attachment::NotAttached,
            Attachment::PerPod,
        ] {
            assert_eq!(serde_json::to_value(a).unwrap(), attachment(a), "{a:?}");
        }
    }
}
