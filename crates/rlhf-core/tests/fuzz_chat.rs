//! Fuzz (proptest) of the chat-template renderer (`ChatTemplate::new` and `render`): random
//! template sources, both arbitrary text and templates assembled from Jinja pieces (loops,
//! conditions, filters, macros, `raise_exception`, unbalanced tags, loops too long to
//! finish, huge repeated strings), rendered over random messages. Each gives a string
//! within `MAX_RENDERED_BYTES` or an error that is bad input (exit code 3), never a panic
//! and never an endless render. `RLHF_FUZZ_CASES` sets the cases per property (default
//! 256; `make fuzz` runs 20,000).

mod fuzz_common;

use fuzz_common::config;
use proptest::prelude::*;
use rlhf_core::chat::{ChatTemplate, MAX_RENDERED_BYTES, PLAIN_TEMPLATE};
use rlhf_core::records::Message;

/// Pieces of chat templates as models ship them, and of templates that misbehave.
const PIECES: &[&str] = &[
    "{{ bos_token }}",
    "{{ eos_token }}",
    "{% for message in messages %}",
    "{% for m in messages %}",
    "{% endfor %}",
    "{% if add_generation_prompt %}",
    "{% if loop.first and m.role == 'system' %}",
    "{% if message['role'] == 'user' %}",
    "{% elif m.role == 'assistant' %}",
    "{% else %}",
    "{% endif %}",
    "{{ m.role }}",
    "{{ m.content }}",
    "{{ message['content'] | trim }}",
    "{{ m.content | upper | replace('a', 'b') }}",
    "{{ messages[0]['content'] }}",
    "{{ messages[-1].role }}",
    "{{ messages[99].content }}",
    "{{ m.nope.deeper }}",
    "{{ raise_exception('Conversation roles must alternate') }}",
    "{{ raise_exception(m) }}",
    "{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}",
    "{{ m.content ~ 1 }}",
    "{{ 1 / 0 }}",
    "{{ 'x' * 3 }}",
    "{{ 'x' * 99999999 }}",
    "{{ 'x' * -1 }}",
    "{{ messages | length }}",
    "{{ messages | tojson }}",
    "{{ range(5) | list }}",
    "{% for i in range(999999999) %}",
    "{% for i in range(99999) %}",
    "{% for i in range(3) %}",
    "{% set ns = namespace(n=0) %}",
    "{% set ns.n = ns.n + 1 %}",
    "{% set x = messages %}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{% macro g() %}g{% endmacro %}",
    "{{ g() }}",
    "{% break %}",
    "{% continue %}",
    "{% raw %}",
    "{% endraw %}",
    "{#",
    "#}",
    "{{",
    "}}",
    "{%",
    "%}",
    "(",
    ")",
    "[",
    "]",
    "'",
    "\"",
    "|",
    "\n",
    " ",
    "text",
    "\u{1f600}",
];

const ROLES: &[&str] = &["system", "user", "assistant", "tool", "", "robot", "{{"];

fn template() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<String>(),
        1 => fuzz_common::text(PIECES),
        4 => prop::collection::vec(prop::sample::select(PIECES), 0..16).prop_map(|v| v.concat()),
        1 => Just(PLAIN_TEMPLATE.to_string()),
    ]
}

fn messages() -> impl Strategy<Value = Vec<Message>> {
    let role = prop_oneof![
        3 => prop::sample::select(ROLES).prop_map(String::from),
        1 => any::<String>(),
    ];
    let content = fuzz_common::text(PIECES);
    prop::collection::vec(
        (role, content).prop_map(|(r, c)| Message::new(&r, &c)),
        0..6,
    )
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("<s>".to_string()),
        Just("{{ eos }}".to_string()),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn templates_render_or_fail_cleanly(
        src in template(),
        msgs in messages(),
        bos in token(),
        eos in token(),
        gen in any::<bool>(),
    ) {
        match ChatTemplate::new(&src, &bos, &eos) {
            Ok(t) => match t.render(&msgs, gen) {
                Ok(out) => prop_assert!(out.len() <= MAX_RENDERED_BYTES),
                Err(e) => prop_assert!(e.is_bad_input(), "{e:?}"),
            },
            Err(e) => prop_assert!(e.is_bad_input(), "{e:?}"),
        }
    }

    #[test]
    fn the_plain_template_renders_any_messages(msgs in messages(), gen in any::<bool>()) {
        let out = ChatTemplate::plain().render(&msgs, gen);
        prop_assert!(out.is_ok(), "{out:?}");
    }
}

#[test]
fn unbounded_templates_stop_with_an_error() {
    let msgs = [Message::new("user", "hi")];
    for src in [
        "{% for i in range(999999999) %}x{% endfor %}",
        "{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}",
        "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
        "{% for i in range(1000) %}{{ 'x' * 99999999 }}{% endfor %}",
        "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    ] {
        let err = ChatTemplate::new(src, "", "").unwrap().render(&msgs, true);
        let err = err.expect_err(src);
        assert!(err.is_bad_input(), "{src}: {err}");
    }
}
