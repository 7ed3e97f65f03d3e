//! `label-pairs serve` over HTTP: the token, single-use nonces, size limits, a kill -9 and
//! restart that loses and duplicates nothing, and the disagreement queue.

mod common;

use common::*;
use serde_json::Value;

/// Three prompts with three samples each: nine pairs.
fn fixture(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("rollouts.parquet");
    write_rollouts(
        &path,
        &[
            &["a0 fine", "a1 better", "a2 best"],
            &["b0 yes", "b1 no", "b2 maybe"],
            &["c0 red", "c1 green", "c2 blue"],
        ],
    );
    path
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn every_request_needs_the_token() {
    let t = tempfile::tempdir().unwrap();
    let r = fixture(t.path());
    let out = t.path().join("labels");
    let srv = Server::start(
        &["--rollouts", s(&r), "--out", s(&out)],
        &t.path().join("log"),
    );
    for target in [
        "/".to_string(),
        "/api/next?labeller=ann".to_string(),
        "/api/next?labeller=ann&token=wrong".to_string(),
        format!("/api/next?labeller=ann&token={}x", srv.token),
        "/nowhere".to_string(),
    ] {
        let (status, _) = request(&srv.addr, "GET", &target, &[], b"");
        assert_eq!(status, 403, "{target}");
    }
    let (status, _) = request(&srv.addr, "POST", "/api/answer?labeller=ann", &[], b"{}");
    assert_eq!(status, 403);
    let (status, _) = request(&srv.addr, "POST", "/api/undo?labeller=ann", &[], b"{}");
    assert_eq!(status, 403);
    // The token in a header works as well as in the query.
    let (status, body) = request(
        &srv.addr,
        "GET",
        "/api/next?labeller=ann",
        &[("X-Label-Token", &srv.token)],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    // The page: its script runs only with the response's CSP nonce.
    let (status, headers, page) = get_headers(&srv.addr, &srv.url("/", ""));
    assert_eq!(status, 200);
    let csp = &headers
        .iter()
        .find(|(k, _)| k == "content-security-policy")
        .unwrap()
        .1;
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    assert!(
        page.contains(&format!("<script nonce=\"{nonce}\">")),
        "{csp}"
    );
    assert!(!page.contains("__NONCE__") && !page.contains("innerHTML"));
    assert!(csp.contains("default-src 'none'"), "{csp}");
    // No answers came of any of this.
    assert_eq!(journal_lines(&out).len(), 1);
}

#[test]
fn answers_are_single_use_and_unknown_pairs_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let r = fixture(t.path());
    let out = t.path().join("labels");
    let srv = Server::start(
        &["--rollouts", s(&r), "--out", s(&out)],
        &t.path().join("log"),
    );
    let shown = srv.next("ann");
    // Asking again without answering shows the same pair and nonce.
    assert_eq!(srv.next("ann"), shown);
    // Another labeller's answer with ann's nonce is refused.
    assert_eq!(srv.answer("bob", &shown, "left", None).0, 409);
    let (status, body) = srv.answer("ann", &shown, "left", Some("clearer"));
    assert_eq!(status, 200, "{body}");
    let (status, body) = srv.answer("ann", &shown, "left", Some("clearer"));
    assert_eq!(status, 409, "a replay must be refused: {body}");
    let mut unknown = srv.next("ann");
    unknown["pair_id"] = Value::from("0123456789abcdef");
    assert_eq!(srv.answer("ann", &unknown, "left", None).0, 404);
    let good = srv.next("ann");
    assert_eq!(srv.answer("ann", &good, "sideways", None).0, 400);
    assert_eq!(srv.answer("bad name!", &good, "left", None).0, 400);
    let long = "x".repeat(2001);
    assert_eq!(srv.answer("ann", &good, "left", Some(&long)).0, 400);
    // Undo, and the same pair comes back with a new nonce; the old one is spent.
    let (status, body) = srv.undo("ann");
    assert_eq!(status, 200, "{body}");
    let undone: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(undone["undone"], shown["pair_id"]);
    let again = srv.next("ann");
    assert_eq!(again["pair_id"], shown["pair_id"]);
    assert_ne!(again["nonce"], shown["nonce"]);
    assert_eq!(srv.answer("ann", &shown, "left", None).0, 409);
    assert_eq!(srv.answer("ann", &again, "right", None).0, 200);
    let lines = journal_lines(&out);
    let kinds: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["session", "answer", "undo", "answer"]);
    assert_eq!(lines[1]["reason"], "clearer");
    assert_eq!(lines[2]["target"], 1);
}

#[test]
fn oversized_and_chunked_bodies_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let r = fixture(t.path());
    let out = t.path().join("labels");
    let srv = Server::start(
        &["--rollouts", s(&r), "--out", s(&out)],
        &t.path().join("log"),
    );
    let target = srv.url("/api/answer", "ann");
    // A huge Content-Length is refused before any of the body is read or allocated.
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999\r\n\r\n{{\"pair_id\":"
    );
    assert_eq!(raw(&srv.addr, head.as_bytes()).0, 413);
    let big = vec![b' '; 70 * 1024];
    let (status, _) = request(&srv.addr, "POST", &target, &[], &big);
    assert_eq!(status, 413);
    let chunked = format!(
        "POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    assert_eq!(raw(&srv.addr, chunked.as_bytes()).0, 411);
    let huge_head = format!("GET {target}&pad={} HTTP/1.1\r\n\r\n", "p".repeat(20_000));
    assert_eq!(raw(&srv.addr, huge_head.as_bytes()).0, 431);
    // Still serving.
    let shown = srv.next("ann");
    assert_eq!(srv.answer("ann", &shown, "equal", None).0, 200);
}

/// Which response text is the first (smaller rollout id) of a shown pair.
fn texts(shown: &Value) -> (String, String) {
    (
        shown["left"].as_str().unwrap().to_string(),
        shown["right"].as_str().unwrap().to_string(),
    )
}

#[test]
fn kill_9_and_restart_loses_and_duplicates_nothing() {
    let t = tempfile::tempdir().unwrap();
    let r = fixture(t.path());
    let out = t.path().join("labels");
    let args = ["--rollouts", s(&r), "--out", s(&out), "--seed", "7"];
    // (pair, left text, right text, choice) of every answer that must stand.
    let mut expected: Vec<(String, String, String, String)> = Vec::new();
    let mut seen_pairs = Vec::new();
    let plan = [
        "left",
        "right",
        "equal",
        "cant_tell",
        "skip",
        "left",
        "right",
        "left",
        "right",
    ];
    let mut step = 0;
    let mut last_shown = Value::Null;
    for round in 0..3 {
        let srv = Server::start(&args, &t.path().join(format!("log{round}")));
        if round > 0 {
            // The last answer before the kill, sent again (its reply was "lost"): refused.
            assert_eq!(srv.answer("ann", &last_shown, "left", None).0, 409);
        }
        for _ in 0..3 {
            let shown = srv.next("ann");
            let pair = shown["pair_id"].as_str().unwrap().to_string();
            assert!(!seen_pairs.contains(&pair), "pair {pair} shown twice");
            seen_pairs.push(pair.clone());
            let choice = plan[step];
            step += 1;
            let (status, body) = srv.answer("ann", &shown, choice, None);
            assert_eq!(status, 200, "{body}");
            let (l, r) = texts(&shown);
            expected.push((pair, l, r, choice.to_string()));
            last_shown = shown;
        }
        if round == 1 {
            // Take back the last answer and answer that pair again.
            assert_eq!(srv.undo("ann").0, 200);
            let (pair, ..) = expected.pop().unwrap();
            let shown = srv.next("ann");
            assert_eq!(shown["pair_id"].as_str().unwrap(), pair);
            assert_eq!(
                srv.answer("ann", &shown, "left", Some("changed my mind")).0,
                200
            );
            let (l, r) = texts(&shown);
            expected.push((pair, l, r, "left".into()));
            last_shown = shown;
        }
        srv.kill9();
    }
    // All nine pairs answered once: nothing left for ann after a restart.
    let srv = Server::start(&args, &t.path().join("log-final"));
    let last = srv.next("ann");
    assert_eq!(last["done"], true, "{last}");
    assert_eq!(last["progress"]["done"], 9);
    assert_eq!(srv.terminate(), 143);
    // A restart on other inputs is refused (exit 2), never mixed.
    let other = t.path().join("other.parquet");
    write_rollouts(&other, &[&["x", "y"]]);
    let run = label_pairs(&[
        "serve",
        "--rollouts",
        s(&other),
        "--out",
        s(&out),
        "--bind",
        "127.0.0.1:0",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("refusing to mix"), "{}", run.stderr);
    let run = label_pairs(&[
        "serve",
        "--rollouts",
        s(&r),
        "--out",
        s(&out),
        "--seed",
        "8",
        "--bind",
        "127.0.0.1:0",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--seed 7, not 8"), "{}", run.stderr);

    // The export holds exactly the standing answers.
    let prefs = t.path().join("prefs.parquet");
    let run = label_pairs(&["export", "--in", s(&out), "--out", s(&prefs)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let (rows, _) =
        rlhf_core::parquet_io::read_records::<rlhf_core::records::PreferenceRow>(&prefs).unwrap();
    let kept: Vec<_> = expected
        .iter()
        .filter(|e| !["cant_tell", "skip"].contains(&e.3.as_str()))
        .collect();
    assert_eq!(rows.len(), kept.len());
    for (row, (pair, l, r, choice)) in rows.iter().zip(kept) {
        assert_eq!(row.group_id.as_deref(), Some(pair.as_str()));
        match choice.as_str() {
            "left" => assert_eq!((&row.chosen, &row.rejected, row.label), (l, r, 1.0)),
            "right" => assert_eq!((&row.chosen, &row.rejected, row.label), (r, l, 1.0)),
            _ => {
                assert_eq!(row.label, 0.5);
                let mut got = [row.chosen.clone(), row.rejected.clone()];
                let mut want = [l.clone(), r.clone()];
                got.sort();
                want.sort();
                assert_eq!(got, want);
            }
        }
    }
    assert!(
        run.stderr
            .contains("1 can't tell, 1 skips; 1 answers undone"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_cut_journal_line_from_a_kill_is_dropped_on_restart() {
    let t = tempfile::tempdir().unwrap();
    let r = fixture(t.path());
    let out = t.path().join("labels");
    let args = ["--rollouts", s(&r), "--out", s(&out)];
    let srv = Server::start(&args, &t.path().join("log"));
    let shown = srv.next("ann");
    assert_eq!(srv.answer("ann", &shown, "left", None).0, 200);
    srv.kill9();
    let journal = out.join("journal.jsonl");
    let mut text = std::fs::read(&journal).unwrap();
    let whole = text.len();
    text.extend_from_slice(br#"{"type":"answer","seq":2,"labeller":"ann","pa"#);
    std::fs::write(&journal, &text).unwrap();
    let srv = Server::start(&args, &t.path().join("log2"));
    let next = srv.next("ann");
    assert_ne!(next["pair_id"], shown["pair_id"]);
    assert_eq!(srv.answer("ann", &next, "right", None).0, 200);
    drop(srv);
    let lines = journal_lines(&out);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["seq"], 2);
    assert!(std::fs::read(&journal).unwrap().len() > whole);
}

#[test]
fn the_queue_asks_first_where_the_ensemble_disagrees() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path().join("rollouts.parquet");
    write_rollouts(
        &r,
        &[&["p0 a", "p0 b"], &["p1 a", "p1 b"], &["p2 a", "p2 b"]],
    );
    let scores = t.path().join("scores.parquet");
    write_scores(
        &scores,
        &[
            // prompt 0: every member prefers sample 0 -> asked last.
            (rid(0, 0), vec![1.0, 1.0, 1.0]),
            (rid(0, 1), vec![0.0, 0.0, 0.0]),
            // prompt 1: members split 1 / 1 / tie -> votes 0.5 -> asked first.
            (rid(1, 0), vec![1.0, 0.0, 0.5]),
            (rid(1, 1), vec![0.0, 1.0, 0.5]),
            // prompt 2: two of three prefer sample 0 -> votes 2/3 -> second.
            (rid(2, 0), vec![1.0, 1.0, 0.0]),
            (rid(2, 1), vec![0.0, 0.0, 1.0]),
        ],
    );
    let out = t.path().join("labels");
    let srv = Server::start(
        &[
            "--rollouts",
            s(&r),
            "--scores",
            s(&scores),
            "--out",
            s(&out),
        ],
        &t.path().join("log"),
    );
    let mut prompts = Vec::new();
    for _ in 0..3 {
        let shown = srv.next("ann");
        prompts.push(shown["prompt"].as_str().unwrap().to_string());
        assert_eq!(srv.answer("ann", &shown, "skip", None).0, 200);
    }
    assert_eq!(
        prompts,
        [
            "User: question 1\nAssistant:",
            "User: question 2\nAssistant:",
            "User: question 0\nAssistant:"
        ]
    );
    drop(srv);
    // Scores without ensemble columns are refused (exit 3) with a hint.
    let single = t.path().join("single.parquet");
    let table = rlhf_core::records::ScoresTable {
        rollout_id: vec![rid(0, 0)],
        reward: vec![1.0],
        penalty: vec![0.0],
        sources: vec![("rm".into(), vec![Some(1.0)])],
    };
    let lineage = rlhf_core::lineage::Lineage::new(
        "score-rewards",
        "0.1.0",
        rlhf_core::schema::Artifact::Scores,
    );
    table.write(&single, &lineage).unwrap();
    let run = label_pairs(&[
        "serve",
        "--rollouts",
        s(&r),
        "--scores",
        s(&single),
        "--out",
        s(&t.path().join("l2")),
    ]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("no reward-ensemble columns"),
        "{}",
        run.stderr
    );
}

#[test]
fn usage_errors_exit_2_and_help_explains_the_queue() {
    let t = tempfile::tempdir().unwrap();
    let r = fixture(t.path());
    let run = label_pairs(&["serve", "--rollouts", s(&r), "--out", s(&r)]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("must never overwrite an input"),
        "{}",
        run.stderr
    );
    let run = label_pairs(&[
        "serve",
        "--rollouts",
        s(&r),
        "--out",
        s(&t.path().join("o")),
        "--bind",
        "nowhere",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let run = label_pairs(&[
        "serve",
        "--rollouts",
        s(&r),
        "--out",
        s(&t.path().join("o")),
        "--overlap",
        "0",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let run = label_pairs(&[
        "serve",
        "--rollouts",
        s(&t.path().join("missing.parquet")),
        "--out",
        s(&t.path().join("o")),
    ]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    let run = label_pairs(&["serve", "--help"]);
    assert_eq!(run.code, 0);
    assert!(
        run.stdout.contains("Phi((m_a - m_b)") && run.stdout.contains("journal.jsonl"),
        "{}",
        run.stdout
    );
}
