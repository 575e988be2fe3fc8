//! Arbitrary bytes -> chat templates: either the bytes are a model's own Jinja
//! template (compiled and rendered over a fixed conversation), or they are the
//! messages (role/content pairs split at NUL) rendered by each built-in template.
//!
//! A model file's template is hostile input: compiling or rendering it must return
//! an error, never panic, and must finish (libFuzzer's -timeout catches hangs).
#![no_main]

use hangar_engine::chat::{ChatMessage, ChatTemplate};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn builtins() -> &'static Vec<ChatTemplate> {
    static T: OnceLock<Vec<ChatTemplate>> = OnceLock::new();
    T.get_or_init(|| {
        ["gemma3", "llama", "qwen2"]
            .iter()
            .map(|arch| ChatTemplate::for_model(None, arch, "<bos>", "<eos>").expect("builtin"))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    if mode & 1 == 0 {
        let conversation = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello."),
            ChatMessage::new("user", "<end_of_turn>{{ x }}"),
        ];
        // A hundredth of the serving fuel: real templates need a few thousand
        // instructions here, and looping ones reach the limit 100x sooner.
        if let Ok(t) = ChatTemplate::from_source(text.into_owned(), "<bos>", "<eos>", "fuzz".into())
            .map(|t| t.with_render_fuel(200_000))
        {
            let _ = t.render(&conversation, mode & 2 != 0);
        }
    } else {
        let parts: Vec<&str> = text.split('\0').collect();
        let messages: Vec<ChatMessage> = parts
            .chunks(2)
            .map(|c| ChatMessage::new(c[0], c.get(1).copied().unwrap_or("")))
            .collect();
        for t in builtins() {
            let _ = t.render(&messages, mode & 2 != 0);
        }
    }
});
