//! `shuntctl profile list|show|diff`: the installer's built-in profiles, as values.

use serde_yaml::Value;

use crate::install::overlay::{self, Sources};
use crate::install::profiles;
use crate::output::{self, Output};
use crate::table::Table;

#[derive(Debug, clap::Subcommand)]
pub enum ProfileCommand {
    /// The profiles and what each is for.
    List,
    /// Every value of a profile (the default profile with its overlay applied).
    Show { name: String },
    /// The values that differ between two profiles, by key path.
    Diff { a: String, b: String },
}

pub fn run(command: ProfileCommand, output: Output) -> anyhow::Result<String> {
    match command {
        ProfileCommand::List => Ok(list(output)),
        ProfileCommand::Show { name } => show(&name, output),
        ProfileCommand::Diff { a, b } => diff(&a, &b, output),
    }
}

fn list(output: Output) -> String {
    match output {
        Output::Json => output::json(&serde_json::Value::Array(
            profiles::PROFILES
                .iter()
                .map(|(name, about, _)| serde_json::json!({"name": name, "description": about}))
                .collect(),
        )),
        Output::Table => {
            let mut table = Table::new(&["PROFILE", "DESCRIPTION"]);
            for (name, about, _) in profiles::PROFILES {
                table.row(vec![(*name).to_owned(), (*about).to_owned()]);
            }
            table.render()
        }
    }
}

/// The merged tree, checked: a profile that does not read into values is a bug to report.
fn values_tree(name: &str) -> anyhow::Result<Value> {
    let tree = overlay::tree(&Sources::profile(name))?;
    overlay::typed(tree.clone())?;
    Ok(tree)
}

fn show(name: &str, output: Output) -> anyhow::Result<String> {
    let tree = values_tree(name)?;
    Ok(match output {
        Output::Json => output::json(&serde_json::to_value(&tree)?),
        Output::Table => serde_yaml::to_string(&tree)?,
    })
}

/// One differing value: its path, and its value in each profile (`None`: absent).
#[derive(Debug, PartialEq, serde::Serialize)]
pub struct Difference {
    pub path: String,
    pub a: Option<Value>,
    pub b: Option<Value>,
}

pub fn differences(a: &Value, b: &Value) -> Vec<Difference> {
    let a_leaves = overlay::leaves(a);
    let b_leaves = overlay::leaves(b);
    let find = |leaves: &[(String, Value)], path: &str| {
        leaves
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, v)| v.clone())
    };
    let mut paths: Vec<&String> = a_leaves.iter().map(|(p, _)| p).collect();
    paths.extend(
        b_leaves
            .iter()
            .map(|(p, _)| p)
            .filter(|p| !a_leaves.iter().any(|(q, _)| q == *p)),
    );
    let all: Vec<String> = paths.iter().map(|p| (*p).clone()).collect();
    // An empty map on one side and keys under it on the other: the keys say it all.
    let empty_parent = |path: &str, value: &Option<Value>| {
        value
            .as_ref()
            .is_some_and(|v| v.as_mapping().is_some_and(|m| m.is_empty()))
            && all.iter().any(|p| p.starts_with(&format!("{path}.")))
    };
    paths
        .into_iter()
        .filter_map(|path| {
            let (va, vb) = (find(&a_leaves, path), find(&b_leaves, path));
            if empty_parent(path, &va) || empty_parent(path, &vb) {
                return None;
            }
            (va != vb).then(|| Difference {
                path: path.clone(),
                a: va,
                b: vb,
            })
        })
        .collect()
}

fn diff(a: &str, b: &str, output: Output) -> anyhow::Result<String> {
    let differences = differences(&values_tree(a)?, &values_tree(b)?);
    if output == Output::Json {
        return Ok(output::json(&serde_json::to_value(&differences)?));
    }
    if differences.is_empty() {
        return Ok(format!("profiles {a} and {b} have the same values\n"));
    }
    let cell = |value: &Option<Value>| match value {
        None => "(unset)".to_owned(),
        Some(value) => serde_json::to_string(value).unwrap_or_default(),
    };
    let mut table = Table::new(&["KEY", "A", "B"]);
    for difference in &differences {
        table.row(vec![
            difference.path.clone(),
            cell(&difference.a),
            cell(&difference.b),
        ]);
    }
    Ok(format!("A: {a}, B: {b}\n{}", table.render()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_each_differing_key_path() {
        let a: Value =
            serde_yaml::from_str("x: {y: 1, z: 2}\nl: [1]\nonly_a: 1\nonly_b: {}\n").unwrap();
        let b: Value =
            serde_yaml::from_str("x: {y: 1, z: 3}\nl: [1, 2]\nonly_b: {k: v}\n").unwrap();
        let paths: Vec<(String, bool, bool)> = differences(&a, &b)
            .into_iter()
            .map(|d| (d.path, d.a.is_some(), d.b.is_some()))
            .collect();
        assert_eq!(
            paths,
            [
                ("x.z".to_owned(), true, true),
                ("l".to_owned(), true, true),
                ("only_a".to_owned(), true, false),
                ("only_b.k".to_owned(), false, true),
            ]
        );
    }

    #[test]
    fn gke_differs_from_default_in_its_overlay_keys() {
        let text = diff("default", "gke", Output::Table).unwrap();
        assert!(text.contains("cni.binDir"), "{text}");
        assert!(text.contains("\"/home/kubernetes/bin\""), "{text}");
        assert!(text.contains("resourceQuota.enabled"), "{text}");
        assert!(!text.contains("meshConfig"), "{text}");
        let same = diff("gke", "gke", Output::Table).unwrap();
        assert!(same.contains("the same values"), "{same}");
    }

    #[test]
    fn an_unknown_profile_lists_the_known_ones() {
        let error = show("gkee", Output::Table).unwrap_err().to_string();
        assert!(
            error.contains("\"gkee\"") && error.contains("gke, eks"),
            "{error}"
        );
    }
}
