/* controller._allocc: the exact allocation kernel (alloc_core.h) for Python.
 *
 *   buy(values, weights, ranks, price, quantity[, out]) -> list[int] | None
 *   sell(values, weights, ranks, price, quantity, holdings[, out]) -> list[int] | None
 *
 * Each sequence argument is a sequence of ints (a list, a tuple, ...) or an object exporting
 * a C-contiguous buffer of int64 (array.array("q"), a memoryview of one): the second is read
 * in place, which lets the benchmark time the kernel without the conversion. The result is
 * the shares per account, exactly as controller.allocator's allocate_integral and
 * allocate_sell_integral; None when a number does not fit in int64 or the kernel cannot
 * guarantee exactness in int128 (FA_BOUND), and the caller then runs the Python reference.
 * An optional last argument `out`, a writable int64 buffer of one item per account, takes the
 * shares instead of a new list (and is returned): the benchmark times the kernel so.
 * controller/native.py is the caller; the Python functions stay the reference.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "alloc_core.h"

/* One int64 array argument: read in place from a buffer, or converted into `own`. */
typedef struct {
    const int64_t *data;
    int64_t *own;
    Py_buffer view;
    int has_view;
} fa_array;

static void fa_array_release(fa_array *arr) {
    if (arr->has_view) PyBuffer_Release(&arr->view);
    PyMem_Free(arr->own);
    arr->has_view = 0;
    arr->own = NULL;
}

/* 1 for a buffer format of one native int64 ("q", "l" or "@q", "=q", "<q" on little-endian). */
static int fa_int64_format(const Py_buffer *view) {
    const char *f = view->format;
    if (view->itemsize != 8 || f == NULL) return 0;
    if (f[0] == '@' || f[0] == '=' ||
#if PY_LITTLE_ENDIAN
        f[0] == '<'
#else
        f[0] == '>' || f[0] == '!'
#endif
    )
        f++;
    return (f[0] == 'q' || f[0] == 'l') && f[1] == '\0';
}

/* An exact int that fits in a few digits, read without a call: 1 and *out, else 0 (the
   caller then asks PyLong_AsLongLongAndOverflow). 3.12 on has an API for one digit; 3.11's
   layout is read directly (two 30-bit digits: up to 2^60, book values in micro-units). */
static inline int fa_small_int(PyObject *obj, int64_t *out) {
#if PY_VERSION_HEX >= 0x030C0000
    if (PyLong_CheckExact(obj) && PyUnstable_Long_IsCompact((PyLongObject *)obj)) {
        *out = (int64_t)PyUnstable_Long_CompactValue((PyLongObject *)obj);
        return 1;
    }
#elif PY_VERSION_HEX >= 0x030B0000 && PyLong_SHIFT == 30
    if (PyLong_CheckExact(obj)) {
        const digit *d = ((PyLongObject *)obj)->ob_digit;
        switch (Py_SIZE(obj)) {
        case 0: *out = 0; return 1;
        case 1: *out = (int64_t)d[0]; return 1;
        case -1: *out = -(int64_t)d[0]; return 1;
        case 2: *out = (int64_t)d[0] | (int64_t)d[1] << 30; return 1;
        case -2: *out = -((int64_t)d[0] | (int64_t)d[1] << 30); return 1;
        default: break;
        }
    }
#else
    (void)obj;
    (void)out;
#endif
    return 0;
}

/* Read `obj` as `n` int64s (n < 0: take its length and store it). 1 when read, 0 when a
   number does not fit in int64 (the caller returns None), -1 with an exception set. */
static int fa_array_read(PyObject *obj, const char *what, Py_ssize_t *n, fa_array *arr) {
    if (PyObject_CheckBuffer(obj) && !PyBytes_Check(obj) && !PyByteArray_Check(obj)) {
        if (PyObject_GetBuffer(obj, &arr->view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) == 0) {
            arr->has_view = 1;
            if (fa_int64_format(&arr->view)) {
                Py_ssize_t len = arr->view.len / 8;
                if (*n >= 0 && len != *n) {
                    PyErr_Format(PyExc_ValueError, "%s has %zd items, expected %zd", what, len,
                                 *n);
                    return -1;
                }
                *n = len;
                arr->data = arr->view.buf;
                return 1;
            }
            PyBuffer_Release(&arr->view);
            arr->has_view = 0;
        } else {
            PyErr_Clear(); /* not a contiguous buffer: read it as a sequence */
        }
    }
    PyObject *seq = PySequence_Fast(obj, what);
    if (seq == NULL) return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(seq);
    if (*n >= 0 && len != *n) {
        PyErr_Format(PyExc_ValueError, "%s has %zd items, expected %zd", what, len, *n);
        Py_DECREF(seq);
        return -1;
    }
    *n = len;
    arr->own = PyMem_Malloc(len ? (size_t)len * sizeof(int64_t) : 1);
    if (arr->own == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    int status = 1;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (fa_small_int(items[i], &arr->own[i])) continue;
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(items[i], &overflow);
        if (overflow) {
            status = 0;
            break;
        }
        if (x == -1 && PyErr_Occurred()) {
            status = -1;
            break;
        }
        arr->own[i] = x;
    }
    Py_DECREF(seq);
    arr->data = arr->own;
    return status;
}

/* One int argument as int64: 1, 0 when it does not fit, -1 with an exception set. */
static int fa_scalar(PyObject *obj, int64_t *out) {
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow) return 0;
    if (x == -1 && PyErr_Occurred()) return -1;
    *out = x;
    return 1;
}

static PyObject *fa_result(int status, Py_ssize_t n, const int64_t *shares) {
    if (status == FA_NOMEM) return PyErr_NoMemory();
    if (status != FA_OK) Py_RETURN_NONE;
    PyObject *list = PyList_New(n), *zero = PyLong_FromLong(0);
    if (list == NULL || zero == NULL) {
        Py_XDECREF(list);
        Py_XDECREF(zero);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *x = zero; /* most accounts get nothing: one shared 0, no call */
        if (shares[i]) {
            x = PyLong_FromLongLong(shares[i]);
            if (x == NULL) {
                Py_DECREF(list);
                Py_DECREF(zero);
                return NULL;
            }
        } else {
            Py_INCREF(zero);
        }
        PyList_SET_ITEM(list, i, x);
    }
    Py_DECREF(zero);
    return list;
}

/* 1 when the n int64s at x and at y share no byte. */
static int fa_disjoint(const int64_t *x, const int64_t *y, Py_ssize_t n) {
    return x + n <= y || y + n <= x;
}

/* The common part of buy and sell: read the arguments (holdings only for a sell), run the
   kernel, build the result: a new list, or with `out` (a writable int64 buffer of n, not
   overlapping an input) the shares written into it and `out` returned, no list built. */
static PyObject *fa_call(PyObject *const *args, Py_ssize_t nargs, int sell) {
    const char *name = sell ? "sell" : "buy";
    Py_ssize_t expected = sell ? 6 : 5;
    if (nargs != expected && nargs != expected + 1) {
        return PyErr_Format(PyExc_TypeError, "%s() takes %zd or %zd arguments (%zd given)",
                            name, expected, expected + 1, nargs);
    }
    PyObject *out = nargs > expected && args[expected] != Py_None ? args[expected] : NULL;
    fa_array values = {0}, weights = {0}, ranks = {0}, holdings = {0};
    int64_t price = 0, quantity = 0, *shares = NULL;
    Py_buffer out_view;
    int has_out = 0;
    Py_ssize_t n = -1;
    PyObject *result = NULL;
    int ok, status;
    if ((ok = fa_array_read(args[0], "values", &n, &values)) != 1) goto done;
    if ((ok = fa_array_read(args[1], "weights", &n, &weights)) != 1) goto done;
    if ((ok = fa_array_read(args[2], "ranks", &n, &ranks)) != 1) goto done;
    if ((ok = fa_scalar(args[3], &price)) != 1) goto done;
    if ((ok = fa_scalar(args[4], &quantity)) != 1) goto done;
    if (sell && (ok = fa_array_read(args[5], "holdings", &n, &holdings)) != 1) goto done;
    ok = -1;
    if (out != NULL) {
        if (PyObject_GetBuffer(out, &out_view,
                               PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        has_out = 1;
        shares = out_view.buf;
        if (!fa_int64_format(&out_view) || out_view.len != n * 8) {
            PyErr_Format(PyExc_ValueError, "out must be a writable int64 buffer of %zd items",
                         n);
            goto done;
        }
        const int64_t *inputs[] = {values.data, weights.data, ranks.data, holdings.data};
        for (size_t i = 0; i < sizeof inputs / sizeof *inputs; i++) {
            if (inputs[i] != NULL && !fa_disjoint(inputs[i], shares, n)) {
                PyErr_SetString(PyExc_ValueError, "out overlaps an input");
                goto done;
            }
        }
    } else if ((shares = PyMem_Malloc(n ? (size_t)n * sizeof *shares : 1)) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    ok = 1;
    status = sell ? fa_sell((size_t)n, values.data, weights.data, ranks.data, price, quantity,
                            holdings.data, shares)
                  : fa_buy((size_t)n, values.data, weights.data, ranks.data, price, quantity,
                           shares);
    if (out != NULL && status == FA_OK) {
        Py_INCREF(out);
        result = out;
    } else {
        result = fa_result(status, n, shares);
    }
done:
    if (ok == 0) { /* a number outside int64: the caller falls back */
        result = Py_None;
        Py_INCREF(result);
    }
    if (has_out)
        PyBuffer_Release(&out_view);
    else
        PyMem_Free(shares);
    fa_array_release(&values);
    fa_array_release(&weights);
    fa_array_release(&ranks);
    fa_array_release(&holdings);
    return result;
}

static PyObject *fa_py_buy(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    return fa_call(args, nargs, 0);
}

static PyObject *fa_py_sell(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    return fa_call(args, nargs, 1);
}

/* -- for the tests: the kernel's inner pieces, reached directly ------------------------ */

/* A Python int in [0, 2^127) as an int128; -1 with an exception otherwise. */
static int fa_py_u127(PyObject *obj, fa_i128 *out) {
    PyObject *shift = PyLong_FromLong(64), *high = NULL;
    if (shift == NULL) return -1;
    high = PyNumber_Rshift(obj, shift);
    Py_DECREF(shift);
    if (high == NULL) return -1;
    int overflow;
    long long h = PyLong_AsLongLongAndOverflow(high, &overflow);
    Py_DECREF(high);
    if (h == -1 && PyErr_Occurred()) return -1;
    if (overflow || h < 0) {
        PyErr_SetString(PyExc_ValueError, "expected an int in [0, 2**127)");
        return -1;
    }
    unsigned long long low = PyLong_AsUnsignedLongLongMask(obj);
    if (low == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *out = (fa_i128)(((fa_u128)(uint64_t)h << 64) | low);
    return 0;
}

static PyObject *fa_py_from_u128(fa_u128 x) {
    PyObject *high = PyLong_FromUnsignedLongLong((uint64_t)(x >> 64)), *shift = NULL;
    PyObject *shifted = NULL, *low = NULL, *result = NULL;
    if (high == NULL || (shift = PyLong_FromLong(64)) == NULL) goto done;
    if ((shifted = PyNumber_Lshift(high, shift)) == NULL) goto done;
    if ((low = PyLong_FromUnsignedLongLong((uint64_t)x)) == NULL) goto done;
    result = PyNumber_Or(shifted, low);
done:
    Py_XDECREF(high);
    Py_XDECREF(shift);
    Py_XDECREF(shifted);
    Py_XDECREF(low);
    return result;
}

/* _divide(n, d) -> (n // d, n % d) by fa_divisor_of and fa_divide: 0 <= n < 2^127,
   0 < d < 2^127, n // d < 2^63 (the kernel's precondition; ValueError otherwise). */
static PyObject *fa_py_divide(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    fa_i128 n, d, rem;
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "_divide() takes 2 arguments");
    if (fa_py_u127(args[0], &n) < 0 || fa_py_u127(args[1], &d) < 0) return NULL;
    if (d == 0 || (fa_u128)n / (fa_u128)d > (fa_u128)INT64_MAX) {
        PyErr_SetString(PyExc_ValueError, "need d > 0 and n // d < 2**63");
        return NULL;
    }
    fa_divisor dv = fa_divisor_of(d);
    int64_t quotient = fa_divide(&dv, n, &rem);
    PyObject *r = fa_py_from_u128((fa_u128)rem);
    if (r == NULL) return NULL;
    return Py_BuildValue("(LN)", (long long)quotient, r);
}

/* Read keys and ranks (int64 sequences of one length) for _sort and _select. */
static int fa_py_keys(PyObject *keys, PyObject *ranks, Py_ssize_t *n, fa_array *k,
                      fa_array *r) {
    int ok = fa_array_read(keys, "keys", n, k);
    if (ok == 1) ok = fa_array_read(ranks, "ranks", n, r);
    if (ok == 0) PyErr_SetString(PyExc_OverflowError, "keys and ranks must fit in int64");
    return ok == 1 ? 0 : -1;
}

static PyObject *fa_py_positions(Py_ssize_t count, const uint32_t *index, size_t stride) {
    PyObject *list = PyList_New(count);
    if (list == NULL) return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        const uint32_t *at = (const uint32_t *)((const char *)index + (size_t)i * stride);
        PyObject *x = PyLong_FromUnsignedLong(*at);
        if (x == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, x);
    }
    return list;
}

/* _sort(alphas, ranks, depth) -> positions in (alpha, rank) order, by fa_sort_cands_within
   with that many partition levels before its heapsort (0: heapsort only). */
static PyObject *fa_py_sort(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) return PyErr_Format(PyExc_TypeError, "_sort() takes 3 arguments");
    fa_array keys = {0}, ranks = {0};
    Py_ssize_t n = -1;
    PyObject *result = NULL;
    long depth = PyLong_AsLong(args[2]);
    if (depth == -1 && PyErr_Occurred()) return NULL;
    if (fa_py_keys(args[0], args[1], &n, &keys, &ranks) == 0) {
        fa_cand *a = PyMem_Malloc(n ? (size_t)n * sizeof *a : 1);
        if (a == NULL) {
            PyErr_NoMemory();
        } else {
            for (Py_ssize_t i = 0; i < n; i++) {
                a[i].alpha = keys.data[i];
                a[i].rank = ranks.data[i];
                a[i].held = 0;
                a[i].index = (uint32_t)i;
            }
            fa_sort_cands_within(a, (size_t)n, (int)depth);
            result = fa_py_positions(n, &a[0].index, sizeof *a);
            PyMem_Free(a);
        }
    }
    fa_array_release(&keys);
    fa_array_release(&ranks);
    return result;
}

/* _select(remainders, ranks, k, budget) -> the positions of the k first in leftover order
   (larger remainder, then smaller rank), by fa_select_first_within with that budget of
   partitions before its heap (0: the heap only); 0 < k < len. */
static PyObject *fa_py_select(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4) return PyErr_Format(PyExc_TypeError, "_select() takes 4 arguments");
    fa_array keys = {0}, ranks = {0};
    Py_ssize_t n = -1, k = PyLong_AsSsize_t(args[2]);
    PyObject *result = NULL;
    long budget = PyLong_AsLong(args[3]);
    if ((k == -1 || budget == -1) && PyErr_Occurred()) return NULL;
    if (fa_py_keys(args[0], args[1], &n, &keys, &ranks) == 0) {
        fa_sel *a = NULL;
        if (k <= 0 || k >= n) {
            PyErr_SetString(PyExc_ValueError, "need 0 < k < len(remainders)");
        } else if ((a = PyMem_Malloc((size_t)n * sizeof *a)) == NULL) {
            PyErr_NoMemory();
        } else {
            for (Py_ssize_t i = 0; i < n; i++) {
                a[i].rem = keys.data[i];
                a[i].rank = ranks.data[i];
                a[i].index = (uint32_t)i;
            }
            fa_select_first_within(a, (size_t)n, (size_t)k, (int)budget);
            result = fa_py_positions(k, &a[0].index, sizeof *a);
            PyMem_Free(a);
        }
    }
    fa_array_release(&keys);
    fa_array_release(&ranks);
    return result;
}

static PyMethodDef fa_methods[] = {
    {"buy", (PyCFunction)(void (*)(void))fa_py_buy, METH_FASTCALL,
     "buy(values, weights, ranks, price, quantity, out=None) -> list[int] | None\n\n"
     "Shares bought per account, exactly as allocator.allocate_integral; None when an input\n"
     "does not fit in int64 or the int128 bound (the caller runs the reference). With out\n"
     "(a writable int64 buffer of len(values)) the shares go there and out is returned."},
    {"sell", (PyCFunction)(void (*)(void))fa_py_sell, METH_FASTCALL,
     "sell(values, weights, ranks, price, quantity, holdings, out=None) -> list[int] | None\n\n"
     "Shares sold per account, exactly as allocator.allocate_sell_integral; None when an\n"
     "input does not fit in int64, the int128 bound, or the quantity is not between 1 and\n"
     "the total held (the caller runs the reference, which raises for a bad quantity).\n"
     "With out, as buy."},
    {"_divide", (PyCFunction)(void (*)(void))fa_py_divide, METH_FASTCALL,
     "_divide(n, d) -> (n // d, n % d) through the kernel's divisor (tests only)."},
    {"_sort", (PyCFunction)(void (*)(void))fa_py_sort, METH_FASTCALL,
     "_sort(alphas, ranks, depth) -> positions in (alpha, rank) order (tests only)."},
    {"_select", (PyCFunction)(void (*)(void))fa_py_select, METH_FASTCALL,
     "_select(remainders, ranks, k, budget) -> positions of the k first (tests only)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fa_module = {
    PyModuleDef_HEAD_INIT,
    "controller._allocc",
    "The exact allocation kernel in C (controller/_native/alloc_core.h); the Python\n"
    "functions in controller.allocator are the reference. Use it through controller.native.",
    -1,
    fa_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__allocc(void) {
    PyObject *module = PyModule_Create(&fa_module);
    if (module == NULL) return NULL;
    if (PyModule_AddIntConstant(module, "MAX_ACCOUNTS", (long)FA_MAX_ACCOUNTS) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
