//! Chat templates: the Jinja template of a model's tokenizer_config.json rendered with
//! minijinja, or a plain "role: content" fallback for models without one.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};

use crate::error::{CoreError, Result};
use crate::records::Message;

/// The plain template used when a model has none: one "Role: content" block per
/// message, and "Assistant:" to start a generation.
pub const PLAIN_TEMPLATE: &str = "{% for m in messages %}{{ m.role | capitalize }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}";

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
        tmpl.render(context! {
            messages => minijinja::value::Serde(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
        .map_err(|e| CoreError::Tokenizer {
            path: "tokenizer_config.json".into(),
            message: format!("chat_template failed to render: {e}"),
        })
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
}
