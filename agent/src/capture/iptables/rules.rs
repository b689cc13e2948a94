//! The nat-table rules of one captured pod, as Istio's `istio-init` writes them, in shunt's own
//! chains, and the `iptables-restore` scripts that install and remove them.
//!
//! Rules are written exactly as `iptables -t nat -S` prints them, so that the rules found in a
//! pod's netns (after an agent restart) can be compared with the wanted ones and adopted.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;

use shunt_common::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_MARK};

/// Outbound: every TCP connection the pod's processes open (nat `OUTPUT`).
pub const OUTPUT_CHAIN: &str = "SHUNT_OUTPUT";
/// Outbound: the REDIRECT to the proxy's outbound listener.
pub const REDIRECT_CHAIN: &str = "SHUNT_REDIRECT";
/// Inbound: every TCP connection arriving at the pod (nat `PREROUTING`).
pub const INBOUND_CHAIN: &str = "SHUNT_INBOUND";
/// Inbound: the REDIRECT to the proxy's inbound listener.
pub const IN_REDIRECT_CHAIN: &str = "SHUNT_IN_REDIRECT";
/// Every chain shunt owns, in the order their rules are written.
pub const CHAINS: [&str; 4] = [
    OUTPUT_CHAIN,
    REDIRECT_CHAIN,
    INBOUND_CHAIN,
    IN_REDIRECT_CHAIN,
];

/// The jumps from the built-in chains into shunt's (`-S` form without `-A`).
const JUMPS: [(&str, &str); 2] = [
    ("OUTPUT", "-p tcp -j SHUNT_OUTPUT"),
    ("PREROUTING", "-p tcp -j SHUNT_INBOUND"),
];

/// What a pod's rules depend on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRules {
    /// `traffic.sidecar.istio.io/excludeOutboundPorts`.
    pub excluded_outbound_ports: Vec<u16>,
    /// `traffic.sidecar.istio.io/excludeInboundPorts`.
    pub excluded_inbound_ports: Vec<u16>,
}

impl PodRules {
    /// Every rule of shunt's chains, in order, as `-A CHAIN ...` lines.
    #[must_use]
    pub fn chain_rules(&self) -> Vec<String> {
        let return_ports = |chain: &str, ports: &[u16]| {
            // Sorted and deduplicated: the same annotation always gives the same rules.
            let ports: BTreeSet<u16> = ports.iter().copied().collect();
            ports
                .into_iter()
                .map(|port| format!("-A {chain} -p tcp -m tcp --dport {port} -j RETURN"))
                .collect::<Vec<_>>()
        };
        let mut rules = vec![
            // The proxy's own dials (upstream and inbound delivery) carry the mark.
            format!("-A {OUTPUT_CHAIN} -m mark --mark {PROXY_MARK:#x} -j RETURN"),
            // Loopback, including the pod's connections to its own IP (routed over lo) and
            // direct connections to the proxy's listeners, which the proxy refuses.
            format!("-A {OUTPUT_CHAIN} -o lo -j RETURN"),
            format!("-A {OUTPUT_CHAIN} -d 127.0.0.0/8 -j RETURN"),
        ];
        rules.extend(return_ports(OUTPUT_CHAIN, &self.excluded_outbound_ports));
        rules.push(format!("-A {OUTPUT_CHAIN} -j {REDIRECT_CHAIN}"));
        rules.push(format!(
            "-A {REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}"
        ));
        rules.push(format!("-A {INBOUND_CHAIN} -i lo -j RETURN"));
        // HBONE: the proxy's own `<pod IP>:15008` listener takes it, as Istio's rules leave it.
        rules.push(format!(
            "-A {INBOUND_CHAIN} -p tcp -m tcp --dport {HBONE_PORT} -j RETURN"
        ));
        rules.extend(return_ports(INBOUND_CHAIN, &self.excluded_inbound_ports));
        rules.push(format!("-A {INBOUND_CHAIN} -j {IN_REDIRECT_CHAIN}"));
        rules.push(format!(
            "-A {IN_REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {INBOUND_PORT}"
        ));
        rules
    }

    /// The `iptables-restore --noflush` script that makes `current` hold exactly these rules,
    /// or `None` when it already does. Declaring a chain in the script flushes it, and the
    /// whole script commits at once: re-applying never leaves a moment without capture.
    #[must_use]
    pub fn install_script(&self, current: &NatTable) -> Option<String> {
        let wanted = self.chain_rules();
        let jumps_missing: Vec<String> = JUMPS
            .iter()
            .map(|(chain, rule)| format!("-A {chain} {rule}"))
            .filter(|jump| !current.rules.contains(jump))
            .collect();
        if jumps_missing.is_empty() && current.shunt_rules() == wanted {
            return None;
        }
        let mut script = vec!["*nat".to_owned()];
        script.extend(CHAINS.iter().map(|chain| format!(":{chain} - [0:0]")));
        script.extend(wanted);
        script.extend(jumps_missing);
        script.push("COMMIT".to_owned());
        Some(script.join("\n") + "\n")
    }
}

/// The `iptables-restore --noflush` script that removes shunt's jumps and chains from
/// `current`, or `None` when there is nothing of shunt's there.
#[must_use]
pub fn remove_script(current: &NatTable) -> Option<String> {
    let mut lines: Vec<String> = JUMPS
        .iter()
        .map(|(chain, rule)| (format!("-A {chain} {rule}"), format!("-D {chain} {rule}")))
        .filter(|(jump, _)| current.rules.contains(jump))
        .map(|(_, delete)| delete)
        .collect();
    let chains: Vec<&str> = CHAINS
        .iter()
        .copied()
        .filter(|chain| current.chains.contains(*chain))
        .collect();
    // Flush them all before deleting any: they jump to each other.
    lines.extend(chains.iter().map(|chain| format!("-F {chain}")));
    lines.extend(chains.iter().map(|chain| format!("-X {chain}")));
    if lines.is_empty() {
        return None;
    }
    let mut script = vec!["*nat".to_owned()];
    script.extend(lines);
    script.push("COMMIT".to_owned());
    Some(script.join("\n") + "\n")
}

/// A nat table as `iptables -t nat -S` prints it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatTable {
    /// User-defined chains (`-N`).
    pub chains: BTreeSet<String>,
    /// Every `-A` line, in order.
    pub rules: Vec<String>,
}

impl NatTable {
    #[must_use]
    pub fn parse(listing: &str) -> Self {
        let mut table = Self::default();
        for line in listing.lines().map(str::trim) {
            if let Some(chain) = line.strip_prefix("-N ") {
                table.chains.insert(chain.to_owned());
            } else if line.starts_with("-A ") {
                table.rules.push(line.to_owned());
            }
        }
        table
    }

    /// The rules of shunt's chains, in [`CHAINS`] order (the order `chain_rules` writes).
    #[must_use]
    pub fn shunt_rules(&self) -> Vec<String> {
        CHAINS
            .iter()
            .flat_map(|chain| {
                let prefix = format!("-A {chain} ");
                self.rules
                    .iter()
                    .filter(move |rule| rule.starts_with(&prefix))
                    .cloned()
            })
            .collect()
    }

    /// Whether any of shunt's jumps or chains is here.
    #[must_use]
    pub fn has_shunt_rules(&self) -> bool {
        remove_script(self).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(outbound: &[u16], inbound: &[u16]) -> PodRules {
        PodRules {
            excluded_outbound_ports: outbound.to_vec(),
            excluded_inbound_ports: inbound.to_vec(),
        }
    }

    #[test]
    fn chains_follow_istio_init_with_excluded_ports_returned() {
        let common_outbound = [
            "-A SHUNT_OUTPUT -m mark --mark 0x539 -j RETURN",
            "-A SHUNT_OUTPUT -o lo -j RETURN",
            "-A SHUNT_OUTPUT -d 127.0.0.0/8 -j RETURN",
        ];
        /// Excluded ports in, and the RETURN rules they must give.
        struct Case {
            outbound: &'static [u16],
            inbound: &'static [u16],
            outbound_returns: &'static [&'static str],
            inbound_returns: &'static [&'static str],
        }
        let cases = [
            Case {
                outbound: &[],
                inbound: &[],
                outbound_returns: &[],
                inbound_returns: &[],
            },
            Case {
                outbound: &[6379, 5432, 5432],
                inbound: &[],
                outbound_returns: &[
                    "-A SHUNT_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN",
                    "-A SHUNT_OUTPUT -p tcp -m tcp --dport 6379 -j RETURN",
                ],
                inbound_returns: &[],
            },
            Case {
                outbound: &[],
                inbound: &[9090],
                outbound_returns: &[],
                inbound_returns: &["-A SHUNT_INBOUND -p tcp -m tcp --dport 9090 -j RETURN"],
            },
        ];
        for Case {
            outbound,
            inbound,
            outbound_returns,
            inbound_returns,
        } in cases
        {
            let mut expected: Vec<&str> = common_outbound.to_vec();
            expected.extend(outbound_returns);
            expected.extend([
                "-A SHUNT_OUTPUT -j SHUNT_REDIRECT",
                "-A SHUNT_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
                "-A SHUNT_INBOUND -i lo -j RETURN",
                "-A SHUNT_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
            ]);
            expected.extend(inbound_returns);
            expected.extend([
                "-A SHUNT_INBOUND -j SHUNT_IN_REDIRECT",
                "-A SHUNT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            ]);
            assert_eq!(
                rules(outbound, inbound).chain_rules(),
                expected,
                "{outbound:?} {inbound:?}"
            );
        }
    }

    fn listing(rules: &PodRules, jumps: bool) -> String {
        let mut lines = vec![
            "-P PREROUTING ACCEPT".to_owned(),
            "-P OUTPUT ACCEPT".to_owned(),
        ];
        lines.extend(CHAINS.iter().map(|chain| format!("-N {chain}")));
        if jumps {
            lines.push("-A PREROUTING -p tcp -j SHUNT_INBOUND".to_owned());
            lines.push("-A OUTPUT -p tcp -j SHUNT_OUTPUT".to_owned());
        }
        lines.extend(rules.chain_rules());
        lines.join("\n")
    }

    #[test]
    fn install_adopts_what_is_there_and_rewrites_only_what_differs() {
        let wanted = rules(&[5432], &[]);
        let empty = NatTable::parse("-P PREROUTING ACCEPT\n-P OUTPUT ACCEPT\n");
        let cases = [
            ("nothing installed", empty.clone(), true, true),
            (
                "all there",
                NatTable::parse(&listing(&wanted, true)),
                false,
                false,
            ),
            (
                "other excluded ports",
                NatTable::parse(&listing(&rules(&[6379], &[]), true)),
                true,
                false,
            ),
            (
                "jumps missing",
                NatTable::parse(&listing(&wanted, false)),
                true,
                true,
            ),
        ];
        for (case, current, rewrites, adds_jumps) in cases {
            let script = wanted.install_script(&current);
            assert_eq!(script.is_some(), rewrites, "{case}");
            let Some(script) = script else { continue };
            assert!(
                script.starts_with("*nat\n:SHUNT_OUTPUT - [0:0]\n"),
                "{case}: {script}"
            );
            assert!(script.ends_with("COMMIT\n"), "{case}: {script}");
            for rule in wanted.chain_rules() {
                assert!(script.contains(&format!("{rule}\n")), "{case}: {rule}");
            }
            assert_eq!(
                script.contains("-A OUTPUT -p tcp -j SHUNT_OUTPUT\n"),
                adds_jumps,
                "{case}: {script}"
            );
        }
    }

    #[test]
    fn removal_deletes_jumps_then_flushes_and_deletes_chains() {
        let installed = NatTable::parse(&listing(&rules(&[], &[]), true));
        assert!(installed.has_shunt_rules());
        assert_eq!(
            remove_script(&installed).unwrap(),
            "*nat\n\
             -D OUTPUT -p tcp -j SHUNT_OUTPUT\n\
             -D PREROUTING -p tcp -j SHUNT_INBOUND\n\
             -F SHUNT_OUTPUT\n-F SHUNT_REDIRECT\n-F SHUNT_INBOUND\n-F SHUNT_IN_REDIRECT\n\
             -X SHUNT_OUTPUT\n-X SHUNT_REDIRECT\n-X SHUNT_INBOUND\n-X SHUNT_IN_REDIRECT\n\
             COMMIT\n"
        );
        let foreign = NatTable::parse("-N ISTIO_OUTPUT\n-A OUTPUT -p tcp -j ISTIO_OUTPUT\n");
        assert!(!foreign.has_shunt_rules());
        assert_eq!(remove_script(&foreign), None);
    }
}
