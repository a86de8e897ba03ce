/*
 * The pod sandbox's pause process (image modelservice/pause): holds the pod's namespaces open,
 * reaps the zombies re-parented to it (it is PID 1 of the pod), and exits 0 on SIGTERM/SIGINT.
 * Built by localcluster/images.py with `gcc -static -Os`; no libc beyond the static one.
 */
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stopping;

static void on_stop(int sig) { (void)sig; stopping = 1; }

static void on_child(int sig) { (void)sig; }

int main(int argc, char **argv) {
    if (argc > 1 && (argv[1][0] == '-')) {
        printf("pause: blocks until SIGTERM or SIGINT, reaping children\n");
        return 0;
    }
    struct sigaction sa = {0};
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop;
    if (sigaction(SIGTERM, &sa, NULL) || sigaction(SIGINT, &sa, NULL)) return 1;
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP;
    if (sigaction(SIGCHLD, &sa, NULL)) return 1;

    /* Block the signals while checking the flag, and wait for them atomically in sigsuspend,
     * so a signal arriving between the check and the wait cannot be lost. */
    sigset_t blocked, waiting;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    sigaddset(&blocked, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &blocked, &waiting)) return 1;
    sigdelset(&waiting, SIGTERM);
    sigdelset(&waiting, SIGINT);
    sigdelset(&waiting, SIGCHLD);
    while (!stopping) {
        sigsuspend(&waiting);
        while (waitpid(-1, NULL, WNOHANG) > 0) {
        }
    }
    return 0;
}
