/* LD_PRELOAD shim for benchmarks: makes an unmodified client (iperf3) open each TCP
 * connection to ASTROGATE_DIAL_VIA with a real Astrogate dial header, so the gateway
 * sniffs and routes every connection of the run. It consumes the gateway's reply line
 * before connect() returns, so the client sees a plain stream. Built by `cargo xtask bench`. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) { struct pollfd q = {fd, POLLOUT, 0}; poll(&q, 1, 5000); continue; }
            return -1;
        }
        p += w; n -= (size_t)w;
    }
    return 0;
}

/* Reads the reply one byte at a time so no byte after the line is taken from the stream. */
static int read_reply(int fd) {
    char line[512];
    size_t n = 0;
    while (n < sizeof line - 1) {
        char c;
        ssize_t r = read(fd, &c, 1);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
            struct pollfd q = {fd, POLLIN, 0};
            poll(&q, 1, 5000);
            continue;
        }
        if (r <= 0) return -1;
        line[n++] = c;
        if (c == '\n') break;
    }
    line[n] = 0;
    return strncmp(line, "ASTROGATE-DIAL/1 200", 20) == 0 ? 0 : -1;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (!real) real = dlsym(RTLD_NEXT, "connect");
    int rc = real(fd, addr, len);
    const char *host = getenv("ASTROGATE_DIAL_HOST");
    const char *port = getenv("ASTROGATE_DIAL_PORT");
    if (!host || !port || (addr->sa_family != AF_INET && addr->sa_family != AF_INET6)) return rc;
    int type = 0;
    socklen_t tl = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_STREAM) return rc;
    if (rc != 0 && errno == EINPROGRESS) {
        struct pollfd q = {fd, POLLOUT, 0};
        if (poll(&q, 1, 5000) != 1) return rc;
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err != 0) { errno = err; return -1; }
    } else if (rc != 0) {
        return rc;
    }
    char header[300];
    int hn = snprintf(header, sizeof header, "ASTROGATE-DIAL/1 %s %s\r\n", host, port);
    if (hn <= 0 || write_all(fd, header, (size_t)hn) != 0 || read_reply(fd) != 0) {
        errno = ECONNREFUSED;
        return -1;
    }
    return 0;
}
