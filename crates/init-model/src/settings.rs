//! The command line of init-model and its validation into the model configuration and
//! tokenizer settings, before any training starts.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use rlhf_core::cli::GlobalArgs;
use rlhf_core::error::CoreError;
use rlhf_nn::config::{Arch, ModelConfig};

use crate::bpe;

/// Model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArchArg {
    /// Llama: RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention.
    Llama,
    /// GPT-2: LayerNorm, learned positions, GELU MLP, tied embeddings.
    Gpt2,
}

/// Size preset (explicit dimension flags override its values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// hidden 64, 2 layers, 4 heads: tests and the fastest demo.
    Tiny,
    /// hidden 256, 4 layers, 8 heads (~3-4M parameters + embeddings).
    Small,
    /// hidden 512, 8 layers, 8 heads (~25-30M parameters).
    #[value(name = "30m")]
    M30,
    /// hidden 768, 12 layers, 12 heads (~85-100M parameters).
    #[value(name = "100m")]
    M100,
}

/// Train a byte-level BPE tokenizer and write a Hugging Face model folder with random weights.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "init-model",
    version,
    about,
    long_about = "Trains a byte-level BPE tokenizer on text columns of a Parquet file and writes \
a Llama-family or GPT-2 model folder with random weights: config.json, model.safetensors, \
tokenizer.json, tokenizer_config.json (special tokens <|bos|>, <|eos|>, <|pad|> and a chat \
template), special_tokens_map.json, generation_config.json. The folder loads in transformers \
(AutoModelForCausalLM, AutoTokenizer) and in every stage of this pipeline. The same inputs, \
flags and seed give a byte-identical folder."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    /// Parquet file (or folder of part files, or glob) with the tokenizer's training text.
    #[arg(long, value_name = "PATH")]
    pub text_file: PathBuf,

    /// String column(s) to train the tokenizer on (repeat the flag or separate with commas).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "completion",
        value_name = "NAME"
    )]
    pub text_column: Vec<String>,

    /// Vocabulary size including the 3 special tokens and the 256 byte symbols (the
    /// model's embedding has this many rows even if the text supports fewer merges).
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub vocab_size: usize,

    /// Model family.
    #[arg(long, value_enum, default_value_t = ArchArg::Llama)]
    pub arch: ArchArg,

    /// Size preset.
    #[arg(long, value_enum, default_value_t = Preset::Tiny)]
    pub preset: Preset,

    /// Hidden size (overrides the preset).
    #[arg(long, value_name = "N")]
    pub hidden_size: Option<i64>,

    /// Transformer layers (overrides the preset).
    #[arg(long, value_name = "N")]
    pub num_layers: Option<i64>,

    /// Attention heads (overrides the preset; must divide the hidden size).
    #[arg(long, value_name = "N")]
    pub num_heads: Option<i64>,

    /// Key/value heads for grouped-query attention (Llama only; must divide the heads).
    #[arg(long, value_name = "N")]
    pub num_kv_heads: Option<i64>,

    /// MLP inner size (overrides the preset).
    #[arg(long, value_name = "N")]
    pub intermediate_size: Option<i64>,

    /// Longest sequence the model accepts (positions).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_position: i64,

    /// Output model folder (written atomically; an existing folder is replaced).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub text_file: PathBuf,
    pub text_columns: Vec<String>,
    pub vocab_size: usize,
    /// The model configuration (vocabulary and special ids set).
    pub config: ModelConfig,
    pub out: PathBuf,
    pub seed: u64,
}

/// (hidden, intermediate llama, intermediate gpt2, layers, heads, kv heads).
fn dims(preset: Preset) -> (i64, i64, i64, i64, i64, i64) {
    match preset {
        Preset::Tiny => (64, 172, 256, 2, 4, 2),
        Preset::Small => (256, 688, 1024, 4, 8, 4),
        Preset::M30 => (512, 1408, 2048, 8, 8, 4),
        Preset::M100 => (768, 2048, 3072, 12, 12, 4),
    }
}

impl Settings {
    /// Validates the command line and builds the model configuration.
    pub fn from_cli(cli: &Cli) -> Result<Settings, CoreError> {
        rlhf_core::paths::check_outputs(
            &[("--out", &cli.out)],
            &[("--text-file", &cli.text_file)],
        )?;
        if cli.vocab_size < bpe::MIN_VOCAB {
            return Err(CoreError::usage(format!(
                "--vocab-size {} is too small: a byte-level BPE needs 256 byte symbols + 3 special tokens + merges (at least {})",
                cli.vocab_size,
                bpe::MIN_VOCAB
            )));
        }
        let columns: Vec<String> = cli
            .text_column
            .iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect();
        if columns.is_empty() {
            return Err(CoreError::usage("give at least one --text-column"));
        }
        let template = match cli.arch {
            ArchArg::Llama => "llama-tiny",
            ArchArg::Gpt2 => "gpt2-tiny",
        };
        let mut cfg = ModelConfig::preset(template).map_err(|e| CoreError::usage(e.to_string()))?;
        let (hidden, inter_llama, inter_gpt2, layers, heads, kv) = dims(cli.preset);
        let gpt2 = cfg.arch == Arch::Gpt2;
        cfg.hidden_size = cli.hidden_size.unwrap_or(hidden);
        cfg.num_layers = cli.num_layers.unwrap_or(layers);
        cfg.num_heads = cli.num_heads.unwrap_or(heads);
        cfg.intermediate_size =
            cli.intermediate_size
                .unwrap_or(if gpt2 { inter_gpt2 } else { inter_llama });
        if gpt2 {
            if cli.num_kv_heads.is_some_and(|k| k != cfg.num_heads) {
                return Err(CoreError::usage(
                    "--num-kv-heads is for --arch llama (GPT-2 has one key/value head per head)",
                ));
            }
            cfg.num_kv_heads = cfg.num_heads;
        } else {
            cfg.num_kv_heads = cli.num_kv_heads.unwrap_or(kv.min(cfg.num_heads));
        }
        for (flag, v) in [
            ("--hidden-size", cfg.hidden_size),
            ("--num-layers", cfg.num_layers),
            ("--num-heads", cfg.num_heads),
            ("--num-kv-heads", cfg.num_kv_heads),
            ("--intermediate-size", cfg.intermediate_size),
            ("--max-position", cli.max_position),
        ] {
            if v < 1 {
                return Err(CoreError::usage(format!(
                    "{flag} must be at least 1, got {v}"
                )));
            }
        }
        if cfg.hidden_size % cfg.num_heads != 0 {
            return Err(CoreError::usage(format!(
                "--num-heads {} must divide --hidden-size {}",
                cfg.num_heads, cfg.hidden_size
            )));
        }
        if cfg.num_heads % cfg.num_kv_heads != 0 {
            return Err(CoreError::usage(format!(
                "--num-kv-heads {} must divide --num-heads {}",
                cfg.num_kv_heads, cfg.num_heads
            )));
        }
        cfg.head_dim = cfg.hidden_size / cfg.num_heads;
        if !gpt2 && cfg.head_dim % 2 != 0 {
            return Err(CoreError::usage(format!(
                "the head size (hidden {} / heads {} = {}) must be even for rotary positions",
                cfg.hidden_size, cfg.num_heads, cfg.head_dim
            )));
        }
        cfg.max_position_embeddings = cli.max_position;
        cfg.vocab_size = cli.vocab_size as i64;
        cfg.bos_token_id = Some(bpe::BOS_ID as i64);
        cfg.eos_token_ids = vec![bpe::EOS_ID as i64];
        cfg.pad_token_id = Some(bpe::PAD_ID as i64);
        cfg.validate(std::path::Path::new("<arguments>"))
            .map_err(|e| CoreError::usage(e.to_string()))?;
        Ok(Settings {
            text_file: cli.text_file.clone(),
            text_columns: columns,
            vocab_size: cli.vocab_size,
            config: cfg,
            out: cli.out.clone(),
            seed: cli.global.seed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, CoreError> {
        let mut full = vec!["init-model", "--text-file", "x.parquet", "--out", "m"];
        full.extend_from_slice(args);
        Settings::from_cli(&Cli::try_parse_from(full).unwrap())
    }

    #[test]
    fn presets_and_overrides() {
        let s = parse(&["--preset", "small", "--vocab-size", "1024"]).unwrap();
        assert_eq!(s.config.arch, Arch::Llama);
        assert_eq!((s.config.hidden_size, s.config.num_layers), (256, 4));
        assert_eq!(
            (s.config.num_heads, s.config.num_kv_heads, s.config.head_dim),
            (8, 4, 32)
        );
        assert_eq!(s.config.vocab_size, 1024);
        assert_eq!(s.config.eos_token_ids, vec![1]);
        let s = parse(&["--arch", "gpt2", "--hidden-size", "96", "--num-heads", "3"]).unwrap();
        assert_eq!(s.config.arch, Arch::Gpt2);
        assert_eq!(
            (
                s.config.hidden_size,
                s.config.num_kv_heads,
                s.config.head_dim
            ),
            (96, 3, 32)
        );
        assert_eq!(s.text_columns, vec!["completion"]);
    }

    #[test]
    fn inconsistent_dimensions_are_refused_with_the_flags_named() {
        let e = parse(&["--hidden-size", "100", "--num-heads", "3"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("--num-heads 3 must divide --hidden-size 100"),
            "{e}"
        );
        let e = parse(&["--num-heads", "4", "--num-kv-heads", "3"]).unwrap_err();
        assert!(e.to_string().contains("--num-kv-heads 3"), "{e}");
        let e = parse(&["--vocab-size", "200"]).unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
        let e = parse(&["--arch", "gpt2", "--num-kv-heads", "2"]).unwrap_err();
        assert!(e.to_string().contains("--arch llama"), "{e}");
    }
}
