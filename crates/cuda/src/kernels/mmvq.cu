// Decode GEMVs on int8 activations (dp4a). The activations of a step are quantized
// once per matrix input into 32-wide blocks ("q8_1": int8 values, an f32 scale d and
// d * sum(q)), then each weight block's integer dot products run on dp4a, four
// multiply-adds an instruction, instead of converting every weight to float.
// NT token rows share each weight load (batched decode of up to NT sequences).
// Twins: twin::quantize_q8_1 and twin::gemvq_row.

__device__ __forceinline__ int dp4a(int a, int b, int c) {
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
// Per-byte v - k for bytes 0..63 and k <= 64, without borrows between bytes: every
// byte is lifted above 128 first, so the subtraction cannot cross a byte.
__device__ __forceinline__ int sub_bytes(u32 v, u32 k4) {
    return (int)(((v | 0x80808080u) - k4) ^ 0x80808080u);
}
// scale_min_k4 on the 12 scale bytes held as three words.
__device__ __forceinline__ u32 byte_of(uint3 w, int k) {
    u32 v = k < 4 ? w.x : k < 8 ? w.y : w.z;
    return (v >> (8 * (k & 3))) & 0xFFu;
}
__device__ __forceinline__ void scale_min_k4_w(int j, uint3 w, int* sc, int* m) {
    if (j < 4) {
        *sc = (int)(byte_of(w, j) & 63);
        *m = (int)(byte_of(w, j + 4) & 63);
    } else {
        *sc = (int)((byte_of(w, j + 4) & 0xF) | ((byte_of(w, j - 4) >> 6) << 4));
        *m = (int)((byte_of(w, j + 4) >> 4) | ((byte_of(w, j) >> 6) << 4));
    }
}
// 16 bytes at a 2-byte aligned address as four words: five aligned loads, realigned.
// Reads up to 4 bytes past the run (callers stay inside their block).
__device__ __forceinline__ void ld16_2a(const u8* p, u32* out) {
    const u32* a = (const u32*)((u64)p & ~(u64)3);
    u32 sel = ((u64)p & 2) ? 0x5432u : 0x3210u;
    u32 w[5];
#pragma unroll
    for (int i = 0; i < 5; i++) w[i] = a[i];
#pragma unroll
    for (int i = 0; i < 4; i++) out[i] = __byte_perm(w[i], w[i + 1], sel);
}
// Two 16-bit loads as one word (blocks of 18 and 34 bytes are only 2-byte aligned).
__device__ __forceinline__ int ld32_2(const u8* p) {
    const u16* h = (const u16*)p;
    return (int)((u32)h[0] | ((u32)h[1] << 16));
}

// X (n floats, rows of a multiple of 32) -> Xq int8 and Xd (d, d * sum q) per 32-block.
// d = amax / 127, q = round-to-nearest-even(x / d). A warp is one block.
extern "C" __global__ void quantize_q8_1(const float* __restrict__ X, u64 n, i8* __restrict__ Xq,
                                         float2* __restrict__ Xd) {
    pdl_entry();
    // n and the stride are multiples of 32: whole warps take the same path.
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        q8_1_lane(X[i], i, Xq, Xd);
}

// One token row per 1024-thread block: x += rmsnorm(o) * pw (Gemma 3's post-norm; x += o
// when pw is null; nothing when o is null), then h = rmsnorm(x) * w, and h quantized
// to q8_1 as quantize_q8_1 does (when Xq is set). The residual add, the next norm and
// the next matrix input's quantization in one launch instead of three, with the row
// held in registers (ANQ_E values a thread, all loads issued up front: a decode step
// has one block per token, so the latency of each pass is the kernel's time). The
// arithmetic is norm_add's, rmsnorm's and quantize_q8_1's (squares summed in f64).
// n is a multiple of 32 and at most 1024 * ANQ_E.
#define ANQ_E 8
// 1 / rms of a row held ANQ_E values a thread (padding zeros), squares summed in f64 as
// rmsnorm does.
__device__ __forceinline__ float rms_scale_regs(const float* v, int n, float eps, double* sh) {
    double s = 0.0;
#pragma unroll
    for (int e = 0; e < ANQ_E; e++) s += (double)(v[e] * v[e]);
    s = block_sum_d(s, sh);
    float mean = (float)(s / (double)n);
    return 1.0f / sqrtf(mean + eps);
}
extern "C" __global__ void __launch_bounds__(1024) add_norm_q8(float* x, const float* o, const float* pw,
                                                           const float* w, float* h, int n, float eps,
                                                           i8* Xq, float2* Xd) {
    __shared__ double sh[32];
    u64 base = (u64)blockIdx.x * n;
    float xv[ANQ_E], ov[ANQ_E], pv[ANQ_E], wv[ANQ_E];
    // The norm weights are never written: loaded before the wait, while the previous
    // kernel drains (a decode step's add_norm is one block, a chain of latencies).
#pragma unroll
    for (int e = 0; e < ANQ_E; e++) {
        int i = threadIdx.x + e * blockDim.x;
        bool in = i < n;
        pv[e] = in && pw ? pw[i] : 0.0f;
        wv[e] = in ? w[i] : 0.0f;
    }
    pdl_entry();
#pragma unroll
    for (int e = 0; e < ANQ_E; e++) {
        int i = threadIdx.x + e * blockDim.x;
        bool in = i < n;
        xv[e] = in ? x[base + i] : 0.0f;
        ov[e] = in && o ? o[base + i] : 0.0f;
    }
    if (o) {
        if (pw) {
            float scale = rms_scale_regs(ov, n, eps, sh);
#pragma unroll
            for (int e = 0; e < ANQ_E; e++) xv[e] += ov[e] * scale * pv[e];
        } else {
#pragma unroll
            for (int e = 0; e < ANQ_E; e++) xv[e] += ov[e];
        }
#pragma unroll
        for (int e = 0; e < ANQ_E; e++) {
            int i = threadIdx.x + e * blockDim.x;
            if (i < n) x[base + i] = xv[e];
        }
    }
    float scale = rms_scale_regs(xv, n, eps, sh);
#pragma unroll
    for (int e = 0; e < ANQ_E; e++) {
        int i = threadIdx.x + e * blockDim.x;
        if (i < n) {
            float v = xv[e] * scale * wv[e];
            h[base + i] = v;
            if (Xq) q8_1_lane(v, base + i, Xq, Xd);
        }
    }
}

// add_norm_q8 over a thread-block cluster (sm_90+): the row is split over the
// cluster's gridDim.x CTAs (2, 4 or 8; n / gridDim.x a multiple of 32 and at most
// ANC_T * ANC_E), each holding its slice in registers, and the two sums of squares
// are added across the cluster through distributed shared memory (every CTA adds the
// CTAs' partial sums in rank order, so all see the same total). The single-block
// kernel is issue-bound on its one SM at decode (run 23: 6.2-6.7 us, 62% of that SM's
// issue slots for a 4096-wide row); here each SM does an eighth of the work. Same
// formulas as add_norm_q8 (squares summed in f64, then the f32 scale); only the order
// of the f64 additions differs. The runner checks it against add_norm_q8 at load.
// Twin: twin::add_norm_cluster.
#define ANC_T 256
#define ANC_E 4
__device__ __forceinline__ void cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}
// The f64 at `p` (this CTA's shared memory) in the shared memory of cluster CTA `rank`.
__device__ __forceinline__ double ld_cluster_f64(const double* p, u32 rank) {
    double v = 0.0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    u32 a, ra;
    asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(a), "r"(rank));
    asm volatile("ld.shared::cluster.f64 %0, [%1];" : "=d"(v) : "r"(ra) : "memory");
#endif
    return v;
}
// The cluster-wide sum of each thread's v: the CTA's sum lands in *slot, then every
// thread adds the cluster's slots in rank order.
__device__ __forceinline__ double cluster_sum_d(double v, double* sh, double* slot) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = warp_sum_d(v);
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0.0;
#pragma unroll
        for (int k = 0; k < ANC_T / 32; k++) s += sh[k];
        *slot = s;
    }
    cluster_sync();
    double s = 0.0;
    for (u32 r = 0; r < gridDim.x; r++) s += ld_cluster_f64(slot, r);
    return s;
}
extern "C" __global__ void __launch_bounds__(ANC_T) add_norm_q8c(float* x, const float* o, const float* pw,
                                                             const float* w, float* h, int n, float eps,
                                                             i8* Xq, float2* Xd) {
    __shared__ double sh[ANC_T / 32];
    __shared__ double slot[2];
    const int m = n / (int)gridDim.x, first = (int)blockIdx.x * m;
    const u64 base = (u64)blockIdx.y * n + first;
    float xv[ANC_E], ov[ANC_E], pv[ANC_E], wv[ANC_E];
#pragma unroll
    for (int e = 0; e < ANC_E; e++) {
        int i = threadIdx.x + e * ANC_T;
        bool in = i < m;
        pv[e] = in && pw ? pw[first + i] : 0.0f;
        wv[e] = in ? w[first + i] : 0.0f;
    }
    pdl_entry();
#pragma unroll
    for (int e = 0; e < ANC_E; e++) {
        int i = threadIdx.x + e * ANC_T;
        bool in = i < m;
        xv[e] = in ? x[base + i] : 0.0f;
        ov[e] = in && o ? o[base + i] : 0.0f;
    }
    if (o) {
        if (pw) {
            double s = 0.0;
#pragma unroll
            for (int e = 0; e < ANC_E; e++) s += (double)(ov[e] * ov[e]);
            s = cluster_sum_d(s, sh, &slot[0]);
            float scale = 1.0f / sqrtf((float)(s / (double)n) + eps);
#pragma unroll
            for (int e = 0; e < ANC_E; e++) xv[e] += ov[e] * scale * pv[e];
        } else {
#pragma unroll
            for (int e = 0; e < ANC_E; e++) xv[e] += ov[e];
        }
#pragma unroll
        for (int e = 0; e < ANC_E; e++) {
            int i = threadIdx.x + e * ANC_T;
            if (i < m) x[base + i] = xv[e];
        }
    }
    double s = 0.0;
#pragma unroll
    for (int e = 0; e < ANC_E; e++) s += (double)(xv[e] * xv[e]);
    s = cluster_sum_d(s, sh, &slot[1]);
    float scale = 1.0f / sqrtf((float)(s / (double)n) + eps);
#pragma unroll
    for (int e = 0; e < ANC_E; e++) {
        int i = threadIdx.x + e * ANC_T;
        if (i < m) {
            float v = xv[e] * scale * wv[e];
            h[base + i] = v;
            if (Xq) q8_1_lane(v, base + i, Xq, Xd);
        }
    }
    // No CTA leaves while another may still read its slots.
    cluster_sync();
}

// Activations quantized exactly as the CPU's fast path quantizes them (crates/kernels
// quants), so that a GPU GEMV multiplies the same integers as the CPU and only the
// float sums differ. blk 32, for Q4_0/Q5_0/Q8_0 weights, is ggml's q8_0: id = 127 /
// amax, q = round-half-even(x * id), d = amax / 127 rounded to f16. blk 256, for
// K-quant weights, is ggml's q8_K: max = the signed value of largest magnitude (the
// first on ties), iscale = -127 / max, q = min(127, round-half-even(iscale * x)),
// d = 1 / iscale. Written in the q8_1 layout above (per 32: d, d * sum q) so the
// dp4a GEMVs read it unchanged. One 256-thread block per 256 values; n is a multiple
// of blk. Twin: twin::quantize_cpu.
__device__ __forceinline__ int warp_min_i(int v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
extern "C" __global__ void __launch_bounds__(256) quantize_cpu(const float* __restrict__ X, u64 n, int blk,
                                                           i8* __restrict__ Xq,
                                                           float2* __restrict__ Xd) {
    pdl_entry();
    __shared__ float s_max[8];
    __shared__ int s_idx[8];
    u64 base = (u64)blockIdx.x * 256;
    u64 i = base + threadIdx.x;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    float x = i < n ? X[i] : 0.0f;
    float a = fabsf(x);
    float d;
    int q;
    if (blk == 256) {
        // n is a multiple of 256 here: every thread of the block is inside.
        float amax = warp_max(a);
        if (lane == 0) s_max[w] = amax;
        __syncthreads();
#pragma unroll
        for (int k = 0; k < 8; k++) amax = fmaxf(amax, s_max[k]);
        int first = warp_min_i(a == amax ? (int)threadIdx.x : 256);
        if (lane == 0) s_idx[w] = first;
        __syncthreads();
#pragma unroll
        for (int k = 0; k < 8; k++) first = min(first, s_idx[k]);
        if (amax == 0.0f) {
            d = 0.0f;
            q = 0;
        } else {
            float iscale = __fdiv_rn(-127.0f, X[base + first]);
            q = min(127, __float2int_rn(__fmul_rn(iscale, x)));
            d = __fdiv_rn(1.0f, iscale);
        }
    } else {
        // Warps are whole 32-blocks, inside or outside n together.
        float amax = warp_max(a);
        float id = amax != 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
        d = round_h(__fdiv_rn(amax, 127.0f));
        q = max(-128, min(127, __float2int_rn(__fmul_rn(x, id))));
    }
    if (i < n) {
        Xq[i] = (i8)q;
        int s = warp_sum_i(q);
        if (lane == 0) Xd[i >> 5] = make_float2(d, d * (float)s);
    }
}

// The quantized activations back as floats (q * d), for the matrix products that
// take f32 or f16 activations: they then see the CPU's rounding too.
extern "C" __global__ void dequant_q8x(const i8* __restrict__ Xq, const float2* __restrict__ Xd, u64 n,
                                       float* __restrict__ Y) {
    pdl_entry();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        Y[i] = (float)Xq[i] * Xd[i >> 5].x;
}

// The per-lane share of one row's dot products with NT token rows of int8
// activations, added into acc. The row's weight blocks are split over `parts` warps
// (warp `part` of them): the `gemvq` kernels give a row one warp (parts = 1), the
// `mvs`/`mvp` kernels four. Twin: twin::gemvq_row_split.
//
// K-quants: eight lanes per 256-weight block, four blocks per warp step. Lane k:
// quant bytes 16 (k % 2) .. +16 of chunk c = k / 2, i.e. 16 weights of sub-block 2c
// (low nibbles) and 16 of sub-block 2c + 1 (high nibbles). Per sub-block
// sum w x = d sc dx sum(q qx) - dmin m (dx sum qx); the even lane adds the min term
// from the activation block's stored sum. Q5_K adds the fifth bit from qh.
template <bool Q5, int NT>
__device__ __forceinline__ void dot_k4(const u8* __restrict__ row, int cols, const i8* __restrict__ Xq,
                                       const float2* __restrict__ Xd, int ntok, int t0, int lane,
                                       int part, int parts, float* acc) {
    const int BB = Q5 ? 176 : 144, QS = Q5 ? 48 : 16;
    int nb = cols >> 8, nq = cols >> 5;
    int k = lane & 7, c = k >> 1, l0 = (k & 1) * 16;
#pragma unroll(NT <= 2 ? 4 : 2)
    for (int b = (lane >> 3) + 4 * part; b < nb; b += 4 * parts) {
        const u8* blk = row + (u64)b * BB;
        uint4 q = *(const uint4*)(blk + QS + 32 * c + l0);
        u32 dm = *(const u32*)blk;
        // The 12 scale bytes as three aligned words (blocks are 16-byte aligned):
        // three loads instead of up to eight single bytes.
        uint3 sw = *(const uint3*)(blk + 4);
        int sc1, m1, sc2, m2;
        scale_min_k4_w(2 * c, sw, &sc1, &m1);
        scale_min_k4_w(2 * c + 1, sw, &sc2, &m2);
        u32 qq[4] = {q.x, q.y, q.z, q.w};
        int lo[4], hi[4];
        if (Q5) {
            uint4 h = *(const uint4*)(blk + 16 + l0);
            u32 hh[4] = {h.x, h.y, h.z, h.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                lo[i] = (int)((qq[i] & 0x0F0F0F0Fu) | (((hh[i] >> (2 * c)) & 0x01010101u) << 4));
                hi[i] = (int)(((qq[i] >> 4) & 0x0F0F0F0Fu) | (((hh[i] >> (2 * c + 1)) & 0x01010101u) << 4));
            }
        } else {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                lo[i] = (int)(qq[i] & 0x0F0F0F0Fu);
                hi[i] = (int)((qq[i] >> 4) & 0x0F0F0F0Fu);
            }
        }
        float d = h2f((u16)(dm & 0xffff)), dmin = h2f((u16)(dm >> 16));
        int qa = b * 8 + 2 * c;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t0 + t < ntok) {
                const i8* xr = Xq + (u64)(t0 + t) * cols;
                const float2* dr = Xd + (u64)(t0 + t) * nq;
                int4 xa = *(const int4*)(xr + 32 * qa + l0);
                int4 xb = *(const int4*)(xr + 32 * qa + 32 + l0);
                int sa = dp4a(lo[3], xa.w, dp4a(lo[2], xa.z, dp4a(lo[1], xa.y, dp4a(lo[0], xa.x, 0))));
                int sb = dp4a(hi[3], xb.w, dp4a(hi[2], xb.z, dp4a(hi[1], xb.y, dp4a(hi[0], xb.x, 0))));
                float2 da = dr[qa], db = dr[qa + 1];
                float v = d * ((float)sc1 * da.x * (float)sa + (float)sc2 * db.x * (float)sb);
                if (l0 == 0) v -= dmin * ((float)m1 * da.y + (float)m2 * db.y);
                acc[t] += v;
            }
        }
    }
}

// Q6_K: eight lanes per 210-byte block (the wide kernel's split: lane k takes half
// h = k / 4, quant bytes 16 (k % 2) .. +16 of row 32 ((k / 2) % 2) of that half; low
// nibbles are sub-row kp, high nibbles sub-row kp + 2). The 6-bit values minus 32 fit
// a signed byte; one scale per 16 weights.
template <int NT>
__device__ __forceinline__ void dot_q6k(const u8* __restrict__ row, int cols, const i8* __restrict__ Xq,
                                        const float2* __restrict__ Xd, int ntok, int t0, int lane,
                                        int part, int parts, float* acc) {
    int nb = cols >> 8, nq = cols >> 5;
    int k = lane & 7, h = k >> 2, kp = (k >> 1) & 1, ls = k & 1;
#pragma unroll(NT <= 2 ? 4 : 2)
    for (int b = (lane >> 3) + 4 * part; b < nb; b += 4 * parts) {
        const u8* blk = row + (u64)b * 210;
        const u8* qlp = blk + 64 * h + 32 * kp + 16 * ls;
        const u8* qhp = blk + 128 + 32 * h + 16 * ls;
        // 210-byte blocks are 2-byte aligned: read each 16-byte run as five aligned
        // words and realign them with byte permutes (ten loads instead of sixteen).
        u32 qlw[4], qhw[4];
        ld16_2a(qlp, qlw);
        ld16_2a(qhp, qhw);
        int va[4], vb[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            u32 ql = qlw[i], qh = qhw[i];
            va[i] = sub_bytes((ql & 0x0F0F0F0Fu) | (((qh >> (2 * kp)) & 0x03030303u) << 4), 0x20202020u);
            vb[i] = sub_bytes(((ql >> 4) & 0x0F0F0F0Fu) | (((qh >> (2 * kp + 4)) & 0x03030303u) << 4),
                              0x20202020u);
        }
        float d = h2f(ld16(blk + 208));
        float sa = (float)(i8)blk[192 + 8 * h + 2 * kp + ls];
        float sb = (float)(i8)blk[192 + 8 * h + 2 * (kp + 2) + ls];
        int qa = b * 8 + 4 * h + kp;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t0 + t < ntok) {
                const i8* xr = Xq + (u64)(t0 + t) * cols;
                const float2* dr = Xd + (u64)(t0 + t) * nq;
                int4 xa = *(const int4*)(xr + 32 * qa + 16 * ls);
                int4 xb = *(const int4*)(xr + 32 * (qa + 2) + 16 * ls);
                int ia = dp4a(va[3], xa.w, dp4a(va[2], xa.z, dp4a(va[1], xa.y, dp4a(va[0], xa.x, 0))));
                int ib = dp4a(vb[3], xb.w, dp4a(vb[2], xb.z, dp4a(vb[1], xb.y, dp4a(vb[0], xb.x, 0))));
                acc[t] += d * (sa * dr[qa].x * (float)ia + sb * dr[qa + 2].x * (float)ib);
            }
        }
    }
}


// The five bits of Q5_0's weights 4i..4i+4 (qh bits 4i..4i+4) as bit 4 of four bytes.
__device__ __forceinline__ u32 spread_bits4(u32 h) {
    return ((h & 1u) | ((h & 2u) << 7) | ((h & 4u) << 14) | ((h & 8u) << 21)) << 4;
}

// Q8_0, Q4_0 and Q5_0 (32-weight blocks, 2-byte aligned): four lanes per block, eight
// blocks per warp step. Q8_0 lane p: quants 8p .. 8p + 8. Q4_0/Q5_0 lane p: quant
// bytes 4p .. +4, i.e. weights 4p .. 4p + 4 (low nibbles) and 16 + 4p .. (high
// nibbles); Q5_0 takes their fifth bits from qh (bits 4p.. and 16 + 4p..), minus 16.
template <int TY, int NT>
__device__ __forceinline__ void dot_32(const u8* __restrict__ row, int cols, const i8* __restrict__ Xq,
                                       const float2* __restrict__ Xd, int ntok, int t0, int lane,
                                       int part, int parts, float* acc) {
    const int BB = TY == TY_Q4_0 ? 18 : TY == TY_Q5_0 ? 22 : 34;
    int nb = cols >> 5;
    int p = lane & 3;
#pragma unroll(NT <= 2 ? 4 : 2)
    for (int b = (lane >> 2) + 8 * part; b < nb; b += 8 * parts) {
        const u8* blk = row + (u64)b * BB;
        float d = h2f(ld16(blk));
        int w0, w1, o0, o1;
        if (TY == TY_Q4_0) {
            u32 q = (u32)ld32_2(blk + 2 + 4 * p);
            w0 = sub_bytes(q & 0x0F0F0F0Fu, 0x08080808u);
            w1 = sub_bytes((q >> 4) & 0x0F0F0F0Fu, 0x08080808u);
            o0 = 4 * p;
            o1 = 16 + 4 * p;
        } else if (TY == TY_Q5_0) {
            u32 qh = (u32)ld32_2(blk + 2), q = (u32)ld32_2(blk + 6 + 4 * p);
            w0 = sub_bytes((q & 0x0F0F0F0Fu) | spread_bits4((qh >> (4 * p)) & 0xFu), 0x10101010u);
            w1 = sub_bytes(((q >> 4) & 0x0F0F0F0Fu) | spread_bits4((qh >> (16 + 4 * p)) & 0xFu),
                           0x10101010u);
            o0 = 4 * p;
            o1 = 16 + 4 * p;
        } else {
            w0 = ld32_2(blk + 2 + 8 * p);
            w1 = ld32_2(blk + 6 + 8 * p);
            o0 = 8 * p;
            o1 = 8 * p + 4;
        }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t0 + t < ntok) {
                const i8* xr = Xq + (u64)(t0 + t) * cols + 32 * b;
                int s = dp4a(w1, *(const int*)(xr + o1), dp4a(w0, *(const int*)(xr + o0), 0));
                acc[t] += d * Xd[(u64)(t0 + t) * nb + b].x * (float)s;
            }
        }
    }
}


// Deferred RMSNorm (decode steps of models without post-norms). rmsnorm(x) * w =
// (x * w) / rms(x), and a row's int8 blocks do not depend on its scale. So the
// residual add quantizes x * w, with each 32-block's sum of squares of x beside it
// (`add_q8s`: every warp a 32-block of its own, no reduction across the row, where
// add_norm_q8c needs two cluster-wide sums in a chain), and the GEMVs reading it
// (Q, K, V; gate and up) multiply their sums by 1 / rms(x), which they add up from
// those d / 32 sums while their weights stream in. The row's sum of squares is added
// in one fixed order whatever the batch (each lane's SSK partial sums in order, then
// the warp's butterfly), so a token's scale, and its outputs, do not change with the
// batch it runs in. (Quantizing a GEMV's own outputs in its epilogue instead, the
// last block of each 32-row group doing it, cost a fence and an atomic round trip a
// block: runs 29 and 33 measured gate/up 50% slower.) Twins: twin::deferred_norm_q8
// and twin::deferred_scale.
#define SSK 4
// A lane's share of the per-32 sums of squares of one token row (ng of them).
__device__ __forceinline__ void ss_load(float (&v)[SSK], const float* Xs, int ng, int lane) {
#pragma unroll
    for (int k = 0; k < SSK; k++) {
        int i = lane + 32 * k;
        v[k] = i < ng ? Xs[i] : 0.0f;
    }
}
// 1 / rms of the row of n values whose sums of squares are Xs[0..ng] (v: ss_load's).
__device__ __forceinline__ float ss_scale(const float (&v)[SSK], const float* Xs, int ng, int n, float eps,
                                          int lane) {
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < SSK; k++) s += v[k];
    for (int i = lane + 32 * SSK; i < ng; i += 32) s += Xs[i];
    s = warp_sum(s);
    return 1.0f / sqrtf(s / (float)n + eps);
}
// The output scales of a block's tokens for a deferred-norm input (Xs): warp w adds
// up the sums of squares of tokens t0 + w, t0 + w + NW, ... into scl[t], 1 / rms of
// token t0 + t's row. They are asked for right after the PDL wait and added after the
// row loop: at batch 1 in registers (v, loaded by hoisted_row), at larger batches
// copied to shared memory by cp.async (buf), so they cost the row loop no registers.
// A shared-memory pointer as the 32-bit address PTX's shared-memory operands take.
__device__ __forceinline__ u32 smem_u32(const void* p) { return (u32)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void cp_async4(float* dst, const float* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(smem_u32(dst)), "l"(src) : "memory");
#else
    *dst = *src;
#endif
}
__device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}
template <int NT, int NW>
struct RowScales {
    static constexpr int NU = (NT + NW - 1) / NW;
    float v[SSK];                 // NT == 1
    float (*buf)[32 * SSK];       // NT > 1: [token][k * 32 + lane]
    __device__ __forceinline__ void load(const float* Xs, int cols, int t0, int ntok, int warp, int lane) {
        if (!Xs) return;
        const int ng = cols >> 5;
#pragma unroll
        for (int u = 0; u < NU; u++) {
            int t = warp + u * NW;
            if (t >= NT || t0 + t >= ntok) continue;
            const float* x = Xs + (u64)(t0 + t) * ng;
            if (NT == 1) {
                ss_load(v, x, ng, lane);
            } else {
#pragma unroll
                for (int k = 0; k < SSK; k++) {
                    int i = lane + 32 * k;
                    if (i < ng) cp_async4(&buf[t][k * 32 + lane], x + i);
                    else buf[t][k * 32 + lane] = 0.0f;
                }
            }
        }
    }
    __device__ __forceinline__ void store(float* scl, const float* Xs, int cols, float eps, int t0, int ntok,
                                          int warp, int lane) {
        if (!Xs) return;
        const int ng = cols >> 5;
        if (NT > 1) cp_async_wait_all(); // each lane reads back only its own copies
#pragma unroll
        for (int u = 0; u < NU; u++) {
            int t = warp + u * NW;
            if (t >= NT || t0 + t >= ntok) continue;
            if (NT > 1) {
#pragma unroll
                for (int k = 0; k < SSK; k++) v[k] = buf[t][k * 32 + lane];
            }
            float sc = ss_scale(v, Xs + (u64)(t0 + t) * ng, ng, cols, eps, lane);
            if (lane == 0) scl[t] = sc;
        }
    }
};
// x += o (o null: x as it is), then x * w quantized as quantize_q8_1 does, and per
// 32-block the sum of squares of x into Xs. A warp a 32-block; grid (n / 256, tokens).
extern "C" __global__ void __launch_bounds__(256) add_q8s(float* x, const float* o, const float* w, int n,
                                                       i8* Xq, float2* Xd, float* Xs) {
    const int c = blockIdx.x * 256 + threadIdx.x;
    const bool in = c < n; // whole warps (n % 32 == 0)
    const float wv = in ? w[c] : 0.0f; // never written: loaded before the wait
    pdl_entry();
    if (!in) return;
    const u64 i = (u64)blockIdx.y * n + c;
    float xv = x[i];
    if (o) {
        xv += o[i];
        x[i] = xv;
    }
    q8_1_lane(xv * wv, i, Xq, Xd);
    float s = warp_sum(xv * xv);
    if ((threadIdx.x & 31) == 0) Xs[i >> 5] = s;
}
// The two parameters every `mvs`/`mvp` kernel ends with: the input's per-32 sums of
// squares Xs (null: the input is normed already) and the norm's eps.
#define XS_PARAMS const float *Xs, float eps

// Batch-1 rows with every load issued before its use (Q4_K and Q6_K, the types of
// Q4_K_M files). In dot_k4 / dot_q6k each step's weight loads wait behind the
// previous step's exit test, so a warp has one step (576 bytes) in flight and a row is
// a chain of weight and activation round trips (run 23/28: 13 of every 20 cycles
// stalled on L1TEX, a 4096-wide Q+K at 0.9-1.3 TB/s). Here a warp holds HK steps of
// weights in registers, loaded at clamped block indices so no load waits on a test;
// the first chunk is loaded before pdl_entry() (weights are never written), so it
// arrives while the previous kernel drains. Lane mapping, per-lane arithmetic and the
// order of the additions are dot_k4's and dot_q6k's: the sums are the same bits.
// Measured (docs/GPU.md run 30, H100): `mvs` 8.6% faster, `mvp` 4% slower (115
// registers: two 256-thread blocks an SM instead of four), batch-1 decode +0.2-0.5%.
//
// Steps a warp holds in flight (HANGAR_CUDA_DEFINES=HOIST2: two, fewer registers).
#ifdef HOIST2
#define HK 2
#else
#define HK 4
#endif
struct StepQ4K {
    uint4 q;
    uint4 hd; // d and dmin, then the 12 scale bytes (blocks are 16-byte aligned)
    __device__ __forceinline__ void load(const u8* __restrict__ row, int b, int lane) {
        int k = lane & 7;
        const u8* blk = row + (u64)b * 144;
        q = *(const uint4*)(blk + 16 + 32 * (k >> 1) + (k & 1) * 16);
        hd = *(const uint4*)blk;
    }
    struct Act {
        int4 xa, xb;
        float4 dd; // Xd[qa] and Xd[qa + 1] (qa is even)
    };
    __device__ __forceinline__ static void act(Act& a, const i8* __restrict__ xr, const float2* __restrict__ dr,
                                               int b, int lane) {
        int k = lane & 7, qa = b * 8 + 2 * (k >> 1), l0 = (k & 1) * 16;
        a.xa = *(const int4*)(xr + 32 * qa + l0);
        a.xb = *(const int4*)(xr + 32 * qa + 32 + l0);
        a.dd = *(const float4*)(dr + qa);
    }
    // As act, from the activations staged in lane order (stream_body): lane k's two
    // 16-byte runs of block b at 16 k and 128 + 16 k, so a quarter-warp reads 128
    // contiguous bytes (act's offsets put lanes k and k + 4 on the same banks).
    __device__ __forceinline__ static void act_lanes(Act& a, const i8* __restrict__ xs,
                                                     const float2* __restrict__ dr, int b, int lane) {
        int k = lane & 7, qa = b * 8 + 2 * (k >> 1);
        a.xa = *(const int4*)(xs + 256 * b + 16 * k);
        a.xb = *(const int4*)(xs + 256 * b + 128 + 16 * k);
        a.dd = *(const float4*)(dr + qa);
    }
    // Where destination run d (0..15) of a block staged in lane order comes from: d < 8
    // is lane d's first run (act's xa), d >= 8 lane d - 8's second (xb).
    __device__ __forceinline__ static int lane_run_src(int d) {
        int k = d & 7;
        return 64 * (k >> 1) + 32 * (d >> 3) + 16 * (k & 1);
    }
    __device__ __forceinline__ float use(const Act& a, int lane) const {
        int k = lane & 7, c = k >> 1;
        // scale_min_k4 of sub-blocks 2c and 2c + 1 as byte pairs, without a branch on
        // the lane: both encodings computed, one selected (same values).
        int sh = 16 * (c & 1);
        u32 x = hd.y >> sh, y = hd.z >> sh, z = hd.w >> sh;
        u32 sp = c < 2 ? (x & 0x3f3fu) : ((z & 0x0f0fu) | ((x >> 2) & 0x3030u));
        u32 mp = c < 2 ? (y & 0x3f3fu) : (((z >> 4) & 0x0f0fu) | ((y >> 2) & 0x3030u));
        int sc1 = (int)(sp & 0xff), sc2 = (int)((sp >> 8) & 0xff);
        int m1 = (int)(mp & 0xff), m2 = (int)((mp >> 8) & 0xff);
        u32 qq[4] = {q.x, q.y, q.z, q.w};
        int lo[4], hi[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            lo[i] = (int)(qq[i] & 0x0F0F0F0Fu);
            hi[i] = (int)((qq[i] >> 4) & 0x0F0F0F0Fu);
        }
        float d = h2f((u16)(hd.x & 0xffff)), dmin = h2f((u16)(hd.x >> 16));
        int sa = dp4a(lo[3], a.xa.w, dp4a(lo[2], a.xa.z, dp4a(lo[1], a.xa.y, dp4a(lo[0], a.xa.x, 0))));
        int sb = dp4a(hi[3], a.xb.w, dp4a(hi[2], a.xb.z, dp4a(hi[1], a.xb.y, dp4a(hi[0], a.xb.x, 0))));
        float v = d * ((float)sc1 * a.dd.x * (float)sa + (float)sc2 * a.dd.z * (float)sb);
        if ((k & 1) == 0) v -= dmin * ((float)m1 * a.dd.y + (float)m2 * a.dd.w);
        return v;
    }
};
struct StepQ6K {
    u32 ql[5], qh[5];
    u16 sab, d;
    u32 al; // bit 0: the ql run starts 2 bytes past a word, bit 1: the qh run

    __device__ __forceinline__ void load(const u8* __restrict__ row, int b, int lane) {
        int k = lane & 7, h = k >> 2, kp = (k >> 1) & 1, ls = k & 1;
        const u8* blk = row + (u64)b * 210;
        const u8* pa = blk + 64 * h + 32 * kp + 16 * ls;
        const u8* pc = blk + 128 + 32 * h + 16 * ls;
        al = (u32)(((u64)pa >> 1) & 1) | (u32)((u64)pc & 2);
        // Word-aligned by pointer arithmetic (not through an integer), so the compiler
        // keeps these global loads (LDG) rather than generic ones.
        const u32* a = (const u32*)(pa - ((u64)pa & 3));
        const u32* c = (const u32*)(pc - ((u64)pc & 3));
#pragma unroll
        for (int i = 0; i < 5; i++) {
            ql[i] = a[i];
            qh[i] = c[i];
        }
        // The two scale bytes (sub-rows kp and kp + 2, column half ls), 4 bytes apart.
        sab = (u16)blk[192 + 8 * h + 2 * kp + ls] | ((u16)blk[192 + 8 * h + 2 * (kp + 2) + ls] << 8);
        d = ld16(blk + 208);
    }
    struct Act {
        int4 xa, xb;
        float da, db;
    };
    __device__ __forceinline__ static void act(Act& a, const i8* __restrict__ xr, const float2* __restrict__ dr,
                                               int b, int lane) {
        int k = lane & 7, h = k >> 2, kp = (k >> 1) & 1, ls = k & 1, qa = b * 8 + 4 * h + kp;
        a.xa = *(const int4*)(xr + 32 * qa + 16 * ls);
        a.xb = *(const int4*)(xr + 32 * (qa + 2) + 16 * ls);
        a.da = dr[qa].x;
        a.db = dr[qa + 2].x;
    }
    // As StepQ4K::act_lanes: lane k's runs at 16 k and 128 + 16 k of block b.
    __device__ __forceinline__ static void act_lanes(Act& a, const i8* __restrict__ xs,
                                                     const float2* __restrict__ dr, int b, int lane) {
        int k = lane & 7, h = k >> 2, kp = (k >> 1) & 1, qa = b * 8 + 4 * h + kp;
        a.xa = *(const int4*)(xs + 256 * b + 16 * k);
        a.xb = *(const int4*)(xs + 256 * b + 128 + 16 * k);
        a.da = dr[qa].x;
        a.db = dr[qa + 2].x;
    }
    __device__ __forceinline__ static int lane_run_src(int d) {
        int k = d & 7;
        return 128 * (k >> 2) + 64 * (d >> 3) + 32 * ((k >> 1) & 1) + 16 * (k & 1);
    }
    __device__ __forceinline__ float use(const Act& a, int lane) const {
        int kp = ((lane & 7) >> 1) & 1;
        // The realignment of ld16_2a, on the words loaded ahead.
        u32 sel1 = (al & 1) ? 0x5432u : 0x3210u, sel2 = (al & 2) ? 0x5432u : 0x3210u;
        int va[4], vb[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            u32 l = __byte_perm(ql[i], ql[i + 1], sel1), hh = __byte_perm(qh[i], qh[i + 1], sel2);
            va[i] = sub_bytes((l & 0x0F0F0F0Fu) | (((hh >> (2 * kp)) & 0x03030303u) << 4), 0x20202020u);
            vb[i] = sub_bytes(((l >> 4) & 0x0F0F0F0Fu) | (((hh >> (2 * kp + 4)) & 0x03030303u) << 4),
                              0x20202020u);
        }
        float dd = h2f(d);
        float sa = (float)(i8)(sab & 0xff), sb = (float)(i8)(sab >> 8);
        int ia = dp4a(va[3], a.xa.w, dp4a(va[2], a.xa.z, dp4a(va[1], a.xa.y, dp4a(va[0], a.xa.x, 0))));
        int ib = dp4a(vb[3], a.xb.w, dp4a(vb[2], a.xb.z, dp4a(vb[1], a.xb.y, dp4a(vb[0], a.xb.x, 0))));
        return dd * (sa * a.da * (float)ia + sb * a.db * (float)ib);
    }
};
// A lane's blocks are b0, b0 + stride, ... (b0 = lane / 8 + 4 part, stride 4 parts, as
// dot_k4). `pre` loads the first chunk; `run` (after pdl_entry) adds every step in
// order, loading each later chunk before it is used.
template <class S>
__device__ __forceinline__ void hoist_pre(S (&w)[HK], const u8* __restrict__ row, int nb, int b0, int stride,
                                          int lane) {
#pragma unroll
    for (int u = 0; u < HK; u++) w[u].load(row, min(b0 + u * stride, nb - 1), lane);
}
template <class S>
__device__ __forceinline__ float hoist_run(S (&w)[HK], const u8* __restrict__ row, int nb, int b0, int stride,
                                           int lane, const i8* __restrict__ xr, const float2* __restrict__ dr) {
    float acc = 0.0f;
    int first = b0 - (lane >> 3); // the warp's first block (warp-uniform)
    for (int i = 0;; i += HK) {
        typename S::Act a[HK];
#pragma unroll
        for (int u = 0; u < HK; u++) S::act(a[u], xr, dr, min(b0 + (i + u) * stride, nb - 1), lane);
#pragma unroll
        for (int u = 0; u < HK; u++)
            if (b0 + (i + u) * stride < nb) acc += w[u].use(a[u], lane);
        if (first + (i + HK) * stride >= nb) break;
#pragma unroll
        for (int u = 0; u < HK; u++) w[u].load(row, min(b0 + (i + HK + u) * stride, nb - 1), lane);
    }
    return acc;
}
// Whether a row of type TY at batch NT takes the hoisted path (HANGAR_CUDA_DEFINES=
// NO_HOIST keeps the loop of dot_k4 / dot_q6k everywhere, for an A/B).
#ifdef NO_HOIST
#define HOISTED(TY, NT) false
#else
#define HOISTED(TY, NT) ((NT) == 1 && ((TY) == TY_Q4_K || (TY) == TY_Q6_K))
#endif
// `mvp` (gate + up) separately: HOIST_MVS_ONLY keeps its old loop (run 30: hoisting
// made `mvp` 4% slower and `mvs` 8.6% faster; this pairing is the next A/B).
#ifdef HOIST_MVS_ONLY
#define MVP_HOISTED(TY, NT) false
#else
#define MVP_HOISTED(TY, NT) HOISTED(TY, NT)
#endif
template <int TY>
struct HoistStep {
    typedef StepQ4K T;
};
template <>
struct HoistStep<TY_Q6_K> {
    typedef StepQ6K T;
};
// One warp's share (part of parts) of a hoisted row's dot product with token row t0,
// pdl_entry() included: the first chunk (and, for longer rows, an L2 prefetch of the
// rest) is asked for before the wait. Rows with `valid` false only wait.
template <int TY>
__device__ __forceinline__ float hoisted_row(const u8* __restrict__ row, u64 rb, bool valid, int cols,
                                             const i8* __restrict__ Xq, const float2* __restrict__ Xd,
                                             int t0, int ntok, int lane, int part, int parts,
                                             const float* Xs, float (&ssv)[SSK]) {
    typedef typename HoistStep<TY>::T S;
    S w[HK];
    int nb = cols >> 8, b0 = (lane >> 3) + 4 * part;
    if (valid) {
        hoist_pre(w, row, nb, b0, 4 * parts, lane);
        // (Rows whose blocks all come in the first chunk need no prefetch.)
        if (nb > HK * 4 * parts) prefetch_row_l2(row, rb, lane, part, parts);
    }
    pdl_entry();
    if (Xs) ss_load(ssv, Xs + (u64)t0 * (cols >> 5), cols >> 5, lane);
    if (!valid || t0 >= ntok) return 0.0f;
    return hoist_run(w, row, nb, b0, 4 * parts, lane, Xq + (u64)t0 * cols, Xd + (u64)t0 * (cols >> 5));
}

template <int TY, int NT>
__device__ __forceinline__ void dot_row(const u8* row, int cols, const i8* Xq, const float2* Xd,
                                        int ntok, int t0, int lane, int part, int parts, float* acc) {
    if (TY == TY_Q4_K) dot_k4<false, NT>(row, cols, Xq, Xd, ntok, t0, lane, part, parts, acc);
    else if (TY == TY_Q5_K) dot_k4<true, NT>(row, cols, Xq, Xd, ntok, t0, lane, part, parts, acc);
    else if (TY == TY_Q6_K) dot_q6k<NT>(row, cols, Xq, Xd, ntok, t0, lane, part, parts, acc);
    else dot_32<TY, NT>(row, cols, Xq, Xd, ntok, t0, lane, part, parts, acc);
}

// One warp per row, four rows per 128-thread block.
template <int TY, int NT>
__device__ __forceinline__ void gemvq_warp(const u8* __restrict__ W, u64 rb, int rows, int cols,
                                           const i8* __restrict__ Xq, const float2* __restrict__ Xd,
                                           int ntok, float* __restrict__ Y) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int r = blockIdx.x * (blockDim.x >> 5) + warp;
    if (r >= rows) return;
    if (blockIdx.y == 0) prefetch_row_l2(W + (u64)r * rb, rb, lane, 0, 1);
    pdl_entry();
    int t0 = blockIdx.y * NT;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    dot_row<TY, NT>(W + (u64)r * rb, cols, Xq, Xd, ntok, t0, lane, 0, 1, acc);
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float s = warp_sum(acc[t]);
        if (lane == 0 && t0 + t < ntok) Y[(u64)(t0 + t) * rows + r] = s;
    }
}

// The `mvs`/`mvp` kernels: four warps a block, each row's weight blocks split over
// `parts` (1, 2 or 4) warps, so a block computes 4 / parts rows: with 4 parts a row's
// loads are all in flight at once and a small matrix still fills the GPU. Warp w
// takes row w / parts of the block's rows, part w % parts. After the lanes' butterfly
// each warp's sum goes to red[w][t]; thread j * NT + t then adds row j's parts in
// warp order (twin::gemvq_row_split).
template <int NT>
__device__ __forceinline__ float sum_parts(const float (*red)[8], int j, int t, int parts) {
    float v = 0.0f;
    for (int p = 0; p < parts; p++) v += red[j * parts + p][t];
    return v;
}

// `mvs`: up to three matrices of one type that share the input (Q, K and V in one
// launch): global row g < rows0 is row g of W0, then W1's rows, then W2's.
template <int TY, int NT>
__device__ __forceinline__ void mvs_body(const u8* W0, u64 rb0, int rows0, float* Y0, const u8* W1,
                                         u64 rb1, int rows1, float* Y1, const u8* W2, u64 rb2,
                                         int rows2, float* Y2, int cols, const i8* Xq,
                                         const float2* Xd, int ntok, int parts, XS_PARAMS) {
    __shared__ float red[4][8];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int rpb = 4 / parts;
    int t0 = blockIdx.y * NT;
    // The row of this warp (warp-uniform), and of thread j * NT + t's output.
    int seg = 0;
    int r = blockIdx.x * rpb + warp / parts;
    if (r >= rows0) {
        r -= rows0;
        seg = 1;
        if (r >= rows1) {
            r -= rows1;
            seg = r < rows2 ? 2 : 3;
        }
    }
    const u8* W = seg == 0 ? W0 : seg == 1 ? W1 : W2;
    u64 rb = seg == 0 ? rb0 : seg == 1 ? rb1 : rb2;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    __shared__ float scl[8];
    __shared__ float ssb[NT > 1 ? NT : 1][32 * SSK];
    RowScales<NT, 4> rs;
    rs.buf = ssb;
    if constexpr (HOISTED(TY, NT)) {
        // (Batch 1: only warp 0 has a token to load.)
        acc[0] = hoisted_row<TY>(W + (u64)r * rb, rb, seg < 3, cols, Xq, Xd, t0, ntok, lane, warp % parts, parts,
                                 warp == 0 ? Xs : nullptr, rs.v);
    } else {
        if (seg < 3 && blockIdx.y == 0) prefetch_row_l2(W + (u64)r * rb, rb, lane, warp % parts, parts);
        pdl_entry();
        rs.load(Xs, cols, t0, ntok, warp, lane);
        if (seg < 3)
            dot_row<TY, NT>(W + (u64)r * rb, cols, Xq, Xd, ntok, t0, lane, warp % parts, parts, acc);
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float v = warp_sum(acc[t]);
        if (lane == 0) red[warp][t] = v;
    }
    rs.store(scl, Xs, cols, eps, t0, ntok, warp, lane);
    __syncthreads();
    int j = threadIdx.x / NT, t = threadIdx.x % NT;
    const float sc = Xs && t0 + t < ntok ? scl[t] : 1.0f;
    if (j < rpb && t0 + t < ntok) {
        int g = blockIdx.x * rpb + j;
        float* Y = nullptr;
        int rows = 0;
        if (g < rows0) {
            Y = Y0; rows = rows0;
        } else if (g - rows0 < rows1) {
            g -= rows0; Y = Y1; rows = rows1;
        } else if (g - rows0 - rows1 < rows2) {
            g -= rows0 + rows1; Y = Y2; rows = rows2;
        }
        // (Times 1 without Xs: the same bits as before.)
        if (Y) Y[(u64)(t0 + t) * rows + g] = sum_parts<NT>(red, j, t, parts) * sc;
    }
}

// `mvp`: gate and up of the same rows (eight warps: 0-3 on gate rows, 4-7 on the up
// rows, each half split as in `mvs`), written as act(gate) * up (act 1: SiLU,
// 2: GELU-tanh as gelu_mul), so the activation kernel's pass disappears.
template <int TY, int NT>
__device__ __forceinline__ void mvp_body(const u8* Wg, const u8* Wu, u64 rb, int rows, int cols,
                                         const i8* Xq, const float2* Xd, int ntok, int act,
                                         int parts, float* Y, XS_PARAMS) {
    __shared__ float red[8][8];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int half = warp >> 2, w4 = warp & 3;
    int rpb = 4 / parts;
    int t0 = blockIdx.y * NT;
    int r = blockIdx.x * rpb + w4 / parts;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    __shared__ float scl[8];
    __shared__ float ssb[NT > 1 ? NT : 1][32 * SSK];
    RowScales<NT, 8> rs;
    rs.buf = ssb;
    if constexpr (MVP_HOISTED(TY, NT)) {
        acc[0] = hoisted_row<TY>((half ? Wu : Wg) + (u64)r * rb, rb, r < rows, cols, Xq, Xd, t0, ntok, lane,
                                 w4 % parts, parts, warp == 0 ? Xs : nullptr, rs.v);
    } else {
        if (r < rows && blockIdx.y == 0)
            prefetch_row_l2((half ? Wu : Wg) + (u64)r * rb, rb, lane, w4 % parts, parts);
        pdl_entry();
        rs.load(Xs, cols, t0, ntok, warp, lane);
        if (r < rows)
            dot_row<TY, NT>((half ? Wu : Wg) + (u64)r * rb, cols, Xq, Xd, ntok, t0, lane, w4 % parts, parts, acc);
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float v = warp_sum(acc[t]);
        if (lane == 0) red[warp][t] = v;
    }
    rs.store(scl, Xs, cols, eps, t0, ntok, warp, lane);
    __syncthreads();
    int j = threadIdx.x / NT, t = threadIdx.x % NT;
    int g = blockIdx.x * rpb + j;
    const float sc = Xs && t0 + t < ntok ? scl[t] : 1.0f;
    if (j < rpb && t0 + t < ntok && g < rows) {
        float gv = sum_parts<NT>(red, j, t, parts) * sc;
        float uv = sum_parts<NT>(red + 4, j, t, parts) * sc;
        Y[(u64)(t0 + t) * rows + g] = act == 2 ? gelu_times(gv, uv) : silu_times(gv, uv);
    }
}


// Streamed batch-1 GEMVs (`mvst`/`mvpt`, Q4_K and Q6_K, sm_90+). The hoisted kernels
// keep a block's bytes in flight in registers (111-128 a thread): an SM holds 16 warps
// and about 37 KB of loads, and the DRAM sits at 46-54% of its bandwidth (ncu, runs 28
// and 35), with every block a latency chain of issue, wait, compute and exit. Here a
// persistent grid (two CTAs an SM by default) takes a contiguous run of rows each, and
// one producer thread keeps a ring of stages full with the copy engine (cp.async.bulk,
// each stage's mbarrier counting its bytes), so an SM has 100-200 KB of weights in
// flight whatever the registers. The consumer warps (eight by default) take a row each
// of a stage (one row per warp, up to STK weight blocks of each; wider rows take
// several stages) and hand the stage back through its `empty` barrier. The activations
// are staged in shared memory once a CTA, in lane order (no bank conflicts). A lane's
// blocks, its arithmetic and the order of its sums are dot_k4's / dot_q6k's (lane / 8
// + 4 i, in order, across stages), then the same butterfly and scale: the outputs are
// mvs1's and mvp1's bits, so a token's results do not change with the batch it runs
// in. Runs 39-41 (H100): 8B batch-1 decode +7-9% over the hoisted kernels; gate/up
// 30.8 against 38.3 us, bound by the consumers' dp4a work (copies alone: 28.3 us).
// (Run 34's one-shot copy, a block waiting for all of its rows before computing, lost
// 5%.) Twin: twin::stream::StreamLaunch.
#define ST_MAXW 16   // consumer warps at most (the block is nw + 1 warps: nw consumers, a producer)
#define STK 16       // weight blocks of a row a stage holds (a multiple of 4; for `mvp` each
                     // of gate's and up's: stages of half rows, sixteen 1 KB copies instead
                     // of two of 18 KB, made gate/up 30% slower in run 40)
#define ST_MAXS 8    // stages in the ring at most
__device__ __forceinline__ void mbar_init(u64* bar, u32 count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count) : "memory");
#endif
}
// Makes the barriers' initialisation visible to the copy engine.
__device__ __forceinline__ void mbar_init_fence() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_wait(u64* bar, u32 parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "WAIT_%=:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
        "@!p bra WAIT_%=;\n"
        "}\n" ::"r"(smem_u32(bar)),
        "r"(parity)
        : "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(u64* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(bar)) : "memory");
#endif
}
__device__ __forceinline__ void mbar_expect(u64* bar, u32 bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes)
                 : "memory");
#endif
}
__device__ __forceinline__ void bulk_copy(u8* dst, const u8* src, u32 bytes, u64* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     smem_u32(dst)),
                 "l"(src), "r"(bytes), "r"(smem_u32(bar))
                 : "memory");
#endif
}
// The consumer warps' barrier (named barrier 1; the producer warp is not in it).
__device__ __forceinline__ void consumers_sync(int nw) {
    asm volatile("bar.sync 1, %0;" ::"r"(nw * 32) : "memory");
}
__device__ __forceinline__ u32 dynamic_smem_bytes() {
    u32 v;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(v));
    return v;
}
// The ring's bookkeeping, the same sequence in the producer and the consumers: stage
// `it` is row group it / nks (nw rows from the CTA's first), column chunk it % nks.
struct StreamPlan {
    int nw;           // consumer warps: rows of a stage
    int r0, r1;       // the CTA's rows
    int nb, nks, S;   // blocks a row, stages a row group, stages in the ring
    u32 slot;         // bytes of one row's slot in a stage (STK blocks)
    int total;        // stages of this CTA
    __device__ __forceinline__ StreamPlan(int rows, int cols, int bb, int nmat, int act_bytes) {
        nw = (int)(blockDim.x >> 5) - 1;
        r0 = (int)((u64)blockIdx.x * rows / gridDim.x);
        r1 = (int)((u64)(blockIdx.x + 1) * rows / gridDim.x);
        nb = cols >> 8;
        nks = (nb + STK - 1) / STK;
        slot = (u32)(STK * bb);
        S = min(ST_MAXS, (int)((dynamic_smem_bytes() - (u32)act_bytes) / (slot * nw * nmat)));
        total = ((r1 - r0 + nw - 1) / nw) * nks;
    }
};
// The producer (one thread): stage `it`'s copies into ring slot it % S, after the
// consumers hand that slot back. `row(m, r)`: the start of row r's m-th matrix. A run
// of rows whose slices follow each other in memory and in the slot goes in one copy
// (whole rows of one matrix: a stage is one or two copies); all in registers.
template <int NM, class Row>
__device__ __forceinline__ void stream_produce(const StreamPlan& p, u8* ring, u64* full, u64* empty, int bb,
                                               Row row, int first, int last) {
    for (int it = first; it < last; it++) {
        int s = it % p.S, g = it / p.nks, kc = it % p.nks;
        if (it >= p.S) mbar_wait(&empty[s], (u32)((it / p.S - 1) & 1));
        int kb0 = kc * STK;
        u32 bytes = (u32)(min(STK, p.nb - kb0) * bb);
        int ra = p.r0 + g * p.nw, n = min(p.nw, p.r1 - ra);
#ifdef STREAM_NO_COPY
        // (Diagnosis: the consumers run on whatever the ring holds.)
        mbar_expect(&full[s], 0u);
        continue;
#endif
        mbar_expect(&full[s], (u32)(NM * n) * bytes);
        u8* base = ring + (u64)s * NM * p.nw * p.slot;
#pragma unroll
        for (int m = 0; m < NM; m++) {
            const u8* run = nullptr;
            int run_j = 0, run_n = 0;
            for (int j = 0; j < n; j++) {
                const u8* w = row(m, ra + j) + (u64)kb0 * bb;
                if (run && bytes == p.slot && w == run + (u64)run_n * bytes) {
                    run_n++;
                    continue;
                }
                if (run) bulk_copy(base + (u64)(m * p.nw + run_j) * p.slot, run, (u32)run_n * bytes, &full[s]);
                run = w;
                run_j = j;
                run_n = 1;
            }
            if (run) bulk_copy(base + (u64)(m * p.nw + run_j) * p.slot, run, (u32)run_n * bytes, &full[s]);
        }
    }
}
// A consumer lane's share of stage `it`'s slice of its row (slot `w`: kn <= STK blocks,
// the lane's blocks lane / 8 + 4 i below kn), added into acc in order; shared-memory
// loads two steps at a time (their latency is short; four spilled at 16 warps). A
// lane past the slice's end loads its last block (in bounds) and adds nothing, as
// hoist_run does.
#define ST_AHEAD 2
template <int TY>
__device__ __forceinline__ void stream_use(const u8* w, int kb0, int kn, const i8* xq, const float2* xd, int lane,
                                           float& acc) {
    typedef typename HoistStep<TY>::T St;
#pragma unroll
    for (int i0 = 0; i0 < STK / 4; i0 += ST_AHEAD) {
        if (4 * i0 >= kn) break;
        St st[ST_AHEAD];
        typename St::Act a[ST_AHEAD];
#pragma unroll
        for (int u = 0; u < ST_AHEAD; u++) {
            int bl = min((lane >> 3) + 4 * (i0 + u), kn - 1);
            st[u].load(w, bl, lane);
#ifdef STREAM_ACT_LINEAR
            St::act(a[u], xq, xd, kb0 + bl, lane);
#else
            St::act_lanes(a[u], xq, xd, kb0 + bl, lane);
#endif
        }
#pragma unroll
        for (int u = 0; u < ST_AHEAD; u++)
            if ((lane >> 3) + 4 * (i0 + u) < kn) acc += st[u].use(a[u], lane);
    }
}
// The kernel's frame: barriers, the activations in shared memory, the deferred norm's
// scale, then the producer's loop and the consumers' rows. NM 1: `mvs` (rows of up to
// three matrices), 2: `mvp` (gate and up of each row, act(gate) * up out). The block
// is nw + 1 warps (the runner's choice of consumers, 4 to 16).
template <int TY, int NM, class Row, class Out>
__device__ __forceinline__ void stream_body(int rows, int cols, const i8* Xq, const float2* Xd, XS_PARAMS, Row row,
                                            Out out) {
    constexpr int BB = TY == TY_Q4_K ? 144 : 210;
    extern __shared__ __align__(128) u8 smem[];
    __shared__ __align__(8) u64 full[ST_MAXS], empty[ST_MAXS];
    __shared__ float scl;
    const int act_bytes = cols + (cols >> 5) * 8;
    StreamPlan p(rows, cols, BB, NM, act_bytes);
    const int nw = p.nw;
    u8* ring = smem;
    i8* xq = (i8*)(smem + (u64)p.S * NM * nw * p.slot);
    float2* xd = (float2*)(xq + cols);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (threadIdx.x == 0) {
        for (int s = 0; s < p.S; s++) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], (u32)nw);
        }
        mbar_init_fence();
    }
    __syncthreads();
    if (warp == nw) {
        // The weights are never written: the first stages are asked for before the
        // PDL wait, while the previous kernel drains.
        if (lane == 0) stream_produce<NM>(p, ring, full, empty, BB, row, 0, min(p.S, p.total));
        pdl_entry();
        if (lane == 0) stream_produce<NM>(p, ring, full, empty, BB, row, min(p.S, p.total), p.total);
        return;
    }
    pdl_entry();
#ifdef STREAM_ACT_BATCH
    // The default's three loops below wait on L2 one after another; here every load
    // of the input goes first, then the stores: one round trip, not three. Opt-in
    // until run 49 device-checks it (run 48: level to +1%).
    // Rows wider than 4 x 16 bytes a consumer thread take the loop for the rest.
    constexpr int AQ = 4, AD = 2;
    const int nt = nw * 32;
    // Where staged byte i comes from (lane order, as the loop below).
    auto src = [&](int i) {
        return (const int4*)(Xq + (i & ~255) + HoistStep<TY>::T::lane_run_src((i >> 4) & 15));
    };
    int4 aq[AQ];
    float2 ad[AD];
    float av[SSK];
#pragma unroll
    for (int u = 0; u < AQ; u++) {
        const int i = (threadIdx.x + u * nt) * 16;
        if (i < cols) aq[u] = *src(i);
    }
#pragma unroll
    for (int u = 0; u < AD; u++) {
        const int i = threadIdx.x + u * nt;
        if (i < (cols >> 5)) ad[u] = Xd[i];
    }
    if (warp == 0 && Xs) ss_load(av, Xs, cols >> 5, lane);
#pragma unroll
    for (int u = 0; u < AQ; u++) {
        const int i = (threadIdx.x + u * nt) * 16;
        if (i < cols) *(int4*)(xq + i) = aq[u];
    }
#pragma unroll
    for (int u = 0; u < AD; u++) {
        const int i = threadIdx.x + u * nt;
        if (i < (cols >> 5)) xd[i] = ad[u];
    }
    for (int i = (threadIdx.x + AQ * nt) * 16; i < cols; i += nt * 16) *(int4*)(xq + i) = *src(i);
    for (int i = threadIdx.x + AD * nt; i < (cols >> 5); i += nt) xd[i] = Xd[i];
    if (warp == 0 && Xs) {
        float sc = ss_scale(av, Xs, cols >> 5, cols, eps, lane);
        if (lane == 0) scl = sc;
    }
#else
    for (int i = threadIdx.x * 16; i < cols; i += nw * 32 * 16) {
#ifdef STREAM_ACT_LINEAR
        *(int4*)(xq + i) = *(const int4*)(Xq + i);
#else
        *(int4*)(xq + i) = *(const int4*)(Xq + (i & ~255) + HoistStep<TY>::T::lane_run_src((i >> 4) & 15));
#endif
    }
    for (int i = threadIdx.x; i < (cols >> 5); i += nw * 32) xd[i] = Xd[i];
    if (warp == 0 && Xs) {
        float v[SSK];
        ss_load(v, Xs, cols >> 5, lane);
        float sc = ss_scale(v, Xs, cols >> 5, cols, eps, lane);
        if (lane == 0) scl = sc;
    }
#endif
    consumers_sync(nw);
    const float sc = Xs ? scl : 1.0f;
    float acc[NM];
    for (int it = 0; it < p.total; it++) {
        int s = it % p.S, g = it / p.nks, kc = it % p.nks;
        if (kc == 0) {
#pragma unroll
            for (int m = 0; m < NM; m++) acc[m] = 0.0f;
        }
        int kb0 = kc * STK, kn = min(STK, p.nb - kb0);
        int r = p.r0 + g * nw + warp;
        mbar_wait(&full[s], (u32)((it / p.S) & 1));
#ifndef STREAM_NO_COMPUTE
        if (r < p.r1) {
            const u8* base = ring + (u64)s * NM * nw * p.slot;
#pragma unroll
            for (int m = 0; m < NM; m++)
                stream_use<TY>(base + (u64)(m * nw + warp) * p.slot, kb0, kn, xq, xd, lane, acc[m]);
        }
#endif
        __syncwarp();
        if (lane == 0) mbar_arrive(&empty[s]);
        if (kc == p.nks - 1 && r < p.r1) {
            // (0 + the butterfly: sum_parts' order.) Gate, then up, for `mvp`.
            float v0 = (0.0f + warp_sum(acc[0])) * sc;
            float v1 = NM > 1 ? (0.0f + warp_sum(acc[NM - 1])) * sc : 0.0f;
            if (lane == 0) out(r, v0, v1);
        }
    }
}
// Each takes `mvs1`/`mvp1`'s arguments (ntok 1; parts unused) and the ring and the
// activations as dynamic shared memory (the runner sizes it: runner/stream.rs).
// mvst's global row g is W0's row g, then W1's, then W2's.
__device__ __forceinline__ int seg_of(int g, int rows0, int rows1, int rows2, int* r) {
    if (g < rows0) {
        *r = g;
        return 0;
    }
    g -= rows0;
    if (g < rows1) {
        *r = g;
        return 1;
    }
    *r = g - rows1;
    return g - rows1 < rows2 ? 2 : 3;
}
#define MV_STREAM(NAME, TY)                                                                        \
    extern "C" __global__ void __launch_bounds__((ST_MAXW + 1) * 32, 1)                           \
        mvst_##NAME(const u8* W0, u64 rb0, int rows0, float* Y0, const u8* W1, u64 rb1, int rows1,  \
                    float* Y1, const u8* W2, u64 rb2, int rows2, float* Y2, int cols, const i8* Xq,  \
                    const float2* Xd, int ntok, int parts, XS_PARAMS) {                            \
        stream_body<TY, 1>(                                                                        \
            rows0 + rows1 + rows2, cols, Xq, Xd, Xs, eps,                                          \
            [&](int, int g) -> const u8* {                                                         \
                int r, k = seg_of(g, rows0, rows1, rows2, &r);                                     \
                return (k == 0 ? W0 : k == 1 ? W1 : W2) + (u64)r * rb0;                            \
            },                                                                                     \
            [&](int g, float v, float) {                                                           \
                int r, k = seg_of(g, rows0, rows1, rows2, &r);                                     \
                (k == 0 ? Y0 : k == 1 ? Y1 : Y2)[r] = v;                                           \
            });                                                                                    \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__((ST_MAXW + 1) * 32, 1)                           \
        mvpt_##NAME(const u8* Wg, const u8* Wu, u64 rb, int rows, int cols, const i8* Xq,           \
                    const float2* Xd, int ntok, int act, int parts, float* Y, XS_PARAMS) {         \
        stream_body<TY, 2>(                                                                        \
            rows, cols, Xq, Xd, Xs, eps,                                                           \
            [&](int k, int g) -> const u8* { return (k ? Wu : Wg) + (u64)g * rb; },                \
            [&](int g, float gv, float uv) { Y[g] = act == 2 ? gelu_times(gv, uv) : silu_times(gv, uv); }); \
    }
MV_STREAM(q4_k, TY_Q4_K)
MV_STREAM(q6_k, TY_Q6_K)

// Blocks of 128 threads an SM the batched `mvs` kernels keep room for (at most 64
// registers a thread: the deferred norm's scales otherwise push them from 48 to 72).
// Batch 1 takes the hoisted loads' 111-128 registers (HOISTED).
// (HANGAR_CUDA_DEFINES=MV_REGS_FREE lifts the cap, for an A/B run.)
#ifdef MV_REGS_FREE
#define MV_MIN_BLOCKS(NT) 2
#else
#define MV_MIN_BLOCKS(NT) ((NT) == 1 ? 1 : 8)
#endif
#define MMVQ(NAME, TY, NT)                                                                         \
    extern "C" __global__ void __launch_bounds__(128)                                              \
        gemvq##NT##_##NAME(const u8* W, u64 rb, int rows, int cols, const i8* Xq, const float2* Xd, \
                           int ntok, float* Y) {                                                   \
        gemvq_warp<TY, NT>(W, rb, rows, cols, Xq, Xd, ntok, Y);                                    \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128, MV_MIN_BLOCKS(NT))                           \
        mvs##NT##_##NAME(const u8* W0, u64 rb0, int rows0, float* Y0, const u8* W1, u64 rb1,        \
                         int rows1, float* Y1, const u8* W2, u64 rb2, int rows2, float* Y2,        \
                         int cols, const i8* Xq, const float2* Xd, int ntok, int parts,            \
                         XS_PARAMS) {                                                             \
        mvs_body<TY, NT>(W0, rb0, rows0, Y0, W1, rb1, rows1, Y1, W2, rb2, rows2, Y2, cols, Xq, Xd, \
                         ntok, parts, Xs, eps);                                                   \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256, MV_MIN_BLOCKS(NT) / 2)                       \
        mvp##NT##_##NAME(const u8* Wg, const u8* Wu, u64 rb, int rows, int cols, const i8* Xq,      \
                         const float2* Xd, int ntok, int act, int parts, float* Y, XS_PARAMS) {   \
        mvp_body<TY, NT>(Wg, Wu, rb, rows, cols, Xq, Xd, ntok, act, parts, Y, Xs, eps);           \
    }
#define MMVQ_ALL(NT)             \
    MMVQ(q4_k, TY_Q4_K, NT)      \
    MMVQ(q5_k, TY_Q5_K, NT)      \
    MMVQ(q6_k, TY_Q6_K, NT)      \
    MMVQ(q8_0, TY_Q8_0, NT)      \
    MMVQ(q4_0, TY_Q4_0, NT)      \
    MMVQ(q5_0, TY_Q5_0, NT)
MMVQ_ALL(1)
MMVQ_ALL(2)
MMVQ_ALL(4)
MMVQ_ALL(8)
