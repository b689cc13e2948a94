//! The installer end to end, through the `shuntctl` binary: `deploy/` is exactly what it
//! renders (golden), every profile parses back into k8s-openapi types and passes
//! kubernetes-validate's strict schemas for Kubernetes 1.33 and 1.37, each kustomize overlay
//! builds to its profile's render, and bad values fail naming their key.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "the tests fail by panicking"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ResourceQuota, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize as _;

const PROFILES: [&str; 5] = ["default", "minimal", "demo", "gke", "eks"];
const REGENERATE: &str = "regenerate it with `cargo xtask render-deploy`";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn shuntctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shuntctl"))
        .args(args)
        .output()
        .expect("running shuntctl")
}

fn render(profile: &str) -> String {
    render_with(&["--profile", profile])
}

fn render_with(args: &[&str]) -> String {
    let out = shuntctl(&[&["install", "--render"], args].concat());
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every profile's render, and the default with shunt's own CA (its Deployment, Service and
/// roles), each with a name for messages.
fn renders() -> Vec<(String, String)> {
    let mut renders: Vec<(String, String)> = PROFILES
        .iter()
        .map(|profile| ((*profile).to_owned(), render(profile)))
        .collect();
    renders.push((
        "default with ca.mode=shunt".to_owned(),
        render_with(&["--profile", "default", "--set", "ca.mode=shunt"]),
    ));
    renders
}

/// The documents of a YAML stream, as JSON values keyed by kind/namespace/name.
fn objects(text: &str) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value: serde_json::Value = serde::Deserialize::deserialize(document).unwrap();
        if value.is_null() {
            continue;
        }
        let key = format!(
            "{} {}/{}",
            value["kind"].as_str().unwrap(),
            value["metadata"]["namespace"].as_str().unwrap_or_default(),
            value["metadata"]["name"].as_str().unwrap()
        );
        assert!(out.insert(key.clone(), value).is_none(), "{key} twice");
    }
    out
}

/// Every file under `dir`, relative path → text.
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(
                    path.strip_prefix(root).unwrap().to_owned(),
                    std::fs::read_to_string(&path).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn deploy_is_what_shuntctl_renders() {
    let fresh = tempfile::tempdir().unwrap();
    let out = shuntctl(&[
        "install",
        "--render",
        "--deploy-tree",
        fresh.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = tree(fresh.path());
    let committed = tree(&workspace().join("deploy"));
    for (path, text) in &expected {
        match committed.get(path) {
            None => panic!("deploy/{} is missing: {REGENERATE}", path.display()),
            Some(committed) => assert!(
                committed == text,
                "deploy/{} differs from what shuntctl renders: {REGENERATE}",
                path.display()
            ),
        }
    }
    for path in committed.keys() {
        assert!(
            expected.contains_key(path),
            "deploy/{} is not rendered by shuntctl any more: {REGENERATE}",
            path.display()
        );
    }
    // deploy/shunt.yaml is `shuntctl install --render`, comments aside.
    assert_eq!(
        objects(&committed[Path::new("shunt.yaml")]),
        objects(&render("default")),
        "deploy/shunt.yaml: {REGENERATE}"
    );
}

#[test]
fn every_profile_parses_back_into_kubernetes_types() {
    for (profile, text) in renders() {
        let mut kinds = Vec::new();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(document).unwrap();
            let kind = value["kind"].as_str().unwrap().to_owned();
            let parse = |kind: &str| -> Result<(), serde_yaml::Error> {
                match kind {
                    "Namespace" => serde_yaml::from_value::<Namespace>(value.clone()).map(drop),
                    "ResourceQuota" => {
                        serde_yaml::from_value::<ResourceQuota>(value.clone()).map(drop)
                    }
                    "ServiceAccount" => {
                        serde_yaml::from_value::<ServiceAccount>(value.clone()).map(drop)
                    }
                    "ClusterRole" => serde_yaml::from_value::<ClusterRole>(value.clone()).map(drop),
                    "ClusterRoleBinding" => {
                        serde_yaml::from_value::<ClusterRoleBinding>(value.clone()).map(drop)
                    }
                    "Role" => serde_yaml::from_value::<Role>(value.clone()).map(drop),
                    "RoleBinding" => serde_yaml::from_value::<RoleBinding>(value.clone()).map(drop),
                    "ConfigMap" => serde_yaml::from_value::<ConfigMap>(value.clone()).map(drop),
                    "Service" => serde_yaml::from_value::<Service>(value.clone()).map(drop),
                    "Deployment" => serde_yaml::from_value::<Deployment>(value.clone()).map(drop),
                    "DaemonSet" => serde_yaml::from_value::<DaemonSet>(value.clone()).map(drop),
                    "CustomResourceDefinition" => {
                        serde_yaml::from_value::<CustomResourceDefinition>(value.clone()).map(drop)
                    }
                    other => panic!("profile {profile}: unexpected kind {other}"),
                }
            };
            parse(&kind).unwrap_or_else(|e| panic!("profile {profile}: {kind}: {e}"));
            kinds.push(kind);
        }
        assert_eq!(
            kinds.iter().filter(|k| *k == "DaemonSet").count(),
            2,
            "profile {profile}"
        );
        // Shunt's RateLimitPolicy and the seven Istio kinds it reads.
        assert_eq!(
            kinds
                .iter()
                .filter(|k| *k == "CustomResourceDefinition")
                .count(),
            8,
            "profile {profile}"
        );
    }
}

fn kubernetes_validate() -> PathBuf {
    let venv = workspace().join("target/tools/kubernetes-validate/bin/kubernetes-validate");
    if venv.is_file() {
        return venv;
    }
    panic!(
        "kubernetes-validate is not installed at {}: run `cargo xtask setup`",
        venv.display()
    );
}

#[test]
fn every_profile_passes_strict_schema_validation() {
    let validate = kubernetes_validate();
    let dir = tempfile::tempdir().unwrap();
    for (index, (profile, text)) in renders().into_iter().enumerate() {
        let file = dir.path().join(format!("{index}.yaml"));
        std::fs::write(&file, text).unwrap();
        for version in ["1.33.0", "1.37.0"] {
            let out = Command::new(&validate)
                .args(["--strict", "--kubernetes-version", version])
                .arg(&file)
                .output()
                .unwrap();
            let report = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "profile {profile}, Kubernetes {version}:\n{report}"
            );
            // One "passed" line per object: nothing skipped as an unknown kind.
            let objects = objects(&std::fs::read_to_string(&file).unwrap()).len();
            assert_eq!(
                report.matches(" passed for resource ").count(),
                objects,
                "profile {profile}, Kubernetes {version}:\n{report}"
            );
        }
    }
}

#[test]
fn each_overlay_builds_to_its_profile() {
    for (dir, profile) in [
        ("base", "default"),
        ("overlays/gke", "gke"),
        ("overlays/eks", "eks"),
    ] {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(workspace().join("deploy").join(dir))
            .output()
            .expect("kubectl is not on PATH: run `cargo xtask setup`");
        assert!(
            out.status.success(),
            "kubectl kustomize deploy/{dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let built = objects(&String::from_utf8(out.stdout).unwrap());
        let rendered = objects(&render(profile));
        assert_eq!(
            built.keys().collect::<Vec<_>>(),
            rendered.keys().collect::<Vec<_>>(),
            "deploy/{dir}"
        );
        for (key, object) in &rendered {
            assert!(
                &built[key] == object,
                "deploy/{dir}: {key} built by kustomize differs from `shuntctl install --render \
                 --profile {profile}`: {REGENERATE}"
            );
        }
    }
}

#[test]
fn unknown_and_bad_values_fail_naming_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, "meshConfig:\n  accessLogFiel: /dev/stdout\n").unwrap();
    let file = file.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--set",
                "meshConfig.outboundTrafficPolicy.mod=REGISTRY_ONLY",
            ],
            "meshConfig.outboundTrafficPolicy.mod: unknown field `mod`",
        ),
        (&["-f", file], "meshConfig.accessLogFiel: unknown field"),
        (&["--set", "agent.capture"], "expected KEY=VALUE"),
        (&["--profile", "gkee"], "no profile \"gkee\""),
    ];
    for (args, expected) in cases {
        let mut all = vec!["install", "--render"];
        all.extend(args);
        let out = shuntctl(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(out.stdout.is_empty(), "{args:?}: nothing rendered");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn set_and_files_change_the_render() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, "cni: {confDir: /etc/custom/net.d}\n").unwrap();
    let out = shuntctl(&[
        "install",
        "--render",
        "-f",
        file.to_str().unwrap(),
        "--set",
        "meshConfig.outboundTrafficPolicy.mode=REGISTRY_ONLY,values.global.proxy.accessLogEncoding=JSON",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("mode: REGISTRY_ONLY"));
    assert!(text.contains("path: /etc/custom/net.d"));
}

#[test]
fn install_without_render_names_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1 of loopback: the first apply fails.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
         clusters: [{name: c, cluster: {server: \"http://127.0.0.1:1\"}}]\n\
         users: [{name: u, user: {}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n",
    )
    .unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &["install", "--kubeconfig", kubeconfig],
            "cannot apply (patch) CustomResourceDefinition virtualservices.networking.istio.io",
        ),
        (
            &["install", "--kubeconfig", kubeconfig, "--set", "typo=1"],
            "typo: unknown field",
        ),
        (
            &["install", "--kubeconfig", kubeconfig, "--context", "other"],
            "check --kubeconfig and --context",
        ),
    ];
    for (args, want) in cases {
        let out = shuntctl(args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

#[test]
fn profile_commands() {
    let list = shuntctl(&["profile", "list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    for profile in PROFILES {
        assert!(list.contains(profile), "{list}");
    }
    let diff = shuntctl(&["profile", "diff", "default", "gke"]);
    assert!(diff.status.success());
    let diff = String::from_utf8_lossy(&diff.stdout);
    let lines: Vec<&str> = diff.lines().collect();
    assert_eq!(lines[0], "A: default, B: gke");
    let keys: Vec<&str> = lines[2..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(keys, ["cni.binDir", "resourceQuota.enabled"], "{diff}");
    let json = shuntctl(&["profile", "diff", "default", "eks", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        json[0]["path"],
        "excludeNodeLabels.eks.amazonaws.com/compute-type"
    );
    assert_eq!(json[0]["a"], serde_json::Value::Null);
    assert_eq!(json[0]["b"], serde_json::json!(["fargate"]));
    let show = shuntctl(&["profile", "show", "gke"]);
    let show: serde_yaml::Value = serde_yaml::from_slice(&show.stdout).unwrap();
    assert_eq!(show["cni"]["binDir"], "/home/kubernetes/bin");
    assert_eq!(
        show["meshConfig"]["outboundTrafficPolicy"]["mode"],
        "ALLOW_ANY"
    );
}
