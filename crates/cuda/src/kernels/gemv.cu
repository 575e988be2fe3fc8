// Matrix-vector products for decode (and a simple batched path for prefill):
// Y[t][r] = sum_c W[r][c] * X[t][c] for every token t, W in its GGUF block format.
// One warp per row; each lane dequantizes 8 consecutive weights per 256-wide step and
// multiplies them with up to NT token rows, so a weight is read once per NT tokens.
template <int T, int NT>
__device__ __forceinline__ void gemv_impl(const u8* __restrict__ W, u64 row_bytes, int rows, int cols,
                                          const float* __restrict__ X, int ntok, float* __restrict__ Y) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int r = blockIdx.x * (blockDim.x >> 5) + warp;
    if (r >= rows) return;
    int t0 = blockIdx.y * NT;
    const u8* row = W + (u64)r * row_bytes;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    // Unrolled so that several blocks' loads are in flight before the first use.
#pragma unroll 4
    for (int e = lane * 8; e < cols; e += 256) {
        float w[8];
        deq8<T>(row, e, w);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t0 + t < ntok) {
                const float4* xp = (const float4*)(X + (u64)(t0 + t) * cols + e);
                float4 a = xp[0], b = xp[1];
                acc[t] += w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w +
                          w[4] * b.x + w[5] * b.y + w[6] * b.z + w[7] * b.w;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float s = warp_sum(acc[t]);
        if (lane == 0 && t0 + t < ntok) Y[(u64)(t0 + t) * rows + r] = s;
    }
}

// Rows of an embedding matrix, dequantized and scaled: out[t] = W[tok[t]] * scale.
template <int T>
__device__ __forceinline__ void embed_impl(const u8* __restrict__ W, u64 row_bytes, int cols,
                                           const u32* __restrict__ tok, float scale, float* __restrict__ out) {
    int t = blockIdx.x;
    const u8* row = W + (u64)tok[t] * row_bytes;
    for (int e = threadIdx.x * 8; e < cols; e += blockDim.x * 8) {
        float w[8];
        deq8<T>(row, e, w);
#pragma unroll
        for (int i = 0; i < 8; i++) out[(u64)t * cols + e + i] = w[i] * scale;
    }
}

// Whole rows dequantized to f16 (the prefill path feeds them to cuBLAS's tensor cores).
template <int T>
__device__ __forceinline__ void deq_f16_impl(const u8* __restrict__ W, u64 row_bytes, int cols,
                                             u16* __restrict__ out) {
    int r = blockIdx.x;
    const u8* row = W + (u64)r * row_bytes;
    for (int e = threadIdx.x * 8; e < cols; e += blockDim.x * 8) {
        float w[8];
        deq8<T>(row, e, w);
        uint4 v;
        v.x = (u32)f2h(w[0]) | ((u32)f2h(w[1]) << 16);
        v.y = (u32)f2h(w[2]) | ((u32)f2h(w[3]) << 16);
        v.z = (u32)f2h(w[4]) | ((u32)f2h(w[5]) << 16);
        v.w = (u32)f2h(w[6]) | ((u32)f2h(w[7]) << 16);
        *(uint4*)(out + (u64)r * cols + e) = v;
    }
}

#define GEMV_KERNELS(NAME, T)                                                                     \
    extern "C" __global__ void gemv1_##NAME(const u8* W, u64 rb, int rows, int cols, const float* X, \
                                            int ntok, float* Y) { pdl_entry();                    \
        gemv_impl<T, 1>(W, rb, rows, cols, X, ntok, Y);                                           \
    }                                                                                             \
    extern "C" __global__ void gemv8_##NAME(const u8* W, u64 rb, int rows, int cols, const float* X, \
                                            int ntok, float* Y) { pdl_entry();                    \
        gemv_impl<T, 8>(W, rb, rows, cols, X, ntok, Y);                                           \
    }                                                                                             \
    extern "C" __global__ void embed_##NAME(const u8* W, u64 rb, int cols, const u32* tok, float scale, \
                                            float* out) { pdl_entry();                            \
        embed_impl<T>(W, rb, cols, tok, scale, out);                                              \
    }                                                                                             \
    extern "C" __global__ void dequant_f16_##NAME(const u8* W, u64 rb, int cols, u16* out) { pdl_entry(); \
        deq_f16_impl<T>(W, rb, cols, out);                                                        \
    }

GEMV_KERNELS(f32, TY_F32)
GEMV_KERNELS(f16, TY_F16)
GEMV_KERNELS(bf16, TY_BF16)
GEMV_KERNELS(q8_0, TY_Q8_0)
GEMV_KERNELS(q4_0, TY_Q4_0)
GEMV_KERNELS(q5_0, TY_Q5_0)
GEMV_KERNELS(q4_k, TY_Q4_K)
GEMV_KERNELS(q5_k, TY_Q5_K)
GEMV_KERNELS(q6_k, TY_Q6_K)

// A probe for tests: dequantizes whole rows (the arithmetic every kernel above uses).
extern "C" __global__ void dequant_rows(const u8* W, u64 rb, int ty, int cols, float* out) {
    pdl_entry();
    int r = blockIdx.x;
    const u8* row = W + (u64)r * rb;
    for (int e = threadIdx.x * 8; e < cols; e += blockDim.x * 8) {
        float w[8];
        switch (ty) {
            case TY_F32: deq8<TY_F32>(row, e, w); break;
            case TY_F16: deq8<TY_F16>(row, e, w); break;
            case TY_BF16: deq8<TY_BF16>(row, e, w); break;
            case TY_Q8_0: deq8<TY_Q8_0>(row, e, w); break;
            case TY_Q4_0: deq8<TY_Q4_0>(row, e, w); break;
            case TY_Q5_0: deq8<TY_Q5_0>(row, e, w); break;
            case TY_Q4_K: deq8<TY_Q4_K>(row, e, w); break;
            case TY_Q5_K: deq8<TY_Q5_K>(row, e, w); break;
            default: deq8<TY_Q6_K>(row, e, w); break;
        }
        for (int i = 0; i < 8; i++) out[(u64)r * cols + e + i] = w[i];
    }
}

// Q4_K decode GEMV with wide loads: one warp per row, eight lanes per 256-weight block
// (each lane one 16-byte slice of the block's quants: 16 low nibbles of one sub-block
// and 16 high nibbles of the next), so each step reads four blocks with 16-byte loads.
// sum w x = d sc sum(q x) - dmin m sum(x) per sub-block. Twin: twin::gemv_q4k_wide.
extern "C" __global__ void __launch_bounds__(128) gemv1_q4_k_wide(
    const u8* __restrict__ W, u64 rb, int rows, int cols, const float* __restrict__ X, int ntok,
    float* __restrict__ Y) {
    pdl_entry();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int r = blockIdx.x * (blockDim.x >> 5) + warp;
    if (r >= rows) return;
    const u8* row = W + (u64)r * rb;
    int nb = cols >> 8;
    int k = lane & 7, c = k >> 1, l0 = (k & 1) * 16;
    float acc = 0.0f;
#pragma unroll 2
    for (int b = lane >> 3; b < nb; b += 4) {
        const u8* blk = row + (u64)b * 144;
        uint4 q = *(const uint4*)(blk + 16 + 32 * c + l0);
        u32 dm = *(const u32*)blk;
        int sc1, m1, sc2, m2;
        scale_min_k4(2 * c, blk + 4, &sc1, &m1);
        scale_min_k4(2 * c + 1, blk + 4, &sc2, &m2);
        const float4* xa = (const float4*)(X + b * 256 + 64 * c + l0);
        const float4* xb = (const float4*)(X + b * 256 + 64 * c + 32 + l0);
        u32 qq[4] = {q.x, q.y, q.z, q.w};
        float s_lo = 0.0f, s_hi = 0.0f, x_lo = 0.0f, x_hi = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float4 a = xa[i], bb = xb[i];
            u32 v = qq[i];
            s_lo += (float)(v & 0xF) * a.x + (float)((v >> 8) & 0xF) * a.y +
                    (float)((v >> 16) & 0xF) * a.z + (float)((v >> 24) & 0xF) * a.w;
            s_hi += (float)((v >> 4) & 0xF) * bb.x + (float)((v >> 12) & 0xF) * bb.y +
                    (float)((v >> 20) & 0xF) * bb.z + (float)((v >> 28) & 0xF) * bb.w;
            x_lo += a.x + a.y + a.z + a.w;
            x_hi += bb.x + bb.y + bb.z + bb.w;
        }
        float d = h2f((u16)(dm & 0xffff)), dmin = h2f((u16)(dm >> 16));
        acc += d * (float)sc1 * s_lo - dmin * (float)m1 * x_lo + d * (float)sc2 * s_hi -
               dmin * (float)m2 * x_hi;
    }
    acc = warp_sum(acc);
    if (lane == 0) Y[r] = acc;
}

// Q6_K decode GEMV: one warp per row, eight lanes per 210-byte block. Lane k takes
// half h = k / 4 of the block, quant bytes 16 (k % 2) .. +16 of row 32 ((k / 2) % 2)
// of that half: their low nibbles are sub-row kp, their high nibbles sub-row kp + 2,
// with the two high bits from qh. Blocks are 2-byte aligned: 16-bit loads.
// sum w x = d sc (sum q x - 32 sum x) per 16-weight group. Twin: twin::gemv_q6k_wide.
extern "C" __global__ void __launch_bounds__(128) gemv1_q6_k_wide(
    const u8* __restrict__ W, u64 rb, int rows, int cols, const float* __restrict__ X, int ntok,
    float* __restrict__ Y) {
    pdl_entry();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int r = blockIdx.x * (blockDim.x >> 5) + warp;
    if (r >= rows) return;
    const u8* row = W + (u64)r * rb;
    int nb = cols >> 8;
    int k = lane & 7, h = k >> 2, kp = (k >> 1) & 1, ls = k & 1;
    float acc = 0.0f;
#pragma unroll 2
    for (int b = lane >> 3; b < nb; b += 4) {
        const u8* blk = row + (u64)b * 210;
        const u16* qlp = (const u16*)(blk + 64 * h + 32 * kp + 16 * ls);
        const u16* qhp = (const u16*)(blk + 128 + 32 * h + 16 * ls);
        u32 ql[4], qh[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            ql[i] = (u32)qlp[2 * i] | ((u32)qlp[2 * i + 1] << 16);
            qh[i] = (u32)qhp[2 * i] | ((u32)qhp[2 * i + 1] << 16);
        }
        float d = h2f(*(const u16*)(blk + 208));
        float sa = (float)(i8)blk[192 + 8 * h + 2 * kp + ls];
        float sb = (float)(i8)blk[192 + 8 * h + 2 * (kp + 2) + ls];
        const float4* xa = (const float4*)(X + b * 256 + 128 * h + 32 * kp + 16 * ls);
        const float4* xb = (const float4*)(X + b * 256 + 128 * h + 32 * (kp + 2) + 16 * ls);
        float s_a = 0.0f, s_b = 0.0f, x_a = 0.0f, x_b = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float4 a = xa[i], bb = xb[i];
            float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {bb.x, bb.y, bb.z, bb.w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                u32 q = (ql[i] >> (8 * j)) & 0xff, hb = (qh[i] >> (8 * j)) & 0xff;
                int va = (int)((q & 0xF) | (((hb >> (2 * kp)) & 3) << 4));
                int vb = (int)((q >> 4) | (((hb >> (2 * (kp + 2))) & 3) << 4));
                s_a += (float)va * av[j];
                s_b += (float)vb * bv[j];
                x_a += av[j];
                x_b += bv[j];
            }
        }
        acc += d * (sa * (s_a - 32.0f * x_a) + sb * (s_b - 32.0f * x_b));
    }
    acc = warp_sum(acc);
    if (lane == 0) Y[r] = acc;
}
