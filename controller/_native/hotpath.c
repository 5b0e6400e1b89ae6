/* controller._hotpath: the engine's compiled path for the common case of a fill.
 *
 * `HotPath.receive(raw, sender=None)` does, for one well-formed fill that is its source's
 * next message, exactly what the pure Python engine does (controller/engine.py,
 * Engine.receive -> Book.apply): validate, sequence, journal the record, allocate with the
 * exact rule (alloc_core.h), update the book, queue the `allocation` event. It returns True
 * when it did all that, and False, having changed nothing, for anything else (a split, a
 * duplicate, a gap, a message with extra or odd fields, an over-sell, numbers outside what
 * int64/int128 hold exactly, a book under market valuation or another rule...): the Python
 * engine then handles the message as the reference. Tests run both engines on the same
 * random streams and compare journal bytes, events and books.
 *
 * The book stays the Python object it always was; this keeps int64 mirrors of the numbers
 * the rule reads (values, weights, ranks, holdings per ticker), rebuilt whenever
 * `book.revision` says the Python path changed the book (Book.apply bumps it). A fill taken
 * here changes the mirror only and marks what it changed; `flush()` writes that back into
 * the book's Python objects. The engine flushes before anything reads its book (its `book`
 * property), so no reader ever sees the book behind the journal: a fill reaching a
 * thousand accounts then costs a thousand int64 updates, not a thousand Python objects.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <fenv.h>
#include <stdint.h>

#include "alloc_core.h"
#include "msgpack_min.h"

/* Interned attribute and key names, made once at import. */
static PyObject *s_version, *s_valuation, *s_rule, *s_name, *s_split, *s_pending,
    *s_accounts, *s_values, *s_weights, *s_ranks, *s_positions, *s_last_price,
    *s_fills_allocated, *s_authorize, *s_buffer, *s_journal, *s_fill, *s_book_valuation, *s_exact;

typedef struct {
    PyObject *str;        /* the ticker as the positions dicts key it */
    const char *utf8;
    Py_ssize_t len;
} Ticker;

typedef struct {
    PyObject_HEAD
    /* what the engine owns; stable for the engine's life */
    PyObject *engine;
    PyObject *book;
    PyObject *last_seq;   /* sequencer.last_seq: source -> last applied seq */
    PyObject *waiting;    /* sequencer.waiting: sources with messages held behind a gap */
    PyObject *touched;    /* engine's set of sources to acknowledge at commit */
    PyObject *outbox;     /* engine's list of outputs for commit */
    PyObject *topic;      /* b"allocation" */
    /* limits, from common.protocol */
    Py_ssize_t max_message;
    Py_ssize_t max_name;
    int64_t price_scale;
    int64_t max_price;
    int64_t max_quantity;
    int64_t max_seq;
    /* the mirror of the book, valid while book.revision == version */
    long long version;
    int synced;
    int usable;
    Py_ssize_t n;
    int ntickers;
    Ticker *tickers;
    PyObject *accounts, *values, *positions, *last_price;
    int64_t *value, *weight, *rank, *holding, *shares;
    int64_t *held_total;  /* shares held per ticker over all accounts */
    Py_ssize_t *who;      /* the accounts that received shares in this fill, in book order */
    Py_ssize_t recipients;
    const char **name;    /* each account's name in UTF-8 (owned by the accounts list) */
    Py_ssize_t *name_len;
    /* what fills taken here changed, not yet written back into the book (flush) */
    unsigned char *value_dirty;   /* per account */
    Py_ssize_t *dirty_values;
    Py_ssize_t ndirty_values;
    unsigned char *cell_dirty;    /* per (ticker, account): cell t*n + i */
    size_t *dirty_cells;
    Py_ssize_t ndirty_cells;
    uint64_t *inserted_at;        /* per cell: when a fill here took it from 0 shares up */
    int64_t *price;               /* per ticker: the last fill price taken here */
    unsigned char *price_dirty;
    unsigned char *price_known;   /* per ticker: in book.last_price already */
    uint64_t *priced_at;          /* per ticker: when a fill here priced it first */
    uint64_t stamp;               /* orders the key insertions a flush must replay */
    long long fills_unflushed;
    int unflushed;
    mp_buf record;
    mp_buf body;
    unsigned long long handled;
    unsigned long long declined;
} HotPath;

/* -- the mirror ------------------------------------------------------------------------ */

static void mirror_free(HotPath *self)
{
    PyMem_Free(self->value);
    PyMem_Free(self->weight);
    PyMem_Free(self->rank);
    PyMem_Free(self->holding);
    PyMem_Free(self->shares);
    PyMem_Free(self->held_total);
    PyMem_Free(self->who);
    PyMem_Free(self->name);
    PyMem_Free(self->name_len);
    PyMem_Free(self->value_dirty);
    PyMem_Free(self->dirty_values);
    PyMem_Free(self->cell_dirty);
    PyMem_Free(self->dirty_cells);
    PyMem_Free(self->price);
    PyMem_Free(self->price_dirty);
    PyMem_Free(self->inserted_at);
    PyMem_Free(self->price_known);
    PyMem_Free(self->priced_at);
    self->inserted_at = self->priced_at = NULL;
    self->price_known = NULL;
    self->value = self->weight = self->rank = self->holding = self->shares = NULL;
    self->held_total = self->price = NULL;
    self->who = self->name_len = self->dirty_values = NULL;
    self->name = NULL;
    self->value_dirty = self->cell_dirty = self->price_dirty = NULL;
    self->dirty_cells = NULL;
    self->ndirty_values = self->ndirty_cells = 0;
    self->fills_unflushed = 0;
    self->unflushed = 0;
    Py_CLEAR(self->accounts);
    Py_CLEAR(self->values);
    Py_CLEAR(self->positions);
    Py_CLEAR(self->last_price);
    self->n = 0;
    self->usable = 0;
}

/* A list of ints as int64; 0 (and no error set) if one does not fit. -1 on error. */
static int int64_list(PyObject *list, Py_ssize_t n, int64_t *out)
{
    if (!PyList_Check(list) || PyList_GET_SIZE(list) != n)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        if (!PyLong_CheckExact(item))
            return 0;
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(item, &overflow);
        if (overflow)
            return 0;
        if (v == -1 && PyErr_Occurred())
            return -1;
        out[i] = v;
    }
    return 1;
}

static int ticker_index(HotPath *self, const char *s, size_t len)
{
    for (int t = 0; t < self->ntickers; t++) {
        Ticker *k = &self->tickers[t];
        if ((size_t)k->len == len && memcmp(k->utf8, s, len) == 0)
            return t;
    }
    return -1;
}

/* Is the book one this path may allocate for: exact rule, book valuation, a split in
 * force, nothing pending? 1 yes, 0 no, -1 error. */
static int book_is_plain(PyObject *book)
{
    int ok = 0;
    PyObject *valuation = NULL, *rule = NULL, *name = NULL, *split = NULL, *pending = NULL;
    if (!(valuation = PyObject_GetAttr(book, s_valuation)) ||
        !(rule = PyObject_GetAttr(book, s_rule)) ||
        !(name = PyObject_GetAttr(rule, s_name)) ||
        !(split = PyObject_GetAttr(book, s_split)) ||
        !(pending = PyObject_GetAttr(book, s_pending))) {
        ok = -1;
        goto done;
    }
    if (PyUnicode_Check(valuation) && PyUnicode_Compare(valuation, s_book_valuation) == 0 &&
        PyUnicode_Check(name) && PyUnicode_Compare(name, s_exact) == 0 && split != Py_None) {
        Py_ssize_t waiting = PyObject_Length(pending);
        if (waiting < 0)
            ok = -1;
        else
            ok = waiting == 0;
    }
    if (ok >= 0 && PyErr_Occurred())
        ok = -1;
done:
    Py_XDECREF(valuation);
    Py_XDECREF(rule);
    Py_XDECREF(name);
    Py_XDECREF(split);
    Py_XDECREF(pending);
    return ok;
}

/* Rebuild the mirror from the book (after the Python path changed it). 0 ok, -1 error. */
static int mirror_sync(HotPath *self, long long version)
{
    if (self->unflushed) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the book changed while fills taken by the compiled path were not "
                        "written back into it (the engine flushes before the book is read)");
        return -1;
    }
    mirror_free(self);
    self->version = version;
    self->synced = 1;
    int plain = book_is_plain(self->book);
    if (plain <= 0)
        return plain;
    PyObject *book = self->book;
    PyObject *weights = NULL, *ranks = NULL;
    if (!(self->accounts = PyObject_GetAttr(book, s_accounts)) ||
        !(self->values = PyObject_GetAttr(book, s_values)) ||
        !(self->positions = PyObject_GetAttr(book, s_positions)) ||
        !(self->last_price = PyObject_GetAttr(book, s_last_price)) ||
        !(weights = PyObject_GetAttr(book, s_weights)) ||
        !(ranks = PyObject_GetAttr(book, s_ranks)))
        goto error;
    if (!PyList_Check(self->accounts) || !PyList_Check(self->positions) ||
        !PyDict_Check(self->last_price))
        goto unusable;
    Py_ssize_t n = PyList_GET_SIZE(self->accounts);
    if (n == 0 || PyList_GET_SIZE(self->positions) != n)
        goto unusable;
    size_t cells = (size_t)n * (size_t)(self->ntickers ? self->ntickers : 1);
    self->value = PyMem_Malloc(sizeof(int64_t) * n);
    self->weight = PyMem_Malloc(sizeof(int64_t) * n);
    self->rank = PyMem_Malloc(sizeof(int64_t) * n);
    self->shares = PyMem_Malloc(sizeof(int64_t) * n);
    self->holding = PyMem_Calloc(cells, sizeof(int64_t));
    self->held_total = PyMem_Calloc(self->ntickers ? self->ntickers : 1, sizeof(int64_t));
    self->who = PyMem_Malloc(sizeof(Py_ssize_t) * n);
    self->name = PyMem_Malloc(sizeof(char *) * n);
    self->name_len = PyMem_Malloc(sizeof(Py_ssize_t) * n);
    self->value_dirty = PyMem_Calloc(n, 1);
    self->dirty_values = PyMem_Malloc(sizeof(Py_ssize_t) * n);
    self->cell_dirty = PyMem_Calloc(cells, 1);
    self->dirty_cells = PyMem_Malloc(sizeof(size_t) * cells);
    self->price = PyMem_Calloc(self->ntickers ? self->ntickers : 1, sizeof(int64_t));
    self->price_dirty = PyMem_Calloc(self->ntickers ? self->ntickers : 1, 1);
    self->inserted_at = PyMem_Calloc(cells, sizeof(uint64_t));
    self->price_known = PyMem_Calloc(self->ntickers ? self->ntickers : 1, 1);
    self->priced_at = PyMem_Calloc(self->ntickers ? self->ntickers : 1, sizeof(uint64_t));
    if (!self->value || !self->weight || !self->rank || !self->shares || !self->holding ||
        !self->held_total || !self->who || !self->name || !self->name_len ||
        !self->value_dirty || !self->dirty_values || !self->cell_dirty || !self->dirty_cells ||
        !self->price || !self->price_dirty || !self->inserted_at || !self->price_known ||
        !self->priced_at) {
        PyErr_NoMemory();
        goto error;
    }
    int fits;
    if ((fits = int64_list(self->values, n, self->value)) <= 0 ||
        (fits = int64_list(weights, n, self->weight)) <= 0 ||
        (fits = int64_list(ranks, n, self->rank)) <= 0) {
        if (fits < 0)
            goto error;
        goto unusable;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *account = PyList_GET_ITEM(self->accounts, i);
        if (!PyUnicode_Check(account))
            goto unusable;
        if (!(self->name[i] = PyUnicode_AsUTF8AndSize(account, &self->name_len[i])))
            goto error;
        PyObject *held = PyList_GET_ITEM(self->positions, i);
        if (!PyDict_Check(held))
            goto unusable;
        for (int t = 0; t < self->ntickers; t++) {
            PyObject *count = PyDict_GetItemWithError(held, self->tickers[t].str);
            if (count == NULL) {
                if (PyErr_Occurred())
                    goto error;
                continue;
            }
            int overflow = 0;
            long long c = PyLong_Check(count) ? PyLong_AsLongLongAndOverflow(count, &overflow) : -1;
            if (overflow || c < 0 || __builtin_add_overflow(self->held_total[t], c,
                                                            &self->held_total[t]))
                goto unusable;
            self->holding[(size_t)t * n + i] = c;
        }
    }
    for (int t = 0; t < self->ntickers; t++) {
        int known = PyDict_Contains(self->last_price, self->tickers[t].str);
        if (known < 0)
            goto error;
        self->price_known[t] = (unsigned char)known;
    }
    self->n = n;
    self->usable = 1;
    Py_DECREF(weights);
    Py_DECREF(ranks);
    return 0;
unusable:
    Py_XDECREF(weights);
    Py_XDECREF(ranks);
    mirror_free(self);
    return 0;
error:
    Py_XDECREF(weights);
    Py_XDECREF(ranks);
    mirror_free(self);
    self->synced = 0;
    return -1;
}

/* -- reading one fill ------------------------------------------------------------------ */

typedef struct {
    const char *source;
    size_t source_len;
    int64_t seq;
    int ticker;
    int64_t price_units;
    int64_t quantity;
    int sell;
} FastFill;

static int key_is(const mp_value *k, const char *name)
{
    size_t len = strlen(name);
    return k->len == len && memcmp(k->s, name, len) == 0;
}

static int str_is(const mp_value *v, const char *text)
{
    return v->kind == MP_STR && key_is(v, text);
}

/* The price in units of 1/price_scale, as common.protocol.price_units computes it; 0 if
 * the Python path must judge it. */
static int64_t price_units_of(HotPath *self, const mp_value *price)
{
    if (price->kind == MP_INT) {
        if (price->i < 1 || price->i > self->max_price)
            return 0;
        return price->i * self->price_scale;
    }
    if (price->kind != MP_FLOAT)
        return 0;
    double p = price->f;
    if (!isfinite(p) || p <= 0 || p > (double)self->max_price)
        return 0;
    double scaled = nearbyint(p * (double)self->price_scale); /* round half to even */
    int64_t units = (int64_t)scaled;
    if ((double)units / (double)self->price_scale != p)
        return 0;
    if (units < 1 || units > self->max_price * self->price_scale)
        return 0;
    return units;
}

enum { F_TYPE = 1, F_SOURCE = 2, F_SEQ = 4, F_TICKER = 8, F_PRICE = 16, F_QUANTITY = 32,
       F_SIDE = 64 };
#define F_REQUIRED (F_TYPE | F_SOURCE | F_SEQ | F_TICKER | F_PRICE | F_QUANTITY)

/* Parse and validate a fill the way common.protocol.validate would accept it; 1 if it is
 * one this path takes, 0 otherwise (the Python path then reads it). */
static int read_fill(HotPath *self, const char *raw, Py_ssize_t size, FastFill *fill)
{
    if (size > self->max_message)
        return 0;
    mp_reader r = {(const unsigned char *)raw, (const unsigned char *)raw + size};
    long entries = mp_read_map_header(&r);
    if (entries < 6 || entries > 7)
        return 0;
    int seen = 0;
    mp_value key, value;
    fill->sell = 0;
    for (long e = 0; e < entries; e++) {
        if (!mp_read_value(&r, &key) || key.kind != MP_STR || !mp_read_value(&r, &value))
            return 0;
        int field;
        if (key_is(&key, "type")) {
            if (!str_is(&value, "fill"))
                return 0;
            field = F_TYPE;
        } else if (key_is(&key, "source")) {
            if (value.kind != MP_STR || value.len == 0 || value.len > (size_t)self->max_name)
                return 0;
            for (size_t k = 0; k < value.len; k++)
                if ((unsigned char)value.s[k] >= 0x80)
                    return 0; /* text beyond ASCII: the Python path counts its characters */
            fill->source = value.s;
            fill->source_len = value.len;
            field = F_SOURCE;
        } else if (key_is(&key, "seq")) {
            if (value.kind != MP_INT || value.i < 1 || value.i > self->max_seq)
                return 0;
            fill->seq = value.i;
            field = F_SEQ;
        } else if (key_is(&key, "ticker")) {
            if (value.kind != MP_STR || (fill->ticker = ticker_index(self, value.s, value.len)) < 0)
                return 0;
            field = F_TICKER;
        } else if (key_is(&key, "price")) {
            if (!(fill->price_units = price_units_of(self, &value)))
                return 0;
            field = F_PRICE;
        } else if (key_is(&key, "quantity")) {
            if (value.kind != MP_INT || value.i < 1 || value.i > self->max_quantity)
                return 0;
            fill->quantity = value.i;
            field = F_QUANTITY;
        } else if (key_is(&key, "side")) {
            if (str_is(&value, "sell"))
                fill->sell = 1;
            else if (!str_is(&value, "buy"))
                return 0;
            field = F_SIDE;
        } else {
            return 0; /* an extra field: the Python path ignores it, so let it */
        }
        if (seen & field)
            return 0; /* a repeated key: the Python path keeps the last */
        seen |= field;
    }
    return r.at == r.end && (seen & F_REQUIRED) == F_REQUIRED;
}

/* -- writing what happened ------------------------------------------------------------- */

static const char *side_text(int sell) { return sell ? "sell" : "buy"; }

/* The journal record, framed: controller.journal.frame(pack(encode_input(fill))). */
static void write_record(HotPath *self, const FastFill *f)
{
    mp_buf *b = &self->record;
    b->len = 0;
    unsigned char frame[8] = {0};
    mp_put(b, frame, 8);
    mp_put_array_header(b, 7);
    mp_put_str(b, "F", 1);
    mp_put_str(b, f->source, f->source_len);
    mp_put_int(b, f->seq);
    Ticker *t = &self->tickers[f->ticker];
    mp_put_str(b, t->utf8, (size_t)t->len);
    mp_put_int(b, f->price_units);
    mp_put_int(b, f->quantity);
    mp_put_str(b, side_text(f->sell), f->sell ? 4 : 3);
    if (b->failed)
        return;
    uint32_t len = (uint32_t)(b->len - 8);
    uint32_t crc = crc32_of(b->data + 8, len);
    for (int k = 0; k < 4; k++) {
        b->data[k] = (unsigned char)(len >> (8 * k));
        b->data[4 + k] = (unsigned char)(crc >> (8 * k));
    }
}

/* The `allocation` event's body: common.protocol.allocation_frames, byte for byte. */
static int write_event(HotPath *self, const FastFill *f)
{
    mp_buf *b = &self->body;
    b->len = 0;
    mp_put_map_header(b, 7);
    mp_put_str(b, "source", 6);
    mp_put_str(b, f->source, f->source_len);
    mp_put_str(b, "seq", 3);
    mp_put_int(b, f->seq);
    mp_put_str(b, "ticker", 6);
    Ticker *t = &self->tickers[f->ticker];
    mp_put_str(b, t->utf8, (size_t)t->len);
    mp_put_str(b, "price", 5);
    mp_put_double(b, (double)f->price_units / (double)self->price_scale);
    mp_put_str(b, "quantity", 8);
    mp_put_int(b, f->quantity);
    mp_put_str(b, "side", 4);
    mp_put_str(b, side_text(f->sell), f->sell ? 4 : 3);
    mp_put_str(b, "allocations", 11);
    mp_put_map_header(b, (size_t)self->recipients);
    const Py_ssize_t *who = self->who, *name_len = self->name_len;
    const int64_t *shares = self->shares;
    const char **name = self->name;
    for (Py_ssize_t k = 0, recipients = self->recipients; k < recipients; k++) {
        Py_ssize_t i = who[k];
        size_t len = (size_t)name_len[i];
        int64_t x = shares[i];
        if (len < 32 && x < 128 && mp_reserve(b, len + 2)) {
            /* the usual entry (a short name, a few shares), written without the checks */
            unsigned char *at = b->data + b->len;
            *at++ = (unsigned char)(0xa0 | len);
            memcpy(at, name[i], len);
            at[len] = (unsigned char)x;
            b->len += len + 2;
            continue;
        }
        mp_put_str(b, name[i], len);
        mp_put_int(b, x);
    }
    if (b->failed) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* -- receive ----------------------------------------------------------------------------- */

/* 1: the fill's seq is its source's next and nothing of the source waits; 0: not; -1. */
static int is_next(HotPath *self, PyObject *source, int64_t seq)
{
    int held = PyDict_Contains(self->waiting, source);
    if (held != 0)
        return held < 0 ? -1 : 0;
    PyObject *last = PyDict_GetItemWithError(self->last_seq, source);
    long long previous = 0;
    if (last == NULL) {
        if (PyErr_Occurred())
            return -1;
    } else {
        int overflow = 0;
        previous = PyLong_AsLongLongAndOverflow(last, &overflow);
        if (overflow || (previous == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
    }
    return seq - 1 == previous; /* seq >= 1: no overflow, even at a last seq of 2^63 - 1 */
}

/* 1 if the sender may send fills for `source` (or no one checks); 0 if not; -1 on error. */
static int authorized(HotPath *self, PyObject *sender, PyObject *source)
{
    PyObject *check = PyObject_GetAttr(self->engine, s_authorize);
    if (check == NULL)
        return -1;
    if (check == Py_None) {
        Py_DECREF(check);
        return 1;
    }
    PyObject *why = PyObject_CallFunctionObjArgs(check, sender, s_fill, source, NULL);
    Py_DECREF(check);
    if (why == NULL)
        return -1;
    int ok = why == Py_None;
    Py_DECREF(why);
    return ok;
}

/* Allocate the fill on the mirror into shares/who: 1 done, 0 the Python path must (an
 * over-sell, or numbers past int64/int128), -1 error. Changes nothing of the book. */
static int allocate(HotPath *self, const FastFill *f)
{
    Py_ssize_t n = self->n;
    int64_t *held = self->holding + (size_t)f->ticker * n;
    int64_t total;
    int rc;
    if (f->sell) {
        if (f->quantity > self->held_total[f->ticker])
            return 0; /* an over-sell: the Python path rejects it, with its reason */
        rc = fa_sell((size_t)n, self->value, self->weight, self->rank, f->price_units,
                     f->quantity, held, self->shares);
    } else {
        if (__builtin_add_overflow(self->held_total[f->ticker], f->quantity, &total))
            return 0;
        rc = fa_buy((size_t)n, self->value, self->weight, self->rank, f->price_units,
                    f->quantity, self->shares);
    }
    if (rc == FA_NOMEM) {
        PyErr_NoMemory();
        return -1;
    }
    if (rc != FA_OK)
        return 0; /* beyond int128: the Python path's big integers */
    /* locals: the compiler cannot keep fields of *self in registers across the stores */
    const int64_t *restrict shares = self->shares, *restrict value = self->value;
    Py_ssize_t *restrict who = self->who;
    const int64_t price = f->price_units;
    const int sell = f->sell;
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t x = shares[i];
        if (!x)
            continue;
        int64_t money, after;
        if (__builtin_mul_overflow(x, price, &money) ||
            __builtin_add_overflow(value[i], sell ? -money : money, &after) ||
            (!sell && __builtin_add_overflow(held[i], x, &total)))
            return 0; /* a value past int64: the Python path's big integers */
        who[count++] = i;
    }
    self->recipients = count;
    return 1;
}

/* Append the framed record to the batch of the engine's journal (read each time: the
 * engine may be given its journal after it was made). */
static int append_journal_record(HotPath *self)
{
    PyObject *journal = PyObject_GetAttr(self->engine, s_journal);
    if (journal == NULL)
        return -1;
    if (journal == Py_None) {
        Py_DECREF(journal);
        return 0;
    }
    PyObject *buffer = PyObject_GetAttr(journal, s_buffer);
    Py_DECREF(journal);
    if (buffer == NULL)
        return -1;
    if (!PyByteArray_Check(buffer)) {
        Py_DECREF(buffer);
        PyErr_SetString(PyExc_TypeError, "the journal's pending buffer must be a bytearray");
        return -1;
    }
    Py_ssize_t old = PyByteArray_GET_SIZE(buffer);
    if (PyByteArray_Resize(buffer, old + (Py_ssize_t)self->record.len) < 0) {
        Py_DECREF(buffer);
        return -1;
    }
    memcpy(PyByteArray_AS_STRING(buffer) + old, self->record.data, self->record.len);
    Py_DECREF(buffer);
    return 0;
}

/* Sequence, journal and queue the allocated fill, then apply it to the mirror, marking
 * what changed for flush(). */
static int commit_fill(HotPath *self, const FastFill *f, PyObject *source, PyObject *event)
{
    PyObject *seq = PyLong_FromLongLong(f->seq);
    if (seq == NULL)
        return -1;
    int rc = -1;
    if (PyList_Append(self->outbox, event) < 0) /* first: the one step that may grow */
        goto done;
    if (append_journal_record(self) < 0 || PyDict_SetItem(self->last_seq, source, seq) < 0 ||
        PySet_Add(self->touched, source) < 0) {
        /* cannot happen short of memory; the batch is then not committed (fail-stop) */
        goto done;
    }
    Py_ssize_t n = self->n;
    size_t base = (size_t)f->ticker * n;
    const Py_ssize_t *restrict who = self->who;
    const int64_t *restrict shares = self->shares;
    int64_t *restrict value = self->value, *restrict held = self->holding + base;
    uint64_t *restrict inserted_at = self->inserted_at + base;
    unsigned char *restrict value_dirty = self->value_dirty, *restrict cell_dirty =
        self->cell_dirty + base;
    Py_ssize_t *restrict dirty_values = self->dirty_values;
    size_t *restrict dirty_cells = self->dirty_cells;
    Py_ssize_t ndirty_values = self->ndirty_values, ndirty_cells = self->ndirty_cells;
    uint64_t stamp = self->stamp;
    const int64_t price = f->price_units;
    const int sell = f->sell;
    for (Py_ssize_t k = 0, recipients = self->recipients; k < recipients; k++) {
        Py_ssize_t i = who[k];
        int64_t x = shares[i];
        int64_t money = x * price;
        value[i] += sell ? -money : money;
        if (held[i] == 0)
            inserted_at[i] = ++stamp; /* Python inserts the key anew */
        held[i] += sell ? -x : x;
        if (!value_dirty[i]) {
            value_dirty[i] = 1;
            dirty_values[ndirty_values++] = i;
        }
        if (!cell_dirty[i]) {
            cell_dirty[i] = 1;
            dirty_cells[ndirty_cells++] = base + (size_t)i;
        }
    }
    self->ndirty_values = ndirty_values;
    self->ndirty_cells = ndirty_cells;
    self->stamp = stamp;
    self->held_total[f->ticker] += f->sell ? -f->quantity : f->quantity;
    self->price[f->ticker] = f->price_units;
    self->price_dirty[f->ticker] = 1;
    if (!self->price_known[f->ticker]) {
        self->price_known[f->ticker] = 1;
        self->priced_at[f->ticker] = ++self->stamp;
    }
    self->fills_unflushed++;
    self->unflushed = 1;
    self->handled++;
    rc = 0;
done:
    Py_DECREF(seq);
    return rc;
}

static long long book_version(HotPath *self)
{
    PyObject *v = PyObject_GetAttr(self->book, s_version);
    if (v == NULL)
        return -1;
    long long version = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return version;
}

static PyObject *HotPath_receive(HotPath *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "receive(raw: bytes, sender: str | None = None)");
        return NULL;
    }
    PyObject *sender = nargs == 2 ? args[1] : Py_None;
    FastFill f = {0};
    if (!read_fill(self, PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]), &f))
        goto decline;
    long long version = book_version(self);
    if (version == -1 && PyErr_Occurred())
        return NULL;
    if ((!self->synced || version != self->version) && mirror_sync(self, version) < 0)
        return NULL;
    if (!self->usable)
        goto decline;

    PyObject *source = PyUnicode_FromStringAndSize(f.source, (Py_ssize_t)f.source_len);
    if (source == NULL)
        return NULL;
    PyObject *event = NULL, *body = NULL;
    int step = is_next(self, source, f.seq);
    if (step == 1)
        step = authorized(self, sender, source);
    if (step == 1)
        step = allocate(self, &f);
    if (step == 1) {
        write_record(self, &f);
        if (self->record.failed || write_event(self, &f) < 0 ||
            !(body = PyBytes_FromStringAndSize((const char *)self->body.data,
                                               (Py_ssize_t)self->body.len)) ||
            !(event = PyTuple_Pack(2, self->topic, body))) {
            if (!PyErr_Occurred())
                PyErr_NoMemory();
            step = -1;
        } else {
            step = commit_fill(self, &f, source, event) < 0 ? -1 : 1;
        }
    }
    Py_XDECREF(event);
    Py_XDECREF(body);
    Py_DECREF(source);
    if (step < 0)
        return NULL;
    if (step == 0)
        goto decline;
    Py_RETURN_TRUE;
decline:
    self->declined++;
    Py_RETURN_FALSE;
}

static int bump(PyObject *obj, PyObject *name, long long to)
{
    PyObject *v = PyLong_FromLongLong(to);
    if (v == NULL)
        return -1;
    int rc = PyObject_SetAttr(obj, name, v);
    Py_DECREF(v);
    return rc;
}

/* Write what fills taken here changed back into the book's Python objects. Idempotent: a
 * failure half-way leaves the marks, and the next flush writes the same numbers again. */
typedef struct {
    uint64_t at;
    size_t index;
} Stamped;

static int by_stamp(const void *a, const void *b)
{
    uint64_t x = ((const Stamped *)a)->at, y = ((const Stamped *)b)->at;
    return (x > y) - (x < y);
}

/* Set `key` to `count` in `dict` (deleting it at 0); with `anew`, delete it first so that it
 * goes to the end, where the Python path's insertion of a key it had deleted puts it. */
static int write_count(PyObject *dict, PyObject *key, int64_t count, int anew)
{
    if (count == 0 || anew) {
        int present = PyDict_Contains(dict, key);
        if (present < 0 || (present && PyDict_DelItem(dict, key) < 0))
            return -1;
        if (count == 0)
            return 0;
    }
    PyObject *c = PyLong_FromLongLong(count);
    if (c == NULL)
        return -1;
    int rc = PyDict_SetItem(dict, key, c);
    Py_DECREF(c);
    return rc;
}

/* Write what fills taken here changed back into the book's Python objects, keys in the
 * order the Python path would have inserted them (snapshot and checkpoint bytes agree).
 * Idempotent: a failure half-way leaves the marks, and the next flush writes the same
 * numbers again. */
static PyObject *HotPath_flush(HotPath *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->unflushed)
        Py_RETURN_NONE;
    long long version = book_version(self);
    if (version == -1 && PyErr_Occurred())
        return NULL;
    if (version != self->version) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the book was changed behind the engine while the compiled path held "
                        "fills not yet written back into it (read the book through "
                        "Engine.book, which writes them back first)");
        return NULL;
    }
    Py_ssize_t n = self->n;
    for (Py_ssize_t k = 0; k < self->ndirty_values; k++) {
        Py_ssize_t i = self->dirty_values[k];
        PyObject *v = PyLong_FromLongLong(self->value[i]);
        if (v == NULL)
            return NULL;
        PyList_SetItem(self->values, i, v); /* steals the reference */
    }
    Py_ssize_t most = self->ndirty_cells > self->ntickers ? self->ndirty_cells : self->ntickers;
    Stamped *anew = PyMem_Malloc(sizeof(Stamped) * (most ? most : 1));
    if (anew == NULL)
        return PyErr_NoMemory();
    Py_ssize_t count = 0;
    for (Py_ssize_t k = 0; k < self->ndirty_cells; k++) {
        size_t cell = self->dirty_cells[k];
        if (self->inserted_at[cell] && self->holding[cell]) {
            anew[count++] = (Stamped){self->inserted_at[cell], cell};
            continue;
        }
        PyObject *positions = PyList_GET_ITEM(self->positions, (Py_ssize_t)(cell % n));
        if (write_count(positions, self->tickers[cell / n].str, self->holding[cell], 0) < 0)
            goto error;
    }
    qsort(anew, (size_t)count, sizeof(Stamped), by_stamp);
    for (Py_ssize_t k = 0; k < count; k++) {
        size_t cell = anew[k].index;
        PyObject *positions = PyList_GET_ITEM(self->positions, (Py_ssize_t)(cell % n));
        if (write_count(positions, self->tickers[cell / n].str, self->holding[cell], 1) < 0)
            goto error;
    }
    count = 0;
    for (int t = 0; t < self->ntickers; t++) {
        if (!self->price_dirty[t])
            continue;
        if (self->priced_at[t]) {
            anew[count++] = (Stamped){self->priced_at[t], (size_t)t};
            continue;
        }
        if (write_count(self->last_price, self->tickers[t].str, self->price[t], 0) < 0)
            goto error;
    }
    qsort(anew, (size_t)count, sizeof(Stamped), by_stamp);
    for (Py_ssize_t k = 0; k < count; k++) {
        size_t t = anew[k].index;
        if (write_count(self->last_price, self->tickers[t].str, self->price[t], 0) < 0)
            goto error;
    }
    PyMem_Free(anew);
    PyObject *fills = PyObject_GetAttr(self->book, s_fills_allocated);
    if (fills == NULL)
        return NULL;
    long long allocated = PyLong_AsLongLong(fills);
    Py_DECREF(fills);
    if ((allocated == -1 && PyErr_Occurred()) ||
        bump(self->book, s_fills_allocated, allocated + self->fills_unflushed) < 0)
        return NULL;
    /* written back: clear the marks */
    for (Py_ssize_t k = 0; k < self->ndirty_values; k++)
        self->value_dirty[self->dirty_values[k]] = 0;
    for (Py_ssize_t k = 0; k < self->ndirty_cells; k++) {
        self->cell_dirty[self->dirty_cells[k]] = 0;
        self->inserted_at[self->dirty_cells[k]] = 0;
    }
    memset(self->price_dirty, 0, self->ntickers ? self->ntickers : 1);
    memset(self->priced_at, 0, sizeof(uint64_t) * (self->ntickers ? self->ntickers : 1));
    self->ndirty_values = self->ndirty_cells = 0;
    self->fills_unflushed = 0;
    self->unflushed = 0;
    Py_RETURN_NONE;
error:
    PyMem_Free(anew);
    return NULL;
}

/* -- the type ---------------------------------------------------------------------------- */

static int HotPath_init(HotPath *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"engine", "book", "tickers", "last_seq", "waiting", "touched",
                             "outbox", "topic", "max_message", "max_name",
                             "price_scale", "max_price", "max_quantity", "max_seq", NULL};
    PyObject *engine, *book, *tickers, *last_seq, *waiting, *touched, *outbox, *topic;
    Py_ssize_t max_message, max_name;
    long long price_scale, max_price, max_quantity, max_seq;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "$OOOO!O!O!O!O!nnLLLL", kwlist, &engine,
                                     &book, &tickers, &PyDict_Type, &last_seq, &PyDict_Type,
                                     &waiting, &PySet_Type, &touched, &PyList_Type, &outbox,
                                     &PyBytes_Type, &topic, &max_message, &max_name,
                                     &price_scale, &max_price, &max_quantity, &max_seq))
        return -1;
    if (price_scale < 1 || max_price < 1 || max_quantity < 1 || max_seq < 1 ||
        max_price > INT64_MAX / price_scale) {
        PyErr_SetString(PyExc_ValueError, "limits must be positive and fit int64");
        return -1;
    }
    PyObject *sorted = PySequence_List(tickers);
    if (sorted == NULL || PyList_Sort(sorted) < 0) {
        Py_XDECREF(sorted);
        return -1;
    }
    Py_ssize_t count = PyList_GET_SIZE(sorted);
    Ticker *table = PyMem_Calloc(count ? count : 1, sizeof(Ticker));
    if (table == NULL) {
        Py_DECREF(sorted);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t t = 0; t < count; t++) {
        PyObject *name = PyList_GET_ITEM(sorted, t);
        if (!PyUnicode_Check(name) ||
            !(table[t].utf8 = PyUnicode_AsUTF8AndSize(name, &table[t].len))) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "tickers must be strings");
            for (Py_ssize_t j = 0; j < t; j++)
                Py_DECREF(table[j].str);
            PyMem_Free(table);
            Py_DECREF(sorted);
            return -1;
        }
        table[t].str = Py_NewRef(name);
    }
    Py_DECREF(sorted);
    self->tickers = table;
    self->ntickers = (int)count;
    self->engine = Py_NewRef(engine);
    self->book = Py_NewRef(book);
    self->last_seq = Py_NewRef(last_seq);
    self->waiting = Py_NewRef(waiting);
    self->touched = Py_NewRef(touched);
    self->outbox = Py_NewRef(outbox);
    self->topic = Py_NewRef(topic);
    self->max_message = max_message;
    self->max_name = max_name;
    self->price_scale = price_scale;
    self->max_price = max_price;
    self->max_quantity = max_quantity;
    self->max_seq = max_seq;
    self->synced = 0;
    return 0;
}

static int HotPath_traverse(HotPath *self, visitproc visit, void *arg)
{
    Py_VISIT(self->engine);
    Py_VISIT(self->book);
    Py_VISIT(self->last_seq);
    Py_VISIT(self->waiting);
    Py_VISIT(self->touched);
    Py_VISIT(self->outbox);
    Py_VISIT(self->accounts);
    Py_VISIT(self->values);
    Py_VISIT(self->positions);
    Py_VISIT(self->last_price);
    return 0;
}

static int HotPath_clear(HotPath *self)
{
    Py_CLEAR(self->engine);
    Py_CLEAR(self->book);
    Py_CLEAR(self->last_seq);
    Py_CLEAR(self->waiting);
    Py_CLEAR(self->touched);
    Py_CLEAR(self->outbox);
    Py_CLEAR(self->topic);
    mirror_free(self);
    return 0;
}

static void HotPath_dealloc(HotPath *self)
{
    PyObject_GC_UnTrack(self);
    HotPath_clear(self);
    for (int t = 0; t < self->ntickers; t++)
        Py_XDECREF(self->tickers[t].str);
    PyMem_Free(self->tickers);
    free(self->record.data);
    free(self->body.data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *HotPath_counts(HotPath *self, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("{sKsK}", "handled", self->handled, "declined", self->declined);
}

static PyMethodDef HotPath_methods[] = {
    {"receive", (PyCFunction)(void (*)(void))HotPath_receive, METH_FASTCALL,
     "receive(raw, sender=None) -> bool: take one common-case fill (True), or change "
     "nothing and leave the message to the Python engine (False)."},
    {"flush", (PyCFunction)HotPath_flush, METH_NOARGS,
     "flush(): write what fills taken here changed back into the book's Python objects."},
    {"counts", (PyCFunction)HotPath_counts, METH_NOARGS,
     "counts() -> {'handled': n, 'declined': n}: messages taken and left, since start."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HotPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "controller._hotpath.HotPath",
    .tp_doc = "The engine's compiled path for common-case fills (see controller/engine.py).",
    .tp_basicsize = sizeof(HotPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)HotPath_init,
    .tp_dealloc = (destructor)HotPath_dealloc,
    .tp_traverse = (traverseproc)HotPath_traverse,
    .tp_clear = (inquiry)HotPath_clear,
    .tp_methods = HotPath_methods,
};

static struct PyModuleDef hotpath_module = {
    PyModuleDef_HEAD_INIT, "controller._hotpath",
    "The engine's optional compiled path for common-case fills.", -1, NULL,
};

static int intern(PyObject **slot, const char *text)
{
    *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC PyInit__hotpath(void)
{
    if (fegetround() != FE_TONEAREST) {
        PyErr_SetString(PyExc_ImportError, "the FPU must round to nearest");
        return NULL;
    }
    if (intern(&s_version, "revision") || intern(&s_valuation, "valuation") ||
        intern(&s_rule, "rule") || intern(&s_name, "name") || intern(&s_split, "split") ||
        intern(&s_pending, "pending") || intern(&s_accounts, "accounts") ||
        intern(&s_values, "values") || intern(&s_weights, "weights") ||
        intern(&s_ranks, "ranks") || intern(&s_positions, "positions") ||
        intern(&s_last_price, "last_price") || intern(&s_fills_allocated, "fills_allocated") ||
        intern(&s_authorize, "authorize") || intern(&s_buffer, "pending_records") || intern(&s_journal, "journal") ||
        intern(&s_fill, "fill") || intern(&s_book_valuation, "book") ||
        intern(&s_exact, "exact"))
        return NULL;
    crc32_init();
    if (PyType_Ready(&HotPathType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&hotpath_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "HotPath", (PyObject *)&HotPathType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
