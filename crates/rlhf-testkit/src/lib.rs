//! Fixtures shared by the workspace's integration tests (a dev-dependency only): the
//! project's Python environment (the reference for golden tests), a word-level tokenizer whose
//! every id decodes to one word, LoRA adapters with random weights, and running a stage binary.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rlhf_nn::Model;
use tch::Tensor;

/// Id of `</s>` (EOS and pad) in [`write_word_tokenizer`]'s vocabulary.
pub const EOS: i32 = 1;

/// Trainer flags that make the loss blow up within a few steps (a huge learning rate, no
/// clipping) with a checkpoint after every step: for the tests of the NaN/inf guard.
pub const DIVERGING_TRAINER_FLAGS: [&str; 6] = [
    "--learning-rate",
    "1e30",
    "--max-grad-norm",
    "0",
    "--checkpoint-every",
    "1",
];

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The project's Python: `RLHF_PYTHON` when set (and not empty), else the environment
/// `scripts/setup-python.sh` makes or finds (it prints its folder). Panics, with the reason,
/// when neither gives one: golden tests need it, and `make test` sets it up.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("RLHF_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let script = repo_root().join("scripts/setup-python.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (or set RLHF_PYTHON)", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("bin/python")
}

/// Writes tokenizer.json (WordLevel over whitespace: `<unk>`, `</s>`, then `w2` ..
/// `w{vocab-1}`) and tokenizer_config.json (`</s>` as EOS and pad) into `dir`.
pub fn write_word_tokenizer(dir: &Path, vocab: usize) {
    let mut entries = vec!["\"<unk>\": 0".to_string(), "\"</s>\": 1".to_string()];
    entries.extend((2..vocab).map(|i| format!("\"w{i}\": {i}")));
    let json = format!(
        r#"{{"version":"1.0","truncation":null,"padding":null,
"added_tokens":[{{"id":1,"content":"</s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}],
"normalizer":null,"pre_tokenizer":{{"type":"Whitespace"}},"post_processor":null,
"decoder":null,"model":{{"type":"WordLevel","vocab":{{{}}},"unk_token":"<unk>"}}}}"#,
        entries.join(",")
    );
    std::fs::write(dir.join("tokenizer.json"), json).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": "</s>", "pad_token": "</s>"}"#,
    )
    .unwrap();
}

/// Which of an adapter's tensors [`randomize_adapter`] redraws.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Redraw {
    /// Every LoRA factor and the head.
    All,
    /// The B factors only (A keeps its init; the adapter then differs from the base).
    LoraB,
}

/// Redraws adapter `name`'s tensors as `std * N(0, 1)` from libtorch's generator seeded with
/// `seed`, in the adapter's parameter order, so the adapted model differs from the base.
pub fn randomize_adapter(model: &Model, name: &str, which: Redraw, std: f64, seed: i64) {
    tch::manual_seed(seed);
    let _guard = tch::no_grad_guard();
    for (n, mut t) in model.adapter_named_parameters(name).unwrap() {
        if which == Redraw::All || n.contains("lora_B") {
            let r = Tensor::randn(t.size(), (t.kind(), tch::Device::Cpu)) * std;
            t.copy_(&r.to_device(t.device()));
        }
    }
}

/// Runs `bin` with `args`; returns (exit code, stdout, stderr).
pub fn run(bin: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Panics, with the exit code and stderr, unless the process succeeded.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the project's Python with `args` and returns the last line of its stdout (where the
/// reference scripts print their JSON); panics with its stderr when it fails.
pub fn python_last_line<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(python())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python: {e}"));
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().last().unwrap_or("").to_string()
}

/// Starts `command` (a trainer), waits until it has written a checkpoint into `checkpoint`
/// (a step loop's checkpoint folder), kills it with SIGKILL while it still runs, and
/// returns the step of the checkpoint it left. Panics when no checkpoint appears within two
/// minutes, when the run ends before it could be killed, or when it did not die by SIGKILL:
/// a kill-and-resume test that passes has killed a run after a checkpoint.
pub fn kill_after_checkpoint(command: &mut Command, checkpoint: &Path) -> u64 {
    use std::os::unix::process::ExitStatusExt;
    let mut child = command.spawn().expect("starting the trainer");
    let start = std::time::Instant::now();
    while !rlhf_algo::checkpoint::exists(checkpoint) {
        if start.elapsed() > std::time::Duration::from_secs(120) {
            let _ = child.kill();
            panic!("no checkpoint appeared in {}", checkpoint.display());
        }
        let ended = child.try_wait().expect("polling the trainer");
        assert!(
            ended.is_none(),
            "the run ended before it could be killed: {ended:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().expect("killing the trainer");
    let status = child.wait().expect("waiting for the trainer");
    assert_eq!(
        status.signal(),
        Some(9),
        "the run was not killed: {status:?}"
    );
    rlhf_algo::checkpoint::load_meta(checkpoint)
        .expect("the checkpoint the killed run left")
        .step
}

/// Panics unless the log `stderr` of a rerun says it resumed from the step-`step` checkpoint.
pub fn assert_resumed_from(stderr: &[u8], step: u64) {
    let log = String::from_utf8_lossy(stderr);
    assert!(
        log.contains("resumed from checkpoint") && log.contains(&format!("step={step} ")),
        "the rerun did not resume from the step-{step} checkpoint:\n{log}"
    );
}

/// `details.forward_batches` of a stage's `--summary-json` file: how many forward batches
/// score-rewards ran.
pub fn forward_batches(summary: &str) -> u64 {
    summary_detail(summary, "forward_batches")
}

/// `details.<key>` (a whole number) of a stage's `--summary-json` file.
pub fn summary_detail(summary: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(summary).unwrap_or_else(|e| panic!("{summary}: {e}"));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["details"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("{summary} has no whole number details.{key}"))
}
