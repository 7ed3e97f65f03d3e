//! prep-data convert through the built binary: one fixture per real format (written here),
//! read back through rlhf-core; compressed inputs; rejects per reason; determinism; the
//! token columns and length filter with a hand-made tokenizer.

mod common;

use std::path::Path;

use common::{jsonl, prep, read_rejects};
use rlhf_core::parquet_io::read_records;
use rlhf_core::records::{PreferenceRow, PromptRow, RatingRow, SftRow};
use serde_json::json;

fn prefs(dir: &Path) -> Vec<PreferenceRow> {
    read_records::<PreferenceRow>(&dir.join("preferences.parquet"))
        .unwrap()
        .0
}

#[test]
fn hh_rlhf_round_trip_with_plain_template_and_prompts() {
    let t = tempfile::tempdir().unwrap();
    let input = t.path().join("hh.jsonl");
    jsonl(
        &input,
        &[
            json!({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant: A pun.", "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant: No."}),
            json!({"chosen": "\n\nHuman: Tea?\n\nAssistant: Yes please.", "rejected": "\n\nHuman: Tea?\n\nAssistant: Go away."}),
        ],
    );
    let out = t.path().join("out");
    let o = prep(&[
        "convert",
        "--input",
        input.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
        "--eval-fraction",
        "0",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let p = prefs(&out);
    assert_eq!(p.len(), 2);
    assert_eq!(
        p[0].prompt,
        "User: Hi\nAssistant: Hello\nUser: Joke?\nAssistant:"
    );
    assert_eq!(
        (p[0].chosen.as_str(), p[0].rejected.as_str()),
        (" A pun.", " No.")
    );
    assert_eq!(
        (p[0].label, p[0].source.as_str(), p[0].split.as_str()),
        (1.0, "hh-rlhf", "train")
    );
    let prompts = read_records::<PromptRow>(&out.join("prompts.parquet"))
        .unwrap()
        .0;
    assert_eq!(prompts.len(), 2);
    assert_eq!(prompts[0].prompt_id, p[0].prompt_id);
    assert_eq!(prompts[0].messages.as_ref().unwrap().len(), 3);
    assert!(out.join("eval_prompts.parquet").is_file() && out.join("rejects.parquet").is_file());
    assert!(!out.join("ratings.parquet").exists());
}

#[test]
fn shp_csv_keeps_ratio_and_filters() {
    let t = tempfile::tempdir().unwrap();
    let input = t.path().join("shp.csv");
    std::fs::write(
        &input,
        "post_id,history,human_ref_A,human_ref_B,labels,score_A,score_B\n\
        a,\"Why is the sky blue?\",Rayleigh scattering.,Magic.,1,30,10\n\
        b,Best pizza?,Margherita.,Pineapple.,0,11,10\n",
    )
    .unwrap();
    let out = t.path().join("out");
    let o = prep(&[
        "convert",
        "--format",
        "shp",
        "--min-score-ratio",
        "2",
        "--chat-template",
        "raw",
        "--input",
        input.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let p = prefs(&out);
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].prompt.as_str(), p[0].chosen.as_str(), p[0].margin),
        ("Why is the sky blue?", " Rayleigh scattering.", Some(3.0))
    );
    let r = read_rejects(&out);
    assert_eq!(r, vec![("below_min_ratio".to_string(), 2)]);
}

#[test]
fn tldr_json_array_and_ultrafeedback_gzip_and_thumbs_zstd() {
    let t = tempfile::tempdir().unwrap();
    let tldr = t.path().join("comparisons.json");
    std::fs::write(
        &tldr,
        json!([
            {"info": {"id": "x", "post": "I lost my keys.", "title": "Keys", "subreddit": "help"},
             "summaries": [{"text": " lost keys"}, {"text": " a story"}], "choice": 1}
        ])
        .to_string(),
    )
    .unwrap();
    let out = t.path().join("tldr");
    let o = prep(&[
        "convert",
        "--input",
        tldr.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
        "--chat-template",
        "raw",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let p = prefs(&out);
    assert_eq!(
        p[0].prompt,
        "SUBREDDIT: r/help\nTITLE: Keys\nPOST: I lost my keys.\nTL;DR:"
    );
    assert_eq!(
        (p[0].chosen.as_str(), p[0].rejected.as_str()),
        (" a story", " lost keys")
    );

    let uf = t.path().join("uf.jsonl.gz");
    let rows = [
        json!({"prompt": "2+2?", "chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
               "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}], "score_chosen": 9, "score_rejected": 2}),
        json!({"prompt": "Hi", "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
               "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}], "score_chosen": 5, "score_rejected": 5}),
    ];
    let text: String = rows.iter().map(|r| r.to_string() + "\n").collect();
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&uf).unwrap(),
        flate2::Compression::default(),
    );
    std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
    gz.finish().unwrap();
    let out = t.path().join("uf");
    let o = prep(&[
        "convert",
        "--input",
        uf.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let p = prefs(&out);
    assert_eq!(
        (p[0].label, p[0].margin, p[0].chosen.as_str()),
        (1.0, Some(7.0), " 4")
    );
    assert_eq!((p[1].label, p[1].margin), (0.5, Some(0.0)));
    assert_eq!(p[0].source, "ultrafeedback");

    let th = t.path().join("thumbs.jsonl.zst");
    let rows = [
        json!({"context": "[{\"speaker\": \"USER\", \"text\": \"Book a table\"}]", "generation": "Done, 7pm.", "reward": 1}),
        json!({"context": [{"role": "user", "content": "Book a cab"}], "generation": "No.", "reward": 0}),
    ];
    let text: String = rows.iter().map(|r| r.to_string() + "\n").collect();
    std::fs::write(&th, zstd::encode_all(text.as_bytes(), 3).unwrap()).unwrap();
    let out = t.path().join("thumbs");
    let o = prep(&[
        "convert",
        "--input",
        th.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let r = read_records::<RatingRow>(&out.join("ratings.parquet"))
        .unwrap()
        .0;
    assert_eq!(r.len(), 2);
    assert_eq!(
        (r[0].prompt.as_str(), r[0].response.as_str(), r[0].rating),
        ("User: Book a table\nAssistant:", " Done, 7pm.", 1.0)
    );
    assert_eq!(r[1].rating, 0.0);
}

#[test]
fn rankings_expand_to_grouped_pairs_with_ties_and_incomparables() {
    let t = tempfile::tempdir().unwrap();
    let input = t.path().join("rank.jsonl");
    jsonl(
        &input,
        &[
            json!({"prompt": "Name a fruit", "responses": ["apple", "rock", "pear", "car"], "ranks": [1, 3, 1, "incomparable"]}),
        ],
    );
    let out = t.path().join("out");
    let o = prep(&[
        "convert",
        "--input",
        input.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let p = prefs(&out);
    let got: Vec<(String, String, f32)> = p
        .iter()
        .map(|r| (r.chosen.clone(), r.rejected.clone(), r.label))
        .collect();
    assert_eq!(
        got,
        vec![
            (" apple".into(), " rock".into(), 1.0),
            (" apple".into(), " pear".into(), 0.5),
            (" pear".into(), " rock".into(), 1.0),
        ]
    );
    let g = p[0].group_id.clone().unwrap();
    assert!(p.iter().all(|r| r.group_id.as_deref() == Some(g.as_str())));
    assert_eq!(read_rejects(&out), vec![("incomparable".to_string(), 1); 3]);
}

#[test]
fn generic_parquet_sft_and_csv_pairs_with_column_mapping() {
    let t = tempfile::tempdir().unwrap();
    // A Parquet file of SFT rows in our own schema, read back as generic input.
    let src = t.path().join("in.parquet");
    let row = |p: &str, c: &str| SftRow {
        sft_id: "x".into(),
        prompt_id: "y".into(),
        prompt: p.into(),
        completion: c.into(),
        messages: None,
        split: "train".into(),
        source: "s".into(),
        prompt_tokens: None,
        completion_tokens: None,
    };
    rlhf_core::parquet_io::write_records(
        &src,
        &[row("Say hi", "hi"), row("Say bye", "bye")],
        &rlhf_core::lineage::Lineage::new("test", "0", rlhf_core::schema::Artifact::Sft),
    )
    .unwrap();
    let out = t.path().join("sft");
    let o = prep(&[
        "convert",
        "--format",
        "generic",
        "--kind",
        "sft",
        "--input",
        src.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let s = read_records::<SftRow>(&out.join("sft.parquet")).unwrap().0;
    assert_eq!(
        (s[0].prompt.as_str(), s[0].completion.as_str()),
        ("User: Say hi\nAssistant:", " hi")
    );
    assert_eq!(
        s[0].messages.as_ref().unwrap().last().unwrap().content,
        "hi"
    );

    let csv = t.path().join("pairs.csv");
    std::fs::write(&csv, "q,good,bad,p\nWhy?,Because.,Dunno.,0.2\n").unwrap();
    let out = t.path().join("pairs");
    let o = prep(&[
        "convert",
        "--format",
        "generic",
        "--prompt-column",
        "q",
        "--chosen-column",
        "good",
        "--rejected-column",
        "bad",
        "--label-column",
        "p",
        "--input",
        csv.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let p = prefs(&out);
    // label 0.2 for `good` means `bad` is preferred with 0.8.
    assert_eq!(
        (p[0].chosen.as_str(), p[0].rejected.as_str()),
        (" Dunno.", " Because.")
    );
    assert!((p[0].label - 0.8).abs() < 1e-6);
}

#[test]
fn one_bad_row_per_reject_reason() {
    let t = tempfile::tempdir().unwrap();
    let input = t.path().join("bad.jsonl");
    let good = json!({"prompt": "p", "chosen": "a", "rejected": "b"});
    let mut text = String::new();
    for r in [
        good.to_string(),
        "{not json".to_string(),                           // malformed_row
        json!({"prompt": "p", "chosen": "a"}).to_string(), // missing_field
        json!({"prompt": "p", "chosen": 3, "rejected": "b"}).to_string(), // bad_value
        json!({"prompt": "  ", "chosen": "a", "rejected": "b"}).to_string(), // empty_text
        json!({"prompt": "p", "chosen": "same", "rejected": "same"}).to_string(), // chosen_equals_rejected
        json!({"prompt": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"})
            .to_string(), // unknown_role
        good.to_string(),                                                         // duplicate
    ] {
        text.push_str(&r);
        text.push('\n');
    }
    std::fs::write(&input, text).unwrap();
    let out = t.path().join("out");
    let summary = t.path().join("summary.json");
    let o = prep(&[
        "convert",
        "--format",
        "generic",
        "--input",
        input.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
        "--summary-json",
        summary.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let mut got = read_rejects(&out);
    got.sort();
    let want: Vec<(String, i64)> = [
        ("bad_value", 4),
        ("chosen_equals_rejected", 6),
        ("duplicate", 8),
        ("empty_text", 5),
        ("malformed_row", 2),
        ("missing_field", 3),
        ("unknown_role", 7),
    ]
    .iter()
    .map(|(r, n)| (r.to_string(), *n))
    .collect();
    assert_eq!(got, want);
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(s["stage"], "prep-data");
    assert_eq!(s["metrics"]["rows_read"], 8.0);
    assert_eq!(s["details"]["rows_read"], 8);
    assert_eq!(s["details"]["rejected"]["duplicate"], 1);
    let prefs = s["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| {
            o["path"]
                .as_str()
                .unwrap()
                .ends_with("out/preferences.parquet")
        })
        .unwrap_or_else(|| panic!("no preferences output in {s}"));
    assert_eq!(prefs["rows"], 1);
    assert!(o.stderr.contains("malformed_row"), "{}", o.stderr);
}

const TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"[UNK]":0,"User":1,":":2,"Assistant":3,"hi":4,"yes":5,"no":6},"unk_token":"[UNK]"}}"#;

#[test]
fn tokenizer_adds_token_columns_and_length_filter_rejects_too_long() {
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("tokenizer.json"), TOKENIZER).unwrap();
    let input = t.path().join("p.jsonl");
    jsonl(
        &input,
        &[
            json!({"prompt": "hi", "chosen": "yes", "rejected": "no"}),
            json!({"prompt": "hi hi hi hi", "chosen": "yes", "rejected": "no"}),
        ],
    );
    let out = t.path().join("out");
    let o = prep(&[
        "convert",
        "--input",
        input.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
        "--tokenizer",
        model.to_str().unwrap(),
        "--max-prompt-tokens",
        "6",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let p = prefs(&out);
    assert_eq!(p.len(), 1);
    // "User: hi\nAssistant:" -> User : hi Assistant :
    assert_eq!(p[0].prompt_tokens, Some(vec![1, 2, 4, 3, 2]));
    assert_eq!(p[0].chosen_tokens, Some(vec![5]));
    assert_eq!(read_rejects(&out), vec![("too_long".to_string(), 2)]);
    let lineage = rlhf_core::parquet_io::read_lineage(&out.join("preferences.parquet"))
        .unwrap()
        .unwrap();
    assert_eq!(lineage.tokenizer_hash.as_deref().map(str::len), Some(16));
}

#[test]
fn two_runs_are_byte_identical_and_shards_partition_rows() {
    let t = tempfile::tempdir().unwrap();
    let input = t.path().join("g.jsonl");
    let rows: Vec<_> = (0..50)
        .map(|i| json!({"prompt": format!("q{i}"), "chosen": "a", "rejected": format!("b{i}")}))
        .collect();
    jsonl(&input, &rows);
    let out = t.path().join("out");
    let args = [
        "convert",
        "--input",
        input.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
        "--eval-fraction",
        "0.3",
    ];
    let read_all = |d: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (
                    p.file_name().unwrap().to_string_lossy().to_string(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(prep(&args).code, 0);
    let first = read_all(&out);
    assert_eq!(prep(&args).code, 0);
    assert_eq!(first, read_all(&out));
    let eval = read_records::<PromptRow>(&out.join("eval_prompts.parquet"))
        .unwrap()
        .0;
    assert!(
        eval.len() > 5 && eval.len() < 30,
        "{} eval prompts",
        eval.len()
    );

    let sharded = t.path().join("sharded");
    let mut total = 0;
    for i in 0..3 {
        let o = prep(&[
            "convert",
            "--input",
            input.to_str().unwrap(),
            "--out-dir",
            sharded.to_str().unwrap(),
            "--num-shards",
            "3",
            "--shard-index",
            &i.to_string(),
        ]);
        assert_eq!(o.code, 0, "{}", o.stderr);
    }
    for f in std::fs::read_dir(sharded.join("preferences.parquet")).unwrap() {
        total += read_records::<PreferenceRow>(&f.unwrap().path())
            .unwrap()
            .0
            .len();
    }
    assert_eq!(total, 50);
    assert_eq!(
        read_records::<PreferenceRow>(&sharded.join("preferences.parquet"))
            .unwrap()
            .0
            .len(),
        50
    );
}

#[test]
fn model_chat_template_renders_prompts_without_response_space() {
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("tokenizer.json"), TOKENIZER).unwrap();
    let tmpl = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
    std::fs::write(
        model.join("tokenizer_config.json"),
        json!({"chat_template": tmpl}).to_string(),
    )
    .unwrap();
    let input = t.path().join("p.jsonl");
    jsonl(
        &input,
        &[
            json!({"prompt": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}], "chosen": "yes", "rejected": "no"}),
        ],
    );
    let out = t.path().join("out");
    let o = prep(&[
        "convert",
        "--input",
        input.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
        "--tokenizer",
        model.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let p = prefs(&out);
    assert_eq!(p[0].prompt, "<system>be nice<user>hi<assistant>");
    assert_eq!(
        (p[0].chosen.as_str(), p[0].rejected.as_str()),
        ("yes", "no")
    );
    // --chat-template plain overrides the model's template.
    let out2 = t.path().join("out2");
    let o = prep(&[
        "convert",
        "--input",
        input.to_str().unwrap(),
        "--out-dir",
        out2.to_str().unwrap(),
        "--tokenizer",
        model.to_str().unwrap(),
        "--chat-template",
        "plain",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        prefs(&out2)[0].prompt,
        "System: be nice\nUser: hi\nAssistant:"
    );
}
