//! Splits a GGUF decoder model into one GGUF per tensor-parallel rank: each holds
//! its query heads, the KV heads they read, its slice of the FFN width, the columns
//! of the attention-output and down projections that meet them, and its part of the
//! vocabulary's embedding and output rows; norms are replicated. A shard is a valid
//! model of its own — head counts, FFN width and vocabulary part in its metadata
//! match its tensors — so the normal loader reads it, and `Model::forward_sharded`
//! runs it: an all-reduce assembles the embeddings, one follows each of the two
//! row-parallel projections of a layer, and one assembles the logits.

use crate::shard::{column_shard, plan, row_shard, LayerShape, RankShard, ShardError, Span};
use hangar_formats::gguf_write::{GgufHeader, GgufWriter};
use hangar_formats::{GgufFile, MetaValue};

fn meta_err(why: String) -> ShardError {
    ShardError::Model(why)
}

/// The shapes that sharding divides, read from the model's metadata and tensors.
pub fn layer_shape(f: &GgufFile) -> Result<(LayerShape, usize, usize), ShardError> {
    let arch = f
        .get_str("general.architecture")
        .map_err(|e| meta_err(e.to_string()))?;
    let k = |s: &str| format!("{arch}.{s}");
    let get = |key: &str| {
        f.get_u32(key)
            .map(|v| v as usize)
            .map_err(|e| meta_err(e.to_string()))
    };
    let n_heads = get(&k("attention.head_count"))?;
    let n_kv_heads = f
        .get_u32(&k("attention.head_count_kv"))
        .map(|v| v as usize)
        .unwrap_or(n_heads);
    let d_model = get(&k("embedding_length"))?;
    let head_dim = f
        .get_u32(&k("attention.key_length"))
        .map(|v| v as usize)
        .unwrap_or(d_model / n_heads.max(1));
    let ffn_dim = get(&k("feed_forward_length"))?;
    let vocab =
        f.tensor("token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .ok_or_else(|| meta_err("the model has no token_embd.weight".into()))? as usize;
    // The widest quantization block among the row-parallel matrices decides what a
    // split may cut.
    let widest = |suffix: &str| {
        f.tensors()
            .iter()
            .filter(|t| t.name.ends_with(suffix))
            .map(|t| t.ty.block_size())
            .max()
            .unwrap_or(1)
    };
    Ok((
        LayerShape {
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim,
            vocab,
        },
        widest(".attn_output.weight"),
        widest(".ffn_down.weight"),
    ))
}

/// Rank `rank`'s shard of `f` as GGUF bytes, and its plan.
pub fn shard_gguf(
    f: &GgufFile,
    world: usize,
    rank: usize,
) -> Result<(Vec<u8>, RankShard), ShardError> {
    let (shape, out_block, down_block) = layer_shape(f)?;
    let s = plan(&shape, world, rank, out_block, down_block)?;
    let arch = f
        .get_str("general.architecture")
        .map_err(|e| meta_err(e.to_string()))?
        .to_string();
    let hd = shape.head_dim;
    let mut header = GgufHeader::with_metadata_of(f);
    let u32v = |v: usize| MetaValue::U32(v as u32);
    header.set(&format!("{arch}.attention.head_count"), u32v(s.heads.len));
    header.set(
        &format!("{arch}.attention.head_count_kv"),
        u32v(s.kv_heads.len),
    );
    header.set(&format!("{arch}.feed_forward_length"), u32v(s.ffn.len));
    // Pin the head size: without it a loader derives it from width / heads.
    header.set(&format!("{arch}.attention.key_length"), u32v(hd));
    header.set(&format!("{arch}.attention.value_length"), u32v(hd));
    // The embedding and output rows are the rank's vocabulary part; the tokenizer
    // (the whole vocabulary) stays with the original file.
    header.set("hangar.tensor_parallel.vocab_start", u32v(s.vocab.start));
    header.set("hangar.tensor_parallel.vocab_size", u32v(shape.vocab));
    let tokenizer_keys: Vec<String> = header
        .metadata()
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| k.starts_with("tokenizer."))
        .collect();
    for k in tokenizer_keys {
        header.remove(&k);
    }
    let q_rows = Span {
        start: s.heads.start * hd,
        len: s.heads.len * hd,
    };
    let kv_rows = Span {
        start: s.kv_heads.start * hd,
        len: s.kv_heads.len * hd,
    };
    let mut datas: Vec<Vec<u8>> = Vec::new();
    for t in f.tensors() {
        let data = f.tensor_data(t);
        let cols = t.dims.first().copied().unwrap_or(1) as usize;
        let rows = t.dims.iter().skip(1).product::<u64>() as usize;
        let suffix = t
            .name
            .rsplit_once("blk.")
            .map(|(_, rest)| rest)
            .and_then(|r| r.split_once('.').map(|(_, s)| s));
        // 1-D biases are one column of `cols` rows.
        let vocab_rows = matches!(t.name.as_str(), "token_embd.weight" | "output.weight");
        let (split_rows, split_cols) = match suffix {
            _ if vocab_rows => (Some(s.vocab), None),
            Some("attn_q.weight") => (Some(q_rows), None),
            Some("attn_k.weight") | Some("attn_v.weight") => (Some(kv_rows), None),
            Some("attn_q.bias") => (Some(q_rows), None),
            Some("attn_k.bias") | Some("attn_v.bias") => (Some(kv_rows), None),
            Some("attn_output.weight") => (None, Some(q_rows)),
            Some("ffn_gate.weight") | Some("ffn_up.weight") => (Some(s.ffn), None),
            Some("ffn_down.weight") => (None, Some(s.ffn)),
            _ => (None, None),
        };
        let (dims, bytes) = match (split_rows, split_cols) {
            (Some(span), _) if t.dims.len() == 1 => {
                let part = row_shard(t.ty, cols, 1, data, span)?;
                (vec![span.len as u64], part.to_vec())
            }
            (Some(span), _) => {
                let part = row_shard(t.ty, rows, cols, data, span)?;
                (vec![cols as u64, span.len as u64], part.to_vec())
            }
            (None, Some(span)) => {
                let part = column_shard(t.ty, rows, cols, data, span)?;
                (vec![span.len as u64, rows as u64], part)
            }
            (None, None) => (t.dims.clone(), data.to_vec()),
        };
        header
            .add_tensor(&t.name, dims, t.ty)
            .map_err(|e| meta_err(e.to_string()))?;
        datas.push(bytes);
    }
    let mut w = GgufWriter::new(Vec::new(), &header).map_err(|e| meta_err(e.to_string()))?;
    for d in &datas {
        w.write_tensor(d).map_err(|e| meta_err(e.to_string()))?;
    }
    let bytes = w.finish().map_err(|e| meta_err(e.to_string()))?;
    Ok((bytes, s))
}
