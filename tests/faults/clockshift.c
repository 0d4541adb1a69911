/* A wall clock moved for one process (LD_PRELOAD), for tests of clock offsets between Redis hosts
 * (docs/ha.md "Clocks"). libfaketime cannot run redis-server: its initialisation recurses through
 * jemalloc's first clock_gettime and the server never starts. This shim calls nothing that allocates:
 * CLOCK_REALTIME (and gettimeofday, time) get the offset in ms written in the file CLOCKSHIFT_FILE,
 * read again at most every 20 ms of monotonic time, so a test can step the clock of a running process.
 * The monotonic clocks are left alone. Built by tests/faults/test_clocks.py with gcc. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long long offset_ms, read_at_ns = -1;

static long long shift_ms(void) {
    struct timespec m;
    syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &m);
    long long now = m.tv_sec * 1000000000LL + m.tv_nsec;
    if (read_at_ns >= 0 && now - read_at_ns < 20000000LL) return offset_ms;
    read_at_ns = now;
    const char *path = getenv("CLOCKSHIFT_FILE");
    if (!path) return offset_ms = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return offset_ms;
    char buf[32];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return offset_ms;
    buf[n] = 0;
    return offset_ms = strtoll(buf, NULL, 10);
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
    int rc = syscall(SYS_clock_gettime, clk, ts);
    if (rc == 0 && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE)) {
        long long ns = ts->tv_sec * 1000000000LL + ts->tv_nsec + shift_ms() * 1000000LL;
        ts->tv_sec = ns / 1000000000LL;
        ts->tv_nsec = ns % 1000000000LL;
    }
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0 && tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    (void)tz;
    return rc;
}

time_t time(time_t *t) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t) *t = ts.tv_sec;
    return ts.tv_sec;
}
