//! A timely cluster of two processes on loopback runs the same dataflow as one process:
//! replaying a generated adversarial workload gives a change stream and a snapshot
//! byte-identical to `run -w 1`; and when a process dies, the other stops with an error
//! instead of hanging.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use throughline::replay::FIXTURE_WALL_CLOCK_MS;
use throughline::workload::{self, GenArgs};

const BIN: &str = env!("CARGO_BIN_EXE_throughline");

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("throughline-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A hostfile of two free loopback ports.
fn hostfile(dir: &Path) -> PathBuf {
    let ports: Vec<u16> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let path = dir.join("hosts");
    std::fs::write(
        &path,
        ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}\n"))
            .collect::<String>(),
    )
    .unwrap();
    path
}

fn workload(dir: &Path) -> PathBuf {
    let mut out = Vec::new();
    let args = GenArgs {
        events: 4000,
        profiles: 150,
        seed: 21,
        adversarial: true,
        start_ms: 1_767_225_600_000,
    };
    workload::generate(&args, &mut out).unwrap();
    let path = dir.join("events.ndjson");
    std::fs::write(&path, out).unwrap();
    path
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "throughline {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn helper(hosts: &Path) -> Child {
    Command::new(BIN)
        .args([
            "run",
            "--processes",
            "2",
            "--process",
            "1",
            "--hostfile",
            hosts.to_str().unwrap(),
            "-q",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn two_processes_give_the_output_of_one() {
    let dir = temp_dir("replay");
    let input = workload(&dir);
    let wall = format!("{FIXTURE_WALL_CLOCK_MS}");
    let input = input.to_str().unwrap();
    for extra in [&[][..], &["--snapshot"][..]] {
        let mut single = vec![
            "run",
            "-w",
            "1",
            "--input",
            input,
            "--wall-clock-ms",
            &wall,
            "-q",
        ];
        single.extend_from_slice(extra);
        let expected = run(&single).stdout;
        assert!(!expected.is_empty());

        let hosts = hostfile(&dir);
        let hosts_arg = hosts.to_str().unwrap().to_string();
        let helper = helper(&hosts);
        let mut leader = vec![
            "run",
            "--processes",
            "2",
            "--process",
            "0",
            "--hostfile",
            &hosts_arg,
            "--input",
            input,
            "--wall-clock-ms",
            &wall,
            "-q",
        ];
        leader.extend_from_slice(extra);
        let got = run(&leader).stdout;
        let helper = helper.wait_with_output().unwrap();
        assert!(
            helper.status.success(),
            "{}",
            String::from_utf8_lossy(&helper.stderr)
        );
        assert!(
            got == expected,
            "{extra:?}: the cluster's output differs from one process's"
        );
    }
}

#[test]
fn a_dead_process_stops_the_cluster_with_an_error() {
    let dir = temp_dir("failure");
    let hosts = hostfile(&dir);
    let mut helper = helper(&hosts);
    let mut leader = Command::new(BIN)
        .args([
            "run",
            "--processes",
            "2",
            "--process",
            "0",
            "--hostfile",
            hosts.to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = leader.stdin.take().unwrap();
    writeln!(stdin, "{{\"userId\":\"u-1\",\"timestamp\":1767225600000}}").unwrap();
    // the cluster runs once the first change comes out
    let mut stdout = std::io::BufReader::new(leader.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(first.contains("user_id:u-1"), "{first}");
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    helper.kill().unwrap();
    helper.wait().unwrap();
    // more input after the helper died: the leader must fail, not hang
    let start = Instant::now();
    loop {
        let _ = writeln!(stdin, "{{\"userId\":\"u-2\",\"timestamp\":1767225601000}}");
        if let Some(status) = leader.try_wait().unwrap() {
            assert!(
                !status.success(),
                "the leader exited 0 after losing a process"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the leader hangs after losing a process"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = leader.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("throughline: error"), "{stderr}");
}
