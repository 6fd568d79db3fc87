// libFuzzer entry point for the daemon's model-name resolver (vlm__model_resolve, daemon/chain.c): a name sent by
// any client is turned into a file to open, so it must never lead outside the model directory.
//
// Built by tests/fuzz/CMakeLists.txt with the daemon's modules (all but main.c). The first call builds a model
// directory in $TMPDIR with files, sub-directories and symlinks (to a file inside, to a file and a directory
// outside, a loop, a dangling one), and a file outside it with the same name as one inside.
//
// Input: first byte = flags (bit 0: `paths`, the command-line mode where a path is taken as given); the rest, up
// to the first NUL, is the name. Oracles, each an abort():
//   - the result is 0 or VLM_EINVAL / VLM_ENOTFOUND, and a failure fills the diag and a fixed client text (no
//     path in it);
//   - in name mode, a name that is absolute or has an empty or ".." component is refused, whatever exists;
//   - in name mode, a success is a canonical path strictly inside the (canonical) model directory, naming a regular
//     file, with the size stat() gives; never the outside file;
//   - in paths mode, a success names a regular file (the path is the operator's: no containment to check).
#include <ftw.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/vlmd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

// main.c is not linked (its main() is libFuzzer's); the other modules call this one function from it.
void vlm__daemon_maybe_finish(struct vlmd *d) {
    (void)d;
}

static struct vlmd *daemon_state;
static char root[PATH_MAX]; // canonical; holds models/ (the model directory) and outside/

static void check(bool ok) {
    if (!ok) {
        abort();
    }
}

static void put_file(const char *rel, const char *text) {
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/%s", root, rel);
    FILE *f = fopen(p, "wb");
    check(f != NULL);
    fputs(text, f);
    fclose(f);
}

static void put_dir(const char *rel) {
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/%s", root, rel);
    check(mkdir(p, 0700) == 0);
}

static void put_link(const char *target, const char *rel) {
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/%s", root, rel);
    check(symlink(target, p) == 0);
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void cleanup(void) {
    if (root[0]) {
        nftw(root, remove_one, 16, FTW_DEPTH | FTW_PHYS);
    }
}

static void setup(void) {
    const char *tmp = getenv("TMPDIR");
    char tmpl[PATH_MAX];
    snprintf(tmpl, sizeof tmpl, "%s/vlm-fuzz-model-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    check(mkdtemp(tmpl) != NULL);
    check(realpath(tmpl, root) != NULL);
    atexit(cleanup);
    put_dir("models");
    put_dir("models/sub");
    put_dir("models/sub/deeper");
    put_dir("models/d.gguf"); // a directory with a model's name
    put_dir("outside");
    put_file("models/a.gguf", "GGUF a");
    put_file("models/sub/b.gguf", "GGUF bb");
    put_file("models/sub/deeper/c", "GGUF ccc");
    put_file("models/.hidden", "x");
    put_file("models/..x", "dots are a name, not a parent");
    put_file("outside/secret.gguf", "outside, same name as one inside");
    put_file("models/secret.gguf", "inside");
    put_file("models-evil", "a sibling whose name starts like the directory");
    put_link("a.gguf", "models/link-in");
    put_link("../outside/secret.gguf", "models/link-out");
    put_link("../outside", "models/dir-out");
    put_link("../models-evil", "models/link-sibling");
    put_link("sub", "models/dir-in");
    put_link("loop", "models/loop");
    put_link("nowhere", "models/dangling");
    put_link("/etc/passwd", "models/abs-out");

    daemon_state = calloc(1, sizeof *daemon_state);
    check(daemon_state != NULL);
    snprintf(daemon_state->cfg.model_dir, sizeof daemon_state->cfg.model_dir, "%s/models", root);
    vlm_log_set_level(VLM_LOG_ERROR);
}

// Name mode refuses these without looking at the file system.
static bool bad_shape(const char *name) {
    if (name[0] == '/' || name[0] == 0) {
        return true;
    }
    for (const char *p = name;;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n == 0 || (n == 2 && p[0] == '.' && p[1] == '.')) {
            return true;
        }
        if (!slash) {
            return false;
        }
        p = slash + 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!daemon_state) {
        setup();
    }
    if (size < 1) {
        return 0;
    }
    const bool paths = data[0] & 1;
    char name[VLMD_MODEL_MAX + 64];
    size_t n = size - 1 < sizeof name - 1 ? size - 1 : sizeof name - 1;
    memcpy(name, data + 1, n);
    name[n] = 0; // a NUL inside the input ends the name, as it would in a config value or a decoded string

    char out[PATH_MAX];
    uint64_t fsize = UINT64_MAX;
    struct vlm_diag diag = {0, ""};
    const char *why = NULL;
    int fd = -2;
    int rc = vlm__model_resolve(daemon_state, name, paths, out, sizeof out, &fsize, &fd, &diag, &why);
    if (rc != 0) {
        check(fd == -1); // nothing held open on a refusal
        check(rc == VLM_EINVAL || rc == VLM_ENOTFOUND);
        check(diag.code == rc && diag.msg[0] != 0);
        // What the client reads is a fixed text: never the name, a path or a library's message.
        check(why != NULL && why[0] != 0 && strchr(why, '/') == NULL && strstr(why, root) == NULL);
        return 0;
    }
    struct stat st, fst;
    check(strlen(name) > 0 && strlen(name) < VLMD_MODEL_MAX);
    check(stat(out, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == fsize);
    // a name holds the very file it resolved (the load opens it through the descriptor); a path holds nothing
    check(paths ? fd == -1 : fd >= 0 && fstat(fd, &fst) == 0 && fst.st_ino == st.st_ino && fst.st_dev == st.st_dev);
    if (fd >= 0) {
        close(fd);
    }
    char canon[PATH_MAX];
    check(realpath(out, canon) != NULL && strcmp(canon, out) == 0);
    if (!paths) {
        check(!bad_shape(name));
        const char *dir = daemon_state->cfg.model_dir;
        size_t dl = strlen(dir);
        check(strncmp(out, dir, dl) == 0 && out[dl] == '/' && out[dl + 1] != 0);
    }
    return 0;
}
