//! Megatron-style sharding of a decoder layer over `world` ranks:
//!
//! - Q, K, V and gate/up are column-parallel: a rank computes some output rows of
//!   each (its query heads, the KV heads they read, its slice of the FFN width). Each
//!   output value is the same dot product the whole matrix would compute.
//! - The attention output and down projections are row-parallel: a rank holds the
//!   columns that meet its heads' (or its FFN slice's) activations and produces a
//!   partial sum of the full output; one all-reduce per projection adds them.
//! - The embedding and the output head split the vocabulary; logits are gathered.
//!
//! Quantized matrices split on block boundaries only (a Q4_K row is blocks of 256
//! values with shared scales), so a plan checks the widths against the block size.

use hangar_kernels::{quants, GgmlType};

/// Why a model cannot be split this way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("{what} ({n}) does not divide over {world} ranks; use a tensor-parallel degree that divides it")]
    NotDivisible {
        what: &'static str,
        n: usize,
        world: usize,
    },
    #[error("{what}: a rank's share of {width} values is not a whole number of {block}-value quantization blocks")]
    Unaligned {
        what: &'static str,
        width: usize,
        block: usize,
    },
    #[error("the rank {rank} is outside a group of {world}")]
    BadRank { rank: usize, world: usize },
    #[error("model: {0}")]
    Model(String),
    #[error("matrix of {rows}x{cols} {ty:?}: {why}")]
    Matrix {
        rows: usize,
        cols: usize,
        ty: GgmlType,
        why: String,
    },
}

/// The dimensions that sharding divides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab: usize,
}

/// A half-open range `start..start + len` of rows, columns, heads or tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub len: usize,
}

impl Span {
    pub fn end(&self) -> usize {
        self.start + self.len
    }
    pub fn range(&self) -> std::ops::Range<usize> {
        self.start..self.end()
    }
}

/// What one rank holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankShard {
    pub rank: usize,
    pub world: usize,
    /// Query heads.
    pub heads: Span,
    /// KV heads (the same head on several ranks when there are fewer KV heads than
    /// ranks).
    pub kv_heads: Span,
    /// Columns of the FFN width (gate/up rows, down columns).
    pub ffn: Span,
    /// Vocabulary rows of the embedding and the output head; every rank's span has
    /// `vocab_part` rows (the last one padded past the vocabulary) so logits gather
    /// in equal parts.
    pub vocab: Span,
    pub vocab_part: usize,
}

/// Splits `shape` for rank `rank` of `world`. `attn_out_block` and `down_block` are
/// the quantization block widths of the attention-output and down projections (their
/// input dimension is what row-parallel splits).
pub fn plan(
    shape: &LayerShape,
    world: usize,
    rank: usize,
    attn_out_block: usize,
    down_block: usize,
) -> Result<RankShard, ShardError> {
    if world == 0 || rank >= world {
        return Err(ShardError::BadRank { rank, world });
    }
    let div = |what, n: usize| {
        if n.is_multiple_of(world) {
            Ok(n / world)
        } else {
            Err(ShardError::NotDivisible { what, n, world })
        }
    };
    let hpr = div("the number of attention heads", shape.n_heads)?;
    let kv_heads = if shape.n_kv_heads >= world {
        let k = div("the number of KV heads", shape.n_kv_heads)?;
        Span {
            start: rank * k,
            len: k,
        }
    } else {
        // Fewer KV heads than ranks: each is replicated on world / n_kv ranks, and a
        // rank's query heads must all read the same one.
        if !world.is_multiple_of(shape.n_kv_heads.max(1)) {
            return Err(ShardError::NotDivisible {
                what: "the ranks over the KV heads",
                n: world,
                world: shape.n_kv_heads,
            });
        }
        let group = shape.n_heads / shape.n_kv_heads.max(1);
        Span {
            start: rank * hpr / group.max(1),
            len: 1,
        }
    };
    let q_width = hpr * shape.head_dim;
    if !q_width.is_multiple_of(attn_out_block.max(1)) {
        return Err(ShardError::Unaligned {
            what: "the attention output projection",
            width: q_width,
            block: attn_out_block,
        });
    }
    let f = div("the FFN width", shape.ffn_dim)?;
    if !f.is_multiple_of(down_block.max(1)) {
        return Err(ShardError::Unaligned {
            what: "the down projection",
            width: f,
            block: down_block,
        });
    }
    let vocab_part = shape.vocab.div_ceil(world);
    let v_start = (rank * vocab_part).min(shape.vocab);
    Ok(RankShard {
        rank,
        world,
        heads: Span {
            start: rank * hpr,
            len: hpr,
        },
        kv_heads,
        ffn: Span {
            start: rank * f,
            len: f,
        },
        vocab: Span {
            start: v_start,
            len: (v_start + vocab_part).min(shape.vocab) - v_start,
        },
        vocab_part,
    })
}

fn check(ty: GgmlType, rows: usize, cols: usize, data: &[u8]) -> Result<usize, ShardError> {
    let bad = |why: String| ShardError::Matrix {
        rows,
        cols,
        ty,
        why,
    };
    if !cols.is_multiple_of(ty.block_size()) {
        return Err(bad(format!(
            "{cols} columns are not whole {}-value blocks",
            ty.block_size()
        )));
    }
    let rb = quants::row_bytes(ty, cols);
    if data.len() != rb * rows {
        return Err(bad(format!("{} bytes, expected {}", data.len(), rb * rows)));
    }
    Ok(rb)
}

/// The bytes of rows `span` of a `rows x cols` matrix of type `ty` (GGUF layout:
/// rows are contiguous) — a column-parallel shard, borrowed.
pub fn row_shard(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: &[u8],
    span: Span,
) -> Result<&[u8], ShardError> {
    let rb = check(ty, rows, cols, data)?;
    if span.end() > rows {
        return Err(ShardError::Matrix {
            rows,
            cols,
            ty,
            why: format!("rows {:?} are past the end", span.range()),
        });
    }
    Ok(&data[span.start * rb..span.end() * rb])
}

/// Columns `span` of every row, copied into a `rows x span.len` matrix — a
/// row-parallel shard. The span must fall on block boundaries.
pub fn column_shard(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: &[u8],
    span: Span,
) -> Result<Vec<u8>, ShardError> {
    let rb = check(ty, rows, cols, data)?;
    let bs = ty.block_size();
    if !span.start.is_multiple_of(bs)
        || !span.len.is_multiple_of(bs)
        || span.end() > cols
        || span.len == 0
    {
        return Err(ShardError::Matrix {
            rows,
            cols,
            ty,
            why: format!(
                "columns {:?} are not whole {bs}-value blocks inside the row",
                span.range()
            ),
        });
    }
    let block_bytes = quants::row_bytes(ty, bs);
    let (from, len) = (span.start / bs * block_bytes, span.len / bs * block_bytes);
    let mut out = Vec::with_capacity(rows * len);
    for r in 0..rows {
        out.extend_from_slice(&data[r * rb + from..r * rb + from + len]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEMMA3_270M: LayerShape = LayerShape {
        n_heads: 4,
        n_kv_heads: 1,
        head_dim: 256,
        ffn_dim: 2048,
        vocab: 262_144,
    };
    const LLAMA3_8B: LayerShape = LayerShape {
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 128,
        ffn_dim: 14_336,
        vocab: 128_256,
    };
    const QWEN25_7B: LayerShape = LayerShape {
        n_heads: 28,
        n_kv_heads: 4,
        head_dim: 128,
        ffn_dim: 18_944,
        vocab: 152_064,
    };

    fn all(shape: &LayerShape, world: usize, block: usize) -> Result<Vec<RankShard>, ShardError> {
        (0..world)
            .map(|r| plan(shape, world, r, block, block))
            .collect()
    }

    #[test]
    fn shards_cover_every_head_ffn_column_and_token_once() {
        for (shape, worlds) in [
            (GEMMA3_270M, vec![1, 2, 4]),
            (LLAMA3_8B, vec![1, 2, 4, 8]),
            (QWEN25_7B, vec![1, 2]),
        ] {
            for world in worlds {
                let s = all(&shape, world, 256).unwrap();
                let heads: usize = s.iter().map(|r| r.heads.len).sum();
                let ffn: usize = s.iter().map(|r| r.ffn.len).sum();
                let vocab: usize = s.iter().map(|r| r.vocab.len).sum();
                assert_eq!(
                    (heads, ffn, vocab),
                    (shape.n_heads, shape.ffn_dim, shape.vocab)
                );
                for w in s.windows(2) {
                    assert_eq!(w[0].heads.end(), w[1].heads.start);
                    assert_eq!(w[0].ffn.end(), w[1].ffn.start);
                    assert_eq!(w[0].vocab.end(), w[1].vocab.start);
                }
                // Every query head reads the KV head its rank holds.
                let group = shape.n_heads / shape.n_kv_heads;
                for r in &s {
                    for h in r.heads.range() {
                        assert!(
                            r.kv_heads.range().contains(&(h / group)),
                            "{shape:?} tp {world}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn block_width_decides_what_a_row_parallel_split_allows() {
        // Qwen 2.5 7B at tp 4: 7 heads of 128 = 896 columns of the output projection,
        // whole Q8_0 blocks (32) but not whole Q4_K blocks (256).
        assert!(all(&QWEN25_7B, 4, 32).is_ok());
        let e = plan(&QWEN25_7B, 4, 0, 256, 256).unwrap_err();
        assert!(e.to_string().contains("896"), "{e}");
    }

    #[test]
    fn kv_heads_are_replicated_when_there_are_fewer_than_ranks() {
        let s = all(&GEMMA3_270M, 4, 256).unwrap();
        assert!(s
            .iter()
            .all(|r| r.kv_heads == Span { start: 0, len: 1 } && r.heads.len == 1));
        let s = all(&LLAMA3_8B, 8, 256).unwrap();
        assert_eq!(s[7].kv_heads, Span { start: 7, len: 1 });
    }

    #[test]
    fn impossible_splits_say_why() {
        let e = plan(&QWEN25_7B, 8, 0, 256, 256).unwrap_err();
        assert!(e.to_string().contains("attention heads (28)"), "{e}");
        // Gemma 3 270M at tp 8: 4 heads do not divide.
        assert!(matches!(
            plan(&GEMMA3_270M, 8, 0, 256, 256),
            Err(ShardError::NotDivisible { .. })
        ));
        // A share of the FFN narrower than a Q4_K block.
        let narrow = LayerShape {
            ffn_dim: 1536,
            ..LLAMA3_8B
        };
        let e = plan(&narrow, 8, 0, 32, 256).unwrap_err();
        assert!(matches!(e, ShardError::Unaligned { .. }), "{e}");
        assert!(matches!(
            plan(&LLAMA3_8B, 2, 2, 256, 256),
            Err(ShardError::BadRank { .. })
        ));
    }
}
