/* C side of the reader benchmark (reader/benches/read.rs compiles and runs it):
 * median ns per call of dbha_read, dbha_active_alias and clock_gettime, measured
 * the same way as the Rust side: 31 interleaved samples of N calls each. */
#define _POSIX_C_SOURCE 200809L
#include <dbha.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define SAMPLES 31
#define CASES 3

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: c_bench STATE N\n");
        return 2;
    }
    long n = strtol(argv[2], NULL, 10);
    dbha_reader *r = NULL;
    int rc = dbha_open(argv[1], &r);
    if (rc != DBHA_OK) {
        fprintf(stderr, "%s: %s\n", argv[1], dbha_strerror(rc));
        return 1;
    }
    static double s[CASES][SAMPLES];
    volatile unsigned long sink = 0;
    dbha_snapshot snap;
    struct timespec ts;
    for (int k = 0; k < SAMPLES; k++) {
        double t0 = now_ns();
        for (long i = 0; i < n; i++) {
            dbha_read(r, &snap);
            sink += snap.epoch;
        }
        double t1 = now_ns();
        for (long i = 0; i < n; i++)
            sink += (unsigned long)dbha_active_alias(r);
        double t2 = now_ns();
        for (long i = 0; i < n; i++) {
            clock_gettime(CLOCK_MONOTONIC, &ts);
            sink += (unsigned long)ts.tv_nsec;
        }
        double t3 = now_ns();
        s[0][k] = (t1 - t0) / n;
        s[1][k] = (t2 - t1) / n;
        s[2][k] = (t3 - t2) / n;
    }
    const char *names[CASES] = {"c_dbha_read", "c_dbha_active_alias", "c_clock_gettime_monotonic"};
    for (int c = 0; c < CASES; c++) {
        qsort(s[c], SAMPLES, sizeof(double), cmp);
        printf("%s %.3f\n", names[c], s[c][SAMPLES / 2]);
    }
    dbha_close(r);
    return sink == 42;
}
