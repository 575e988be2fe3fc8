// Attention over the paged KV cache: one block of eight warps per (query head, token).
// The token sees positions lo..=pos of its own sequence (lo > 0 under a sliding
// window); KV head h / group serves query head h (GQA). Each warp takes every eighth
// position (eight, not four: decode has one block per head, so the chain of
// positions per warp is its latency): its lanes read the position's K (then V) row together, two f16 values a
// lane per 64-wide stride, so a row is one coalesced read. Scores go to a scratch row,
// softmax, the probabilities are rounded to f16 (as the CPU path's f16 matmul
// operand), then out = sum p_j V_j, each warp summing its positions and the eight
// partial sums added in shared memory.
#define ATT_WARPS 8
#define ATT_MAX_PAIRS 4 // head sizes up to 256

// A warp's positions go in groups of ATT_AU (j, j + 8, ...): the group's block-table
// entries, then its K (or V) words, are all asked for before the first is used, so a
// warp's chain is n / (8 ATT_AU) cache round trips instead of n / 8 (run 30: decode
// attention 13.75 us at 64-128 positions). The per-position arithmetic and the order
// of the additions are unchanged. HANGAR_CUDA_DEFINES=ATT_AU1 / ATT_AU4 / ATT_AU16
// for A/B runs (run 44: sixteen, 117 registers instead of 66, 2% slower at batch 1).
#if defined(ATT_AU1)
#define ATT_AU 1
#elif defined(ATT_AU4)
#define ATT_AU 4
#elif defined(ATT_AU16)
#define ATT_AU 16
#else
#define ATT_AU 8
#endif
// f(j, words) for a warp's positions j = j0, j0 + ATT_WARPS, ... below j1, in order,
// with the words (two f16 a lane per 64-wide stride, so a row is one coalesced read)
// of the head at `hoff` of the cache c fetched a group at a time: the group's
// positions are clamped to j1 - 1 for the loads and skipped past it. Position `own`
// is not read (attention_rope: another block writes it in the same launch).
template <class F>
__device__ __forceinline__ void each_kv(const u16* c, const u32* table, int bs, int kvd, u64 hoff, int lo,
                                        int j0, int j1, int own, int lane, int pairs, F f) {
    for (int g = j0; g < j1; g += ATT_WARPS * ATT_AU) {
        u32 wv[ATT_AU][ATT_MAX_PAIRS];
#pragma unroll
        for (int u = 0; u < ATT_AU; u++) {
            int p = lo + min(g + u * ATT_WARPS, j1 - 1);
            const u32* r = (const u32*)(c + ((u64)table[p / bs] * bs + p % bs) * kvd + hoff);
#pragma unroll
            for (int i = 0; i < ATT_MAX_PAIRS; i++) {
                int d2 = lane + 32 * i;
                wv[u][i] = d2 < pairs && p != own ? r[d2] : 0u;
            }
        }
#pragma unroll
        for (int u = 0; u < ATT_AU; u++) {
            int j = g + u * ATT_WARPS;
            if (j >= j1) break;
            f(j, wv[u]);
        }
    }
}
// A lane's share of q . K for one position's words.
__device__ __forceinline__ float dot_k_words(const float* qs, const u32 (&two)[ATT_MAX_PAIRS], int lane,
                                             int pairs) {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < ATT_MAX_PAIRS; i++) {
        int d2 = lane + 32 * i;
        if (d2 < pairs)
            s += qs[2 * d2] * h2f((u16)(two[i] & 0xffff)) + qs[2 * d2 + 1] * h2f((u16)(two[i] >> 16));
    }
    return s;
}
// acc += pj * one position's V words: its share of one warp's partial output.
__device__ __forceinline__ void acc_v_words(float (*acc)[2], const u32 (&two)[ATT_MAX_PAIRS], float pj,
                                            int lane, int pairs) {
#pragma unroll
    for (int i = 0; i < ATT_MAX_PAIRS; i++) {
        int d2 = lane + 32 * i;
        if (d2 < pairs) {
            acc[i][0] += pj * h2f((u16)(two[i] & 0xffff));
            acc[i][1] += pj * h2f((u16)(two[i] >> 16));
        }
    }
}

// Decode steps where every sequence has one token fold qk_rope into attention
// (`attention_rope`): the block normalizes and rotates its query head and its key
// head's new K row itself (qk_rope's arithmetic and sum order, so the same bits), the
// first query block of each key head stores K and V in the cache, and the token's own
// position reads K from shared memory and V from the raw row instead of the cache
// (no block reads what another writes in this launch). One launch a layer fewer.
struct RopeIn {
    const float* k; // the token rows of K and V before RoPE, as the QKV GEMV wrote them
    const float* v;
    const float* qn; // per-head q / k RMSNorm weights (Gemma 3, Qwen 3), or null
    const float* kn;
    float eps;
    double base;
    int n_rot;
    const float* ff; // rope frequency factors, or null
    int neox;
};
template <bool ROPE>
__device__ __forceinline__ void attention_body(
    const float* q, u16* kc, u16* vc, float* out, int nheads, int nkv, int hd,
    const int* tok_seq, const u32* tables, int tstride, int bs, int window, float scale,
    float* scratch, int max_n, i8* Xq, float2* Xd, int sm_scores, const RopeIn& ri) {
    extern __shared__ float sm[];
    float* qs = sm;               // hd
    float* part = sm + hd;        // ATT_WARPS * hd (ROPE: first the new K row, ks)
    __shared__ float red[32];
    int h = blockIdx.x, t = blockIdx.y;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int kh = h / (nheads / nkv);
    float c = 0.0f, sn = 0.0f;
    // The angle of the thread's pair, from the host-written position, before the wait.
    if (ROPE && (int)threadIdx.x < ri.n_rot / 2)
        rope_angle(threadIdx.x, (double)tok_seq[2 * t + 1], ri.base, ri.n_rot, ri.ff, &c, &sn);
    pdl_entry();
    int seq = tok_seq[2 * t], pos = tok_seq[2 * t + 1];
    int lo = window > 0 ? max(0, pos + 1 - window) : 0;
    int n = pos + 1 - lo;
    int kvd = nkv * hd;
    int pairs = hd >> 1;
    const u32* table = tables + (u64)seq * tstride;
    const float* qr = q + ((u64)t * nheads + h) * hd;
    float* ks = part;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = qr[d];
    if (ROPE) {
        __shared__ double shd[32];
        const float* kr = ri.k + ((u64)t * nkv + kh) * hd;
        for (int d = threadIdx.x; d < hd; d += blockDim.x) ks[d] = kr[d];
        __syncthreads();
        double p = (double)tok_seq[2 * t + 1];
        rope_row(qs, hd, ri.qn, ri.eps, p, ri.base, ri.n_rot, ri.ff, ri.neox, c, sn, shd);
        rope_row(ks, hd, ri.kn, ri.eps, p, ri.base, ri.n_rot, ri.ff, ri.neox, c, sn, shd);
        if (h % (nheads / nkv) == 0) {
            u64 off = ((u64)table[pos / bs] * bs + pos % bs) * kvd + (u64)kh * hd;
            const float* vr = ri.v + (u64)t * kvd + (u64)kh * hd;
            for (int d = threadIdx.x; d < hd; d += blockDim.x) {
                kc[off + d] = f2h(ks[d]);
                vc[off + d] = f2h(vr[d]);
            }
        }
    }
    __syncthreads();
    // Scores in shared memory when the runner sized it for them (sm_scores), else in
    // the global scratch row: a decode step's attention is a chain of dependent
    // passes over them, so their latency is the kernel's.
    float* sc = sm_scores ? sm + (1 + ATT_WARPS) * hd : scratch + ((u64)t * nheads + h) * max_n;
    float m = -3.0e38f;
    const u64 hoff = (u64)kh * hd;
    each_kv(kc, table, bs, kvd, hoff, lo, w, n, ROPE ? pos : -1, lane, pairs,
            [&](int j, const u32(&kw)[ATT_MAX_PAIRS]) {
                float s = 0.0f;
                if (ROPE && lo + j == pos) {
                    // The token's own K, from shared memory (its f16 values as floats).
#pragma unroll
                    for (int i = 0; i < ATT_MAX_PAIRS; i++) {
                        int d2 = lane + 32 * i;
                        if (d2 < pairs) s += qs[2 * d2] * ks[2 * d2] + qs[2 * d2 + 1] * ks[2 * d2 + 1];
                    }
                } else {
                    s = dot_k_words(qs, kw, lane, pairs);
                }
                s = warp_sum(s) * scale;
                if (lane == 0) sc[j] = s;
                m = fmaxf(m, s);
            });
    m = block_max(m, red);
    __syncthreads();
    float sum = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float e = expf(sc[j] - m);
        sc[j] = e;
        sum += e;
    }
    sum = block_sum(sum, red);
    float inv = 1.0f / sum;
    for (int j = threadIdx.x; j < n; j += blockDim.x) sc[j] = round_h(sc[j] * inv);
    __syncthreads();
    float acc[ATT_MAX_PAIRS][2];
#pragma unroll
    for (int i = 0; i < ATT_MAX_PAIRS; i++) acc[i][0] = acc[i][1] = 0.0f;
    each_kv(vc, table, bs, kvd, hoff, lo, w, n, ROPE ? pos : -1, lane, pairs,
            [&](int j, const u32(&vw)[ATT_MAX_PAIRS]) {
                float pj = sc[j];
                if (ROPE && lo + j == pos) {
                    // The token's own V, rounded to f16 as the cache holds it.
                    const float* vn = ri.v + (u64)t * kvd + hoff;
#pragma unroll
                    for (int i = 0; i < ATT_MAX_PAIRS; i++) {
                        int d2 = lane + 32 * i;
                        if (d2 < pairs) {
                            acc[i][0] += pj * round_h(vn[2 * d2]);
                            acc[i][1] += pj * round_h(vn[2 * d2 + 1]);
                        }
                    }
                } else {
                    acc_v_words(acc, vw, pj, lane, pairs);
                }
            });
    // ks (the start of part) was read above for the last time.
    if (ROPE) __syncthreads();
#pragma unroll
    for (int i = 0; i < ATT_MAX_PAIRS; i++) {
        int d2 = lane + 32 * i;
        if (d2 < pairs) {
            part[w * hd + 2 * d2] = acc[i][0];
            part[w * hd + 2 * d2 + 1] = acc[i][1];
        }
    }
    __syncthreads();
    // hd <= 256 = blockDim: one pass. With Xq set (hd a multiple of 32, so whole warps
    // hold whole 32-blocks) the output is also quantized for the next int8 GEMV.
    int d = threadIdx.x;
    if (d < hd) {
        float o = 0.0f;
#pragma unroll
        for (int k = 0; k < ATT_WARPS; k++) o += part[k * hd + d];
        u64 at = ((u64)t * nheads + h) * hd + d;
        out[at] = o;
        if (Xq) q8_1_lane(o, at, Xq, Xd);
    }
}
extern "C" __global__ void __launch_bounds__(256) attention(
    const float* q, u16* kc, u16* vc, float* out, int nheads, int nkv, int hd,
    const int* tok_seq, const u32* tables, int tstride, int bs, int window, float scale,
    float* scratch, int max_n, i8* Xq, float2* Xd, int sm_scores) {
    RopeIn none = {};
    attention_body<false>(q, kc, vc, out, nheads, nkv, hd, tok_seq, tables, tstride, bs, window, scale,
                          scratch, max_n, Xq, Xd, sm_scores, none);
}
// `attention` with qk_rope folded in (see RopeIn): q, k and v are the GEMV's raw rows.
extern "C" __global__ void __launch_bounds__(256) attention_rope(
    const float* q, u16* kc, u16* vc, float* out, int nheads, int nkv, int hd, const int* tok_seq,
    const u32* tables, int tstride, int bs, int window, float scale, float* scratch, int max_n, i8* Xq,
    float2* Xd, int sm_scores, const float* k, const float* v, const float* qn, const float* kn, float eps,
    double base, int n_rot, const float* ff, int neox) {
    RopeIn ri = {k, v, qn, kn, eps, base, n_rot, ff, neox};
    attention_body<true>(q, kc, vc, out, nheads, nkv, hd, tok_seq, tables, tstride, bs, window, scale,
                         scratch, max_n, Xq, Xd, sm_scores, ri);
}

// Split-K attention (flash-decoding) for steps whose (head, token) blocks alone would
// leave most SMs idle (decode at small batches: 32 blocks on a 132-SM H200 for an 8B
// model, each a long chain of dependent position reads). Positions are cut into S
// chunks of `chunk`; grid (heads, tokens, S), same lane and warp mapping per chunk as
// `attention`, three launches:
//  1. `att_split_scores`: the chunk's scores into the scratch row, and the chunk's max
//     m_s and sum of exp(score - m_s) into `ml`;
//  2. `att_split_pv`: the global max M and sum (sum_s l_s exp(m_s - M)), each of the
//     chunk's probabilities exp(score - M) / sum rounded to f16 as in `attention`, and
//     the chunk's partial output (its warps' sums added in order) into `part`;
//  3. `att_split_sum`: out = sum over s in order of the partial outputs (and its q8_1
//     copy for the output projection).
// Empty chunks (past a token's own length) write m_s = -3e38, l_s = 0 and zeros.
extern "C" __global__ void __launch_bounds__(256) att_split_scores(
    const float* q, const u16* kc, int nheads, int nkv, int hd, const int* tok_seq,
    const u32* tables, int tstride, int bs, int window, float scale, float* scratch,
    int max_n, int chunk, float* ml) {
    pdl_entry();
    __shared__ float qs[256];
    __shared__ float red[32];
    int h = blockIdx.x, t = blockIdx.y, s = blockIdx.z, S = gridDim.z;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int kh = h / (nheads / nkv);
    int seq = tok_seq[2 * t], pos = tok_seq[2 * t + 1];
    int lo = window > 0 ? max(0, pos + 1 - window) : 0;
    int n = pos + 1 - lo;
    int j0 = s * chunk, j1 = min(n, j0 + chunk);
    int kvd = nkv * hd, pairs = hd >> 1;
    const u32* table = tables + (u64)seq * tstride;
    const float* qr = q + ((u64)t * nheads + h) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = qr[d];
    __syncthreads();
    float* sc = scratch + ((u64)t * nheads + h) * max_n;
    float m = -3.0e38f;
    each_kv(kc, table, bs, kvd, (u64)kh * hd, lo, j0 + w, j1, -1, lane, pairs,
            [&](int j, const u32(&kw)[ATT_MAX_PAIRS]) {
                float sv = warp_sum(dot_k_words(qs, kw, lane, pairs)) * scale;
                if (lane == 0) sc[j] = sv;
                m = fmaxf(m, sv);
            });
    m = block_max(m, red);
    __syncthreads();
    float l = 0.0f;
    for (int j = j0 + threadIdx.x; j < j1; j += blockDim.x) l += expf(sc[j] - m);
    l = block_sum(l, red);
    if (threadIdx.x == 0) {
        u64 at = (((u64)t * nheads + h) * S + s) * 2;
        ml[at] = m;
        ml[at + 1] = l;
    }
}

extern "C" __global__ void __launch_bounds__(256) att_split_pv(
    const u16* vc, int nheads, int nkv, int hd, const int* tok_seq, const u32* tables,
    int tstride, int bs, int window, const float* scratch, int max_n, int chunk,
    const float* ml, float* part) {
    pdl_entry();
    __shared__ float pw[ATT_WARPS * 256];
    __shared__ float gm[2];
    int h = blockIdx.x, t = blockIdx.y, s = blockIdx.z, S = gridDim.z;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int kh = h / (nheads / nkv);
    int seq = tok_seq[2 * t], pos = tok_seq[2 * t + 1];
    int lo = window > 0 ? max(0, pos + 1 - window) : 0;
    int n = pos + 1 - lo;
    int j0 = s * chunk, j1 = min(n, j0 + chunk);
    int kvd = nkv * hd, pairs = hd >> 1;
    const float* mls = ml + ((u64)t * nheads + h) * S * 2;
    if (threadIdx.x == 0) {
        float M = -3.0e38f;
        for (int i = 0; i < S; i++) M = fmaxf(M, mls[2 * i]);
        float sum = 0.0f;
        for (int i = 0; i < S; i++) sum += mls[2 * i + 1] * expf(mls[2 * i] - M);
        gm[0] = M;
        gm[1] = 1.0f / sum;
    }
    __syncthreads();
    float M = gm[0], inv = gm[1];
    const u32* table = tables + (u64)seq * tstride;
    const float* sc = scratch + ((u64)t * nheads + h) * max_n;
    float acc[ATT_MAX_PAIRS][2];
#pragma unroll
    for (int i = 0; i < ATT_MAX_PAIRS; i++) acc[i][0] = acc[i][1] = 0.0f;
    each_kv(vc, table, bs, kvd, (u64)kh * hd, lo, j0 + w, j1, -1, lane, pairs,
            [&](int j, const u32(&vw)[ATT_MAX_PAIRS]) {
                acc_v_words(acc, vw, round_h(expf(sc[j] - M) * inv), lane, pairs);
            });
#pragma unroll
    for (int i = 0; i < ATT_MAX_PAIRS; i++) {
        int d2 = lane + 32 * i;
        if (d2 < pairs) {
            pw[w * hd + 2 * d2] = acc[i][0];
            pw[w * hd + 2 * d2 + 1] = acc[i][1];
        }
    }
    __syncthreads();
    int d = threadIdx.x;
    if (d < hd) {
        float o = 0.0f;
#pragma unroll
        for (int k = 0; k < ATT_WARPS; k++) o += pw[k * hd + d];
        part[(((u64)t * nheads + h) * S + s) * hd + d] = o;
    }
}

extern "C" __global__ void __launch_bounds__(256) att_split_sum(
    const float* part, float* out, int nheads, int hd, int S, i8* Xq, float2* Xd) {
    pdl_entry();
    int h = blockIdx.x, t = blockIdx.y, d = threadIdx.x;
    if (d < hd) {
        const float* pr = part + ((u64)t * nheads + h) * S * hd + d;
        float o = 0.0f;
        for (int s = 0; s < S; s++) o += pr[(u64)s * hd];
        u64 at = ((u64)t * nheads + h) * hd + d;
        out[at] = o;
        if (Xq) q8_1_lane(o, at, Xq, Xd);
    }
}

// Prefill attention in tiles (flash-attention style): one block per (query head, 16
// consecutive tokens of the step). The tokens of a tile that belong to one sequence
// (a "segment"; a tile usually holds one) read that sequence's K and V rows once per
// 64-position tile into shared memory, instead of once per token. Two passes over the
// positions keep the one-token kernel's probabilities: the first finds each token's
// max and sum (online, rescaling the sum when the max grows), the second forms
// p = round_f16(exp(s - max) / sum) and out = sum p V. Scores are dot products in
// dimension order from shared memory; outputs add positions in order.
#define FA_Q 16
#define FA_K 64
#define FA_HD 128 // head sizes up to 128 (larger heads use `attention`)
extern "C" __global__ void __launch_bounds__(256) attention_tiled(
    const float* q, const u16* kc, const u16* vc, float* out, int nheads, int nkv, int hd,
    int ntok, const int* tok_seq, const u32* tables, int tstride, int bs, int window,
    float scale) {
    pdl_entry();
    __shared__ float qs[FA_Q][FA_HD];
    __shared__ float kv[FA_K][FA_HD + 1];
    __shared__ float st[FA_Q][FA_K];
    __shared__ float mrow[FA_Q], lrow[FA_Q];
    __shared__ int tseq[FA_Q], tpos[FA_Q], tlo[FA_Q], done[FA_Q];
    int h = blockIdx.x, t0 = blockIdx.y * FA_Q, tid = threadIdx.x;
    int kh = h / (nheads / nkv), kvd = nkv * hd;
    int nq = min(FA_Q, ntok - t0);
    if (tid < FA_Q) {
        int t = t0 + tid;
        bool ok = tid < nq;
        tseq[tid] = ok ? tok_seq[2 * t] : -1;
        tpos[tid] = ok ? tok_seq[2 * t + 1] : -1;
        tlo[tid] = ok && window > 0 ? max(0, tok_seq[2 * t + 1] + 1 - window) : 0;
        done[tid] = ok ? 0 : 1;
    }
    for (int i = tid; i < FA_Q * hd; i += blockDim.x) {
        int qi = i / hd, d = i % hd;
        qs[qi][d] = qi < nq ? q[((u64)(t0 + qi) * nheads + h) * hd + d] : 0.0f;
    }
    __syncthreads();
    // Score and output mapping: thread -> token qi = tid / 16; scores of positions
    // kj = tid % 16 + 16 c (c < 4); outputs d = tid % 16 + 16 c (c < FA_HD / 16).
    int qi = tid >> 4, sub = tid & 15;
    while (true) {
        // The next segment: the tile's first unfinished token's sequence.
        __shared__ int seg, seg_lo, seg_hi;
        if (tid == 0) {
            int sq = -1;
            for (int i = 0; i < FA_Q; i++)
                if (!done[i]) { sq = tseq[i]; break; }
            int a = 1 << 30, b = -1;
            for (int i = 0; i < FA_Q; i++)
                if (!done[i] && tseq[i] == sq) { a = min(a, tlo[i]); b = max(b, tpos[i]); }
            seg = sq; seg_lo = a; seg_hi = b;
        }
        __syncthreads();
        if (seg < 0) break;
        bool active = !done[qi] && tseq[qi] == seg;
        int my_lo = tlo[qi], my_pos = tpos[qi];
        const u32* table = tables + (u64)seg * tstride;
        float m = -3.0e38f, l = 0.0f;
        float acc[FA_HD / 16];
#pragma unroll
        for (int c = 0; c < FA_HD / 16; c++) acc[c] = 0.0f;
        for (int pass = 0; pass < 2; pass++) {
            if (pass == 1) {
                if (sub == 0) { mrow[qi] = m; lrow[qi] = l; }
                __syncthreads();
                m = mrow[qi];
                l = lrow[qi];
            }
            float inv = 1.0f / l;
            for (int k0 = seg_lo; k0 <= seg_hi; k0 += FA_K) {
                int nk = min(FA_K, seg_hi + 1 - k0);
                __syncthreads();
                for (int i = tid; i < FA_K * hd; i += blockDim.x) {
                    int r = i / hd, d = i % hd;
                    float v = 0.0f;
                    if (r < nk) {
                        int p = k0 + r;
                        u64 off = ((u64)table[p / bs] * bs + p % bs) * kvd + (u64)kh * hd;
                        v = h2f(kc[off + d]);
                    }
                    kv[r][d] = v;
                }
                __syncthreads();
#pragma unroll
                for (int c = 0; c < FA_K / 16; c++) {
                    int kj = sub + 16 * c, p = k0 + kj;
                    float s = -3.0e38f;
                    if (active && kj < nk && p >= my_lo && p <= my_pos) {
                        float a = 0.0f;
                        for (int d = 0; d < hd; d++) a += qs[qi][d] * kv[kj][d];
                        s = a * scale;
                    }
                    st[qi][kj] = s;
                }
                __syncthreads();
                if (pass == 0) {
                    // Each of the token's 16 threads folds the tile into (m, l) the same
                    // way, in position order.
                    for (int kj = 0; kj < nk; kj++) {
                        float s = st[qi][kj];
                        if (s > -3.0e38f) {
                            if (s > m) { l = l * expf(m - s); m = s; }
                            l += expf(s - m);
                        }
                    }
                    continue;
                }
                // Pass 2: V rows replace K rows.
                __syncthreads();
                for (int i = tid; i < FA_K * hd; i += blockDim.x) {
                    int r = i / hd, d = i % hd;
                    float v = 0.0f;
                    if (r < nk) {
                        int p = k0 + r;
                        u64 off = ((u64)table[p / bs] * bs + p % bs) * kvd + (u64)kh * hd;
                        v = h2f(vc[off + d]);
                    }
                    kv[r][d] = v;
                }
                __syncthreads();
                for (int kj = 0; kj < nk; kj++) {
                    float s = st[qi][kj];
                    if (s <= -3.0e38f) continue;
                    float pj = round_h(expf(s - m) * inv);
#pragma unroll
                    for (int c = 0; c < FA_HD / 16; c++) {
                        int d = sub + 16 * c;
                        if (d < hd) acc[c] += pj * kv[kj][d];
                    }
                }
            }
        }
        if (active) {
            u64 at = ((u64)(t0 + qi) * nheads + h) * hd;
#pragma unroll
            for (int c = 0; c < FA_HD / 16; c++) {
                int d = sub + 16 * c;
                if (d < hd) out[at + d] = acc[c];
            }
        }
        __syncthreads();
        if (tid < FA_Q && !done[tid] && tseq[tid] == seg) done[tid] = 1;
        __syncthreads();
    }
}

// The tiled prefill attention on tensor cores (`mma.sync` m16n8k16, f16 operands, f32
// accumulation): attention_tiled's two passes and probabilities, with the dot
// products on the tensor cores. A block of four warps takes one query head and 64
// tokens (16 a warp); per segment (the tokens of one sequence, as attention_tiled)
// the sequence's K rows, 64 at a time, go to shared memory. Pass 1: S = Q K^T, each
// row's max and sum (online, per tile). Pass 2: S again, p = round_f16(exp(s - max) /
// sum) (the one-token kernel's probabilities, which are f16 operands anyway), and
// O += P V with V's tile beside K's. Q, K and V are f16 values already (qk_rope rounds
// Q), so only the f32 accumulation order differs from attention_tiled.
//
// Fragments (PTX ISA, mma.m16n8k16 .f16): lane = 4 g + c. A (16 x 16, row-major):
// regs {row g, cols 2c..2c+1}, {row g+8, same}, {row g, cols 2c+8..}, {row g+8, cols
// 2c+8..}. B (16 x 8): {k 2c..2c+1, n g}, {k 2c+8.., n g}. C (16 x 8): c0, c1 = row g,
// cols 2c, 2c+1; c2, c3 = row g+8. S's C tiles of keys 16 kk .. 16 kk + 15 are then
// exactly P's A fragment for k-step kk.
#define FM_Q 64
#define FM_K 64
#define FM_PAD 8 // halves of padding a shared row: rows 4 words apart in the banks

__device__ __forceinline__ void mma16816(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ u32 pack_h2(float lo, float hi) {
    return (u32)f2h(lo) | ((u32)f2h(hi) << 16);
}

template <int HD>
__device__ __forceinline__ void attention_mma_body(const float* q, const u16* kc, const u16* vc, float* out,
                                                   int nheads, int nkv, int ntok, const int* tok_seq,
                                                   const u32* tables, int tstride, int bs, int window,
                                                   float scale) {
    constexpr int KS = HD / 16;  // k-steps over the head for S
    constexpr int NO = HD / 8;   // n-tiles of the output
    constexpr int RS = HD + FM_PAD;
    __shared__ __align__(16) u16 ks[FM_K * RS];
    __shared__ __align__(16) u16 vs[FM_K * RS];
    __shared__ int tseq[FM_Q], tpos[FM_Q], tlo[FM_Q], done[FM_Q];
    __shared__ int seg, seg_lo, seg_hi;
    const int h = blockIdx.x, t0 = blockIdx.y * FM_Q, tid = threadIdx.x;
    const int lane = tid & 31, w = tid >> 5, g = lane >> 2, c = lane & 3;
    const int kh = h / (nheads / nkv), kvd = nkv * HD;
    const int nq = min(FM_Q, ntok - t0);
    if (tid < FM_Q) {
        int t = t0 + tid;
        bool ok = tid < nq;
        tseq[tid] = ok ? tok_seq[2 * t] : -1;
        tpos[tid] = ok ? tok_seq[2 * t + 1] : -1;
        tlo[tid] = ok && window > 0 ? max(0, tok_seq[2 * t + 1] + 1 - window) : 0;
        done[tid] = ok ? 0 : 1;
    }
    // This thread's two rows of the warp's 16, and their Q fragments (f16 values).
    const int r0 = 16 * w + g, r1 = r0 + 8;
    u32 qa[KS][4];
    {
        const float* q0 = q + ((u64)(t0 + min(r0, nq - 1)) * nheads + h) * HD;
        const float* q1 = q + ((u64)(t0 + min(r1, nq - 1)) * nheads + h) * HD;
#pragma unroll
        for (int kk = 0; kk < KS; kk++) {
            int d = 16 * kk + 2 * c;
            qa[kk][0] = pack_h2(q0[d], q0[d + 1]);
            qa[kk][1] = pack_h2(q1[d], q1[d + 1]);
            qa[kk][2] = pack_h2(q0[d + 8], q0[d + 9]);
            qa[kk][3] = pack_h2(q1[d + 8], q1[d + 9]);
        }
    }
    __syncthreads();
    while (true) {
        if (tid == 0) {
            int sq = -1;
            for (int i = 0; i < FM_Q; i++)
                if (!done[i]) { sq = tseq[i]; break; }
            int a = 1 << 30, b = -1;
            for (int i = 0; i < FM_Q; i++)
                if (!done[i] && tseq[i] == sq) { a = min(a, tlo[i]); b = max(b, tpos[i]); }
            seg = sq; seg_lo = a; seg_hi = b;
        }
        __syncthreads();
        if (seg < 0) break;
        const bool act0 = !done[r0] && tseq[r0] == seg, act1 = !done[r1] && tseq[r1] == seg;
        const int lo0 = tlo[r0], pos0 = tpos[r0], lo1 = tlo[r1], pos1 = tpos[r1];
        const u32* table = tables + (u64)seg * tstride;
        float m0 = -3.0e38f, m1 = -3.0e38f, l0 = 0.0f, l1 = 0.0f, inv0 = 0.0f, inv1 = 0.0f;
        float o[NO][4];
#pragma unroll
        for (int j = 0; j < NO; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
        for (int pass = 0; pass < 2; pass++) {
            if (pass == 1) {
                // Each row's sum over its four threads (they share its max).
                l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
                l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
                l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
                l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
                inv0 = 1.0f / l0;
                inv1 = 1.0f / l1;
            }
            for (int k0 = seg_lo; k0 <= seg_hi; k0 += FM_K) {
                const int nk = min(FM_K, seg_hi + 1 - k0);
                __syncthreads();
                // The tile's K (and in pass 2 V) rows: 16-byte pieces, zeros past nk.
                for (int i = tid; i < FM_K * (HD / 8); i += blockDim.x) {
                    int r = i / (HD / 8), piece = i % (HD / 8);
                    uint4 kv4 = make_uint4(0, 0, 0, 0), vv4 = make_uint4(0, 0, 0, 0);
                    if (r < nk) {
                        int p = k0 + r;
                        u64 off = ((u64)table[p / bs] * bs + p % bs) * kvd + (u64)kh * HD + 8 * piece;
                        kv4 = *(const uint4*)(kc + off);
                        if (pass == 1) vv4 = *(const uint4*)(vc + off);
                    }
                    *(uint4*)(ks + r * RS + 8 * piece) = kv4;
                    if (pass == 1) *(uint4*)(vs + r * RS + 8 * piece) = vv4;
                }
                __syncthreads();
                // S for the warp's 16 rows and the tile's 64 keys: eight n-tiles of 8.
                float s[FM_K / 8][4];
#pragma unroll
                for (int j = 0; j < FM_K / 8; j++) {
                    s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
                    const u16* kr = ks + (8 * j + g) * RS + 2 * c;
#pragma unroll
                    for (int kk = 0; kk < KS; kk++) {
                        u32 b0 = *(const u32*)(kr + 16 * kk), b1 = *(const u32*)(kr + 16 * kk + 8);
                        mma16816(s[j], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], b0, b1);
                    }
                }
                // Scale and mask: keys outside a row's own span (or past nk) drop out.
#pragma unroll
                for (int j = 0; j < FM_K / 8; j++) {
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        int p = k0 + 8 * j + 2 * c + (e & 1);
                        bool row1 = e >= 2;
                        bool ok = (row1 ? act1 : act0) && p < k0 + nk && p >= (row1 ? lo1 : lo0) &&
                                  p <= (row1 ? pos1 : pos0);
                        s[j][e] = ok ? s[j][e] * scale : -3.0e38f;
                    }
                }
                if (pass == 0) {
                    float t0m = -3.0e38f, t1m = -3.0e38f;
#pragma unroll
                    for (int j = 0; j < FM_K / 8; j++) {
                        t0m = fmaxf(t0m, fmaxf(s[j][0], s[j][1]));
                        t1m = fmaxf(t1m, fmaxf(s[j][2], s[j][3]));
                    }
                    t0m = fmaxf(t0m, __shfl_xor_sync(0xffffffffu, t0m, 1));
                    t0m = fmaxf(t0m, __shfl_xor_sync(0xffffffffu, t0m, 2));
                    t1m = fmaxf(t1m, __shfl_xor_sync(0xffffffffu, t1m, 1));
                    t1m = fmaxf(t1m, __shfl_xor_sync(0xffffffffu, t1m, 2));
                    float n0 = fmaxf(m0, t0m), n1 = fmaxf(m1, t1m);
                    l0 *= expf(m0 - n0);
                    l1 *= expf(m1 - n1);
                    m0 = n0;
                    m1 = n1;
#pragma unroll
                    for (int j = 0; j < FM_K / 8; j++) {
                        if (s[j][0] > -3.0e38f) l0 += expf(s[j][0] - m0);
                        if (s[j][1] > -3.0e38f) l0 += expf(s[j][1] - m0);
                        if (s[j][2] > -3.0e38f) l1 += expf(s[j][2] - m1);
                        if (s[j][3] > -3.0e38f) l1 += expf(s[j][3] - m1);
                    }
                    continue;
                }
                // Pass 2: P (f16, normalized) times the V tile.
#pragma unroll
                for (int kk = 0; kk < FM_K / 16; kk++) {
                    float p[2][4];
#pragma unroll
                    for (int hh = 0; hh < 2; hh++) {
                        const float* sj = s[2 * kk + hh];
                        p[hh][0] = sj[0] > -3.0e38f ? expf(sj[0] - m0) * inv0 : 0.0f;
                        p[hh][1] = sj[1] > -3.0e38f ? expf(sj[1] - m0) * inv0 : 0.0f;
                        p[hh][2] = sj[2] > -3.0e38f ? expf(sj[2] - m1) * inv1 : 0.0f;
                        p[hh][3] = sj[3] > -3.0e38f ? expf(sj[3] - m1) * inv1 : 0.0f;
                    }
                    u32 a0 = pack_h2(p[0][0], p[0][1]), a1 = pack_h2(p[0][2], p[0][3]);
                    u32 a2 = pack_h2(p[1][0], p[1][1]), a3 = pack_h2(p[1][2], p[1][3]);
                    // B = V[keys 16 kk + 2c (+1, +8, +9)][dims 8 n + g].
                    const u16* v0 = vs + (16 * kk + 2 * c) * RS + g;
#pragma unroll
                    for (int n = 0; n < NO; n++) {
                        const u16* vp = v0 + 8 * n;
                        u32 b0 = (u32)vp[0] | ((u32)vp[RS] << 16);
                        u32 b1 = (u32)vp[8 * RS] | ((u32)vp[9 * RS] << 16);
                        mma16816(o[n], a0, a1, a2, a3, b0, b1);
                    }
                }
            }
        }
        // Rows of this segment: c0, c1 of output n-tile j are row r0's dims 8j + 2c,
        // +1; c2, c3 row r1's.
        if (act0) {
            float* o0 = out + ((u64)(t0 + r0) * nheads + h) * HD + 2 * c;
#pragma unroll
            for (int n = 0; n < NO; n++) *(float2*)(o0 + 8 * n) = make_float2(o[n][0], o[n][1]);
        }
        if (act1) {
            float* o1 = out + ((u64)(t0 + r1) * nheads + h) * HD + 2 * c;
#pragma unroll
            for (int n = 0; n < NO; n++) *(float2*)(o1 + 8 * n) = make_float2(o[n][2], o[n][3]);
        }
        __syncthreads();
        if (tid < FM_Q && !done[tid] && tseq[tid] == seg) done[tid] = 1;
        __syncthreads();
    }
}

#define ATTENTION_MMA(HD)                                                                            \
    extern "C" __global__ void __launch_bounds__(128) attention_mma##HD(                             \
        const float* q, const u16* kc, const u16* vc, float* out, int nheads, int nkv, int hd,       \
        int ntok, const int* tok_seq, const u32* tables, int tstride, int bs, int window,            \
        float scale) { /* hd == HD: attention_tiled's arguments */                                   \
        pdl_entry();                                                                                 \
        attention_mma_body<HD>(q, kc, vc, out, nheads, nkv, ntok, tok_seq, tables, tstride, bs,     \
                               window, scale);                                                       \
    }
ATTENTION_MMA(64)
ATTENTION_MMA(128)
