#ifndef TOLLGATE_CSYSTEM_H
#define TOLLGATE_CSYSTEM_H
// The Linux calls Swift's Glibc module does not export (it is built without _GNU_SOURCE).
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/inotify.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stddef.h>
#include <malloc.h>

int tollgate_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);
void *tollgate_memmem(const void *h, size_t hl, const void *n, size_t nl);
int tollgate_pipe2(int fds[2], int flags);
#include <pthread.h>
int tollgate_pthread_setname(pthread_t t, const char *name);
/// SO_RCVTIMEO in whole seconds (keeps `struct timeval` out of Swift: its import owner varies).
int tollgate_set_rcvtimeo(int fd, long seconds);
static const int tollgate_SOCK_NONBLOCK = SOCK_NONBLOCK;
static const int tollgate_SOCK_CLOEXEC = SOCK_CLOEXEC;
static const uint32_t tollgate_EPOLLIN = EPOLLIN;
static const uint32_t tollgate_EPOLLOUT = EPOLLOUT;
static const uint32_t tollgate_EPOLLERR = EPOLLERR;
static const uint32_t tollgate_EPOLLHUP = EPOLLHUP;
static const uint32_t tollgate_EPOLLRDHUP = EPOLLRDHUP;
static const uint32_t tollgate_EPOLLET = EPOLLET;
/// Counters with one writer (a loop) and readers on other threads (the admin scrape):
/// relaxed loads and stores, no lock prefix on the writer's path.
static inline void tollgate_counter_add(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + v, __ATOMIC_RELAXED);
}
static inline void tollgate_counter_store(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline uint64_t tollgate_counter_load(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
#endif
