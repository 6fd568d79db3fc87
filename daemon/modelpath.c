// Model names from clients and the config file, resolved by the kernel inside the model directory: openat2()
// with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS refuses "..", absolute paths and every symlink (in any component,
// the last one included) while it walks, so no check-then-use gap between a string test and the open exists.
// The file is opened O_PATH: a device node is never opened by its driver and a FIFO never blocks the loop; it is
// only fstat()ed, and anything but a regular file is refused. The lexical checks before it only give clients a
// precise reason; the kernel walk is what guarantees nothing outside the directory is reached.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/openat2.h>

#include "daemon/vlmd.h"

static int fail(const char **why, const char *text, int rc) {
    if (why) {
        *why = text;
    }
    return rc;
}

// Kernels before 5.6 (and seccomp filters that do not know the call) have no openat2: walk one component at a
// time with O_NOFOLLOW instead. It is as strict (no symlink anywhere, ".." refused before), just slower.
static int open_walk(int dirfd, const char *name) {
    char part[VLMD_MODEL_MAX];
    int fd = dup(dirfd);
    for (const char *p = name; fd >= 0;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n >= sizeof part) {
            close(fd);
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(part, p, n);
        part[n] = 0;
        int next = openat(fd, part, O_PATH | O_NOFOLLOW | O_CLOEXEC | (slash ? O_DIRECTORY : 0));
        int e = errno;
        close(fd);
        if (next < 0) {
            errno = e == ENOTDIR && !slash ? ELOOP : e;
            return -1;
        }
        struct stat st;
        if (!slash) {
            if (fstat(next, &st) == 0 && S_ISLNK(st.st_mode)) { // O_PATH|O_NOFOLLOW opens the link itself
                close(next);
                errno = ELOOP;
                return -1;
            }
            return next;
        }
        fd = next;
        p = slash + 1;
    }
    return -1;
}

static int open_beneath(int dirfd, const char *name) {
    struct open_how how = {
        .flags = O_PATH | O_NOFOLLOW | O_CLOEXEC,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    long fd = syscall(SYS_openat2, dirfd, name, &how, sizeof how);
    if (fd < 0 && (errno == ENOSYS || errno == EPERM)) {
        return open_walk(dirfd, name);
    }
    return (int)fd;
}

int vlm__model_beneath(const char *model_dir, const char *name, char *out, size_t cap, uint64_t *size, int *fd_out,
                       struct vlm_diag *diag, const char **why) {
    size_t len = strlen(name);
    if (len == 0 || len >= VLMD_MODEL_MAX) {
        return fail(why, VLM__WHY_NAME_LENGTH,
                    vlm_diag_set(diag, VLM_EINVAL, "model name: expected 1..%d bytes", VLMD_MODEL_MAX - 1));
    }
    if (name[0] == '/') {
        return fail(why, VLM__WHY_NAME_ABSOLUTE,
                    vlm_diag_set(diag, VLM_EINVAL, "model '%s': must be relative to the model directory", name));
    }
    for (const char *p = name; *p;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n == 0 || (n == 2 && p[0] == '.' && p[1] == '.') || (n == 1 && p[0] == '.')) {
            return fail(why, VLM__WHY_NAME_DOTDOT,
                        vlm_diag_set(diag, VLM_EINVAL, "model '%s': '.', '..' and empty components are not allowed",
                                     name));
        }
        p += n + (slash ? 1 : 0);
    }
    char dir[PATH_MAX];
    if (!realpath(model_dir, dir)) {
        return fail(why, VLM__WHY_MODEL_NOT_FOUND,
                    vlm_diag_set(diag, VLM_ENOTFOUND, "model directory %s: %s", model_dir, strerror(errno)));
    }
    int dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        return fail(why, VLM__WHY_MODEL_NOT_FOUND,
                    vlm_diag_set(diag, VLM_ENOTFOUND, "model directory %s: %s", dir, strerror(errno)));
    }
    int fd = open_beneath(dirfd, name);
    int e = errno;
    close(dirfd);
    if (fd < 0) {
        if (e == ELOOP) {
            return fail(why, VLM__WHY_MODEL_NOT_FILE,
                        vlm_diag_set(diag, VLM_ENOTFOUND, "model '%s': a symlink in the name (%s)",
                                     name, strerror(e)));
        }
        return fail(why, VLM__WHY_MODEL_NOT_FOUND,
                    vlm_diag_set(diag, VLM_ENOTFOUND, "model '%s' not found in %s: %s", name, dir, strerror(e)));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(why, VLM__WHY_MODEL_NOT_FILE,
                    vlm_diag_set(diag, VLM_ENOTFOUND, "model '%s' is not a regular file", name));
    }
    if (strlen(dir) + 1 + len >= cap) {
        close(fd);
        return fail(why, VLM__WHY_PATH_TOO_LONG, vlm_diag_set(diag, VLM_EINVAL, "model '%s': path too long", name));
    }
    snprintf(out, cap, "%s/%s", dir, name);
    *size = (uint64_t)st.st_size;
    if (fd_out) {
        *fd_out = fd;
    } else {
        close(fd);
    }
    return 0;
}

const char *vlm__model_open_path(int fd, const char *path, char *buf, size_t cap) {
    if (fd < 0) {
        return path;
    }
    snprintf(buf, cap, "/proc/self/fd/%d", fd);
    // without /proc (a bare container) the name is the best there is; systemd's ProtectProc=invisible keeps self
    return access(buf, F_OK) == 0 ? buf : path;
}
