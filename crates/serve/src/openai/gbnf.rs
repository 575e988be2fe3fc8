//! GBNF (llama.cpp's grammar format) to the Lark dialect the constraint engine
//! compiles: `name ::= body` rules become `name: body`, `root` becomes `start`,
//! character classes and `.` become regex terminals, string literals are re-quoted,
//! and `*`, `+`, `?`, `{m,n}`, groups and alternatives carry over unchanged.

/// Translates a GBNF grammar; the error says where it could not be read.
pub fn to_lark(src: &str) -> Result<String, String> {
    let toks = lex(src)?;
    let mut out = String::new();
    let mut i = 0;
    let mut has_root = false;
    while i < toks.len() {
        let Tok::Ident(name) = &toks[i] else {
            return Err(format!("expected a rule name, found {}", toks[i].show()));
        };
        if toks.get(i + 1) != Some(&Tok::Define) {
            return Err(format!("expected ::= after the rule name {name:?}"));
        }
        has_root |= name == "root";
        out.push_str(&rule_name(name));
        out.push(':');
        i += 2;
        // The body runs until the next `name ::=`.
        let mut empty = true;
        while i < toks.len()
            && !(matches!(toks[i], Tok::Ident(_)) && toks.get(i + 1) == Some(&Tok::Define))
        {
            out.push(' ');
            out.push_str(&toks[i].lark());
            empty = false;
            i += 1;
        }
        if empty {
            out.push_str(" \"\"");
        }
        out.push('\n');
    }
    if !has_root {
        return Err("the grammar has no root rule (root ::= ...)".into());
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Define,
    /// A decoded string literal.
    Str(String),
    /// A character class with its brackets, as written.
    Class(String),
    Any,
    Punct(char),
    /// `{m}`, `{m,}`, `{m,n}` as written.
    Repeat(String),
}

impl Tok {
    fn show(&self) -> String {
        match self {
            Tok::Ident(s) => format!("{s:?}"),
            Tok::Define => "::=".into(),
            Tok::Str(s) => format!("the string {s:?}"),
            Tok::Class(s) | Tok::Repeat(s) => s.clone(),
            Tok::Any => ".".into(),
            Tok::Punct(c) => c.to_string(),
        }
    }

    fn lark(&self) -> String {
        match self {
            Tok::Ident(s) => rule_name(s),
            Tok::Define => "::=".into(),
            Tok::Str(s) => serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()),
            Tok::Class(c) => format!("/{}/", c.replace('/', "\\/")),
            Tok::Any => "/(?s:.)/".into(),
            Tok::Punct(c) => c.to_string(),
            Tok::Repeat(r) => r.clone(),
        }
    }
}

/// Lark rule names are lower case with underscores; `root` is `start`.
fn rule_name(s: &str) -> String {
    if s == "root" {
        return "start".into();
    }
    let n: String = s
        .chars()
        .map(|c| match c {
            '-' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    // Avoid clashing with `start` or a leading digit.
    format!("r_{n}")
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let cs: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        match c {
            _ if c.is_whitespace() => i += 1,
            '#' => {
                while i < cs.len() && cs[i] != '\n' {
                    i += 1;
                }
            }
            ':' if cs[i..].starts_with(&[':', ':', '=']) => {
                out.push(Tok::Define);
                i += 3;
            }
            '"' => {
                let (s, next) = string(&cs, i + 1)?;
                out.push(Tok::Str(s));
                i = next;
            }
            '[' => {
                let start = i;
                i += 1;
                while i < cs.len() && cs[i] != ']' {
                    if cs[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if i >= cs.len() {
                    return Err("unterminated character class [...]".into());
                }
                i += 1;
                out.push(Tok::Class(cs[start..i].iter().collect()));
            }
            '{' => {
                let start = i;
                while i < cs.len() && cs[i] != '}' {
                    i += 1;
                }
                if i >= cs.len() {
                    return Err("unterminated repetition {m,n}".into());
                }
                i += 1;
                let r: String = cs[start..i].iter().filter(|c| !c.is_whitespace()).collect();
                out.push(Tok::Repeat(r));
            }
            '.' => {
                out.push(Tok::Any);
                i += 1;
            }
            '(' | ')' | '|' | '*' | '+' | '?' => {
                out.push(Tok::Punct(c));
                i += 1;
            }
            _ if c.is_ascii_alphanumeric() || c == '_' || c == '-' => {
                let start = i;
                while i < cs.len()
                    && (cs[i].is_ascii_alphanumeric() || cs[i] == '_' || cs[i] == '-')
                {
                    i += 1;
                }
                out.push(Tok::Ident(cs[start..i].iter().collect()));
            }
            _ => return Err(format!("unexpected character {c:?}")),
        }
    }
    Ok(out)
}

/// A GBNF string literal body from `i` (after the opening quote): the decoded text
/// and the index after the closing quote.
fn string(cs: &[char], mut i: usize) -> Result<(String, usize), String> {
    let mut s = String::new();
    while i < cs.len() {
        match cs[i] {
            '"' => return Ok((s, i + 1)),
            '\\' => {
                let e = *cs.get(i + 1).ok_or("unterminated string")?;
                i += 2;
                match e {
                    'n' => s.push('\n'),
                    't' => s.push('\t'),
                    'r' => s.push('\r'),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = cs.get(i..i + n).ok_or("short escape")?.iter().collect();
                        let v = u32::from_str_radix(&hex, 16)
                            .map_err(|_| format!("bad escape \\{e}{hex}"))?;
                        s.push(char::from_u32(v).ok_or(format!("bad code point \\{e}{hex}"))?);
                        i += n;
                    }
                    other => s.push(other),
                }
            }
            c => {
                s.push(c);
                i += 1;
            }
        }
    }
    Err("unterminated string".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_rules_strings_classes_and_repeats() {
        let g = r#"
# a comment
root ::= greeting " " name-part{1,3}
greeting ::= "hi" | "hello\n"
name-part ::= [A-Z] [a-z]* .
"#;
        let l = to_lark(g).unwrap();
        assert_eq!(
            l,
            "start: r_greeting \" \" r_name_part {1,3}\n\
             r_greeting: \"hi\" | \"hello\\n\"\n\
             r_name_part: /[A-Z]/ /[a-z]/ * /(?s:.)/\n"
        );
        assert!(to_lark("foo ::= \"x\"").unwrap_err().contains("root"));
        assert!(to_lark("root ::= \"x").is_err());
    }
}
