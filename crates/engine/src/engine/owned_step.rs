//! A model step owned, so it can cross to the threads of a split model (tensor- or
//! pipeline-parallel ranks), and borrowed back as the forward pass's inputs there.

use hangar_models::{LogitsWanted, SeqInput};

/// One chunk of a step.
pub(crate) struct OwnedSeq {
    tokens: Vec<u32>,
    start_pos: usize,
    tables: Vec<Vec<u32>>,
    logits: LogitsWanted,
}

/// Copies `step`'s chunks.
pub(crate) fn own(step: &[SeqInput]) -> Vec<OwnedSeq> {
    step.iter()
        .map(|s| OwnedSeq {
            tokens: s.tokens.to_vec(),
            start_pos: s.start_pos,
            tables: s.block_tables.iter().map(|t| t.to_vec()).collect(),
            logits: s.logits,
        })
        .collect()
}

/// Runs `f` over the chunks as forward-pass inputs.
pub(crate) fn with_inputs<R>(seqs: &[OwnedSeq], f: impl FnOnce(&[SeqInput]) -> R) -> R {
    let tables: Vec<Vec<&[u32]>> = seqs
        .iter()
        .map(|s| s.tables.iter().map(Vec::as_slice).collect())
        .collect();
    let inputs: Vec<SeqInput> = seqs
        .iter()
        .zip(&tables)
        .map(|(s, t)| SeqInput {
            tokens: &s.tokens,
            start_pos: s.start_pos,
            block_tables: t,
            logits: s.logits,
        })
        .collect();
    f(&inputs)
}
