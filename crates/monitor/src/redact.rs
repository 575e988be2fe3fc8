//! Personal data and secrets in text: finds them by pattern (emails, phone numbers,
//! payment card numbers that pass the Luhn check, API keys and other secrets) and
//! replaces them with a label. Used by the request log (`--log-redact`) and the PII
//! quality monitor; knows nothing about requests.

use regex::Regex;
use std::sync::OnceLock;

/// What kind of sensitive value a match is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    Email,
    Phone,
    Card,
    Secret,
}

impl PiiKind {
    fn label(self) -> &'static str {
        match self {
            PiiKind::Email => "[EMAIL]",
            PiiKind::Phone => "[PHONE]",
            PiiKind::Card => "[CARD]",
            PiiKind::Secret => "[SECRET]",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::Card => "card",
            PiiKind::Secret => "secret",
        }
    }
}

struct Patterns {
    // Secrets first: a key can contain digit runs that look like phone numbers.
    ordered: Vec<(PiiKind, Regex)>,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let secret = [
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
            r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}",
            r"\bAKIA[0-9A-Z]{16}\b",
            r"\bgh[pousr]_[A-Za-z0-9]{30,}",
            r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
            r"\bhf_[A-Za-z0-9]{30,}",
            r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{16,}=*",
            r#"(?i)\b(?:api[_-]?key|secret|password|passwd|token)\b\s*[:=]\s*["']?[^\s"',;]{6,}"#,
        ];
        let mut ordered: Vec<(PiiKind, Regex)> = secret
            .iter()
            .map(|p| (PiiKind::Secret, Regex::new(p).expect("secret pattern compiles")))
            .collect();
        ordered.push((
            PiiKind::Email,
            Regex::new(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
                .expect("email pattern compiles"),
        ));
        // Cards before phones: 13–19 digits in groups; kept only when Luhn holds.
        ordered.push((
            PiiKind::Card,
            Regex::new(r"\b\d(?:[ -]?\d){12,18}\b").expect("card pattern compiles"),
        ));
        ordered.push((
            PiiKind::Phone,
            Regex::new(r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\b\d{2,4}[\s.-])\d{3,4}[\s.-]?\d{3,4}\b")
                .expect("phone pattern compiles"),
        ));
        Patterns { ordered }
    })
}

fn luhn(digits: &str) -> bool {
    let ds: Vec<u32> = digits.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&ds.len()) {
        return false;
    }
    let sum: u32 = ds
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 {
                    d2 - 9
                } else {
                    d2
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn accept(kind: PiiKind, text: &str) -> bool {
    match kind {
        PiiKind::Card => luhn(text),
        PiiKind::Phone => text.chars().filter(|c| c.is_ascii_digit()).count() >= 9,
        _ => true,
    }
}

/// Runs every pattern over `text`, calling `hit` for each accepted match, and returns
/// the text with accepted matches replaced by `replace(kind)`. Long digit runs that are
/// not card numbers (order numbers, ids) are shielded from the phone pattern.
fn scan(text: &str, mut hit: impl FnMut(PiiKind), replace: impl Fn(PiiKind) -> String) -> String {
    let mut shielded: Vec<String> = Vec::new();
    let mut out = text.to_string();
    for (kind, re) in &patterns().ordered {
        if !re.is_match(&out) {
            continue;
        }
        out = re
            .replace_all(&out, |c: &regex::Captures| {
                let m = &c[0];
                if accept(*kind, m) {
                    hit(*kind);
                    replace(*kind)
                } else if *kind == PiiKind::Card {
                    shielded.push(m.to_string());
                    format!("\u{E000}{}\u{E001}", shielded.len() - 1)
                } else {
                    m.to_string()
                }
            })
            .into_owned();
    }
    for (i, s) in shielded.iter().enumerate() {
        out = out.replace(&format!("\u{E000}{i}\u{E001}"), s);
    }
    out
}

/// Replaces every sensitive value with its label (`[EMAIL]`, `[PHONE]`, `[CARD]`,
/// `[SECRET]`).
pub fn redact(text: &str) -> String {
    scan(text, |_| {}, |k| k.label().to_string())
}

/// The kinds of sensitive value present in `text` (each once, in pattern order).
pub fn find_pii(text: &str) -> Vec<PiiKind> {
    let mut found = Vec::new();
    scan(
        text,
        |k| {
            if !found.contains(&k) {
                found.push(k)
            }
        },
        |_| " ".to_string(),
    );
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_each_kind_and_keeps_the_rest() {
        let t = "Mail jane.doe@example.co.uk or call +1 415-555-0132; card 4111 1111 1111 1111, key sk-proj-abcdefghijklmnop1234.";
        let r = redact(t);
        assert_eq!(
            r,
            "Mail [EMAIL] or call [PHONE]; card [CARD], key [SECRET]."
        );
    }

    #[test]
    fn card_numbers_need_luhn() {
        // 16 digits failing Luhn stay (an order number, not a card).
        assert_eq!(
            redact("order 1234 5678 9012 3456"),
            "order 1234 5678 9012 3456"
        );
        assert_eq!(redact("5500-0000-0000-0004"), "[CARD]");
    }

    #[test]
    fn ordinary_numbers_are_not_phones() {
        for t in [
            "in 2024 we sold 1500 units",
            "pi is 3.14159",
            "version 1.2.3",
        ] {
            assert_eq!(redact(t), t);
        }
        assert_eq!(redact("(020) 7946 0958"), "[PHONE]");
    }

    #[test]
    fn secrets_by_shape_and_by_name() {
        assert_eq!(redact("AKIAIOSFODNN7EXAMPLE"), "[SECRET]");
        assert_eq!(redact("password: hunter2hunter"), "[SECRET]");
        assert_eq!(
            redact("Authorization: Bearer abcdef0123456789abcdef"),
            "Authorization: [SECRET]"
        );
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----";
        assert_eq!(redact(pem), "[SECRET]");
    }

    #[test]
    fn finds_kinds_present() {
        assert_eq!(find_pii("nothing here"), vec![]);
        assert_eq!(
            find_pii("a@b.io and 4111111111111111"),
            vec![PiiKind::Email, PiiKind::Card]
        );
    }
}
