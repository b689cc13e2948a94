use super::*;
use shunt_mesh::testing::pod;

fn watches() -> (Registry, Arc<TcpWatches>) {
    let mut registry = Registry::default();
    let watches = Arc::new(TcpWatches::register(&mut registry));
    (registry, watches)
}

fn text(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

/// The value of the sample line that starts with `series`; 0 when there is none yet.
fn value(text: &str, series: &str) -> f64 {
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(series)).collect();
    assert!(lines.len() <= 1, "{series} in\n{text}");
    lines.first().map_or(0.0, |line| {
        line.rsplit(' ').next().unwrap().parse().unwrap()
    })
}

fn labels() -> FlowLabels {
    let (a, b) = (
        pod("mesh", "a", [10, 0, 0, 1], "a"),
        pod("shop", "b", [10, 0, 0, 2], "b"),
    );
    FlowLabels::new(Reporter::Source, Some(&a), Some(&b))
}

const SERIES: &str = "{reporter=\"source\",source_workload=\"a\",source_workload_namespace=\"mesh\",\
                      destination_workload=\"b\",destination_workload_namespace=\"shop\"}";

fn event(cookie: u64, srtt_us: u32, total_retrans: u32, lost_out: u32) -> TcpEvent {
    TcpEvent {
        socket_cookie: cookie,
        srtt_us,
        total_retrans,
        lost_out,
        ..TcpEvent::default()
    }
}

fn sample(rtt_us: u32, retransmits: u32, lost: u32) -> Sample {
    Sample {
        figures: TcpFigures {
            rtt_us,
            retransmits,
            lost,
        },
        closed: false,
    }
}

#[test]
fn flow_labels_name_both_workloads_and_unknown_peers() {
    assert_eq!(
        labels(),
        FlowLabels {
            reporter: "source",
            source_workload: "a".into(),
            source_workload_namespace: "mesh".into(),
            destination_workload: "b".into(),
            destination_workload_namespace: "shop".into(),
        }
    );
    let unknown = FlowLabels::new(Reporter::Destination, None, None);
    assert_eq!(
        (unknown.reporter, unknown.source_workload.as_str()),
        ("destination", "unknown")
    );
}

/// How a connection's figures are counted: samples while it lasts, then the kernel's event,
/// or its last reading without one.
#[test]
fn retransmits_rtt_and_losses_are_counted_once_per_connection() {
    struct Case {
        name: &'static str,
        kernel_events: bool,
        samples: &'static [(u32, u32)],
        last: Option<(u32, u32, u32)>,
        event: Option<(u32, u32, u32)>,
        // retransmits, lost, RTT observations, RTT sum (µs)
        want: (u64, u64, u64, u64),
    }
    let cases = [
        Case {
            name: "the event settles a short connection",
            kernel_events: true,
            samples: &[],
            last: Some((90, 6, 0)),
            event: Some((100, 7, 2)),
            want: (7, 2, 1, 100),
        },
        Case {
            name: "samples count first, the event only the rest",
            kernel_events: true,
            samples: &[(50, 3), (60, 5)],
            last: Some((70, 6, 0)),
            event: Some((80, 9, 1)),
            want: (9, 1, 3, 190),
        },
        Case {
            name: "without the ring buffer the last reading settles it",
            kernel_events: false,
            samples: &[(40, 2)],
            last: Some((45, 4, 1)),
            event: None,
            want: (4, 1, 2, 85),
        },
        Case {
            name: "a connection waiting for its event counts only its samples so far",
            kernel_events: true,
            samples: &[(40, 2)],
            last: Some((45, 4, 1)),
            event: None,
            want: (2, 0, 1, 40),
        },
    ];
    for case in cases {
        let (registry, watches) = watches();
        watches.set_kernel_events(case.kernel_events);
        let watch = watches.watch(7, labels());
        for (rtt, retransmits) in case.samples {
            watch.sample(&sample(*rtt, *retransmits, 0));
        }
        watch.finish(case.last.map(|(rtt, r, l)| sample(rtt, r, l)));
        if let Some((rtt, r, l)) = case.event {
            watches.on_event(&event(7, rtt, r, l));
        }
        let text = text(&registry);
        let got = (
            value(&text, &format!("shunt_tcp_retransmits_total{SERIES}")) as u64,
            value(&text, &format!("shunt_tcp_lost_packets_total{SERIES}")) as u64,
            value(&text, &format!("shunt_tcp_rtt_seconds_count{SERIES}")) as u64,
            (value(&text, &format!("shunt_tcp_rtt_seconds_sum{SERIES}")) * 1e6).round() as u64,
        );
        assert_eq!(got, case.want, "{}:\n{text}", case.name);
    }
}

#[test]
fn an_event_for_an_unwatched_socket_is_counted_as_unmatched() {
    let (registry, watches) = watches();
    watches.set_kernel_events(true);
    let watch = watches.watch(7, labels());
    watches.on_event(&event(8, 10, 1, 0));
    let text = text(&registry);
    assert_eq!(
        value(&text, "shunt_tcp_events_unmatched_total"),
        1.0,
        "{text}"
    );
    assert!(!text.contains("shunt_tcp_retransmits_total{"), "{text}");
    // The watched one is still settled by its own event.
    watch.finish(None);
    watches.on_event(&event(7, 10, 3, 0));
    let text = self::text(&registry);
    assert_eq!(
        value(&text, &format!("shunt_tcp_retransmits_total{SERIES}")),
        3.0,
        "{text}"
    );
}

#[test]
fn a_lost_event_is_settled_by_the_last_reading_after_the_wait() {
    let (registry, watches) = watches();
    watches.set_kernel_events(true);
    watches.watch(7, labels()).finish(Some(sample(30, 5, 0)));
    watches.expire(Instant::now() + EVENT_WAIT);
    let text = text(&registry);
    assert_eq!(
        value(&text, &format!("shunt_tcp_retransmits_total{SERIES}")),
        5.0,
        "{text}"
    );
    assert!(watches.lock().is_empty());
}
