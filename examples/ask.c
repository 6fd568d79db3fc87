// The smallest complete libvlmclient program: asks vlmd one question (with optional images) and prints the
// answer as it streams.
//
//     ask [-s SOCKET] "Describe the picture." [image.jpg ...]
//
// Outside this source tree, once vlmd is installed:
//     cc -o ask ask.c $(pkg-config --cflags --libs vlmclient)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vlm/client.h>

static int print_piece(const char *text, size_t len, void *user) {
    (void)user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0; // non-zero would cancel the request
}

static void *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
            }
            buf = nb;
        }
    }
    fclose(f);
    *len = n;
    return buf;
}

int main(int argc, char **argv) {
    const char *socket_path = NULL; // NULL: $VLMD_SOCKET, else /run/vlmd/vlmd.sock
    int arg = 1;
    if (argc > 2 && strcmp(argv[1], "-s") == 0) {
        socket_path = argv[2];
        arg = 3;
    }
    if (arg >= argc) {
        fprintf(stderr, "usage: %s [-s SOCKET] PROMPT [IMAGE...]\n", argv[0]);
        return 2;
    }
    struct vlm_client_image images[VLM_RPC_IMAGES_MAX];
    void *files[VLM_RPC_IMAGES_MAX];
    uint32_t n_images = 0;
    for (int i = arg + 1; i < argc && n_images < VLM_RPC_IMAGES_MAX; i++, n_images++) {
        files[n_images] = slurp(argv[i], &images[n_images].len);
        images[n_images].data = files[n_images];
        if (!files[n_images]) {
            fprintf(stderr, "cannot read %s\n", argv[i]);
            return 2;
        }
    }

    struct vlm_client *c;
    struct vlm_diag diag;
    if (vlm_client_connect(socket_path, &c, &diag) != 0) {
        fprintf(stderr, "cannot connect to vlmd: %s\n", diag.msg);
        return 3;
    }
    struct vlm_client_ask_params p;
    vlm_client_ask_params_init(&p);
    p.prompt = argv[arg];
    p.images = images;
    p.n_images = n_images;
    p.temperature = 0; // greedy: the same answer every time
    p.fields |= VLM_RPC_ASK_TEMPERATURE;

    struct vlm_client_ask_result r;
    int rc = vlm_client_ask(c, &p, print_piece, NULL, &r, &diag);
    if (rc == 0) {
        printf("\n[%u prompt tokens, %u generated in %.0f ms, stop: %s]\n", r.tokens_prompt, r.tokens_generated,
               r.timings.total_ms, r.stop_reason_name);
        vlm_client_ask_result_free(&r);
    } else {
        fprintf(stderr, "ask failed: %s (%s)\n", diag.msg, vlm_client_strerror(rc));
    }
    vlm_client_close(c);
    for (uint32_t i = 0; i < n_images; i++) {
        free(files[i]);
    }
    return rc == 0 ? 0 : 1;
}
