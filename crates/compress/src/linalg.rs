//! The little dense linear algebra low-rank factorisation needs: Gram matrices and a
//! symmetric eigendecomposition (Householder tridiagonalisation, then implicit QL —
//! the classic EISPACK tred2/tql2 pair), in f64.

#![allow(clippy::needless_range_loop)] // index-heavy numeric code reads best as in the literature

/// `Wᵀ W` of a row-major `rows × cols` matrix (`cols × cols`, row-major), computed
/// with `threads` workers.
pub fn gram_cols(w: &[f32], rows: usize, cols: usize, threads: usize) -> Vec<f64> {
    let per = rows.div_ceil(threads.max(1)).max(1);
    let parts: Vec<Vec<f64>> = std::thread::scope(|s| {
        let hs: Vec<_> = w
            .chunks(per * cols)
            .map(|chunk| {
                s.spawn(move || {
                    let mut g = vec![0f64; cols * cols];
                    let mut row64 = vec![0f64; cols];
                    for r in chunk.chunks_exact(cols) {
                        for (d, &v) in row64.iter_mut().zip(r) {
                            *d = v as f64;
                        }
                        for a in 0..cols {
                            let va = row64[a];
                            if va == 0.0 {
                                continue;
                            }
                            let ga = &mut g[a * cols..(a + 1) * cols];
                            for b in a..cols {
                                ga[b] += va * row64[b];
                            }
                        }
                    }
                    g
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("gram worker"))
            .collect()
    });
    let mut g = vec![0f64; cols * cols];
    for p in parts {
        for (a, b) in g.iter_mut().zip(p) {
            *a += b;
        }
    }
    for a in 0..cols {
        for b in 0..a {
            g[a * cols + b] = g[b * cols + a];
        }
    }
    g
}

/// `W Wᵀ` (`rows × rows`).
pub fn gram_rows(w: &[f32], rows: usize, cols: usize, threads: usize) -> Vec<f64> {
    let mut t = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    gram_cols(&t, cols, rows, threads)
}

/// Eigenvalues (descending) and eigenvectors (column `i` of the row-major `n × n`
/// result belongs to value `i`) of the symmetric matrix `a`.
pub fn sym_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = a.to_vec();
    let mut d = vec![0f64; n];
    let mut e = vec![0f64; n];
    if n == 0 {
        return (d, v);
    }
    tred2(n, &mut v, &mut d, &mut e);
    tql2(n, &mut v, &mut d, &mut e);
    // Sort descending.
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&x, &y| d[y].total_cmp(&d[x]));
    let vals: Vec<f64> = idx.iter().map(|&i| d[i]).collect();
    let mut vecs = vec![0f64; n * n];
    for (new, &old) in idx.iter().enumerate() {
        for k in 0..n {
            vecs[k * n + new] = v[k * n + old];
        }
    }
    (vals, vecs)
}

fn tred2(n: usize, v: &mut [f64], d: &mut [f64], e: &mut [f64]) {
    let at = |i: usize, j: usize| i * n + j;
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
    }
    for i in (1..n).rev() {
        let mut scale = 0.0;
        let mut h = 0.0;
        for k in 0..i {
            scale += d[k].abs();
        }
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
                v[at(j, i)] = 0.0;
            }
        } else {
            for k in 0..i {
                d[k] /= scale;
                h += d[k] * d[k];
            }
            let mut f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for ej in e.iter_mut().take(i) {
                *ej = 0.0;
            }
            for j in 0..i {
                f = d[j];
                v[at(j, i)] = f;
                g = e[j] + v[at(j, j)] * f;
                for k in j + 1..i {
                    g += v[at(k, j)] * d[k];
                    e[k] += v[at(k, j)] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                for k in j..i {
                    v[at(k, j)] -= f * e[k] + g * d[k];
                }
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    for i in 0..n - 1 {
        v[at(n - 1, i)] = v[at(i, i)];
        v[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[at(k, i + 1)] / h;
            }
            for j in 0..=i {
                let mut g = 0.0;
                for k in 0..=i {
                    g += v[at(k, i + 1)] * v[at(k, j)];
                }
                for k in 0..=i {
                    v[at(k, j)] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[at(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
        v[at(n - 1, j)] = 0.0;
    }
    v[at(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
}

fn tql2(n: usize, v: &mut [f64], d: &mut [f64], e: &mut [f64]) {
    let at = |i: usize, j: usize| i * n + j;
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1 = 0f64;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            for _iter in 0..60 {
                let g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for di in d.iter_mut().take(n).skip(l + 2) {
                    *di -= h;
                }
                f += h;
                p = d[m];
                let mut c = 1.0;
                let mut c2 = c;
                let mut c3 = c;
                let el1 = e[l + 1];
                let mut s = 0.0;
                let mut s2 = 0.0;
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    let g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    for k in 0..n {
                        let hk = v[at(k, i + 1)];
                        v[at(k, i + 1)] = s * v[at(k, i)] + c * hk;
                        v[at(k, i)] = c * v[at(k, i)] - s * hk;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigenpairs_satisfy_the_definition() {
        let n = 37;
        let mut s = 7u64;
        let mut rnd = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f64) / (1u64 << 31) as f64 - 0.5
        };
        let b: Vec<f64> = (0..n * n).map(|_| rnd()).collect();
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = b[i * n + j] + b[j * n + i];
            }
        }
        let (vals, vecs) = sym_eigen(&a, n);
        assert!(vals.windows(2).all(|w| w[0] >= w[1]));
        for c in 0..n {
            for i in 0..n {
                let av: f64 = (0..n).map(|k| a[i * n + k] * vecs[k * n + c]).sum();
                assert!((av - vals[c] * vecs[i * n + c]).abs() < 1e-9, "pair {c}");
            }
        }
    }

    #[test]
    fn gram_matches_definition() {
        let w: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
        let g = gram_cols(&w, 4, 3, 2);
        for a in 0..3 {
            for b in 0..3 {
                let want: f64 = (0..4).map(|r| (w[r * 3 + a] * w[r * 3 + b]) as f64).sum();
                assert!((g[a * 3 + b] - want).abs() < 1e-9);
            }
        }
        let h = gram_rows(&w, 4, 3, 1);
        let want: f64 = (0..3).map(|c| (w[c] * w[3 + c]) as f64).sum();
        assert!((h[1] - want).abs() < 1e-9);
    }
}
