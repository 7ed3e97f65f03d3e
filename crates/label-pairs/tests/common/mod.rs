//! Helpers of the label-pairs CLI tests: fixtures written with rlhf-core's writers, the
//! built binary run as a server (its address and token read from its stderr), and a tiny
//! HTTP client over `TcpStream`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::write_records;
use rlhf_core::records::{RolloutRow, ScoresTable};
use rlhf_core::schema::Artifact;
use serde_json::Value;

/// The tokenizer hash the fixtures' lineage records.
pub const TOKENIZER: &str = "tok-fixture";

/// The label-pairs binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_label-pairs")
}

/// Exit code, stdout and stderr of one run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs label-pairs to completion.
pub fn label_pairs(args: &[&str]) -> Run {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("running label-pairs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The rollout id of sample `k` of prompt `p` in [`write_rollouts`].
pub fn rid(p: usize, k: usize) -> String {
    format!("r{p}-{k}")
}

/// Writes rollouts: prompt `p` is `User: question {p}\nAssistant:`, its samples have the
/// given responses (rollout ids from [`rid`]).
pub fn write_rollouts(path: &Path, responses: &[&[&str]]) {
    let mut rows = Vec::new();
    for (p, samples) in responses.iter().enumerate() {
        for (k, text) in samples.iter().enumerate() {
            rows.push(RolloutRow {
                rollout_id: rid(p, k),
                prompt_id: format!("prompt-{p}"),
                iteration: 0,
                sample_index: k as i32,
                prompt: format!("User: question {p}\nAssistant:"),
                messages: None,
                response: text.to_string(),
                prompt_tokens: vec![5, 6, p as i32],
                response_tokens: vec![7 + k as i32, 1],
                logprobs: vec![-0.5, -0.1],
                ref_logprobs: None,
                finish_reason: "eos".into(),
                policy_id: "base".into(),
                seed: 1,
            });
        }
    }
    let lineage = Lineage::new("sample-rollouts", "0.1.0", Artifact::Rollouts)
        .with_tokenizer(Some(TOKENIZER.into()));
    write_records(path, &rows, &lineage).unwrap();
}

/// Writes ensemble scores: per rollout id its member scores (columns rm_0.., rm_mean, rm_std).
pub fn write_scores(path: &Path, rows: &[(String, Vec<f32>)]) {
    let members = rows[0].1.len();
    let mut t = ScoresTable::default();
    let mut cols: Vec<(String, Vec<Option<f32>>)> = (0..members)
        .map(|m| (format!("rm_{m}"), Vec::new()))
        .chain([
            ("rm_mean".to_string(), Vec::new()),
            ("rm_std".to_string(), Vec::new()),
        ])
        .collect();
    for (id, scores) in rows {
        let n = scores.len() as f32;
        let mean = scores.iter().sum::<f32>() / n;
        let std = (scores.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n).sqrt();
        t.rollout_id.push(id.clone());
        t.reward.push(mean);
        t.penalty.push(0.0);
        for (m, v) in scores.iter().enumerate() {
            cols[m].1.push(Some(*v));
        }
        cols[members].1.push(Some(mean));
        cols[members + 1].1.push(Some(std));
    }
    t.sources = cols;
    let lineage = Lineage::new("score-rewards", "0.1.0", Artifact::Scores);
    t.write(path, &lineage).unwrap();
}

/// A running `label-pairs serve`.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub token: String,
    pub log: PathBuf,
}

impl Server {
    /// Starts `label-pairs serve ARGS --bind 127.0.0.1:0` and waits for its address.
    pub fn start(args: &[&str], log: &Path) -> Server {
        let err = std::fs::File::create(log).unwrap();
        let child = Command::new(bin())
            .arg("serve")
            .args(args)
            .args(["--bind", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("starting label-pairs serve");
        let mut server = Server {
            child,
            addr: String::new(),
            token: String::new(),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(i) = text.find("http://") {
                let url: String = text[i + 7..]
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect();
                if let Some((addr, rest)) = url.split_once("/?token=") {
                    server.addr = addr.to_string();
                    server.token = rest.to_string();
                    return server;
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("label-pairs serve exited with {status}:\n{text}");
            }
            assert!(Instant::now() < deadline, "no address printed:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `path?token=..&labeller=..` (without labeller when empty).
    pub fn url(&self, path: &str, labeller: &str) -> String {
        let mut u = format!("{path}?token={}", self.token);
        if !labeller.is_empty() {
            u.push_str(&format!("&labeller={labeller}"));
        }
        u
    }

    /// GET /api/next for a labeller.
    pub fn next(&self, labeller: &str) -> Value {
        let (status, body) = request(
            &self.addr,
            "GET",
            &self.url("/api/next", labeller),
            &[],
            b"",
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// POST /api/answer; returns the status and body.
    pub fn answer(
        &self,
        labeller: &str,
        shown: &Value,
        choice: &str,
        reason: Option<&str>,
    ) -> (u16, String) {
        let body = serde_json::json!({
            "pair_id": shown["pair_id"], "nonce": shown["nonce"], "choice": choice, "reason": reason,
        });
        request(
            &self.addr,
            "POST",
            &self.url("/api/answer", labeller),
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// POST /api/undo; returns the status and body.
    pub fn undo(&self, labeller: &str) -> (u16, String) {
        request(
            &self.addr,
            "POST",
            &self.url("/api/undo", labeller),
            &[],
            b"{}",
        )
    }

    /// SIGKILL, then wait.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM; returns the exit code.
    pub fn terminate(mut self) -> i32 {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends raw bytes and returns (status, body) of the reply.
pub fn raw(addr: &str, bytes: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// One HTTP/1.1 request with a body; returns (status, body).
pub fn request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes)
}

/// The response headers of a GET (lower-case names).
pub fn get_headers(addr: &str, target: &str) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// The journal's lines.
pub fn journal_lines(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("journal.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
