// Who may talk to the daemon. The socket file's mode and group are the first gate, but a socket passed in by
// systemd or bound in a shared directory may be wider than intended (unix(7): do not rely on file permissions
// alone), so every accepted client's credentials (SO_PEERCRED, and SO_PEERGROUPS for its supplementary groups,
// both recorded by the kernel at connect time) are checked against allow_users / allow_groups.
//
// Always allowed: root and the daemon's own user. Then allow_users (names or numeric ids; "*" = every user who
// can open the socket) and allow_groups (names or ids; default: the group that owns the socket file, i.e.
// SocketGroup= of vlmd.socket, so `adduser alice vlm` is all an administrator does).
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon/vlmd.h"

#define PEER_GROUPS_MAX 1024

static bool parse_id(const char *s, uint32_t *out) {
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (*s < '0' || *s > '9' || *end || errno || v >= UINT32_MAX) { // (uid_t)-1 is "no user"
        return false;
    }
    *out = (uint32_t)v;
    return true;
}

// Names are resolved once, here (config load and SIGHUP), never per connection: an NSS lookup (LDAP, ...) could
// block the event loop.
static bool resolve(const char *name, bool group, uint32_t *id) {
    if (parse_id(name, id)) {
        return true;
    }
    char buf[16384];
    if (group) {
        struct group gr, *res = NULL;
        if (getgrnam_r(name, &gr, buf, sizeof buf, &res) != 0 || !res) {
            return false;
        }
        *id = (uint32_t)res->gr_gid;
    } else {
        struct passwd pw, *res = NULL;
        if (getpwnam_r(name, &pw, buf, sizeof buf, &res) != 0 || !res) {
            return false;
        }
        *id = (uint32_t)res->pw_uid;
    }
    return true;
}

int vlm__access_set(struct vlm__access *a, bool groups, const char *value, char *why, size_t cap) {
    const char *key = groups ? "allow_groups" : "allow_users";
    uint32_t *ids = groups ? a->gids : a->uids;
    uint32_t n = 0;
    bool any = false;
    char list[4096];
    if (strlen(value) >= sizeof list) {
        snprintf(why, cap, "%s: list too long", key);
        return -1;
    }
    memcpy(list, value, strlen(value) + 1);
    char *save = NULL;
    for (char *tok = strtok_r(list, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
        if (!groups && !strcmp(tok, "*")) {
            any = true;
            continue;
        }
        if (n == VLMD_ACCESS_MAX) {
            snprintf(why, cap, "%s: more than %d entries", key, VLMD_ACCESS_MAX);
            return -1;
        }
        if (!resolve(tok, groups, &ids[n])) {
            snprintf(why, cap, "%s: no %s named '%.64s'", key, groups ? "group" : "user", tok);
            return -1;
        }
        n++;
    }
    if (groups) {
        a->n_gids = n;
        a->groups_set = true;
    } else {
        a->n_uids = n;
        a->any_user = any;
        a->users_set = true;
    }
    return 0;
}

static bool has_id(const uint32_t *ids, uint32_t n, uint32_t id) {
    for (uint32_t i = 0; i < n; i++) {
        if (ids[i] == id) {
            return true;
        }
    }
    return false;
}

// Why the peer may connect (for the log), or NULL when it may not.
static const char *allowed_by(const struct vlmd *d, uid_t uid, const gid_t *groups, int n_groups) {
    const struct vlm__access *a = &d->cfg.access;
    if (uid == 0) {
        return "root";
    }
    if (uid == geteuid()) {
        return "the daemon's user";
    }
    if (a->any_user) {
        return "allow_users *";
    }
    if (has_id(a->uids, a->n_uids, (uint32_t)uid)) {
        return "allow_users";
    }
    for (int i = 0; i < n_groups; i++) {
        if (a->groups_set ? has_id(a->gids, a->n_gids, (uint32_t)groups[i])
                          : d->socket_gid_known && groups[i] == d->socket_gid) {
            return a->groups_set ? "allow_groups" : "the socket's group";
        }
    }
    return NULL;
}

bool vlm__access_admit(struct vlm__conn *c) {
    struct vlmd *d = c->d;
    uv_os_fd_t fd;
    struct ucred cr = {.pid = 0, .uid = (uid_t)-1, .gid = (gid_t)-1};
    socklen_t len = sizeof cr;
    const char *by = NULL;
    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) == 0 && getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0) {
        gid_t groups[PEER_GROUPS_MAX + 1];
        groups[0] = cr.gid;
        socklen_t glen = (socklen_t)(PEER_GROUPS_MAX * sizeof(gid_t));
        int n_groups = 1;
        // A peer in more groups than fit: its primary group still counts, the rest are not looked at.
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups + 1, &glen) == 0) {
            n_groups += (int)(glen / sizeof(gid_t));
        }
        by = allowed_by(d, cr.uid, groups, n_groups);
    }
    c->peer_uid = cr.uid;
    c->peer_gid = cr.gid;
    c->peer_pid = cr.pid;
    if (by) {
        VLM_LOGI("conn %llu: uid %u gid %u pid %ld connected (allowed: %s)", (unsigned long long)c->id,
                 (unsigned)cr.uid, (unsigned)cr.gid, (long)cr.pid, by);
        return true;
    }
    VLM_LOGW("conn %llu: refused: uid %u gid %u pid %ld is not an allowed user or group (allow_users, allow_groups)",
             (unsigned long long)c->id, (unsigned)cr.uid, (unsigned)cr.gid, (long)cr.pid);
    if (vlm_proto_error_notify_encode(&c->out, VLM_PROTO_EPERMISSION, NULL) == 0) {
        vlm__conn_flush(c);
    }
    vlm__conn_close_after_write(c, "not allowed");
    return false;
}
