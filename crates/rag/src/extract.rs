//! Document text: plain text and Markdown as they are; HTML with tags, comments, script
//! and style removed, entities decoded and whitespace collapsed — with a map from every
//! byte of the extracted text back to the source bytes it came from, so chunks keep
//! byte offsets into the original file. Never panics on malformed markup.

use std::path::Path;

/// How a document's bytes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DocFormat {
    Text,
    Markdown,
    Html,
}

impl DocFormat {
    /// The format of a file by its extension (`.txt`, `.text`, `.md`, `.markdown`,
    /// `.html`, `.htm`, `.xhtml`); `None` for anything else.
    pub fn from_path(path: &Path) -> Option<DocFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "txt" | "text" => Some(DocFormat::Text),
            "md" | "markdown" | "mdx" => Some(DocFormat::Markdown),
            "html" | "htm" | "xhtml" => Some(DocFormat::Html),
            _ => None,
        }
    }
}

/// Extracted text and, for HTML, where each of its bytes came from.
#[derive(Debug, Clone)]
pub struct Extracted {
    pub text: String,
    /// Per text byte: the source byte range that produced it. `None`: identity.
    map: Option<Vec<(u32, u32)>>,
}

impl Extracted {
    /// The source byte range of the text bytes `start..end` (`start < end`).
    pub fn source_range(&self, start: usize, end: usize) -> (usize, usize) {
        match &self.map {
            None => (start, end),
            Some(m) if start < end && end <= m.len() => {
                (m[start].0 as usize, m[end - 1].1 as usize)
            }
            Some(_) => (start, end),
        }
    }
}

/// Extracts the text of a document.
pub fn extract(src: &str, format: DocFormat) -> Extracted {
    match format {
        DocFormat::Text | DocFormat::Markdown => Extracted {
            text: src.to_string(),
            map: None,
        },
        DocFormat::Html => html_text(src),
    }
}

/// Elements whose start or end breaks a paragraph.
const BLOCK_TAGS: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "body",
    "dd",
    "details",
    "div",
    "dl",
    "dt",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "html",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "summary",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "title",
    "tr",
    "ul",
    "head",
];

/// Whitespace waiting to be written: none, a space, a line break, a paragraph break.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Gap {
    None,
    Space,
    Line,
    Para,
}

struct Writer {
    text: String,
    map: Vec<(u32, u32)>,
    gap: Gap,
    gap_at: (u32, u32),
}

impl Writer {
    fn gap(&mut self, g: Gap, at: (usize, usize)) {
        if g > self.gap {
            if self.gap == Gap::None {
                self.gap_at = (at.0 as u32, at.1 as u32);
            }
            self.gap = g;
        }
    }

    fn push(&mut self, c: char, from: usize, to: usize) {
        if c.is_whitespace() {
            let g = if c == '\n' { Gap::Line } else { Gap::Space };
            self.gap(g, (from, to));
            return;
        }
        if self.gap != Gap::None && !self.text.is_empty() {
            let s = match self.gap {
                Gap::Para => "\n\n",
                Gap::Line => "\n",
                _ => " ",
            };
            self.text.push_str(s);
            self.map.extend(std::iter::repeat_n(self.gap_at, s.len()));
        }
        self.gap = Gap::None;
        let before = self.text.len();
        self.text.push(c);
        let n = self.text.len() - before;
        self.map
            .extend(std::iter::repeat_n((from as u32, to as u32), n));
    }
}

/// The index just past the first case-insensitive `needle` in `s[from..]`, or the end.
fn skip_past(s: &str, from: usize, needle: &str) -> usize {
    let hay = s.as_bytes();
    let nb = needle.as_bytes();
    let mut i = from;
    while i + nb.len() <= hay.len() {
        if hay[i..i + nb.len()].eq_ignore_ascii_case(nb) {
            return i + nb.len();
        }
        i += 1;
    }
    s.len()
}

/// The tag name at `s[at..]` (after `<` or `</`), lower-cased.
fn tag_name(s: &str, at: usize) -> String {
    s[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase()
}

fn html_text(src: &str) -> Extracted {
    let mut w = Writer {
        text: String::with_capacity(src.len() / 2),
        map: Vec::with_capacity(src.len() / 2),
        gap: Gap::None,
        gap_at: (0, 0),
    };
    let b = src.as_bytes();
    let mut i = 0;
    while i < src.len() {
        let c = b[i];
        if c == b'<' {
            let rest = &src[i..];
            if rest.starts_with("<!--") {
                i = skip_past(src, i + 4, "-->");
                continue;
            }
            let closing = rest.starts_with("</");
            let name_at = i + if closing { 2 } else { 1 };
            let name = tag_name(src, name_at);
            if name.is_empty() && !rest.starts_with("<!") && !rest.starts_with("<?") {
                // A lone '<' is text.
                w.push('<', i, i + 1);
                i += 1;
                continue;
            }
            let end = skip_past(src, i + 1, ">");
            if !closing && (name == "script" || name == "style") {
                let close = format!("</{name}");
                let after = skip_past(src, end, &close);
                i = skip_past(src, after, ">").max(after);
                w.gap(Gap::Space, (i, i));
                continue;
            }
            if name == "br" {
                w.gap(Gap::Line, (i, end));
            } else if BLOCK_TAGS.contains(&name.as_str()) {
                w.gap(Gap::Para, (i, end));
            }
            i = end;
            continue;
        }
        if c == b'&' {
            if let Some((ch, len)) = entity(&src[i..]) {
                w.push(ch, i, i + len);
                i += len;
                continue;
            }
        }
        let ch = src[i..].chars().next().unwrap_or('\u{fffd}');
        let n = ch.len_utf8();
        w.push(ch, i, i + n);
        i += n;
    }
    Extracted {
        text: w.text,
        map: Some(w.map),
    }
}

/// A character reference at the start of `s` (`&amp;`, `&#233;`, `&#xE9;`): the
/// character and the reference's length in bytes.
fn entity(s: &str) -> Option<(char, usize)> {
    let semi = s.bytes().take(40).position(|b| b == b';')?;
    let body = &s[1..semi];
    let ch = if let Some(num) = body.strip_prefix('#') {
        let v = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse::<u32>().ok()?,
        };
        char::from_u32(v)
            .filter(|c| *c != '\0')
            .unwrap_or('\u{fffd}')
    } else {
        match body {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            "nbsp" => ' ',
            "ndash" => '–',
            "mdash" => '—',
            "hellip" => '…',
            "lsquo" => '‘',
            "rsquo" => '’',
            "ldquo" => '“',
            "rdquo" => '”',
            "laquo" => '«',
            "raquo" => '»',
            "copy" => '©',
            "reg" => '®',
            "trade" => '™',
            "euro" => '€',
            "pound" => '£',
            "yen" => '¥',
            "cent" => '¢',
            "deg" => '°',
            "times" => '×',
            "divide" => '÷',
            "middot" => '·',
            "bull" => '•',
            "sect" => '§',
            "para" => '¶',
            "eacute" => 'é',
            "egrave" => 'è',
            "aacute" => 'á',
            "agrave" => 'à',
            "uuml" => 'ü',
            "ouml" => 'ö',
            "auml" => 'ä',
            "szlig" => 'ß',
            "ccedil" => 'ç',
            _ => return None,
        }
    };
    Some((ch, semi + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_drops_tags_script_style_and_comments_and_decodes_entities() {
        let src = "<html><head><title>T</title><style>p{color:red}</style></head>\
                   <body><!-- note --><p>Fish &amp; chips&#33; caf&eacute; &#x263A;</p>\
                   <script>var x = '<p>no</p>';</script><p>Two<br>lines</p></body></html>";
        let e = extract(src, DocFormat::Html);
        assert_eq!(e.text, "T\n\nFish & chips! café ☺\n\nTwo\nlines");
        // "&amp;" maps back to the whole reference.
        let amp = e.text.find('&').unwrap();
        let (s, t) = e.source_range(amp, amp + 1);
        assert_eq!(&src[s..t], "&amp;");
        let cafe = e.text.find("café").unwrap();
        let (s, t) = e.source_range(cafe, cafe + "café".len());
        assert_eq!(&src[s..t], "caf&eacute;");
    }

    #[test]
    fn malformed_html_never_panics() {
        for src in [
            "<",
            "<p",
            "&",
            "&#xZZ;",
            "<script>",
            "<!--",
            "a < b & c",
            "<\u{e9}>é&#0;",
        ] {
            let e = extract(src, DocFormat::Html);
            let (s, t) = e.source_range(0, e.text.len());
            assert!(s <= t && t <= src.len(), "{src:?}");
        }
        assert_eq!(extract("a < b", DocFormat::Html).text, "a < b");
    }

    #[test]
    fn markdown_and_text_are_kept_verbatim() {
        let e = extract("# Title\n\nbody", DocFormat::Markdown);
        assert_eq!(e.text, "# Title\n\nbody");
        assert_eq!(e.source_range(2, 7), (2, 7));
        assert_eq!(
            DocFormat::from_path(Path::new("a/B.HTM")),
            Some(DocFormat::Html)
        );
        assert_eq!(DocFormat::from_path(Path::new("a.rs")), None);
    }
}
