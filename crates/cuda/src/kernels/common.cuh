// Shared helpers for every Hangar CUDA kernel unit. No system headers: NVRTC compiles
// these sources as they are, on a machine that may hold no CUDA toolkit headers.
typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// GGML type ids (the GGUF tensor type field).
#define TY_F32 0
#define TY_F16 1
#define TY_Q4_0 2
#define TY_Q5_0 6
#define TY_Q8_0 8
#define TY_Q4_K 12
#define TY_Q5_K 13
#define TY_Q6_K 14
#define TY_BF16 30

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
// Rounds to the nearest f16 and back (an f16 KV cache's or matmul operand's value).
__device__ __forceinline__ float round_h(float f) { return h2f(f2h(f)); }
__device__ __forceinline__ float bf2f(u16 b) { return __uint_as_float(((u32)b) << 16); }
// Blocks of 18/22/34/210 bytes are only 2-byte aligned: read 16-bit fields as bytes.
__device__ __forceinline__ u16 ld16(const u8* p) { return (u16)p[0] | ((u16)p[1] << 8); }

// Programmatic dependent launch (Hopper and later; no-ops below sm_90 and when the
// launch did not ask for it, see Gpu::issue): a kernel may be scheduled while the one
// before it on the stream drains, so every kernel calls pdl_entry() before it touches
// memory another kernel writes. griddepcontrol.wait returns once the previous kernel
// has finished and its writes are visible; launch_dependents then lets the next
// kernel's blocks be scheduled (after the wait, so at most two kernels overlap).
// PDL_EARLY (HANGAR_CUDA_DEFINES, for an A/B run) lets them be scheduled before the
// wait: the next kernel's blocks take an SM as soon as one frees up and issue their
// weight copies there while two kernels back still drain. Its wait still waits for
// this kernel, and this one's for the one before, so the order of the writes holds;
// only code before a wait (weights, host-written rows) may run earlier. Run 44 (H100,
// 8B batch 1): level to 1% slower, so it stays off.
__device__ __forceinline__ void pdl_entry() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#ifdef PDL_EARLY
    asm volatile("griddepcontrol.launch_dependents;" :::);
    asm volatile("griddepcontrol.wait;" ::: "memory");
#else
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
#endif
}
// Asks L2 for a warp's share of a weight row (128-byte lines, lane-strided; `part` of
// `parts` warps on one row): weights are never written, so the GEMVs issue this before
// pdl_entry() and the row streams in while the previous kernel finishes.
__device__ __forceinline__ void prefetch_row_l2(const u8* row, u64 rb, int lane, int part, int parts) {
    for (u64 off = (u64)(part * 32 + lane) * 128; off < rb; off += (u64)parts * 32 * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(row + off));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// Sum over the block (at most 1024 threads); every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    return warp_sum(v);
}
__device__ __forceinline__ double block_sum_d(double v, double* sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0;
    return warp_sum_d(v);
}
__device__ __forceinline__ float block_max(float v, float* sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -3.0e38f;
    return warp_max(v);
}

__device__ __forceinline__ int warp_sum_i(int v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
// llama.cpp's q8_1 for the value v of lane i % 32 of a 32-wide block, i the flat
// index (a warp holds one whole block): d = amax / 127, q = round-half-even(v / d),
// Xd[i / 32] = (d, d * sum q). Twin: twin::quantize_q8_1.
__device__ __forceinline__ void q8_1_lane(float v, u64 i, i8* Xq, float2* Xd) {
    float amax = warp_max(fabsf(v));
    float d = __fdiv_rn(amax, 127.0f);
    int q = amax == 0.0f ? 0 : __float2int_rn(__fdiv_rn(v, d));
    Xq[i] = (i8)q;
    int s = warp_sum_i(q);
    if ((threadIdx.x & 31) == 0) Xd[i >> 5] = make_float2(d, d * (float)s);
}

// gelu_tanh(x) * u through f16 as ggml's GEGLU table: 0 at or below -10, identity at
// or above 10. Shared by gelu_mul and the fused gate/up kernels.
__device__ __forceinline__ float gelu_times(float x, float u) {
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x * u;
    float h = round_h(x);
    float y = 0.5f * h * (1.0f + tanhf(0.7978846f * (h + 0.044715f * h * h * h)));
    return round_h(y) * u;
}
__device__ __forceinline__ float silu_times(float x, float u) { return x / (1.0f + expf(-x)) * u; }

// The K-quant 6-bit scale and min of sub-block j (0..8) from the 12 packed bytes.
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Dequantizes the 8 consecutive elements e..e+8 (e a multiple of 8) of one row.
// The CPU twin in src/twin.rs follows the same index arithmetic.
template <int T>
__device__ __forceinline__ void deq8(const u8* row, int e, float* w) {
    if (T == TY_F32) {
        const float4* p = (const float4*)(row + 4 * (u64)e);
        float4 a = p[0], b = p[1];
        w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w;
        w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
    } else if (T == TY_F16 || T == TY_BF16) {
        uint4 v = *(const uint4*)(row + 2 * (u64)e);
        u32 u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            u16 lo = (u16)(u[i] & 0xffff), hi = (u16)(u[i] >> 16);
            w[2 * i] = T == TY_F16 ? h2f(lo) : bf2f(lo);
            w[2 * i + 1] = T == TY_F16 ? h2f(hi) : bf2f(hi);
        }
    } else if (T == TY_Q8_0) {
        const u8* b = row + (e >> 5) * 34;
        int o = e & 31;
        float d = h2f(ld16(b));
#pragma unroll
        for (int i = 0; i < 8; i++) w[i] = d * (float)(i8)b[2 + o + i];
    } else if (T == TY_Q4_0) {
        const u8* b = row + (e >> 5) * 18;
        int o = e & 31;
        float d = h2f(ld16(b));
        const u8* qs = b + 2;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int q = o < 16 ? (qs[o + i] & 0xF) : (qs[o - 16 + i] >> 4);
            w[i] = d * (float)(q - 8);
        }
    } else if (T == TY_Q5_0) {
        const u8* b = row + (e >> 5) * 22;
        int o = e & 31;
        float d = h2f(ld16(b));
        u32 qh = (u32)b[2] | ((u32)b[3] << 8) | ((u32)b[4] << 16) | ((u32)b[5] << 24);
        const u8* qs = b + 6;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int q;
            if (o < 16) {
                int j = o + i;
                q = (qs[j] & 0xF) | (((qh >> j) & 1) << 4);
            } else {
                int j = o - 16 + i;
                q = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            }
            w[i] = d * (float)(q - 16);
        }
    } else if (T == TY_Q4_K) {
        // 144-byte blocks: 4-byte aligned header and scales, 8-byte aligned quants.
        const u8* b = row + (e >> 8) * 144;
        int o = e & 255, c = o >> 6, j = o & 63, hi = j >= 32, l0 = j & 31;
        u32 dm = *(const u32*)b;
        float d = h2f((u16)(dm & 0xffff)), dmin = h2f((u16)(dm >> 16));
        u32 s0 = *(const u32*)(b + 4), s1 = *(const u32*)(b + 8), s2 = *(const u32*)(b + 12);
        u8 sc8[12];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            sc8[i] = (u8)(s0 >> (8 * i));
            sc8[4 + i] = (u8)(s1 >> (8 * i));
            sc8[8 + i] = (u8)(s2 >> (8 * i));
        }
        int sc, m;
        scale_min_k4(2 * c + hi, sc8, &sc, &m);
        float d1 = d * (float)sc, m1 = dmin * (float)m;
        uint2 q = *(const uint2*)(b + 16 + 32 * c + l0);
        u32 qq[2] = {q.x, q.y};
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int byte = (qq[i >> 2] >> (8 * (i & 3))) & 0xff;
            int v = hi ? (byte >> 4) : (byte & 0xF);
            w[i] = d1 * (float)v - m1;
        }
    } else if (T == TY_Q5_K) {
        const u8* b = row + (e >> 8) * 176;
        int o = e & 255, c = o >> 6, j = o & 63, hi = j >= 32, l0 = j & 31;
        float d = h2f(ld16(b)), dmin = h2f(ld16(b + 2));
        int sc, m;
        scale_min_k4(2 * c + hi, b + 4, &sc, &m);
        float d1 = d * (float)sc, m1 = dmin * (float)m;
        const u8* qs = b + 48;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int l = l0 + i;
            int q = hi ? (qs[32 * c + l] >> 4) : (qs[32 * c + l] & 0xF);
            q |= ((b[16 + l] >> (2 * c + hi)) & 1) << 4;
            w[i] = d1 * (float)q - m1;
        }
    } else if (T == TY_Q6_K) {
        const u8* b = row + (e >> 8) * 210;
        int o = e & 255, h = o >> 7, k = (o & 127) >> 5, l0 = o & 31;
        float d = h2f(ld16(b + 208));
        float ds = d * (float)(i8)b[192 + (o >> 4)];
        const u8* ql = b + 64 * h + 32 * (k & 1);
        const u8* qh = b + 128 + 32 * h;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int l = l0 + i;
            int lo = k < 2 ? (ql[l] & 0xF) : (ql[l] >> 4);
            int hb = (qh[l] >> (2 * k)) & 3;
            w[i] = ds * (float)((lo | (hb << 4)) - 32);
        }
    }
}

// Larger value wins across the warp; on a tie, the lower index (the serial scan's
// answer). Every lane ends with the winner.
__device__ __forceinline__ void warp_argmax(float* best, u32* bi) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, *best, o);
        u32 oi = __shfl_xor_sync(0xffffffffu, *bi, o);
        if (ov > *best || (ov == *best && oi < *bi)) {
            *best = ov;
            *bi = oi;
        }
    }
}

// RoPE's angle for pair i at position pos, in f64 as the CPU's table: pos * base^(-2i /
// n_rot), divided by the pair's frequency factor when given.
__device__ __forceinline__ void rope_angle(int i, double pos, double base, int n_rot, const float* ff, float* c,
                                           float* s) {
    double f = pow(base, -2.0 * (double)i / (double)n_rot);
    if (ff) f = f / (double)ff[i];
    double th = pos * f;
    *c = (float)cos(th);
    *s = (float)sin(th);
}
// One head through RoPE as the KV cache holds it (qk_rope and attention_rope): RMSNorm
// with nw when given (squares summed in f64 by the block's first 128 threads, thread i
// taking i, i + 128, ...), the rotation (neox: pairs (i, i + n_rot / 2), else (2i, 2i +
// 1)), every value rounded to f16. xr is the row in shared or global memory; (c0, s0)
// is the angle of the thread's own pair (computed before the PDL wait), pairs past the
// block's width compute theirs here. Every thread of the block calls it.
// Twin: twin::rope_head.
__device__ __forceinline__ void rope_row(float* xr, int hd, const float* nw, float eps, double pos, double base,
                                         int n_rot, const float* ff, int neox, float c0, float s0, double* shd) {
    if (nw) {
        double sq = 0.0;
        if (threadIdx.x < 128)
            for (int i = threadIdx.x; i < hd; i += 128) {
                float v = xr[i];
                sq += (double)(v * v);
            }
        sq = block_sum_d(sq, shd);
        float mean = (float)(sq / (double)hd);
        float scale = 1.0f / sqrtf(mean + eps);
        for (int i = threadIdx.x; i < hd; i += blockDim.x) xr[i] = xr[i] * scale * nw[i];
        __syncthreads();
    }
    int half = n_rot / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float c = c0, s = s0;
        if (i != (int)threadIdx.x) rope_angle(i, pos, base, n_rot, ff, &c, &s);
        int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        float x0 = xr[a], x1 = xr[b];
        xr[a] = x0 * c - x1 * s;
        xr[b] = x0 * s + x1 * c;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < hd; d += blockDim.x) xr[d] = round_h(xr[d]);
    __syncthreads();
}
