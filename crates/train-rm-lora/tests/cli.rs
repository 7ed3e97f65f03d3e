//! Command-line behaviour: usage errors exit 2, bad input data exits 3 with a message that
//! names the file, row or both tokenizers, and a NaN/inf loss exits 1 keeping the last
//! good checkpoint and writing no output.

mod common;

use common::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn usage_errors_exit_2() {
    let o = run(&["--model", "m", "--out", "o"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--preferences"), "{}", stderr(&o));
    let o = run(&[
        "--model",
        "m",
        "--out",
        "o",
        "--ratings",
        "r",
        "--noise-robust",
        "1.5",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("outside [0, 1)"), "{}", stderr(&o));
    let o = run(&[
        "--model",
        "m",
        "--out",
        "o",
        "--ratings",
        "r",
        "--full",
        "--ensemble",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let help = run(&["--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--lora-rank",
        "--label-smoothing",
        "--noise-robust",
        "--normalize-with",
        "--ensemble",
        "[default: 8]",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn tokenizer_mismatch_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(&dir.path().join("base"), 1);
    let prefs = dir.path().join("prefs.parquet");
    write_prefs(&prefs, &separable_pairs(16), Some("0123456789abcdef"));
    let o = run(&[
        "--model",
        model.to_str().unwrap(),
        "--preferences",
        prefs.to_str().unwrap(),
        "--out",
        dir.path().join("rm").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let e = stderr(&o);
    let ours = rlhf_core::tokenizer::Tokenizer::from_dir(&model)
        .unwrap()
        .hash()
        .to_string();
    assert!(e.contains("tokenizer mismatch"), "{e}");
    assert!(
        e.contains("prefs.parquet") && e.contains("0123456789abcdef"),
        "{e}"
    );
    assert!(e.contains("base") && e.contains(&ours), "{e}");
    assert!(!dir.path().join("rm").exists());
}

#[test]
fn bad_rows_and_files_exit_3_with_location() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(&dir.path().join("base"), 1);
    let m = model.to_str().unwrap();
    let out = dir.path().join("rm");
    let o_ = out.to_str().unwrap();
    // A label outside [0, 1] on row 3.
    let mut rows = separable_pairs(8);
    rows[3].label = 1.5;
    let prefs = dir.path().join("bad-label.parquet");
    write_prefs(&prefs, &rows, None);
    let o = run(&[
        "--model",
        m,
        "--preferences",
        prefs.to_str().unwrap(),
        "--out",
        o_,
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("bad-label.parquet row 3: column `label` is 1.5"),
        "{}",
        stderr(&o)
    );
    // A ratings file given as preferences: schema mismatch.
    let ratings = dir.path().join("ratings.parquet");
    write_ratings(&ratings, &skewed_ratings(8));
    let o = run(&[
        "--model",
        m,
        "--preferences",
        ratings.to_str().unwrap(),
        "--out",
        o_,
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not a valid `preferences` file"),
        "{}",
        stderr(&o)
    );
    // Scalar ratings outside [0, 1].
    let mut r = skewed_ratings(8);
    r[2].rating = 4.0;
    write_ratings(&ratings, &r);
    let o = run(&[
        "--model",
        m,
        "--ratings",
        ratings.to_str().unwrap(),
        "--out",
        o_,
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("row 2: column `rating` is 4"),
        "{}",
        stderr(&o)
    );
    // Only eval rows: nothing to train on.
    let mut rows = separable_pairs(8);
    rows.iter_mut().for_each(|r| r.split = "eval".into());
    write_prefs(&prefs, &rows, None);
    let o = run(&[
        "--model",
        m,
        "--preferences",
        prefs.to_str().unwrap(),
        "--out",
        o_,
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("no training rows"), "{}", stderr(&o));
    // Not a model folder.
    let not_a_model = dir.path().join("not-a-model");
    std::fs::create_dir(&not_a_model).unwrap();
    let o = run(&[
        "--model",
        not_a_model.to_str().unwrap(),
        "--preferences",
        prefs.to_str().unwrap(),
        "--out",
        o_,
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("config.json is missing"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(&dir.path().join("base"), 1);
    let prefs = dir.path().join("prefs.parquet");
    write_prefs(&prefs, &separable_pairs(64), None);
    let out = dir.path().join("rm");
    let args = [
        "--model",
        model.to_str().unwrap(),
        "--preferences",
        prefs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch-size",
        "2",
        "--schedule",
        "constant",
    ];
    let o = run(&[&args[..], &rlhf_testkit::DIVERGING_TRAINER_FLAGS].concat());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("is NaN at step") || e.contains("is inf at step"),
        "{e}"
    );
    assert!(e.contains("last good checkpoint"), "{e}");
    assert!(!out.exists(), "no output on failure");
    let meta = dir.path().join("rm.checkpoint/member-0/checkpoint.json");
    assert!(meta.is_file(), "checkpoint kept");
    let step = rlhf_algo::checkpoint::load_meta(meta.parent().unwrap())
        .unwrap()
        .step;
    assert!(step >= 1, "{step}");
}
