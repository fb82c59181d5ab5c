/* A sharing-sensitive batch job for `harvest-experiments interference`: STREAM's triad
 * (a = b + 3c) over arrays larger than the last-level cache, for a fixed time, on one CPU.
 *
 * usage: stream_job SECONDS ARRAY_MIB PROGRESS_DIR
 *
 * Progress: the number of chunks done (CHUNK elements each) goes to PROGRESS_DIR/$SLURM_JOB_ID
 * after every chunk, as harvestd's progress source reads it (a zero-padded whole number that
 * only grows). At the end one JSON line goes to stdout: iterations, chunks, seconds, the rate,
 * the per-second rates, the wall-clock start and end (Unix ms), and the CPU time the job got
 * and the time it waited for a CPU (from /proc/self/schedstat): on a shared machine other work
 * time-slices the job's CPU, which the experiment tells apart from cache and memory
 * interference by also reporting chunks per CPU-second.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (256u * 1024u)
#define MAX_SECONDS 3600

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* CPU time run and run-queue wait of this (single-threaded) process, in seconds. */
static void sched_times(double *run_s, double *wait_s) {
    unsigned long long run = 0, wait = 0;
    FILE *f = fopen("/proc/self/schedstat", "r");
    if (f) {
        if (fscanf(f, "%llu %llu", &run, &wait) != 2) run = wait = 0;
        fclose(f);
    }
    *run_s = (double)run * 1e-9;
    *wait_s = (double)wait * 1e-9;
}

static long long unix_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s SECONDS ARRAY_MIB PROGRESS_DIR\n", argv[0]);
        return 2;
    }
    double seconds = atof(argv[1]);
    size_t mib = strtoul(argv[2], NULL, 10);
    if (seconds <= 0 || seconds > MAX_SECONDS || mib == 0) {
        fprintf(stderr, "stream_job: SECONDS must be in (0, %d] and ARRAY_MIB above 0\n", MAX_SECONDS);
        return 2;
    }
    size_t n = (mib << 20) / sizeof(double);
    n -= n % CHUNK;
    if (n == 0) n = CHUNK;
    double *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *c = malloc(n * sizeof *c);
    if (!a || !b || !c) {
        fprintf(stderr, "stream_job: cannot allocate 3 x %zu MiB\n", mib);
        return 1;
    }
    for (size_t i = 0; i < n; i++) { a[i] = 0.0; b[i] = 1.0; c[i] = 2.0; }

    int fd = -1;
    const char *job = getenv("SLURM_JOB_ID");
    if (job && *job) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", argv[3], job);
        fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
        if (fd < 0) perror("stream_job: progress file");
    }

    static double per_second[MAX_SECONDS + 1];
    unsigned long long chunks = 0, iterations = 0, second_start_chunks = 0;
    int second = 0;
    double run0, wait0, run1, wait1;
    sched_times(&run0, &wait0);
    long long start_ms = unix_ms();
    double t0 = now_s(), next_second = t0 + 1.0, t = t0;
    char line[32];
    while (t - t0 < seconds) {
        for (size_t off = 0; off < n; off += CHUNK) {
            double *pa = a + off, *pb = b + off, *pc = c + off;
            for (size_t i = 0; i < CHUNK; i++) pa[i] = pb[i] + 3.0 * pc[i];
            chunks++;
            if (fd >= 0) {
                int len = snprintf(line, sizeof line, "%020llu\n", chunks);
                if (pwrite(fd, line, (size_t)len, 0) != len) { close(fd); fd = -1; }
            }
        }
        iterations++;
        t = now_s();
        while (t >= next_second && second < MAX_SECONDS) {
            per_second[second++] = (double)(chunks - second_start_chunks);
            second_start_chunks = chunks;
            next_second += 1.0;
        }
    }
    double elapsed = now_s() - t0;
    long long end_ms = unix_ms();
    sched_times(&run1, &wait1);
    double check = 0;
    for (size_t i = 0; i < n; i += 4096) check += a[i];
    printf("{\"iterations\":%llu,\"chunks\":%llu,\"seconds\":%.6f,\"chunks_per_s\":%.3f,"
           "\"bytes_per_chunk\":%zu,\"start_unix_ms\":%lld,\"end_unix_ms\":%lld,\"check\":%.1f,"
           "\"cpu_s\":%.6f,\"wait_s\":%.6f,\"per_second\":[",
           iterations, chunks, elapsed, (double)chunks / elapsed, (size_t)CHUNK * 3 * sizeof(double),
           start_ms, end_ms, check, run1 - run0, wait1 - wait0);
    for (int i = 0; i < second; i++) printf("%s%.0f", i ? "," : "", per_second[i]);
    printf("]}\n");
    if (fd >= 0) close(fd);
    return 0;
}
