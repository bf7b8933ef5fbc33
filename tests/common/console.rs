//! A `serve` with the web console on (`--http-listen`), for the console
//! and browser suites.

use std::io::BufRead as _;

/// A `serve` process with its gRPC and console addresses; killed when
/// dropped.
pub struct ConsoleServe {
    pub child: std::process::Child,
    /// `http://ADDR` of the gRPC API.
    pub grpc: String,
    /// `ADDR` of the console's HTTP listener.
    pub http: String,
}

impl Drop for ConsoleServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ConsoleServe {
    /// Runs `serve --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 ARGS
    /// --data-dir DIR` with `env`, and waits for the lines naming both
    /// addresses.
    pub fn start(args: &[&str], data_dir: &std::path::Path, env: &[(&str, &str)]) -> ConsoleServe {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "error")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let grpc = first.split_whitespace().nth(3).unwrap().to_owned();
        let http = lines
            .find_map(|l| {
                let l = l.unwrap();
                l.strip_prefix("console on http://")
                    .or_else(|| l.strip_prefix("console on https://"))
                    .map(|a| a.trim_end_matches('/').to_owned())
            })
            .expect("serve printed no console address");
        ConsoleServe {
            child,
            grpc: format!("http://{grpc}"),
            http,
        }
    }
}
