/*
 * loadgen: closed-loop load generator for an APISIX ext-plugin runner.
 *
 * It plays APISIX's side of the protocol (docs/protocol.md) over N Unix-socket
 * connections, one call in flight per connection, as APISIX's cosocket pool
 * does. Every call sends the scenario's pre-built request frame (written by
 * bench/frames.py) with a fresh id patched in, answers the runner's ExtraInfo
 * questions, and validates the final reply against the scenario's .expect
 * rules by reading the FlatBuffer fields (type, echoed id, action, status,
 * path, headers, args, body, number of questions). A wrong reply, an Err
 * frame, EOF or a timeout counts as an error; the connection is then closed
 * and reopened, as APISIX does after any failure.
 *
 * One thread and epoll, so the generator costs little CPU next to a Python
 * server; its own user+sys time over the measured window is reported so
 * that claim can be checked. Output: one JSON line on stdout.
 *
 * Modes:
 *   load (default)  warmup, then a measured window of --duration seconds,
 *                   then a drain of the calls still in flight.
 *   --idle-hold S   open all connections, keep them idle S seconds, then send
 *                   exactly one call on each and wait (up to --duration) for
 *                   every answer.
 *   --burst         N fresh connections at the same instant, one call each:
 *                   all connects start at t0 (a connect refused for a full
 *                   backlog is retried), each call's latency counts from t0,
 *                   and each connection closes after its reply. Waits up to
 *                   --duration for every answer.
 *
 * --busy-poll: poll epoll without sleeping. A sleeping generator makes every
 * reply wake an idle CPU, which on a virtual machine costs the *sender* an
 * IPI exit (tens of µs of the server's CPU per call); an APISIX busy with
 * HTTP traffic rarely sleeps, so this mode shows the server's cost under load.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum { RPC_ERR = 0, RPC_PREPARE_CONF = 1, RPC_REQ_CALL = 2, RPC_EXTRA_INFO = 3, RPC_RESP_CALL = 4 };
enum { INFO_VAR = 1, INFO_REQ_BODY = 2, INFO_RESP_BODY = 3 };
enum { MAX_PAIRS = 8, MAX_LOGGED_ERRORS = 5, IO_TIMEOUT_S = 5 };

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- FlatBuffers reading: bounds-checked, only what validation needs ---- */

typedef struct {
    const uint8_t *p;
    uint32_t n;
} fbuf;

/* FlatBuffers integers are little-endian whatever the host. */
static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t le32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* Position of the uoffset-referenced object stored at `at`, or 0 if invalid. */
static uint32_t fb_deref(fbuf b, uint32_t at)
{
    if (!at || (uint64_t)at + 4 > b.n)
        return 0;
    uint64_t target = (uint64_t)at + le32(b.p + at);
    return target + 4 <= b.n ? (uint32_t)target : 0;
}

static uint32_t fb_root(fbuf b)
{
    if (b.n < 8)
        return 0;
    uint32_t t = le32(b.p);
    return (uint64_t)t + 4 <= b.n ? t : 0;
}

/* Position of field `slot` (of `size` bytes) of the table at `tab`; 0 if absent or out of bounds.
 * 0 is never a valid field position: the root uoffset occupies it. */
static uint32_t fb_field(fbuf b, uint32_t tab, int slot, uint32_t size)
{
    if (!tab || (uint64_t)tab + 4 > b.n)
        return 0;
    int64_t vt = (int64_t)tab - (int32_t)le32(b.p + tab);
    if (vt < 0 || vt + 4 > b.n)
        return 0;
    uint32_t entry = 4 + 2 * (uint32_t)slot;
    if (entry + 2 > le16(b.p + vt) || (uint64_t)vt + entry + 2 > b.n)
        return 0;
    uint32_t off = le16(b.p + vt + entry);
    if (!off || (uint64_t)tab + off + size > b.n)
        return 0;
    return tab + off;
}

static uint32_t fb_u32(fbuf b, uint32_t tab, int slot)
{
    uint32_t at = fb_field(b, tab, slot, 4);
    return at ? le32(b.p + at) : 0;
}

static uint32_t fb_u16(fbuf b, uint32_t tab, int slot)
{
    uint32_t at = fb_field(b, tab, slot, 2);
    return at ? le16(b.p + at) : 0;
}

static uint32_t fb_u8(fbuf b, uint32_t tab, int slot)
{
    uint32_t at = fb_field(b, tab, slot, 1);
    return at ? b.p[at] : 0;
}

static uint32_t fb_table(fbuf b, uint32_t tab, int slot) { return fb_deref(b, fb_field(b, tab, slot, 4)); }

/* A vector or string field: sets *start and *count; 0 if absent or out of bounds. */
static int fb_vector(fbuf b, uint32_t tab, int slot, uint32_t elem, uint32_t *start, uint32_t *count)
{
    uint32_t v = fb_table(b, tab, slot);
    if (!v)
        return 0;
    uint32_t n = le32(b.p + v);
    if ((uint64_t)v + 4 + (uint64_t)n * elem > b.n)
        return 0;
    *start = v + 4;
    *count = n;
    return 1;
}

static int fb_bytes_eq(fbuf b, uint32_t tab, int slot, const char *want, int fold)
{
    uint32_t start, n;
    if (!fb_vector(b, tab, slot, 1, &start, &n) || n != strlen(want))
        return 0;
    return fold ? !strncasecmp((const char *)b.p + start, want, n) : !memcmp(b.p + start, want, n);
}

/* Does the [TextEntry] field `slot` hold name=value? Header names compare case-insensitively. */
static int fb_has_entry(fbuf b, uint32_t tab, int slot, const char *name, const char *value, int fold)
{
    uint32_t start, n;
    if (!fb_vector(b, tab, slot, 4, &start, &n))
        return 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t entry = fb_deref(b, start + 4 * i);
        if (entry && fb_bytes_eq(b, entry, 0, name, fold) && fb_bytes_eq(b, entry, 1, value, 0))
            return 1;
    }
    return 0;
}

/* ---- scenario files (see bench/frames.py) ---- */

typedef struct {
    uint8_t *data;
    uint32_t len;
} blob;

static blob read_file(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        die("cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) < 0 || st.st_size < 4)
        die("%s is not a frame file", path);
    blob out = {malloc((size_t)st.st_size), (uint32_t)st.st_size};
    if (!out.data || fread(out.data, 1, out.len, f) != out.len)
        die("cannot read %s", path);
    fclose(f);
    return out;
}

static uint32_t frame_len(const uint8_t *h) { return (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3]; }

static fbuf frame_payload(blob f) { return (fbuf){f.data + 4, f.len - 4}; }

typedef struct {
    char name[64], value[256];
} pair;

typedef struct {
    int reply, action, status, questions;
    char path[256], body[256];
    int has_path, has_body;
    pair headers[MAX_PAIRS], args[MAX_PAIRS];
    int nheaders, nargs;
} expect_t;

static expect_t read_expect(const char *dir, const char *scenario)
{
    char path[4096], line[1024], key[64];
    snprintf(path, sizeof path, "%s/%s.expect", dir, scenario);
    FILE *f = fopen(path, "r");
    if (!f)
        die("cannot open %s: %s", path, strerror(errno));
    expect_t ex = {.reply = -1, .action = -1, .status = -1, .questions = -1};
    while (fgets(line, sizeof line, f)) {
        char a[256] = "", b[256] = "";
        if (sscanf(line, "%63s %255s %255s", key, a, b) < 2)
            continue;
        if (!strcmp(key, "reply"))
            ex.reply = atoi(a);
        else if (!strcmp(key, "action"))
            ex.action = atoi(a);
        else if (!strcmp(key, "status"))
            ex.status = atoi(a);
        else if (!strcmp(key, "questions"))
            ex.questions = atoi(a);
        else if (!strcmp(key, "path")) {
            snprintf(ex.path, sizeof ex.path, "%s", a);
            ex.has_path = 1;
        } else if (!strcmp(key, "body")) {
            snprintf(ex.body, sizeof ex.body, "%s", a);
            ex.has_body = 1;
        } else if ((!strcmp(key, "header") && ex.nheaders < MAX_PAIRS) || (!strcmp(key, "arg") && ex.nargs < MAX_PAIRS)) {
            pair *p = key[0] == 'h' ? &ex.headers[ex.nheaders++] : &ex.args[ex.nargs++];
            snprintf(p->name, sizeof p->name, "%s", a);
            snprintf(p->value, sizeof p->value, "%s", b);
        } else
            die("%s: unknown rule: %s", path, line);
    }
    fclose(f);
    if (ex.reply != RPC_REQ_CALL && ex.reply != RPC_RESP_CALL)
        die("%s: needs 'reply 2' or 'reply 4'", path);
    return ex;
}

/* NULL if the final reply meets the expectations, else why not. */
static const char *validate(const expect_t *ex, const uint8_t *frame, uint32_t id, int questions)
{
    fbuf b = {frame + 4, frame_len(frame)};
    if (frame[0] != ex->reply)
        return frame[0] == RPC_ERR ? "Err reply" : "wrong reply type";
    if (ex->questions >= 0 && questions != ex->questions)
        return "wrong number of ExtraInfo questions";
    uint32_t root = fb_root(b);
    if (!root)
        return "payload is not a FlatBuffer";
    if (fb_u32(b, root, 0) != id)
        return "request id not echoed";
    /* Slot numbers from docs/protocol.md §2. */
    uint32_t tab = root;
    int status_slot = 1, headers_slot = 2, body_slot = 3, path_slot = -1, args_slot = -1;
    if (ex->reply == RPC_REQ_CALL) {
        if ((int)fb_u8(b, root, 1) != ex->action)
            return "wrong action type";
        if (!(tab = fb_table(b, root, 2)))
            return "action table missing";
        if (ex->action == 1) { /* Stop */
            status_slot = 0, headers_slot = 1, body_slot = 2;
        } else { /* Rewrite */
            status_slot = -1, path_slot = 0, headers_slot = 1, args_slot = 2, body_slot = 4;
        }
    }
    if (ex->status >= 0 && (status_slot < 0 || (int)fb_u16(b, tab, status_slot) != ex->status))
        return "wrong status";
    if (ex->has_path && (path_slot < 0 || !fb_bytes_eq(b, tab, path_slot, ex->path, 0)))
        return "wrong path";
    if (ex->has_body && !fb_bytes_eq(b, tab, body_slot, ex->body, 0))
        return "wrong body";
    for (int i = 0; i < ex->nheaders; i++)
        if (!fb_has_entry(b, tab, headers_slot, ex->headers[i].name, ex->headers[i].value, 1))
            return "expected header missing";
    for (int i = 0; i < ex->nargs; i++)
        if (args_slot < 0 || !fb_has_entry(b, tab, args_slot, ex->args[i].name, ex->args[i].value, 0))
            return "expected arg missing";
    return NULL;
}

/* ---- measurement ---- */

typedef struct {
    uint64_t *v;
    size_t n, cap;
} samples;

static void samples_add(samples *s, uint64_t x)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 1 << 16;
        if (!(s->v = realloc(s->v, s->cap * sizeof *s->v)))
            die("out of memory");
    }
    s->v[s->n++] = x;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted samples, in microseconds. */
static double pct_us(const samples *s, double p)
{
    if (!s->n)
        return 0;
    size_t i = (size_t)(p * (double)(s->n - 1) + 0.5);
    return (double)s->v[i] / 1000.0;
}

static double cpu_self_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* utime+stime of every thread of process `pid`, in seconds, its stime added to
 * `*sys`; -1 if unknown. */
static double cpu_of_one_pid_s(int pid, double *sys)
{
    char path[64], buf[2048];
    if (pid <= 0)
        return -1;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    /* The command name may hold spaces; the fields after its ')' are fixed:
     * state is field 3, utime and stime are fields 14 and 15. */
    char *p = strrchr(buf, ')');
    unsigned long long ut, st;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    double tick = (double)sysconf(_SC_CLK_TCK);
    *sys += (double)st / tick;
    return (double)(ut + st) / tick;
}

/* The children of process `pid` (a runner's worker processes), up to `max`; how many. */
static int children_of(int pid, int *out, int max)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", pid, pid);
    FILE *f = fopen(path, "r");
    int n = 0;
    if (!f)
        return 0;
    while (n < max && fscanf(f, "%d", &out[n]) == 1)
        n++;
    fclose(f);
    return n;
}

/* CPU of process `pid` and of its children (a master and its workers), in
 * seconds, the part spent in the kernel in `*sys`; -1 if unknown. */
static double cpu_of_pid_s(int pid, double *sys)
{
    *sys = 0;
    double total = cpu_of_one_pid_s(pid, sys);
    int kids[64];
    int n = total < 0 ? 0 : children_of(pid, kids, 64);
    for (int i = 0; i < n; i++) {
        double c = cpu_of_one_pid_s(kids[i], sys);
        if (c > 0)
            total += c;
    }
    return total;
}

/* CPU time all processes spent on every CPU (the "cpu" line of /proc/stat), in
 * seconds; minus the server's and ours, it shows how much other load skewed the run. */
static double cpu_machine_s(void)
{
    unsigned long long v[8];
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n != 8)
        return -1;
    /* user nice system idle iowait irq softirq steal: all but idle and iowait are busy. */
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

/* A "Key:   N kB"-style field of /proc/<pid>/status, or -1. */
static long status_field(int pid, const char *key)
{
    char path[64], line[256];
    size_t klen = strlen(key);
    long v = -1;
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = pid > 0 ? fopen(path, "r") : NULL;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, klen) && line[klen] == ':') {
            v = atol(line + klen + 1);
            break;
        }
    fclose(f);
    return v;
}

/* ---- connections ---- */

typedef struct {
    int fd;
    int busy;     /* a call is in flight */
    int want_out; /* EPOLLOUT is registered */
    int questions;
    uint32_t id;
    uint64_t started;
    uint8_t *req; /* this connection's copy of the request frame; its id is patched per call */
    const uint8_t *out;
    uint32_t out_len, out_off;
    uint8_t *in;
    uint32_t in_len, in_cap;
    int connecting; /* --burst: connect() still to be (re)tried */
} conn;

static struct {
    const char *socket_path;
    int epfd, server_pid;
    blob request, answers[4]; /* answers indexed by ExtraInfo info_type */
    uint32_t id_off;
    expect_t ex;
    uint32_t next_id;
    int issuing, counting, inflight, busy_poll, burst, burst_left;
    uint64_t burst_t0;
    long calls, errors, timeouts;
    samples lat;
} g;

static int connect_unix(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        die("socket path too long: %s", path);
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    /* A full listen backlog makes connect() wait; bound that wait (and the
     * blocking I/O of the PrepareConf exchange). */
    struct timeval tv = {IO_TIMEOUT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void epoll_set(conn *c, int out)
{
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(g.epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    c->want_out = out;
}

/* Open (or reopen) the connection. With `then_call`, EPOLLOUT is armed so the
 * main loop starts its next call: never from inside a failure handler, which
 * would recurse when a server keeps failing. */
static int conn_open(conn *c, int then_call)
{
    c->fd = connect_unix(g.socket_path);
    if (c->fd < 0)
        return -1;
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    c->in_len = c->out_len = c->out_off = 0;
    c->busy = 0;
    struct epoll_event ev = {.events = EPOLLIN | (then_call ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(g.epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    c->want_out = then_call;
    return 0;
}

static void log_error(const conn *c, const char *why)
{
    if (g.errors > MAX_LOGGED_ERRORS)
        return;
    fprintf(stderr, "loadgen: error: %s (call id %u, %d questions)", why, c->id, c->questions);
    if (c->in_len >= 4) {
        uint32_t n = c->in_len < 512 ? c->in_len : 512;
        fprintf(stderr, "; frame type %u, payload %u bytes:", c->in[0], frame_len(c->in));
        for (uint32_t i = 0; i < n; i++)
            fprintf(stderr, "%s%02x", i % 16 ? " " : "\n  ", c->in[i]);
    }
    fputc('\n', stderr);
    if (g.errors == MAX_LOGGED_ERRORS)
        fputs("loadgen: further errors are counted, not shown\n", stderr);
}

/* The call failed: count it, then do what APISIX does, close the connection
 * (and open a new one while the run is still issuing calls). */
static void fail(conn *c, const char *why)
{
    g.errors++;
    log_error(c, why);
    if (g.burst)
        g.burst_left--;
    if (c->busy)
        g.inflight--;
    close(c->fd); /* also removes it from the epoll set */
    c->fd = -1;
    c->busy = 0;
    if (g.issuing && !g.burst && conn_open(c, 1) < 0) {
        g.errors++;
        fprintf(stderr, "loadgen: reconnect failed: %s\n", strerror(errno));
    }
}

/* Write what is left of the current outgoing frame; arm EPOLLOUT if the socket is full. */
static void flush_out(conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (w > 0) {
            c->out_off += (uint32_t)w;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out)
                epoll_set(c, 1);
            return;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else {
            fail(c, "write failed");
            return;
        }
    }
    if (c->want_out)
        epoll_set(c, 0);
}

static void send_frame(conn *c, const uint8_t *data, uint32_t len)
{
    c->out = data;
    c->out_len = len;
    c->out_off = 0;
    flush_out(c);
}

static void start_call(conn *c)
{
    c->id = g.next_id++;
    if (!g.next_id)
        g.next_id = 1; /* an id of 0 would be omitted from the reply (scalar default) */
    put_le32(c->req + g.id_off, c->id);
    c->busy = 1;
    c->questions = 0;
    c->in_len = 0;
    g.inflight++;
    c->started = g.burst ? g.burst_t0 : now_ns();
    send_frame(c, c->req, g.request.len);
}

/* A whole frame is in c->in. */
static void on_frame(conn *c)
{
    if (!c->busy) {
        fail(c, "unsolicited frame");
        return;
    }
    if (c->in[0] == RPC_EXTRA_INFO) {
        fbuf b = {c->in + 4, frame_len(c->in)};
        uint32_t info = fb_u8(b, fb_root(b), 0);
        c->questions++;
        if (info < INFO_VAR || info > INFO_RESP_BODY) {
            /* APISIX closes the connection without answering (docs/protocol.md §5). */
            fail(c, "unsupported ExtraInfo question");
            return;
        }
        c->in_len = 0;
        send_frame(c, g.answers[info].data, g.answers[info].len);
        return;
    }
    uint64_t took = now_ns() - c->started;
    const char *why = validate(&g.ex, c->in, c->id, c->questions);
    if (why) {
        fail(c, why);
        return;
    }
    c->busy = 0;
    c->in_len = 0;
    g.inflight--;
    if (g.counting) {
        g.calls++;
        samples_add(&g.lat, took);
    }
    if (g.burst) { /* one call per fresh connection */
        close(c->fd);
        c->fd = -1;
        g.burst_left--;
        return;
    }
    if (g.issuing)
        start_call(c);
}

/* --burst: a non-blocking connect, as APISIX makes; 1 if connected, 0 to retry (full backlog). */
static int burst_connect(conn *c)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, g.socket_path);
    if (c->fd < 0 && (c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0)
        die("socket: %s", strerror(errno));
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (errno == EAGAIN || errno == EINPROGRESS)
            return 0;
        die("connect: %s", strerror(errno));
    }
    c->connecting = 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(g.epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    c->want_out = 1;
    return 1;
}

static void on_readable(conn *c)
{
    for (;;) {
        if (c->in_len >= 4 && c->in_cap < 4 + frame_len(c->in)) {
            c->in_cap = 4 + frame_len(c->in);
            if (!(c->in = realloc(c->in, c->in_cap)))
                die("out of memory");
        }
        ssize_t r = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
        if (r == 0) {
            fail(c, "connection closed by the server");
            return;
        }
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                fail(c, "read failed");
            return;
        }
        c->in_len += (uint32_t)r;
        if (c->in_len >= 4 && c->in_len >= 4 + frame_len(c->in)) {
            /* The server may send nothing after a frame until we answer or
             * send the next call (docs/protocol.md §1): extra bytes mean a desync. */
            if (c->in_len > 4 + frame_len(c->in))
                fail(c, "bytes after a frame");
            else
                on_frame(c);
            return;
        }
    }
}

static void on_event(conn *c, uint32_t events)
{
    if (c->fd < 0)
        return;
    if (events & EPOLLOUT) {
        if (c->busy)
            flush_out(c);
        else if (g.issuing)
            start_call(c);
        else
            epoll_set(c, 0);
    }
    if (c->fd >= 0 && events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        on_readable(c);
}

static conn *g_conns;
static int g_nconns, g_connecting;

/* Run the event loop until `until` (ns) or, with `until_idle`, until no call is in flight. */
static void loop(uint64_t until, int until_idle)
{
    struct epoll_event evs[256];
    for (;;) {
        uint64_t now = now_ns();
        if (g_connecting) /* --burst: retry the connects a full backlog refused */
            for (int i = 0; i < g_nconns; i++)
                if (g_conns[i].connecting && burst_connect(&g_conns[i]))
                    g_connecting--;
        if (now >= until || (until_idle && !g.inflight && !g_connecting && !g.burst_left))
            return;
        int timeout_ms = g_connecting ? 1 : (int)((until - now + 999999) / 1000000);
        int n = epoll_wait(g.epfd, evs, 256, g.busy_poll ? 0 : timeout_ms);
        if (n < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++)
            on_event(evs[i].data.ptr, evs[i].events);
    }
}

/* PrepareConf on its own connection, as APISIX does (docs/protocol.md §7); returns the token. */
static uint32_t prepare_conf(blob prepare)
{
    int fd = connect_unix(g.socket_path);
    if (fd < 0)
        die("connect %s: %s", g.socket_path, strerror(errno));
    uint8_t hdr[4], payload[4096];
    if (write(fd, prepare.data, prepare.len) != (ssize_t)prepare.len)
        die("PrepareConf: write failed");
    if (recv(fd, hdr, 4, MSG_WAITALL) != 4)
        die("PrepareConf: no reply");
    uint32_t n = frame_len(hdr);
    if (n > sizeof payload || recv(fd, payload, n, MSG_WAITALL) != (ssize_t)n)
        die("PrepareConf: bad reply length %u", n);
    close(fd);
    fbuf b = {payload, n};
    uint32_t token = fb_u32(b, fb_root(b), 0);
    if (hdr[0] != RPC_PREPARE_CONF || !token)
        die("PrepareConf: reply type %u, token %u", hdr[0], token);
    return token;
}

static void usage(void)
{
    fputs("usage: loadgen --socket PATH --frames DIR --scenario NAME [--conns N] [--duration S]\n"
          "               [--warmup S] [--drain S] [--token T] [--server-pid PID] [--idle-hold S]\n"
          "               [--busy-poll] [--burst]\n",
          stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *frames_dir = NULL, *scenario = NULL;
    int conns = 1;
    double duration = 5, warmup = 1, drain = 10, idle_hold = -1;
    uint32_t token = 0;
    static const struct option opts[] = {
        {"socket", 1, 0, 's'}, {"frames", 1, 0, 'f'},   {"scenario", 1, 0, 'n'},   {"conns", 1, 0, 'c'},
        {"duration", 1, 0, 'd'}, {"warmup", 1, 0, 'w'}, {"drain", 1, 0, 'D'},      {"token", 1, 0, 't'},
        {"server-pid", 1, 0, 'p'}, {"idle-hold", 1, 0, 'i'}, {"busy-poll", 0, 0, 'b'}, {"burst", 0, 0, 'B'},
        {0, 0, 0, 0},
    };
    for (int o; (o = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        switch (o) {
        case 's': g.socket_path = optarg; break;
        case 'f': frames_dir = optarg; break;
        case 'n': scenario = optarg; break;
        case 'c': conns = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'D': drain = atof(optarg); break;
        case 't': token = (uint32_t)strtoul(optarg, NULL, 0); break;
        case 'p': g.server_pid = atoi(optarg); break;
        case 'i': idle_hold = atof(optarg); break;
        case 'b': g.busy_poll = 1; break;
        case 'B': g.burst = 1; break;
        default: usage();
        }
    }
    if (!g.socket_path || !frames_dir || !scenario || conns < 1 || duration <= 0)
        usage();
    signal(SIGPIPE, SIG_IGN);
    /* Thousands of connections need thousands of descriptors. */
    struct rlimit rl;
    if (!getrlimit(RLIMIT_NOFILE, &rl)) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    char name[256];
    snprintf(name, sizeof name, "%s.request", scenario);
    g.request = read_file(frames_dir, name);
    g.ex = read_expect(frames_dir, scenario);
    g.answers[INFO_VAR] = read_file(frames_dir, "extra.var");
    g.answers[INFO_REQ_BODY] = read_file(frames_dir, "extra.reqbody");
    g.answers[INFO_RESP_BODY] = read_file(frames_dir, "extra.respbody");

    fbuf req = frame_payload(g.request);
    uint32_t root = fb_root(req);
    uint32_t token_at = fb_field(req, root, g.request.data[0] == RPC_REQ_CALL ? 6 : 3, 4);
    uint32_t id_at = fb_field(req, root, 0, 4);
    if (!id_at || !token_at)
        die("request frame lacks an id or conf_token field to patch");
    g.id_off = 4 + id_at;
    if (!token) {
        snprintf(name, sizeof name, "%s.prepare", scenario);
        token = prepare_conf(read_file(frames_dir, name));
    }
    put_le32(g.request.data + 4 + token_at, token);

    if ((g.epfd = epoll_create1(EPOLL_CLOEXEC)) < 0)
        die("epoll_create1: %s", strerror(errno));
    long base_rss_kb = status_field(g.server_pid, "VmRSS");
    conn *cs = calloc((size_t)conns, sizeof *cs);
    uint64_t t_connect = now_ns();
    for (int i = 0; i < conns; i++) {
        cs[i].in_cap = 64 * 1024;
        cs[i].in = malloc(cs[i].in_cap);
        cs[i].req = malloc(g.request.len);
        memcpy(cs[i].req, g.request.data, g.request.len);
        cs[i].fd = -1;
        if (!g.burst && conn_open(&cs[i], 0) < 0)
            die("connect %d of %d: %s", i + 1, conns, strerror(errno));
    }
    double connect_s = (double)(now_ns() - t_connect) / 1e9;
    g.next_id = 1;

    uint64_t t0, t1;
    double cli0, cli1, srv0, srv1, sys0, sys1, all0, all1;
    long idle_rss_kb = -1, idle_threads = -1;
    if (g.burst) {
        g_conns = cs, g_nconns = conns;
        t0 = g.burst_t0 = now_ns(), cli0 = cpu_self_s(), srv0 = cpu_of_pid_s(g.server_pid, &sys0), all0 = cpu_machine_s();
        g.counting = 1, g.issuing = 1;
        for (int i = 0; i < conns; i++) {
            cs[i].connecting = 1;
            g_connecting++;
        }
        g.burst_left = conns;
        loop(t0 + (uint64_t)(duration * 1e9), 1);
        t1 = now_ns(), cli1 = cpu_self_s(), srv1 = cpu_of_pid_s(g.server_pid, &sys1), all1 = cpu_machine_s();
        idle_threads = status_field(g.server_pid, "Threads");
        g.errors += g.burst_left - g.inflight; /* never connected (or never sent) in time */
    } else if (idle_hold < 0) {
        g.issuing = 1;
        for (int i = 0; i < conns; i++)
            start_call(&cs[i]);
        loop(now_ns() + (uint64_t)(warmup * 1e9), 0);
        t0 = now_ns(), cli0 = cpu_self_s(), srv0 = cpu_of_pid_s(g.server_pid, &sys0), all0 = cpu_machine_s();
        g.counting = 1;
        loop(t0 + (uint64_t)(duration * 1e9), 0);
        g.counting = g.issuing = 0;
        t1 = now_ns(), cli1 = cpu_self_s(), srv1 = cpu_of_pid_s(g.server_pid, &sys1), all1 = cpu_machine_s();
        /* Let the calls in flight finish so the server is not cut off mid-call. */
        loop(now_ns() + (uint64_t)(drain * 1e9), 1);
    } else {
        struct timespec hold = {(time_t)idle_hold, (long)((idle_hold - (double)(time_t)idle_hold) * 1e9)};
        nanosleep(&hold, NULL);
        idle_rss_kb = status_field(g.server_pid, "VmRSS");
        idle_threads = status_field(g.server_pid, "Threads");
        t0 = now_ns(), cli0 = cpu_self_s(), srv0 = cpu_of_pid_s(g.server_pid, &sys0), all0 = cpu_machine_s();
        g.counting = 1;
        for (int i = 0; i < conns; i++)
            start_call(&cs[i]);
        loop(t0 + (uint64_t)(duration * 1e9), 1);
        t1 = now_ns(), cli1 = cpu_self_s(), srv1 = cpu_of_pid_s(g.server_pid, &sys1), all1 = cpu_machine_s();
    }
    g.timeouts = g.inflight;
    g.errors += g.timeouts;
    if (g.timeouts)
        fprintf(stderr, "loadgen: %ld calls got no reply in time\n", g.timeouts);

    qsort(g.lat.v, g.lat.n, sizeof *g.lat.v, cmp_u64);
    double secs = (double)(t1 - t0) / 1e9;
    printf("{\"scenario\": \"%s\", \"mode\": \"%s\", \"conns\": %d, \"token\": %u, \"seconds\": %.3f, "
           "\"calls\": %ld, \"errors\": %ld, \"timeouts\": %ld, \"calls_per_s\": %.1f, "
           "\"p50_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %.1f, \"client_cpu_s\": %.3f, "
           "\"server_cpu_s\": %.3f, \"server_sys_s\": %.3f, \"machine_cpu_s\": %.3f, \"connect_s\": %.3f, \"server_idle_rss_kb\": %ld, \"server_idle_threads\": %ld, "
           "\"server_base_rss_kb\": %ld}\n",
           scenario, g.burst ? "burst" : idle_hold < 0 ? "load" : "idle", conns, token, secs, g.calls, g.errors, g.timeouts,
           (double)g.calls / secs, pct_us(&g.lat, 0.50), pct_us(&g.lat, 0.99), g.lat.n ? (double)g.lat.v[g.lat.n - 1] / 1000.0 : 0,
           cli1 - cli0, srv0 < 0 || srv1 < 0 ? -1.0 : srv1 - srv0, srv0 < 0 || srv1 < 0 ? -1.0 : sys1 - sys0, all0 < 0 || all1 < 0 ? -1.0 : all1 - all0, connect_s, idle_rss_kb, idle_threads,
           base_rss_kb);
    return 0;
}
