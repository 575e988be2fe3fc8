//! Generated run names (`bold-heron-417`) and run ids (32 hex digits), as MLflow makes
//! them when the client gives none.

use rand::Rng;

const ADJECTIVES: &[&str] = &[
    "amber", "bold", "brisk", "calm", "clever", "crisp", "daring", "eager", "gentle", "glad",
    "keen", "lively", "lucid", "mellow", "nimble", "proud", "quiet", "rapid", "sunny", "swift",
    "tidy", "vivid", "wise", "zesty",
];
const NOUNS: &[&str] = &[
    "badger", "crane", "dolphin", "falcon", "finch", "fox", "heron", "ibis", "lark", "lynx",
    "marten", "otter", "owl", "panda", "quail", "raven", "robin", "seal", "stork", "swan", "tern",
    "wren", "yak", "zebra",
];

pub(crate) fn run_name() -> String {
    let mut r = rand::thread_rng();
    format!(
        "{}-{}-{}",
        ADJECTIVES[r.gen_range(0..ADJECTIVES.len())],
        NOUNS[r.gen_range(0..NOUNS.len())],
        r.gen_range(100..1000)
    )
}

pub(crate) fn run_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
