/* A writer thread keeps two words equal under the seqlock; reader threads check
 * that every successful read sees them equal (no torn reads). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "seqlock.h"

#define ITERS 2000000

static int64_t seq;
static volatile int64_t a, b;
static volatile int stop;

static void *writer(void *arg) {
    (void)arg;
    for (int64_t i = 1; i <= ITERS; i++) {
        fs_seq_write_begin(&seq);
        a = i;
        b = -i;
        fs_seq_write_end(&seq);
    }
    stop = 1;
    return NULL;
}

static void *reader(void *arg) {
    long *torn = (long *)arg;
    while (!stop) {
        int64_t x, y, s;
        do {
            s = fs_seq_read_begin(&seq);
            x = a;
            y = b;
        } while (fs_seq_read_retry(&seq, s));
        if (x != -y) (*torn)++;
    }
    return NULL;
}

int main(void) {
    pthread_t w, r[2];
    long torn[2] = {0, 0};
    for (int i = 0; i < 2; i++) pthread_create(&r[i], NULL, reader, &torn[i]);
    pthread_create(&w, NULL, writer, NULL);
    pthread_join(w, NULL);
    for (int i = 0; i < 2; i++) pthread_join(r[i], NULL);
    if (torn[0] || torn[1]) {
        fprintf(stderr, "torn reads: %ld %ld\n", torn[0], torn[1]);
        return 1;
    }
    if (seq != 2 * (int64_t)ITERS) {
        fprintf(stderr, "sequence %lld != %lld\n", (long long)seq, 2LL * ITERS);
        return 1;
    }
    printf("seqlock ok\n");
    return 0;
}
