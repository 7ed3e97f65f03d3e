//! Chat templates: the Jinja template of a model's tokenizer_config.json rendered with
//! minijinja, or a plain "role: content" fallback for models without one.
//!
//! A template comes from a model folder, so it is input: rendering is bounded in work
//! ([`RENDER_FUEL`] instructions; minijinja also refuses a `range` over 100,000 items) and
//! in output ([`MAX_RENDERED_BYTES`]), and a template over either bound is an error.

use std::io::Write;

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};

use crate::error::{CoreError, Result};
use crate::records::Message;

/// The plain template used when a model has none: one "Role: content" block per
/// message, and "Assistant:" to start a generation.
pub const PLAIN_TEMPLATE: &str = "{% for m in messages %}{{ m.role | capitalize }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}";

/// Instructions one render may execute: far more than a chat template spends on a
/// conversation (a few dozen per message), and it stops a template that would loop for hours
/// (`{% for i in range(99999) %}{% for j in range(99999) %}`).
pub const RENDER_FUEL: u64 = 2_000_000;

/// Bytes one render may produce (a prompt far longer than any context window).
pub const MAX_RENDERED_BYTES: usize = 64 << 20;

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

fn raise_exception(msg: String) -> std::result::Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    /// Compiles a template source.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_fuel(Some(RENDER_FUEL));
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| CoreError::Tokenizer {
                path: "tokenizer_config.json".into(),
                message: format!("chat_template does not compile: {e}"),
            })?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// The plain fallback template.
    pub fn plain() -> ChatTemplate {
        // The plain template is a constant that compiles; a failure here is a bug.
        ChatTemplate::new(PLAIN_TEMPLATE, "", "").unwrap_or_else(|e| panic!("{e}"))
    }

    /// Renders messages; with `add_generation_prompt` the text ends where the assistant's
    /// reply starts.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| CoreError::Tokenizer {
                path: "tokenizer_config.json".into(),
                message: e.to_string(),
            })?;
        let mut out = BoundedOutput::default();
        let rendered = tmpl.render_captured_to(
            context! {
                messages => minijinja::value::Serde(messages),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos.as_str(),
                eos_token => self.eos.as_str(),
            },
            &mut out,
        );
        let failed = |message: String| CoreError::Tokenizer {
            path: "tokenizer_config.json".into(),
            message: format!("chat_template failed to render: {message}"),
        };
        match rendered {
            Err(_) if out.full => Err(failed(format!(
                "the output would exceed {MAX_RENDERED_BYTES} bytes"
            ))),
            Err(e) => Err(failed(e.to_string())),
            Ok(_) => String::from_utf8(out.bytes).map_err(|e| failed(e.to_string())),
        }
    }
}

/// The render's output buffer, refusing to grow past [`MAX_RENDERED_BYTES`].
#[derive(Default)]
struct BoundedOutput {
    bytes: Vec<u8>,
    /// Set when a write was refused (minijinja reports only a generic write failure).
    full: bool,
}

impl Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED_BYTES {
            self.full = true;
            return Err(std::io::Error::other("chat template output too long"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_template_renders_roles_and_generation_prompt() {
        let t = ChatTemplate::plain();
        let out = t.render(&[Message::new("user", "Hi there")], true).unwrap();
        assert_eq!(out, "User: Hi there\nAssistant:");
    }

    #[test]
    fn hf_style_template_with_tokens_and_exception() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m.role not in ['user','assistant'] %}{{ raise_exception('bad role ' ~ m.role) }}{% endif %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let out = t.render(&[Message::new("user", "x")], true).unwrap();
        assert_eq!(out, "<s><|user|>x</s><|assistant|>");
        let err = t.render(&[Message::new("robot", "x")], false).unwrap_err();
        assert!(err.to_string().contains("bad role robot"), "{err}");
    }

    #[test]
    fn endless_loops_and_huge_outputs_are_refused() {
        let msgs = [Message::new("user", "x")];
        let too_long = "{% for i in range(999999999) %}x{% endfor %}";
        let err = ChatTemplate::new(too_long, "", "")
            .unwrap()
            .render(&msgs, true);
        let err = err.unwrap_err().to_string();
        assert!(err.contains("too many elements"), "{err}");
        let nested =
            "{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}";
        let err = ChatTemplate::new(nested, "", "")
            .unwrap()
            .render(&msgs, true);
        let err = err.unwrap_err().to_string();
        assert!(err.contains("out of fuel"), "{err}");
        let big = "{% for i in range(100) %}{{ 'x' * 99999999 }}{% endfor %}";
        let err = ChatTemplate::new(big, "", "").unwrap().render(&msgs, true);
        let err = err.unwrap_err().to_string();
        assert!(err.contains("exceed"), "{err}");
        // A long conversation fits the budget many times over.
        let long: Vec<Message> = (0..2000)
            .map(|i| Message::new(if i % 2 == 0 { "user" } else { "assistant" }, "hi"))
            .collect();
        let out = ChatTemplate::plain().render(&long, true).unwrap();
        assert_eq!(out.lines().count(), 2001);
    }
}
