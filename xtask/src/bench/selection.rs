//! `--scenarios` and `--workloads`: run part of the bench, for profiling one path or a quick
//! comparison. The default is everything; a published table comes from a run of everything.

use anyhow::{Result, bail};

use super::scenario::Scenario;

/// The workload groups of one repetition, as `--workloads` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Rr,
    Crr,
    Bulk,
    L7,
    Idle,
}

impl Workload {
    pub const ALL: [Self; 5] = [Self::Rr, Self::Crr, Self::Bulk, Self::L7, Self::Idle];

    fn name(self) -> &'static str {
        match self {
            Self::Rr => "rr",
            Self::Crr => "crr",
            Self::Bulk => "bulk",
            Self::L7 => "l7",
            Self::Idle => "idle",
        }
    }
}

/// Which scenarios and workloads this run covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    scenarios: Vec<Scenario>,
    workloads: Vec<Workload>,
}

impl Default for Selection {
    fn default() -> Self {
        Self {
            scenarios: Scenario::MAIN.to_vec(),
            workloads: Workload::ALL.to_vec(),
        }
    }
}

impl Selection {
    /// Scenario ids (`S0`…`S8`) and workload names; empty lists mean all but S8.
    pub fn parse(scenarios: &[String], workloads: &[String]) -> Result<Self> {
        let mut selection = Self::default();
        if !scenarios.is_empty() {
            selection.scenarios = pick(
                scenarios,
                &Scenario::ALL,
                Scenario::id,
                "--scenarios",
                "S0 to S8",
            )?;
        }
        if !workloads.is_empty() {
            let known = "rr, crr, bulk, l7, idle";
            selection.workloads = pick(
                workloads,
                &Workload::ALL,
                Workload::name,
                "--workloads",
                known,
            )?;
        }
        if selection.scenarios.is_empty() || selection.workloads.is_empty() {
            bail!("the bench selection is empty");
        }
        Ok(selection)
    }

    pub fn has_scenario(&self, scenario: Scenario) -> bool {
        self.scenarios.contains(&scenario)
    }

    pub fn has(&self, workload: Workload) -> bool {
        self.workloads.contains(&workload)
    }

    pub fn is_everything(&self) -> bool {
        *self == Self::default()
    }

    /// The arguments that hand this selection to `xtask bench-node`.
    pub fn to_args(&self) -> Vec<String> {
        let scenarios: Vec<&str> = self.scenarios.iter().map(|s| s.id()).collect();
        let workloads: Vec<&str> = self.workloads.iter().map(|w| w.name()).collect();
        vec![
            "--scenarios".into(),
            scenarios.join(","),
            "--workloads".into(),
            workloads.join(","),
        ]
    }
}

/// The items of `all` that `lists` (comma-separated, any case) name, in the order named.
fn pick<T: Copy>(
    lists: &[String],
    all: &[T],
    name: fn(T) -> &'static str,
    option: &str,
    known: &str,
) -> Result<Vec<T>> {
    lists
        .iter()
        .flat_map(|list| list.split(','))
        .map(|wanted| {
            all.iter()
                .copied()
                .find(|item| name(*item).eq_ignore_ascii_case(wanted.trim()))
                .ok_or_else(|| anyhow::anyhow!("{option}: no {wanted:?}; they are {known}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn selections_parse_round_trip_and_reject_unknown_names() {
        let everything = Selection::parse(&[], &[]).expect("empty means all");
        assert!(everything.is_everything());
        // S8 runs only when named.
        assert!(!everything.has_scenario(Scenario::Gateway));
        let gateway = Selection::parse(&strings(&["S8"]), &[]).expect("S8 is known");
        assert!(gateway.has_scenario(Scenario::Gateway) && !gateway.is_everything());
        let part = Selection::parse(&strings(&["s2", "S4"]), &strings(&["l7"])).expect("valid");
        assert!(part.has_scenario(Scenario::Ebpf) && part.has_scenario(Scenario::Haproxy));
        assert!(!part.has_scenario(Scenario::Direct));
        assert!(part.has(Workload::L7) && !part.has(Workload::Rr));
        let args = part.to_args();
        let again = Selection::parse(&strings(&[&args[1]]), &strings(&[&args[3]])).expect("ok");
        assert_eq!(again, part);
        let cases = [(strings(&["S9"]), vec![]), (vec![], strings(&["http"]))];
        for (scenarios, workloads) in cases {
            let error = Selection::parse(&scenarios, &workloads).expect_err("unknown name");
            assert!(error.to_string().contains("no "), "{error}");
        }
    }
}
