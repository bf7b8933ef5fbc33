//! `bench`'s figures for the other ways a plugin takes its attempts: no-op
//! jobs/s through the spawned plugin taking one `ExecuteJob` call per
//! attempt (the SDK's default is attempt streams) and through one
//! connected-in instance, each against the spawned one of the same run;
//! and 50 ms jobs through a pool of one, then three, instances of 4 slots.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tonic::transport::Channel;

use super::bench::{Spawned, failed, spawn_server, spawned_plugin};
use super::error::CliError;
use crate::Did;
use crate::api::proto::{self, jobs_client::JobsClient};
use crate::api::{AuthedChannel, Bearer};
use crate::loadgen::{Table, job_rate, register_test_plugin};

/// 50 ms jobs per instance in the pool figures (each instance runs 4 at
/// once: 80 jobs/s at best).
const SLEEP_JOBS_PER_INSTANCE: usize = 200;

/// Adds the connect-in and pool rows to `t` (the spawned `jobs` row must
/// be there for the ratio).
pub(super) async fn measure(
    t: &mut Table,
    dir: &Path,
    plugin_bin: &Path,
    key: &Path,
    plugin: (&SigningKey, &Did),
    jobs: usize,
) -> Result<(), CliError> {
    eprintln!("bench: jobs with one ExecuteJob call per attempt…");
    let rate = calls_rate(dir, plugin_bin, key, plugin, jobs).await?;
    t.add_ratio(
        "jobs_calls",
        "jobs end to end, the plugin on one ExecuteJob call per attempt (ratio to the spawned one above)",
        rate,
        "/s",
        "jobs",
    );

    let (_server, url) = spawn_server(dir, "", None, None)?;
    let channel = Channel::from_shared(url.clone())
        .map_err(|e| failed("server URL")(e.to_string()))?
        .connect()
        .await
        .map_err(|e| failed("connecting")(e.to_string()))?;
    let handlers = register_test_plugin(channel.clone(), plugin, &["noop", "sleep"])
        .await
        .map_err(failed("registering"))?;
    let mut client = JobsClient::with_interceptor(channel, Bearer::none())
        .max_decoding_message_size(crate::api::MAX_RESPONSE_BYTES);
    let start = |slots: u32| -> Result<Spawned, CliError> {
        Command::new(plugin_bin)
            .arg("--key")
            .arg(key)
            .args(["--connect", &url, "--slots", &slots.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .map(Spawned)
            .map_err(|e| failed("starting the plugin")(e.to_string()))
    };

    eprintln!("bench: jobs through one connected-in instance…");
    let one = start(0)?;
    sessions(&mut client, 1).await?;
    let rate = job_rate(&mut client, &handlers[0], b"", jobs)
        .await
        .map_err(failed("connect-in jobs"))?;
    t.add_ratio(
        "jobs_connected",
        "jobs end to end through one connected-in instance (ratio to the spawned one above)",
        rate,
        "/s",
        "jobs",
    );
    drop(one);
    sessions(&mut client, 0).await?;

    eprintln!("bench: 50 ms jobs through one, then three, connected-in instances…");
    let mut pool = vec![start(4)?];
    sessions(&mut client, 1).await?;
    let sleep = &handlers[1];
    let one = job_rate(&mut client, sleep, b"50", SLEEP_JOBS_PER_INSTANCE)
        .await
        .map_err(failed("pool of one"))?;
    t.add(
        "pool_1",
        "50 ms jobs, one connected-in instance of 4 slots",
        one,
        "/s",
    );
    pool.push(start(4)?);
    pool.push(start(4)?);
    sessions(&mut client, 3).await?;
    let three = job_rate(&mut client, sleep, b"50", 3 * SLEEP_JOBS_PER_INSTANCE)
        .await
        .map_err(failed("pool of three"))?;
    t.add_ratio(
        "pool_3",
        "50 ms jobs, three connected-in instances of 4 slots (ratio to one)",
        three,
        "/s",
        "pool_1",
    );
    Ok(())
}

/// No-op jobs/s through the spawned test plugin told to ask for no
/// attempt streams, on a server of its own.
async fn calls_rate(
    dir: &Path,
    plugin_bin: &Path,
    key: &Path,
    plugin: (&SigningKey, &Did),
    jobs: usize,
) -> Result<f64, CliError> {
    let dir = dir.join("calls");
    std::fs::create_dir_all(&dir).map_err(super::files::io(&dir))?;
    let table = format!(
        "{}env = {{ PULSE_TEST_PLUGIN_ATTEMPT_STREAMS = \"0\" }}\n",
        spawned_plugin(plugin_bin, key)
    );
    let (_server, url) = spawn_server(&dir, &table, None, None)?;
    let channel = Channel::from_shared(url)
        .map_err(|e| failed("server URL")(e.to_string()))?
        .connect()
        .await
        .map_err(|e| failed("connecting")(e.to_string()))?;
    let handlers = register_test_plugin(channel.clone(), plugin, &["noop"])
        .await
        .map_err(failed("registering"))?;
    let mut client = JobsClient::with_interceptor(channel, Bearer::none())
        .max_decoding_message_size(crate::api::MAX_RESPONSE_BYTES);
    let rate = job_rate(&mut client, &handlers[0], b"", jobs)
        .await
        .map_err(failed("jobs with a call per attempt"))?;
    // The figure means something only if the plugin really took calls.
    let sessions = client
        .list_plugin_sessions(proto::ListPluginSessionsRequest {})
        .await
        .map_err(|s| failed("ListPluginSessions")(s.message().to_owned()))?
        .into_inner()
        .sessions;
    match sessions.iter().map(|s| s.attempt_streams).max() {
        Some(0) => Ok(rate),
        other => Err(failed("jobs with a call per attempt")(format!(
            "the plugin's sessions carried {other:?} attempt streams, not calls"
        ))),
    }
}

/// Waits until the server has `n` plugin sessions.
async fn sessions(client: &mut JobsClient<AuthedChannel>, n: usize) -> Result<(), CliError> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let now = client
            .list_plugin_sessions(proto::ListPluginSessionsRequest {})
            .await
            .map_err(|s| failed("ListPluginSessions")(s.message().to_owned()))?
            .into_inner()
            .sessions
            .len();
        if now == n {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(failed("plugin sessions")(format!(
                "{now} sessions after 30 s, waiting for {n}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
