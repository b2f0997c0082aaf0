#define _GNU_SOURCE
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include "csystem.h"

int tollgate_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    return accept4(fd, addr, len, flags);
}
void *tollgate_memmem(const void *h, size_t hl, const void *n, size_t nl) {
    return memmem(h, hl, n, nl);
}
int tollgate_pipe2(int fds[2], int flags) { return pipe2(fds, flags); }
#include <pthread.h>
int tollgate_pthread_setname(pthread_t t, const char *name) { return pthread_setname_np(t, name); }

#include <sys/time.h>
int tollgate_set_rcvtimeo(int fd, long seconds) {
    struct timeval tv = { .tv_sec = seconds, .tv_usec = 0 };
    return setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}
