/* scenario=phased for the Linux guest of linux_guest.py: the same six phases as our kernel's
 * (kernel/src/footprint.rs, user/programs.rs `phased`), the same EVENT and HELD lines.
 * Built with the host's `gcc -static` into the initramfs; runs as init's child (root: the
 * frame numbers in /proc/self/pagemap are readable).
 *
 * Sizes from the kernel command line, as ours: scenario.phased_mib=MIB (grow, default 1200),
 * scenario.phased_unit_ms=MS (time unit, default 1000). Held memory is the process's RssAnon.
 * Exit status: 0, or 1 with a message on stderr when a call fails.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

static uint64_t unit_ms = 1000;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void line(const char *text) {
    /* One write per line: the HELD thread and the phases never interleave within a line. */
    if (write(1, text, strlen(text)) < 0) {
        _exit(1);
    }
}

static void event(const char *name) {
    char buffer[128];
    snprintf(buffer, sizeof buffer, "EVENT {\"name\":\"%s\",\"t_ns\":%llu,\"pid\":%d}\n", name,
             (unsigned long long)now_ns(), (int)getpid());
    line(buffer);
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static long status_kib(const char *path, const char *key) {
    char buffer[4096];
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        return -1;
    }
    ssize_t got = read(fd, buffer, sizeof buffer - 1);
    close(fd);
    if (got <= 0) {
        return -1;
    }
    buffer[got] = 0;
    char *at = strstr(buffer, key);
    return at ? strtol(at + strlen(key), NULL, 10) : -1;
}

static void *held_thread(void *unused) {
    (void)unused;
    for (;;) {
        char buffer[160];
        snprintf(buffer, sizeof buffer, "HELD {\"t_ns\":%llu,\"held_kib\":%ld,\"free_kib\":%ld}\n",
                 (unsigned long long)now_ns(), status_kib("/proc/self/status", "RssAnon:"),
                 status_kib("/proc/meminfo", "MemFree:"));
        line(buffer);
        usleep(200000);
    }
    return NULL;
}

static void hold(uint64_t units) {
    uint64_t ns = units * unit_ms * 1000000ULL;
    struct timespec ts = {(time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL)};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static char *map_touched(uint64_t pages) {
    char *base = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
    if (base == MAP_FAILED) {
        die("mmap");
    }
    for (uint64_t page = 0; page < pages; page++) {
        uint64_t *word = (uint64_t *)(base + page * PAGE);
        *word = (uint64_t)(uintptr_t)word ^ 0x5167ae5167ae5167ULL;
    }
    return base;
}

static void drop_page(char *address) {
    if (madvise(address, PAGE, MADV_DONTNEED) != 0) {
        die("madvise");
    }
}

static uint64_t cmdline_value(const char *key, uint64_t fallback) {
    char buffer[4096];
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd < 0) {
        return fallback;
    }
    ssize_t got = read(fd, buffer, sizeof buffer - 1);
    close(fd);
    if (got <= 0) {
        return fallback;
    }
    buffer[got] = 0;
    char *at = strstr(buffer, key);
    return at ? strtoull(at + strlen(key), NULL, 10) : fallback;
}

int main(void) {
    uint64_t mib = cmdline_value("scenario.phased_mib=", 1200);
    unit_ms = cmdline_value("scenario.phased_unit_ms=", 1000);
    uint64_t grow = mib * (1 << 20) / PAGE;
    char buffer[160];
    snprintf(buffer, sizeof buffer,
             "EVENT {\"name\":\"ready\",\"t_ns\":%llu,\"grow_mib\":%llu,\"unit_ms\":%llu}\n",
             (unsigned long long)now_ns(), (unsigned long long)mib, (unsigned long long)unit_ms);
    line(buffer);
    pthread_t thread;
    if (pthread_create(&thread, NULL, held_thread, NULL) != 0) {
        die("pthread_create");
    }
    hold(3);

    event("grow");
    char *first = map_touched(grow);
    hold(5);

    event("fragment");
    uint64_t *entries = malloc(grow * sizeof *entries);
    int pagemap = open("/proc/self/pagemap", O_RDONLY);
    if (entries == NULL || pagemap < 0) {
        die("pagemap");
    }
    size_t want = grow * sizeof *entries;
    if (pread(pagemap, entries, want, (off_t)((uintptr_t)first / PAGE * 8)) != (ssize_t)want) {
        die("pagemap read");
    }
    close(pagemap);
    for (uint64_t page = 0; page < grow; page++) {
        uint64_t pfn = entries[page] & ((1ULL << 55) - 1);
        if (!(entries[page] >> 63) || pfn == 0) {
            fprintf(stderr, "phased: page %llu has no frame number in pagemap\n",
                    (unsigned long long)page);
            exit(1);
        }
        if (pfn % 4 != 0) {
            drop_page(first + page * PAGE);
        }
    }
    free(entries);
    hold(20);

    event("regrow");
    char *second = map_touched(grow / 2);
    hold(5);

    event("shrink");
    if (munmap(first, grow * PAGE) != 0 || munmap(second, grow / 2 * PAGE) != 0) {
        die("munmap");
    }
    hold(20);

    event("churn");
    uint64_t churn = grow / 3;
    uint64_t mask = 1;
    while (mask < churn + 1) {
        mask <<= 1;
    }
    mask -= 1;
    for (int round = 0; round < 10; round++) {
        char *base = map_touched(churn);
        /* The same order as ours: a full-period LCG over the next power of two. */
        uint64_t x = 0;
        for (uint64_t step = 0; step <= mask; step++) {
            x = (x * 1103515245ULL + 12345) & mask;
            if (x < churn) {
                drop_page(base + x * PAGE);
            }
        }
        if (munmap(base, churn * PAGE) != 0) {
            die("munmap");
        }
        hold(2);
    }

    event("idle");
    hold(20);
    event("done");
    return 0;
}
