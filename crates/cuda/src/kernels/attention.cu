// Attention over the paged KV cache: one block per (query head, token). The token sees
// positions lo..=pos of its own sequence (lo > 0 under a sliding window); KV head
// h / group serves query head h (GQA). Scores go to a scratch row, softmax, the
// probabilities are rounded to f16 (as the CPU path's f16 matmul operand), then
// out = sum p_j V_j. Threads split the positions for the scores and the head
// dimensions for the output.
extern "C" __global__ void attention(const float* q, const u16* kc, const u16* vc, float* out,
                                     int nheads, int nkv, int hd, const int* tok_seq,
                                     const u32* tables, int tstride, int bs, int window,
                                     float scale, float* scratch, int max_n) {
    extern __shared__ float qs[];
    __shared__ float red[32];
    int h = blockIdx.x, t = blockIdx.y;
    int kh = h / (nheads / nkv);
    int seq = tok_seq[2 * t], pos = tok_seq[2 * t + 1];
    int lo = window > 0 ? max(0, pos + 1 - window) : 0;
    int n = pos + 1 - lo;
    int kvd = nkv * hd;
    const u32* table = tables + (u64)seq * tstride;
    const float* qr = q + ((u64)t * nheads + h) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = qr[d];
    __syncthreads();
    float* sc = scratch + ((u64)t * nheads + h) * max_n;
    float m = -3.0e38f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        int p = lo + j;
        u64 off = ((u64)table[p / bs] * bs + p % bs) * kvd + (u64)kh * hd;
        const u16* kr = kc + off;
        float s = 0.0f;
        for (int d = 0; d < hd; d += 2) {
            u32 two = *(const u32*)(kr + d);
            s += qs[d] * h2f((u16)(two & 0xffff)) + qs[d + 1] * h2f((u16)(two >> 16));
        }
        s *= scale;
        sc[j] = s;
        m = fmaxf(m, s);
    }
    m = block_max(m, red);
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
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < n; j++) {
            int p = lo + j;
            u64 off = ((u64)table[p / bs] * bs + p % bs) * kvd + (u64)kh * hd;
            acc += sc[j] * h2f(vc[off + d]);
        }
        out[((u64)t * nheads + h) * hd + d] = acc;
    }
}
