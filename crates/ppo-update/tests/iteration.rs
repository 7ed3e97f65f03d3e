//! End-to-end iterations of ppo-update on a tiny random Llama: a zero learning rate leaves
//! the adapter unchanged, the KL penalty pulls a drifted policy back towards the reference,
//! and state (optimiser steps, KL controller, schedule) carries over to the next iteration
//! with byte-identical outputs for the same inputs.

mod common;

use common::{adapter_tensors, run, s, score_with, World};
use ppo_update::state::{TrainingState, METRICS_FILE};
use rlhf_core::records::MetricRow;

fn metrics(dir: &std::path::Path) -> Vec<MetricRow> {
    rlhf_core::parquet_io::read_records::<MetricRow>(&dir.join(METRICS_FILE))
        .unwrap()
        .0
}

fn metric(rows: &[MetricRow], name: &str) -> f64 {
    rows.iter()
        .rev()
        .find(|r| r.metric == name)
        .map(|r| r.value)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[test]
fn zero_learning_rate_leaves_the_adapter_unchanged() {
    let w = World::new();
    let drifted = w.drifted_adapter("drifted", 0.05);
    let (r, sc) = w.rollouts("it1", Some(&drifted), 4, 2, false);
    for algo in ["ppo", "grpo"] {
        let out = w.path(&format!("out-{algo}"));
        run(&[
            "--model",
            s(&w.model),
            "--adapter",
            s(&drifted),
            "--rollouts",
            s(&r),
            "--scores",
            s(&sc),
            "--out",
            s(&out),
            "--algo",
            algo,
            "--learning-rate",
            "0",
            "--epochs",
            "2",
            "--minibatch-size",
            "4",
            "--micro-batch-size",
            "2",
        ])
        .unwrap();
        let before = adapter_tensors(&drifted);
        let after = adapter_tensors(&out);
        assert_eq!(before.len(), after.len());
        for ((n1, t1), (n2, t2)) in before.iter().zip(&after) {
            assert_eq!(n1, n2);
            assert!(
                t1.equal(t2),
                "{algo}: {n1} changed with a zero learning rate"
            );
        }
        // the optimiser did run: 2 epochs x 2 minibatches
        let st = TrainingState::read(&out).unwrap().unwrap();
        assert_eq!(st.optimizer_steps, 4);
        let m = metrics(&out);
        assert!(metric(&m, "train/grad_norm") > 0.0);
        assert_eq!(metric(&m, "train/lr"), 0.0);
        // the trainer's recomputed log-probs agree with the sampler's (same policy)
        assert!(
            metric(&m, "iter/sampler_logprob_abs_diff") < 1e-4,
            "{}",
            metric(&m, "iter/sampler_logprob_abs_diff")
        );
    }
}

#[test]
fn kl_penalty_pulls_a_drifted_policy_back() {
    let w = World::new();
    let drifted = w.drifted_adapter("drifted", 0.15);
    // rewards all zero: the only signal is the KL to the reference
    let (r, sc) = w.rollouts("it1", Some(&drifted), 6, 4, true);
    let before = w.kl_to_ref(&drifted, &r);
    assert!(before > 0.05, "the fixture should drift: KL {before}");
    for algo in ["grpo", "rloo", "ppo"] {
        let out = w.path(&format!("pulled-{algo}"));
        run(&[
            "--model",
            s(&w.model),
            "--adapter",
            s(&drifted),
            "--rollouts",
            s(&r),
            "--scores",
            s(&sc),
            "--out",
            s(&out),
            "--algo",
            algo,
            "--kl-coef",
            "0.5",
            "--learning-rate",
            "3e-3",
            "--epochs",
            "8",
            "--minibatch-size",
            "8",
            "--micro-batch-size",
            "4",
            "--clip-range",
            "10",
        ])
        .unwrap();
        let after = w.kl_to_ref(&out, &r);
        assert!(
            after < 0.7 * before,
            "{algo}: KL to reference {before} -> {after}"
        );
        let m = metrics(&out);
        assert!((metric(&m, "iter/kl_ref") - before).abs() < 1e-3 * before.max(1.0));
    }
}

#[test]
fn state_carries_over_to_the_next_iteration_and_output_is_deterministic() {
    let w = World::new();
    let (r, sc) = w.rollouts("it1", None, 4, 2, false);
    let common = [
        "--algo",
        "reinforce",
        "--learning-rate",
        "1e-3",
        "--minibatch-size",
        "4",
        "--micro-batch-size",
        "4",
        "--kl-coef",
        "0.1",
        "--kl-target",
        "0.001",
        "--kl-horizon",
        "100",
        "--lr-schedule",
        "linear",
        "--total-steps",
        "10",
    ];
    let it1 = w.path("iter-1");
    let mut a = vec![
        "--model",
        s(&w.model),
        "--rollouts",
        s(&r),
        "--scores",
        s(&sc),
        "--out",
        s(&it1),
    ];
    a.extend_from_slice(&common);
    let sum1 = run(&a).unwrap();
    assert_eq!(sum1.optimizer_steps, 2);
    let again = w.path("iter-1-again");
    a[7] = s(&again);
    run(&a).unwrap();
    for file in [
        "adapter_model.safetensors",
        "metrics.parquet",
        "optimizer.safetensors",
        "training_state.json",
    ] {
        assert!(
            std::fs::read(it1.join(file)).unwrap() == std::fs::read(again.join(file)).unwrap(),
            "{file} not deterministic"
        );
    }
    let st1 = TrainingState::read(&it1).unwrap().unwrap();
    // a fresh adapter equals the reference: KL 0 < target, error clipped to -0.2, 8 rollouts
    // over a horizon of 100: beta = 0.1 * (1 - 0.2 * 8 / 100) = 0.0984
    assert!(
        (st1.kl_controller.value() - 0.0984).abs() < 1e-12,
        "{:?}",
        st1.kl_controller
    );

    let (r2, sc2) = w.rollouts("it2", Some(&it1), 4, 2, false);
    let it2 = w.path("iter-2");
    let mut b = vec![
        "--model",
        s(&w.model),
        "--adapter",
        s(&it1),
        "--rollouts",
        s(&r2),
        "--scores",
        s(&sc2),
        "--out",
        s(&it2),
        "--iteration",
        "2",
    ];
    b.extend_from_slice(&common);
    let sum2 = run(&b).unwrap();
    assert_eq!(sum2.kl_coef, st1.kl_controller.value(), "beta carried over");
    let st2 = TrainingState::read(&it2).unwrap().unwrap();
    assert_eq!(st2.optimizer_steps, 4);
    assert_eq!(st2.rollouts_seen, 16);
    assert_eq!(st2.iteration, 2);
    let m = metrics(&it2);
    // the schedule continues across iterations: step 3 of a 10-step linear decay
    let lr3 = m
        .iter()
        .find(|r| r.metric == "train/lr" && r.step == 3)
        .unwrap()
        .value;
    assert!((lr3 - 1e-3 * (1.0 - 2.0 / 10.0)).abs() < 1e-12, "{lr3}");
    assert!(m.iter().all(|r| r.iteration == 2));
    assert!(metric(&m, "iter/score/gold_mean").is_finite());
}

/// Rollouts sampled by the policy being trained lend it their log-probs (no second forward),
/// and the update equals the one with every row recomputed; rollouts of another policy are
/// caught by the sample check and recomputed.
#[test]
fn the_samplers_logprobs_are_taken_only_when_they_are_this_policys() {
    let w = World::new();
    let update =
        |rollouts: &std::path::Path, scores: &std::path::Path, out: &str, extra: &[&str]| {
            let out = w.path(out);
            let mut args = vec![
                "--model",
                s(&w.model),
                "--rollouts",
                s(rollouts),
                "--scores",
                s(scores),
                "--out",
                s(&out),
                "--algo",
                "grpo",
                "--learning-rate",
                "1e-3",
                "--minibatch-size",
                "4",
                "--micro-batch-size",
                "2",
            ];
            args.extend_from_slice(extra);
            run(&args).unwrap();
            out
        };
    // a fresh policy (B = 0) is the base the rollouts were sampled from
    let (r, sc) = w.rollouts("base", None, 4, 2, false);
    let taken = update(&r, &sc, "taken", &[]);
    let recomputed = update(&r, &sc, "recomputed", &["--recompute-old-logprobs"]);
    assert_eq!(
        metric(&metrics(&taken), "iter/old_logprobs_from_sampler"),
        1.0
    );
    assert_eq!(
        metric(&metrics(&recomputed), "iter/old_logprobs_from_sampler"),
        0.0
    );
    for ((n1, t1), (n2, t2)) in adapter_tensors(&taken)
        .iter()
        .zip(&adapter_tensors(&recomputed))
    {
        assert_eq!(n1, n2);
        let d = (t1 - t2).abs().max().double_value(&[]);
        assert!(d <= 1e-6, "{n1}: the updates differ by {d}");
    }
    // rollouts of a drifted policy: the fresh policy's log-probs differ, so every row is
    // recomputed and the mismatch is reported
    let drifted = w.drifted_adapter("drifted", 0.05);
    let (r2, sc2) = w.rollouts("drifted", Some(&drifted), 4, 2, false);
    let off = update(&r2, &sc2, "off-policy", &[]);
    let m = metrics(&off);
    assert_eq!(metric(&m, "iter/old_logprobs_from_sampler"), 0.0);
    assert!(metric(&m, "iter/sampler_logprob_abs_diff") > 1e-4);
    // The check ran in the update's first forward: the taken run reports the rows it
    // checked there, and the mismatch restarted the update with every row recomputed, which
    // gives the bits of a run that recomputed them from the start.
    let t = metrics(&taken);
    assert!(metric(&t, "iter/sampler_logprob_abs_diff") <= 1e-5);
    assert!((metric(&t, "iter/sampler_ratio_mean") - 1.0).abs() <= 1e-4);
    // With LoRA dropout the training forward draws it: the check runs in a forward of its own.
    let dropped = metrics(&update(&r, &sc, "dropout", &["--lora-dropout", "0.1"]));
    assert_eq!(metric(&dropped, "iter/old_logprobs_from_sampler"), 1.0);
    assert!(metric(&dropped, "iter/sampler_logprob_abs_diff") <= 1e-5);
    let off_recomputed = update(&r2, &sc2, "off-recomputed", &["--recompute-old-logprobs"]);
    for ((n1, t1), (n2, t2)) in adapter_tensors(&off)
        .iter()
        .zip(&adapter_tensors(&off_recomputed))
    {
        assert_eq!(n1, n2);
        let d = (t1 - t2).abs().max().double_value(&[]);
        assert_eq!(d, 0.0, "{n1}: the restarted update differs by {d}");
    }
}

/// `--kl-control-on updated`: the controller reads the updated policy's KL on the rollouts.
/// A fresh adapter samples exactly the reference (the rollouts' KL is 0, so the default
/// controller lowers beta), but one update moves the policy: its KL is over the tiny target,
/// so beta rises by the clipped 20% x 8 rollouts / horizon 100.
#[test]
fn kl_control_on_the_updated_policy_sees_this_update() {
    let w = World::new();
    let (r, sc) = w.rollouts("it1", None, 4, 2, false);
    let out = w.path("updated");
    let a = [
        "--model",
        s(&w.model),
        "--rollouts",
        s(&r),
        "--scores",
        s(&sc),
        "--out",
        s(&out),
        "--algo",
        "rloo",
        "--learning-rate",
        "1e-2",
        "--minibatch-size",
        "4",
        "--kl-coef",
        "0.1",
        "--kl-target",
        "0.000001",
        "--kl-horizon",
        "100",
        "--kl-control-on",
        "updated",
    ];
    run(&a).unwrap();
    let m = metrics(&out);
    assert!(
        metric(&m, "iter/kl_updated") > 1e-6,
        "the update moved the policy"
    );
    let st = TrainingState::read(&out).unwrap().unwrap();
    assert!(
        (st.kl_controller.value() - 0.1016).abs() < 1e-12,
        "{:?}",
        st.kl_controller
    );
}

fn kl_max_run(
    w: &World,
    name: &str,
    adapter: Option<&std::path::Path>,
    data: (&std::path::Path, &std::path::Path),
    kl_max: Option<f64>,
    extra: &[&str],
) -> anyhow::Result<std::path::PathBuf> {
    let out = w.path(name);
    let limit = kl_max.map(|k| k.to_string());
    let mut a = vec![
        "--model",
        s(&w.model),
        "--rollouts",
        s(data.0),
        "--scores",
        s(data.1),
        "--out",
        s(&out),
        "--algo",
        "rloo",
        "--kl-coef",
        "0",
        "--learning-rate",
        "5e-2",
        "--epochs",
        "6",
        "--minibatch-size",
        "8",
        "--micro-batch-size",
        "4",
    ];
    if let Some(d) = adapter {
        a.extend(["--adapter", s(d)]);
    }
    if let Some(l) = &limit {
        a.extend(["--kl-max", l.as_str()]);
    }
    a.extend(extra);
    run(&a)?;
    Ok(out)
}

/// --kl-max: a policy already over the limit takes no step (its adapter is unchanged), and
/// the first estimate is its KL on its own samples (equal importance weights); an update
/// that would overshoot the limit is held back, and a resumed run skips the same steps.
#[test]
fn kl_max_skips_the_steps_of_a_policy_over_the_limit() {
    let w = World::new();
    let drifted = w.drifted_adapter("drifted", 0.15);
    let (r, sc) = w.rollouts("it1", Some(&drifted), 4, 2, false);
    let kl = w.kl_to_ref(&drifted, &r);
    assert!(kl > 0.05, "the fixture should drift: KL {kl}");
    let over = kl_max_run(&w, "over", Some(&drifted), (&r, &sc), Some(kl / 2.0), &[]).unwrap();
    let m = metrics(&over);
    let first = m
        .iter()
        .find(|x| x.metric == "train/kl_ref_is")
        .map(|x| x.value)
        .unwrap();
    assert!((first - kl).abs() < 1e-3 * kl.max(1.0), "{first} vs {kl}");
    assert_eq!(metric(&m, "iter/kl_max_skipped_steps"), 6.0);
    for ((n, before), (_, after)) in adapter_tensors(&drifted)
        .iter()
        .zip(&adapter_tensors(&over))
    {
        assert!(
            before.equal(after),
            "{n} changed although every step was over --kl-max"
        );
    }

    // from a fresh adapter: free, the update drifts to kl_free; limited to a quarter of it,
    // some steps are skipped and the policy ends closer to the reference
    // rewards that differ within every prompt's group, so RLOO has a gradient
    let (r0, _) = w.rollouts("it0", None, 4, 2, false);
    let sc0 = score_with(&w, "it0-varied", &r0, |row| {
        (row.response_tokens[0] % 5) as f32 / 4.0 + row.sample_index as f32 * 0.1
    });
    // KL(policy || reference) measured on the policy's own samples
    let kl_of = |a: &std::path::Path, name: &str| {
        let (own, _) = w.rollouts(name, Some(a), 8, 4, false);
        w.kl_to_ref(a, &own)
    };
    let free = kl_max_run(&w, "free", None, (&r0, &sc0), None, &[]).unwrap();
    let kl_free = kl_of(&free, "s-free");
    assert!(kl_free > 0.05, "the update should drift: KL {kl_free}");
    let held = kl_max_run(&w, "held", None, (&r0, &sc0), Some(kl_free / 4.0), &[]).unwrap();
    let m = metrics(&held);
    let skipped = metric(&m, "iter/kl_max_skipped_steps");
    assert!(
        skipped > 0.0 && skipped < 6.0,
        "{skipped} of 6 steps skipped"
    );
    let kl_held = kl_of(&held, "s-held");
    eprintln!(
        "--kl-max {}: {skipped} of 6 steps skipped, KL {kl_held} (free: {kl_free})",
        kl_free / 4.0
    );
    assert!(kl_held < 0.6 * kl_free, "held {kl_held} vs free {kl_free}");

    // interrupted after 5 steps (a checkpoint at each) and resumed: the same steps skipped
    let stopped = kl_max_run(
        &w,
        "held-resumed",
        None,
        (&r0, &sc0),
        Some(kl_free / 4.0),
        &["--checkpoint-every", "1", "--stop-after-steps", "5"],
    );
    assert!(stopped.is_err());
    let resumed = kl_max_run(
        &w,
        "held-resumed",
        None,
        (&r0, &sc0),
        Some(kl_free / 4.0),
        &["--resume"],
    )
    .unwrap();
    for ((n, a), (_, b)) in adapter_tensors(&held)
        .iter()
        .zip(&adapter_tensors(&resumed))
    {
        assert!(a.equal(b), "{n} differs after a resume");
    }
    assert_eq!(
        metric(&metrics(&resumed), "iter/kl_max_skipped_steps"),
        skipped
    );
}
