//! train-sft end to end on a tiny generated task: the loss falls, prompt tokens are masked,
//! a resumed run equals an uninterrupted one, a NaN loss stops cleanly, and a data file
//! tokenized for another tokenizer is refused.

mod common;

use common::{metric, ok, row, rows, write_sft, Fixture};
use rlhf_core::metrics::MetricsLog;
use rlhf_core::tokenizer::Tokenizer;
use tch::{Device, Kind};
use train_sft::data::Example;
use train_sft::loss::{completion_nll_sum, SftBatch};

const FAST: &[&str] = &["--batch-size", "8", "--warmup-steps", "2"];

#[test]
fn full_tuning_loss_falls_and_writes_a_loadable_model_folder() {
    let fx = Fixture::new();
    let mut args = FAST.to_vec();
    args.extend([
        "--max-steps",
        "40",
        "--eval-every",
        "20",
        "--learning-rate",
        "1e-2",
    ]);
    ok(&fx.sft("sft", &args));
    let out = fx.path("sft");
    let loss = metric(&out, "train/loss");
    assert_eq!(loss.len(), 40);
    let first = loss[0].1;
    let last5 = loss[35..].iter().map(|x| x.1).sum::<f64>() / 5.0;
    assert!(first > 5.0, "a random model starts near ln(vocab): {first}");
    assert!(last5 < 0.5 * first, "loss did not fall: {first} -> {last5}");
    let eval = metric(&out, "eval/loss");
    assert_eq!(eval.iter().map(|e| e.0).collect::<Vec<_>>(), vec![20, 40]);
    assert!(eval[1].1 < eval[0].1, "eval loss should fall: {eval:?}");
    let ppl = metric(&out, "eval/perplexity");
    assert!((ppl[1].1 - eval[1].1.exp()).abs() < 1e-9);
    let lr = metric(&out, "train/lr");
    assert!(
        (lr[0].1 - 5e-3).abs() < 1e-12 && (lr[1].1 - 1e-2).abs() < 1e-12,
        "{lr:?}"
    );
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "lineage.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(
        !fx.path("sft.checkpoint").exists(),
        "checkpoint left behind"
    );
    // Our loader reads the result and it differs from the random start.
    let a = rlhf_nn::Model::load(&fx.model, Device::Cpu, Kind::Float).unwrap();
    let b = rlhf_nn::Model::load(&out, Device::Cpu, Kind::Float).unwrap();
    assert_ne!(a.base_id(), b.base_id());
}

/// The loss equals a brute-force NLL over completion positions only, computed from the
/// full logits; the all-positions NLL is far larger, so an unmasked loss would fail here.
#[test]
fn loss_counts_completion_tokens_only() {
    let fx = Fixture::new();
    let model = rlhf_nn::Model::load(&fx.model, Device::Cpu, Kind::Float).unwrap();
    let tok = Tokenizer::from_dir(&fx.model).unwrap();
    let eos = tok.eos_id().unwrap() as i32;
    let mk = |p: &str, c: &str| {
        let mut completion = tok.encode(c, false).unwrap();
        completion.push(eos);
        Example {
            prompt: tok.encode(p, true).unwrap(),
            response: completion,
        }
    };
    let exs = [
        mk(
            "User: say red twice, and then some more words.\nAssistant:",
            " red red",
        ),
        mk("User: count up from 3.\nAssistant:", " 3 4 5 6"),
    ];
    let refs: Vec<&Example> = exs.iter().collect();
    let batch = SftBatch::new(&refs, tok.pad_id as i64, Device::Cpu);
    let _g = tch::no_grad_guard();
    let ours = completion_nll_sum(&model, None, &batch, false)
        .unwrap()
        .double_value(&[]);

    let hidden = model
        .forward(&batch.input_ids, &batch.attention_mask, None, false)
        .unwrap();
    let logp = model
        .lm_logits(&hidden, None, false)
        .unwrap()
        .log_softmax(-1, Kind::Float);
    let (mut completion_only, mut all_positions) = (0.0, 0.0);
    for (row, e) in exs.iter().enumerate() {
        let tokens: Vec<i32> = e.prompt.iter().chain(&e.response).copied().collect();
        for (t, &token) in tokens.iter().enumerate().skip(1) {
            let nll = -logp.double_value(&[row as i64, t as i64 - 1, token as i64]);
            all_positions += nll;
            if t >= e.prompt.len() {
                completion_only += nll;
            }
        }
    }
    assert_eq!(
        batch.num_targets,
        exs[0].response.len() + exs[1].response.len()
    );
    assert!(
        (ours - completion_only).abs() < 1e-3 * completion_only,
        "{ours} vs {completion_only}"
    );
    assert!(
        all_positions > 2.0 * completion_only,
        "test cannot tell masking apart"
    );
}

/// Random-character prompts cannot be predicted, a fixed completion can: after training,
/// the eval loss is far below what the prompt tokens alone would contribute.
#[test]
fn unpredictable_prompts_do_not_enter_the_loss() {
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let rows: Vec<_> = (0..160)
        .map(|i| {
            let noise: String = (0..24)
                .map(|_| (b'a' + (next() % 26) as u8) as char)
                .collect();
            row(i, format!("{noise}:"), " ok".to_string())
        })
        .collect();
    let fx = Fixture::with_rows(&rows, "llama");
    let mut args = FAST.to_vec();
    args.extend(["--max-steps", "60", "--learning-rate", "1e-2"]);
    ok(&fx.sft("sft", &args));
    let eval = metric(&fx.path("sft"), "eval/loss");
    // Unmasked, ~24 random letters per example at >= ln(26)/token would dominate the mean.
    assert!(
        eval[0].1 < 0.5,
        "eval loss {} includes prompt tokens?",
        eval[0].1
    );
    let tokens = metric(&fx.path("sft"), "eval/tokens");
    let tok = Tokenizer::from_dir(&fx.model).unwrap();
    let per_row = tok.encode(" ok", false).unwrap().len() + 1;
    assert_eq!(tokens[0].1 as usize, 20 * per_row);
}

fn all_metrics(dir: &std::path::Path) -> Vec<(i64, String, u64)> {
    MetricsLog::read(&dir.join("metrics.parquet"), "train-sft", 0)
        .unwrap()
        .rows
        .iter()
        .map(|r| (r.step, r.metric.clone(), r.value.to_bits()))
        .collect()
}

fn resume_matches(extra: &[&str], weights: &str) {
    let fx = Fixture::new();
    let mut args = FAST.to_vec();
    args.extend([
        "--max-steps",
        "12",
        "--checkpoint-every",
        "4",
        "--eval-every",
        "5",
        "--learning-rate",
        "3e-3",
    ]);
    args.extend(extra);
    ok(&fx.sft("a", &args));

    let mut stop = args.clone();
    stop.extend(["--stop-after-steps", "5"]);
    stopped(&fx.sft("b", &stop));
    assert!(
        !fx.path("b").exists(),
        "a stopped run must not write its output"
    );
    let meta = rlhf_algo::checkpoint::load_meta(&fx.path("b.checkpoint")).unwrap();
    assert_eq!(meta.step, 5);
    let mut again = stop.clone();
    again.push("--resume");
    stopped(&fx.sft("b", &again)); // steps 6..10
    assert_eq!(
        rlhf_algo::checkpoint::load_meta(&fx.path("b.checkpoint"))
            .unwrap()
            .step,
        10
    );
    let mut rest = args.clone();
    rest.push("--resume");
    ok(&fx.sft("b", &rest));

    let wa = std::fs::read(fx.path("a").join(weights)).unwrap();
    let wb = std::fs::read(fx.path("b").join(weights)).unwrap();
    assert!(
        wa == wb,
        "resumed weights differ from the uninterrupted run"
    );
    assert_eq!(all_metrics(&fx.path("a")), all_metrics(&fx.path("b")));
}

#[test]
fn resume_after_stops_equals_the_uninterrupted_run_full() {
    resume_matches(&[], "model.safetensors");
}

#[test]
fn resume_after_stops_equals_the_uninterrupted_run_lora_with_dropout() {
    resume_matches(
        &[
            "--lora-rank",
            "4",
            "--lora-dropout",
            "0.1",
            "--grad-accum",
            "2",
        ],
        "adapter_model.safetensors",
    );
}

#[test]
fn resume_after_a_kill_equals_the_uninterrupted_run() {
    let fx = Fixture::with_rows(&rows(400), "llama");
    let mut args = FAST.to_vec();
    args.extend(["--max-steps", "150", "--checkpoint-every", "3"]);
    ok(&fx.sft("a", &args));
    let out = fx.path("b");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_train-sft"));
    command
        .args([
            "--model",
            fx.model.to_str().unwrap(),
            "--data",
            fx.data.to_str().unwrap(),
        ])
        .args([
            "--out",
            out.to_str().unwrap(),
            "--threads",
            "1",
            "--device",
            "cpu",
            "-q",
        ])
        .args(&args);
    let at = rlhf_testkit::kill_after_checkpoint(&mut command, &fx.path("b.checkpoint"));
    assert!(!out.exists(), "a killed run must leave no output");
    assert!((3..150).contains(&at), "checkpoint at step {at}");
    let mut resume = args.clone();
    resume.push("--resume");
    let resumed = fx.sft("b", &resume);
    ok(&resumed);
    rlhf_testkit::assert_resumed_from(&resumed.stderr, at);
    let wa = std::fs::read(fx.path("a").join("model.safetensors")).unwrap();
    let wb = std::fs::read(out.join("model.safetensors")).unwrap();
    assert!(wa == wb, "weights after kill + resume differ");
    assert_eq!(all_metrics(&fx.path("a")), all_metrics(&out));
}

/// --stop-after-steps ends with a checkpoint, no output and exit 1 (a retry continues).
fn stopped(out: &std::process::Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--stop-after-steps"), "{err}");
}

#[test]
fn resume_with_other_settings_is_refused() {
    let fx = Fixture::new();
    let mut args = FAST.to_vec();
    args.extend(["--max-steps", "6", "--stop-after-steps", "2"]);
    stopped(&fx.sft("b", &args));
    let mut other = args.clone();
    other.extend(["--resume", "--weight-decay", "0.1"]);
    let out = fx.sft("b", &other);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("weight_decay") && err.contains("b.checkpoint"),
        "{err}"
    );
}

#[test]
fn nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint() {
    let fx = Fixture::new();
    let flags = [
        &["--max-steps", "20"][..],
        &rlhf_testkit::DIVERGING_TRAINER_FLAGS,
    ]
    .concat();
    let out = fx.sft("sft", &flags);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("training stopped at step"), "{err}");
    assert!(err.contains("is NaN") || err.contains("is inf"), "{err}");
    assert!(err.contains("last good checkpoint (step"), "{err}");
    assert!(!fx.path("sft").exists());
    let meta = rlhf_algo::checkpoint::load_meta(&fx.path("sft.checkpoint")).unwrap();
    assert!(meta.step >= 1);
}

#[test]
fn data_tokenized_for_another_tokenizer_is_refused_naming_both() {
    let fx = Fixture::new();
    let other = fx.path("other.parquet");
    write_sft(&other, &rows(20), Some("0123456789abcdef"));
    let out = common::train_sft(&fx.model, &other, &fx.path("sft"), &["--max-steps", "2"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    let ours = Tokenizer::from_dir(&fx.model).unwrap().hash().to_string();
    assert!(
        err.contains("0123456789abcdef") && err.contains(&ours),
        "{err}"
    );
    assert!(
        err.contains("other.parquet") && err.contains("tokenizer.json"),
        "{err}"
    );
}

#[test]
fn token_columns_with_the_model_tokenizer_are_used_as_given() {
    let fx = Fixture::new();
    let tok = Tokenizer::from_dir(&fx.model).unwrap();
    // Token columns that differ from the text: the trainer must train on the columns.
    let mut rs = rows(40);
    for r in &mut rs {
        r.prompt_tokens = Some(tok.encode("User: hi\nAssistant:", true).unwrap());
        r.completion_tokens = Some(tok.encode(" hello", false).unwrap());
    }
    let data = fx.path("tokens.parquet");
    write_sft(&data, &rs, Some(tok.hash()));
    let out = common::train_sft(&fx.model, &data, &fx.path("sft"), &["--max-steps", "1"]);
    ok(&out);
    let per_row = tok.encode(" hello", false).unwrap().len() + 1;
    let eval_rows = rs.iter().filter(|r| r.split == "eval").count();
    let tokens = metric(&fx.path("sft"), "eval/tokens");
    assert_eq!(tokens[0].1 as usize, eval_rows * per_row);
}
