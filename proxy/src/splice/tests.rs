use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use shunt_common::OUTBOUND_PORT;

use super::*;

/// The maps in memory, with the programs' side played by the test.
#[derive(Default)]
struct FakeTable {
    to_peer: Mutex<HashMap<SockKey, u64>>,
    spliced: Mutex<HashMap<SockKey, u64>>,
    routes: Mutex<HashMap<SockKey, SpliceRoute>>,
    route_writes: Mutex<u32>,
}

impl FakeTable {
    fn count(&self, socket: SockKey, to_peer: u64) {
        self.to_peer.lock().unwrap().insert(socket, to_peer);
    }

    fn splice(&self, app: SockKey, bytes: u64) {
        self.spliced.lock().unwrap().insert(app, bytes);
    }

    fn route(&self, app: &SockKey) -> Option<SpliceRoute> {
        self.routes.lock().unwrap().get(app).copied()
    }
}

impl SpliceTable for FakeTable {
    fn to_peer(&self, socket: &SockKey) -> io::Result<Option<u64>> {
        Ok(self.to_peer.lock().unwrap().get(socket).copied())
    }

    fn spliced(&self, app: &SockKey) -> io::Result<Option<u64>> {
        Ok(self.spliced.lock().unwrap().get(app).copied())
    }

    fn set_route(&self, app: &SockKey, route: &SpliceRoute) -> io::Result<()> {
        *self.route_writes.lock().unwrap() += 1;
        self.routes.lock().unwrap().insert(*app, *route);
        Ok(())
    }

    fn forget(&self, socket: &SockKey) {
        self.routes.lock().unwrap().remove(socket);
        self.to_peer.lock().unwrap().remove(socket);
        self.spliced.lock().unwrap().remove(socket);
    }
}

/// C (client app, 10.0.0.1:40000 → 127.0.0.1:15001 in netns 1) and S (server app,
/// 10.0.0.2:8080 ← 10.0.0.2:50000 in netns 2).
fn keys() -> (SockKey, SockKey) {
    let client_app = SockKey::from_addrs(
        1,
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 40000),
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, OUTBOUND_PORT),
    );
    let server_app = SockKey::from_addrs(
        2,
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 8080),
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 50000),
    );
    (client_app, server_app)
}

fn pair() -> (Arc<FakeTable>, SplicePair, SockKey, SockKey) {
    let table = Arc::new(FakeTable::default());
    let (client_app, server_app) = keys();
    let pair = SplicePair::new(table.clone(), client_app, server_app);
    (table, pair, client_app, server_app)
}

#[test]
fn a_direction_is_routed_at_its_second_catch_up_when_every_write_took_the_shortcut() {
    let (table, pair, client_app, server_app) = pair();
    let delivery = server_app.peer();
    table.count(delivery, 10);
    pair.caught_up(Direction::ClientToServer, 10);
    assert_eq!(
        table.route(&client_app),
        None,
        "first catch-up routes nothing"
    );
    table.count(delivery, 25);
    pair.caught_up(Direction::ClientToServer, 25);
    assert_eq!(
        table.route(&client_app),
        Some(SpliceRoute {
            to: server_app,
            forwarded: 25
        })
    );
    assert_eq!(
        table.route(&server_app),
        None,
        "the other direction is its own"
    );
    // Later catch-ups move `forwarded` on, without asking the counts again.
    pair.caught_up(Direction::ClientToServer, 40);
    assert_eq!(table.route(&client_app).map(|r| r.forwarded), Some(40));
    // The same total again is no news.
    pair.caught_up(Direction::ClientToServer, 40);
    assert_eq!(*table.route_writes.lock().unwrap(), 2);
}

#[test]
fn a_direction_whose_writes_went_around_the_shortcut_is_never_routed() {
    // (what the program counted for the proxy's socket, what the proxy wrote)
    let cases = [
        (
            None,
            30,
            "no counts: the socket is not in the shortcut, or fell back at once",
        ),
        (Some(20), 30, "counted less: some writes took the TCP stack"),
    ];
    for (counted, forwarded, why) in cases {
        let (table, pair, client_app, server_app) = pair();
        if let Some(counted) = counted {
            table.count(client_app.peer(), counted);
        }
        pair.caught_up(Direction::ServerToClient, 10);
        pair.caught_up(Direction::ServerToClient, forwarded);
        table.count(client_app.peer(), forwarded + 10);
        pair.caught_up(Direction::ServerToClient, forwarded + 10);
        assert_eq!(table.route(&server_app), None, "{why}");
    }
}

#[test]
fn finish_reports_spliced_bytes_and_forgets_all_four_sockets() {
    let (table, pair, client_app, server_app) = pair();
    for (direction, writer) in [
        (Direction::ClientToServer, server_app.peer()),
        (Direction::ServerToClient, client_app.peer()),
    ] {
        table.count(writer, 5);
        pair.caught_up(direction, 3);
        pair.caught_up(direction, 5);
    }
    assert!(table.route(&client_app).is_some() && table.route(&server_app).is_some());
    table.splice(client_app, 1000);
    table.splice(server_app, 2000);
    assert_eq!(
        pair.finish(),
        Spliced {
            client_to_server: 1000,
            server_to_client: 2000
        }
    );
    assert!(table.routes.lock().unwrap().is_empty());
    assert!(table.to_peer.lock().unwrap().is_empty());
    assert!(table.spliced.lock().unwrap().is_empty());
}

#[test]
fn reports_hand_over_each_spliced_byte_once_and_finish_the_rest() {
    let (table, pair, client_app, server_app) = pair();
    assert_eq!(pair.report(), Spliced::default(), "nothing routed yet");
    // Only the client's direction is routed; the server's counts are not read.
    table.count(server_app.peer(), 5);
    pair.caught_up(Direction::ClientToServer, 3);
    pair.caught_up(Direction::ClientToServer, 5);
    table.splice(server_app, 70);
    // (SPLICED_BYTES of the client's app socket now, what `report` says)
    let readings = [
        (100, 100, "the first report: everything so far"),
        (100, 0, "nothing new"),
        (250, 150, "only what came since"),
    ];
    for (total, expected, why) in readings {
        table.splice(client_app, total);
        assert_eq!(
            pair.report(),
            Spliced {
                client_to_server: expected,
                server_to_client: 0
            },
            "{why}"
        );
    }
    table.splice(client_app, 300);
    assert_eq!(
        pair.finish(),
        Spliced {
            client_to_server: 50,
            server_to_client: 0
        },
        "finish adds what the reports did not"
    );
}

#[test]
fn finish_of_a_never_routed_connection_touches_nothing() {
    let (table, pair, client_app, _) = pair();
    table.count(client_app, 1);
    pair.caught_up(Direction::ClientToServer, 1);
    assert_eq!(pair.finish(), Spliced::default());
    assert_eq!(
        table.to_peer.lock().unwrap().len(),
        1,
        "left for the program to drop"
    );
}
