//! Chat templates rendered as transformers' `apply_chat_template` renders them, or a plain
//! "role: content" fallback for models without one.
//!
//! transformers compiles a template in a Jinja2 `ImmutableSandboxedEnvironment` with
//! `trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, its own `tojson` filter,
//! `raise_exception` and `strftime_now` globals and the `{% generation %}` block, and renders
//! it with `messages`, `tools`, `documents`, `add_generation_prompt`, the tokenizer's special
//! tokens (`bos_token`, `eos_token`, every `*_token` of tokenizer_config.json) and any extra
//! keyword arguments. This module sets minijinja up the same way: Python's string, list and
//! dict methods (minijinja-contrib's `pycompat`, with Python's whitespace), values printed as
//! Python prints them (`True`, `None`, `['a']`), undefined values empty and falsy as Jinja2's
//! default `Undefined`, and the Jinja2 filters and tests minijinja lacks or names differently.
//! A function, filter, test, method or statement neither engine has is an error naming it,
//! never a silently different prompt.
//!
//! A template comes from a model folder, so it is input: rendering is bounded in work
//! ([`RENDER_FUEL`] instructions; minijinja also refuses a `range` over 100,000 items) and
//! in output ([`MAX_RENDERED_BYTES`]), and a template over either bound is an error.

mod pycompat;

use std::io::Write;
use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, Rest, Serde, Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind, State};

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

/// Marks the errors `raise_exception` makes, so that the render error quotes the template's
/// own message.
const RAISED: &str = "\u{0}raise_exception\u{0}";

/// A compiled chat template with the variables transformers passes beside the messages.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The file the template came from (named by every error).
    origin: PathBuf,
    /// `bos_token`, `eos_token` and the other special tokens, by variable name.
    special_tokens: serde_json::Map<String, serde_json::Value>,
}

fn raise_exception(msg: String) -> std::result::Result<String, JinjaError> {
    Err(JinjaError::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED}{msg}"),
    ))
}

/// Seconds since the epoch (and microseconds) for `strftime_now`: `SOURCE_DATE_EPOCH` when
/// set (reproducible prompts), else the clock.
fn now() -> (i64, u32) {
    if let Some(secs) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
    {
        return (secs, 0);
    }
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_micros()),
        Err(_) => (0, 0),
    }
}

fn strftime_at(
    at: Option<i64>,
) -> impl Fn(String) -> std::result::Result<String, JinjaError> + Send + Sync + 'static {
    move |fmt: String| {
        let (secs, micros) = at.map_or_else(now, |s| (s, 0));
        pycompat::strftime(secs, micros, &fmt)
            .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e))
    }
}

/// Python's methods on strings, lists and dicts; an unknown one is an error naming it.
fn call_method(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, JinjaError> {
    if let Some(s) = value.as_str() {
        if let Some(v) = pycompat::string_method(s, method, args) {
            return Ok(v);
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args).map_err(|e| {
        if e.kind() == ErrorKind::UnknownMethod {
            JinjaError::new(
                ErrorKind::UnknownMethod,
                format!("{} has no method `{method}` in this renderer", value.kind()),
            )
        } else {
            e
        }
    })
}

/// Brings block tags to what transformers' Jinja2 accepts: `{% generation %}` /
/// `{% endgeneration %}` (transformers' extension that only marks the assistant's text)
/// become `{% if true %}` / `{% endif %}`, which render their body and trim whitespace alike;
/// `{% do %}`, which minijinja has and Jinja2 only with an extension transformers does not
/// load, is refused as Jinja2 refuses it.
fn adapt_tags(source: &str) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        // the tag closes after its opening `{%` (in `{%}` the `%}` overlaps the opening)
        let Some(end) = tag[2..].find("%}").map(|e| e + 2) else {
            break;
        };
        let inner = &tag[2..end];
        let (left, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, right) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[body.len() - 1..]),
            None => (body, ""),
        };
        let keyword = body.split_whitespace().next().unwrap_or("");
        match keyword {
            "generation" if body.trim() == "generation" => {
                out.push_str(&format!("{{%{left} if true {right}%}}"))
            }
            "endgeneration" if body.trim() == "endgeneration" => {
                out.push_str(&format!("{{%{left} endif {right}%}}"))
            }
            "do" => {
                let line = source[..source.len() - rest.len() + at]
                    .lines()
                    .count()
                    .max(1);
                return Err(format!(
                    "unknown tag `do` (line {line}): transformers' Jinja2 has no `do` statement \
                     (hint: use `{{% set %}}` with a namespace)"
                ));
            }
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The environment transformers renders chat templates in.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(RENDER_FUEL));
    let syntax = env
        .syntax()
        .to_builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(false)
        .build();
    // The default delimiters always build; a failure would keep minijinja's defaults.
    if let Ok(syntax) = syntax {
        env.set_syntax(syntax);
    }
    env.set_formatter(pycompat::formatter);
    env.set_unknown_method_callback(call_method);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_at(None));
    env.add_filter("tojson", |v: &Value, args: Rest<Value>, kwargs: Kwargs| {
        pycompat::tojson(v, &args, kwargs)
    });
    env.add_filter("trim", pycompat::trim);
    env.add_filter("title", |s: String| pycompat::jinja_title(&s));
    env.add_test("undefined", |v: &Value| v.is_undefined());
    // Jinja2: `sequence` is anything with a length and items (str, list, dict), `iterable`
    // anything `iter()` accepts.
    env.add_test("sequence", |v: &Value| {
        matches!(
            v.kind(),
            ValueKind::String | ValueKind::Seq | ValueKind::Map
        )
    });
    env.add_test("iterable", |v: &Value| {
        matches!(
            v.kind(),
            ValueKind::String | ValueKind::Seq | ValueKind::Map | ValueKind::Iterable
        )
    });
    env.add_test("divisibleby", |v: i64, n: i64| n != 0 && v % n == 0);
    // minijinja's own additions, which Jinja2 (hence transformers) does not have.
    env.remove_global("debug");
    for name in ["split", "lines", "bool", "chain", "zip"] {
        env.remove_filter(name);
    }
    env
}

/// Special-token variables from `(name, token)` pairs, skipping empty tokens.
fn token_vars(tokens: &[(&str, &str)]) -> serde_json::Map<String, serde_json::Value> {
    tokens
        .iter()
        .filter(|(_, t)| !t.is_empty())
        .map(|(n, t)| (n.to_string(), serde_json::Value::from(*t)))
        .collect()
}

impl ChatTemplate {
    /// Compiles a template source with `bos_token` and `eos_token` (an empty token is left
    /// undefined, as transformers leaves a token the tokenizer does not have).
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate> {
        ChatTemplate::with_special_tokens(
            source,
            Path::new("tokenizer_config.json"),
            token_vars(&[("bos_token", bos), ("eos_token", eos)]),
        )
    }

    /// Compiles a template source read from `origin`, rendered with `special_tokens` (the
    /// `*_token` variables of tokenizer_config.json, by name).
    pub fn with_special_tokens(
        source: &str,
        origin: &Path,
        special_tokens: serde_json::Map<String, serde_json::Value>,
    ) -> Result<ChatTemplate> {
        let compile_error = |message: String| CoreError::Tokenizer {
            path: origin.to_path_buf(),
            message: format!("the chat template does not compile: {message}"),
        };
        let mut env = environment();
        let source = adapt_tags(source).map_err(compile_error)?;
        env.add_template_owned("chat", source)
            .map_err(|e| compile_error(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            origin: origin.to_path_buf(),
            special_tokens,
        })
    }

    /// The plain fallback template.
    pub fn plain() -> ChatTemplate {
        // The plain template is a constant that compiles; a failure here is a bug.
        ChatTemplate::new(PLAIN_TEMPLATE, "", "").unwrap_or_else(|e| panic!("{e}"))
    }

    /// Adds the template named "tool_use", rendered instead of the default one when `tools`
    /// is given (transformers' `get_chat_template`).
    pub fn add_tool_use_template(&mut self, source: &str) -> Result<()> {
        let source = adapt_tags(source).map_err(|e| self.compile_error(e))?;
        self.env
            .add_template_owned("tool_use", source)
            .map_err(|e| self.compile_error(describe(&e)))
    }

    fn compile_error(&self, message: String) -> CoreError {
        CoreError::Tokenizer {
            path: self.origin.clone(),
            message: format!("the chat template does not compile: {message}"),
        }
    }

    /// Makes `strftime_now` read a fixed time (seconds since the epoch, UTC) instead of the
    /// clock (golden tests; `SOURCE_DATE_EPOCH` does the same for the stages).
    pub fn set_time(&mut self, unix_seconds: i64) {
        self.env
            .add_function("strftime_now", strftime_at(Some(unix_seconds)));
    }

    /// Renders messages; with `add_generation_prompt` the text ends where the assistant's
    /// reply starts.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let messages: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
            .collect();
        self.render_with(&messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// Renders messages given as JSON objects (tool calls and any other fields a template
    /// reads) with extra variables, as `apply_chat_template(messages, tools=..., documents=...,
    /// add_generation_prompt=..., **kwargs)`: `tools` and `documents` in `vars` are those
    /// arguments (`None` when absent), every other entry a keyword argument that overrides a
    /// special token of the same name. Keys whose value is null are dropped from each message,
    /// as transformers drops them.
    pub fn render_with(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
        vars: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let failed = |message: String| CoreError::Tokenizer {
            path: self.origin.clone(),
            message,
        };
        let with_tools = vars.get("tools").is_some_and(|t| !t.is_null());
        let name = if with_tools && self.env.get_template("tool_use").is_ok() {
            "tool_use"
        } else {
            "chat"
        };
        let tmpl = self
            .env
            .get_template(name)
            .map_err(|e| failed(describe(&e)))?;
        let mut ctx = self.special_tokens.clone();
        for (k, v) in vars {
            ctx.insert(k.clone(), v.clone());
        }
        for key in ["tools", "documents"] {
            ctx.entry(key).or_insert(serde_json::Value::Null);
        }
        let messages: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| match m {
                serde_json::Value::Object(o) => serde_json::Value::Object(
                    o.iter()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
                other => other.clone(),
            })
            .collect();
        ctx.insert("messages".into(), serde_json::Value::from(messages));
        ctx.insert(
            "add_generation_prompt".into(),
            serde_json::Value::from(add_generation_prompt),
        );
        let mut out = BoundedOutput::default();
        let rendered = tmpl.render_captured_to(Value::from(Serde(&ctx)), &mut out);
        match rendered {
            Err(_) if out.full => Err(failed(format!(
                "the chat template failed to render: the output would exceed {MAX_RENDERED_BYTES} bytes"
            ))),
            Err(e) => Err(failed(render_error(&e))),
            Ok(_) => String::from_utf8(out.bytes)
                .map_err(|e| failed(format!("the chat template failed to render: {e}"))),
        }
    }
}

/// A minijinja error with its causes, on one line.
fn describe(e: &JinjaError) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

/// The message of a failed render; `raise_exception` quotes the template's own words.
fn render_error(e: &JinjaError) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(j) = err.downcast_ref::<JinjaError>() {
            if let Some(msg) = j.detail().and_then(|d| d.strip_prefix(RAISED)) {
                let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
                return format!("the chat template raised an exception{line}: {msg}");
            }
        }
        cur = err.source();
    }
    format!("the chat template failed to render: {}", describe(e))
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

    #[test]
    fn a_tag_whose_close_overlaps_its_open_is_an_error_not_a_panic() {
        // found by tests/fuzz_chat.rs: `{%}` closes inside its own opening
        for src in ["{%}", "{%}}{% else %}x{%", "a{%-}b", "{%%}"] {
            assert!(ChatTemplate::new(src, "", "").is_err(), "{src}");
        }
        assert_eq!(adapt_tags("{%}x").unwrap(), "{%}x");
    }
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
