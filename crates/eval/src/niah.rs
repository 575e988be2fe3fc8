//! Needle in a haystack, as RULER's single-needle task: a "magic number" sentence is
//! hidden at a chosen depth of a filler text of a chosen length, the model is asked
//! for it, and the answer scores 1 when it contains the number (string match). A grid
//! of lengths × depths becomes a table and a heat-map PNG.
//!
//! Owns the haystack (prose written for Hangar, in `data/haystack.txt`), the prompt and
//! the picture; the model is any [`Scorer`].

use crate::error::{EvalError, Result};
use crate::metrics::SplitMix;
use crate::scorer::{GenQuery, Scorer};
use serde::Serialize;
use std::path::Path;

/// The filler text (public domain: written for Hangar).
pub const HAYSTACK: &str = include_str!("../data/haystack.txt");

/// Options of a NIAH run.
#[derive(Debug, Clone)]
pub struct NiahOptions {
    /// Context lengths in tokens (approximate for endpoints: 4 characters a token).
    pub lengths: Vec<usize>,
    /// Needle depths in percent of the haystack (0 = start, 100 = end).
    pub depths: Vec<f64>,
    /// Needles per cell (different keys and numbers).
    pub samples: usize,
    pub seed: u64,
}

/// One cell of the grid.
#[derive(Debug, Clone, Serialize)]
pub struct NiahCell {
    pub length: usize,
    pub depth: f64,
    pub score: f64,
    pub answers: Vec<String>,
}

/// The grid, lengths major.
#[derive(Debug, Clone, Serialize)]
pub struct NiahReport {
    pub lengths: Vec<usize>,
    pub depths: Vec<f64>,
    pub cells: Vec<NiahCell>,
    pub mean_score: f64,
}

const KEYS: &[&str] = &[
    "amber-falcon",
    "quiet-harbour",
    "silver-lantern",
    "north-orchard",
    "copper-kettle",
    "winter-meadow",
    "hollow-reed",
    "iron-compass",
];

fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c == '.' || c == '\n' {
            let s = text[start..=i].trim();
            if !s.is_empty() {
                out.push(s);
            }
            start = i + 1;
        }
    }
    out
}

/// The haystack of about `chars` characters with `needle` inserted at `depth`
/// percent, at a sentence boundary.
pub fn build_haystack(chars: usize, needle: &str, depth: f64) -> String {
    let all = sentences(HAYSTACK);
    let mut parts: Vec<&str> = Vec::new();
    let mut len = 0;
    let mut i = 0;
    while len < chars && !all.is_empty() {
        let s = all[i % all.len()];
        parts.push(s);
        len += s.len() + 1;
        i += 1;
    }
    let at = ((depth.clamp(0.0, 100.0) / 100.0) * parts.len() as f64).round() as usize;
    parts.insert(at.min(parts.len()), needle);
    parts.join(" ")
}

/// Runs the grid with `scorer`; `count` gives the token count of a text when the
/// scorer can tell (`None`: 4 characters a token).
pub fn run(
    scorer: &mut dyn Scorer,
    opts: &NiahOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<NiahReport> {
    if opts.lengths.is_empty() || opts.depths.is_empty() || opts.samples == 0 {
        return Err(EvalError::Invalid(
            "NIAH needs at least one length, one depth and one sample".into(),
        ));
    }
    let mut rng = SplitMix::new(opts.seed);
    let total = opts.lengths.len() * opts.depths.len();
    let mut cells = Vec::with_capacity(total);
    for &length in &opts.lengths {
        for &depth in &opts.depths {
            let mut queries = Vec::new();
            let mut wants = Vec::new();
            for _ in 0..opts.samples {
                let key = KEYS[rng.below(KEYS.len())];
                let value = 1_000_000 + rng.below(9_000_000);
                let needle = format!("The special magic number for {key} is: {value}.");
                let question = format!(
                    "\n\nWhat is the special magic number for {key} mentioned in the text above? The special magic number for {key} mentioned in the text above is"
                );
                let budget = length.saturating_sub(32 + needle.len() / 4 + question.len() / 4);
                let mut chars = budget * 4;
                // Fit the token budget when the scorer can count tokens.
                for _ in 0..4 {
                    let text = build_haystack(chars, &needle, depth);
                    match scorer.count_tokens(&text) {
                        Some(n) if n > budget && chars > 64 => chars = chars * budget / n.max(1),
                        _ => break,
                    }
                }
                let text = build_haystack(chars, &needle, depth);
                queries.push(GenQuery {
                    prompt: format!("Some special magic numbers are hidden in the following text. Remember them.\n\n{text}{question}"),
                    max_tokens: 12,
                    stop: vec!["\n".into()],
                });
                wants.push(value.to_string());
            }
            let answers = scorer.generate(&queries)?;
            let score = answers
                .iter()
                .zip(&wants)
                .map(|(a, w)| f64::from(u8::from(a.contains(w.as_str()))))
                .sum::<f64>()
                / answers.len() as f64;
            cells.push(NiahCell {
                length,
                depth,
                score,
                answers,
            });
            progress(cells.len(), total);
        }
    }
    let mean_score = cells.iter().map(|c| c.score).sum::<f64>() / cells.len() as f64;
    Ok(NiahReport {
        lengths: opts.lengths.clone(),
        depths: opts.depths.clone(),
        cells,
        mean_score,
    })
}

/// Colour of a score: red (0) through yellow to green (1).
pub fn colour(score: f64) -> [u8; 3] {
    let s = score.clamp(0.0, 1.0);
    if s < 0.5 {
        [220, (40.0 + 360.0 * s) as u8, 40]
    } else {
        [(220.0 - 360.0 * (s - 0.5)) as u8, 200, 40]
    }
}

/// Writes the heat map: one column per length (left to right, increasing), one row per
/// depth (top = 0%), `cell` pixels square, a 1-pixel grey grid.
pub fn write_png(report: &NiahReport, path: &Path, cell: u32) -> Result<()> {
    let (cols, rows) = (report.lengths.len() as u32, report.depths.len() as u32);
    let (w, h) = (cols * cell + 1, rows * cell + 1);
    let mut pix = vec![128u8; (w * h * 3) as usize];
    for (ci, _) in report.lengths.iter().enumerate() {
        for (ri, _) in report.depths.iter().enumerate() {
            let s = report.cells[ci * report.depths.len() + ri].score;
            let c = colour(s);
            for y in (ri as u32 * cell + 1)..((ri as u32 + 1) * cell) {
                for x in (ci as u32 * cell + 1)..((ci as u32 + 1) * cell) {
                    let o = ((y * w + x) * 3) as usize;
                    pix[o..o + 3].copy_from_slice(&c);
                }
            }
        }
    }
    let f = std::fs::File::create(path).map_err(EvalError::io(path))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc
        .write_header()
        .map_err(|e| EvalError::bad(path, e.to_string()))?;
    wr.write_image_data(&pix)
        .map_err(|e| EvalError::bad(path, e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needle_sits_at_its_depth() {
        let n = "The special magic number for x is: 1234567.";
        let h0 = build_haystack(2000, n, 0.0);
        assert!(h0.starts_with(n));
        let h100 = build_haystack(2000, n, 100.0);
        assert!(h100.ends_with(n));
        let h50 = build_haystack(2000, n, 50.0);
        let at = h50.find(n).unwrap() as f64 / h50.len() as f64;
        assert!((0.4..0.6).contains(&at), "{at}");
        assert!(h50.len() >= 2000 && h50.len() < 2400);
        // Longer than the shipped text: it repeats.
        assert!(build_haystack(20_000, n, 50.0).len() >= 20_000);
    }

    #[test]
    fn heat_map_has_one_cell_per_length_and_depth() {
        let r = NiahReport {
            lengths: vec![100, 200],
            depths: vec![0.0, 50.0, 100.0],
            cells: (0..6)
                .map(|i| NiahCell {
                    length: 0,
                    depth: 0.0,
                    score: if i == 0 { 1.0 } else { 0.0 },
                    answers: vec![],
                })
                .collect(),
            mean_score: 1.0 / 6.0,
        };
        let dir = std::env::temp_dir().join(format!("hangar-niah-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("grid.png");
        write_png(&r, &p, 10).unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&p).unwrap()));
        let mut rd = dec.read_info().unwrap();
        let mut buf = vec![0; rd.output_buffer_size()];
        let info = rd.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (21, 31));
        let px = |x: u32, y: u32| {
            let o = ((y * info.width + x) * 3) as usize;
            [buf[o], buf[o + 1], buf[o + 2]]
        };
        assert_eq!(px(5, 5), colour(1.0)); // length 100, depth 0: found
        assert_eq!(px(15, 5), colour(0.0)); // length 200, depth 0: missed
        assert_eq!(px(5, 25), colour(0.0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
