//! From messages to model text: the chat template (the model's, the plain fallback, or
//! raw text for single-turn prompts), token ids with --tokenizer, and the length filter.

use std::path::Path;

use clap::ValueEnum;
use rlhf_core::chat::ChatTemplate;
use rlhf_core::records::Message;
use rlhf_core::tokenizer::Tokenizer;

use crate::error::PrepError;
use crate::reject::{Reason, Rejection};

/// How prompts become text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TemplateMode {
    /// The --tokenizer model's chat template when it has one, else plain.
    Auto,
    /// The model's chat template from tokenizer_config.json (needs --tokenizer).
    Model,
    /// "User: ...\nAssistant:" (responses get a leading space).
    Plain,
    /// Single-turn prompts as their raw text; conversations with the plain template.
    Raw,
}

/// Renders prompts, tokenizes, and applies length limits.
pub struct Renderer {
    template: ChatTemplate,
    plain: ChatTemplate,
    mode: TemplateMode,
    space_before_response: bool,
    tokenizer: Option<Tokenizer>,
    max_prompt_tokens: Option<usize>,
    max_response_tokens: Option<usize>,
}

/// A rendered text and its tokens (with --tokenizer).
pub struct Rendered {
    pub text: String,
    pub tokens: Option<Vec<i32>>,
}

impl Renderer {
    /// Validates the flags and loads the tokenizer.
    pub fn new(
        mode: TemplateMode,
        tokenizer_dir: Option<&Path>,
        max_prompt_tokens: Option<usize>,
        max_response_tokens: Option<usize>,
    ) -> anyhow::Result<Renderer> {
        if tokenizer_dir.is_none() && (max_prompt_tokens.is_some() || max_response_tokens.is_some())
        {
            return Err(PrepError::Flag(
                "--max-prompt-tokens/--max-response-tokens need --tokenizer <model folder>".into(),
            )
            .into());
        }
        if tokenizer_dir.is_none() && mode == TemplateMode::Model {
            return Err(PrepError::Flag(
                "--chat-template model needs --tokenizer <model folder>".into(),
            )
            .into());
        }
        let tokenizer = match tokenizer_dir {
            Some(d) => {
                if !d.join("tokenizer.json").is_file() {
                    return Err(PrepError::input(
                        d,
                        None,
                        "--tokenizer: no tokenizer.json in this folder",
                    )
                    .into());
                }
                Some(Tokenizer::from_dir(d)?)
            }
            None => None,
        };
        let plain = ChatTemplate::plain();
        let (template, mode) = match (mode, &tokenizer) {
            (TemplateMode::Auto | TemplateMode::Model, Some(t)) if t.chat_template.is_some() => {
                (t.chat()?, TemplateMode::Model)
            }
            (TemplateMode::Model, Some(t)) => {
                return Err(PrepError::input(
                    t.path(),
                    None,
                    "--chat-template model: tokenizer_config.json has no chat_template (hint: use --chat-template plain)",
                )
                .into())
            }
            (TemplateMode::Auto, _) => (ChatTemplate::plain(), TemplateMode::Plain),
            (m, _) => (ChatTemplate::plain(), m),
        };
        Ok(Renderer {
            template,
            plain,
            space_before_response: mode != TemplateMode::Model,
            mode,
            tokenizer,
            max_prompt_tokens,
            max_response_tokens,
        })
    }

    /// The tokenizer hash for lineage, when token columns are written.
    pub fn tokenizer_hash(&self) -> Option<String> {
        self.tokenizer.as_ref().map(|t| t.hash().to_string())
    }

    /// The template actually used (for lineage).
    pub fn mode(&self) -> TemplateMode {
        self.mode
    }

    /// The prompt text (ending where the assistant's reply starts) and its tokens.
    pub fn prompt(&self, messages: &[Message]) -> Result<Rendered, Rejection> {
        let single = messages.len() == 1 && messages[0].role == "user";
        let text = if self.mode == TemplateMode::Raw && single {
            messages[0].content.clone()
        } else {
            let t = if self.mode == TemplateMode::Raw {
                &self.plain
            } else {
                &self.template
            };
            t.render(messages, true)
                .map_err(|e| Rejection::new(Reason::TemplateError, e.to_string()))?
        };
        // The model's template writes the special tokens it wants (as transformers'
        // `apply_chat_template(tokenize=True)`, which adds none); plain and raw text get BOS.
        let bos = self.mode != TemplateMode::Model;
        let tokens = self.tokens(&text, bos, self.max_prompt_tokens, "prompt")?;
        Ok(Rendered { text, tokens })
    }

    /// A response as it follows the prompt, and its tokens.
    pub fn response(&self, text: &str) -> Result<Rendered, Rejection> {
        let text = if self.space_before_response && !text.starts_with(char::is_whitespace) {
            format!(" {text}")
        } else {
            text.to_string()
        };
        let tokens = self.tokens(&text, false, self.max_response_tokens, "response")?;
        Ok(Rendered { text, tokens })
    }

    fn tokens(
        &self,
        text: &str,
        bos: bool,
        limit: Option<usize>,
        what: &str,
    ) -> Result<Option<Vec<i32>>, Rejection> {
        let Some(t) = &self.tokenizer else {
            return Ok(None);
        };
        let ids = t
            .encode(text, bos)
            .map_err(|e| Rejection::new(Reason::BadValue, e.to_string()))?;
        if let Some(max) = limit {
            if ids.len() > max {
                return Err(Rejection::new(
                    Reason::TooLong,
                    format!("{what} has {} tokens, more than the limit {max}", ids.len()),
                ));
            }
        }
        Ok(Some(ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_raw_rendering() {
        let r = Renderer::new(TemplateMode::Plain, None, None, None).unwrap();
        let p = r.prompt(&[Message::new("user", "Hi")]).unwrap();
        assert_eq!(p.text, "User: Hi\nAssistant:");
        assert!(p.tokens.is_none());
        assert_eq!(r.response("Yo").unwrap().text, " Yo");
        let raw = Renderer::new(TemplateMode::Raw, None, None, None).unwrap();
        assert_eq!(
            raw.prompt(&[Message::new("user", "Hi")]).unwrap().text,
            "Hi"
        );
        assert!(Renderer::new(TemplateMode::Plain, None, Some(5), None).is_err());
    }
}
