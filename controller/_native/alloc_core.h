/* alloc_core.h: the exact allocation kernel in C, header-only (every function static), for
 * the extension modules controller._allocc and controller._hotpath.
 *
 * fa_buy and fa_sell return EXACTLY the shares of controller/allocator.py's
 * allocate_integral and allocate_sell_integral (read that module's docstring first: the
 * maths and its proofs are there). Inputs are int64, arithmetic is __int128 and exact; a
 * call whose intermediate values could leave int128 returns FA_BOUND before computing
 * anything, and the caller then runs the Python reference (big integers).
 *
 * Notation (all in "halved" units: the reference's alpha, h and level divided by 2, which
 * changes no quotient and halves every remainder, so their order stays):
 *   a_i value, c_i weight >= 0, W = sum c_i > 0, A = sum a_i, b price > 0, q quantity > 0,
 *   B = b*q, h = W*b (one share's step),
 *   buy:  T = A + B, alpha_i = W*a_i - c_i*T; the k-th share bought by account i costs
 *         (a positive multiple of) alpha_i + h*(k - 1/2);
 *   sell: T = A - B, alpha_i = c_i*T - W*a_i; the k-th share sold (k <= holding_i) costs
 *         alpha_i + h*(k - 1/2).
 * The answer is the q cheapest steps in (cost, rank) order (the reference's docstring proves
 * that its water-filling gives exactly this greedy, ties to the smaller rank), so it is
 * unique: any method that finds those steps gives the same shares.
 *
 * 1. Candidates. Every member (weight > 0 for a buy, holding > 0 for a sell) has a first
 *    step alpha_i + h/2, and all its later steps cost strictly more (h > 0). If q members
 *    have a first step before account j's in (alpha, rank) order, those q steps all come
 *    before every step of j, so j gets nothing. Hence only the q members first in
 *    (alpha, rank) order can receive shares, and the problem may be solved on any set of
 *    members that holds them: the greedy on it takes the same q steps, and the reference's
 *    water-filling is exact for any set of alphas. When q is small against n
 *    (q <= n/FA_HEAP_RATIO; and for a sell's sweep, q < n), a bounded max-heap of size q
 *    keeps them (O(n log q)); most accounts are rejected by one comparison with the heap's
 *    top, made first in double precision with a margin that covers its rounding
 *    (fa_collect), so only the accounts near the top cost exact arithmetic. Otherwise every
 *    member is a candidate, read straight from the inputs (fa_fill).
 *    A sell never takes more than q shares from one account, so holdings are capped at q:
 *    the continuous optimum never exceeds q per account (it sums to q, all parts >= 0) and
 *    no greedy step beyond q is ever taken, so the cap changes nothing and bounds the
 *    arithmetic by q rather than by a holding.
 * 2. Buy level (Michelot's active-set iteration). With m candidates and S the sum of their
 *    alphas, the level of the continuous relaxation is L = (h*q + S)/m; every candidate with
 *    alpha > L would get a negative share, so drop them all and recompute. Dropping accounts
 *    with alpha > L strictly lowers L (h*q + S - sum dropped < (m - d)*L), so an account
 *    dropped once stays above the final level: at the end every kept account has
 *    alpha <= L and every dropped one alpha > L, which is the unique continuous solution
 *    (the sum of max(0, (L - alpha_i)/h) is strictly increasing where positive). The least
 *    alpha is never dropped (m*alpha_min <= S < h*q + S). Usually nothing is dropped (no
 *    pass) or the set halves each pass; after FA_LEVEL_PASSES passes the rest are sorted
 *    and the reference's prefix scan finishes, so the worst case stays O(m log m). An
 *    account kept with alpha == L gets 0 with remainder 0 either way.
 * 3. Sell level. First as a buy (2.: only the lower bound, s_i >= 0): if no account then
 *    sells all it holds (capped) or more, the upper bounds are slack, so that level is the
 *    sell's (the same KKT conditions) and no sort is needed: the usual sell, however large.
 *    Otherwise, as the reference: the breakpoints of the candidates are swept in order,
 *    starts sorted once, ends (alpha + h*held) in a min-heap.
 *    The sweep stops at the first breakpoint t where active*t - prefix >= need, before
 *    taking any breakpoint at t; that test does not change while breakpoints at one level
 *    are taken (a start at t adds t - alpha = 0 to the left side; an end at t takes h*held
 *    from both sides), so the state reached is the same in any order of ties.
 * 4. Shares. Account i gets floor(N_i / D) with N_i = h*q + S - m*alpha_i (buy; for the sell
 *    N_i = base - active*alpha_i, clamped to its holding) and D = h*m; the fewer than m
 *    shares left go one each to the accounts with the largest remainder, ties to the smaller
 *    rank (the reference's keys). They are found by a bucket count and a selection
 *    (fa_give_leftovers), not a full sort.
 *
 * Bound (checked per call, exact, with overflow-checked int128 arithmetic; FA_BOUND beyond).
 * Let V = R + |T| with R >= max_i |a_i| (R is the bitwise OR of the |a_i|: at most twice the
 * largest, and one instruction per two accounts). Then |alpha_i| <= W*|a_i| + c_i*|T| <= W*V
 * (c_i <= W), and with m <= n accounts in any sum:
 *   buy:  S, m*alpha <= n*W*V;  h*q + S <= W*(B + n*V);  N_i <= W*(B + 2*n*V);
 *         D = W*b*m <= W*b*n;  so every value is at most  K_buy = W*(B + n*(2V + b)).
 *   sell: ends alpha + h*held <= W*(V + B) (held capped at q); active*level <= n*W*(V + B);
 *         active*level - prefix <= n*W*(2V + B); 0 < need <= W*B (the holdings of the
 *         accounts sold out sum to less than q while the sweep runs); base <= W*(B + n*V);
 *         N_i <= W*(B + 2nV); held*D <= W*B*n; so every value is at most
 *         K_sell = W*(B + n*(2V + B + b)).
 * The call returns FA_BOUND unless K <= 2^127 - 1, and unless n <= 2^31 - 1; the sums W, A
 * and the total holding are of at most 2^31 int64 terms (< 2^94), and B < 2^126, so T and V
 * cannot overflow. (The 2(n+2)*W*T < 2^124 is the same kind of bound for the
 * unhalved formulas.)
 *
 * Scratch memory is one static buffer that grows to the largest call and is reused: not
 * reentrant, and callers serialise (they hold the GIL). FA_NOMEM if it cannot grow.
 */
#ifndef FILLALLOC_ALLOC_CORE_H
#define FILLALLOC_ALLOC_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { FA_OK = 0, FA_BOUND = 1, FA_NOMEM = -1 };

typedef __int128 fa_i128;
typedef unsigned __int128 fa_u128;

/* Accounts per call: positions are kept in 32 bits, and the int128 sums need n < 2^31. */
#define FA_MAX_ACCOUNTS ((size_t)INT32_MAX)
/* Michelot passes before the buy level falls back to sorting the accounts still in. */
#define FA_LEVEL_PASSES 12
/* A buy selects its candidates with a heap when there are at least this many accounts per
   share (each replacement in the heap costs a sift, about q*ln(n/q) of them); otherwise
   every member is a candidate and the level search drops the ones above it. */
#define FA_HEAP_RATIO 16
/* Below this many items the selection and the sort finish with an insertion sort. */
#define FA_SMALL 16
/* From this many accounts with a remainder on, the leftovers are first cut by a count of
   2^FA_BUCKET_BITS buckets of remainders (fa_give_leftovers). */
#define FA_BUCKET_MIN 256
#define FA_BUCKET_BITS 10
/* The double-precision prefilter's margin, as a fraction of W*V: far above its rounding
   error (about 6 * 2^-53 of W*V, see fa_collect). */
#define FA_FILTER_MARGIN 0x1p-45

/* An account that can receive shares: its alpha, tie-break rank, capped holding (sells). */
typedef struct {
    fa_i128 alpha;
    int64_t rank;
    int64_t held;
    uint32_t index;
} fa_cand;

/* An account with a fractional share: the remainder of its division, for the leftovers. */
typedef struct {
    fa_i128 rem;
    int64_t rank;
    uint32_t index;
} fa_sel;

/* The end of a selling account's interval (alpha + h*held) in the sell sweep's heap. */
typedef struct {
    fa_i128 end;
    uint32_t pos;
} fa_end;

static void *fa_scratch_mem = NULL;
static size_t fa_scratch_cap = 0;

/* The static scratch buffer, at least `bytes` long (16-byte aligned by malloc), or NULL. */
static void *fa_scratch(size_t bytes) {
    if (bytes > fa_scratch_cap) {
        size_t cap = fa_scratch_cap ? fa_scratch_cap : 4096;
        while (cap < bytes) cap *= 2;
        void *mem = malloc(cap);
        if (mem == NULL) return NULL;
        free(fa_scratch_mem);
        fa_scratch_mem = mem;
        fa_scratch_cap = cap;
    }
    return fa_scratch_mem;
}

static inline fa_i128 fa_abs(fa_i128 x) { return x < 0 ? -x : x; }

/* 1 when W*(B + n*(2V + extra)) <= 2^127 - 1 (every step checked), else 0. */
static int fa_within_bound(fa_i128 w, fa_i128 b_q, size_t n, fa_i128 v, fa_i128 extra) {
    fa_i128 x;
    if (__builtin_add_overflow(v, v, &x)) return 0;
    if (__builtin_add_overflow(x, extra, &x)) return 0;
    if (__builtin_mul_overflow(x, (fa_i128)n, &x)) return 0;
    if (__builtin_add_overflow(x, b_q, &x)) return 0;
    if (__builtin_mul_overflow(x, w, &x)) return 0;
    return 1;
}

/* What one pass over the inputs gives: W, A, the total holding (sells), R (the OR of the
   |a_i|, >= their maximum) and whether any weight or holding is negative. */
typedef struct {
    fa_i128 w, a, total, r;
    int negative;
} fa_sums;

typedef uint64_t fa_u64x2 __attribute__((vector_size(16)));

/* Sum W, A and (with `holding`) the total, two accounts at a time in 64-bit lanes without a
   carry: each int64 is split into its 32-bit halves (a lane sums fewer than 2^31 of them, so
   it stays below 2^63), and a signed value u - 2^64*[a < 0] is summed as its unsigned bits
   u with the count of negatives. Always inlined, so each caller gets its own loop. */
static inline __attribute__((always_inline)) void fa_scan_impl(size_t n,
                                                               const int64_t *value,
                                                               const int64_t *weight,
                                                               const int64_t *holding,
                                                               fa_sums *out) {
    const fa_u64x2 low = {0xffffffffu, 0xffffffffu}, zero = {0, 0};
    fa_u64x2 w_lo = zero, w_hi = zero, a_lo = zero, a_hi = zero, a_neg = zero;
    fa_u64x2 h_lo = zero, h_hi = zero, bits = zero, r = zero;
    size_t i = 0;
    for (; i + 2 <= n; i += 2) {
        fa_u64x2 c, a;
        memcpy(&c, weight + i, sizeof c);
        memcpy(&a, value + i, sizeof a);
        bits |= c;
        w_lo += c & low;
        w_hi += c >> 32;
        fa_u64x2 sign = a >> 63, mask = zero - sign;
        a_neg += sign;
        a_lo += a & low;
        a_hi += a >> 32;
        r |= (a ^ mask) - mask;
        if (holding) {
            fa_u64x2 h;
            memcpy(&h, holding + i, sizeof h);
            bits |= h;
            h_lo += h & low;
            h_hi += h >> 32;
        }
    }
    uint64_t wl = w_lo[0] + w_lo[1], wh = w_hi[0] + w_hi[1];
    uint64_t al = a_lo[0] + a_lo[1], ah = a_hi[0] + a_hi[1], an = a_neg[0] + a_neg[1];
    uint64_t hl = h_lo[0] + h_lo[1], hh = h_hi[0] + h_hi[1], any = bits[0] | bits[1];
    uint64_t rr = r[0] | r[1];
    for (; i < n; i++) {
        uint64_t c = (uint64_t)weight[i], a = (uint64_t)value[i], sign = a >> 63;
        any |= c;
        wl += c & 0xffffffffu;
        wh += c >> 32;
        an += sign;
        al += a & 0xffffffffu;
        ah += a >> 32;
        rr |= (a ^ (0 - sign)) - (0 - sign);
        if (holding) {
            uint64_t h = (uint64_t)holding[i];
            any |= h;
            hl += h & 0xffffffffu;
            hh += h >> 32;
        }
    }
    out->w = (fa_i128)(((fa_u128)wh << 32) + wl);
    out->a = (fa_i128)(((fa_u128)ah << 32) + al) - ((fa_i128)an << 64);
    out->total = (fa_i128)(((fa_u128)hh << 32) + hl);
    out->r = (fa_i128)rr;
    out->negative = (int)(any >> 63);
}

static void fa_scan_buy(size_t n, const int64_t *value, const int64_t *weight, fa_sums *out) {
    fa_scan_impl(n, value, weight, NULL, out);
}

static void fa_scan_sell(size_t n, const int64_t *value, const int64_t *weight,
                         const int64_t *holding, fa_sums *out) {
    fa_scan_impl(n, value, weight, holding, out);
}

static inline int fa_fits_int64(fa_i128 x) { return x >= INT64_MIN && x <= INT64_MAX; }

/* x <= y without a branch (GCC branches on int128 comparisons), for |y - x| < 2^127: the
   level search's alpha and floor(level/m) differ by at most W*(B + (n+1)*V) <= K. */
static inline int fa_at_most(fa_i128 x, fa_i128 y) {
    return (int)(((uint64_t)((fa_u128)(y - x) >> 64) >> 63) ^ 1);
}

/* W*a - c*T, with one-instruction 64x64 products when W and T fit in int64 (`narrow`). */
static inline fa_i128 fa_alpha(fa_i128 w, fa_i128 t, int64_t a, int64_t c, int narrow) {
    if (narrow) return (fa_i128)(int64_t)w * a - (fa_i128)c * (int64_t)t;
    return w * a - (fa_i128)c * t;
}

/* (alpha, rank) order: x strictly before y. */
static inline int fa_cand_before(const fa_cand *x, const fa_cand *y) {
    return x->alpha < y->alpha || (x->alpha == y->alpha && x->rank < y->rank);
}

/* Max-heap in (alpha, rank) order: move h[i] down to its place. */
static void fa_heap_sift(fa_cand *h, size_t size, size_t i) {
    fa_cand item = h[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= size) break;
        if (c + 1 < size && fa_cand_before(&h[c], &h[c + 1])) c++;
        if (!fa_cand_before(&item, &h[c])) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = item;
}

static void fa_heapify(fa_cand *h, size_t size) {
    for (size_t i = size / 2; i-- > 0;) fa_heap_sift(h, size, i);
}

static inline void fa_cand_swap(fa_cand *a, size_t i, size_t j) {
    fa_cand t = a[i];
    a[i] = a[j];
    a[j] = t;
}

/* About 2*log2(n) + 4: the partitions a quicksort or a quickselect may make before it
   stops trusting its pivots. */
static inline int fa_depth_budget(size_t n) {
    int depth = 4;
    for (size_t m = n; m > 1; m >>= 1) depth += 2;
    return depth;
}

/* Sort a[0..n) in (alpha, rank) order: introsort (median-of-three quicksort, insertion sort
   below FA_SMALL, heapsort past `depth` levels of partitions), comparisons inlined. */
static void fa_sort_cands_within(fa_cand *a, size_t n, int depth) {
    while (n > FA_SMALL) {
        if (depth-- == 0) { /* heapsort: a max-heap, its top moved to the end each time */
            fa_heapify(a, n);
            for (size_t end = n; end-- > 1;) {
                fa_cand_swap(a, 0, end);
                fa_heap_sift(a, end, 0);
            }
            return;
        }
        size_t mid = n / 2, last = n - 1;
        if (fa_cand_before(&a[mid], &a[0])) fa_cand_swap(a, mid, 0);
        if (fa_cand_before(&a[last], &a[mid])) {
            fa_cand_swap(a, last, mid);
            if (fa_cand_before(&a[mid], &a[0])) fa_cand_swap(a, mid, 0);
        }
        fa_cand_swap(a, mid, last); /* the median is the pivot, at the end */
        size_t store = 0;
        for (size_t i = 0; i < last; i++)
            if (fa_cand_before(&a[i], &a[last])) fa_cand_swap(a, i, store++);
        fa_cand_swap(a, store, last); /* [0, store) before the pivot, (store, n) after */
        /* recurse into the smaller side, loop on the larger: O(log n) stack */
        if (store < n - store - 1) {
            fa_sort_cands_within(a, store, depth);
            a += store + 1;
            n -= store + 1;
        } else {
            fa_sort_cands_within(a + store + 1, n - store - 1, depth);
            n = store;
        }
    }
    for (size_t i = 1; i < n; i++) {
        fa_cand item = a[i];
        size_t j = i;
        while (j > 0 && fa_cand_before(&item, &a[j - 1])) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = item;
    }
}

static void fa_sort_cands(fa_cand *a, size_t n) {
    fa_sort_cands_within(a, n, fa_depth_budget(n));
}

/* Collect the candidates (see 1. above) into cand: every member, or with `select` the
   first q in (alpha, rank) order (fewer if fewer are members). `sell` picks the members
   (holding > 0, else weight > 0), alpha's sign and the capped holdings. v is V of the
   bound. Returns how many. Always inlined, so each caller gets its own loop.
   The prefilter: with u = 2^-53, the double r computed for W*a - c*T (each int converted,
   two products, one difference) is within 4.02u*(W|a| + c|T|) <= 4.02u*W*V of alpha, the
   top's double within u*W*V of its alpha, and adding the margin M (>= 0.99 * 2^-45*W*V
   as computed) errs by at most u*(W*V + M). So r > fl(top + M) gives
   alpha > top + M - 6.1u*W*V - u*M > top: the account comes after the top and is rejected
   exactly as the exact test would; everything else takes the exact test. */
static inline __attribute__((always_inline)) size_t fa_collect(
    size_t n, const int64_t *value, const int64_t *weight, const int64_t *rank,
    const int64_t *holding, int64_t quantity, fa_i128 w, fa_i128 t, fa_i128 v, int sell,
    int select, fa_cand *cand) {
    int narrow = fa_fits_int64(w) && fa_fits_int64(t);
    size_t count = 0, i = 0;
    size_t limit = select ? (size_t)quantity : n;
    for (; i < n && count < limit; i++) {
        if (sell ? holding[i] == 0 : weight[i] == 0) continue;
        fa_i128 alpha = fa_alpha(w, t, value[i], weight[i], narrow);
        fa_cand *c = &cand[count++];
        c->alpha = sell ? -alpha : alpha;
        c->rank = rank[i];
        c->held = sell ? (holding[i] < quantity ? holding[i] : quantity) : 0;
        c->index = (uint32_t)i;
    }
    if (i == n) return count;
    /* select, and the heap is full: the rest replace its top when they come before it */
    fa_heapify(cand, count);
    double wd = (double)w, td = (double)t, margin = FA_FILTER_MARGIN * (wd * (double)v);
    double top = (double)cand[0].alpha + margin;
    for (; i < n; i++) {
        if (sell ? holding[i] == 0 : weight[i] == 0) continue;
        double x = wd * (double)value[i] - (double)weight[i] * td;
        if ((sell ? -x : x) > top) continue;
        fa_i128 alpha = fa_alpha(w, t, value[i], weight[i], narrow);
        if (sell) alpha = -alpha;
        if (alpha > cand[0].alpha || (alpha == cand[0].alpha && rank[i] > cand[0].rank))
            continue;
        cand[0].alpha = alpha;
        cand[0].rank = rank[i];
        cand[0].held = sell ? (holding[i] < quantity ? holding[i] : quantity) : 0;
        cand[0].index = (uint32_t)i;
        fa_heap_sift(cand, count, 0);
        top = (double)cand[0].alpha + margin;
    }
    return count;
}

/* Leftover order: x gets its share before y (larger remainder, then smaller rank). */
static inline int fa_sel_before(const fa_sel *x, const fa_sel *y) {
    return x->rem > y->rem || (x->rem == y->rem && x->rank < y->rank);
}

static inline void fa_sel_swap(fa_sel *a, size_t i, size_t j) {
    fa_sel t = a[i];
    a[i] = a[j];
    a[j] = t;
}

static void fa_sel_insertion_sort(fa_sel *a, size_t n) {
    for (size_t i = 1; i < n; i++) {
        fa_sel item = a[i];
        size_t j = i;
        while (j > 0 && fa_sel_before(&item, &a[j - 1])) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = item;
    }
}

/* Max-heap in reverse leftover order (the top comes last): move a[i] down to its place. */
static void fa_sel_sift(fa_sel *a, size_t size, size_t i) {
    fa_sel item = a[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= size) break;
        if (c + 1 < size && fa_sel_before(&a[c], &a[c + 1])) c++;
        if (!fa_sel_before(&item, &a[c])) break;
        a[i] = a[c];
        i = c;
    }
    a[i] = item;
}

/* Rearrange a[0..n) so that a[0..k) are the k first in leftover order (0 < k < n).
   Quickselect with a median-of-three pivot; keys are distinct (ranks are), so the set is
   unique. Past `budget` partitions, a heap of the k first finishes (lo < k < hi holds
   throughout, so that heap is never empty). */
static void fa_select_first_within(fa_sel *a, size_t n, size_t k, int budget) {
    size_t lo = 0, hi = n;
    while (hi - lo > FA_SMALL) {
        if (budget-- == 0) { /* a[lo..k) as a heap whose top comes last; offer the rest */
            size_t size = k - lo;
            for (size_t i = size / 2; i-- > 0;) fa_sel_sift(a + lo, size, i);
            for (size_t i = k; i < hi; i++) {
                if (fa_sel_before(&a[i], &a[lo])) {
                    fa_sel_swap(a, i, lo);
                    fa_sel_sift(a + lo, size, 0);
                }
            }
            return;
        }
        size_t mid = lo + (hi - lo) / 2, last = hi - 1;
        if (fa_sel_before(&a[mid], &a[lo])) fa_sel_swap(a, mid, lo);
        if (fa_sel_before(&a[last], &a[mid])) {
            fa_sel_swap(a, last, mid);
            if (fa_sel_before(&a[mid], &a[lo])) fa_sel_swap(a, mid, lo);
        }
        fa_sel_swap(a, mid, last); /* the median is the pivot, at the end */
        size_t store = lo;
        for (size_t i = lo; i < last; i++)
            if (fa_sel_before(&a[i], &a[last])) fa_sel_swap(a, i, store++);
        fa_sel_swap(a, store, last); /* [lo, store) before the pivot, (store, hi) after */
        if (k == store || k == store + 1) return;
        if (k < store)
            hi = store;
        else
            lo = store + 1;
    }
    fa_sel_insertion_sort(a + lo, hi - lo);
}

static void fa_select_first(fa_sel *a, size_t n, size_t k) {
    fa_select_first_within(a, n, k, fa_depth_budget(n));
}

/* Bit length of d > 0. */
static inline int fa_bit_length(fa_u128 d) {
    uint64_t high = (uint64_t)(d >> 64);
    return high ? 128 - __builtin_clzll(high) : 64 - __builtin_clzll((uint64_t)d);
}

/* A count of remainders (all below d) by their top FA_BUCKET_BITS bits, so that bucket
   order is remainder order; kept only from FA_BUCKET_MIN remainders on (`on`). The callers
   count while they divide, which saves a pass. */
typedef struct {
    int on, shift;
    uint32_t counts[1 << FA_BUCKET_BITS];
} fa_buckets;

static inline void fa_buckets_start(fa_buckets *b, size_t count, fa_i128 d) {
    b->on = count >= FA_BUCKET_MIN;
    if (!b->on) return;
    int bits = fa_bit_length((fa_u128)d);
    b->shift = bits > FA_BUCKET_BITS ? bits - FA_BUCKET_BITS : 0;
    memset(b->counts, 0, sizeof b->counts);
}

/* A remainder's bucket: rem < 2^(shift + FA_BUCKET_BITS), so with that at most 64 (every
   remainder of a divisor below 2^64, the usual step h) a 64-bit shift, not an int128 one. */
static inline uint32_t fa_bucket(const fa_buckets *b, fa_i128 rem) {
    if (b->shift <= 64 - FA_BUCKET_BITS) return (uint32_t)((uint64_t)rem >> b->shift);
    return (uint32_t)((fa_u128)rem >> b->shift);
}

static inline void fa_buckets_add(fa_buckets *b, fa_i128 rem) {
    if (b->on) b->counts[fa_bucket(b, rem)]++;
}

/* Give one more share to each of the `left` first of sel[0..count) in leftover order
   (left < count when left > 0), every remainder below d; `b` has them counted, or is NULL.
   A large set is first cut by the buckets: those above the one holding the boundary all get
   a share, and only that bucket goes to the selection, with what it still has to give. Few
   branches, where the partitions of a selection mispredict about half their comparisons. */
static void fa_give_leftovers(fa_sel *sel, size_t count, size_t left, fa_i128 d,
                              int64_t *shares, fa_buckets *b) {
    if (left == 0) return;
    fa_buckets own;
    if (b == NULL) {
        b = &own;
        fa_buckets_start(b, count, d);
        for (size_t t = 0; t < count; t++) fa_buckets_add(b, sel[t].rem);
    }
    if (b->on) {
        size_t above = 0;
        uint32_t boundary = (1u << FA_BUCKET_BITS) - 1;
        while (above + b->counts[boundary] < left) above += b->counts[boundary--];
        size_t kept = 0;
        for (size_t t = 0; t < count; t++) { /* no branch on the bucket: it is random */
            uint32_t bucket = fa_bucket(b, sel[t].rem);
            shares[sel[t].index] += bucket > boundary;
            sel[kept] = sel[t];
            kept += bucket == boundary;
        }
        left -= above;
        count = kept;
    }
    if (left < count) fa_select_first(sel, count, left);
    for (size_t t = 0; t < left; t++) shares[sel[t].index] += 1;
}

/* A divisor d > 0 prepared for many divisions by it. When d < 2^64 a division whose
   quotient fits in 64 bits costs two multiplications (Moller and Granlund, "Improved
   division by invariant integers", 2011, algorithm 4: d normalised to its top bit, with the
   reciprocal v = floor((2^128 - 1)/d) - 2^64 found once); otherwise int128 division. */
typedef struct {
    fa_u128 d;
    uint64_t norm, inverse;
    int shift, small;
} fa_divisor;

static inline fa_divisor fa_divisor_of(fa_i128 d) {
    fa_divisor dv = {(fa_u128)d, 0, 0, 0, ((fa_u128)d >> 64) == 0};
    if (dv.small) {
        dv.shift = __builtin_clzll((uint64_t)d);
        dv.norm = (uint64_t)d << dv.shift;
        dv.inverse = (uint64_t)((((fa_u128)~dv.norm) << 64 | ~(uint64_t)0) / dv.norm);
    }
    return dv;
}

/* floor(n / d) and its remainder, for 0 <= n with a quotient below 2^63 (the callers'
   shares are at most q). */
static inline int64_t fa_divide(const fa_divisor *dv, fa_i128 n, fa_i128 *rem) {
    fa_u128 un = (fa_u128)n;
    if (dv->small && (uint64_t)(un >> 64) < (uint64_t)dv->d) {
        /* un < d * 2^64, so un << shift fits and its high word is below norm */
        fa_u128 u = un << dv->shift;
        uint64_t u1 = (uint64_t)(u >> 64), u0 = (uint64_t)u;
        fa_u128 p = (fa_u128)dv->inverse * u1 + u;
        uint64_t q1 = (uint64_t)(p >> 64) + 1, q0 = (uint64_t)p;
        uint64_t r = u0 - q1 * dv->norm;
        uint64_t over = 0 - (uint64_t)(r > q0); /* taken about half the time: no branch */
        q1 += over;
        r += over & dv->norm;
        if (__builtin_expect(r >= dv->norm, 0)) {
            q1++;
            r -= dv->norm;
        }
        *rem = (fa_i128)(r >> dv->shift);
        return (int64_t)q1;
    }
    fa_u128 quotient = un / dv->d;
    *rem = (fa_i128)(un - quotient * dv->d);
    return (int64_t)quotient;
}

/* floor(a / b) for b > 0 (C division truncates toward zero). */
static inline fa_i128 fa_floor_div(fa_i128 a, fa_i128 b) {
    fa_i128 quotient = a / b;
    return a % b < 0 ? quotient - 1 : quotient;
}

/* The shares at the level with only the lower clamp (every share >= 0): the whole of a
   buy, and of a sell where no account reaches its (capped) holding. Candidates as in 1.
   (with `select`, a heap; otherwise every member, straight from the inputs), the level by
   Michelot's passes as in 2., then 4. Returns 1 with the shares written, or, for a sell
   where some account would sell all it holds or more, 0 with the shares zeroed again (the
   caller sweeps). `sell` picks the members, alpha's sign and the check; h and hq are the
   step and h*q (a sell's need). Always inlined, so each caller gets its own loops. */
static inline __attribute__((always_inline)) int fa_fill(
    size_t n, const int64_t *value, const int64_t *weight, const int64_t *rank,
    const int64_t *holding, int64_t quantity, fa_i128 w, fa_i128 t, fa_i128 v, fa_i128 h,
    fa_i128 hq, int sell, int select, fa_cand *cand, fa_sel *sel, int64_t *shares) {
    int narrow = fa_fits_int64(w) && fa_fits_int64(t);
    fa_i128 sum = 0, top = 0, level = 0;
    size_t m = 0;
    int settled = 0; /* every account left has m*alpha <= level: no level pass */
#define FA_MEMBER(i) (sell ? holding[i] != 0 : weight[i] != 0)
#define FA_ALPHA(i) \
    (sell ? -fa_alpha(w, t, value[i], weight[i], narrow) \
          : fa_alpha(w, t, value[i], weight[i], narrow))
#define FA_CAP(i) (holding[i] < quantity ? holding[i] : quantity)

    if (select) {
        m = fa_collect(n, value, weight, rank, holding, quantity, w, t, v, sell, 1, cand);
        top = cand[0].alpha;
        for (size_t j = 0; j < m; j++) {
            sum += cand[j].alpha;
            if (cand[j].alpha > top) top = cand[j].alpha;
        }
    } else if (!sell) {
        /* A buy needs no pass for its first level: over every member (weight > 0, so the
           weights of the members sum to W), S = W*A_members - W*T and h*q = W*B, so
           h*q + S = W*(A_members - A) = -W*Z with Z the values of the accounts of weight
           0 (|W*Z| <= W*n*R <= K). If the first pass below keeps every member, they all
           have m*alpha <= level: the shares come straight from it (4.). */
        fa_i128 outside = 0;
        for (size_t i = 0; i < n; i++) {
            int member = weight[i] != 0;
            outside += (fa_i128)(value[i] & ((int64_t)member - 1));
            m += (size_t)member;
        }
        level = -w * outside;
    } else {
        /* Every member: the sum and the top of the alphas first, nothing stored. */
        for (size_t i = 0; i < n; i++) {
            if (!FA_MEMBER(i)) continue;
            fa_i128 alpha = FA_ALPHA(i);
            sum += alpha;
            top = m == 0 || alpha > top ? alpha : top;
            m++;
        }
        level = hq + sum;
        if ((fa_i128)m * top <= level) { /* no one below zero: shares from the inputs */
            fa_i128 most = fa_floor_div(level, (fa_i128)m);
            fa_divisor dv = fa_divisor_of(h);
            fa_buckets buckets;
            fa_buckets_start(&buckets, m, h);
            int64_t placed = 0;
            size_t j = 0;
            for (size_t i = 0; i < n; i++) {
                if (!FA_MEMBER(i)) continue;
                fa_i128 alpha = FA_ALPHA(i), rem; /* the share and remainder as in 4. */
                int64_t whole = fa_divide(&dv, most - alpha, &rem);
                if (sell && whole >= FA_CAP(i)) {
                    memset(shares, 0, n * sizeof *shares);
                    return 0;
                }
                shares[i] = whole;
                placed += whole;
                sel[j].rem = rem;
                sel[j].rank = rank[i];
                sel[j].index = (uint32_t)i;
                fa_buckets_add(&buckets, rem);
                j++;
            }
            fa_give_leftovers(sel, m, (size_t)(quantity - placed), h, shares, &buckets);
            return 1;
        }
    }
    if (!select) {
        /* The level search's first pass, from the inputs: keep alpha <= level/m. */
        fa_i128 most = fa_floor_div(level, (fa_i128)m), kept_sum = 0;
        size_t kept = 0;
        for (size_t i = 0; i < n; i++) {
            if (!FA_MEMBER(i)) continue;
            fa_i128 alpha = FA_ALPHA(i);
            int keep = fa_at_most(alpha, most);
            kept_sum += alpha & -(fa_i128)keep;
            cand[kept].alpha = alpha;
            cand[kept].rank = rank[i];
            cand[kept].held = sell ? FA_CAP(i) : 0;
            cand[kept].index = (uint32_t)i;
            kept += (size_t)keep;
        }
        settled = !sell && kept == m; /* then kept_sum is all of S: the level stays */
        m = kept;
        sum = kept_sum;
    }
#undef FA_MEMBER
#undef FA_ALPHA
#undef FA_CAP

    level = hq + sum; /* L = level / m */
    if (select && (fa_i128)m * top <= level) settled = 1; /* no one below zero */
    /* Michelot's passes until one drops no one (the next would only repeat it). */
    for (int pass = 0; !settled; pass++) {
        if (pass == FA_LEVEL_PASSES) { /* sort what is left; the reference's prefix scan */
            fa_sort_cands(cand, m);
            size_t active = 0;
            sum = 0;
            while (active < m && hq + sum - (fa_i128)active * cand[active].alpha >= 0)
                sum += cand[active++].alpha;
            m = active;
            level = hq + sum;
            break;
        }
        /* Keep the accounts with m*alpha <= level, i.e. alpha <= floor(level/m), without a
           branch on that test (it goes either way about as often as not); the least alpha
           always stays. Nothing moves before the first account dropped, found by a scan
           that only reads: the last pass, which drops no one, copies nothing. */
        fa_i128 most = fa_floor_div(level, (fa_i128)m), kept_sum = 0;
        size_t first = 0;
        while (first < m && cand[first].alpha <= most) kept_sum += cand[first++].alpha;
        if (first == m) break;
        size_t kept = first;
        for (size_t j = first; j < m; j++) {
            fa_i128 alpha = cand[j].alpha;
            int keep = fa_at_most(alpha, most);
            kept_sum += alpha & -(fa_i128)keep;
            cand[kept] = cand[j];
            kept += (size_t)keep;
        }
        m = kept;
        sum = kept_sum;
        level = hq + sum;
    }

    /* The shares of 4. divide by h alone: with level = m*most + extra (0 <= extra < m) and
       most - alpha_i = h*k + s (0 <= s < h; most >= alpha_i for every account kept),
       N_i = level - m*alpha_i = h*m*k + (m*s + extra) where 0 <= m*s + extra < h*m = D.
       So floor(N_i/D) = k, and the remainders m*s + extra are in the order of the s:
       the leftovers go by s, to the same accounts. A divisor h is narrower than h*m (it
       usually fits in 64 bits, where fa_divide needs no int128 division). */
    fa_i128 most = fa_floor_div(level, (fa_i128)m);
    fa_divisor dv = fa_divisor_of(h);
    fa_buckets buckets;
    fa_buckets_start(&buckets, m, h);
    int64_t placed = 0;
    for (size_t j = 0; j < m; j++) {
        fa_i128 rem;
        int64_t whole = fa_divide(&dv, most - cand[j].alpha, &rem);
        if (sell && whole >= cand[j].held) {
            memset(shares, 0, n * sizeof *shares);
            return 0;
        }
        shares[cand[j].index] = whole;
        placed += whole;
        sel[j].rem = rem;
        sel[j].rank = cand[j].rank;
        sel[j].index = cand[j].index;
        fa_buckets_add(&buckets, rem);
    }
    fa_give_leftovers(sel, m, (size_t)(quantity - placed), h, shares, &buckets);
    return 1;
}

/* Buy `quantity` shares at `price` across n accounts: as allocate_integral(accounts,
   values, weights, price, quantity, ranks); rank[i] distinct (smaller wins a tie).
   Writes shares[i]. FA_BOUND when the inputs are outside what int128 holds exactly
   (the caller then uses the Python reference); never overflows. */
static int fa_buy(size_t n, const int64_t *value, const int64_t *weight, const int64_t *rank,
                  int64_t price, int64_t quantity, int64_t *shares) {
    if (price <= 0 || quantity <= 0 || n > FA_MAX_ACCOUNTS) return FA_BOUND;
    fa_sums sums;
    fa_scan_buy(n, value, weight, &sums);
    fa_i128 w = sums.w;
    if (sums.negative || w == 0) return FA_BOUND;
    fa_i128 b_q = (fa_i128)price * quantity;
    fa_i128 t = sums.a + b_q, v = sums.r + fa_abs(t);
    if (!fa_within_bound(w, b_q, n, v, price)) return FA_BOUND;
    int select = (uint64_t)quantity <= n / FA_HEAP_RATIO;
    size_t room = select ? (size_t)quantity : n;
    fa_cand *cand = fa_scratch(room * (sizeof(fa_cand) + sizeof(fa_sel)));
    if (cand == NULL) return FA_NOMEM;
    memset(shares, 0, n * sizeof *shares);
    fa_fill(n, value, weight, rank, NULL, quantity, w, t, v, w * price, w * b_q, 0, select,
            cand, (fa_sel *)(cand + room), shares);
    return FA_OK;
}

/* The sell sweep over cand[0..m) sorted by alpha (reference: _sell_level). Sets *active,
   *base (L = base/active) and *started (the accounts with alpha below the stopping
   breakpoint); `ends` has room for m. Requires 0 < need <= h * (sum of held); -1 if the
   sweep ever found otherwise (never: a guard, not a path). */
static int fa_sell_level(const fa_cand *cand, size_t m, fa_i128 h, fa_i128 need,
                         fa_end *ends, size_t *active_out, fa_i128 *base_out,
                         size_t *started_out) {
    size_t active = 0, started = 0, count = 0; /* count: entries in the ends heap */
    fa_i128 prefix = 0;
    for (;;) {
        if (started < m && (count == 0 || cand[started].alpha <= ends[0].end)) {
            fa_i128 level = cand[started].alpha;
            if ((fa_i128)active * level - prefix >= need) break;
            active++;
            prefix += level;
            /* push (level + h*held, started) on the min-heap */
            fa_end item = {level + h * cand[started].held, (uint32_t)started};
            size_t i = count++;
            while (i > 0 && item.end < ends[(i - 1) / 2].end) {
                ends[i] = ends[(i - 1) / 2];
                i = (i - 1) / 2;
            }
            ends[i] = item;
            started++;
        } else {
            /* count > 0 here: with no end left every start was taken and the sum is all
               held >= q, which the test at the last end has already met. */
            if (count == 0) return -1;
            fa_i128 level = ends[0].end;
            if ((fa_i128)active * level - prefix >= need) break;
            uint32_t j = ends[0].pos;
            active--;
            prefix -= cand[j].alpha;
            need -= h * cand[j].held;
            fa_end item = ends[--count]; /* pop: sift the last entry down from the root */
            size_t i = 0;
            for (;;) {
                size_t c = 2 * i + 1;
                if (c >= count) break;
                if (c + 1 < count && ends[c + 1].end < ends[c].end) c++;
                if (!(ends[c].end < item.end)) break;
                ends[i] = ends[c];
                i = c;
            }
            if (count > 0) ends[i] = item;
        }
    }
    *active_out = active;
    *base_out = need + prefix;
    *started_out = started;
    return active > 0 ? 0 : -1; /* the segment below q rises (reference's argument) */
}

/* Sell: as allocate_sell_integral(...); holding[i] >= 0, 1 <= quantity <= sum holding
   (else FA_BOUND: the caller checks first). */
static int fa_sell(size_t n, const int64_t *value, const int64_t *weight, const int64_t *rank,
                   int64_t price, int64_t quantity, const int64_t *holding, int64_t *shares) {
    if (price <= 0 || quantity <= 0 || n > FA_MAX_ACCOUNTS) return FA_BOUND;
    fa_sums sums;
    fa_scan_sell(n, value, weight, holding, &sums);
    if (sums.negative || quantity > sums.total) return FA_BOUND;
    if (quantity == sums.total) { /* the only feasible sell */
        memcpy(shares, holding, n * sizeof *shares);
        return FA_OK;
    }
    fa_i128 w = sums.w;
    if (w == 0) return FA_BOUND; /* the reference divides by zero: let it say so */
    fa_i128 b_q = (fa_i128)price * quantity;
    fa_i128 t = sums.a - b_q, v = sums.r + fa_abs(t);
    if (!fa_within_bound(w, b_q, n, v, b_q + price)) return FA_BOUND;
    int select = (uint64_t)quantity <= n / FA_HEAP_RATIO;
    size_t room = select ? (size_t)quantity : n;
    fa_cand *cand = fa_scratch(room * (sizeof(fa_cand) + sizeof(fa_sel) + sizeof(fa_end)));
    if (cand == NULL) return FA_NOMEM;
    fa_sel *sel = (fa_sel *)(cand + room);
    fa_end *ends = (fa_end *)(sel + room);
    memset(shares, 0, n * sizeof *shares);
    fa_i128 h = w * price, need = w * b_q;
    /* Usually no account sells all it holds: the level as for a buy, no sort. */
    if (fa_fill(n, value, weight, rank, holding, quantity, w, t, v, h, need, 1, select, cand,
                sel, shares))
        return FA_OK;

    /* A holding binds: the sweep over the sorted breakpoints of the candidates, the q
       first by heap whenever q < n (a sort costs more than the heap's sifts). */
    size_t m = fa_collect(n, value, weight, rank, holding, quantity, w, t, v, 1,
                          (uint64_t)quantity < n, cand);
    fa_sort_cands(cand, m);
    size_t active, started, inside = 0;
    fa_i128 base;
    if (fa_sell_level(cand, m, h, need, ends, &active, &base, &started) != 0)
        return FA_BOUND; /* unreachable (see fa_sell_level); the reference decides */
    fa_i128 d = h * (fa_i128)active;
    fa_divisor dv = fa_divisor_of(d);
    int64_t placed = 0;
    for (size_t j = 0; j < started; j++) {
        fa_i128 numerator = base - (fa_i128)active * cand[j].alpha;
        if (numerator < 0) continue; /* cannot happen: alpha < L for every one started */
        fa_i128 rem;
        int64_t whole;
        if (numerator >= (fa_i128)cand[j].held * d) { /* sold out (held*d <= K) */
            whole = cand[j].held;
            rem = 0;
        } else {
            whole = fa_divide(&dv, numerator, &rem);
        }
        shares[cand[j].index] = whole;
        placed += whole;
        if (rem) {
            sel[inside].rem = rem;
            sel[inside].rank = cand[j].rank;
            sel[inside].index = cand[j].index;
            inside++;
        }
    }
    fa_give_leftovers(sel, inside, (size_t)(quantity - placed), d, shares, NULL);
    return FA_OK;
}

#endif /* FILLALLOC_ALLOC_CORE_H */
