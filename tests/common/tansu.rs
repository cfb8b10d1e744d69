//! tansu, the Kafka-protocol broker the Kafka tests and the harness's sink section run on
//! loopback (in-memory storage): started, and topics created with its own command line.
//! Shared by `tests/kafka.rs` (through `common`) and `tests/bench/sink.rs` (by path).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts the tansu binary `tansu` with in-memory storage listening on `addr`
/// (`HOST:PORT`), and waits until it does.
pub fn start(tansu: &str, addr: &str) -> Child {
    let url = format!("tcp://{addr}");
    let child = Command::new(tansu)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {tansu}: {e}"));
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "tansu did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Creates topic `name` with `partitions` partitions on the broker at `addr`.
pub fn create_topic(tansu: &str, addr: &str, name: &str, partitions: u32) {
    let status = Command::new(tansu)
        .args(["topic", "create", "--broker", &format!("tcp://{addr}")])
        .args(["--partitions", &partitions.to_string(), name])
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {tansu}: {e}"));
    assert!(status.success(), "cannot create topic {name}");
}
