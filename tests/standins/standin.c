/*
 * A TEST STAND-IN for the pod VM's components (attestation-agent,
 * confidential-data-hub, kata-agent, agent-protocol-forwarder,
 * api-server-rest). It is not the real thing: it only behaves like one at the
 * interfaces podvm-bootstrap sees (a unix socket or a TCP port that answers, a
 * config that must parse, a dependency that must exist), and can be told to
 * misbehave so that supervision can be tested.
 *
 * The component is the program's name (argv[0], via a symlink) or --component.
 * Every accepted connection gets one line, "<component> standin <version>\n"
 * ("<component> standin <version> <variant>\n" when the image carries
 * /etc/standin-variant, e.g. an attestation agent built for one TEE), and is
 * closed, so a test can tell which image answered. api-server-rest speaks
 * HTTP instead: it reads the request (up to its blank line, 500 ms at most)
 * and answers 200 with that line as the body.
 *
 * Interfaces, like the real components':
 *   attestation-agent         unix socket AA_SOCKET; -c FILE must parse
 *   confidential-data-hub     unix socket CDH_SOCKET; needs AA_SOCKET; -c FILE must parse when it exists
 *   kata-agent                unix socket KATA_SOCKET
 *   agent-protocol-forwarder  TCP 127.0.0.1:15150; needs KATA_SOCKET
 *   api-server-rest           HTTP on TCP 127.0.0.1:8006; needs CDH_SOCKET
 *
 * Misbehaviour, checked every 100 ms:
 *   <control dir>/<component>.crash     exit 70 at once (also SIGUSR1)
 *   <control dir>/<component>.hang      stop answering, stay alive (also SIGUSR2)
 *   <control dir>/<component>.unlisten  close the listener, stay alive
 * control dir: $STANDIN_CONTROL_DIR, default /run/standin.
 * SIGTERM: clean exit 0, unless --ignore-sigterm (or STANDIN_IGNORE_SIGTERM=1).
 * When $NOTIFY_SOCKET is set, READY=1 is sent once listening.
 *
 * Options: -c CONFIG (attestation-agent: must parse), --socket PATH,
 * --listen HOST:PORT, --requires PATH (forwarder: instead of the kata socket),
 * --ignore-sigterm, --component NAME, --version.
 *
 *   standin probe unix PATH | tcp HOST:PORT   connect, print the line, exit 0
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <libgen.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <stddef.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef STANDIN_VERSION
#define STANDIN_VERSION "v1"
#endif

#define AA_SOCKET "/run/confidential-containers/attestation-agent/attestation-agent.sock"
#define KATA_SOCKET "/run/kata-containers/agent.sock"
#define APF_LISTEN "127.0.0.1:15150"
#define CDH_SOCKET "/run/confidential-containers/cdh.sock"
#define ASR_LISTEN "127.0.0.1:8006"
#define VARIANT_FILE "/etc/standin-variant"

static volatile sig_atomic_t got_term, got_crash, got_hang;
static const char *component = "standin";

static void on_signal(int sig) {
    if (sig == SIGTERM) got_term = 1;
    else if (sig == SIGUSR1) got_crash = 1;
    else if (sig == SIGUSR2) got_hang = 1;
}

static void say(const char *fmt, const char *arg) {
    fprintf(stderr, "%s standin %s: ", component, STANDIN_VERSION);
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
}

static void die(const char *what, const char *arg) {
    say(what, arg);
    exit(1);
}

static void mkdirs(const char *path) {
    char buf[512];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') { *p = 0; mkdir(buf, 0755); *p = '/'; }
    }
}

static int listen_unix(const char *path) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) die("socket path too long: %s", path);
    strcpy(sa.sun_path, path);
    mkdirs(path);
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 16) < 0)
        die("cannot listen on %s", path);
    return fd;
}

static int parse_hostport(const char *text, struct sockaddr_in *sa) {
    char host[64];
    const char *colon = strrchr(text, ':');
    if (!colon || colon - text >= (long)sizeof host) return -1;
    memcpy(host, text, colon - text);
    host[colon - text] = 0;
    sa->sin_family = AF_INET;
    sa->sin_port = htons((unsigned short)atoi(colon + 1));
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

static int listen_tcp(const char *hostport) {
    struct sockaddr_in sa = {0};
    if (parse_hostport(hostport, &sa) < 0) die("bad address %s", hostport);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 16) < 0)
        die("cannot listen on %s", hostport);
    return fd;
}

/* The attestation-agent's config check: every line is blank, a comment, a
 * [section] or key = value. Anything else, or no file, refuses to start. */
static void check_config(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) die("cannot read config %s", path);
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        n++;
        char *s = line;
        while (*s == ' ' || *s == '\t') s++;
        if (*s == '\n' || *s == 0 || *s == '#') continue;
        if (*s == '[' && strchr(s, ']')) continue;
        char *eq = strchr(s, '=');
        if (eq && eq > s) continue;
        fclose(f);
        fprintf(stderr, "%s standin %s: config %s line %d does not parse\n", component, STANDIN_VERSION, path, n);
        exit(2);
    }
    fclose(f);
}

static void require(const char *path) {
    struct stat st;
    if (stat(path, &st) < 0) die("refusing to start: %s does not exist", path);
}

/* The image's variant (one word, e.g. the TEE an attestation agent was built
 * for), or "" for a plain image. */
static void read_variant(char *out, size_t size) {
    out[0] = 0;
    FILE *f = fopen(VARIANT_FILE, "r");
    if (!f) return;
    if (!fgets(out, (int)size, f)) out[0] = 0;
    fclose(f);
    out[strcspn(out, " \t\r\n")] = 0;
}

/* api-server-rest: read the request head (bounded in size and time), answer
 * 200 with the banner as the body. */
static void answer_http(int c, const char *banner, int banner_len) {
    struct timeval tv = {.tv_sec = 0, .tv_usec = 500000};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char req[2048];
    size_t got = 0;
    while (got < sizeof req - 1) {
        ssize_t n = read(c, req + got, sizeof req - 1 - got);
        if (n <= 0) break;
        got += (size_t)n;
        req[got] = 0;
        if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n")) break;
    }
    char head[256];
    int head_len = snprintf(head, sizeof head,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                            "Connection: close\r\n\r\n", banner_len);
    if (write(c, head, head_len) < 0 || write(c, banner, banner_len) < 0) { /* client left */ }
}

static void notify_ready(void) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    if (sa.sun_path[0] == '@') sa.sun_path[0] = 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    socklen_t len = offsetof(struct sockaddr_un, sun_path) + strlen(path);
    sendto(fd, "READY=1", 7, 0, (struct sockaddr *)&sa, len);
    close(fd);
}

static int control(const char *dir, const char *what) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s.%s", dir, component, what);
    return access(path, F_OK) == 0;
}

static int probe(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: standin probe unix PATH | tcp HOST:PORT\n"); return 2; }
    int fd;
    if (strcmp(argv[2], "unix") == 0) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", argv[3]);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror(argv[3]); return 1; }
    } else {
        struct sockaddr_in sa = {0};
        if (parse_hostport(argv[3], &sa) < 0) { fprintf(stderr, "bad address %s\n", argv[3]); return 2; }
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror(argv[3]); return 1; }
    }
    struct timeval tv = {.tv_sec = 2};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[256];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) { fprintf(stderr, "no answer\n"); return 1; }
    fwrite(buf, 1, n, stdout);
    return 0;
}

int main(int argc, char **argv) {
    component = basename(argv[0]);
    if (argc > 1 && strcmp(argv[1], "probe") == 0) return probe(argc, argv);

    const char *config = NULL, *socket_path = NULL, *tcp = NULL, *requires = KATA_SOCKET;
    const char *control_dir = getenv("STANDIN_CONTROL_DIR");
    const char *ign = getenv("STANDIN_IGNORE_SIGTERM");
    int ignore_term = ign && strcmp(ign, "1") == 0, requires_given = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--component") == 0 && i + 1 < argc) component = argv[++i];
        else if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) config = argv[++i];
        else if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc) socket_path = argv[++i];
        else if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) tcp = argv[++i];
        else if (strcmp(argv[i], "--requires") == 0 && i + 1 < argc) { requires = argv[++i]; requires_given = 1; }
        else if (strcmp(argv[i], "--ignore-sigterm") == 0) ignore_term = 1;
        else if (strcmp(argv[i], "--version") == 0) {
            char v[64];
            read_variant(v, sizeof v);
            printf("%s standin %s%s%s\n", component, STANDIN_VERSION, v[0] ? " " : "", v);
            return 0;
        }
        /* Anything else is accepted and ignored, like the real agents' many flags. */
    }
    if (!control_dir) control_dir = "/run/standin";

    int fd, http = 0;
    if (strcmp(component, "attestation-agent") == 0) {
        if (config) check_config(config);
        fd = listen_unix(socket_path ? socket_path : AA_SOCKET);
    } else if (strcmp(component, "confidential-data-hub") == 0) {
        if (config && access(config, F_OK) == 0) check_config(config);
        require(requires_given ? requires : AA_SOCKET);
        fd = listen_unix(socket_path ? socket_path : CDH_SOCKET);
    } else if (strcmp(component, "kata-agent") == 0) {
        fd = listen_unix(socket_path ? socket_path : KATA_SOCKET);
    } else if (strcmp(component, "agent-protocol-forwarder") == 0) {
        require(requires);
        fd = listen_tcp(tcp ? tcp : APF_LISTEN);
    } else if (strcmp(component, "api-server-rest") == 0) {
        require(requires_given ? requires : CDH_SOCKET);
        fd = listen_tcp(tcp ? tcp : ASR_LISTEN);
        http = 1;
    } else if (socket_path) {
        fd = listen_unix(socket_path);
    } else if (tcp) {
        fd = listen_tcp(tcp);
    } else {
        die("unknown component %s (give --socket PATH or --listen HOST:PORT)", component);
    }

    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    if (ignore_term) signal(SIGTERM, SIG_IGN);
    else sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    char variant[64], banner[160];
    read_variant(variant, sizeof variant);
    int banner_len = snprintf(banner, sizeof banner, "%s standin %s%s%s\n", component, STANDIN_VERSION,
                              variant[0] ? " " : "", variant);
    if (variant[0]) say("variant %s", variant);
    say("listening%s", ignore_term ? " (ignoring SIGTERM)" : "");
    notify_ready();

    int hung = 0;
    for (;;) {
        if (got_term) {
            say("SIGTERM: exiting%s", "");
            return 0;
        }
        if (got_crash || control(control_dir, "crash")) { say("crashing on request%s", ""); _exit(70); }
        if (!hung && (got_hang || control(control_dir, "hang"))) { say("hanging on request%s", ""); hung = 1; }
        if (fd >= 0 && control(control_dir, "unlisten")) {
            say("closing the listener on request%s", "");
            close(fd);
            fd = -1;
        }
        if (hung || fd < 0) { usleep(100000); continue; }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) > 0) {
            int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
            if (c >= 0) {
                if (http) answer_http(c, banner, banner_len);
                else if (write(c, banner, banner_len) < 0) { /* client left: nothing to do */ }
                close(c);
            }
        }
    }
}
