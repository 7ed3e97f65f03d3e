//! The journal: every answer and every undo of a labelling folder, one JSON object a line in
//! `DIR/journal.jsonl`, each written and fsync'd before the server replies, so a kill at
//! any moment loses no acknowledged answer.
//!
//! The first line is the session: which rollouts (content hash), scores and seed the queue
//! was built from; a restart on other inputs is refused instead of mixing labels. Line `n`
//! (0-based) carries `seq` n. A last line without its newline is a write that a kill cut
//! short: it was never acknowledged, and the next `serve` cuts it off (export ignores it).
//! Any other unreadable line is bad input (exit 3), never skipped.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::LabelError;

/// File name of the journal inside the labelling folder.
pub const JOURNAL_FILE: &str = "journal.jsonl";

/// Version of the journal's format.
pub const JOURNAL_VERSION: u32 = 1;

/// An input file and the blake3 of its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// The path as given on the command line.
    pub path: String,
    /// The same path made absolute (export finds the file from another folder with it).
    pub absolute: String,
    pub blake3: String,
}

/// The first line: what the queue was built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub seq: u64,
    pub version: u32,
    pub producer: String,
    pub producer_version: String,
    pub rollouts: InputFile,
    pub scores: Option<InputFile>,
    pub seed: u64,
    /// Pairs in the queue when the session started.
    pub pairs: usize,
}

/// A labeller's answer about one pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    /// The response shown on the left is better.
    Left,
    /// The response shown on the right is better.
    Right,
    /// Both are as good.
    Equal,
    /// The labeller cannot tell which is better.
    CantTell,
    /// The labeller passed on this pair.
    Skip,
}

impl Choice {
    /// Every choice, in display order.
    pub const ALL: [Choice; 5] = [
        Choice::Left,
        Choice::Right,
        Choice::Equal,
        Choice::CantTell,
        Choice::Skip,
    ];

    /// The name used in the journal and the API.
    pub fn name(self) -> &'static str {
        match self {
            Choice::Left => "left",
            Choice::Right => "right",
            Choice::Equal => "equal",
            Choice::CantTell => "cant_tell",
            Choice::Skip => "skip",
        }
    }
}

/// One answer, with the order the pair was shown in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub seq: u64,
    pub labeller: String,
    /// The pair's key (see `queue::pair_key`).
    pub pair: String,
    /// Rollout id shown on the left.
    pub left: String,
    /// Rollout id shown on the right.
    pub right: String,
    pub choice: Choice,
    pub reason: Option<String>,
    /// The one-time nonce the pair was served with.
    pub nonce: String,
}

/// A labeller took back one of their answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Undo {
    pub seq: u64,
    pub labeller: String,
    /// `seq` of the answer taken back.
    pub target: u64,
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Session(Session),
    Answer(Answer),
    Undo(Undo),
}

impl Record {
    /// The record's sequence number (its 0-based line).
    pub fn seq(&self) -> u64 {
        match self {
            Record::Session(s) => s.seq,
            Record::Answer(a) => a.seq,
            Record::Undo(u) => u.seq,
        }
    }
}

/// The journal of a folder, open for appending (by one server at a time: it holds an
/// exclusive lock on the file).
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    next_seq: u64,
}

/// The journal's path in a labelling folder.
pub fn journal_path(dir: &Path) -> PathBuf {
    dir.join(JOURNAL_FILE)
}

fn io(action: &'static str, path: &Path, e: std::io::Error) -> anyhow::Error {
    rlhf_core::CoreError::io(action, path, e).into()
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing", dir, e))
}

/// Parses journal text. Returns the records and the byte length of the complete lines (a
/// last line without newline is not included, see the module docs).
pub fn parse(text: &[u8], path: &Path) -> Result<(Vec<Record>, usize), LabelError> {
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines: Vec<&[u8]> = match complete {
        0 => Vec::new(),
        n => text[..n - 1].split(|&b| b == b'\n').collect(),
    };
    let mut records = Vec::new();
    for (i, line) in lines.into_iter().enumerate() {
        let rec: Record = serde_json::from_slice(line).map_err(|e| {
            LabelError::input(path, Some(i + 1), format!("unreadable journal record: {e}"))
        })?;
        if rec.seq() != i as u64 {
            return Err(LabelError::input(
                path,
                Some(i + 1),
                format!(
                    "journal record has seq {}, expected {i}: lines were removed or reordered",
                    rec.seq()
                ),
            ));
        }
        match (&rec, i) {
            (Record::Session(s), 0) if s.version != JOURNAL_VERSION => {
                return Err(LabelError::input(
                    path,
                    Some(1),
                    format!(
                        "journal version {}, this label-pairs reads version {JOURNAL_VERSION}",
                        s.version
                    ),
                ))
            }
            (Record::Session(_), 0) => {}
            (_, 0) => {
                return Err(LabelError::input(
                    path,
                    Some(1),
                    "the first journal record must be the session",
                ))
            }
            (Record::Session(_), _) => {
                return Err(LabelError::input(
                    path,
                    Some(i + 1),
                    "a second session record: journals of two sessions were joined",
                ))
            }
            _ => {}
        }
        records.push(rec);
    }
    if records.is_empty() {
        return Err(LabelError::input(
            path,
            None,
            "empty journal: no session record",
        ));
    }
    Ok((records, complete))
}

/// Reads a folder's journal without changing it (export): the records of its complete lines.
pub fn read(dir: &Path) -> anyhow::Result<Vec<Record>> {
    let path = journal_path(dir);
    let text = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LabelError::input(
            &path,
            None,
            "no journal here\n  hint: --in is the --out folder of `label-pairs serve`",
        )
        .into(),
        _ => io("reading", &path, e),
    })?;
    let (records, complete) = parse(&text, &path)?;
    if complete < text.len() {
        tracing::warn!(
            "{}: ignoring an unfinished last line ({} bytes; a write in progress or cut short by a kill, never acknowledged)",
            path.display(),
            text.len() - complete
        );
    }
    Ok(records)
}

impl Journal {
    /// Opens the journal of `dir` for appending, creating it (with `session` as its first
    /// line, written atomically) when there is none. Returns the journal and every record
    /// in it. Refuses a folder another server holds (usage error).
    pub fn open(dir: &Path, session: &Session) -> anyhow::Result<(Journal, Vec<Record>)> {
        std::fs::create_dir_all(dir).map_err(|e| io("creating folder", dir, e))?;
        let path = journal_path(dir);
        if !path.exists() {
            let line = serde_json::to_string(&Record::Session(session.clone()))? + "\n";
            let tmp = rlhf_core::atomic::temp_sibling(&path);
            rlhf_core::atomic::sweep(&path)?;
            let written = File::create(&tmp).and_then(|mut f| {
                f.write_all(line.as_bytes())?;
                f.sync_all()
            });
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(io("writing", &tmp, e));
            }
            // Never replace a journal another process created meanwhile.
            std::fs::hard_link(&tmp, &path).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                io("creating", &path, e)
            })?;
            std::fs::remove_file(&tmp).map_err(|e| io("removing", &tmp, e))?;
            sync_dir(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| io("opening", &path, e))?;
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            return Err(LabelError::flag(format!(
                "{} is in use by another `label-pairs serve`\n  hint: label through that \
                 server's page, or stop it first",
                dir.display()
            ))
            .into());
        }
        let text = std::fs::read(&path).map_err(|e| io("reading", &path, e))?;
        let (records, complete) = parse(&text, &path)?;
        if complete < text.len() {
            tracing::warn!(
                "{}: cutting off an unfinished last line ({} bytes) that a kill left; it was \
                 never acknowledged",
                path.display(),
                text.len() - complete
            );
            file.set_len(complete as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| io("truncating", &path, e))?;
        }
        let next_seq = records.len() as u64;
        Ok((
            Journal {
                file,
                path,
                next_seq,
            },
            records,
        ))
    }

    /// The `seq` the next record must carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends a record (its `seq` must be [`Journal::next_seq`]) and waits until it is on
    /// disk.
    pub fn append(&mut self, record: &Record) -> anyhow::Result<()> {
        anyhow::ensure!(
            record.seq() == self.next_seq,
            "journal record seq {} out of order (next is {})",
            record.seq(),
            self.next_seq
        );
        let line = serde_json::to_string(record)? + "\n";
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io("appending to", &self.path, e))?;
        self.next_seq += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            seq: 0,
            version: JOURNAL_VERSION,
            producer: "label-pairs".into(),
            producer_version: "0.1.0".into(),
            rollouts: InputFile {
                path: "r.parquet".into(),
                absolute: "/x/r.parquet".into(),
                blake3: "abc".into(),
            },
            scores: None,
            seed: 0,
            pairs: 3,
        }
    }

    fn answer(seq: u64) -> Record {
        Record::Answer(Answer {
            seq,
            labeller: "ann".into(),
            pair: "p".into(),
            left: "a".into(),
            right: "b".into(),
            choice: Choice::CantTell,
            reason: Some("both \"odd\"\nreally".into()),
            nonce: "n".into(),
        })
    }

    #[test]
    fn append_then_reopen_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let (mut j, recs) = Journal::open(d.path(), &session()).unwrap();
        assert_eq!(recs, vec![Record::Session(session())]);
        j.append(&answer(1)).unwrap();
        assert!(j.append(&answer(5)).is_err());
        let undo = Record::Undo(Undo {
            seq: 2,
            labeller: "ann".into(),
            target: 1,
        });
        j.append(&undo).unwrap();
        drop(j);
        let (j, recs) = Journal::open(d.path(), &session()).unwrap();
        assert_eq!(recs, vec![Record::Session(session()), answer(1), undo]);
        assert_eq!(j.next_seq(), 3);
        assert_eq!(read(d.path()).unwrap().len(), 3);
    }

    #[test]
    fn a_second_server_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let _first = Journal::open(d.path(), &session()).unwrap();
        let err = Journal::open(d.path(), &session()).unwrap_err();
        assert!(crate::error::is_usage(err.root_cause()), "{err}");
    }

    #[test]
    fn a_cut_last_line_is_dropped_and_a_bad_middle_line_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(d.path(), &session()).unwrap();
        j.append(&answer(1)).unwrap();
        drop(j);
        let path = journal_path(d.path());
        let full = std::fs::read(&path).unwrap();
        let mut cut = full.clone();
        cut.extend_from_slice(br#"{"type":"answer","seq":2,"label"#);
        std::fs::write(&path, &cut).unwrap();
        assert_eq!(read(d.path()).unwrap().len(), 2);
        let (j, recs) = Journal::open(d.path(), &session()).unwrap();
        assert_eq!((recs.len(), j.next_seq()), (2, 2));
        drop(j);
        assert_eq!(std::fs::read(&path).unwrap(), full);

        let mut bad = full.clone();
        bad.extend_from_slice(b"not json\n");
        bad.extend_from_slice(&full[full.len() - 1..]);
        std::fs::write(&path, &bad).unwrap();
        let err = read(d.path()).unwrap_err().to_string();
        assert!(
            err.contains("line 3") && err.contains("unreadable"),
            "{err}"
        );

        let skipped = String::from_utf8(full.clone())
            .unwrap()
            .replace("\"seq\":1", "\"seq\":4");
        std::fs::write(&path, skipped).unwrap();
        let err = read(d.path()).unwrap_err().to_string();
        assert!(err.contains("seq 4, expected 1"), "{err}");
    }
}

/// The answers of a journal that stand (not taken back), in journal order, and how many
/// were taken back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Standing {
    pub answers: Vec<Answer>,
    pub undone: Vec<Answer>,
}

/// Applies the undos of a journal's records. An undo of an answer that is not a standing
/// answer of the same labeller is bad input (`Err` names the line, 1-based).
pub fn standing(records: &[Record]) -> Result<Standing, (usize, String)> {
    let mut answers: Vec<Option<Answer>> = Vec::new();
    let mut at: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut undone = Vec::new();
    for rec in records {
        match rec {
            Record::Session(_) => {}
            Record::Answer(a) => {
                at.insert(a.seq, answers.len());
                answers.push(Some(a.clone()));
            }
            Record::Undo(u) => {
                let slot = at.get(&u.target).and_then(|&i| answers.get_mut(i));
                match slot {
                    Some(s @ Some(_)) if s.as_ref().is_some_and(|a| a.labeller == u.labeller) => {
                        undone.extend(s.take());
                    }
                    _ => {
                        return Err((
                            u.seq as usize + 1,
                            format!(
                                "undo of record {} by {}, which is not a standing answer of theirs",
                                u.target, u.labeller
                            ),
                        ))
                    }
                }
            }
        }
    }
    Ok(Standing {
        answers: answers.into_iter().flatten().collect(),
        undone,
    })
}
