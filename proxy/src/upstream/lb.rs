//! Load-balancing choices over a cluster's endpoints: weighted round robin, least request,
//! random, and Envoy's two consistent-hash tables (ring hash and Maglev).
#![forbid(unsafe_code)]

use shunt_mesh::ids::EndpointAddr;

use rand::Rng;
use xxhash_rust::xxh64::xxh64;

use shunt_mesh::routing::HashAlgorithm;

/// Envoy's cap on the ring size (`maximum_ring_size`' default).
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

/// The hash of one key, as Envoy hashes request keys and host addresses (xxHash64, seed 0).
#[must_use]
pub fn hash(bytes: &[u8]) -> u64 {
    xxh64(bytes, 0)
}

/// The next endpoint in weighted round-robin order among `candidates` (indices into the
/// endpoint list); `cursor` advances by one per pick.
pub(super) fn round_robin(
    cursor: &mut u64,
    candidates: &[usize],
    weight: impl Fn(usize) -> u32,
) -> Option<usize> {
    let total: u64 = candidates
        .iter()
        .map(|&i| u64::from(weight(i).max(1)))
        .sum();
    if total == 0 {
        return None;
    }
    let mut position = *cursor % total;
    *cursor = cursor.wrapping_add(1);
    for &i in candidates {
        let w = u64::from(weight(i).max(1));
        if position < w {
            return Some(i);
        }
        position -= w;
    }
    candidates.last().copied()
}

/// The candidate with the most weight per active request (fewest active requests when
/// weights are equal), comparing all candidates; ties go round robin so equally idle
/// endpoints share the load.
pub(super) fn least_request(
    cursor: &mut u64,
    candidates: &[usize],
    weight: impl Fn(usize) -> u32,
    active: impl Fn(usize) -> u32,
) -> Option<usize> {
    // weight / (active + 1), compared by cross-multiplication to stay in integers.
    let score = |i: usize| (u64::from(weight(i).max(1)), u64::from(active(i)) + 1);
    let better = |a: (u64, u64), b: (u64, u64)| a.0 * b.1 > b.0 * a.1;
    let best = candidates
        .iter()
        .map(|&i| score(i))
        .reduce(|a, b| if better(b, a) { b } else { a })?;
    let tied: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|&i| !better(best, score(i)))
        .collect();
    let len = u64::try_from(tied.len()).ok()?;
    let pick = usize::try_from(*cursor % len).ok()?;
    *cursor = cursor.wrapping_add(1);
    tied.get(pick).copied()
}

/// A weighted random candidate.
pub(super) fn random(candidates: &[usize], weight: impl Fn(usize) -> u32) -> Option<usize> {
    let total: u64 = candidates
        .iter()
        .map(|&i| u64::from(weight(i).max(1)))
        .sum();
    if total == 0 {
        return None;
    }
    let mut position = rand::rng().random_range(0..total);
    for &i in candidates {
        let w = u64::from(weight(i).max(1));
        if position < w {
            return Some(i);
        }
        position -= w;
    }
    candidates.last().copied()
}

/// A consistent-hash table over all endpoints of a cluster (ejected ones included, so an
/// ejection moves only that endpoint's keys: a lookup falls through to the next entry).
#[derive(Debug)]
pub(super) enum HashTable {
    /// Sorted `(point, endpoint)` pairs.
    Ring(Vec<(u64, usize)>),
    /// `table_size` slots, each an endpoint.
    Maglev(Vec<usize>),
}

impl HashTable {
    /// Builds the table for `endpoints` (address and weight), as Envoy's
    /// `RingHashLoadBalancer` and `MaglevLoadBalancer` do.
    pub(super) fn build(algorithm: HashAlgorithm, endpoints: &[(EndpointAddr, u32)]) -> Self {
        match algorithm {
            HashAlgorithm::RingHash { minimum_ring_size } => {
                Self::Ring(ring(minimum_ring_size, endpoints))
            }
            HashAlgorithm::Maglev { table_size } => Self::Maglev(maglev(table_size, endpoints)),
        }
    }

    /// The endpoint for `hash`: the first entry at or after it that is `usable`.
    pub(super) fn lookup(&self, hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            Self::Ring(ring) => {
                let start = ring.partition_point(|&(point, _)| point < hash);
                ring.iter()
                    .cycle()
                    .skip(start)
                    .take(ring.len())
                    .map(|&(_, endpoint)| endpoint)
                    .find(|&endpoint| usable(endpoint))
            }
            Self::Maglev(table) => {
                let len = u64::try_from(table.len()).ok().filter(|&len| len > 0)?;
                let start = usize::try_from(hash % len).ok()?;
                table
                    .iter()
                    .cycle()
                    .skip(start)
                    .take(table.len())
                    .copied()
                    .find(|&endpoint| usable(endpoint))
            }
        }
    }
}

/// Envoy's ring: each host gets points in proportion to its weight so that the ring holds
/// at least `minimum_ring_size` points; point `i` of host `a` is `xxh64("<a>_<i>")`.
fn ring(minimum_ring_size: u64, endpoints: &[(EndpointAddr, u32)]) -> Vec<(u64, usize)> {
    let total_weight: f64 = endpoints.iter().map(|&(_, w)| f64::from(w.max(1))).sum();
    if endpoints.is_empty() || total_weight <= 0.0 {
        return Vec::new();
    }
    let min_normalized = endpoints
        .iter()
        .map(|&(_, w)| f64::from(w.max(1)) / total_weight)
        .fold(f64::INFINITY, f64::min);
    #[expect(clippy::cast_precision_loss, reason = "ring sizes are far below 2^52")]
    let (minimum, maximum) = (minimum_ring_size.max(1) as f64, MAX_RING_SIZE as f64);
    let scale = ((min_normalized * minimum).ceil() / min_normalized).min(maximum);
    let mut points = Vec::new();
    for (index, &(addr, weight)) in endpoints.iter().enumerate() {
        let share = f64::from(weight.max(1)) / total_weight;
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "at most MAX_RING_SIZE points"
        )]
        let count = (share * scale).ceil() as u64;
        let address = addr.to_string();
        for i in 0..count {
            points.push((hash(format!("{address}_{i}").as_bytes()), index));
        }
    }
    points.sort_unstable();
    points
}

/// Envoy's Maglev table (Eisenbud et al., with Envoy's weighting): each host walks its own
/// permutation of the slots, `offset + skip × n (mod size)`, taking the next free slot in
/// turn, hosts of lower weight skipping turns.
fn maglev(table_size: u64, endpoints: &[(EndpointAddr, u32)]) -> Vec<usize> {
    struct Entry {
        offset: u64,
        skip: u64,
        next: u64,
        weight: u64,
        target_weight: u64,
    }
    let Ok(size) = usize::try_from(table_size) else {
        return Vec::new();
    };
    if endpoints.is_empty() || table_size < 2 {
        return Vec::new();
    }
    let max_weight = endpoints
        .iter()
        .map(|&(_, w)| u64::from(w.max(1)))
        .max()
        .unwrap_or(1);
    let mut entries: Vec<Entry> = endpoints
        .iter()
        .map(|&(addr, weight)| {
            let address = addr.to_string();
            Entry {
                offset: xxh64(address.as_bytes(), 0) % table_size,
                skip: xxh64(address.as_bytes(), 1) % (table_size - 1) + 1,
                next: 0,
                weight: u64::from(weight.max(1)),
                target_weight: 0,
            }
        })
        .collect();
    let mut table: Vec<Option<usize>> = vec![None; size];
    let mut filled = 0;
    let mut iteration: u64 = 1;
    while filled < size {
        for (index, entry) in entries.iter_mut().enumerate() {
            if filled == size {
                break;
            }
            // A host of weight max_weight / k takes a slot every k-th iteration.
            if iteration * entry.weight < entry.target_weight {
                continue;
            }
            entry.target_weight += max_weight;
            loop {
                let slot = (entry.offset + entry.skip * entry.next) % table_size;
                entry.next += 1;
                let Some(cell) = usize::try_from(slot).ok().and_then(|s| table.get_mut(s)) else {
                    break;
                };
                if cell.is_none() {
                    *cell = Some(index);
                    filled += 1;
                    break;
                }
            }
        }
        iteration += 1;
    }
    table.into_iter().map(|e| e.unwrap_or(0)).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn endpoints(n: u8) -> Vec<(EndpointAddr, u32)> {
        (1..=n)
            .map(|i| (EndpointAddr::new([10, 0, 0, i].into(), 8080), 1))
            .collect()
    }

    fn counts(picks: impl Iterator<Item = usize>) -> HashMap<usize, usize> {
        let mut counts = HashMap::new();
        for pick in picks {
            *counts.entry(pick).or_default() += 1;
        }
        counts
    }

    #[test]
    fn round_robin_follows_weights() {
        let weights = [1, 3, 1];
        let mut cursor = 0;
        let picks =
            counts((0..500).map(|_| round_robin(&mut cursor, &[0, 1, 2], |i| weights[i]).unwrap()));
        assert_eq!(picks[&0], 100);
        assert_eq!(picks[&1], 300);
        assert_eq!(picks[&2], 100);
        // Only candidates are picked.
        assert!((0..10).all(|_| round_robin(&mut cursor, &[2], |_| 1) == Some(2)));
        assert_eq!(round_robin(&mut cursor, &[], |_| 1), None);
    }

    #[test]
    fn random_follows_weights_roughly() {
        let weights = [1, 9];
        let picks = counts((0..10_000).map(|_| random(&[0, 1], |i| weights[i]).unwrap()));
        assert!((8_500..9_500).contains(&picks[&1]), "{picks:?}");
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint_and_rotates_ties() {
        let mut cursor = 0;
        let table: &[(&[u32], &[usize])] = &[
            (&[3, 0, 5], &[1]),
            (&[2, 2, 7], &[0, 1]),
            (&[0, 0, 0], &[0, 1, 2]),
        ];
        for (active, expected) in table {
            let picks =
                counts((0..30).map(|_| {
                    least_request(&mut cursor, &[0, 1, 2], |_| 1, |i| active[i]).unwrap()
                }));
            let mut got: Vec<usize> = picks.keys().copied().collect();
            got.sort_unstable();
            assert_eq!(&got, expected, "active {active:?}");
            assert!(
                picks.values().all(|&n| n == 30 / expected.len()),
                "{picks:?}"
            );
        }
        // Weight counts: weight 4 with 1 active beats weight 1 idle.
        let weights = [4, 1];
        let active = [1, 0];
        assert_eq!(
            least_request(&mut cursor, &[0, 1], |i| weights[i], |i| active[i]),
            Some(0)
        );
    }

    #[test]
    fn consistent_hashes_are_sticky_and_spread() {
        for algorithm in [
            HashAlgorithm::RingHash {
                minimum_ring_size: 1024,
            },
            HashAlgorithm::Maglev { table_size: 65537 },
        ] {
            let table = HashTable::build(algorithm, &endpoints(4));
            let key = hash(b"user-42");
            let first = table.lookup(key, |_| true).unwrap();
            assert!(
                (0..1000).all(|_| table.lookup(key, |_| true) == Some(first)),
                "{algorithm:?}"
            );
            let spread = counts((0..4000).map(|k| {
                table
                    .lookup(hash(format!("key-{k}").as_bytes()), |_| true)
                    .unwrap()
            }));
            assert_eq!(spread.len(), 4, "{algorithm:?}: {spread:?}");
            assert!(
                spread.values().all(|&n| n > 600),
                "{algorithm:?}: {spread:?}"
            );
            // An unusable endpoint's keys fall through to another; the others keep theirs.
            let moved = table.lookup(key, |e| e != first).unwrap();
            assert_ne!(moved, first);
            assert_eq!(table.lookup(key, |_| false), None);
        }
    }

    #[test]
    fn ring_size_follows_minimum_and_weights() {
        let HashTable::Ring(ring) = HashTable::build(
            HashAlgorithm::RingHash {
                minimum_ring_size: 1000,
            },
            &[
                (EndpointAddr::new([10, 0, 0, 1].into(), 80), 1),
                (EndpointAddr::new([10, 0, 0, 2].into(), 80), 3),
            ],
        ) else {
            panic!("ring");
        };
        let per_host = counts(ring.iter().map(|&(_, e)| e));
        // At least the minimum in all, shared by weight.
        assert_eq!(per_host[&0], 250);
        assert_eq!(per_host[&1], 750);
        assert!(ring.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn maglev_moves_few_keys_when_an_endpoint_leaves() {
        let before_endpoints = endpoints(5);
        let before = HashTable::build(
            HashAlgorithm::Maglev { table_size: 65537 },
            &before_endpoints,
        );
        // Endpoint 10.0.0.3 (index 2) leaves; indices shift, so compare addresses.
        let after_endpoints: Vec<_> = before_endpoints
            .iter()
            .copied()
            .filter(|&(a, _)| a.ip().octets()[3] != 3)
            .collect();
        let after = HashTable::build(
            HashAlgorithm::Maglev { table_size: 65537 },
            &after_endpoints,
        );
        let (mut kept, mut moved_elsewhere) = (0, 0);
        for k in 0..10_000 {
            let key = hash(format!("key-{k}").as_bytes());
            let old = before_endpoints[before.lookup(key, |_| true).unwrap()].0;
            let new = after_endpoints[after.lookup(key, |_| true).unwrap()].0;
            if old == new {
                kept += 1;
            } else if old.ip().octets()[3] != 3 {
                moved_elsewhere += 1;
            }
        }
        // About 1/5 of the keys were on the leaving endpoint; Maglev moves few others.
        assert!(kept > 7_000, "kept {kept}");
        assert!(moved_elsewhere < 1_000, "moved {moved_elsewhere}");
    }

    #[test]
    fn maglev_tables_are_full_and_weighted() {
        let HashTable::Maglev(table) = HashTable::build(
            HashAlgorithm::Maglev { table_size: 65537 },
            &[
                (EndpointAddr::new([10, 0, 0, 1].into(), 80), 1),
                (EndpointAddr::new([10, 0, 0, 2].into(), 80), 2),
            ],
        ) else {
            panic!("maglev");
        };
        assert_eq!(table.len(), 65537);
        let share = counts(table.iter().copied());
        let ratio = share[&1] as f64 / share[&0] as f64;
        assert!((1.9..2.1).contains(&ratio), "{share:?}");
    }
}
