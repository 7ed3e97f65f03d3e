//! End-to-end tests of the report binary on a small synthetic run folder whose figures are
//! worked out by hand below.

use std::path::Path;
use std::process::Command;

use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::write_records;
use rlhf_core::records::{MetricRow, RolloutRow, ScoresTable};
use rlhf_core::schema::Artifact;

fn lineage(a: Artifact) -> Lineage {
    Lineage::new("report-test", "0", a)
}

/// A rollout with two response tokens; `lp` and `rlp` are its logprobs and ref_logprobs.
fn rollout(
    id: &str,
    prompt: &str,
    sample: i32,
    response: &str,
    lp: [f32; 2],
    rlp: [f32; 2],
) -> RolloutRow {
    RolloutRow {
        rollout_id: id.into(),
        prompt_id: prompt.into(),
        iteration: 0,
        sample_index: sample,
        prompt: format!("User: tell me about {prompt}\nAssistant:"),
        messages: None,
        response: response.into(),
        prompt_tokens: vec![1, 2, 3],
        response_tokens: vec![4, 5],
        logprobs: lp.to_vec(),
        ref_logprobs: Some(rlp.to_vec()),
        finish_reason: "eos".into(),
        policy_id: "p".into(),
        seed: 7,
    }
}

fn write_sampled(
    dir: &Path,
    rollouts_name: &str,
    scores_name: &str,
    rows: &[(RolloutRow, f32, f32)],
) {
    let rollouts: Vec<RolloutRow> = rows.iter().map(|r| r.0.clone()).collect();
    write_records(
        &dir.join(rollouts_name),
        &rollouts,
        &lineage(Artifact::Rollouts),
    )
    .unwrap();
    // Scores in reverse order: the report must join by rollout_id, not by position.
    let rev: Vec<&(RolloutRow, f32, f32)> = rows.iter().rev().collect();
    let scores = ScoresTable {
        rollout_id: rev.iter().map(|r| r.0.rollout_id.clone()).collect(),
        reward: rev.iter().map(|r| r.1 - 0.5).collect(),
        penalty: vec![0.0; rev.len()],
        sources: vec![
            ("rm".into(), rev.iter().map(|r| Some(r.1)).collect()),
            ("gold".into(), rev.iter().map(|r| Some(r.2)).collect()),
        ],
    };
    scores
        .write(&dir.join(scores_name), &lineage(Artifact::Scores))
        .unwrap();
}

fn metrics(path: &Path, stage: &str, rows: &[(i64, &str, f64)]) {
    let rows: Vec<MetricRow> = rows
        .iter()
        .map(|&(step, metric, value)| MetricRow {
            stage: stage.into(),
            iteration: 0,
            step,
            metric: metric.into(),
            value,
        })
        .collect();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    write_records(path, &rows, &lineage(Artifact::Metrics)).unwrap();
}

/// Final evaluation: 4 prompts x 2 samples paired, gold outcomes 5 wins, 2 ties, 1 loss
/// (win rate (5 + 2 * 0.5) / 8 = 0.75), plus one policy rollout without an SFT partner.
fn build_run(root: &Path) {
    let fin = root.join("final");
    std::fs::create_dir_all(&fin).unwrap();
    // (prompt, sample, sft gold, policy gold)
    let outcomes = [
        ("p1", 0, 0.1, 0.9), // win
        ("p1", 1, 0.2, 0.8), // win
        ("p2", 0, 0.5, 0.5), // tie
        ("p2", 1, 0.3, 0.6), // win
        ("p3", 0, 0.4, 0.4), // tie
        ("p3", 1, 0.9, 0.2), // loss
        ("p4", 0, 0.0, 1.0), // win
        ("p4", 1, 0.1, 0.7), // win
    ];
    let mut sft = Vec::new();
    let mut pol = Vec::new();
    for (k, &(p, s, g_sft, g_pol)) in outcomes.iter().enumerate() {
        // SFT: logprobs equal ref (KL 0). Policy: sum(lp - ref) = 1.0 on even rows, 2.0 on odd.
        sft.push((
            rollout(
                &format!("s{k}"),
                p,
                s,
                &format!("sft answer {p}/{s}"),
                [-1.0, -1.0],
                [-1.0, -1.0],
            ),
            0.0,
            g_sft,
        ));
        let kl_extra = if k % 2 == 0 { 0.5 } else { 1.0 };
        pol.push((
            rollout(
                &format!("q{k}"),
                p,
                s,
                &format!("policy answer {p}/{s}"),
                [-1.0 + kl_extra, -2.0 + kl_extra],
                [-1.0, -2.0],
            ),
            1.0,
            g_pol,
        ));
    }
    // Unpaired: counted in the KL and gold means, not in the win rate.
    pol.push((
        rollout(
            "q8",
            "p5",
            0,
            "policy answer p5/0",
            [-1.0, -1.0],
            [-1.0, -1.0],
        ),
        1.0,
        0.5,
    ));
    write_sampled(&fin, "sft_rollouts.parquet", "sft_scores.parquet", &sft);
    write_sampled(
        &fin,
        "policy_rollouts.parquet",
        "policy_scores.parquet",
        &pol,
    );

    metrics(
        &root.join("rm/metrics.parquet"),
        "train-rm-lora",
        &[
            (1, "loss", 0.69),
            (2, "loss", 0.5),
            (2, "eval/accuracy", 0.6),
            (4, "loss", 0.3),
            (4, "eval/accuracy", 0.875),
            (4, "peak_rss_bytes", 100.0 * 1048576.0),
            (4, "run/seconds_per_step", 0.25),
            (4, "run/trained_state_bytes", 0.5 * 1048576.0),
        ],
    );
    metrics(
        &root.join("rm-full/metrics.parquet"),
        "train-rm-lora",
        &[
            (4, "eval_accuracy", 0.9),
            (4, "peak_rss_bytes", 300.0 * 1048576.0),
            (4, "run/trained_state_bytes", 20.0 * 1048576.0),
        ],
    );
    for (it, rm, gold) in [(1u32, 0.2f32, 0.3f32), (2, 0.6, 0.5)] {
        let d = root.join(format!("iter-{it:03}"));
        std::fs::create_dir_all(&d).unwrap();
        let rows = vec![
            (
                rollout(&format!("i{it}a"), "p1", 0, "x", [-1.0, -1.0], [-1.5, -1.0]),
                rm,
                gold,
            ),
            (
                rollout(&format!("i{it}b"), "p2", 0, "y", [-1.0, -1.0], [-1.0, -1.5]),
                rm + 0.2,
                gold + 0.2,
            ),
        ];
        write_sampled(&d, "rollouts.parquet", "scores.parquet", &rows);
        metrics(
            &d.join("policy/metrics.parquet"),
            "ppo-update",
            &[(1, "peak_rss_bytes", 200.0 * 1048576.0)],
        );
    }
    // An unfinished iteration: rollouts only.
    let d3 = root.join("iter-003");
    std::fs::create_dir_all(&d3).unwrap();
    write_records(
        &d3.join("rollouts.parquet"),
        &[rollout("i3", "p1", 0, "z", [-1.0, -1.0], [-1.0, -1.0])],
        &lineage(Artifact::Rollouts),
    )
    .unwrap();
    std::fs::write(
        root.join("timings.jsonl"),
        "{\"stage\":\"train-sft\",\"seconds\":12.5}\n{\"stage\":\"ppo-update\",\"seconds\":3.0}\n{\"stage\":\"ppo-update\",\"seconds\":4.0}\n",
    )
    .unwrap();
}

fn report(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_report"))
        .args(args)
        .output()
        .unwrap()
}

fn close(v: &serde_json::Value, expected: f64) {
    let x = v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert!((x - expected).abs() < 1e-6, "{x} != {expected}");
}

#[test]
fn report_on_a_synthetic_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    build_run(&run);
    let out = run.join("report");
    let o = report(&[
        "--run-dir",
        run.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
        "--examples",
        "2",
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    close(&s["gold_win_rate_vs_sft"], 0.75);
    assert_eq!(s["win_rate"]["wins"], 5);
    assert_eq!(s["win_rate"]["ties"], 2);
    assert_eq!(s["win_rate"]["losses"], 1);
    assert_eq!(s["win_rate"]["unpaired_policy"], 1);
    close(&s["rm_eval_accuracy"], 0.875);
    // KL over the 9 policy rollouts: four at 1.0, four at 2.0, one at 0.
    close(&s["kl_to_sft"], 12.0 / 9.0);
    close(
        &s["gold_reward_sft"],
        (0.1 + 0.2 + 0.5 + 0.3 + 0.4 + 0.9 + 0.0 + 0.1) / 8.0,
    );
    close(
        &s["gold_reward_final"],
        (0.9 + 0.8 + 0.5 + 0.6 + 0.4 + 0.2 + 1.0 + 0.7 + 0.5) / 9.0,
    );
    close(&s["seconds_per_stage"]["ppo-update"], 7.0);
    close(&s["seconds_per_stage"]["train-sft"], 12.5);
    close(&s["total_seconds"], 19.5);
    let its = s["iterations"].as_array().unwrap();
    assert_eq!(its.len(), 2);
    assert_eq!(its[0]["proxy_column"], "rm");
    close(&its[0]["proxy_reward"], 0.3);
    close(&its[1]["gold_reward"], 0.6);
    close(&its[0]["kl_to_sft"], 0.5);
    close(&its[0]["response_length"], 2.0);
    close(&s["perl"]["rm_full"]["quality"], 0.9);
    close(&s["perl"]["rm_lora"]["peak_rss_bytes"], 100.0 * 1048576.0);
    close(
        &s["perl"]["rm_lora"]["trained_state_bytes"],
        0.5 * 1048576.0,
    );
    assert!(s["perl"]["policy_lora"]["trained_state_bytes"].is_null());
    close(&s["perl"]["policy_lora"]["quality"], 0.75);
    close(
        &s["perl"]["policy_lora"]["peak_rss_bytes"],
        200.0 * 1048576.0,
    );
    let notes = s["notes"].to_string();
    assert!(notes.contains("iter-003"), "{notes}");

    for stem in [
        "rm_loss",
        "rm_accuracy",
        "proxy_reward",
        "gold_reward",
        "kl_to_sft",
        "response_length",
    ] {
        let png = std::fs::read(out.join(format!("{stem}.png"))).unwrap();
        assert!(
            png.len() > 1000 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{stem}.png"
        );
        let svg = std::fs::read_to_string(out.join(format!("{stem}.svg"))).unwrap();
        assert!(
            svg.contains("<svg") && svg.contains("<polyline"),
            "{stem}.svg"
        );
    }
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.contains("sft answer p1/0") && md.contains("policy answer p1/0"),
        "{md}"
    );
    assert!(!md.contains("p3/0"), "only 2 examples asked for");
    assert!(md.contains("PERL"));
    // trained state 0.5 of 20 MiB (2.5%); peak memory 100 of 300 MiB
    assert!(
        md.contains("| 0.5 MiB | 100 MiB |") && md.contains("| 2% of full | 33% of full |"),
        "{md}"
    );
    let html = std::fs::read_to_string(out.join("summary.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 6);
    assert!(
        !html.contains(" src=") && !html.contains("<link"),
        "self-contained"
    );

    // Same inputs, same bytes.
    let out2 = tmp.path().join("again");
    let o = report(&[
        "--run-dir",
        run.to_str().unwrap(),
        "--out-dir",
        out2.to_str().unwrap(),
        "--examples",
        "2",
        "-q",
    ]);
    assert!(o.status.success());
    for name in [
        "summary.json",
        "summary.md",
        "summary.html",
        "kl_to_sft.png",
        "rm_loss.svg",
    ] {
        assert_eq!(
            std::fs::read(out.join(name)).unwrap(),
            std::fs::read(out2.join(name)).unwrap(),
            "{name}"
        );
    }
}

/// Held-out evaluations of iterations 1 and 2 on the final evaluation's keys: iteration 1
/// at KL 1.0 with proxy 0.5 and gold 0.1 above the final policy's, iteration 2 at KL 3.0
/// with proxy 0.9 and the final policy's gold; iteration 2's controller target is 2.0.
fn add_held_out(root: &Path) {
    let final_gold = [0.9f32, 0.8, 0.5, 0.6, 0.4, 0.2, 1.0, 0.7];
    let keys = [
        ("p1", 0),
        ("p1", 1),
        ("p2", 0),
        ("p2", 1),
        ("p3", 0),
        ("p3", 1),
        ("p4", 0),
        ("p4", 1),
    ];
    for (it, rm, gold_shift, lp) in [
        (1u32, 0.5f32, 0.1f32, [-0.5f32, -1.5]),
        (2, 0.9, 0.0, [0.5, -0.5]),
    ] {
        let d = root.join(format!("iter-{it:03}"));
        let rows: Vec<(RolloutRow, f32, f32)> = keys
            .iter()
            .zip(final_gold)
            .enumerate()
            .map(|(k, (&(p, s), g))| {
                (
                    rollout(&format!("e{it}-{k}"), p, s, "held out", lp, [-1.0, -2.0]),
                    rm,
                    g + gold_shift,
                )
            })
            .collect();
        write_sampled(&d, "eval_rollouts.parquet", "eval_scores.parquet", &rows);
    }
    metrics(
        &root.join("iter-002/policy/metrics.parquet"),
        "ppo-update",
        &[(1, "iter/kl_coef", 0.05), (1, "iter/kl_target", 2.0)],
    );
}

#[test]
fn over_optimisation_best_iteration_under_the_kl_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    build_run(&run);
    add_held_out(&run);
    let summary = |out: &Path, extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "--run-dir",
            run.to_str().unwrap(),
            "--out-dir",
            out.to_str().unwrap(),
            "-q",
        ];
        args.extend_from_slice(extra);
        let o = report(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap()
    };

    // Budget from the controller's target (2.0): iteration 2 (KL 3) is over it, so the
    // best is iteration 1, whose gold the final policy trails by 0.1 on every prompt.
    let out = tmp.path().join("target");
    let s = summary(&out, &[]);
    close(&s["kl_budget"], 2.0);
    assert_eq!(s["kl_budget_source"], "controller_target");
    assert_eq!(s["kl_within_budget"], true, "final KL 12/9 <= 2");
    let its = s["iterations"].as_array().unwrap();
    close(&its[0]["held_out"]["kl_to_sft"], 1.0);
    close(&its[1]["held_out"]["kl_to_sft"], 3.0);
    close(&its[1]["held_out"]["proxy_reward"], 0.9);
    close(&its[1]["kl_coef"], 0.05);
    assert!(its[0]["kl_coef"].is_null());
    // iteration 1's gold (final + 0.1) against SFT: 7 wins, 1 loss
    close(&its[0]["held_out"]["gold_win_rate_vs_sft"], 0.875);
    let b = &s["best_iteration"];
    assert_eq!(b["iteration"], 1, "{b}");
    close(&b["final_minus_best_gold"], -0.1);
    assert!(b["final_minus_best_gold_se"].as_f64().unwrap() < 1e-6);
    assert_eq!(b["final_within_noise"], false, "{b}");
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.contains("Over-optimisation") && md.contains("over-optimised"),
        "{md}"
    );
    let kl_svg = std::fs::read_to_string(out.join("kl_to_sft.svg")).unwrap();
    assert!(kl_svg.contains("KL budget (2.00)") && kl_svg.contains("held-out prompts"));
    let frontier = std::fs::read_to_string(out.join("reward_vs_kl.svg")).unwrap();
    assert!(frontier.contains("gold (oracle)") && frontier.contains("<polyline"));

    // A looser budget admits iteration 2 (higher proxy), whose gold equals the final's.
    let out = tmp.path().join("flag");
    let s = summary(&out, &["--kl-budget", "5"]);
    assert_eq!(s["kl_budget_source"], "flag");
    let b = &s["best_iteration"];
    assert_eq!(b["iteration"], 2, "{b}");
    close(&b["final_minus_best_gold"], 0.0);
    assert_eq!(b["final_within_noise"], true);

    // A budget no iteration meets: no best iteration, and the report says why.
    let out = tmp.path().join("tight");
    let s = summary(&out, &["--kl-budget", "0.5"]);
    assert!(s["best_iteration"].is_null());
    assert_eq!(s["kl_within_budget"], false);
    assert!(s["notes"].to_string().contains("within the budget"));

    let o = report(&["--run-dir", run.to_str().unwrap(), "--kl-budget", "-1"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a negative budget is a usage error"
    );
}

#[test]
fn missing_run_folder_is_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let o = report(&["--run-dir", tmp.path().join("nope").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("run folder does not exist"));
}

#[test]
fn missing_essentials_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    build_run(&run);
    std::fs::remove_file(run.join("final/policy_scores.parquet")).unwrap();
    std::fs::remove_dir_all(run.join("rm")).unwrap();
    let o = report(&["--run-dir", run.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("rm/metrics.parquet") && err.contains("final/policy_scores.parquet"),
        "{err}"
    );
    assert!(!run.join("report").exists(), "nothing written on failure");
}

#[test]
fn a_run_in_progress_reports_what_exists_with_partial() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    build_run(&run);
    // mid-pipeline: the final evaluation is not written yet
    std::fs::remove_dir_all(run.join("final")).unwrap();
    let refused = report(&["--run-dir", run.to_str().unwrap(), "-q"]);
    assert_eq!(refused.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--partial"));

    let o = report(&["--run-dir", run.to_str().unwrap(), "--partial", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = run.join("report");
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["complete"], false);
    assert!(s["win_rate"].is_null() && s["gold_win_rate_vs_sft"].is_null());
    assert!(s["kl_to_sft"].is_null() && s["gold_reward_final"].is_null());
    // what exists is reported: the reward model and the finished iterations
    close(&s["rm_eval_accuracy"], 0.875);
    assert!(!s["iterations"].as_array().unwrap().is_empty(), "{s}");
    let notes = s["notes"].to_string();
    assert!(notes.contains("final/policy_scores.parquet"), "{notes}");
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("Partial report of a run in progress"), "{md}");
    assert!(out.join("rm_loss.png").is_file());

    // once the run is complete, the same command reports it whole
    build_run(&run);
    let o = report(&["--run-dir", run.to_str().unwrap(), "--partial", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["complete"], true);
    close(&s["gold_win_rate_vs_sft"], 0.75);
}

#[test]
fn without_gold_the_reward_model_judges_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    build_run(&run);
    // Real data has no oracle: drop the gold column of the final scores.
    for name in ["sft_scores.parquet", "policy_scores.parquet"] {
        let path = run.join("final").join(name);
        let (mut t, _) = ScoresTable::read(&path).unwrap();
        t.sources.retain(|(n, _)| n != "gold");
        std::fs::remove_file(&path).unwrap();
        t.write(&path, &lineage(Artifact::Scores)).unwrap();
    }
    let o = report(&["--run-dir", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report/summary.json")).unwrap())
            .unwrap();
    assert!(s["gold_win_rate_vs_sft"].is_null());
    assert_eq!(s["win_rate"]["judge"], "rm");
    // rm is 0.0 for every SFT rollout and 1.0 for every policy rollout: 8 wins of 8.
    close(&s["win_rate"]["rate"], 1.0);
    let notes = s["notes"].to_string();
    assert!(notes.contains("judged by `rm`"), "{notes}");
}
