//! The web console in a real browser (issue 25): headless Chromium loads
//! each page from a real `serve`, the handler page verifies the chain in
//! the browser (and catches a tampered proof), the browser's BLAKE3
//! matches the Rust crate's, and a screenshot of each page is written to
//! `target/console-screenshots/` for review. `.ci/run` installs Chromium;
//! without it these tests skip with a notice (and fail under CI).

#![allow(clippy::unwrap_used)] // test code: a panic is a failure report

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::console::ConsoleServe;
use common::{handler_register, key, plugin_register, tempdir, update_handler};
use pulse_ledger::api::proto::{self, registry_client::RegistryClient};

/// The Chromium binary, or `None` (with a notice) when there is none.
fn chromium() -> Option<PathBuf> {
    let candidates = std::env::var_os("PULSE_TEST_CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            [
                "/usr/bin/chromium",
                "/usr/bin/chromium-browser",
                "/usr/bin/google-chrome",
            ]
            .map(PathBuf::from),
        );
    for c in candidates {
        if c.exists() {
            return Some(c);
        }
    }
    assert!(
        std::env::var_os("PULSE_LEDGER_CI").is_none(),
        "no Chromium: CI must run the browser tests (.ci/run installs the chromium package)"
    );
    eprintln!(
        "skipped the browser tests: no Chromium (install the chromium package, or set PULSE_TEST_CHROMIUM)"
    );
    None
}

fn start(dir: &Path, env: &[(&str, &str)]) -> ConsoleServe {
    ConsoleServe::start(&[], dir, env)
}

/// What Chromium made of `url`: the DOM once the page settled, and the
/// console messages it logged.
struct Loaded {
    dom: String,
    console: Vec<String>,
}

/// Loads `url` headless at `size` (width, height); with `screenshot`,
/// writes a PNG of it there.
fn load(browser: &Path, url: &str, size: (u32, u32), screenshot: Option<&Path>) -> Loaded {
    // A profile of its own: two browsers on one profile refuse to start.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let profile = tempdir(&format!("chromium-profile-{run}"));
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--window-size={},{}", size.0, size.1));
    match screenshot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let console = stderr
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains(":INFO:CONSOLE"))
        .map(str::to_owned)
        .collect();
    assert!(out.status.success(), "chromium failed on {url}:\n{stderr}");
    Loaded {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        console,
    }
}

/// A log with a plugin and a handler of two statements.
async fn register(grpc: &str) -> String {
    let mut reg = RegistryClient::connect(grpc.to_owned()).await.unwrap();
    let p = key("browser-plugin");
    let h = key("browser-handler");
    let genesis = handler_register(&h, "resize", &p.did);
    let update = update_handler(&genesis, &h, "resize", &p.did, "1.1.0");
    for a in [plugin_register(&p, "images"), genesis, update] {
        reg.submit(proto::SubmitRequest {
            envelope: a.envelope().to_vec(),
        })
        .await
        .unwrap();
    }
    h.did.to_string()
}

fn errors(loaded: &Loaded) -> Vec<&String> {
    loaded
        .console
        .iter()
        .filter(|l| l.contains("Uncaught") || l.contains("ERROR") || l.contains("Error"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_page_verifies_its_chain_in_the_browser() {
    let Some(browser) = chromium() else {
        return;
    };
    let dir = tempdir("browser-chain");
    let c = start(&dir, &[]);
    let handler = register(&c.grpc).await;
    let url = format!("http://{}/#/handler/{handler}", c.http);
    let page = load(&browser, &url, (1280, 800), None);
    assert!(errors(&page).is_empty(), "{:?}", page.console);
    assert_eq!(
        page.dom.matches("class=\"badge ok\"").count(),
        2,
        "both statements verified:\n{}",
        page.dom
    );
    assert!(!page.dom.contains("NOT verified"), "{}", page.dom);
    assert!(
        page.dom
            .contains("Signature by the log key: verified in this browser")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_proof_is_shown_not_verified() {
    let Some(browser) = chromium() else {
        return;
    };
    let dir = tempdir("browser-tampered");
    let c = start(&dir, &[("PULSE_LEDGER_TEST_TAMPER_PROOF", "1")]);
    let handler = register(&c.grpc).await;
    let url = format!("http://{}/#/handler/{handler}", c.http);
    let page = load(&browser, &url, (1280, 800), None);
    assert!(
        page.dom
            .contains("NOT verified: its inclusion proof does not lead to the checkpoint"),
        "the tampered proof went unnoticed:\n{}",
        page.dom
    );
    assert_eq!(
        page.dom.matches("class=\"badge ok\"").count(),
        1,
        "the other statement still verifies"
    );
}

/// The browser's BLAKE3 against the Rust crate, and its Merkle trees and
/// consistency checks against the server's: every prefix root of a log of
/// 11 entries computed in the browser, and the proof from each prefix to
/// the whole log verified there (and refused with a forged old root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browsers_blake3_and_tree_checks_match_the_servers() {
    let Some(browser) = chromium() else {
        return;
    };
    let dir = tempdir("browser-blake3");
    let c = start(&dir, &[]);
    register(&c.grpc).await;
    let mut reg = RegistryClient::connect(c.grpc.clone()).await.unwrap();
    for i in 0..8 {
        reg.submit(proto::SubmitRequest {
            envelope: plugin_register(&key(&format!("selftest-{i}")), "p")
                .envelope()
                .to_vec(),
        })
        .await
        .unwrap();
    }
    let page = load(
        &browser,
        &format!("http://{}/#/selftest", c.http),
        (1280, 800),
        None,
    );
    let start = page.dom.find("id=\"selftest-log\">").unwrap() + "id=\"selftest-log\">".len();
    let log = &page.dom[start..start + page.dom[start..].find("</pre>").unwrap()];
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.first(), Some(&"root 11 ok"), "{log}");
    assert_eq!(lines.len(), 13, "{log}");
    for (m, line) in lines[1..].iter().enumerate() {
        let forged = if m > 0 && m < 11 {
            "refused"
        } else {
            "skipped"
        };
        assert_eq!(
            *line,
            format!("consistency {m} 11 ok / forged old root: {forged}"),
            "{log}"
        );
    }
    let start = page.dom.find("id=\"selftest\">").unwrap() + "id=\"selftest\">".len();
    let text = &page.dom[start..start + page.dom[start..].find("</pre>").unwrap()];
    let mut checked = 0;
    for line in text.lines() {
        let (n, got) = line.split_once(' ').unwrap();
        let n: usize = n.parse().unwrap();
        let input: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            got,
            blake3::hash(&input).to_hex().as_str(),
            "BLAKE3 of {n} bytes"
        );
        checked += 1;
    }
    assert_eq!(checked, 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_loads_without_console_errors_and_is_photographed() {
    let Some(browser) = chromium() else {
        return;
    };
    let dir = tempdir("browser-pages");
    let c = start(&dir, &[]);
    let handler = register(&c.grpc).await;
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let pages = [
        ("overview", "#/".to_owned(), "Deepest queues"),
        ("jobs", "#/jobs".to_owned(), "No job matches."),
        ("handlers", "#/handlers?name=res".to_owned(), ">resize<"),
        ("plugins", "#/plugins".to_owned(), "Last refusals"),
        ("schedules", "#/schedules".to_owned(), "No schedule."),
        (
            "log",
            "#/log".to_owned(),
            "(size 3) was verified in this browser",
        ),
        ("handler", format!("#/handler/{handler}"), "verified"),
    ];
    for (name, hash, expect) in &pages {
        let url = format!("http://{}/{hash}", c.http);
        let page = load(&browser, &url, (1280, 800), None);
        assert!(errors(&page).is_empty(), "{name}: {:?}", page.console);
        assert!(
            page.dom.contains(expect),
            "{name} lacks {expect:?}:\n{}",
            page.dom
        );
        for (label, size) in [("", (1280, 800)), ("-phone", (390, 844))] {
            let shot = shots.join(format!("{name}{label}.png"));
            let _ = std::fs::remove_file(&shot);
            load(&browser, &url, size, Some(&shot));
            let png = std::fs::read(&shot).unwrap();
            assert!(png.starts_with(b"\x89PNG"), "{name}{label}: no screenshot");
        }
    }
}

/// A job's page follows it live (its progress bar moves), and its actions
/// need their scopes: cancel with a read-only token is refused and changes
/// nothing; with the operator's token (typed once into the page) cancel
/// and then retry go through, each after a confirmation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_moves_live_and_its_actions_need_their_scopes() {
    use pulse_ledger::api::proto::jobs_client::JobsClient;
    let Some(chromium) = chromium() else {
        return;
    };
    let dir = tempdir("browser-live");
    let p = key("browser-live-plugin");
    let pkey = common::key_file(&dir, &p);
    let (reader, reader_table) = common::operator_token("reader", &["read"]);
    let (operator, operator_table) =
        common::operator_token("operator", &["read", "enqueue", "cancel"]);
    let plugin = common::plugin_table(
        "tools",
        &["--key".into(), pkey.display().to_string()],
        &dir.join("events.log"),
    );
    let config = dir.join("live.toml");
    std::fs::write(
        &config,
        format!("{plugin}{reader_table}\n{operator_table}\n"),
    )
    .unwrap();
    let c = ConsoleServe::start(
        &["--config", config.to_str().unwrap()],
        &dir.join("data"),
        &[],
    );
    let mut reg = RegistryClient::connect(c.grpc.clone()).await.unwrap();
    let h = key("browser-live-progress");
    for a in [
        plugin_register(&p, "tools"),
        handler_register(&h, "progress", &p.did),
    ] {
        reg.submit(proto::SubmitRequest {
            envelope: a.envelope().to_vec(),
        })
        .await
        .unwrap();
    }

    let mut b = common::cdp::Browser::start(&chromium, tempdir("chromium-live"), (1280, 800));
    b.navigate(&format!("http://{}/#/", c.http));
    // The page's script has run (it draws the overview).
    b.wait_for(
        "document.readyState === 'complete' && typeof route === 'function'",
        10,
    );
    b.type_and_submit("token", &reader);
    b.wait_for("document.querySelector('.card-value')", 10);
    // Enqueued through gRPC while the overview is open: it shows up there.
    let mut jobs = JobsClient::connect(c.grpc.clone()).await.unwrap();
    let mut req = tonic::Request::new(proto::EnqueueRequest {
        handler: h.did.to_string(),
        payload: b"1000".to_vec(),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {operator}").parse().unwrap(),
    );
    let id = hex::encode(
        jobs.enqueue(req)
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
            .id,
    );
    b.wait_for(
        "[...document.querySelectorAll('.card')].some((c) => ['Ready', 'Running', 'Held'].includes(c.querySelector('.card-label').textContent) && c.querySelector('.card-value').textContent !== '0')",
        20,
    );

    // Its page: the progress bar moves without a reload.
    b.navigate(&format!("http://{}/#/job/{id}", c.http));
    let progress = "Number((document.querySelector('[role=progressbar]') || {getAttribute: () => 0}).getAttribute('aria-valuenow'))";
    let first = b.wait_for(&format!("{progress} >= 10 && {progress}"), 30);
    b.wait_for(&format!("{progress} > {first}"), 30);

    // Cancel with the read-only token: refused, by its rule, and nothing
    // changes.
    b.click("Cancel");
    b.wait_for(
        "document.getElementById('status').textContent.includes('scope_missing')",
        10,
    );
    let state = "(document.querySelector('.state') || {}).textContent";
    assert_eq!(b.eval(state), serde_json::json!("running"));

    // The operator's token, typed once: cancel, then retry.
    b.type_and_submit("token", &operator);
    b.wait_for(&format!("{state} === 'running'"), 10);
    b.click("Cancel");
    b.wait_for(&format!("{state} === 'cancelled'"), 20);
    b.click("Retry");
    b.wait_for(
        &format!("['queued', 'held', 'running', 'succeeded'].includes({state})"),
        20,
    );
    assert_eq!(b.dialogs.len(), 3, "{:?}", b.dialogs);
    assert!(b.dialogs.iter().all(|d| d.contains(&id)), "{:?}", b.dialogs);
    let thrown: Vec<_> = b
        .console
        .iter()
        .filter(|l| l.starts_with("exception") || l.starts_with("error"))
        .collect();
    assert!(thrown.is_empty(), "{thrown:?}");
}

/// A key that signs two statements for one seq: the log keeps the first,
/// records the other as evidence, and the log and handler pages show it,
/// checked in the browser (both signatures by the same key, same seq).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equivocation_evidence_is_shown_and_checked_in_the_browser() {
    let Some(browser) = chromium() else {
        return;
    };
    let dir = tempdir("browser-equivocation");
    let c = start(&dir, &[]);
    let mut reg = RegistryClient::connect(c.grpc.clone()).await.unwrap();
    let p = key("equivocating-plugin");
    let h = key("equivocating-handler");
    let genesis = handler_register(&h, "resize", &p.did);
    let first = update_handler(&genesis, &h, "resize", &p.did, "1.1.0");
    let second = update_handler(&genesis, &h, "resize", &p.did, "2.0.0");
    for a in [plugin_register(&p, "images"), genesis, first] {
        reg.submit(proto::SubmitRequest {
            envelope: a.envelope().to_vec(),
        })
        .await
        .unwrap();
    }
    let refused = reg
        .submit(proto::SubmitRequest {
            envelope: second.envelope().to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(common::reason(&refused), "equivocation", "{refused:?}");
    for hash in ["#/log".to_owned(), format!("#/handler/{}", h.did)] {
        let page = load(
            &browser,
            &format!("http://{}/{hash}", c.http),
            (1280, 800),
            None,
        );
        assert!(
            page.dom
                .contains("the key signed two statements for this seq (verified in this browser)"),
            "{hash}:\n{}",
            page.dom
        );
        assert!(errors(&page).is_empty(), "{hash}: {:?}", page.console);
    }
}

/// The pages at scale: 10,000 jobs and a 500-statement chain are paged
/// (50 to a page, with a link to the next), and the chain's pages verify.
/// And the keyboard reaches every control: Tab goes through the page
/// links, the token field and the filters, and Enter on a link follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_jobs_and_a_long_chain_are_paged_and_the_keyboard_reaches_everything() {
    use pulse_ledger::api::proto::jobs_client::JobsClient;
    let Some(chromium) = chromium() else {
        return;
    };
    let dir = tempdir("browser-scale");
    let c = start(&dir, &[]);
    let mut reg = RegistryClient::connect(c.grpc.clone()).await.unwrap();
    let p = key("scale-plugin");
    let h = key("scale-handler");
    let mut prev = handler_register(&h, "bulk", &p.did);
    let mut chain = vec![plugin_register(&p, "tools"), prev.clone()];
    for i in 1..500 {
        let next = update_handler(&prev, &h, "bulk", &p.did, &format!("1.0.{i}"));
        chain.push(next.clone());
        prev = next;
    }
    for a in &chain {
        reg.submit(proto::SubmitRequest {
            envelope: a.envelope().to_vec(),
        })
        .await
        .unwrap();
    }
    // No plugin connects: the jobs wait, held or queued.
    let mut jobs = JobsClient::connect(c.grpc.clone()).await.unwrap();
    for batch in 0..10 {
        let reqs = (0..1_000)
            .map(|i| proto::EnqueueRequest {
                handler: h.did.to_string(),
                payload: format!("{batch}-{i}").into_bytes(),
                ..Default::default()
            })
            .collect();
        jobs.enqueue_batch(proto::EnqueueBatchRequest { jobs: reqs })
            .await
            .unwrap();
    }
    let url = |hash: &str| format!("http://{}/{hash}", c.http);
    let page = load(&chromium, &url("#/jobs"), (1280, 800), None);
    assert_eq!(
        page.dom.matches("href=\"#/job/").count(),
        50,
        "one page of 50"
    );
    assert!(page.dom.contains(">Next page<"), "and a next page");
    let first = load(
        &chromium,
        &url(&format!("#/handler/{}", h.did)),
        (1280, 800),
        None,
    );
    assert_eq!(
        first.dom.matches("class=\"badge ok\"").count(),
        50,
        "{}",
        first.dom
    );
    assert!(first.dom.contains(">Later statements<"));
    let last = load(
        &chromium,
        &url(&format!("#/handler/{}?from=450", h.did)),
        (1280, 800),
        None,
    );
    assert_eq!(last.dom.matches("class=\"badge ok\"").count(), 50);
    assert!(!last.dom.contains("NOT verified"));
    assert!(!last.dom.contains(">Later statements<"));
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    load(
        &chromium,
        &url("#/jobs"),
        (1280, 800),
        Some(&shots.join("jobs-10000.png")),
    );

    // The keyboard: Tab through the jobs page, Enter on a link.
    let mut b = common::cdp::Browser::start(&chromium, tempdir("chromium-keys"), (1280, 800));
    b.navigate(&url("#/jobs"));
    b.wait_for("document.querySelectorAll('tbody tr').length === 50", 20);
    let mut reached = Vec::new();
    // The date field takes a Tab for each of its parts.
    for _ in 0..24 {
        b.press("Tab");
        reached.push(
            b.eval("(document.activeElement.id || document.activeElement.textContent || document.activeElement.tagName).trim()")
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for control in [
        "Overview",
        "Jobs",
        "Handlers",
        "Plugins",
        "Schedules",
        "Log",
        "token",
        "Use",
        "f-state",
        "f-handler",
        "Filter",
    ] {
        assert!(
            reached.iter().any(|r| r == control),
            "Tab never reached {control}: {reached:?}"
        );
    }
    // Back to the first link, and Enter follows it.
    b.eval("document.querySelector('nav a[href=\"#/log\"]').focus()");
    b.press("Enter");
    b.wait_for(
        "location.hash === '#/log' && document.querySelector('h1').textContent === 'Log'",
        10,
    );
}
