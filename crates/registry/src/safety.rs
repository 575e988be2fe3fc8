//! Decides which files may enter the registry: safetensors, GGUF and plain-text
//! companions. Pickle-based checkpoints are refused with an explanation, recognised by
//! name and by content (every pickle protocol, whatever the file is called). Reads
//! files, never writes them.

mod pickle;

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{io_ctx, RegistryError, Result};

/// The format of an accepted file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    Gguf,
    Safetensors,
    /// A UTF-8 companion: config, tokenizer.json, chat template, README.
    Text,
    /// A SentencePiece `tokenizer.model` (protobuf, not pickle).
    Sentencepiece,
}

impl FileFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            FileFormat::Gguf => "gguf",
            FileFormat::Safetensors => "safetensors",
            FileFormat::Text => "text",
            FileFormat::Sentencepiece => "sentencepiece",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "gguf" => FileFormat::Gguf,
            "safetensors" => FileFormat::Safetensors,
            "text" => FileFormat::Text,
            "sentencepiece" => FileFormat::Sentencepiece,
            _ => return None,
        })
    }
}

const PICKLE_EXTENSIONS: &[&str] = &[
    "bin", "pt", "pth", "pkl", "pickle", "ckpt", "joblib", "dill", "npz", "npy",
];
const TEXT_EXTENSIONS: &[&str] = &["json", "txt", "md", "jinja", "j2", "yaml", "yml", "tmpl"];
const MAX_TEXT_BYTES: u64 = 256 << 20;
const MAX_SAFETENSORS_HEADER: u64 = 100 << 20;

fn refuse(path: &Path, reason: impl Into<String>) -> RegistryError {
    RegistryError::Refused {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

const PICKLE_WHY: &str = "pickle-based checkpoints can run arbitrary code when loaded; \
convert the weights to safetensors (e.g. `safetensors.torch.save_file`) or GGUF and import that";

/// True when `head` starts like a pickle stream with a protocol header (2..5) or a zip
/// archive (the PyTorch checkpoint container, which holds `data.pkl`). Protocols 0 and
/// 1 have no header; [`is_pickle_stream`] recognises those too.
pub fn looks_like_pickle(head: &[u8]) -> bool {
    (head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]))
        || head.starts_with(b"PK\x03\x04")
}

/// Walks the opcodes of the stream in `r` (`len` bytes): `Some(end)` when it is a
/// pickle of any protocol that `pickle.load` would act on, where `end` is the offset
/// just past the opcode that decided it.
pub fn is_pickle_stream(r: &mut impl std::io::BufRead, len: u64) -> std::io::Result<Option<u64>> {
    Ok(match pickle::scan(r, len)? {
        pickle::Verdict::Pickle { end, .. } => Some(end),
        pickle::Verdict::NotPickle => None,
    })
}

/// Checks one file and returns its format, or a `Refused` error that explains why.
/// `name` is the file's name inside the model (used for the extension).
pub fn classify(path: &Path, name: &str) -> Result<FileFormat> {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    if PICKLE_EXTENSIONS.contains(&ext.as_str()) {
        return Err(refuse(
            path,
            format!(".{ext} files are PyTorch/pickle checkpoints; {PICKLE_WHY}"),
        ));
    }
    let mut f = File::open(path).map_err(io_ctx(format!("open {}", path.display())))?;
    let len = f
        .metadata()
        .map_err(io_ctx(format!("stat {}", path.display())))?
        .len();
    let mut head = [0u8; 16];
    let n = read_up_to(&mut f, &mut head).map_err(io_ctx(format!("read {}", path.display())))?;
    let head = &head[..n];
    if looks_like_pickle(head) {
        return Err(refuse(
            path,
            format!("the file has a pickle/zip header; {PICKLE_WHY}"),
        ));
    }
    let mut stream =
        BufReader::new(File::open(path).map_err(io_ctx(format!("open {}", path.display())))?);
    if let Some(at) =
        is_pickle_stream(&mut stream, len).map_err(io_ctx(format!("read {}", path.display())))?
    {
        return Err(refuse(
            path,
            format!(
                "the content is a Python pickle stream (recognised by its opcodes up to \
                 byte {at}, whatever the file name); {PICKLE_WHY}"
            ),
        ));
    }
    match ext.as_str() {
        "gguf" => {
            let g = hangar_formats::GgufFile::open(path)
                .map_err(|e| refuse(path, format!("not a valid GGUF file: {e}")))?;
            let data_end = g
                .tensors()
                .iter()
                .map(|t| t.offset.saturating_add(t.size))
                .max()
                .unwrap_or(0);
            if data_end > len {
                return Err(refuse(
                    path,
                    "GGUF tensor data runs past the end of the file",
                ));
            }
            Ok(FileFormat::Gguf)
        }
        "safetensors" => {
            check_safetensors(path, &mut f, len)?;
            Ok(FileFormat::Safetensors)
        }
        "model" if name.rsplit('/').next() == Some("tokenizer.model") => {
            Ok(FileFormat::Sentencepiece)
        }
        e if TEXT_EXTENSIONS.contains(&e) => {
            check_text(path, len, e == "json")?;
            Ok(FileFormat::Text)
        }
        _ => Err(refuse(
            path,
            "only safetensors (.safetensors), GGUF (.gguf) and plain-text companions \
             (.json, .txt, .md, .jinja, .yaml, tokenizer.model) are accepted",
        )),
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[derive(Deserialize)]
struct SafetensorsEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

fn check_safetensors(path: &Path, f: &mut File, len: u64) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    if len < 8 {
        return Err(refuse(
            path,
            "safetensors file shorter than its 8-byte header length",
        ));
    }
    f.seek(SeekFrom::Start(0))
        .map_err(io_ctx(format!("seek {}", path.display())))?;
    let mut n8 = [0u8; 8];
    f.read_exact(&mut n8)
        .map_err(io_ctx(format!("read {}", path.display())))?;
    let n = u64::from_le_bytes(n8);
    if n > MAX_SAFETENSORS_HEADER || n > len - 8 {
        return Err(refuse(
            path,
            format!("safetensors header length {n} is out of bounds"),
        ));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(io_ctx(format!("read {}", path.display())))?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| {
            refuse(
                path,
                format!("safetensors header is not a JSON object: {e}"),
            )
        })?;
    let data_len = len - 8 - n;
    for (name, v) in map {
        if name == "__metadata__" {
            continue;
        }
        let e: SafetensorsEntry = serde_json::from_value(v)
            .map_err(|e| refuse(path, format!("tensor {name:?}: bad entry: {e}")))?;
        let [b, end] = e.data_offsets;
        if b > end || end > data_len {
            return Err(refuse(
                path,
                format!("tensor {name:?}: data offsets [{b}, {end}] outside the {data_len}-byte data section"),
            ));
        }
        let elem = match e.dtype.as_str() {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
            _ => 0, // unknown dtype: offsets checked, size not
        };
        if elem > 0 {
            let count = e
                .shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .and_then(|c| c.checked_mul(elem));
            if count != Some(end - b) {
                return Err(refuse(
                    path,
                    format!(
                        "tensor {name:?}: shape {:?} does not match its {} bytes",
                        e.shape,
                        end - b
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn check_text(path: &Path, len: u64, json: bool) -> Result<()> {
    if len > MAX_TEXT_BYTES {
        return Err(refuse(path, "text companion larger than 256 MiB"));
    }
    let bytes = std::fs::read(path).map_err(io_ctx(format!("read {}", path.display())))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| refuse(path, "companion files must be UTF-8 text"))?;
    if text.contains('\0') {
        return Err(refuse(
            path,
            "companion text contains NUL bytes (binary data?)",
        ));
    }
    if json {
        serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| refuse(path, format!("invalid JSON: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn refuses_pickle_by_extension_and_header() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "pytorch_model.bin", b"whatever");
        let e = classify(&p, "pytorch_model.bin").unwrap_err().to_string();
        assert!(e.contains("pickle"), "{e}");
        // A pickle stream disguised as JSON.
        let p = write(d.path(), "config.json", b"\x80\x04\x95\x00\x00");
        let e = classify(&p, "config.json").unwrap_err().to_string();
        assert!(e.contains("pickle"), "{e}");
        // A PyTorch zip checkpoint renamed to .safetensors.
        let p = write(d.path(), "m.safetensors", b"PK\x03\x04rest");
        assert!(classify(&p, "m.safetensors").is_err());
    }

    /// Real pickles (CPython 3 `pickle.dumps`) under innocent names and extensions.
    #[test]
    fn refuses_pickles_of_every_protocol_by_content_whatever_the_name() {
        let d = tempfile::tempdir().unwrap();
        let streams: [&[u8]; 4] = [
            // protocol 0: {'a': 1}, printable text.
            b"(dp0\nVa\np1\nI1\ns.",
            // protocol 0: os.system('echo pwned') through __reduce__.
            b"cposix\nsystem\np0\n(Vecho pwned\np1\ntp2\nRp3\n.",
            // protocol 1: the same call.
            b"cposix\nsystem\nq\x00(X\n\x00\x00\x00echo pwnedq\x01tq\x02Rq\x03.",
            // protocol 1: {'a': 1}.
            b"}q\x00X\x01\x00\x00\x00aq\x01K\x01s.",
        ];
        for (i, bytes) in streams.iter().enumerate() {
            for name in [
                "notes.txt",
                "README.md",
                "chat_template.jinja",
                "tokenizer.model",
            ] {
                let p = write(d.path(), name, bytes);
                let e = classify(&p, name).unwrap_err().to_string();
                assert!(e.contains("pickle"), "stream {i} as {name}: {e}");
            }
        }
    }

    #[test]
    fn accepts_safetensors_and_checks_bounds() {
        let d = tempfile::tempdir().unwrap();
        let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0u8; 8]);
        let p = write(d.path(), "m.safetensors", &bytes);
        assert_eq!(
            classify(&p, "m.safetensors").unwrap(),
            FileFormat::Safetensors
        );
        bytes.truncate(bytes.len() - 4);
        let p = write(d.path(), "t.safetensors", &bytes);
        assert!(classify(&p, "t.safetensors").is_err());
    }

    #[test]
    fn accepts_text_companions_and_refuses_unknown() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "config.json", br#"{"a":1}"#);
        assert_eq!(classify(&p, "config.json").unwrap(), FileFormat::Text);
        let p = write(d.path(), "weights.onnx", b"\x08\x01");
        assert!(classify(&p, "weights.onnx").is_err());
        let p = write(d.path(), "bad.gguf", b"GGUF\x03\x00");
        assert!(classify(&p, "bad.gguf").is_err());
    }
}
