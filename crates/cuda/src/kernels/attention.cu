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
