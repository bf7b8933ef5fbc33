//! deploy/: the systemd unit's ExecStart is started as written (only the
//! binary, the config and the data dir are this test's), and its
//! ExecReload is sent to it: the server takes both. The Dockerfile copies
//! binaries this package builds and runs the command the unit runs.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{Serve, operator_token, tempdir};

fn file(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy")
            .join(name),
    )
    .unwrap()
}

/// The value of `key=` in the unit (one line).
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
        .to_owned()
}

#[test]
fn the_systemd_units_start_and_reload_commands_work() {
    let dir = tempdir("deploy-systemd");
    let unit = file("pulse-ledger.service");
    let exec: Vec<String> = unit_value(&unit, "ExecStart")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(exec[0], "/usr/local/bin/pulse-ledger");
    let (_, table) = operator_token("ops", &["admin"]);
    let config = dir.join("pulse-ledger.toml");
    std::fs::write(&config, table).unwrap();
    let data = dir.join("data");
    let args: Vec<String> = exec[1..]
        .iter()
        .map(|a| match a.as_str() {
            "/etc/pulse-ledger/pulse-ledger.toml" => config.display().to_string(),
            "/var/lib/pulse-ledger/data" => data.display().to_string(),
            other => other.to_owned(),
        })
        .collect();
    assert!(args.contains(&"serve".to_owned()), "{args:?}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pulse-ledger"));
    cmd.args(&args)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped());
    let mut server = Serve::spawn(cmd, false);
    // ExecReload, with $MAINPID the server's PID.
    let reload =
        unit_value(&unit, "ExecReload").replace("$MAINPID", &server.child.id().to_string());
    let reload: Vec<&str> = reload.split_whitespace().collect();
    assert!(
        Command::new(reload[0])
            .args(&reload[1..])
            .status()
            .unwrap()
            .success()
    );
    // The reload is logged, and the server goes on: SIGTERM ends it cleanly.
    let mut stderr = server.child.stderr.take().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the reload stopped the server"
    );
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
    assert!(log.contains("tokens reloaded"), "{log}");
    assert!(unit.contains("LimitNOFILE="), "serve wants descriptors");
}

#[test]
fn the_dockerfile_ships_this_packages_binaries_and_serves_as_the_unit_does() {
    let docker = file("Dockerfile");
    for bin in ["pulse-ledger", "pulse-script-plugin", "pulse-test-plugin"] {
        assert!(
            docker.contains(&format!("/src/target/release/{bin}")),
            "the image lacks {bin}"
        );
    }
    for src in [
        "src/bin/pulse-script-plugin.rs",
        "src/bin/pulse-test-plugin.rs",
    ] {
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(src).exists(),
            "{src}"
        );
    }
    assert!(docker.contains(r#"CMD ["serve", "--config", "/etc/pulse-ledger/pulse-ledger.toml"]"#));
    assert!(docker.contains("VOLUME /var/lib/pulse-ledger"));
    assert!(docker.contains("PULSE_LEDGER_DATA_DIR=/var/lib/pulse-ledger/data"));
}
