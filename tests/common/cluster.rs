//! A PostgreSQL cluster of a test's own, to stop and start under running
//! servers.

use std::path::Path;
use std::process::Command;

/// A PostgreSQL cluster of the test's own, on a loopback port, to stop and
/// start (the shared one serves every other test). Built with the
/// binaries `.ci/postgres.sh` uses; as root, run as the `postgres` user
/// (the server refuses root). Stopped and removed on drop.
pub struct Cluster {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
    as_postgres: bool,
    /// Server settings beyond the address (`-c name=value …`).
    settings: String,
}

impl Cluster {
    /// A new cluster, started; `None` (with a notice) when no PostgreSQL
    /// binaries are installed here, which fails under `PULSE_LEDGER_CI`.
    pub fn create(name: &str) -> Option<Cluster> {
        Cluster::create_with(name, false)
    }

    /// With `tls_only`, the server presents tests/fixtures/tls's
    /// certificate (for 127.0.0.1, signed by its test CA) and refuses
    /// every TCP connection that is not encrypted.
    pub fn create_with(name: &str, tls_only: bool) -> Option<Cluster> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|v| v.path().join("bin"))
            .chain(
                std::env::var_os("PATH")
                    .iter()
                    .flat_map(std::env::split_paths),
            )
            .find(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file());
        let Some(bin) = bin else {
            assert!(
                std::env::var_os("PULSE_LEDGER_CI").is_none(),
                "no PostgreSQL binaries (initdb, pg_ctl): CI must stop and start a real cluster"
            );
            eprintln!(
                "skipped ({name}): no PostgreSQL binaries (initdb, pg_ctl) to run a cluster of its own"
            );
            return None;
        };
        let uid = Command::new("id").arg("-u").output().unwrap();
        let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let dir = std::env::temp_dir().join(format!("pulse-ledger-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if as_postgres {
            assert!(
                Command::new("chown")
                    .arg("postgres")
                    .arg(&dir)
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cluster = Cluster {
            bin,
            dir,
            port,
            as_postgres,
            settings: String::new(),
        };
        let data = cluster.dir.join("data");
        let init = cluster
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        if tls_only {
            let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
            for file in ["server.pem", "server.key"] {
                std::fs::copy(fixtures.join(file), data.join(file)).unwrap();
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .unwrap();
            if cluster.as_postgres {
                let chown = Command::new("chown")
                    .arg("postgres")
                    .args(["server.pem", "server.key", "pg_hba.conf"].map(|f| data.join(f)))
                    .status()
                    .unwrap();
                assert!(chown.success());
            }
            cluster.settings =
                " -c ssl=on -c ssl_cert_file=server.pem -c ssl_key_file=server.key".into();
        }
        cluster.start();
        Some(cluster)
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        self.command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(args)
            .output()
            .unwrap()
    }

    pub fn ctl(&self, args: &[&str]) {
        let out = self.pg_ctl(args);
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        );
    }

    pub fn start(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {}{}",
            self.port,
            self.dir.display(),
            self.settings
        );
        let log = self.dir.join("server.log");
        self.ctl(&["-w", "-l", log.to_str().unwrap(), "-o", &options, "start"]);
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast: every connection closed by it).
    pub fn stop(&self) {
        self.ctl(&["-w", "-m", "fast", "stop"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
