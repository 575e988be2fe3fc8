// Prefill products on int8 tensor cores, straight from the quantized blocks (the idea
// of llama.cpp's MMQ; our code): Y[t][r] = sum_c W[r][c] X[t][c], W in Q4_K and X as
// q8_1 (quantize_q8_1: int8 values, per 32-block d and d * sum q). For each 32-wide
// sub-block j of a row's 256-wide block, mma.sync m16n8k32 (s8 x s8 -> s32) gives the
// exact integer dots of 16 rows x 8 tokens between the 4-bit values (0..15) and the
// int8 activations; each dot is then scaled and added in order of blocks and
// sub-blocks, every product and sum rounded on its own (no contraction):
//   acc = (acc + (d sc_j * dx) * dot) - (dmin m_j) * sx
// with (dx, sx) the token's q8_1 pair of that 32-block. Twin: twin::mmq_q4k, tested
// against the int8 GEMV's arithmetic (twin::gemvq_row).
//
// A block of four warps takes 64 rows x 32 tokens: warp w rows 16 w .. 16 w + 15, in
// four 8-token tiles. Fragments (PTX m16n8k32 .s8, g = lane / 4, k4 = lane % 4): A
// registers 0..3 hold row g cols 4 k4.., row g + 8 cols 4 k4.., row g cols 16 + 4 k4..,
// row g + 8 cols 16 + 4 k4..; B registers 0..1 token g, k 4 k4.. and 16 + 4 k4..; C
// rows g (0, 1) and g + 8 (2, 3), tokens 2 k4 + (0, 1). Weights and activations are
// read straight from global memory (L1 keeps a block's activations for its four
// warps). Opt-in (HANGAR_CUDA_MMQ=1) until it is measured on a GPU against the cuBLAS
// f16 path; it needs no f16 copy of the weights.
#define MMQ_ROWS 64
// Tokens a block (HANGAR_CUDA_DEFINES=MMQ_T64: 64, eight tiles a warp, half the weight
// reads, more registers; the runner's grid stays sized for 32 and the extra blocks
// find no tokens of their own, so either build is correct).
#ifdef MMQ_T64
#define MMQ_TOKS 64
#else
#define MMQ_TOKS 32
#endif
#define MMQ_TILES (MMQ_TOKS / 8)

__device__ __forceinline__ u32 ld_u32(const void* p) { return *(const u32*)p; }

__device__ __forceinline__ void mma_s8_m16n8k32(int (&c)[4], const u32 (&a)[4], const u32 (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// acc = (acc + (f * dx) * dot) - g * sx, each step rounded (twin::mmq_q4k's order).
__device__ __forceinline__ float mmq_step(float acc, float f, float g, float2 x, int dot) {
    return __fsub_rn(__fadd_rn(acc, __fmul_rn(__fmul_rn(f, x.x), (float)dot)), __fmul_rn(g, x.y));
}

extern "C" __global__ void __launch_bounds__(128) mmq_q4_k(const u8* __restrict__ W, u64 rb, int rows, int cols,
                                                         const i8* __restrict__ Xq,
                                                         const float2* __restrict__ Xd, int ntok,
                                                         float* __restrict__ Y) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, k4 = lane & 3;
    const int r0 = blockIdx.x * MMQ_ROWS + warp * 16, t0 = blockIdx.y * MMQ_TOKS;
    // Rows and tokens past the end are read clamped (in bounds) and not stored.
    const u8* wa = W + (u64)min(r0 + g, rows - 1) * rb;
    const u8* wb = W + (u64)min(r0 + g + 8, rows - 1) * rb;
    const int nb = cols >> 8, ng = cols >> 5;
    float acc[MMQ_TILES][4];
#pragma unroll
    for (int n = 0; n < MMQ_TILES; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    pdl_entry();
    for (int b = 0; b < nb; b++) {
        const u8* ba = wa + (u64)b * 144;
        const u8* bb = wb + (u64)b * 144;
        const float da = h2f(ld16(ba)), ma = h2f(ld16(ba + 2));
        const float db = h2f(ld16(bb)), mb = h2f(ld16(bb + 2));
#pragma unroll 2
        for (int j = 0; j < 8; j++) {
            int sa, na, sb, nbm;
            scale_min_k4(j, ba + 4, &sa, &na);
            scale_min_k4(j, bb + 4, &sb, &nbm);
            const float fa = __fmul_rn(da, (float)sa), ga = __fmul_rn(ma, (float)na);
            const float fb = __fmul_rn(db, (float)sb), gb = __fmul_rn(mb, (float)nbm);
            // Sub-block j: the low (j even) or high nibbles of bytes 32 (j / 2) .. + 31.
            const int sh = 4 * (j & 1), q0 = 16 + 32 * (j >> 1) + 4 * k4;
            u32 a[4];
            a[0] = (ld_u32(ba + q0) >> sh) & 0x0F0F0F0Fu;
            a[1] = (ld_u32(bb + q0) >> sh) & 0x0F0F0F0Fu;
            a[2] = (ld_u32(ba + q0 + 16) >> sh) & 0x0F0F0F0Fu;
            a[3] = (ld_u32(bb + q0 + 16) >> sh) & 0x0F0F0F0Fu;
            const int xb = b * 8 + j;
#pragma unroll
            for (int n = 0; n < MMQ_TILES; n++) {
                const int tb = min(t0 + 8 * n + g, ntok - 1);
                const i8* xr = Xq + (u64)tb * cols + 32 * xb + 4 * k4;
                u32 bf[2] = {ld_u32(xr), ld_u32(xr + 16)};
                int c[4] = {0, 0, 0, 0};
                mma_s8_m16n8k32(c, a, bf);
                const int tc = t0 + 8 * n + 2 * k4;
                const float2 x0 = Xd[(u64)min(tc, ntok - 1) * ng + xb];
                const float2 x1 = Xd[(u64)min(tc + 1, ntok - 1) * ng + xb];
                acc[n][0] = mmq_step(acc[n][0], fa, ga, x0, c[0]);
                acc[n][1] = mmq_step(acc[n][1], fa, ga, x1, c[1]);
                acc[n][2] = mmq_step(acc[n][2], fb, gb, x0, c[2]);
                acc[n][3] = mmq_step(acc[n][3], fb, gb, x1, c[3]);
            }
        }
    }
#pragma unroll
    for (int n = 0; n < MMQ_TILES; n++) {
        const int tc = t0 + 8 * n + 2 * k4;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = r0 + g + 8 * (i >> 1), t = tc + (i & 1);
            if (r < rows && t < ntok) Y[(u64)t * rows + r] = acc[n][i];
        }
    }
}
