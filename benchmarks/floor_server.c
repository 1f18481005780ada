/* A reference point for the p99 bound: an HTTP/1.1 server with no per-request work beyond the
 * socket and the framing (benchmarks only; built and run by bench_p99_floor.py).
 *
 * One thread, one epoll loop, edgemp's batching policy:
 * - each connection has at most one request in the server, as with edgemp (aiohttp and its fast
 *   path read a pipelined request only after answering the one before);
 * - with no queue delay, every request waiting when the model is free is one batch (up to
 *   MAX_BATCH); with DELAY_US, a batch also waits until it is full, every open connection has a
 *   request waiting, or its oldest request has waited DELAY_US since it was read;
 * - a batch "runs" by spinning for the CPU time the model takes for a batch of that size (argv: a
 *   table of microseconds per size, measured in-process by the harness), counted on this thread's
 *   CPU clock so that time the hypervisor steals stretches it as it would stretch a real run;
 * - while it spins, the loop keeps reading every ~20 µs, as edgemp's event loop does while its
 *   batcher thread runs the model, so a request's wait is counted from when it was read;
 * - each request then gets the same pre-recorded answer (a real answer of edgemp serve: as many
 *   bytes on the wire), none decoded or encoded.
 *
 *   floor_server PORT ANSWER_FILE MAX_BATCH US_1,US_2,...,US_MAX_BATCH [DELAY_US]
 *
 * GET /v2/health/ready answers 200 at once (the client's ceiling); GET /floor/stats answers
 * "batches requests spin_ns" so far. Any other request with a Content-Length body is an
 * inference request; a chunked one gets 501 and the connection is closed. A client that does
 * not read its answers (the socket buffer full) is dropped rather than waited for.
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

#define MAX_CONNS 65536
#define MAX_BUFFER (64u << 20) /* a connection that sends more without reading answers is dropped */
#define POLL_EVERY_NS 20000    /* how often a spinning batch lets the loop read */

enum { IDLE, QUEUED, IN_BATCH };

typedef struct {
    int fd;
    char *buf;
    size_t len, cap;
    int state;  /* IDLE, QUEUED or IN_BATCH */
    int eof;    /* the client half-closed: answer what it sent, then close */
    int dead;   /* closed while in a batch: freed once the batch is answered */
    uint64_t read_ns;
} conn_t;

static char *answer;
static size_t answer_len;
static long spin_ns[1025];
static int max_batch, ep, listener, timer;
static long delay_ns;
static unsigned long long n_batches, n_requests, n_spin_ns;
static conn_t *queued[MAX_CONNS]; /* QUEUED connections, oldest request first */
static int n_queued, n_conns;

static uint64_t clock_ns(clockid_t id) {
    struct timespec t;
    clock_gettime(id, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static uint64_t now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

static void free_conn(conn_t *c) {
    free(c->buf);
    free(c);
}

/* Close c's socket; free it unless a running batch still holds it. */
static void drop(conn_t *c) {
    if (c->fd < 0) return;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    n_conns--;
    if (c->state == QUEUED) {
        int j = 0;
        for (int i = 0; i < n_queued; i++)
            if (queued[i] != c) queued[j++] = queued[i];
        n_queued = j;
    }
    if (c->state == IN_BATCH) {
        c->dead = 1;
    } else {
        free_conn(c);
    }
}

/* Write all of p, or drop c (a client whose socket buffer is full does not read its answers). */
static int send_or_drop(conn_t *c, const char *p, size_t n) {
    while (n > 0) {
        ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
        } else if (k < 0 && errno == EINTR) {
            continue;
        } else {
            drop(c);
            return 0;
        }
    }
    return 1;
}

static int send_text(conn_t *c, const char *status, const char *body) {
    char head[256];
    int n = snprintf(head, sizeof head, "HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n\r\n",
                     status, strlen(body));
    return send_or_drop(c, head, (size_t)n) && send_or_drop(c, body, strlen(body));
}

/* If c has no request in the server, take the next complete one off its buffer: health and
 * stats are answered now (then the next is looked at), an inference request is queued. */
static void take_next(conn_t *c) {
    while (c->fd >= 0 && c->state == IDLE) {
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (end == NULL) break;
        size_t head = (size_t)(end - c->buf) + 4, body = 0;
        int chunked = 0;
        for (char *line = c->buf; line < end;) {
            char *eol = memmem(line, (size_t)(end - line) + 2, "\r\n", 2);
            if (strncasecmp(line, "content-length:", 15) == 0) body = strtoul(line + 15, NULL, 10);
            if (strncasecmp(line, "transfer-encoding:", 18) == 0) chunked = 1;
            line = eol + 2;
        }
        if (chunked) {
            if (send_text(c, "501 Not Implemented", "chunked bodies are not read here")) drop(c);
            return;
        }
        if (c->len < head + body) break;
        int health = strncmp(c->buf, "GET /v2/health/ready ", 21) == 0;
        int stats = strncmp(c->buf, "GET /floor/stats ", 17) == 0;
        memmove(c->buf, c->buf + head + body, c->len - head - body);
        c->len -= head + body;
        if (health) {
            if (!send_text(c, "200 OK", "")) return; /* dropped */
        } else if (stats) {
            char text[128];
            snprintf(text, sizeof text, "%llu %llu %llu", n_batches, n_requests, n_spin_ns);
            if (!send_text(c, "200 OK", text)) return;
        } else {
            c->state = QUEUED;
            c->read_ns = now_ns();
            queued[n_queued++] = c;
        }
    }
    if (c->fd >= 0 && c->eof && c->state == IDLE) drop(c); /* all it sent is answered */
}

/* Read what c's socket holds. */
static void fill(conn_t *c) {
    for (;;) {
        if (c->cap - c->len < 65536) {
            if (c->cap >= MAX_BUFFER) {
                drop(c);
                return;
            }
            c->cap = c->cap * 2 + 65536;
            c->buf = realloc(c->buf, c->cap);
        }
        ssize_t k = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (k > 0) {
            c->len += (size_t)k;
        } else if (k < 0 && errno == EINTR) {
            continue;
        } else if (k < 0 && errno == EAGAIN) {
            break;
        } else if (k == 0) { /* half-closed: stop watching it, answer what came */
            c->eof = 1;
            epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
            break;
        } else {
            drop(c);
            return;
        }
    }
    take_next(c);
}

/* One look at the sockets: accept, read, queue. Never runs a batch. */
static void poll_io(int timeout_ms) {
    struct epoll_event evs[1024];
    int n = epoll_wait(ep, evs, 1024, timeout_ms);
    for (int i = 0; i < n; i++) {
        void *p = evs[i].data.ptr;
        if (p == &timer) {
            uint64_t expirations;
            if (read(timer, &expirations, sizeof expirations) < 0) { /* spurious: nothing to take */
            }
        } else if (p == &listener) {
            int fd;
            while ((fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                conn_t *c = calloc(1, sizeof *c);
                c->fd = fd;
                struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                n_conns++;
            }
        } else {
            fill(p);
        }
    }
}

/* Spin for ns of this thread's CPU time, letting the loop read every POLL_EVERY_NS. */
static void spin(long ns) {
    long spun = 0;
    while (spun < ns) {
        long slice = ns - spun < POLL_EVERY_NS ? ns - spun : POLL_EVERY_NS;
        uint64_t start = clock_ns(CLOCK_THREAD_CPUTIME_ID);
        while ((long)(clock_ns(CLOCK_THREAD_CPUTIME_ID) - start) < slice) {
        }
        spun += (long)(clock_ns(CLOCK_THREAD_CPUTIME_ID) - start);
        poll_io(0);
    }
}

static void run_batch(void) {
    static conn_t *batch[MAX_CONNS];
    int size = n_queued < max_batch ? n_queued : max_batch;
    for (int i = 0; i < size; i++) {
        batch[i] = queued[i];
        batch[i]->state = IN_BATCH;
    }
    memmove(queued, queued + size, (size_t)(n_queued - size) * sizeof *queued);
    n_queued -= size;
    spin(spin_ns[size]);
    n_batches++;
    n_requests += (unsigned long long)size;
    n_spin_ns += (unsigned long long)spin_ns[size];
    for (int i = 0; i < size; i++) {
        conn_t *c = batch[i];
        c->state = IDLE;
        if (c->dead) {
            free_conn(c);
        } else if (send_or_drop(c, answer, answer_len)) {
            take_next(c); /* a pipelined request already read, or the close of a half-closed client */
        }
    }
}

/* Run every batch that is due; otherwise arm the timer for the oldest request's delay. */
static void run_due(void) {
    while (n_queued > 0) {
        uint64_t due = queued[0]->read_ns + (uint64_t)delay_ns;
        if (delay_ns == 0 || n_queued >= max_batch || n_queued >= n_conns || now_ns() >= due) {
            run_batch();
            poll_io(0); /* what came during the batch is queued before the next is formed */
        } else {
            struct itimerspec at = {.it_value = {.tv_sec = (time_t)(due / 1000000000ull),
                                                 .tv_nsec = (long)(due % 1000000000ull)}};
            timerfd_settime(timer, TFD_TIMER_ABSTIME, &at, NULL);
            return;
        }
    }
}

static void usage(void) {
    fprintf(stderr, "usage: floor_server PORT ANSWER_FILE MAX_BATCH US_1,...,US_MAX_BATCH [DELAY_US]\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 6) usage();
    max_batch = atoi(argv[3]);
    if (max_batch < 1 || max_batch > 1024) usage();
    char *list = argv[4];
    for (int i = 1; i <= max_batch; i++) {
        char *next;
        spin_ns[i] = (long)(strtod(list, &next) * 1000.0);
        if (next == list || spin_ns[i] < 0) usage();
        list = *next == ',' ? next + 1 : next;
    }
    delay_ns = argc == 6 ? atol(argv[5]) * 1000L : 0;
    FILE *f = fopen(argv[2], "rb");
    if (f == NULL) usage();
    fseek(f, 0, SEEK_END);
    answer_len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    answer = malloc(answer_len + 1);
    if (fread(answer, 1, answer_len, f) != answer_len) usage();
    fclose(f);

    listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listener, 1024) != 0) {
        perror("floor_server");
        return 1;
    }
    ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listener};
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);
    timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK); /* the queue delay's deadline */
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = &timer};
    epoll_ctl(ep, EPOLL_CTL_ADD, timer, &tev);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        poll_io(-1);
        run_due();
    }
}
