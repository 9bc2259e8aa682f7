// The floor of this design on this machine, without Rust, tokio or Pingora: a
// front that accepts (TCP_DEFER_ACCEPT), peeks, passes the socket with
// SCM_RIGHTS over SOCK_SEQPACKET and closes its copy, handing connections
// round-robin to N consumer processes that read the request, answer
// "HTTP/1.1 200" and close. Used in bench/RESULTS.md to separate the cost of
// the handoff itself, and of many processes, from the cost of our binaries.
//
//   gcc -O2 bench/floor.c -o /tmp/floor
//   taskset -c 1 /tmp/floor 1 19800 &      # one consumer
//   taskset -c 1 /tmp/floor 100 19801 &    # a hundred consumers
//   taskset -c 0 wrk -t1 -c64 -d5s -H "Connection: close" http://127.0.0.1:19800/
//   (CPU per connection: utime+stime of the processes from /proc/PID/stat)
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static void consume(int handoff) {
    const char *resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    char buf[4096];
    for (;;) {
        char cmsg[CMSG_SPACE(sizeof(int))];
        struct iovec iov = {buf, 512};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                             .msg_control = cmsg, .msg_controllen = sizeof cmsg};
        if (recvmsg(handoff, &msg, MSG_CMSG_CLOEXEC) <= 0) _exit(0);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        if (!c) continue;
        int fd;
        memcpy(&fd, CMSG_DATA(c), sizeof fd);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct pollfd p = {fd, POLLIN, 0};
        while (recv(fd, buf, sizeof buf, 0) < 0 && errno == EAGAIN) poll(&p, 1, 1000);
        send(fd, resp, strlen(resp), MSG_NOSIGNAL);
        close(fd);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s CONSUMERS PORT\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[1]), port = atoi(argv[2]);
    if (n < 1 || n > 1000) return 2;
    int *out = calloc(n, sizeof *out);
    for (int k = 0; k < n; k++) {
        int sv[2];
        socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv);
        if (fork() == 0) {
            close(sv[0]);
            consume(sv[1]);
        }
        close(sv[1]);
        out[k] = sv[0];
    }
    int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(0x7f000001)};
    if (bind(l, (void *)&a, sizeof a) < 0 || listen(l, 4096) < 0) {
        perror("bind/listen");
        return 1;
    }
    setsockopt(l, IPPROTO_TCP, TCP_DEFER_ACCEPT, &one, sizeof one);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET};
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    char buf[512];
    for (int next = 0;;) {
        epoll_wait(ep, &ev, 1, -1);
        for (;;) {
            int fd = accept4(l, 0, 0, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) break;
            recv(fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
            char cmsg[CMSG_SPACE(sizeof(int))];
            struct iovec iov = {buf, 10};
            struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                                 .msg_control = cmsg, .msg_controllen = sizeof cmsg};
            struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &fd, sizeof fd);
            sendmsg(out[next], &msg, 0);
            next = (next + 1) % n;
            close(fd);
        }
    }
}
