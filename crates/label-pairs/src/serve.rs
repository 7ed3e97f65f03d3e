//! `label-pairs serve`: builds the queue, opens (or resumes) the journal, and serves the
//! labelling page and its small JSON API until SIGINT/SIGTERM.
//!
//! API (every request needs `token=` in the query or an `X-Label-Token` header; the
//! `/api/` ones also `labeller=`):
//! - `GET /`: the page.
//! - `GET /api/next`: `{pair_id, nonce, prompt, left, right, progress}`, or
//!   `{done: true, progress}` when nothing is left for this labeller.
//! - `POST /api/answer` `{pair_id, nonce, choice, reason?}`: 200 once the answer is on
//!   disk; 404 for an unknown pair, 409 for a nonce that is not this labeller's current
//!   showing of that pair (a replay, a second tab, a restart in between).
//! - `POST /api/undo`: takes back the labeller's latest answer (409 when none).
//! - `GET /api/progress`.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rlhf_core::parquet_io::Dataset;
use rlhf_core::records::{RolloutRow, ScoresTable};
use rlhf_core::schema::Artifact;
use serde_json::json;

use crate::args::ServeArgs;
use crate::board::{Board, PairRef, Refusal};
use crate::error::LabelError;
use crate::http::{Request, Response};
use crate::journal::{self, Answer, Choice, InputFile, Journal, Record, Session, Undo};
use crate::queue::{self, Ensemble, QueuedPair};
use crate::secret::Secret;

/// The page, with `__NONCE__` where each response's CSP nonce goes.
const PAGE: &str = include_str!("page.html");
/// Longest reason kept with an answer, in characters.
pub const MAX_REASON_CHARS: usize = 2000;
/// Longest labeller name, in characters.
pub const MAX_LABELLER_CHARS: usize = 64;
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;

/// The content hash of an input (file, or folder of part files) as the journal records it.
pub fn input_file(path: &Path) -> anyhow::Result<InputFile> {
    let blake3 = if path.is_dir() {
        rlhf_core::hash::dir_hash(path)?
    } else {
        rlhf_core::hash::file_hash(path)?
    };
    Ok(InputFile {
        path: path.display().to_string(),
        absolute: rlhf_core::paths::resolved(path).display().to_string(),
        blake3,
    })
}

/// Refuses an input path that does not exist (exit 3, naming the flag).
pub fn require_input(flag: &str, path: &Path) -> Result<(), LabelError> {
    if path.exists() {
        Ok(())
    } else {
        Err(LabelError::input(
            path,
            None,
            format!("no such file or folder (given as {flag})"),
        ))
    }
}

/// Reads the rollouts of a dataset spec.
pub fn read_rollouts(path: &Path) -> anyhow::Result<(Vec<RolloutRow>, Dataset)> {
    let ds = Dataset::open(path, Artifact::Rollouts)?;
    let rows: Vec<RolloutRow> = ds.read_all()?;
    Ok((rows, ds))
}

/// A labeller name from the query: 1-64 characters, letters, digits, `-_.@`.
fn labeller_of(req: &Request) -> Result<String, Response> {
    let name = req.param("labeller").unwrap_or("").trim();
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_LABELLER_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if ok {
        Ok(name.to_string())
    } else {
        Err(Response::error(
            400,
            "labeller= must be 1-64 characters: letters, digits, - _ . @",
        ))
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerBody {
    pair_id: String,
    nonce: String,
    choice: Choice,
    #[serde(default)]
    reason: Option<String>,
}

/// Equality that takes the same time wherever the first difference is.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Everything a request may touch.
pub struct App {
    token: String,
    secret: Secret,
    board: Board,
    journal: Journal,
    rows: Vec<RolloutRow>,
    queue: Vec<QueuedPair>,
    /// Set when the journal could not be written: the server stops with this error.
    failure: Option<anyhow::Error>,
}

impl App {
    fn progress(&self, labeller: &str) -> serde_json::Value {
        json!(self.board.progress(labeller, Instant::now()))
    }

    /// Answers one request.
    pub fn handle(&mut self, req: &Request) -> Response {
        let given = req
            .param("token")
            .or_else(|| req.header("x-label-token"))
            .unwrap_or("");
        if !same_secret(given, &self.token) {
            return Response::new(
                403,
                "text/plain; charset=utf-8",
                b"forbidden: open the address with the token that `label-pairs serve` printed\n"
                    .to_vec(),
            );
        }
        let resp = match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => self.page(),
            ("GET", "/api/next") => self.next(req),
            ("POST", "/api/answer") => self.answer(req),
            ("POST", "/api/undo") => self.undo(req),
            ("GET", "/api/progress") => match labeller_of(req) {
                Ok(l) => Response::json(200, &json!({ "progress": self.progress(&l) })),
                Err(r) => r,
            },
            (_, "/" | "/api/next" | "/api/answer" | "/api/undo" | "/api/progress") => {
                Response::error(405, "method not allowed")
            }
            _ => Response::error(404, "not found"),
        };
        resp.with("Cache-Control", "no-store")
            .with("X-Content-Type-Options", "nosniff")
            .with("Referrer-Policy", "no-referrer")
            .with("X-Frame-Options", "DENY")
    }

    fn page(&mut self) -> Response {
        let nonce = self.secret.next_hex();
        let csp = format!(
            "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
        );
        Response::new(
            200,
            "text/html; charset=utf-8",
            PAGE.replace("__NONCE__", &nonce).into_bytes(),
        )
        .with("Content-Security-Policy", csp)
    }

    fn next(&mut self, req: &Request) -> Response {
        let labeller = match labeller_of(req) {
            Ok(l) => l,
            Err(r) => return r,
        };
        let secret = &mut self.secret;
        let lease = self
            .board
            .next_for(&labeller, Instant::now(), || secret.next_hex());
        let progress = self.progress(&labeller);
        let Some(lease) = lease else {
            return Response::json(200, &json!({ "done": true, "progress": progress }));
        };
        let q = &self.queue[lease.pair];
        let (l, r) = if lease.left_is_first {
            (q.first, q.second)
        } else {
            (q.second, q.first)
        };
        Response::json(
            200,
            &json!({
                "pair_id": q.key,
                "nonce": lease.nonce,
                "prompt": self.rows[q.first].prompt,
                "left": self.rows[l].response,
                "right": self.rows[r].response,
                "progress": progress,
            }),
        )
    }

    fn answer(&mut self, req: &Request) -> Response {
        let labeller = match labeller_of(req) {
            Ok(l) => l,
            Err(r) => return r,
        };
        let body: AnswerBody = match serde_json::from_slice(&req.body) {
            Ok(b) => b,
            Err(e) => return Response::error(400, &format!("bad answer: {e}")),
        };
        let reason = body
            .reason
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty());
        if reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
        {
            return Response::error(400, "reason is longer than 2000 characters");
        }
        let lease = match self
            .board
            .check_answer(&labeller, &body.pair_id, &body.nonce)
        {
            Ok(l) => l.clone(),
            Err(Refusal::UnknownPair) => return Response::error(404, "no such pair"),
            Err(Refusal::Stale) => {
                return Response::error(
                    409,
                    "this showing of the pair was already answered or is out of date",
                )
            }
        };
        let pair = self.board.pair(lease.pair).clone();
        let (left, right) = if lease.left_is_first {
            (pair.first, pair.second)
        } else {
            (pair.second, pair.first)
        };
        let record = Record::Answer(Answer {
            seq: self.journal.next_seq(),
            labeller: labeller.clone(),
            pair: pair.key.clone(),
            left,
            right,
            choice: body.choice,
            reason,
            nonce: lease.nonce,
        });
        if let Err(r) = self.record(&record) {
            return r;
        }
        Response::json(
            200,
            &json!({ "ok": true, "choice": body.choice, "progress": self.progress(&labeller) }),
        )
    }

    fn undo(&mut self, req: &Request) -> Response {
        let labeller = match labeller_of(req) {
            Ok(l) => l,
            Err(r) => return r,
        };
        let Some(target) = self.board.last_answer(&labeller) else {
            return Response::error(409, "nothing to undo");
        };
        let record = Record::Undo(Undo {
            seq: self.journal.next_seq(),
            labeller: labeller.clone(),
            target,
        });
        // The answer being taken back, for the reply.
        let undone = self.board.answer_at(&labeller, target);
        if let Err(r) = self.record(&record) {
            return r;
        }
        let (pair, choice) = match undone {
            Some((pair, choice)) => (json!(pair), json!(choice)),
            None => (serde_json::Value::Null, serde_json::Value::Null),
        };
        Response::json(
            200,
            &json!({ "undone": pair, "choice": choice, "progress": self.progress(&labeller) }),
        )
    }

    /// Writes a record to the journal (on disk before returning), then to the board.
    fn record(&mut self, record: &Record) -> Result<(), Response> {
        if self.failure.is_some() {
            return Err(Response::error(503, "the journal cannot be written"));
        }
        if let Err(e) = self.journal.append(record) {
            tracing::error!("{e:#}");
            self.failure = Some(e);
            return Err(Response::error(503, "the journal cannot be written"));
        }
        if let Err(e) = self.board.apply(record) {
            let e = anyhow::anyhow!(
                "journal record {} does not fit the board: {e}",
                record.seq()
            );
            self.failure = Some(e);
            return Err(Response::error(503, "internal error"));
        }
        Ok(())
    }
}

fn bind_address(bind: &str) -> Result<SocketAddr, LabelError> {
    bind.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            LabelError::flag(format!(
                "--bind {bind} is not an address and port, e.g. 127.0.0.1:8765"
            ))
        })
}

/// Runs the server until a signal or a journal failure.
pub fn run(args: &ServeArgs, seed: u64) -> anyhow::Result<()> {
    let mut inputs: Vec<(&str, &Path)> = vec![("--rollouts", &args.rollouts)];
    if let Some(s) = &args.scores {
        inputs.push(("--scores", s));
    }
    rlhf_core::paths::check_outputs(&[("--out", &args.out)], &inputs)
        .map_err(|e| LabelError::flag(e.to_string()))?;
    let addr = bind_address(&args.bind)?;
    for (flag, path) in &inputs {
        require_input(flag, path)?;
    }
    let (rows, _) = read_rollouts(&args.rollouts)?;
    let ensemble = match &args.scores {
        Some(path) => {
            let (table, _) = ScoresTable::read(path)?;
            let e = Ensemble::from_table(&table, path)?;
            if e.is_empty() {
                return Err(LabelError::input(
                    path,
                    None,
                    "no rollout has finite ensemble scores".to_string(),
                )
                .into());
            }
            Some(e)
        }
        None => None,
    };
    let q = queue::build(&rows, &args.rollouts, ensemble.as_ref(), seed)?;
    let s = &q.stats;
    tracing::info!(
        "{} pairs from {} rollouts of {} prompts ({} prompts with one sample, {} pairs with the \
         same response twice left out)",
        s.pairs,
        s.rollouts,
        s.prompts,
        s.single_sample_prompts,
        s.identical_pairs
    );
    match &ensemble {
        Some(e) if !e.members.is_empty() => tracing::info!(
            "queue: ensemble disagreement first ({} members: {}), {} pairs unscored at the end",
            e.members.len(),
            e.members.join(", "),
            s.unscored_pairs
        ),
        Some(_) => tracing::info!(
            "queue: ensemble uncertainty first (rm_mean, rm_std), {} pairs unscored at the end",
            s.unscored_pairs
        ),
        None => tracing::info!("queue: random order from --seed {seed}"),
    }

    let session = Session {
        seq: 0,
        version: journal::JOURNAL_VERSION,
        producer: "label-pairs".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        rollouts: input_file(&args.rollouts)?,
        scores: args.scores.as_deref().map(input_file).transpose()?,
        seed,
        pairs: q.pairs.len(),
    };
    let (journal, records) = Journal::open(&args.out, &session)?;
    let journal_path = journal::journal_path(&args.out);
    check_session(&records, &session, &journal_path)?;
    let refs: Vec<PairRef> = q
        .pairs
        .iter()
        .map(|p| PairRef {
            key: p.key.clone(),
            first: rows[p.first].rollout_id.clone(),
            second: rows[p.second].rollout_id.clone(),
        })
        .collect();
    let mut board = Board::new(refs, args.overlap, seed);
    for rec in &records {
        board
            .apply(rec)
            .map_err(|m| LabelError::input(&journal_path, Some(rec.seq() as usize + 1), m))?;
    }
    let answers = records.len().saturating_sub(1);
    if answers > 0 {
        tracing::info!(
            "resuming {}: {answers} journal records",
            journal_path.display()
        );
    }

    let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    if !local.ip().is_loopback() {
        tracing::warn!(
            "listening on {local}: reachable from the network; the token is the only \
             protection, and traffic is not encrypted"
        );
    }
    let mut secret = Secret::new()?;
    let token = secret.next_hex();
    let app = Arc::new(Mutex::new(App {
        token: token.clone(),
        secret,
        board,
        journal,
        rows,
        queue: q.pairs,
        failure: None,
    }));
    let shown = match local {
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        SocketAddr::V4(a) => a.to_string(),
    };
    eprintln!(
        "label-pairs: labelling page at http://{shown}/?token={token}  (add &labeller=NAME; \
         the token is the key to the page: share it only with labellers)"
    );
    serve(listener, app)
}

/// Refuses a journal whose session was built from other inputs.
fn check_session(records: &[Record], now: &Session, path: &Path) -> anyhow::Result<()> {
    let Some(Record::Session(then)) = records.first() else {
        return Err(LabelError::input(path, Some(1), "no session record").into());
    };
    let refuse = |what: String| -> anyhow::Result<()> {
        Err(LabelError::flag(format!(
            "{} holds labels of {what}: refusing to mix them\n  hint: give the same inputs \
             and --seed again to resume, or another --out for a new labelling session",
            path.display()
        ))
        .into())
    };
    if then.rollouts.blake3 != now.rollouts.blake3 {
        return refuse(format!(
            "other rollouts ({} with blake3 {}, not {} with {})",
            then.rollouts.path, then.rollouts.blake3, now.rollouts.path, now.rollouts.blake3
        ));
    }
    let hash = |s: &Option<InputFile>| s.as_ref().map(|f| f.blake3.clone());
    if hash(&then.scores) != hash(&now.scores) {
        let show = |s: &Option<InputFile>| {
            s.as_ref().map_or("no --scores".to_string(), |f| {
                format!("--scores {} ({})", f.path, f.blake3)
            })
        };
        return refuse(format!(
            "a queue from {}, not {}",
            show(&then.scores),
            show(&now.scores)
        ));
    }
    if then.seed != now.seed {
        return refuse(format!("--seed {}, not {}", then.seed, now.seed));
    }
    Ok(())
}

/// Accepts connections until a journal failure; each connection is read and answered on
/// its own thread. SIGINT/SIGTERM stop the process at once (exit 130/143, through
/// `rlhf_core::signals`): every acknowledged answer is already on disk, and a journal line
/// cut short is dropped by the next start.
fn serve(listener: TcpListener, app: Arc<Mutex<App>>) -> anyhow::Result<()> {
    listener
        .set_nonblocking(true)
        .context("setting up the listening socket")?;
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        if let Some(e) = app.lock().ok().and_then(|mut a| a.failure.take()) {
            return Err(e.context("the journal could not be written; stopped"));
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if open.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    drop(stream);
                    continue;
                }
                open.fetch_add(1, Ordering::SeqCst);
                let (app, open) = (Arc::clone(&app), Arc::clone(&open));
                let spawned = std::thread::Builder::new()
                    .name("label-pairs-conn".into())
                    .spawn(move || {
                        crate::http::serve_connection(stream, |req| match app.lock() {
                            Ok(mut a) => a.handle(req),
                            Err(_) => Response::error(503, "internal error"),
                        });
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    tracing::warn!("cannot start a connection thread; request dropped");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("accepting a connection: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
