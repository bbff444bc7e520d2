/* Bench helper for bench/ownstart.py: appends "<role> <pid> <CLOCK_MONOTONIC seconds>" to $CLAWSVC_BENCH_STAMPS
   as its first act after exec, so a start is timed to the exec itself, with no interpreter in the way.

   Called as `node ...` it is the fake gateway: `node --version` is answered (by $CLAWSVC_BENCH_REAL_NODE when
   set, so the check clawsvc makes before a spawn costs what it costs with the real node), anything else stamps
   "gateway" and waits to be killed. Called under any other name it stamps "exec" and execs argv[1..]. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void stamp(const char *role) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    const char *path = getenv("CLAWSVC_BENCH_STAMPS");
    if (path == NULL) return;
    char line[128];
    int n = snprintf(line, sizeof line, "%s %d %lld.%09ld\n", role, (int)getpid(), (long long)now.tv_sec,
                     now.tv_nsec);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) {
        (void)!write(fd, line, (size_t)n);
        close(fd);
    }
}

int main(int argc, char **argv) {
    const char *name = strrchr(argv[0], '/');
    name = name ? name + 1 : argv[0];
    if (strncmp(name, "node", 4) == 0) {
        if (argc > 1 && strcmp(argv[1], "--version") == 0) {
            const char *real = getenv("CLAWSVC_BENCH_REAL_NODE");
            if (real != NULL && *real) {
                char *const version[] = {(char *)real, "--version", NULL};
                execv(real, version);
                return 127;
            }
            puts("v24.21.0");
            return 0;
        }
        stamp("gateway");
        for (;;) pause();
    }
    if (argc < 2) return 2;
    stamp("exec");
    execv(argv[1], argv + 1);
    return 127;
}
