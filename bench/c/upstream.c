/* A worker that answers at once like an SGLang 0.5.23 server, for benchmarking what sits in front of it.
 *
 * One thread, epoll, HTTP/1.1 keep-alive, so it costs little CPU next to the target under test.
 *   POST /v1/chat/completions, /v1/completions   non-stream JSON, or SSE (chunked) with a role chunk at once, then
 *        `max_tokens` content chunks paced `interval_ms` apart (all at once when 0), a finish chunk, the usage
 *        chunk when stream_options.include_usage, and `data: [DONE]`. The body's `rid` becomes the response id.
 *   POST /abort_request {"rid": ...}            ends that stream with finish_reason "abort"; the arrival time is logged
 *   GET  /health, /health_generate, /v1/models, /get_load, /metrics (no /get_model_info: SGLang's router would
 *        then try to fetch that model's tokenizer from the Hugging Face hub)
 *   POST /bench/config?interval_ms=N           pacing of streams started from now on
 *   GET  /bench/stats                           counters, and every abort and mid-stream close with its time
 *   POST /bench/reset                           zero the counters and logs
 * Times are CLOCK_MONOTONIC nanoseconds, the clock of the load generator (loadgen.c) and Python's monotonic_ns.
 *
 *   upstream PORT [INTERVAL_MS]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MODEL "bench-model"
#define MAX_EVENTS 1024
#define MAX_LOG 200000

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

typedef struct conn {
    int fd;
    buf_t in, out;
    size_t out_off;
    int want_close;
    int epollout;
    /* the stream this connection is answering, if any */
    int streaming;
    int chat;
    int include_usage;
    int total, sent;
    uint64_t interval_ns;
    uint64_t due;
    uint32_t gen; /* bumps when the stream ends, so stale heap entries are skipped */
    char rid[96];
    struct conn *next_free;
} conn_t;

typedef struct {
    uint64_t due;
    conn_t *c;
    uint32_t gen;
} timer_t_;

typedef struct {
    char rid[96];
    uint64_t t_ns;
    int found;
    int sent;
} logent_t;

static int g_epfd;
static uint64_t g_interval_ns;
static long g_requests, g_streams, g_nonstream, g_events, g_aborts_found, g_completed;
static timer_t_ *g_heap;
static size_t g_heap_len, g_heap_cap;
static conn_t **g_active; /* streams in progress, for /abort_request */
static size_t g_active_len, g_active_cap;
static conn_t *g_free, *g_closed;
static logent_t *g_abort_log, *g_close_log;
static size_t g_abort_len, g_close_len;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void buf_reserve(buf_t *b, size_t extra) {
    if (b->len + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p) abort();
    b->cap = cap;
}

static void buf_put(buf_t *b, const char *s, size_t n) {
    buf_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(buf_t *b, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        size_t room = b->cap - b->len;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, room, fmt, ap);
        va_end(ap);
        if (n < 0) abort();
        if ((size_t)n < room) {
            b->len += (size_t)n;
            return;
        }
        buf_reserve(b, (size_t)n + 1);
    }
}

/* ---- timers: a binary min-heap on due time -------------------------------------------------------------- */

static void heap_push(uint64_t due, conn_t *c) {
    if (g_heap_len == g_heap_cap) {
        g_heap_cap = g_heap_cap ? g_heap_cap * 2 : 1024;
        g_heap = realloc(g_heap, g_heap_cap * sizeof *g_heap);
    }
    size_t i = g_heap_len++;
    timer_t_ t = {due, c, c->gen};
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (g_heap[parent].due <= due) break;
        g_heap[i] = g_heap[parent];
        i = parent;
    }
    g_heap[i] = t;
}

static timer_t_ heap_pop(void) {
    timer_t_ top = g_heap[0];
    timer_t_ last = g_heap[--g_heap_len];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        uint64_t md = last.due;
        if (l < g_heap_len && g_heap[l].due < md) m = l, md = g_heap[l].due;
        if (r < g_heap_len && g_heap[r].due < md) m = r;
        if (m == i) break;
        g_heap[i] = g_heap[m];
        i = m;
    }
    if (g_heap_len) g_heap[i] = last;
    return top;
}

/* ---- output --------------------------------------------------------------------------------------------------- */

static void conn_close(conn_t *c);

static void update_events(conn_t *c, int want_out) {
    if (c->epollout == want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(g_epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->epollout = want_out;
}

/* Write what is pending; returns -1 when the connection was closed. */
static int flush(conn_t *c) {
    while (c->out_off < c->out.len) {
        ssize_t n = write(c->fd, c->out.p + c->out_off, c->out.len - c->out_off);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                update_events(c, 1);
                return 0;
            }
            conn_close(c);
            return -1;
        }
        c->out_off += (size_t)n;
    }
    c->out.len = c->out_off = 0;
    update_events(c, 0);
    if (c->want_close && !c->streaming) {
        conn_close(c);
        return -1;
    }
    return 0;
}

static void active_remove(conn_t *c) {
    for (size_t i = 0; i < g_active_len; i++) {
        if (g_active[i] == c) {
            g_active[i] = g_active[--g_active_len];
            return;
        }
    }
}

static void log_event(logent_t *log, size_t *len, const conn_t *c, uint64_t t, int found) {
    if (*len >= MAX_LOG) return;
    logent_t *e = &log[(*len)++];
    snprintf(e->rid, sizeof e->rid, "%s", c ? c->rid : "");
    e->t_ns = t;
    e->found = found;
    e->sent = c ? c->sent : -1;
}

static void conn_close(conn_t *c) {
    if (c->streaming) {
        log_event(g_close_log, &g_close_len, c, now_ns(), 1);
        active_remove(c);
        c->streaming = 0;
    }
    c->gen++;
    epoll_ctl(g_epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->in.len = c->out.len = c->out_off = 0;
    /* Reused only after this epoll batch (an event of the batch may still name it); stale timer entries are
     * told apart by `gen`, which is never reset. */
    c->next_free = g_closed;
    g_closed = c;
}

static conn_t *conn_new(int fd) {
    conn_t *c = g_free;
    if (c) g_free = c->next_free;
    else c = calloc(1, sizeof *c);
    c->fd = fd;
    c->want_close = c->epollout = c->streaming = 0;
    c->next_free = NULL;
    return c;
}

static void put_chunk(conn_t *c, const char *data, size_t n) {
    buf_printf(&c->out, "%zx\r\n", n);
    buf_put(&c->out, data, n);
    buf_put(&c->out, "\r\n", 2);
}

static buf_t g_scratch;

static void event_content(conn_t *c) {
    g_scratch.len = 0;
    if (c->chat)
        buf_printf(&g_scratch,
                   "data: {\"id\":\"%s\",\"object\":\"chat.completion.chunk\",\"created\":1764547200,\"model\":\"" MODEL
                   "\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok \"},\"logprobs\":null,"
                   "\"finish_reason\":null,\"matched_stop\":null}],\"usage\":null}\n\n",
                   c->rid);
    else
        buf_printf(&g_scratch,
                   "data: {\"id\":\"%s\",\"object\":\"text_completion\",\"created\":1764547200,\"model\":\"" MODEL
                   "\",\"choices\":[{\"index\":0,\"text\":\"tok \",\"logprobs\":null,\"finish_reason\":null,"
                   "\"matched_stop\":null}],\"usage\":null}\n\n",
                   c->rid);
    put_chunk(c, g_scratch.p, g_scratch.len);
    c->sent++;
    g_events++;
}

static void stream_finish(conn_t *c, const char *reason) {
    g_scratch.len = 0;
    if (c->chat)
        buf_printf(&g_scratch,
                   "data: {\"id\":\"%s\",\"object\":\"chat.completion.chunk\",\"created\":1764547200,\"model\":\"" MODEL
                   "\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"logprobs\":null,"
                   "\"finish_reason\":\"%s\",\"matched_stop\":null}],\"usage\":null}\n\n",
                   c->rid, reason);
    else
        buf_printf(&g_scratch,
                   "data: {\"id\":\"%s\",\"object\":\"text_completion\",\"created\":1764547200,\"model\":\"" MODEL
                   "\",\"choices\":[{\"index\":0,\"text\":\"\",\"logprobs\":null,\"finish_reason\":\"%s\","
                   "\"matched_stop\":null}],\"usage\":null}\n\n",
                   c->rid, reason);
    if (c->include_usage)
        buf_printf(&g_scratch,
                   "data: {\"id\":\"%s\",\"object\":\"%s\",\"created\":1764547200,\"model\":\"" MODEL
                   "\",\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"total_tokens\":%d,\"completion_tokens\":%d,"
                   "\"prompt_tokens_details\":null}}\n\n",
                   c->rid, c->chat ? "chat.completion.chunk" : "text_completion", 8 + c->sent, c->sent);
    buf_printf(&g_scratch, "data: [DONE]\n\n");
    put_chunk(c, g_scratch.p, g_scratch.len);
    buf_put(&c->out, "0\r\n\r\n", 5);
    c->streaming = 0;
    c->gen++;
    active_remove(c);
    g_completed++;
}

/* ---- request handling ------------------------------------------------------------------------------------------ */

/* The value after `"key"` and its colon, or NULL. Good enough for the bodies clients of this bench send. */
static const char *json_value(const char *body, size_t len, const char *key) {
    char pat[64];
    int plen = snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *end = body + len, *p = body;
    while ((p = memmem(p, (size_t)(end - p), pat, (size_t)plen)) != NULL) {
        const char *q = p + plen;
        while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
        if (q < end && *q == ':') {
            q++;
            while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
            return q < end ? q : NULL;
        }
        p += plen;
    }
    return NULL;
}

static int json_true(const char *body, size_t len, const char *key) {
    const char *v = json_value(body, len, key);
    return v && (size_t)(body + len - v) >= 4 && memcmp(v, "true", 4) == 0;
}

static void json_string(const char *body, size_t len, const char *key, char *out, size_t cap) {
    const char *v = json_value(body, len, key);
    out[0] = 0;
    if (!v || *v != '"') return;
    v++;
    size_t i = 0;
    while (v < body + len && *v != '"' && i + 1 < cap) out[i++] = *v++;
    out[i] = 0;
}

static void respond(conn_t *c, int status, const char *ctype, const char *body, size_t n) {
    const char *reason = status == 200 ? "OK" : status == 404 ? "Not Found" : "Bad Request";
    buf_printf(&c->out, "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\n%s\r\n", status, reason, ctype,
               n, c->want_close ? "connection: close\r\n" : "");
    buf_put(&c->out, body, n);
}

static void respond_json(conn_t *c, int status, const char *body) {
    respond(c, status, "application/json", body, strlen(body));
}

static long g_rid_seq;

static void handle_generate(conn_t *c, int chat, const char *body, size_t len) {
    g_requests++;
    const char *mt = json_value(body, len, "max_tokens");
    if (!mt) mt = json_value(body, len, "max_completion_tokens");
    int total = mt ? atoi(mt) : 16;
    if (total < 0) total = 0;
    if (total > 1000000) total = 1000000;
    json_string(body, len, "rid", c->rid, sizeof c->rid);
    if (!c->rid[0]) snprintf(c->rid, sizeof c->rid, "chatcmpl-bench%ld", ++g_rid_seq);
    c->chat = chat;
    if (!json_true(body, len, "stream")) {
        g_nonstream++;
        buf_t b = {0};
        buf_printf(&b, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":1764547200,\"model\":\"" MODEL "\",\"choices\":[{",
                   c->rid, chat ? "chat.completion" : "text_completion");
        buf_printf(&b, chat ? "\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"" : "\"index\":0,\"text\":\"");
        for (int i = 0; i < total; i++) buf_put(&b, "tok ", 4);
        buf_printf(&b,
                   "\"%s,\"logprobs\":null,\"finish_reason\":\"length\",\"matched_stop\":null}],"
                   "\"usage\":{\"prompt_tokens\":8,\"total_tokens\":%d,\"completion_tokens\":%d,"
                   "\"prompt_tokens_details\":null}}",
                   chat ? "}" : "", 8 + total, total);
        respond(c, 200, "application/json", b.p, b.len);
        free(b.p);
        g_completed++;
        return;
    }
    g_streams++;
    c->include_usage = json_true(body, len, "include_usage");
    c->total = total;
    c->sent = 0;
    c->streaming = 1;
    c->interval_ns = g_interval_ns;
    buf_printf(&c->out, "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                        "x-accel-buffering: no\r\ntransfer-encoding: chunked\r\n\r\n");
    g_scratch.len = 0;
    if (chat)
        buf_printf(&g_scratch,
                   "data: {\"id\":\"%s\",\"object\":\"chat.completion.chunk\",\"created\":1764547200,\"model\":\"" MODEL
                   "\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,"
                   "\"finish_reason\":null,\"matched_stop\":null}],\"usage\":null}\n\n",
                   c->rid);
    if (g_scratch.len) put_chunk(c, g_scratch.p, g_scratch.len);
    if (g_active_len == g_active_cap) {
        g_active_cap = g_active_cap ? g_active_cap * 2 : 1024;
        g_active = realloc(g_active, g_active_cap * sizeof *g_active);
    }
    g_active[g_active_len++] = c;
    if (c->interval_ns == 0) {
        while (c->sent < c->total) event_content(c);
        stream_finish(c, "length");
    } else {
        c->due = now_ns() + c->interval_ns;
        heap_push(c->due, c);
    }
}

static void handle_abort(conn_t *c, const char *body, size_t len) {
    uint64_t t = now_ns();
    char rid[96];
    json_string(body, len, "rid", rid, sizeof rid);
    int abort_all = json_true(body, len, "abort_all");
    int found = 0;
    for (size_t i = 0; i < g_active_len;) {
        conn_t *s = g_active[i];
        if (abort_all || (rid[0] && strcmp(s->rid, rid) == 0)) {
            found++;
            log_event(g_abort_log, &g_abort_len, s, t, 1);
            stream_finish(s, "abort"); /* removes s from g_active */
            flush(s);
            if (!abort_all) break;
            continue;
        }
        i++;
    }
    if (!found) {
        conn_t ghost = {0};
        snprintf(ghost.rid, sizeof ghost.rid, "%s", rid);
        ghost.sent = -1;
        log_event(g_abort_log, &g_abort_len, &ghost, t, 0);
    }
    g_aborts_found += found;
    respond_json(c, 200, "{}");
}

static void handle_stats(conn_t *c) {
    buf_t b = {0};
    buf_printf(&b,
               "{\"now_ns\":%llu,\"interval_ms\":%.3f,\"requests\":%ld,\"streams\":%ld,\"nonstream\":%ld,"
               "\"completed\":%ld,\"events\":%ld,\"active\":%zu,\"aborts_found\":%ld,\"aborts\":[",
               (unsigned long long)now_ns(), g_interval_ns / 1e6, g_requests, g_streams, g_nonstream, g_completed,
               g_events, g_active_len, g_aborts_found);
    for (size_t i = 0; i < g_abort_len; i++)
        buf_printf(&b, "%s[\"%s\",%llu,%d,%d]", i ? "," : "", g_abort_log[i].rid,
                   (unsigned long long)g_abort_log[i].t_ns, g_abort_log[i].found, g_abort_log[i].sent);
    buf_printf(&b, "],\"closes\":[");
    for (size_t i = 0; i < g_close_len; i++)
        buf_printf(&b, "%s[\"%s\",%llu,%d]", i ? "," : "", g_close_log[i].rid, (unsigned long long)g_close_log[i].t_ns,
                   g_close_log[i].sent);
    buf_printf(&b, "]}");
    respond(c, 200, "application/json", b.p, b.len);
    free(b.p);
}

static void handle_request(conn_t *c, const char *method, const char *path, const char *body, size_t len) {
    int post = strcmp(method, "POST") == 0;
    if (post && strcmp(path, "/v1/chat/completions") == 0) handle_generate(c, 1, body, len);
    else if (post && strcmp(path, "/v1/completions") == 0) handle_generate(c, 0, body, len);
    else if (post && strcmp(path, "/abort_request") == 0) handle_abort(c, body, len);
    else if (strcmp(path, "/health") == 0 || strcmp(path, "/health_generate") == 0) respond(c, 200, "text/plain", "", 0);
    else if (strcmp(path, "/v1/models") == 0)
        respond_json(c, 200,
                     "{\"object\":\"list\",\"data\":[{\"id\":\"" MODEL "\",\"object\":\"model\",\"created\":1764547200,"
                     "\"owned_by\":\"sglang\",\"root\":\"" MODEL "\",\"max_model_len\":32768}]}");
    else if (strcmp(path, "/get_load") == 0) {
        char b[256];
        snprintf(b, sizeof b, "[{\"dp_rank\":0,\"num_reqs\":%zu,\"num_running_reqs\":%zu,\"num_waiting_reqs\":0,"
                 "\"num_tokens\":0}]", g_active_len, g_active_len);
        respond_json(c, 200, b);
    } else if (strcmp(path, "/metrics") == 0) {
        char b[256];
        snprintf(b, sizeof b, "sglang:num_running_reqs{model_name=\"" MODEL "\"} %zu\n"
                 "sglang:num_queue_reqs{model_name=\"" MODEL "\"} 0\n", g_active_len);
        respond(c, 200, "text/plain; version=0.0.4", b, strlen(b));
    }
    else if (post && strncmp(path, "/bench/config", 13) == 0) {
        const char *q = strstr(path, "interval_ms=");
        if (q) g_interval_ns = (uint64_t)(atof(q + 12) * 1e6);
        respond_json(c, 200, "{}");
    } else if (strcmp(path, "/bench/stats") == 0) handle_stats(c);
    else if (post && strcmp(path, "/bench/reset") == 0) {
        g_requests = g_streams = g_nonstream = g_events = g_aborts_found = g_completed = 0;
        g_abort_len = g_close_len = 0;
        respond_json(c, 200, "{}");
    } else respond_json(c, 404, "{\"detail\":\"Not Found\"}");
}

/* Parse as many complete requests as the input holds (one at a time while a stream is going). */
static void handle_input(conn_t *c) {
    while (!c->streaming && c->fd >= 0) {
        char *hdr_end = memmem(c->in.p, c->in.len, "\r\n\r\n", 4);
        if (!hdr_end) return;
        size_t hlen = (size_t)(hdr_end - c->in.p) + 4;
        char method[16], path[512];
        if (sscanf(c->in.p, "%15s %511s", method, path) != 2) {
            conn_close(c);
            return;
        }
        size_t clen = 0;
        int chunked = 0;
        for (char *line = strstr(c->in.p, "\r\n") + 2; line < hdr_end; line = strstr(line, "\r\n") + 2) {
            if (strncasecmp(line, "content-length:", 15) == 0) clen = strtoul(line + 15, NULL, 10);
            else if (strncasecmp(line, "connection:", 11) == 0 && strcasestr(line, "close") &&
                     strcasestr(line, "close") < strstr(line, "\r\n"))
                c->want_close = 1;
            else if (strncasecmp(line, "transfer-encoding:", 18) == 0) chunked = 1;
        }
        if (chunked) {
            fprintf(stderr, "upstream: chunked request bodies are not supported\n");
            conn_close(c);
            return;
        }
        if (c->in.len < hlen + clen) return;
        char *body = c->in.p + hlen;
        char saved = body[clen];
        body[clen] = 0; /* the buffer always has room: see read_input */
        handle_request(c, method, path, body, clen);
        body[clen] = saved;
        memmove(c->in.p, c->in.p + hlen + clen, c->in.len - hlen - clen);
        c->in.len -= hlen + clen;
        c->in.p[c->in.len] = 0;
        if (flush(c) < 0) return;
    }
}

static void read_input(conn_t *c) {
    for (;;) {
        buf_reserve(&c->in, 65536 + 1);
        ssize_t n = read(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len - 1);
        if (n > 0) {
            c->in.len += (size_t)n;
            c->in.p[c->in.len] = 0;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) break;
        conn_close(c); /* EOF or error */
        return;
    }
    handle_input(c);
}

static void run_timers(void) {
    uint64_t t = now_ns();
    while (g_heap_len && g_heap[0].due <= t) {
        timer_t_ e = heap_pop();
        conn_t *c = e.c;
        if (e.gen != c->gen || c->streaming != 1) continue;
        event_content(c);
        if (c->sent >= c->total) stream_finish(c, "length");
        else {
            c->due += c->interval_ns;
            heap_push(c->due, c);
        }
        if (flush(c) < 0) continue;
        if (!c->streaming) handle_input(c); /* a pipelined next request */
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: upstream PORT [INTERVAL_MS]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int port = atoi(argv[1]);
    g_interval_ns = argc > 2 ? (uint64_t)(atof(argv[2]) * 1e6) : 0;
    g_abort_log = calloc(MAX_LOG, sizeof *g_abort_log);
    g_close_log = calloc(MAX_LOG, sizeof *g_close_log);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0) {
        perror("upstream: bind/listen");
        return 1;
    }
    g_epfd = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(g_epfd, EPOLL_CTL_ADD, lfd, &lev);
    fprintf(stderr, "upstream: listening on 127.0.0.1:%d\n", port);
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int timeout = -1;
        if (g_heap_len) {
            uint64_t t = now_ns();
            timeout = g_heap[0].due <= t ? 0 : (int)((g_heap[0].due - t + 999999) / 1000000);
        }
        int n = epoll_wait(g_epfd, events, MAX_EVENTS, timeout);
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (c == NULL) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *nc = conn_new(fd);
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(g_epfd, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            if (c->fd < 0) continue;
            if (events[i].events & EPOLLOUT) {
                if (flush(c) < 0) continue;
                if (!c->streaming) handle_input(c);
                if (c->fd < 0) continue;
            }
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) read_input(c);
        }
        run_timers();
        while (g_closed) {
            conn_t *c = g_closed;
            g_closed = c->next_free;
            c->next_free = g_free;
            g_free = c;
        }
    }
}
