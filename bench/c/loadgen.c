/* A load generator for OpenAI-style HTTP/1.1 endpoints, streamed (SSE) or not: one thread, epoll, many connections.
 *
 * Modes:
 *   closed loop (default)  --conns C: C kept-alive connections, each sending its next request when the last ends.
 *   open loop              --rate R: a new connection per request, R requests/s, whatever the answers do.
 *   once                   --once: every connection sends one request; with --drop-every N and --drop-after K,
 *                          every Nth stream is closed by the client once K + (i % 16) tokens ("tok ") arrived.
 * Measures per answer: status, time to the whole answer, time to the first SSE event (TTFT; in closed loop only on
 * connections already used once, i.e. kept alive), gaps between consecutive content events (those carrying "tok "),
 * and for non-200 answers their latency, a retry-after header, and whether the body holds --marker.
 * Prints one JSON object on stdout. Times are CLOCK_MONOTONIC, the upstream's (upstream.c) clock.
 *
 *   loadgen --port P --path /v1/chat/completions --body-file F [--header 'K: V']... [--conns C | --rate R]
 *           [--duration S] [--warmup S] [--once] [--drop-every N --drop-after K] [--request-ids PREFIX]
 *           [--marker TEXT (any case)] [--max-inflight N]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    double *v;
    size_t n, cap;
} series_t;

static void series_add(series_t *s, double x) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
    }
    s->v[s->n++] = x;
}

enum { S_CONNECTING, S_HEAD, S_BODY_LEN, S_CHUNK_SIZE, S_CHUNK_DATA, S_CHUNK_CRLF, S_TRAILER, S_DONE };

typedef struct {
    int fd;
    int index;      /* which connection (closed loop / once) */
    int state;
    int used;       /* answers completed on this connection */
    int status;
    int chunked;
    int retry_after;
    int server_close; /* the answer said connection: close */
    long remaining; /* body bytes (content-length) or chunk bytes left */
    uint64_t t_start, t_first, t_last_content;
    int events, content_events;
    int tokens; /* "tok " seen in content: what was delivered, however the events were cut */
    int drop_at;    /* close after this many content events; 0: never */
    char *in;
    size_t in_len, in_cap;
    char *ev;       /* the SSE event being assembled */
    size_t ev_len, ev_cap;
    char *body;     /* a non-200 body, for the marker */
    size_t body_len, body_cap;
    char id[96];
    int done_seen;
    int active;     /* registered in epoll */
} conn_t;

static const char *g_marker;
static char *g_request;
static size_t g_request_len;
static char *g_body;
static size_t g_body_len;
static char g_headers[8192];
static const char *g_path = "/v1/chat/completions";
static const char *g_reqid_prefix;
static int g_port;
static int g_epfd;
static uint64_t g_window_start, g_window_end;
static series_t s_latency, s_ttft, s_gap, s_non200_latency;
static long g_ok, g_errors, g_retry_after, g_marked, g_content_events, g_tokens, g_incomplete;
static long g_status[600];
static double g_rate;
static int g_once, g_drop_every, g_drop_after;
static long g_started;
static long g_inflight;
static FILE *g_drops, *g_streams; /* in-memory JSON fragments */
static char *g_drops_buf, *g_streams_buf;
static size_t g_drops_size, g_streams_size;
static long g_n_drops, g_n_streams;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void grow(char **p, size_t *cap, size_t need) {
    if (need <= *cap) return;
    size_t c = *cap ? *cap : 4096;
    while (c < need) c *= 2;
    *p = realloc(*p, c);
    if (!*p) abort();
    *cap = c;
}

static int in_window(uint64_t t) { return t >= g_window_start && t <= g_window_end; }

static void open_conn(conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    c->state = S_CONNECTING;
    c->used = 0;
    int r = connect(c->fd, (struct sockaddr *)&addr, sizeof addr);
    if (r < 0 && errno != EINPROGRESS) {
        g_errors++;
        close(c->fd);
        c->fd = -1;
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
    epoll_ctl(g_epfd, EPOLL_CTL_ADD, c->fd, &ev);
    c->active = 1;
}

static void build_request(conn_t *c, char *out, size_t *len) {
    char reqid[160] = "";
    if (g_reqid_prefix) snprintf(reqid, sizeof reqid, "x-request-id: %s%d\r\n", g_reqid_prefix, c->index);
    int n = snprintf(out, 16384,
                     "POST %s HTTP/1.1\r\nhost: 127.0.0.1:%d\r\ncontent-type: application/json\r\n"
                     "content-length: %zu\r\n%s%s\r\n",
                     g_path, g_port, g_body_len, g_headers, reqid);
    memcpy(out + n, g_body, g_body_len);
    *len = (size_t)n + g_body_len;
}

static void send_request(conn_t *c) {
    size_t len;
    grow(&g_request, &g_request_len, 16384 + g_body_len);
    build_request(c, g_request, &len);
    c->t_start = now_ns();
    c->t_first = c->t_last_content = 0;
    c->events = c->content_events = c->tokens = 0;
    c->status = c->chunked = c->retry_after = c->server_close = 0;
    c->remaining = -1;
    c->in_len = c->ev_len = c->body_len = 0;
    c->id[0] = 0;
    c->done_seen = 0;
    c->state = S_HEAD;
    c->drop_at = 0;
    if (g_once && g_drop_every > 0 && c->index % g_drop_every == 0) c->drop_at = g_drop_after + c->index % 16;
    g_started++;
    g_inflight++;
    ssize_t w = write(c->fd, g_request, len); /* requests are small: one write into an empty socket buffer */
    if (w != (ssize_t)len) g_errors++;
}

static void conn_finish(conn_t *c, int reuse);

static void record_stream(conn_t *c, int complete) {
    if (!g_once) return;
    fprintf(g_streams, "%s[%d,\"%s\",%d,%d,%d]", g_n_streams++ ? "," : "", c->index, c->id, c->tokens,
            complete, c->status);
}

static void on_event(conn_t *c, uint64_t t) {
    /* c->ev holds one SSE event without its blank line */
    c->events++;
    if (c->t_first == 0) c->t_first = t;
    if (!c->id[0]) {
        char *p = memmem(c->ev, c->ev_len, "\"id\":\"", 6);
        if (p) {
            p += 6;
            size_t i = 0;
            while (p < c->ev + c->ev_len && *p != '"' && i + 1 < sizeof c->id) c->id[i++] = *p++;
            c->id[i] = 0;
        }
    }
    int k = 0;
    for (char *p = c->ev, *end = c->ev + c->ev_len; (p = memmem(p, (size_t)(end - p), "tok ", 4)) != NULL; p += 4) k++;
    if (k) {
        c->tokens += k;
        if (c->t_last_content && in_window(t)) series_add(&s_gap, (double)(t - c->t_last_content) / 1e6);
        c->t_last_content = t;
        c->content_events++;
    }
    if (memmem(c->ev, c->ev_len, "[DONE]", 6)) c->done_seen = 1;
}

static void feed_sse(conn_t *c, const char *p, size_t n, uint64_t t) {
    for (size_t i = 0; i < n; i++) {
        grow(&c->ev, &c->ev_cap, c->ev_len + 1);
        c->ev[c->ev_len++] = p[i];
        if (p[i] == '\n' && c->ev_len >= 2 && c->ev[c->ev_len - 2] == '\n') {
            c->ev_len -= 2;
            if (c->ev_len) on_event(c, t);
            c->ev_len = 0;
        }
    }
}

static void feed_body(conn_t *c, const char *p, size_t n, uint64_t t) {
    if (c->status == 200) feed_sse(c, p, n, t);
    else if (c->body_len < 65536) {
        grow(&c->body, &c->body_cap, c->body_len + n + 1);
        memcpy(c->body + c->body_len, p, n);
        c->body_len += n;
        c->body[c->body_len] = 0;
    }
}

static void answer_done(conn_t *c, uint64_t t) {
    g_inflight--;
    /* closed loop: answers that end in the window (a throughput, whatever their start); open loop: every answer (all
     * arrivals fall in the window), however late it comes */
    int counted = g_once || g_rate > 0 || in_window(t);
    if (counted) {
        if (c->status > 0 && c->status < 600) g_status[c->status]++;
        double ms = (double)(t - c->t_start) / 1e6;
        if (c->status == 200) {
            g_ok++;
            series_add(&s_latency, ms);
            if (c->t_first && (g_rate > 0 || g_once || c->used > 0)) series_add(&s_ttft, (double)(c->t_first - c->t_start) / 1e6);
            g_content_events += c->content_events;
            g_tokens += c->tokens;
        } else {
            series_add(&s_non200_latency, ms);
            if (c->retry_after) g_retry_after++;
            if (g_marker && c->body && strcasestr(c->body, g_marker)) g_marked++; /* the body is NUL-terminated */
        }
    }
    record_stream(c, 1);
    c->used++;
    c->state = S_DONE;
}

/* Process buffered input; returns 1 when the answer is complete. */
static int parse(conn_t *c, uint64_t t) {
    size_t off = 0;
    for (;;) {
        char *p = c->in + off;
        size_t avail = c->in_len - off;
        if (c->state == S_HEAD) {
            char *end = memmem(p, avail, "\r\n\r\n", 4);
            if (!end) break;
            *end = 0;
            c->status = atoi(p + 9);
            c->remaining = -1;
            for (char *line = strstr(p, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
                char *h = line + 2;
                if (strncasecmp(h, "content-length:", 15) == 0) c->remaining = strtol(h + 15, NULL, 10);
                else if (strncasecmp(h, "transfer-encoding:", 18) == 0 && strcasestr(h, "chunked")) c->chunked = 1;
                else if (strncasecmp(h, "retry-after", 11) == 0) c->retry_after = 1;
                else if (strncasecmp(h, "connection:", 11) == 0 && strcasestr(h, "close")) c->server_close = 1;
            }
            off += (size_t)(end - p) + 4;
            c->state = c->chunked ? S_CHUNK_SIZE : S_BODY_LEN;
            if (c->state == S_BODY_LEN && c->remaining <= 0) {
                answer_done(c, t);
                break;
            }
        } else if (c->state == S_BODY_LEN) {
            size_t take = avail < (size_t)c->remaining ? avail : (size_t)c->remaining;
            feed_body(c, p, take, t);
            off += take;
            c->remaining -= (long)take;
            if (c->remaining == 0) {
                answer_done(c, t);
                break;
            }
            if (take == avail) break;
        } else if (c->state == S_CHUNK_SIZE) {
            char *end = memmem(p, avail, "\r\n", 2);
            if (!end) break;
            c->remaining = strtol(p, NULL, 16);
            off += (size_t)(end - p) + 2;
            c->state = c->remaining == 0 ? S_TRAILER : S_CHUNK_DATA;
        } else if (c->state == S_CHUNK_DATA) {
            size_t take = avail < (size_t)c->remaining ? avail : (size_t)c->remaining;
            feed_body(c, p, take, t);
            off += take;
            c->remaining -= (long)take;
            if (c->remaining == 0) c->state = S_CHUNK_CRLF;
            else break;
        } else if (c->state == S_CHUNK_CRLF) {
            if (avail < 2) break;
            off += 2;
            c->state = S_CHUNK_SIZE;
        } else if (c->state == S_TRAILER) {
            if (avail < 2) break;
            char *end = memmem(p, avail, "\r\n", 2);
            if (!end) break;
            off += (size_t)(end - p) + 2;
            if (end == p) {
                answer_done(c, t);
                break;
            }
        } else break;
        if (c->drop_at && c->tokens >= c->drop_at) break;
    }
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
    return c->state == S_DONE;
}

static void start_next(conn_t *c);

static void conn_finish(conn_t *c, int reuse) {
    if (reuse && !g_once && g_rate == 0) {
        if (now_ns() < g_window_end && !c->server_close) send_request(c);
        else if (now_ns() < g_window_end) {
            epoll_ctl(g_epfd, EPOLL_CTL_DEL, c->fd, NULL);
            close(c->fd);
            open_conn(c);
        } else {
            epoll_ctl(g_epfd, EPOLL_CTL_DEL, c->fd, NULL);
            close(c->fd);
            c->fd = -1;
            c->active = 0;
        }
        return;
    }
    epoll_ctl(g_epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->active = 0;
}

static void on_readable(conn_t *c) {
    for (;;) {
        grow(&c->in, &c->in_cap, c->in_len + 65536 + 1);
        ssize_t n = read(c->fd, c->in + c->in_len, 65536);
        if (n > 0) {
            c->in_len += (size_t)n;
            c->in[c->in_len] = 0;
            uint64_t t = now_ns();
            if (parse(c, t)) {
                conn_finish(c, 1);
                return;
            }
            if (c->drop_at && c->tokens >= c->drop_at) {
                uint64_t tc = now_ns();
                close(c->fd);
                fprintf(g_drops, "%s[%d,\"%s\",%llu,%d]", g_n_drops++ ? "," : "", c->index, c->id,
                        (unsigned long long)tc, c->tokens);
                record_stream(c, 0);
                g_inflight--;
                c->fd = -1;
                c->active = 0;
                c->state = S_DONE;
                return;
            }
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        /* closed by the server, or an error */
        if (c->state != S_DONE && c->state != S_CONNECTING) {
            if (in_window(c->t_start) || g_once) g_incomplete++;
            record_stream(c, 0);
            g_inflight--;
        } else if (c->state == S_CONNECTING) g_errors++;
        epoll_ctl(g_epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
        c->active = 0;
        c->state = S_DONE;
        if (!g_once && g_drop_every == 0 && now_ns() < g_window_end) start_next(c);
        return;
    }
}

static void start_next(conn_t *c) {
    open_conn(c);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void print_series(const char *name, series_t *s, int last) {
    double p50 = 0, p90 = 0, p99 = 0, mx = 0, mean = 0;
    if (s->n) {
        qsort(s->v, s->n, sizeof *s->v, cmp_double);
#define PCT(q) s->v[(size_t)((q) * (double)s->n) < s->n ? (size_t)((q) * (double)s->n) : s->n - 1]
        p50 = PCT(0.5);
        p90 = PCT(0.9);
        p99 = PCT(0.99);
        mx = s->v[s->n - 1];
        for (size_t i = 0; i < s->n; i++) mean += s->v[i];
        mean /= (double)s->n;
    }
    printf("\"%s\":{\"n\":%zu,\"p50\":%.4f,\"p90\":%.4f,\"p99\":%.4f,\"max\":%.4f,\"mean\":%.4f}%s", name, s->n, p50,
           p90, p99, mx, mean, last ? "" : ",");
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    if (fread(p, 1, (size_t)n, f) != (size_t)n) exit(2);
    fclose(f);
    *len = (size_t)n;
    return p;
}

int main(int argc, char **argv) {
    int conns = 1, max_inflight = 20000;
    double duration = 5, warmup = 1, rate = 0;
    const char *body_file = NULL;
    size_t hlen = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--once")) g_once = 1;
        else if (!v) {
            fprintf(stderr, "loadgen: %s needs a value\n", a);
            return 2;
        } else if (!strcmp(a, "--port")) g_port = atoi(v), i++;
        else if (!strcmp(a, "--path")) g_path = v, i++;
        else if (!strcmp(a, "--body-file")) body_file = v, i++;
        else if (!strcmp(a, "--header")) hlen += (size_t)snprintf(g_headers + hlen, sizeof g_headers - hlen, "%s\r\n", v), i++;
        else if (!strcmp(a, "--conns")) conns = atoi(v), i++;
        else if (!strcmp(a, "--rate")) rate = atof(v), i++;
        else if (!strcmp(a, "--duration")) duration = atof(v), i++;
        else if (!strcmp(a, "--warmup")) warmup = atof(v), i++;
        else if (!strcmp(a, "--drop-every")) g_drop_every = atoi(v), i++;
        else if (!strcmp(a, "--drop-after")) g_drop_after = atoi(v), i++;
        else if (!strcmp(a, "--request-ids")) g_reqid_prefix = v, i++;
        else if (!strcmp(a, "--marker")) g_marker = v, i++;
        else if (!strcmp(a, "--max-inflight")) max_inflight = atoi(v), i++;
        else {
            fprintf(stderr, "loadgen: unknown option %s\n", a);
            return 2;
        }
    }
    if (!g_port || !body_file) {
        fprintf(stderr, "usage: loadgen --port P --body-file F [options] (see the source)\n");
        return 2;
    }
    g_rate = rate;
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    g_body = read_file(body_file, &g_body_len);
    g_drops = open_memstream(&g_drops_buf, &g_drops_size);
    g_streams = open_memstream(&g_streams_buf, &g_streams_size);
    g_epfd = epoll_create1(0);

    uint64_t t0 = now_ns();
    g_window_start = g_once ? 0 : t0 + (uint64_t)(warmup * 1e9);
    g_window_end = g_once ? UINT64_MAX : g_window_start + (uint64_t)(duration * 1e9);
    uint64_t hard_end = t0 + (uint64_t)((warmup + duration + (g_once ? 600 : 30)) * 1e9);

    size_t pool = rate > 0 ? (size_t)max_inflight : (size_t)conns;
    conn_t *cs = calloc(pool, sizeof *cs);
    conn_t **free_list = calloc(pool, sizeof *free_list);
    size_t n_free = 0;
    for (size_t i = 0; i < pool; i++) {
        cs[i].index = (int)i;
        cs[i].fd = -1;
    }
    if (rate > 0) {
        for (size_t i = pool; i > 0; i--) free_list[n_free++] = &cs[i - 1];
    } else {
        for (size_t i = 0; i < pool; i++) open_conn(&cs[i]);
    }
    uint64_t next_arrival = t0, interval = rate > 0 ? (uint64_t)(1e9 / rate) : 0;
    long next_index = 0;
    long refused = 0; /* open loop: arrivals with every slot busy */

    struct epoll_event events[1024];
    for (;;) {
        uint64_t t = now_ns();
        if (t > hard_end) break;
        if (rate > 0) {
            while (next_arrival <= t && next_arrival < g_window_end) {
                if (n_free == 0) refused++;
                else {
                    conn_t *c = free_list[--n_free];
                    c->index = (int)next_index++;
                    open_conn(c);
                    if (c->fd < 0) free_list[n_free++] = c;
                }
                next_arrival += interval;
            }
            if (t >= g_window_end && g_inflight == 0 && n_free == pool) break;
        } else {
            int any = 0;
            for (size_t i = 0; i < pool && !any; i++) any = cs[i].active;
            if (!any) break;
            if (!g_once && t >= g_window_end + 2000000000ull) break; /* answers still out 2 s after the window */
        }
        int timeout = 50;
        if (rate > 0 && next_arrival < g_window_end) {
            timeout = next_arrival <= t ? 0 : (int)((next_arrival - t) / 1000000);
        }
        int n = epoll_wait(g_epfd, events, 1024, timeout);
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (c->fd < 0) continue;
            if (c->state == S_CONNECTING && (events[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) {
                    g_errors++;
                    epoll_ctl(g_epfd, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                    c->fd = -1;
                    c->active = 0;
                    if (rate > 0) free_list[n_free++] = c;
                    else if (!g_once && now_ns() < g_window_end) open_conn(c);
                    continue;
                }
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(g_epfd, EPOLL_CTL_MOD, c->fd, &ev);
                send_request(c);
                continue;
            }
            on_readable(c);
            if (rate > 0 && c->fd >= 0 && c->state == S_DONE) {
                epoll_ctl(g_epfd, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
                c->active = 0;
            }
            if (rate > 0 && c->fd < 0) free_list[n_free++] = c;
        }
    }
    uint64_t t_end = now_ns();
    double window_s = g_once ? (double)(t_end - t0) / 1e9 : duration;
    fclose(g_drops);
    fclose(g_streams);
    printf("{\"ok\":%ld,\"errors\":%ld,\"incomplete\":%ld,\"unfinished\":%ld,\"refused\":%ld,\"started\":%ld,"
           "\"window_s\":%.3f,"
           "\"rps\":%.2f,\"content_events\":%ld,\"tokens\":%ld,\"retry_after\":%ld,\"marked\":%ld,\"status\":{",
           g_ok, g_errors, g_incomplete, g_rate > 0 || g_once ? g_inflight : 0, refused, g_started, window_s, (double)g_ok / window_s, g_content_events, g_tokens,
           g_retry_after, g_marked);
    int first = 1;
    for (int s = 0; s < 600; s++)
        if (g_status[s]) printf("%s\"%d\":%ld", first ? "" : ",", s, g_status[s]), first = 0;
    printf("},");
    print_series("latency_ms", &s_latency, 0);
    print_series("ttft_ms", &s_ttft, 0);
    print_series("gap_ms", &s_gap, 0);
    print_series("non200_latency_ms", &s_non200_latency, 0);
    printf("\"drops\":[%s],\"streams\":[%s]}\n", g_drops_buf ? g_drops_buf : "", g_streams_buf ? g_streams_buf : "");
    return 0;
}
