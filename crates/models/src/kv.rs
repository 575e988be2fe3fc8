//! Paged KV cache storage: fixed-size blocks per layer group, addressed through
//! per-sequence block tables.
//!
//! Layers that attend the same way share a group (Gemma 3: global layers in one,
//! sliding-window layers in another), each group with its own pool of blocks, so a
//! block manager can release a sequence's sliding-window blocks once they fall out
//! of the window while its global blocks stay. This module only stores; deciding who
//! owns which block is the engine's job.

use crate::config::ModelConfig;
pub use hangar_kernels::KvFormat;

/// A block-table entry that holds no block (released, or never needed).
pub const NO_BLOCK: u32 = u32::MAX;

/// Which layers form each group, and whether the group is sliding-window.
#[derive(Debug, Clone, PartialEq)]
pub struct KvLayout {
    /// Per group: the layers in it, in order.
    pub group_layers: Vec<Vec<usize>>,
    /// Per group: the window in tokens, `None` for full attention.
    pub group_window: Vec<Option<usize>>,
    /// Values stored per token per layer for K (and again for V).
    pub kv_dim: usize,
    /// How each value is stored (f16, or Q8_0/Q4_0 blocks of 32).
    pub format: KvFormat,
}

impl KvLayout {
    pub fn for_model(cfg: &ModelConfig) -> Self {
        let global: Vec<usize> = (0..cfg.n_layers)
            .filter(|&l| !cfg.local_layers[l])
            .collect();
        let local: Vec<usize> = (0..cfg.n_layers).filter(|&l| cfg.local_layers[l]).collect();
        let mut group_layers = Vec::new();
        let mut group_window = Vec::new();
        if !global.is_empty() {
            group_layers.push(global);
            group_window.push(None);
        }
        if !local.is_empty() {
            group_layers.push(local);
            group_window.push(cfg.sliding_window);
        }
        KvLayout {
            group_layers,
            group_window,
            kv_dim: cfg.kv_dim(),
            format: KvFormat::F16,
        }
    }

    /// The same layout storing values as `format`; an error when a head's width is
    /// not a whole number of the format's blocks.
    pub fn with_format(mut self, cfg: &ModelConfig, format: KvFormat) -> Result<Self, String> {
        if !format.fits(cfg.head_dim) {
            return Err(format!(
                "a {} KV cache needs heads of a multiple of 32 values; this model's are {}",
                format.name(),
                cfg.head_dim
            ));
        }
        self.format = format;
        Ok(self)
    }

    /// [`KvLayout::for_model`] storing values as `format` (see
    /// [`KvLayout::with_format`]).
    pub fn for_model_as(cfg: &ModelConfig, format: KvFormat) -> Result<Self, String> {
        Self::for_model(cfg).with_format(cfg, format)
    }

    /// `u16` words one token's K (or V) takes in one layer.
    pub fn row_words(&self) -> usize {
        self.format.words(self.kv_dim)
    }
    pub fn n_groups(&self) -> usize {
        self.group_layers.len()
    }
    /// Bytes one block of `block_size` tokens occupies in group `g` (K and V, all its layers).
    pub fn block_bytes(&self, g: usize, block_size: usize) -> usize {
        2 * self.group_layers[g].len() * block_size * self.row_words() * std::mem::size_of::<u16>()
    }
    /// Bytes per token across all groups.
    pub fn bytes_per_token(&self) -> usize {
        (0..self.n_groups()).map(|g| self.block_bytes(g, 1)).sum()
    }
}

/// The KV storage of all layers.
pub struct KvCache {
    layout: KvLayout,
    block_size: usize,
    blocks: Vec<usize>,
    /// layer -> (group, index inside the group)
    slot: Vec<(usize, usize)>,
    /// Per group, per layer in the group: K then V storage, `blocks * block_size` rows
    /// of `layout.row_words()` words (f16 bits or Q8_0/Q4_0 blocks: `vec![0u16; n]` is
    /// zero-filled lazily by the OS, where a vector of `half::f16` would be written
    /// element by element).
    k: Vec<Vec<Vec<u16>>>,
    v: Vec<Vec<Vec<u16>>>,
}

impl KvCache {
    /// Allocates `blocks_per_group[g]` blocks of `block_size` tokens for each group.
    /// Memory is zero-filled lazily by the OS, so pages are committed only when used.
    pub fn new(cfg: &ModelConfig, block_size: usize, blocks_per_group: &[usize]) -> Self {
        Self::with_layout(KvLayout::for_model(cfg), cfg, block_size, blocks_per_group)
    }

    /// As [`KvCache::new`], for a layout of any storage format
    /// ([`KvLayout::with_format`]).
    pub fn with_layout(
        layout: KvLayout,
        cfg: &ModelConfig,
        block_size: usize,
        blocks_per_group: &[usize],
    ) -> Self {
        assert_eq!(
            blocks_per_group.len(),
            layout.n_groups(),
            "one block count per group"
        );
        let mut slot = vec![(0, 0); cfg.n_layers];
        let mut k = Vec::new();
        let mut v = Vec::new();
        for (g, layers) in layout.group_layers.iter().enumerate() {
            let n = blocks_per_group[g] * block_size * layout.row_words();
            for (i, &l) in layers.iter().enumerate() {
                slot[l] = (g, i);
            }
            k.push(layers.iter().map(|_| vec![0u16; n]).collect());
            v.push(layers.iter().map(|_| vec![0u16; n]).collect());
        }
        KvCache {
            layout,
            block_size,
            blocks: blocks_per_group.to_vec(),
            slot,
            k,
            v,
        }
    }

    /// A cache for one sequence of up to `max_tokens`, every group fully backed.
    pub fn for_single_sequence(cfg: &ModelConfig, block_size: usize, max_tokens: usize) -> Self {
        let n = max_tokens.div_ceil(block_size);
        let groups = KvLayout::for_model(cfg).n_groups();
        Self::new(cfg, block_size, &vec![n; groups])
    }

    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn n_groups(&self) -> usize {
        self.layout.n_groups()
    }
    pub fn blocks_in_group(&self, g: usize) -> usize {
        self.blocks[g]
    }
    pub fn group_of_layer(&self, layer: usize) -> usize {
        self.slot[layer].0
    }
    /// Total bytes reserved.
    pub fn capacity_bytes(&self) -> usize {
        (0..self.n_groups())
            .map(|g| self.blocks[g] * self.layout.block_bytes(g, self.block_size))
            .sum()
    }

    /// How values are stored.
    pub fn format(&self) -> KvFormat {
        self.layout.format
    }

    /// Word offset of `pos` through `table` (the caller validated the table).
    #[inline]
    pub(crate) fn offset(&self, table: &[u32], pos: usize) -> usize {
        let b = table[pos / self.block_size] as usize;
        (b * self.block_size + pos % self.block_size) * self.layout.row_words()
    }

    /// A layer's K and V storage, f16 bits.
    pub(crate) fn layer_kv(&self, layer: usize) -> (&[u16], &[u16]) {
        let (g, i) = self.slot[layer];
        (&self.k[g][i], &self.v[g][i])
    }

    pub(crate) fn layer_kv_mut(&mut self, layer: usize) -> (&mut [u16], &mut [u16]) {
        let (g, i) = self.slot[layer];
        (&mut self.k[g][i], &mut self.v[g][i])
    }

    /// Copies the KV of `src` block into `dst` block in group `g` (copy-on-write of a
    /// shared prefix block).
    pub fn copy_block(&mut self, g: usize, src: u32, dst: u32) {
        let n = self.block_size * self.layout.row_words();
        let (s, d) = (src as usize * n, dst as usize * n);
        for buf in self.k[g].iter_mut().chain(self.v[g].iter_mut()) {
            buf.copy_within(s..s + n, d);
        }
    }
}
