/* Run inside a ctrsh user-namespace container: make a nested user namespace in-process (no exec,
 * so all its capabilities stay) with mount, cgroup, net and pid namespaces of its own, then try
 * what those capabilities might reach beyond it. One line per attempt: NAME:ok or NAME:ERRNO. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0 || write(fd, text, strlen(text)) < 0) perror(path);
    if (fd >= 0) close(fd);
}

static void say(const char *name, int rc) {
    printf("%s:%s\n", name, rc == 0 ? "ok" : strerror(errno));
    fflush(stdout);
}

static int wr(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    int rc = write(fd, text, strlen(text)) < 0 ? -1 : 0;
    close(fd);
    return rc;
}

int main(void) {
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWNET | CLONE_NEWPID) != 0) {
        say("unshare", -1);
        return 1;
    }
    put("/proc/self/setgroups", "deny");
    put("/proc/self/uid_map", "0 0 1");
    put("/proc/self/gid_map", "0 0 1");
    pid_t child = fork(); /* PID 1 of the new PID namespace */
    if (child != 0) {
        int st;
        waitpid(child, &st, 0);
        return 0;
    }
    say("nested", 0);
    mkdir("/tmp/n", 0755);
    say("tmpfs", mount("x", "/tmp/n", "tmpfs", 0, NULL)); /* its own: shows the capabilities are real */
    mkdir("/tmp/n/proc", 0755);
    mkdir("/tmp/n/sys", 0755);
    mkdir("/tmp/n/cg", 0755);
    mkdir("/tmp/n/cg2", 0755);
    mkdir("/tmp/n/bf", 0755);
    say("mount-proc", mount("proc", "/tmp/n/proc", "proc", 0, NULL));
    say("mount-sysfs", mount("sysfs", "/tmp/n/sys", "sysfs", 0, NULL));
    say("remount-proc-sys-rw", mount(NULL, "/proc/sys", NULL, MS_REMOUNT | MS_BIND, NULL));
    say("remount-sys-rw", mount(NULL, "/sys", NULL, MS_REMOUNT | MS_BIND, NULL));
    say("unmask-kcore", umount2("/proc/kcore", MNT_DETACH));
    say("unmask-acpi", umount2("/proc/acpi", MNT_DETACH));
    say("umount-proc-sys", umount2("/proc/sys", MNT_DETACH));
    say("bind-proc-nonrecursive", mount("/proc", "/tmp/n/proc", NULL, MS_BIND, NULL));
    int cg = mount("cgroup", "/tmp/n/cg", "cgroup", 0, "memory");
    say("mount-cgroup-memory", cg);
    say("release-agent", cg == 0 ? wr("/tmp/n/cg/release_agent", "/tmp/pwn") : -1);
    int cg2 = mount("cgroup", "/tmp/n/cg2", "cgroup", 0, "none,name=ctrsh-attack3");
    say("mount-cgroup-named", cg2);
    say("release-agent-named", cg2 == 0 ? wr("/tmp/n/cg2/release_agent", "/tmp/pwn") : -1);
    if (cg2 == 0) umount2("/tmp/n/cg2", MNT_DETACH);
    say("core-pattern", wr("/proc/sys/kernel/core_pattern", "|/tmp/pwn"));
    say("sysrq", wr("/proc/sysrq-trigger", "h"));
    int bf = mount("binfmt_misc", "/tmp/n/bf", "binfmt_misc", 0, NULL);
    say("mount-binfmt", bf);
    say("binfmt-register", bf == 0 ? wr("/tmp/n/bf/register", ":ctrsh-attack3:E::a3pwn::/bin/sh:") : -1);
    say("hostname-of-host", sethostname("pwned", 5) == 0 && 0 ? 0 : -1); /* own uts? none: the container's */
    return 0;
}
