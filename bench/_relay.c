/* _relay.c - the floor of any kernel in the middle, for ``hwl bench ipc``.
 *
 * A process that does nothing but pass frames: each frame read on one socket is
 * written unchanged to the other. A sendrec through hwl's kernel makes the same
 * two extra hops (caller -> kernel -> callee and back), so a round trip through
 * this relay is what the hops themselves cost on this host, with no kernel work
 * at all. Usage: _relay FD_A FD_B; it ends when either end closes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
    static char frame[65536];
    struct epoll_event ev = {.events = EPOLLIN}, ready[2];
    int a, b, ep, n, i;

    if (argc != 3) {
        fprintf(stderr, "usage: %s FD_A FD_B\n", argv[0]);
        return 2;
    }
    a = atoi(argv[1]);
    b = atoi(argv[2]);
    ep = epoll_create1(0);
    ev.data.fd = a;
    epoll_ctl(ep, EPOLL_CTL_ADD, a, &ev);
    ev.data.fd = b;
    epoll_ctl(ep, EPOLL_CTL_ADD, b, &ev);
    for (;;) {
        n = epoll_wait(ep, ready, 2, -1);
        for (i = 0; i < n; i++) {
            int from = ready[i].data.fd;
            ssize_t got = recv(from, frame, sizeof frame, MSG_DONTWAIT);
            if (got == 0)
                return 0;
            if (got > 0 && send(from == a ? b : a, frame, (size_t)got, 0) < 0)
                return 1;
        }
    }
}
