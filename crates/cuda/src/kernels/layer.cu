// The per-token steps of a transformer layer around the matrix products: RMSNorm,
// per-head norm + RoPE, biases, gated activations, residual adds, KV stores, soft-cap.

// out[r] = x[src(r)] * rms(x[src(r)]) * w. `rows_idx` (nullable) gathers source rows.
// The squares are summed in f64 as the CPU path does. In place (out == x) is allowed.
extern "C" __global__ void rmsnorm(const float* x, const float* w, float* out, int n, float eps,
                                   const int* rows_idx) {
    pdl_entry();
    __shared__ double sh[32];
    int src = rows_idx ? rows_idx[blockIdx.x] : blockIdx.x;
    const float* xr = x + (u64)src * n;
    float* outr = out + (u64)blockIdx.x * n;
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = xr[i];
        s += (double)(v * v);
    }
    s = block_sum_d(s, sh);
    float mean = (float)(s / (double)n);
    float scale = 1.0f / sqrtf(mean + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) outr[i] = xr[i] * scale * w[i];
}

// x[r] += rmsnorm(o[r]) * w (Gemma 3's post-attention / post-FFN norm), or x[r] += o[r]
// when w is null.
extern "C" __global__ void norm_add(float* x, const float* o, const float* w, int n, float eps) {
    pdl_entry();
    __shared__ double sh[32];
    float* xr = x + (u64)blockIdx.x * n;
    const float* orow = o + (u64)blockIdx.x * n;
    if (!w) {
        for (int i = threadIdx.x; i < n; i += blockDim.x) xr[i] += orow[i];
        return;
    }
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = orow[i];
        s += (double)(v * v);
    }
    s = block_sum_d(s, sh);
    float mean = (float)(s / (double)n);
    float scale = 1.0f / sqrtf(mean + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) xr[i] += orow[i] * scale * w[i];
}

// x[t][i] += b[i] for t < ntok.
extern "C" __global__ void add_bias(float* x, const float* b, int n, int ntok) {
    pdl_entry();
    u64 total = (u64)n * ntok;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < total; i += (u64)gridDim.x * blockDim.x)
        x[i] += b[i % n];
}

// One head of one token per block: optional per-head RMSNorm (Gemma 3, Qwen 3), then
// RoPE at the token's position, then rounding to f16 (the KV cache's precision).
// Blocks with blockIdx.x < nq take query head blockIdx.x of q; the others take key
// head blockIdx.x - nq of k (one launch for both).
// neox: rotate (i, i + n_rot/2); else (2i, 2i + 1). Angles in f64 as the CPU table.
// With kc set, the key-head blocks also store their rotated, rounded K row and the
// token's V row for that head in the paged cache (kv_store's addressing), so decode
// needs no separate store launch. Twin: twin::rope_head.
extern "C" __global__ void qk_rope(float* q, float* k, int nq, int nk, int hd, const float* qn,
                                   const float* kn, float eps, const int* pos, double base,
                                   int n_rot, const float* ff, int neox, const float* v,
                                   const int* tok_seq, const u32* tables, int tstride, int bs,
                                   u16* kc, u16* vc) {
    __shared__ double sh[32];
    int t = blockIdx.y;
    int half = n_rot / 2;
    // The angles depend on the position only (written by the host before the step),
    // so the f64 pow/cos/sin chain of the thread's first pair runs before the wait,
    // while the previous kernel drains.
    float c0 = 0.0f, s0 = 0.0f;
    if ((int)threadIdx.x < half) rope_angle(threadIdx.x, (double)pos[t], base, n_rot, ff, &c0, &s0);
    pdl_entry();
    bool is_q = (int)blockIdx.x < nq;
    int h = is_q ? blockIdx.x : blockIdx.x - nq;
    float* xr = is_q ? q + ((u64)t * nq + h) * hd : k + ((u64)t * nk + h) * hd;
    rope_row(xr, hd, is_q ? qn : kn, eps, (double)pos[t], base, n_rot, ff, neox, c0, s0, sh);
    if (!is_q && kc) {
        int kvd = nk * hd;
        int seq = tok_seq[2 * t], p = tok_seq[2 * t + 1];
        u64 blk = tables[(u64)seq * tstride + p / bs];
        u64 off = (blk * bs + p % bs) * (u64)kvd + (u64)h * hd;
        const float* vr = v + (u64)t * kvd + (u64)h * hd;
        for (int i = threadIdx.x; i < hd; i += blockDim.x) {
            kc[off + i] = f2h(xr[i]);
            vc[off + i] = f2h(vr[i]);
        }
    }
}

extern "C" __global__ void round_f16(float* x, u64 n) {
    pdl_entry();
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        x[i] = round_h(x[i]);
}

// gate[i] = gelu_tanh(gate[i]) * up[i], through f16 as ggml's GEGLU table: 0 at or
// below -10, identity at or above 10.
extern "C" __global__ void gelu_mul(float* g, const float* u, u64 n) {
    pdl_entry();
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        g[i] = gelu_times(g[i], u[i]);
}

extern "C" __global__ void silu_mul(float* g, const float* u, u64 n) {
    pdl_entry();
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        g[i] = silu_times(g[i], u[i]);
}

extern "C" __global__ void softcap(float* x, u64 n, float cap) {
    pdl_entry();
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        x[i] = tanhf(x[i] / cap) * cap;
}

// Writes token t's K and V rows (f16, rounded to nearest: V needs no separate
// rounding pass) at its position through its sequence's block
// table: tables[seq * tstride + pos / bs] is the block.
extern "C" __global__ void kv_store(const float* k, const float* v, int kvd, const int* tok_seq,
                                    const u32* tables, int tstride, int bs, u16* kc, u16* vc) {
    pdl_entry();
    int t = blockIdx.x;
    int seq = tok_seq[2 * t], p = tok_seq[2 * t + 1];
    u64 blk = tables[(u64)seq * tstride + p / bs];
    u64 off = (blk * bs + p % bs) * (u64)kvd;
    for (int i = threadIdx.x; i < kvd; i += blockDim.x) {
        kc[off + i] = f2h(k[(u64)t * kvd + i]);
        vc[off + i] = f2h(v[(u64)t * kvd + i]);
    }
}

// f32 -> f16 (round to nearest even), the activations of the cuBLAS prefill path.
extern "C" __global__ void to_f16(const float* x, u16* y, u64 n) {
    pdl_entry();
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        y[i] = f2h(x[i]);
}

// Greedy decoding's pick on the device, so a greedy row's logits never cross PCIe:
// block b takes logits row first_row + b, skip list ids[off[b] .. off[b + 1]] (the
// tokens a request's penalties or biases adjust: their raw logits go to `skipped`, NaN
// for an id past the vocabulary, and they do not compete). pick[2b] = the first index
// of the largest value among the rest (NaN never wins; 0 when none beats -inf),
// pick[2b + 1] = that value's bits. Each thread scans its strided share in order
// (strict >: its lowest index among equals), then larger value or, on a tie, lower
// index wins the reduction: the serial scan's answer (twin: twin::greedy_pick).
// Dynamic shared memory: a bit per vocabulary id when any row of the launch skips.
extern "C" __global__ void __launch_bounds__(1024) greedy_pick(const float* lg, int vocab, int first_row,
                                                            const int* off, const u32* ids, u32* pick,
                                                            float* skipped) {
    pdl_entry();
    extern __shared__ u32 skip_bits[];
    __shared__ float sv[32];
    __shared__ u32 si[32];
    int b = blockIdx.x;
    const float* row = lg + (u64)(first_row + b) * vocab;
    int s0 = off[b], s1 = off[b + 1];
    bool any = s1 > s0;
    if (any) {
        for (int i = threadIdx.x; i < (vocab + 31) >> 5; i += blockDim.x) skip_bits[i] = 0;
        __syncthreads();
        for (int i = s0 + threadIdx.x; i < s1; i += blockDim.x) {
            u32 id = ids[i];
            skipped[i] = id < (u32)vocab ? row[id] : __int_as_float(0x7fc00000);
            if (id < (u32)vocab) atomicOr(&skip_bits[id >> 5], 1u << (id & 31));
        }
        __syncthreads();
    }
    float best = -__int_as_float(0x7f800000);
    u32 bi = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = row[i];
        if (v > best && !(any && ((skip_bits[i >> 5] >> (i & 31)) & 1u))) {
            best = v;
            bi = (u32)i;
        }
    }
    warp_argmax(&best, &bi);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    if (lane == 0) {
        sv[w] = best;
        si[w] = bi;
    }
    __syncthreads();
    if (w == 0) {
        best = lane < nw ? sv[lane] : -__int_as_float(0x7f800000);
        bi = lane < nw ? si[lane] : 0u;
        warp_argmax(&best, &bi);
        if (lane == 0) {
            pick[2 * b] = bi;
            pick[2 * b + 1] = __float_as_uint(best);
        }
    }
}
