//! Headless Chromium driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: commands on fd 3, answers and events on
//! fd 4, each a JSON message ended by a NUL byte), for browser tests that
//! type, click and wait. No WebSocket and no driver binary needed.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// One browser with one page.
pub struct Browser {
    child: std::process::Child,
    to: std::fs::File,
    from: BufReader<std::fs::File>,
    next_id: u64,
    session: String,
    /// Console messages and uncaught exceptions seen so far.
    pub console: Vec<String>,
    /// JavaScript dialogs (confirm, alert) seen and accepted, by message.
    pub dialogs: Vec<String>,
    _profile: std::path::PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two descriptors it creates.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both were just created and are owned here alone.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    /// Starts `chromium` headless at `size` with a page attached.
    pub fn start(chromium: &Path, profile: std::path::PathBuf, size: (u32, u32)) -> Browser {
        let (cmd_read, cmd_write) = pipe();
        let (out_read, out_write) = pipe();
        let (r, w) = (cmd_read.as_raw_fd(), out_write.as_raw_fd());
        let mut cmd = std::process::Command::new(chromium);
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--window-size={},{}", size.0, size.1))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        // SAFETY: only dup2(2) between fork and exec, on descriptors open
        // in the parent.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop((cmd_read, out_write));
        let mut b = Browser {
            child,
            to: std::fs::File::from(cmd_write),
            from: BufReader::new(std::fs::File::from(out_read)),
            next_id: 0,
            session: String::new(),
            console: Vec::new(),
            dialogs: Vec::new(),
            _profile: profile,
        };
        let target = b.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let attached = b.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        for domain in ["Page.enable", "Runtime.enable"] {
            b.command(domain, json!({}));
        }
        b
    }

    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let mut msg = json!({"id": self.next_id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        self.next_id
    }

    /// Reads one message, handling events (console, dialogs) on the way.
    fn read(&mut self) -> Value {
        let mut buf = Vec::new();
        self.from.read_until(0, &mut buf).unwrap();
        assert!(!buf.is_empty(), "the browser closed its pipe");
        buf.pop();
        let v: Value = serde_json::from_slice(&buf).unwrap();
        match v["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args = v["params"]["args"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|x| x["value"].to_string())
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                self.console.push(format!(
                    "{}: {args}",
                    v["params"]["type"].as_str().unwrap_or("")
                ));
            }
            Some("Runtime.exceptionThrown") => {
                self.console.push(format!(
                    "exception: {}",
                    v["params"]["exceptionDetails"]["exception"]["description"]
                ));
            }
            Some("Page.javascriptDialogOpening") => {
                self.dialogs
                    .push(v["params"]["message"].as_str().unwrap_or("").to_owned());
                let session = self.session.clone();
                self.send(
                    Some(&session),
                    "Page.handleJavaScriptDialog",
                    json!({"accept": true}),
                );
            }
            _ => {}
        }
        v
    }

    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.send(session, method, params);
        loop {
            let v = self.read();
            if v["id"].as_u64() == Some(id) {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    /// A command to the page.
    pub fn command(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(Some(&session), method, params)
    }

    /// Goes to `url`.
    pub fn navigate(&mut self, url: &str) {
        self.command("Page.navigate", json!({"url": url}));
    }

    /// The value of `expression` in the page (awaited if a promise).
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.command(
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits (`secs` at most) until `expression` is truthy in the page;
    /// its last value.
    pub fn wait_for(&mut self, expression: &str, secs: u64) -> Value {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.eval(expression);
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            assert!(
                Instant::now() < until,
                "{expression} still {v} after {secs} s; page: {}",
                self.eval("document.getElementById('main') ? document.getElementById('main').innerText : document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Clicks the first button whose text is `label` (as a keyboard user
    /// would: focus, then Enter's click), waiting up to 10 s for it: a live
    /// page may be drawing itself again at that moment.
    pub fn click(&mut self, label: &str) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.eval(&format!(
                "(() => {{ const b = [...document.querySelectorAll('button')].find((x) => x.textContent.trim() === {label:?}); if (!b) return false; b.focus(); b.click(); return true; }})()"
            ));
            if found == json!(true) {
                return;
            }
            assert!(
                Instant::now() < until,
                "no button {label:?} after 10 s; page: {}",
                self.eval("document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Presses a key (`Tab`, `Enter`) as the keyboard would.
    pub fn press(&mut self, key: &str) {
        let code = match key {
            "Tab" => 9,
            "Enter" => 13,
            other => panic!("no key code for {other}"),
        };
        for kind in ["keyDown", "keyUp"] {
            let mut params =
                json!({"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code});
            if key == "Enter" && kind == "keyDown" {
                params["text"] = json!("\r");
            }
            self.command("Input.dispatchKeyEvent", params);
        }
    }

    /// Types `text` into the input `id` and submits its form.
    pub fn type_and_submit(&mut self, id: &str, text: &str) {
        let done = self.eval(&format!(
            "(() => {{ const i = document.getElementById({id:?}); i.focus(); i.value = {text:?}; i.form.requestSubmit(); return true; }})()"
        ));
        assert_eq!(done, json!(true));
    }
}
