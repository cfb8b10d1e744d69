//! A PostgreSQL cluster of a test's own, for the PostgreSQL destination: made with `initdb`,
//! started with `pg_ctl` on a free loopback port (as the `postgres` user when running as
//! root: PostgreSQL refuses to run as root), stopped and removed when dropped. Shared by
//! `tests/postgres.rs` (through `common`) and `tests/bench/destinations.rs` (by path).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running cluster.
pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    /// Its loopback port.
    pub port: u16,
}

impl Postgres {
    /// `initdb` in `dir` (emptied first) with PostgreSQL's programs in `bin`, then
    /// `pg_ctl start`; with `fsync` off when `fast`.
    pub fn start(bin: &Path, dir: &Path, fast: bool) -> Postgres {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).expect("cannot make the cluster's directory");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("no free port")
            .port();
        let pg = Postgres {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            port,
        };
        if is_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir)
                .status();
            assert!(chown.is_ok_and(|s| s.success()), "cannot chown {dir:?}");
        }
        let data = pg.data();
        pg.run(
            "initdb",
            &["-D", &data, "-U", "tl", "--auth=trust", "-E", "UTF8"],
        );
        pg.ctl("start", fast);
        pg
    }

    /// Turns TLS on with the certificate and key `cert_pem`, `key_pem` (PEM), and restarts.
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) {
        let data = self.dir.join("data");
        std::fs::write(data.join("server.crt"), cert_pem).expect("cannot write server.crt");
        std::fs::write(data.join("server.key"), key_pem).expect("cannot write server.key");
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap_or_default();
        conf.push_str("\nssl = on\n");
        std::fs::write(data.join("postgresql.conf"), conf).expect("cannot write postgresql.conf");
        let key = data.join("server.key");
        let chmod = Command::new("chmod").arg("600").arg(&key).status();
        assert!(chmod.is_ok_and(|s| s.success()), "cannot chmod {key:?}");
        if is_root() {
            for file in ["server.crt", "server.key", "postgresql.conf"] {
                let chown = Command::new("chown")
                    .arg("postgres")
                    .arg(data.join(file))
                    .status();
                assert!(chown.is_ok_and(|s| s.success()), "cannot chown {file}");
            }
        }
        self.ctl("restart", true);
    }

    fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    /// Runs one of PostgreSQL's programs; panics with its output if it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        let out = self
            .command(program)
            .args(args)
            .output()
            .expect("cannot run PostgreSQL's programs");
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// `pg_ctl start|stop|restart`, waiting until it is done.
    pub fn ctl(&self, action: &str, fast: bool) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        if fast {
            options.push_str(" -c fsync=off");
        }
        let log = self.dir.join("log").to_string_lossy().into_owned();
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-o", &options, "-l", &log, "-w", "-m", "fast", action,
            ],
        );
    }

    /// The sink's address.
    pub fn url(&self) -> String {
        format!("postgres://tl@127.0.0.1:{}/postgres", self.port)
    }

    /// The rows of `sql` as psql prints them unaligned (`|` between columns).
    pub fn query(&self, sql: &str) -> Vec<String> {
        let port = self.port.to_string();
        let out = self.run(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "tl",
                "-d",
                "postgres",
                "-At",
                "-c",
                sql,
            ],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
