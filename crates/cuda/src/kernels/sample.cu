// The sampling head: a sampled row's answer on the device, so its logits never cross
// PCIe (crates/engine/src/sampler/head.rs). `reference` there is this kernel's
// arithmetic sum for sum: 1024 threads, thread t owning ids [t * per, (t + 1) * per),
// per-thread sums in id order in double, groups of 32 threads added in order, then the
// groups in order. Every float operation is an explicit round-to-nearest intrinsic, so
// the compiler fuses none of them (the host's arithmetic has no fused multiply-adds).

#define HEAD_THREADS 1024
#define HEAD_GROUP 32
#define HEAD_K 256

// One adjusted id: bias, then the repetition penalty by sign, then the subtracted
// presence + frequency term (HeadSkip in head.rs; four 32-bit words).
struct HeadSkip {
    u32 id;
    float bias, rep, pen;
};

__device__ __forceinline__ float head_sanitize(float l) {
    if (l != l) return -__int_as_float(0x7f800000);
    if (l == 0.0f) return 0.0f;
    return l;
}

// e^x for x <= 0: the sampler's fast_exp (logit_math.rs), operation for operation.
__device__ __forceinline__ float head_exp(float x) {
    x = fminf(fmaxf(x, -87.0f), 0.0f);
    float n = __fsub_rn(__fadd_rn(__fmul_rn(x, 1.44269504f), 12582912.0f), 12582912.0f);
    float r = __fsub_rn(__fsub_rn(x, __fmul_rn(n, 0.69314575f)), __fmul_rn(n, 1.4286068e-6f));
    float p = __fadd_rn(1.0f / 120.0f, __fmul_rn(r, 1.0f / 720.0f));
    p = __fadd_rn(1.0f / 24.0f, __fmul_rn(r, p));
    p = __fadd_rn(1.0f / 6.0f, __fmul_rn(r, p));
    p = __fadd_rn(0.5f, __fmul_rn(r, p));
    p = __fadd_rn(1.0f, __fmul_rn(r, p));
    p = __fadd_rn(1.0f, __fmul_rn(r, p));
    float scale = __uint_as_float(__float_as_uint(__fadd_rn(n, 8388735.0f)) << 23);
    return __fmul_rn(p, scale);
}

__device__ __forceinline__ double head_weight(float l, float max, float inv_t) {
    if (l == -__int_as_float(0x7f800000)) return 0.0;
    return (double)head_exp(__fmul_rn(__fsub_rn(l, max), inv_t));
}

// Id i's adjusted logit: the transform of its skip entry (sorted by id, found by
// bisection when its bit is set), else the raw logit; NaN -> -inf, -0 -> +0.
__device__ __forceinline__ float head_adj(const float* row, int i, const u32* bits, const HeadSkip* sk,
                                          int ns) {
    float raw = row[i];
    if (ns > 0 && ((bits[i >> 5] >> (i & 31)) & 1u)) {
        int lo = 0, hi = ns - 1;
        while (lo < hi) {
            int mid = (lo + hi) >> 1;
            if (sk[mid].id < (u32)i)
                lo = mid + 1;
            else
                hi = mid;
        }
        HeadSkip s = sk[lo];
        float l = __fadd_rn(raw, s.bias);
        l = l <= 0.0f ? __fmul_rn(l, s.rep) : __fdiv_rn(l, s.rep);
        return head_sanitize(__fsub_rn(l, s.pen));
    }
    return head_sanitize(raw);
}

// An order-preserving key: larger float, larger key (inputs are sanitized: no NaN, no -0).
__device__ __forceinline__ u32 head_key(float v) {
    u32 b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Exclusive prefix (in thread order) of an int per thread; exact in any order. Returns
// the thread's offset; *total gets the sum. Uses ws[32].
__device__ __forceinline__ int head_scan_int(int v, int* ws, int* total) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) ws[w] = x;
    __syncthreads();
    if (w == 0) {
        int s = ws[lane];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            int y = __shfl_up_sync(0xffffffffu, s, o);
            if (lane >= o) s += y;
        }
        ws[lane] = s;
    }
    __syncthreads();
    int before = (w > 0 ? ws[w - 1] : 0) + x - v;
    *total = ws[31];
    __syncthreads();
    return before;
}

// Block b answers logits row first_row + b with request b: inv_t[b], u[b], want[b]
// (candidates wanted), skips sk[off[b] .. off[b + 1]]. Out per row: res[8b..8b+5] =
// (argmax id, its value's bits, the untruncated draw's id, candidates written, the
// drawn id's adjusted logit's bits),
// sums[2b..2b+2] = (Σ weights at 1/T, Σ e^(l - max)), and with want[b] the
// min(HEAD_K, vocab) most likely (value, id) in cval/cid[b * HEAD_K ..] (unordered).
// Dynamic shared memory: a bit per vocabulary id when any row of the launch has skips.
extern "C" __global__ void __launch_bounds__(HEAD_THREADS)
    sample_head(const float* lg, int vocab, int first_row, const float* inv_t, const double* u, const int* want,
                const int* off, const HeadSkip* skips, u32* res, double* sums, float* cval, u32* cid) {
    pdl_entry();
    extern __shared__ u32 bits[];
    __shared__ double part[HEAD_THREADS];
    __shared__ double gbase[HEAD_GROUP + 1];
    __shared__ float sv[32];
    __shared__ u32 si[32];
    __shared__ int ws[32];
    __shared__ u32 hist[256];
    __shared__ int s_first, s_last, s_count;
    __shared__ u32 s_prefix, s_mask;
    __shared__ int s_remaining;
    const int b = blockIdx.x, t = threadIdx.x, lane = t & 31, w = t >> 5;
    const float* row = lg + (u64)(first_row + b) * vocab;
    const int s0 = off[b], ns = off[b + 1] - s0;
    const HeadSkip* sk = skips + s0;
    const float it = inv_t[b];
    if (ns > 0) {
        for (int i = t; i < (vocab + 31) >> 5; i += HEAD_THREADS) bits[i] = 0;
        __syncthreads();
        for (int i = t; i < ns; i += HEAD_THREADS)
            if (sk[i].id < (u32)vocab) atomicOr(&bits[sk[i].id >> 5], 1u << (sk[i].id & 31));
    }
    __syncthreads();
    const int per = (vocab + HEAD_THREADS - 1) / HEAD_THREADS;
    const int lo = min(t * per, vocab), hi = min(lo + per, vocab);

    // The argmax: largest value, lowest id among equals (order-free, so strided reads).
    float best = -__int_as_float(0x7f800000);
    u32 bi = 0xffffffffu;
    for (int i = t; i < vocab; i += HEAD_THREADS) {
        float v = head_adj(row, i, bits, sk, ns);
        if (bi == 0xffffffffu || v > best) {
            best = v;
            bi = (u32)i;
        }
    }
    warp_argmax(&best, &bi);
    if (lane == 0) {
        sv[w] = best;
        si[w] = bi;
    }
    __syncthreads();
    if (w == 0) {
        best = sv[lane];
        bi = si[lane];
        warp_argmax(&best, &bi);
        if (lane == 0) {
            sv[0] = best;
            si[0] = bi == 0xffffffffu ? 0u : bi;
        }
    }
    __syncthreads();
    const float max = sv[0];
    const u32 max_id = si[0];
    __syncthreads();

    // Sums over the thread's own slice, in id order.
    double st = 0.0, s1 = 0.0;
    for (int i = lo; i < hi; i++) {
        float v = head_adj(row, i, bits, sk, ns);
        st += head_weight(v, max, it);
        s1 += head_weight(v, max, 1.0f);
    }
    // Group sums, then the groups' running base: the reference's order.
    part[t] = st;
    __syncthreads();
    if (w == 0) {
        // Lane g adds group g's partials; thread 0 then chains the groups in order.
        double g = 0.0;
        for (int j = 0; j < HEAD_GROUP; j++) g += part[lane * HEAD_GROUP + j];
        gbase[lane + 1] = g;
    }
    __syncthreads();
    if (t == 0) {
        gbase[0] = 0.0;
        for (int j = 0; j < HEAD_GROUP; j++) gbase[j + 1] = gbase[j] + gbase[j + 1];
    }
    __syncthreads();
    double e = gbase[w];
    for (int j = w * HEAD_GROUP; j < t; j++) e += part[j];
    const double upper = (lane == 31) ? gbase[w + 1] : e + st;
    const double total = gbase[HEAD_GROUP];
    __syncthreads();
    // The top-p normaliser, summed the same way.
    part[t] = s1;
    __syncthreads();
    if (t == 0) {
        double z = 0.0;
        for (int g = 0; g < HEAD_GROUP; g++) {
            double sg = 0.0;
            for (int j = 0; j < HEAD_GROUP; j++) sg += part[g * HEAD_GROUP + j];
            z += sg;
        }
        sums[2 * b] = total;
        sums[2 * b + 1] = z;
    }

    // The untruncated draw: the first thread whose span passes u * total, else the
    // last thread with any weight.
    const double target = __dmul_rn(u[b], total);  // (not fused into the subtraction below)
    if (t == 0) {
        s_first = HEAD_THREADS;
        s_last = -1;
    }
    __syncthreads();
    if (st > 0.0) {
        if (target < upper) atomicMin(&s_first, t);
        atomicMax(&s_last, t);
    }
    __syncthreads();
    const bool inside = s_first < HEAD_THREADS;
    const int chosen = inside ? s_first : s_last;
    if (t == 0) {
        res[8 * b] = max_id;
        res[8 * b + 1] = __float_as_uint(max);
        if (chosen < 0) {
            res[8 * b + 2] = max_id;
            res[8 * b + 4] = __float_as_uint(max);
        }
    }
    if (t == chosen) {
        double local = target - e, acc = 0.0;
        // The token where the running sum passes the target, else the slice's last
        // with any weight: the last one the walk reached either way.
        u32 last = max_id;
        float lastv = max;
        for (int i = lo; i < hi; i++) {
            float v = head_adj(row, i, bits, sk, ns);
            double wt = head_weight(v, max, it);
            if (wt > 0.0) {
                acc += wt;
                last = (u32)i;
                lastv = v;
                if (inside && acc > local) break;
            }
        }
        res[8 * b + 2] = last;
        res[8 * b + 4] = __float_as_uint(lastv);
    }
    if (!want[b]) {
        if (t == 0) res[8 * b + 3] = 0;
        return;
    }

    // Candidates: the K-th largest key by radix select, 8 bits a pass from the top.
    const int k = min(HEAD_K, vocab);
    if (t == 0) {
        s_prefix = 0;
        s_mask = 0;
        s_remaining = k;
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        if (t < 256) hist[t] = 0;
        __syncthreads();
        const u32 prefix = s_prefix, mask = s_mask;
        for (int i = t; i < vocab; i += HEAD_THREADS) {
            u32 key = head_key(head_adj(row, i, bits, sk, ns));
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (t == 0) {
            int need = s_remaining, cum = 0, d = 255;
            for (; d > 0; d--) {
                if (cum + (int)hist[d] >= need) break;
                cum += (int)hist[d];
            }
            s_remaining = need - cum;
            s_prefix = prefix | ((u32)d << shift);
            s_mask = mask | (255u << shift);
        }
        __syncthreads();
    }
    const u32 kth = s_prefix;
    const int equal_wanted = s_remaining, above = k - equal_wanted;
    if (t == 0) s_count = 0;
    __syncthreads();
    float* ov = cval + (u64)b * HEAD_K;
    u32* oi = cid + (u64)b * HEAD_K;
    int eq = 0;
    for (int i = lo; i < hi; i++) {
        float v = head_adj(row, i, bits, sk, ns);
        u32 key = head_key(v);
        if (key > kth) {
            // Fewer than k keys are above the k-th; the bound only keeps a wrong
            // count inside this row's slots (the load-time check would then fail).
            int slot = atomicAdd(&s_count, 1);
            if (slot < k) {
                ov[slot] = v;
                oi[slot] = (u32)i;
            }
        } else if (key == kth) {
            eq++;
        }
    }
    // Keys equal to the K-th: the lowest ids, ranked in id order across the threads.
    int eq_total;
    int rank = head_scan_int(eq, ws, &eq_total);
    if (eq > 0 && rank < equal_wanted) {
        for (int i = lo; i < hi && rank < equal_wanted; i++) {
            float v = head_adj(row, i, bits, sk, ns);
            if (head_key(v) == kth) {
                ov[above + rank] = v;
                oi[above + rank] = (u32)i;
                rank++;
            }
        }
    }
    if (t == 0) res[8 * b + 3] = (u32)k;
}
