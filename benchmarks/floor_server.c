/* The p99 floor of a served batch on this host: an HTTP/1.1 server with no per-request work
 * beyond the socket and the framing (benchmarks only; built and run by bench_p99_floor.py).
 *
 * One thread, one epoll loop, edgemp's batching policy: with no queue delay, every request
 * complete when the loop looks is one batch (up to MAX_BATCH); with DELAY_US, a batch also waits
 * until it is full, every connection has a request in it, or its oldest request has waited
 * DELAY_US. The batch "runs" by spinning
 * for the compute time measured for that batch size (argv: a table of microseconds per size),
 * then each request gets the same pre-recorded answer (a real answer of edgemp serve, so the
 * bytes written are as many). What it leaves out is the decoding, the collation and the
 * encoding: on one core, a front end can only be slower than this, so a p99 this server misses
 * there, none meets.
 *
 *   floor_server PORT ANSWER_FILE MAX_BATCH US_1,US_2,...,US_MAX_BATCH [DELAY_US]
 *
 * GET /v2/health/ready answers 200 at once (the client's ceiling); GET /floor/stats answers
 * "batches requests spin_ns" so far. Anything else with a complete body is an inference request.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    char *buf;
    size_t len, cap;
    int pending; /* complete inference requests not yet answered */
    int queued;  /* in the batch queue */
} conn_t;

static char *answer;
static size_t answer_len;
static long spin_ns[1025];
static int max_batch;
static unsigned long long n_batches, n_requests, n_spin_ns;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void spin(long ns) {
    uint64_t end = now_ns() + (uint64_t)ns;
    while (now_ns() < end) {
    }
}

static void send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
        } else if (k < 0 && errno != EAGAIN && errno != EINTR) {
            return; /* the peer left: its answer goes nowhere */
        }
    }
}

static void send_text(int fd, const char *body) {
    char head[256];
    int n = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n\r\n",
                     strlen(body));
    send_all(fd, head, (size_t)n);
    send_all(fd, body, strlen(body));
}

/* Take every complete request off c's buffer: answer health and stats now, count the rest. */
static void parse(conn_t *c) {
    size_t off = 0;
    for (;;) {
        char *start = c->buf + off;
        size_t avail = c->len - off;
        char *end = memmem(start, avail, "\r\n\r\n", 4);
        if (end == NULL) break;
        size_t head = (size_t)(end - start) + 4, body = 0;
        for (char *line = start; line < end;) {
            char *eol = memmem(line, (size_t)(end - line) + 2, "\r\n", 2);
            if (strncasecmp(line, "content-length:", 15) == 0) body = strtoul(line + 15, NULL, 10);
            line = eol + 2;
        }
        if (avail < head + body) break;
        if (strncmp(start, "GET /v2/health/ready ", 21) == 0) {
            send_text(c->fd, "");
        } else if (strncmp(start, "GET /floor/stats ", 17) == 0) {
            char text[128];
            snprintf(text, sizeof text, "%llu %llu %llu", n_batches, n_requests, n_spin_ns);
            send_text(c->fd, text);
        } else {
            c->pending++;
        }
        off += head + body;
    }
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
}

/* Read what the socket holds; 0 when the peer closed or failed. */
static int fill(conn_t *c) {
    for (;;) {
        if (c->cap - c->len < 65536) {
            c->cap = c->cap * 2 + 65536;
            c->buf = realloc(c->buf, c->cap);
        }
        ssize_t k = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (k > 0) {
            c->len += (size_t)k;
        } else if (k < 0 && (errno == EAGAIN || errno == EINTR)) {
            return 1;
        } else {
            return 0;
        }
    }
}

static conn_t **queued; /* connections with requests waiting for a batch, in arrival order */
static int n_queued, n_conns;
static long total_pending;
static uint64_t first_pending_ns;

/* Run every waiting request: batches of up to max_batch, in the order their connections were read. */
static void run_batches(void) {
    int at = 0;
    while (at < n_queued) {
        int size = 0, stop = at;
        while (stop < n_queued && size < max_batch) size += queued[stop++]->pending;
        for (int left = size; left > 0; left -= max_batch) { /* one connection may hold several */
            long t = spin_ns[left < max_batch ? left : max_batch];
            spin(t);
            n_batches++;
            n_spin_ns += (unsigned long long)t;
        }
        n_requests += (unsigned long long)size;
        for (int j = at; j < stop; j++) {
            conn_t *c = queued[j];
            for (; c->pending > 0; c->pending--)
                if (c->fd >= 0) send_all(c->fd, answer, answer_len);
            c->queued = 0;
            if (c->fd < 0) {
                free(c->buf);
                free(c);
            }
        }
        at = stop;
    }
    n_queued = 0;
    total_pending = 0;
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: floor_server PORT ANSWER_FILE MAX_BATCH US_1,...,US_MAX_BATCH [DELAY_US]\n");
        return 2;
    }
    max_batch = atoi(argv[3]);
    if (max_batch < 1 || max_batch > 1024) return 2;
    char *list = argv[4];
    for (int i = 1; i <= max_batch; i++) {
        spin_ns[i] = (long)(strtod(list, &list) * 1000.0);
        if (*list == ',') list++;
    }
    long delay_ns = argc == 6 ? atol(argv[5]) * 1000L : 0;
    FILE *f = fopen(argv[2], "rb");
    if (f == NULL) return 2;
    fseek(f, 0, SEEK_END);
    answer_len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    answer = malloc(answer_len);
    if (fread(answer, 1, answer_len, f) != answer_len) return 2;
    fclose(f);

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(ls, 1024) != 0) {
        perror("floor_server");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    /* The queue delay's deadline: a timer in the same epoll set. */
    int timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = &timer};
    epoll_ctl(ep, EPOLL_CTL_ADD, timer, &tev);
    queued = calloc(65536, sizeof *queued);
    struct epoll_event evs[1024];
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int n = epoll_wait(ep, evs, 1024, -1);
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &timer) {
                uint64_t expirations;
                if (read(timer, &expirations, sizeof expirations) < 0) { /* spurious: nothing to take */
                }
                continue;
            }
            if (p == &ls) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                    n_conns++;
                }
                continue;
            }
            conn_t *c = p;
            int open = fill(c), before = c->pending;
            parse(c);
            if (c->pending > before) {
                if (total_pending == 0) first_pending_ns = now_ns();
                total_pending += c->pending - before;
                if (!c->queued && n_queued < 65536) {
                    c->queued = 1;
                    queued[n_queued++] = c;
                }
            }
            if (!open) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
                n_conns--;
                if (!c->queued) {
                    free(c->buf);
                    free(c);
                }
            }
        }
        if (total_pending == 0) continue;
        /* As edgemp's batcher: run at once with no delay, when the batch is full, when every
           connection has a request waiting (no more can come), or when the oldest has waited the delay. */
        uint64_t due = first_pending_ns + (uint64_t)delay_ns;
        if (delay_ns == 0 || total_pending >= max_batch || total_pending >= n_conns || now_ns() >= due) {
            run_batches();
        } else {
            struct itimerspec at = {.it_value = {.tv_sec = (time_t)(due / 1000000000ull),
                                                 .tv_nsec = (long)(due % 1000000000ull)}};
            timerfd_settime(timer, TFD_TIMER_ABSTIME, &at, NULL);
        }
    }
}
