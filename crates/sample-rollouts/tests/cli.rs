//! End-to-end tests of the sample-rollouts binary on a tiny random model: sharding,
//! determinism across runs and batch sizes, reference log-probabilities against
//! rlhf_nn::scoring (adapter off, and --ref-model), stop strings, and error exits.

mod common;

use std::path::Path;

use rlhf_core::parquet_io::{read_lineage, read_records};
use rlhf_core::records::RolloutRow;
use rlhf_nn::batch::SeqBatch;
use rlhf_nn::Model;
use tch::{Device, Kind};

use common::{prompts_file, random_adapter, run, tiny_model, tiny_model_with, tiny_vocab};

struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
}

impl Fixture {
    fn new(prompts: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut model = tiny_model(&root.join("model"), 11);
        random_adapter(&mut model, "policy", &root.join("policy"), None, 5);
        prompts_file(&root.join("prompts.parquet"), prompts);
        Fixture { _dir: dir, root }
    }

    fn p(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }

    /// Runs with the common flags (--adapter policy) plus `extra`; panics unless it
    /// succeeds. Returns the rows written (none for a sharded run: read the folder once
    /// every part is there).
    fn sample(&self, out: &str, extra: &[&str]) -> Vec<RolloutRow> {
        self.sample_with(out, true, extra)
    }

    /// [`Fixture::sample`], with or without the policy adapter.
    fn sample_with(&self, out: &str, adapter: bool, extra: &[&str]) -> Vec<RolloutRow> {
        let (model, prompts, policy, out) = (
            self.p("model"),
            self.p("prompts.parquet"),
            self.p("policy"),
            self.p(out),
        );
        let mut args = vec!["--model", &model];
        if adapter {
            args.extend(["--adapter", &policy]);
        }
        args.extend([
            "--prompts",
            &prompts,
            "--out",
            &out,
            "--max-new-tokens",
            "6",
            "--iteration",
            "2",
        ]);
        if !extra.contains(&"--seed") {
            args.extend(["--seed", "42"]);
        }
        if !extra.contains(&"--samples-per-prompt") {
            args.extend(["--samples-per-prompt", "3"]);
        }
        args.extend(extra);
        let (code, _, stderr) = run(&args);
        assert_eq!(code, 0, "sample-rollouts failed: {stderr}");
        if Path::new(&out).is_dir() {
            return Vec::new();
        }
        read_records::<RolloutRow>(Path::new(&out)).unwrap().0
    }
}

fn sorted(mut rows: Vec<RolloutRow>) -> Vec<RolloutRow> {
    rows.sort_by(|a, b| (&a.prompt_id, a.sample_index).cmp(&(&b.prompt_id, b.sample_index)));
    rows
}

#[test]
fn rollouts_carry_their_prompts_messages() {
    let f = Fixture::new(4);
    let rows = f.sample("r.parquet", &[]);
    assert_eq!(rows.len(), 12);
    for r in &rows {
        let i: usize = r.prompt_id[1..].parse().unwrap();
        assert_eq!(r.messages, common::prompt_messages(i), "{}", r.prompt_id);
    }
    assert!(rows.iter().any(|r| r.messages.is_some()));
}

#[test]
fn shards_together_equal_the_unsharded_run() {
    let f = Fixture::new(7);
    let whole = f.sample("whole.parquet", &[]);
    assert_eq!(whole.len(), 21);
    // Rows come in prompt order, then sample index.
    let order: Vec<(String, i32)> = whole
        .iter()
        .map(|r| (r.prompt_id.clone(), r.sample_index))
        .collect();
    let mut expected = order.clone();
    expected.sort();
    assert_eq!(order, expected);
    for shard in [2, 0, 1] {
        f.sample(
            "parts",
            &["--num-shards", "3", "--shard-index", &shard.to_string()],
        );
        let read = read_records::<RolloutRow>(&f.root.join("parts"));
        if shard != 1 {
            let err = read.unwrap_err().to_string();
            assert!(
                err.contains("missing part(s)"),
                "an incomplete folder is refused: {err}"
            );
        }
    }
    let parts = read_records::<RolloutRow>(&f.root.join("parts")).unwrap().0;
    assert_eq!(parts.len(), 21, "reading the folder reads every part");
    assert_eq!(sorted(parts), sorted(whole.clone()));
    let names: Vec<String> = std::fs::read_dir(f.root.join("parts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    // Row contents are what the contract says.
    let r = &whole[4];
    assert_eq!(
        (r.prompt_id.as_str(), r.sample_index, r.iteration),
        ("p001", 1, 2)
    );
    assert_eq!(r.logprobs.len(), r.response_tokens.len());
    assert!(["eos", "length", "stop"].contains(&r.finish_reason.as_str()));
    assert_eq!(r.policy_id.len(), 16);
    assert_ne!(r.policy_id, "base");
    assert!(r.response_tokens.len() <= 6 && !r.response_tokens.is_empty());
}

#[test]
fn same_seed_same_bytes_and_batch_size_does_not_change_rows() {
    let f = Fixture::new(5);
    let a = f.sample("a.parquet", &["--batch-size", "4"]);
    let bytes = std::fs::read(f.root.join("a.parquet")).unwrap();
    let again = f.sample("a.parquet", &["--batch-size", "4"]);
    assert_eq!(
        std::fs::read(f.root.join("a.parquet")).unwrap(),
        bytes,
        "same flags: same bytes"
    );
    assert_eq!(a, again);
    // --batch-size 1 still decodes whole prompts (3 samples at once), and the rows are
    // identical.
    let summary = f.p("b-summary.json");
    let b1 = f.sample(
        "b.parquet",
        &["--batch-size", "1", "--summary-json", &summary],
    );
    assert_eq!(a, b1, "--batch-size 1 and 4 give identical rows");
    assert_eq!(rlhf_testkit::summary_detail(&summary, "batch_rows"), 1);
    let other = f.sample("c.parquet", &["--seed", "43"]);
    assert_ne!(
        a.iter().map(|r| &r.response_tokens).collect::<Vec<_>>(),
        other.iter().map(|r| &r.response_tokens).collect::<Vec<_>>(),
        "another seed samples other tokens"
    );
    assert_ne!(a[0].seed, a[1].seed, "each sample has its own stream");
    let lineage = read_lineage(&f.root.join("a.parquet")).unwrap().unwrap();
    assert_eq!(lineage.producer, "sample-rollouts");
    assert!(lineage.tokenizer_hash.is_some());
    let roles: Vec<&str> = lineage.inputs.iter().map(|i| i.role.as_str()).collect();
    assert_eq!(roles, ["prompts", "model", "adapter"]);
}

/// Whole prompts decoding together (prompts of different lengths, left-padded; the next
/// prompt joining as rows finish) give the rows of one prompt at a time byte for byte on a CPU
/// with the decode kernels: tokens, log-probs and reference log-probs, at any --batch-size.
/// Elsewhere each prompt decodes alone whatever --batch-size says.
#[test]
fn packed_prompts_give_the_rows_of_one_prompt_batches() {
    let f = Fixture::new(5);
    let alone_summary = f.p("alone.json");
    let alone = f.sample(
        "alone.parquet",
        &["--batch-size", "3", "--summary-json", &alone_summary],
    );
    assert_eq!(
        rlhf_testkit::summary_detail(&alone_summary, "batch_rows"),
        3
    );
    let kernels = rlhf_nn::generate::batch_invariant_rows(Kind::Float, Device::Cpu).is_some();
    if !kernels {
        eprintln!(
            "SKIPPED packed_prompts_give_the_rows_of_one_prompt_batches (packing): this CPU has no decode kernels; checking one prompt at a time only"
        );
    }
    // 5 prompts x 3 samples: 4 rows decode one prompt at a time, refilled as rows finish; 6
    // two; 15 and 64 (32 at most) all five.
    for (batch, rows) in [("4", 4), ("6", 6), ("15", 15), ("64", 32)] {
        let summary = f.p(&format!("packed-{batch}.json"));
        let out = format!("packed-{batch}.parquet");
        let packed = f.sample(&out, &["--batch-size", batch, "--summary-json", &summary]);
        let want = if kernels { rows } else { 3 };
        assert_eq!(
            rlhf_testkit::summary_detail(&summary, "batch_rows"),
            want,
            "--batch-size {batch}"
        );
        assert_eq!(rlhf_testkit::summary_detail(&summary, "windows"), 1);
        assert_eq!(
            packed, alone,
            "--batch-size {batch}: rows differ from one prompt a batch"
        );
    }
}

/// --pack-prompts packs where rows are not independent of their batch (here 40 sequences, over
/// the kernels' 32): the rows equal the one-prompt-per-batch rows within float rounding (the
/// same tokens; log-probabilities within 1e-4).
#[test]
fn pack_prompts_past_the_invariant_size_matches_within_rounding() {
    let f = Fixture::new(5);
    let k = ["--samples-per-prompt", "8"];
    let alone = f.sample("alone.parquet", &[&k[..], &["--batch-size", "8"]].concat());
    let summary = f.p("packed.json");
    let packed = f.sample(
        "packed.parquet",
        &[
            &k[..],
            &[
                "--pack-prompts",
                "--batch-size",
                "40",
                "--summary-json",
                &summary,
            ],
        ]
        .concat(),
    );
    assert_eq!(rlhf_testkit::summary_detail(&summary, "batch_rows"), 40);
    assert_eq!(packed.len(), alone.len());
    let mut worst = 0f32;
    for (p, a) in packed.iter().zip(&alone) {
        assert_eq!(p.rollout_id, a.rollout_id);
        assert_eq!(p.response_tokens, a.response_tokens, "{}", p.rollout_id);
        let refs = p
            .ref_logprobs
            .iter()
            .flatten()
            .zip(a.ref_logprobs.iter().flatten());
        for (x, y) in p.logprobs.iter().zip(&a.logprobs).chain(refs) {
            worst = worst.max((x - y).abs());
        }
    }
    assert!(worst < 1e-4, "log-probs differ by {worst}");
}

#[test]
fn logprobs_match_scoring_with_and_without_the_adapter() {
    let f = Fixture::new(3);
    let rows = f.sample("r.parquet", &[]);
    let mut model = Model::load(&f.root.join("model"), Device::Cpu, Kind::Float).unwrap();
    model
        .load_adapter("policy", &f.root.join("policy"))
        .unwrap();
    let mut max_ref = 0f32;
    let mut max_pol = 0f32;
    let mut max_gap = 0f32;
    for r in &rows {
        let batch = SeqBatch::new(
            &[(r.prompt_tokens.clone(), r.response_tokens.clone())],
            1,
            Device::Cpu,
        )
        .unwrap();
        let base = rlhf_nn::scoring::token_logprobs(&model, None, &batch, false).unwrap();
        let policy =
            rlhf_nn::scoring::token_logprobs(&model, Some("policy"), &batch, false).unwrap();
        let base = &batch.response_values(&base).unwrap()[0];
        let policy = &batch.response_values(&policy).unwrap()[0];
        let reference = r.ref_logprobs.as_ref().expect("ref_logprobs written");
        for i in 0..base.len() {
            max_ref = max_ref.max((base[i] - reference[i]).abs());
            // Temperature 1 without top-k/top-p: the sampling distribution is the policy.
            max_pol = max_pol.max((policy[i] - r.logprobs[i]).abs());
            max_gap = max_gap.max((policy[i] - base[i]).abs());
        }
    }
    assert!(
        max_ref < 1e-4,
        "ref_logprobs differ from the base model's by {max_ref}"
    );
    assert!(
        max_pol < 1e-4,
        "logprobs differ from the policy's by {max_pol}"
    );
    assert!(
        max_gap > 1e-2,
        "the adapter should change log-probabilities (gap {max_gap})"
    );
}

#[test]
fn stop_strings_end_responses_and_flags_select_prompts() {
    let f = Fixture::new(10);
    let greedy = f.sample("g.parquet", &["--temperature", "0", "--max-prompts", "2"]);
    assert_eq!(greedy.len(), 6);
    assert_eq!(
        greedy[0].response_tokens, greedy[1].response_tokens,
        "greedy samples agree"
    );
    let words: Vec<&str> = greedy[0].response.split_whitespace().collect();
    assert!(words.len() >= 3, "{:?}", greedy[0].response);
    let stop = words[2].to_string();
    let stopped = f.sample(
        "s.parquet",
        &["--temperature", "0", "--max-prompts", "2", "--stop", &stop],
    );
    let first = &stopped[0];
    assert_eq!(first.finish_reason, "stop");
    assert!(
        first.response.ends_with(&stop),
        "{:?} should end with {stop}",
        first.response
    );
    assert_eq!(first.response_tokens.len(), 3);

    let eval = f.sample("e.parquet", &["--split", "eval", "--no-ref-logprobs"]);
    assert_eq!(eval.len(), 2 * 3, "prompts 4 and 9 are eval");
    assert!(eval.iter().all(|r| r.ref_logprobs.is_none()));
    assert_eq!(eval[0].prompt_id, "p004");
}

#[test]
fn errors_exit_with_clear_messages() {
    let f = Fixture::new(2);
    let (model, prompts, out) = (f.p("model"), f.p("prompts.parquet"), f.p("o.parquet"));
    let base = [
        "--model",
        model.as_str(),
        "--prompts",
        prompts.as_str(),
        "--out",
        out.as_str(),
    ];

    let (code, _, err) = run(&[
        "--model",
        &f.p("nope"),
        "--prompts",
        &prompts,
        "--out",
        &out,
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("model folder not found"), "{err}");

    let (code, _, err) = run(&[&base[..], &["--temperature=-1"]].concat());
    assert_eq!(
        code, 2,
        "a bad value found after parsing is a usage error: {err}"
    );
    assert!(err.contains("--temperature -1"), "{err}");

    let (code, _, err) = run(&[&base[..], &["--frobnicate"]].concat());
    assert_eq!(code, 2, "{err}");

    let (code, _, err) = run(&[&base[..], &["--max-new-tokens", "5000"]].concat());
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("prompt `p000`") && err.contains("positions"),
        "{err}"
    );

    let (code, _, err) = run(&[&base[..], &["--split", "dev"]].concat());
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no prompts of split `dev`"), "{err}");

    let (code, _, err) = run(&[
        "--model",
        &model,
        "--prompts",
        &prompts,
        "--out",
        &f.p("model"),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--out") && err.contains("same path as --model"),
        "{err}"
    );

    let (code, _, err) = run(&[&base[..], &["--adapter", &f.p("model")]].concat());
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("adapter_config.json"), "{err}");
    assert!(!Path::new(&out).exists(), "failed runs leave no output");
}

/// The f32 bit patterns of a row's ref_logprobs (bit-for-bit comparisons).
fn ref_bits(r: &RolloutRow) -> Vec<u32> {
    let lp = r.ref_logprobs.as_ref().expect("ref_logprobs written");
    lp.iter().map(|x| x.to_bits()).collect()
}

/// Without --adapter, --ref-model = --model runs the very scoring of the default path (the
/// base, no adapter) on the same weights: the column is bit-identical, and so is the rest.
#[test]
fn ref_model_equal_to_model_gives_the_default_column_bit_for_bit() {
    let f = Fixture::new(4);
    let default = f.sample_with("default.parquet", false, &[]);
    let model = f.p("model");
    let same = f.sample_with("same.parquet", false, &["--ref-model", &model]);
    assert_eq!(default.len(), 12);
    assert_eq!(same.len(), default.len());
    for (d, s) in default.iter().zip(&same) {
        assert_eq!(d.rollout_id, s.rollout_id);
        assert_eq!(d.response_tokens, s.response_tokens, "{}", d.rollout_id);
        assert_eq!(ref_bits(d), ref_bits(s), "{}", d.rollout_id);
        assert_eq!(
            d.ref_logprobs.as_ref().unwrap().len(),
            d.response_tokens.len()
        );
    }
    assert_eq!(default, same, "only the lineage differs");
    let lineage = read_lineage(&f.root.join("same.parquet")).unwrap().unwrap();
    let roles: Vec<&str> = lineage.inputs.iter().map(|i| i.role.as_str()).collect();
    assert_eq!(roles, ["prompts", "model", "ref_model"]);
}

/// With --ref-model = another model (same tokenizer, other weights) ref_logprobs are that
/// model's log-probabilities of the sampled tokens, while sampling is unchanged; the
/// reference is an input of the lineage, so another --ref-model is another run.
#[test]
fn ref_model_gives_that_models_logprobs_and_another_run_key() {
    let f = Fixture::new(3);
    tiny_model(&f.root.join("sft"), 23);
    let (model, sft) = (f.p("model"), f.p("sft"));
    let default = f.sample("default.parquet", &[]);
    let rows = f.sample("sft.parquet", &["--ref-model", &sft]);
    let on_model = f.sample("model.parquet", &["--ref-model", &model]);
    assert_eq!(rows.len(), 9);
    let reference = Model::load(&f.root.join("sft"), Device::Cpu, Kind::Float).unwrap();
    let (mut max_ref, mut gap_policy, mut gap_default) = (0f32, 0f32, 0f32);
    for ((r, d), m) in rows.iter().zip(&default).zip(&on_model) {
        // A second copy of --model scores like --model with the adapter off.
        assert_eq!(ref_bits(m), ref_bits(d), "{}", d.rollout_id);
        assert_eq!(r.rollout_id, d.rollout_id);
        assert_eq!(
            r.response_tokens, d.response_tokens,
            "sampling is unchanged"
        );
        assert_eq!(r.logprobs, d.logprobs);
        let batch = SeqBatch::new(
            &[(r.prompt_tokens.clone(), r.response_tokens.clone())],
            1,
            Device::Cpu,
        )
        .unwrap();
        let lp = rlhf_nn::scoring::token_logprobs(&reference, None, &batch, false).unwrap();
        let expected = &batch.response_values(&lp).unwrap()[0];
        let got = r.ref_logprobs.as_ref().expect("ref_logprobs written");
        let base = d.ref_logprobs.as_ref().expect("ref_logprobs written");
        assert_eq!(got.len(), r.response_tokens.len());
        for i in 0..got.len() {
            max_ref = max_ref.max((got[i] - expected[i]).abs());
            gap_policy = gap_policy.max((got[i] - r.logprobs[i]).abs());
            gap_default = gap_default.max((got[i] - base[i]).abs());
        }
    }
    assert!(
        max_ref < 1e-4,
        "ref_logprobs differ from --ref-model's log-probabilities by {max_ref}"
    );
    assert!(
        gap_policy > 1e-2,
        "ref_logprobs should differ from the policy's (gap {gap_policy})"
    );
    assert!(
        gap_default > 1e-2,
        "ref_logprobs should differ from the base's with the adapter off (gap {gap_default})"
    );
    let lineage = |name: &str| read_lineage(&f.root.join(name)).unwrap().unwrap();
    let (with_sft, with_model) = (lineage("sft.parquet"), lineage("model.parquet"));
    let roles: Vec<&str> = with_sft.inputs.iter().map(|i| i.role.as_str()).collect();
    assert_eq!(roles, ["prompts", "model", "adapter", "ref_model"]);
    assert!(with_sft.extra.contains_key("ref_base_id"));
    assert_ne!(with_sft.run_key(), with_model.run_key());
    let why = with_sft.run_difference(&with_model);
    assert!(why.contains("ref_model"), "{why}");
    assert_ne!(with_sft.run_key(), lineage("default.parquet").run_key());
}

#[test]
fn ref_model_errors_exit_with_clear_messages() {
    let f = Fixture::new(2);
    let vocab = tiny_vocab();
    tiny_model_with(
        &f.root.join("other-tokenizer"),
        11,
        None,
        Some(vocab as usize - 1),
    );
    tiny_model_with(&f.root.join("big-vocab"), 11, Some(vocab + 8), None);
    let (model, prompts, out) = (f.p("model"), f.p("prompts.parquet"), f.p("o.parquet"));
    let base = [
        "--model",
        model.as_str(),
        "--prompts",
        prompts.as_str(),
        "--out",
        out.as_str(),
    ];

    let other = f.p("other-tokenizer");
    let (code, _, err) = run(&[&base[..], &["--ref-model", &other]].concat());
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("tokenizer mismatch"), "{err}");
    assert!(
        err.contains(&other) && err.contains(&model),
        "names both: {err}"
    );

    let big = f.p("big-vocab");
    let (code, _, err) = run(&[&base[..], &["--ref-model", &big]].concat());
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("vocabulary size mismatch"), "{err}");
    assert!(
        err.contains(&big) && err.contains(&format!("{}", vocab + 8)),
        "{err}"
    );

    let (code, _, err) = run(&[&base[..], &["--ref-model", &f.p("nope")]].concat());
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("model folder not found"), "{err}");

    let (code, _, err) = run(&[&base[..], &["--ref-model", &model, "--no-ref-logprobs"]].concat());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--no-ref-logprobs"), "{err}");

    let (code, _, err) = run(&[
        "--model",
        &model,
        "--prompts",
        &prompts,
        "--ref-model",
        &big,
        "--out",
        &big,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--ref-model"), "{err}");
    assert!(!Path::new(&out).exists(), "failed runs leave no output");
}
