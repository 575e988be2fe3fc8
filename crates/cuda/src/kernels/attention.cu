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

extern "C" __global__ void __launch_bounds__(256) attention(
    const float* q, const u16* kc, const u16* vc, float* out, int nheads, int nkv, int hd,
    const int* tok_seq, const u32* tables, int tstride, int bs, int window, float scale,
    float* scratch, int max_n, i8* Xq, float2* Xd, int sm_scores) {
    pdl_entry();
    extern __shared__ float sm[];
    float* qs = sm;               // hd
    float* part = sm + hd;        // ATT_WARPS * hd
    __shared__ float red[32];
    int h = blockIdx.x, t = blockIdx.y;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int kh = h / (nheads / nkv);
    int seq = tok_seq[2 * t], pos = tok_seq[2 * t + 1];
    int lo = window > 0 ? max(0, pos + 1 - window) : 0;
    int n = pos + 1 - lo;
    int kvd = nkv * hd;
    int pairs = hd >> 1;
    const u32* table = tables + (u64)seq * tstride;
    const float* qr = q + ((u64)t * nheads + h) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = qr[d];
    __syncthreads();
    // Scores in shared memory when the runner sized it for them (sm_scores), else in
    // the global scratch row: a decode step's attention is a chain of dependent
    // passes over them, so their latency is the kernel's.
    float* sc = sm_scores ? sm + (1 + ATT_WARPS) * hd : scratch + ((u64)t * nheads + h) * max_n;
    float m = -3.0e38f;
#pragma unroll 2
    for (int j = w; j < n; j += ATT_WARPS) {
        int p = lo + j;
        u64 off = ((u64)table[p / bs] * bs + p % bs) * kvd + (u64)kh * hd;
        const u32* kr = (const u32*)(kc + off);
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_MAX_PAIRS; i++) {
            int d2 = lane + 32 * i;
            if (d2 < pairs) {
                u32 two = kr[d2];
                s += qs[2 * d2] * h2f((u16)(two & 0xffff)) + qs[2 * d2 + 1] * h2f((u16)(two >> 16));
            }
        }
        s = warp_sum(s) * scale;
        if (lane == 0) sc[j] = s;
        m = fmaxf(m, s);
    }
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
#pragma unroll 2
    for (int j = w; j < n; j += ATT_WARPS) {
        int p = lo + j;
        u64 off = ((u64)table[p / bs] * bs + p % bs) * kvd + (u64)kh * hd;
        const u32* vr = (const u32*)(vc + off);
        float pj = sc[j];
#pragma unroll
        for (int i = 0; i < ATT_MAX_PAIRS; i++) {
            int d2 = lane + 32 * i;
            if (d2 < pairs) {
                u32 two = vr[d2];
                acc[i][0] += pj * h2f((u16)(two & 0xffff));
                acc[i][1] += pj * h2f((u16)(two >> 16));
            }
        }
    }
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
#pragma unroll 2
    for (int j = j0 + w; j < j1; j += ATT_WARPS) {
        int p = lo + j;
        u64 off = ((u64)table[p / bs] * bs + p % bs) * kvd + (u64)kh * hd;
        const u32* kr = (const u32*)(kc + off);
        float sv = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_MAX_PAIRS; i++) {
            int d2 = lane + 32 * i;
            if (d2 < pairs) {
                u32 two = kr[d2];
                sv += qs[2 * d2] * h2f((u16)(two & 0xffff)) + qs[2 * d2 + 1] * h2f((u16)(two >> 16));
            }
        }
        sv = warp_sum(sv) * scale;
        if (lane == 0) sc[j] = sv;
        m = fmaxf(m, sv);
    }
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
#pragma unroll 2
    for (int j = j0 + w; j < j1; j += ATT_WARPS) {
        int p = lo + j;
        u64 off = ((u64)table[p / bs] * bs + p % bs) * kvd + (u64)kh * hd;
        const u32* vr = (const u32*)(vc + off);
        float pj = round_h(expf(sc[j] - M) * inv);
#pragma unroll
        for (int i = 0; i < ATT_MAX_PAIRS; i++) {
            int d2 = lane + 32 * i;
            if (d2 < pairs) {
                u32 two = vr[d2];
                acc[i][0] += pj * h2f((u16)(two & 0xffff));
                acc[i][1] += pj * h2f((u16)(two >> 16));
            }
        }
    }
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
