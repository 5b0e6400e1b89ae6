/*
 * fill_sender: a sender of fills and splits for the fillalloc controller, written from
 * docs/protocol.md alone (the worked example of docs/integration.md).
 *
 * It reads one message per line on standard input:
 *
 *     split ACCOUNT=PERCENT [ACCOUNT=PERCENT ...]
 *     fill TICKER PRICE QUANTITY [buy|sell]
 *
 * numbers them 1, 2, 3, ... for its source, and sends each as one msgpack map in one
 * ZeroMQ frame (str keys and values, prices and percents as 64-bit floats, integers as
 * integers). It keeps every message until the controller acknowledges or rejects it and
 * resends from the first unacknowledged one after RESEND_MS without progress. It prints
 * what the controller says about its own source, one line each:
 *
 *     allocation SEQ TICKER SIDE QUANTITY ACCOUNT=SHARES ...   (accounts sorted by name)
 *     rejected SEQ REASON
 *     done ACKED_SEQ
 *
 * and exits 0 once every message is acknowledged, 1 if that has not happened within the
 * deadline, 2 on bad usage or input.
 *
 * Build (Debian: apt-get install libzmq3-dev libmsgpack-dev):
 *     cc -O2 -Wall -o fill_sender fill_sender.c -lzmq -lmsgpackc
 * Run:
 *     ./fill_sender tcp://127.0.0.1:5555 tcp://127.0.0.1:5556 desk-c@0001 < day.txt
 */
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define MAX_MESSAGES 10000
#define MAX_ACCOUNTS 64
#define MAX_LINE 4096
#define RESEND_MS 2000      /* the reference sender's RESEND_AFTER */
#define DEADLINE_MS 60000   /* give up (exit 1) if not all acknowledged by then */
#define MAX_SOURCE 128      /* MAX_NAME_LENGTH */

typedef struct {
    msgpack_sbuffer packed; /* the encoded message, kept until acknowledged */
} Message;

static Message messages[MAX_MESSAGES];
static size_t message_count;

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void pack_text(msgpack_packer *pk, const char *text) {
    size_t length = strlen(text);
    msgpack_pack_str(pk, length); /* str, not bin: the protocol's text type */
    msgpack_pack_str_body(pk, text, length);
}

/* The common fields: type, source, seq (seq is this message's 1-based number). */
static void pack_header(msgpack_packer *pk, size_t fields, const char *type,
                        const char *source, uint64_t seq) {
    msgpack_pack_map(pk, fields);
    pack_text(pk, "type");
    pack_text(pk, type);
    pack_text(pk, "source");
    pack_text(pk, source);
    pack_text(pk, "seq");
    msgpack_pack_uint64(pk, seq);
}

/* A double from text, or -1 on anything but a plain finite number. */
static int parse_double(const char *text, double *out) {
    char *end;
    *out = strtod(text, &end); /* the double nearest the decimal: what the protocol wants */
    return (end == text || *end != '\0') ? -1 : 0;
}

static int parse_line(char *line, const char *source, uint64_t seq, msgpack_packer *pk) {
    char *words[2 + MAX_ACCOUNTS];
    size_t count = 0;
    for (char *word = strtok(line, " \t\r\n"); word && count < 2 + MAX_ACCOUNTS;
         word = strtok(NULL, " \t\r\n"))
        words[count++] = word;
    if (count == 0)
        return 1; /* blank line: nothing to send */
    if (strcmp(words[0], "fill") == 0 && (count == 4 || count == 5)) {
        double price;
        char *end;
        unsigned long long quantity = strtoull(words[3], &end, 10);
        if (parse_double(words[2], &price) != 0 || *end != '\0')
            return -1;
        pack_header(pk, count == 5 ? 7 : 6, "fill", source, seq);
        pack_text(pk, "ticker");
        pack_text(pk, words[1]);
        pack_text(pk, "price");
        msgpack_pack_double(pk, price); /* float64: a float32 would not mean the decimal */
        pack_text(pk, "quantity");
        msgpack_pack_uint64(pk, quantity); /* an integer, never a float */
        if (count == 5) {
            pack_text(pk, "side");
            pack_text(pk, words[4]);
        }
        return 0;
    }
    if (strcmp(words[0], "split") == 0 && count >= 2) {
        pack_header(pk, 4, "split", source, seq);
        pack_text(pk, "splits");
        msgpack_pack_map(pk, count - 1);
        for (size_t i = 1; i < count; i++) {
            char *equals = strchr(words[i], '=');
            double percent;
            if (!equals || equals == words[i] || parse_double(equals + 1, &percent) != 0)
                return -1;
            *equals = '\0';
            pack_text(pk, words[i]);
            msgpack_pack_double(pk, percent);
        }
        return 0;
    }
    return -1;
}

/* The value of `key` in a msgpack map, or NULL. */
static const msgpack_object *field(const msgpack_object *map, const char *key) {
    if (map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t length = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == length &&
            memcmp(k->via.str.ptr, key, length) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static int is_text(const msgpack_object *value, const char *text) {
    return value && value->type == MSGPACK_OBJECT_STR && value->via.str.size == strlen(text) &&
           memcmp(value->via.str.ptr, text, value->via.str.size) == 0;
}

static uint64_t integer(const msgpack_object *value) {
    return value && value->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? value->via.u64 : 0;
}

static int by_account(const void *a, const void *b) {
    const msgpack_object_kv *x = a, *y = b;
    uint32_t n = x->key.via.str.size < y->key.via.str.size ? x->key.via.str.size
                                                            : y->key.via.str.size;
    int order = memcmp(x->key.via.str.ptr, y->key.via.str.ptr, n);
    return order ? order : (int)x->key.via.str.size - (int)y->key.via.str.size;
}

static void print_allocation(const msgpack_object *body, uint64_t seq) {
    const msgpack_object *ticker = field(body, "ticker"), *side = field(body, "side");
    const msgpack_object *shares = field(body, "allocations");
    if (!ticker || !side || !shares || shares->type != MSGPACK_OBJECT_MAP)
        return;
    printf("allocation %llu %.*s %.*s %llu", (unsigned long long)seq,
           (int)ticker->via.str.size, ticker->via.str.ptr, (int)side->via.str.size,
           side->via.str.ptr, (unsigned long long)integer(field(body, "quantity")));
    qsort(shares->via.map.ptr, shares->via.map.size, sizeof(msgpack_object_kv), by_account);
    for (uint32_t i = 0; i < shares->via.map.size; i++)
        printf(" %.*s=%llu", (int)shares->via.map.ptr[i].key.via.str.size,
               shares->via.map.ptr[i].key.via.str.ptr,
               (unsigned long long)shares->via.map.ptr[i].val.via.u64);
    printf("\n");
}

/* One event off the PUB socket; updates *acked. Topics are checked exactly (ZeroMQ
 * filters by prefix) and so is the body's source. Returns 1 once a snapshot was seen. */
static int handle_event(void *sub, const char *source, uint64_t *acked) {
    char topic[8 + MAX_SOURCE + 16];
    int topic_length = zmq_recv(sub, topic, sizeof topic, 0);
    int more = 0;
    size_t more_size = sizeof more;
    zmq_getsockopt(sub, ZMQ_RCVMORE, &more, &more_size);
    if (topic_length < 0 || !more)
        return 0;
    zmq_msg_t payload;
    zmq_msg_init(&payload);
    zmq_msg_recv(&payload, sub, 0);
    if ((size_t)topic_length >= sizeof topic)
        topic_length = sizeof topic - 1;
    topic[topic_length] = '\0';
    char ack_topic[8 + MAX_SOURCE], rejected_topic[16 + MAX_SOURCE];
    snprintf(ack_topic, sizeof ack_topic, "ack:%s", source);
    snprintf(rejected_topic, sizeof rejected_topic, "rejected:%s", source);
    int snapshot = strcmp(topic, "positions") == 0;

    msgpack_unpacked unpacked;
    msgpack_unpacked_init(&unpacked);
    if (!snapshot && msgpack_unpack_next(&unpacked, zmq_msg_data(&payload), zmq_msg_size(&payload),
                                         NULL) == MSGPACK_UNPACK_SUCCESS) {
        const msgpack_object *body = &unpacked.data;
        int ours = is_text(field(body, "source"), source);
        uint64_t seq = integer(field(body, "seq"));
        if (ours && strcmp(topic, ack_topic) == 0) {
            if (seq > *acked) /* cumulative: everything up to seq is applied and durable */
                *acked = seq;
        } else if (ours && strcmp(topic, rejected_topic) == 0) {
            const msgpack_object *reason = field(body, "reason");
            if (reason && reason->type == MSGPACK_OBJECT_STR) /* data, never a format */
                printf("rejected %llu %.*s\n", (unsigned long long)seq,
                       (int)reason->via.str.size, reason->via.str.ptr);
        } else if (ours && strcmp(topic, "allocation") == 0) {
            print_allocation(body, seq);
        }
    }
    msgpack_unpacked_destroy(&unpacked);
    zmq_msg_close(&payload);
    fflush(stdout);
    return snapshot;
}

int main(int argc, char **argv) {
    if (argc != 4 || strlen(argv[3]) == 0 || strlen(argv[3]) > MAX_SOURCE) {
        fprintf(stderr, "usage: %s INPUTS_ENDPOINT PUBLISH_ENDPOINT SOURCE < messages\n",
                argv[0]);
        return 2;
    }
    const char *source = argv[3];
    char line[MAX_LINE];
    for (unsigned long number = 1; fgets(line, sizeof line, stdin); number++) {
        if (message_count == MAX_MESSAGES) {
            fprintf(stderr, "line %lu: more than %d messages\n", number, MAX_MESSAGES);
            return 2;
        }
        Message *message = &messages[message_count];
        msgpack_sbuffer_init(&message->packed);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &message->packed, msgpack_sbuffer_write);
        int parsed = parse_line(line, source, message_count + 1, &pk);
        if (parsed < 0) {
            fprintf(stderr, "line %lu: not a fill or split line\n", number);
            return 2;
        }
        if (parsed == 0)
            message_count++;
        else
            msgpack_sbuffer_destroy(&message->packed);
    }

    void *context = zmq_ctx_new();
    void *sub = zmq_socket(context, ZMQ_SUB);
    void *push = zmq_socket(context, ZMQ_PUSH);
    int zero = 0;
    zmq_setsockopt(sub, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(push, ZMQ_LINGER, &zero, sizeof zero);
    char topic[16 + MAX_SOURCE];
    snprintf(topic, sizeof topic, "ack:%s", source);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, topic, strlen(topic));
    snprintf(topic, sizeof topic, "rejected:%s", source);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, topic, strlen(topic));
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "allocation", strlen("allocation"));
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "positions", strlen("positions"));
    if (zmq_connect(sub, argv[2]) != 0 || zmq_connect(push, argv[1]) != 0) {
        fprintf(stderr, "cannot connect: %s\n", zmq_strerror(zmq_errno()));
        return 2;
    }

    /* A SUB socket misses what is published before its subscription reaches the PUB (the
     * slow joiner): wait for a first snapshot, which proves ours is in place, before
     * sending, so that no allocation of ours is published unheard. */
    uint64_t acked = 0;
    int64_t deadline = now_ms() + DEADLINE_MS;
    zmq_pollitem_t items[] = {{sub, 0, ZMQ_POLLIN, 0}};
    int joined = 0;
    while (!joined && now_ms() < deadline)
        if (zmq_poll(items, 1, 100) > 0)
            joined = handle_event(sub, source, &acked);

    uint64_t sent = 0, progress_acked = 0;
    int64_t progress_at = now_ms();
    while (joined && acked < message_count && now_ms() < deadline) {
        if (now_ms() - progress_at >= RESEND_MS) { /* no progress: resend from acked + 1 */
            sent = acked;
            progress_at = now_ms();
        }
        while (sent < message_count) {
            msgpack_sbuffer *packed = &messages[sent].packed;
            if (zmq_send(push, packed->data, packed->size, ZMQ_DONTWAIT) < 0)
                break; /* not connected yet or queue full: try again later */
            sent++;
        }
        if (zmq_poll(items, 1, 100) > 0)
            handle_event(sub, source, &acked);
        if (acked > progress_acked) {
            progress_acked = acked;
            progress_at = now_ms();
        }
    }
    printf("done %llu\n", (unsigned long long)acked);
    for (size_t i = 0; i < message_count; i++)
        msgpack_sbuffer_destroy(&messages[i].packed);
    zmq_close(push);
    zmq_close(sub);
    zmq_ctx_term(context);
    return acked == message_count ? 0 : 1;
}
