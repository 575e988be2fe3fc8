//! hangar-tokenizer (in progress)
