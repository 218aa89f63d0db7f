/* The C ABI as a C program sees it: compiled with the system C compiler against
 * dbha.h and libdbha by tests/tests/c_abi.rs, which prepares the files in DIR.
 *
 *   reader_test check DIR EPOCH   every check below; prints "N passed, M failed"
 *   reader_test cuts DIR N        DIR/cut-0 .. cut-(N-1), each truncated: DBHA_E_TRUNCATED
 *   reader_test random DIR N      DIR/random-0 .. : any outcome but a crash
 *   reader_test loop PATH N       N calls of dbha_active_alias (for strace)
 *   reader_test show PATH         one line: the status and the write and read endpoints
 */
#include <dbha.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed, failed;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (cond) {                                                        \
            passed++;                                                      \
        } else {                                                           \
            failed++;                                                      \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
        }                                                                  \
    } while (0)

static void path_in(char *buf, size_t len, const char *dir, const char *name) {
    snprintf(buf, len, "%s/%s", dir, name);
}

/* Opening DIR/name fails with `want`, a NULL handle, and a message naming the file. */
static void expect_open_error(const char *dir, const char *name, int want) {
    char path[4096], msg[512];
    dbha_reader *r = (dbha_reader *)&r; /* not NULL: the library must reset it */
    path_in(path, sizeof path, dir, name);
    int rc = dbha_open_err(path, &r, msg, sizeof msg);
    CHECK(rc == want, "%s: got %d (%s), want %d (%s)", name, rc, dbha_strerror(rc), want,
          dbha_strerror(want));
    CHECK(r == NULL, "%s: handle not reset to NULL", name);
    CHECK(strstr(msg, path) != NULL, "%s: message does not name the path: %s", name, msg);
    /* The short form gives the same code. */
    CHECK(dbha_open(path, &r) == want && r == NULL, "%s: dbha_open differs", name);
}

static int check(const char *dir, uint64_t epoch) {
    char path[4096];
    dbha_reader *r = NULL;
    dbha_snapshot s;

    CHECK(strcmp(dbha_version(), "0.1.0") == 0, "version %s", dbha_version());
    CHECK(strcmp(dbha_strerror(DBHA_OK), "success") == 0, "strerror(OK)");
    CHECK(strcmp(dbha_strerror(12345), "unknown error code") == 0, "strerror(unknown)");

    /* A live state: failover1 active, failover2 for reads. */
    path_in(path, sizeof path, dir, "state");
    int rc = dbha_open(path, &r);
    CHECK(rc == DBHA_OK && r != NULL, "open %s: %s", path, dbha_strerror(rc));
    if (r == NULL)
        return 1;
    rc = dbha_read(r, &s);
    CHECK(rc == DBHA_OK, "read: %s", dbha_strerror(rc));
    CHECK(s.status == DBHA_STATUS_ACTIVE, "status %d", s.status);
    CHECK(s.epoch == epoch, "epoch %" PRIu64 ", want %" PRIu64, s.epoch, epoch);
    CHECK(s.write_index == 1 && s.read_index == 2, "indexes %u %u", s.write_index, s.read_index);
    CHECK(s.write_alias && strcmp(s.write_alias, "failover1") == 0, "write alias");
    CHECK(s.read_alias && strcmp(s.read_alias, "failover2") == 0, "read alias");
    CHECK(s.health_mask == 6 && s.primary_mask == 2 && s.standby_mask == 4, "masks");
    CHECK(s.endpoint_count == 3, "count %u", s.endpoint_count);
    CHECK(s.stale_after_ns == 600000000000ull, "stale_after %" PRIu64, s.stale_after_ns);
    CHECK(s.flags == 0 && s.generation == 1 && s.writer_pid != 0, "flags/generation/pid");
    const char *active = dbha_write_alias(r);
    CHECK(active && strcmp(active, "failover1") == 0, "write alias %s", active ? active : "NULL");
    CHECK(active == s.write_alias, "the same string, not a copy");
    CHECK(dbha_active_alias(r) == active, "dbha_active_alias is the older name of dbha_write_alias");
    CHECK(strcmp(dbha_alias_name(r, 0), "default") == 0, "alias 0");
    CHECK(strcmp(dbha_alias_name(r, 2), "failover2") == 0, "alias 2");
    CHECK(dbha_alias_name(r, 3) == NULL, "alias 3 out of range");
    CHECK(dbha_alias_name(r, DBHA_NONE) == NULL, "alias NONE");
    const char *read = dbha_read_alias(r);
    CHECK(read && strcmp(read, "failover2") == 0, "read alias %s", read ? read : "NULL");
    /* Slots: generation 1, index 1 (write) and 2 (read). */
    int64_t slot = dbha_write_slot(r);
    CHECK(slot == 64 + 1, "write slot %lld", (long long)slot);
    CHECK(dbha_active_slot(r) == slot, "dbha_active_slot is the older name of dbha_write_slot");
    CHECK(dbha_read_slot(r) == 64 + 2, "read slot %lld", (long long)dbha_read_slot(r));
    CHECK(dbha_slot_name(r, slot) == active, "slot name is the active alias string");
    CHECK(dbha_slot_name(r, -1) == NULL, "slot -1");
    CHECK(dbha_slot_name(r, 5 * 64 + 1) == NULL, "a generation never mapped");
    CHECK(dbha_active_slot(NULL) == -1 && dbha_read_slot(NULL) == -1, "slots of NULL");
    CHECK(dbha_read_alias(NULL) == NULL && dbha_slot_name(NULL, slot) == NULL, "NULL reader");

    /* Addresses: the configured host and port of the slot's own file. */
    const char *host = NULL;
    uint16_t port = 0;
    rc = dbha_slot_address(r, slot, &host, &port);
    CHECK(rc == DBHA_OK && host && strcmp(host, "127.0.0.1") == 0 && port == 5433,
          "write address %d %s:%u", rc, host ? host : "NULL", port);
    const char *first = host;
    rc = dbha_slot_address(r, dbha_read_slot(r), &host, &port);
    CHECK(rc == DBHA_OK && port == 5434, "read address %d port %u", rc, port);
    CHECK(dbha_slot_address(r, slot, &host, NULL) == DBHA_OK && host == first,
          "the same string every time, port may be NULL");
    CHECK(dbha_slot_address(r, slot, NULL, &port) == DBHA_OK && port == 5433, "host may be NULL");
    host = "untouched";
    CHECK(dbha_slot_address(r, -1, &host, &port) == DBHA_E_INVALID_ARGUMENT, "address of -1");
    CHECK(dbha_slot_address(r, 5 * 64 + 1, &host, &port) == DBHA_E_INVALID_ARGUMENT,
          "address of a generation never mapped");
    CHECK(dbha_slot_address(r, 64 + 3, &host, &port) == DBHA_E_INVALID_ARGUMENT,
          "address of an index past the endpoints");
    CHECK(dbha_slot_address(NULL, slot, &host, &port) == DBHA_E_INVALID_ARGUMENT,
          "address with a NULL reader");
    CHECK(strcmp(host, "untouched") == 0, "out-parameters untouched on error");

    /* The sized read fills what dbha_read fills; other sizes are refused. */
    {
        dbha_snapshot a, b;
        memset(&b, 0xAA, sizeof b);
        CHECK(dbha_snapshot_size() == sizeof(dbha_snapshot), "snapshot size %zu", dbha_snapshot_size());
        CHECK(dbha_read(r, &a) == DBHA_OK && dbha_read_sized(r, &b, sizeof b) == DBHA_OK, "sized read");
        CHECK(a.epoch == b.epoch && a.status == b.status && a.write_alias == b.write_alias &&
                  a.endpoint_count == b.endpoint_count && memcmp(a.last_probe, b.last_probe, 64) == 0,
              "the sized read fills the same snapshot");
        CHECK(dbha_read_sized(r, &b, sizeof b - 1) == DBHA_E_INVALID_ARGUMENT, "a smaller size");
        CHECK(dbha_read_sized(r, &b, sizeof b + 8) == DBHA_E_INVALID_ARGUMENT, "a larger size");
        CHECK(dbha_read_sized(NULL, &b, sizeof b) == DBHA_E_INVALID_ARGUMENT, "sized read(NULL)");
    }

    /* NULL arguments get a code, never a crash. */
    CHECK(dbha_read(NULL, &s) == DBHA_E_INVALID_ARGUMENT, "read(NULL, s)");
    CHECK(dbha_read(r, NULL) == DBHA_E_INVALID_ARGUMENT, "read(r, NULL)");
    CHECK(dbha_open(NULL, &r) == DBHA_E_INVALID_ARGUMENT && r == NULL, "open(NULL)");
    CHECK(dbha_open(path, NULL) == DBHA_E_INVALID_ARGUMENT, "open(path, NULL)");
    CHECK(dbha_active_alias(NULL) == NULL, "active_alias(NULL)");
    CHECK(dbha_alias_name(NULL, 0) == NULL, "alias_name(NULL)");
    dbha_close(NULL);
    /* r was reset by the failed open above; reopen for the stopped file. */

    /* A file from an agent that published no addresses: names yes, addresses no. */
    path_in(path, sizeof path, dir, "noaddr");
    rc = dbha_open(path, &r);
    CHECK(rc == DBHA_OK, "open noaddr: %s", dbha_strerror(rc));
    if (r) {
        int64_t old_slot = dbha_active_slot(r);
        CHECK(old_slot == 64 + 1 && strcmp(dbha_slot_name(r, old_slot), "failover1") == 0,
              "noaddr slot %lld", (long long)old_slot);
        CHECK(dbha_slot_address(r, old_slot, &host, &port) == DBHA_E_NO_ADDRESS,
              "noaddr: DBHA_E_NO_ADDRESS");
        dbha_close(r);
    }

    /* An agent that stopped: status says so, no active alias. */
    path_in(path, sizeof path, dir, "stopped");
    rc = dbha_open(path, &r);
    CHECK(rc == DBHA_OK, "open stopped: %s", dbha_strerror(rc));
    if (r) {
        CHECK(dbha_read(r, &s) == DBHA_OK && s.status == DBHA_STATUS_AGENT_STOPPED,
              "stopped status %d", s.status);
        CHECK((s.flags & DBHA_FLAG_STOPPED) != 0, "stopped flag");
        CHECK(s.write_alias == NULL && dbha_active_alias(r) == NULL, "no alias when stopped");
        CHECK(dbha_active_slot(r) == -1 && dbha_read_alias(r) == NULL, "no slot when stopped");
        dbha_close(r);
    }

    /* A heartbeat older than stale_after. */
    path_in(path, sizeof path, dir, "stale");
    rc = dbha_open(path, &r);
    CHECK(rc == DBHA_OK, "open stale: %s", dbha_strerror(rc));
    if (r) {
        CHECK(dbha_read(r, &s) == DBHA_OK && s.status == DBHA_STATUS_STALE, "stale status %d",
              s.status);
        CHECK(s.write_index == 0 && s.write_alias == NULL, "stale: index kept, no alias");
        CHECK(dbha_active_alias(r) == NULL, "no active alias when stale");
        dbha_close(r);
    }

    /* No healthy database. */
    path_in(path, sizeof path, dir, "none");
    rc = dbha_open(path, &r);
    CHECK(rc == DBHA_OK, "open none: %s", dbha_strerror(rc));
    if (r) {
        CHECK(dbha_read(r, &s) == DBHA_OK && s.status == DBHA_STATUS_NO_HEALTHY_DATABASE,
              "none status %d", s.status);
        CHECK(s.write_index == DBHA_NONE && dbha_active_alias(r) == NULL, "none: no index");
        dbha_close(r);
    }

    /* Every bad file gives its own code. */
    expect_open_error(dir, "missing", DBHA_E_NOT_FOUND);
    expect_open_error(dir, "dangling", DBHA_E_NOT_FOUND);
    expect_open_error(dir, "empty", DBHA_E_TRUNCATED);
    expect_open_error(dir, "truncated", DBHA_E_TRUNCATED);
    expect_open_error(dir, "subdir", DBHA_E_NOT_REGULAR_FILE);
    expect_open_error(dir, "badmagic", DBHA_E_BAD_MAGIC);
    expect_open_error(dir, "v3", DBHA_E_UNSUPPORTED_VERSION);
    expect_open_error(dir, "corrupt", DBHA_E_CORRUPT);

    /* A truncated message buffer is still NUL-terminated. */
    char tiny[8];
    memset(tiny, 'x', sizeof tiny);
    path_in(path, sizeof path, dir, "missing");
    CHECK(dbha_open_err(path, &r, tiny, sizeof tiny) == DBHA_E_NOT_FOUND, "tiny");
    CHECK(memchr(tiny, 0, sizeof tiny) == tiny + 7, "tiny buffer terminated at its end");

    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}

/* Every truncation of a valid file is reported as truncated, whatever the offset. */
static int cuts(const char *dir, long n) {
    char name[64];
    for (long i = 0; i < n; i++) {
        snprintf(name, sizeof name, "cut-%ld", i);
        expect_open_error(dir, name, DBHA_E_TRUNCATED);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}

/* Random and mutated files: opening, reading and closing never crash, every code
 * is a known one, and an index in a snapshot always has its name. */
static int random_files(const char *dir, long n) {
    char path[4096];
    dbha_snapshot s;
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/random-%ld", dir, i);
        dbha_reader *r = NULL;
        int rc = dbha_open(path, &r);
        CHECK(rc >= DBHA_OK && rc <= DBHA_E_PANIC && rc != DBHA_E_PANIC, "%s: code %d", path, rc);
        CHECK(strcmp(dbha_strerror(rc), "unknown error code") != 0, "%s: unknown code", path);
        if (rc != DBHA_OK)
            continue;
        if (dbha_read(r, &s) == DBHA_OK && s.write_index != DBHA_NONE)
            CHECK(dbha_alias_name(r, s.write_index) != NULL, "%s: index without a name", path);
        (void)dbha_active_alias(r);
        dbha_close(r);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}

static int loop(const char *path, long n) {
    dbha_reader *r = NULL;
    int rc = dbha_open(path, &r);
    if (rc != DBHA_OK) {
        fprintf(stderr, "%s: %s\n", path, dbha_strerror(rc));
        return 1;
    }
    long found = 0;
    for (long i = 0; i < n; i++)
        found += dbha_write_alias(r) != NULL;
    dbha_close(r);
    printf("write=%ld\n", found);
    return 0;
}

static const char *status_name(int status) {
    switch (status) {
    case DBHA_STATUS_ACTIVE: return "active";
    case DBHA_STATUS_READ_ONLY: return "read_only";
    case DBHA_STATUS_NO_HEALTHY_DATABASE: return "no_healthy_database";
    case DBHA_STATUS_STALE: return "stale";
    case DBHA_STATUS_AGENT_STOPPED: return "agent_stopped";
    /* A status this program does not know: no write endpoint. */
    default: return "unknown";
    }
}

/* "status=read_only write=NONE read=failover1", from one snapshot, and the
 * same endpoints through dbha_write_alias and dbha_read_alias. */
static int show(const char *path) {
    dbha_reader *r = NULL;
    int rc = dbha_open(path, &r);
    if (rc != DBHA_OK) {
        fprintf(stderr, "%s: %s\n", path, dbha_strerror(rc));
        return 1;
    }
    dbha_snapshot s;
    rc = dbha_read_sized(r, &s, sizeof s);
    const char *w = dbha_write_alias(r), *rd = dbha_read_alias(r);
    if (rc == DBHA_OK)
        printf("status=%s write=%s read=%s calls: write=%s read=%s\n", status_name(s.status),
               s.write_alias ? s.write_alias : "NONE", s.read_alias ? s.read_alias : "NONE",
               w ? w : "NONE", rd ? rd : "NONE");
    else
        fprintf(stderr, "%s: %s\n", path, dbha_strerror(rc));
    dbha_close(r);
    return rc != DBHA_OK;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "check") == 0)
        return check(argv[2], strtoull(argv[3], NULL, 10));
    if (argc == 4 && strcmp(argv[1], "cuts") == 0)
        return cuts(argv[2], strtol(argv[3], NULL, 10));
    if (argc == 4 && strcmp(argv[1], "random") == 0)
        return random_files(argv[2], strtol(argv[3], NULL, 10));
    if (argc == 4 && strcmp(argv[1], "loop") == 0)
        return loop(argv[2], strtol(argv[3], NULL, 10));
    if (argc == 3 && strcmp(argv[1], "show") == 0)
        return show(argv[2]);
    fprintf(stderr, "usage: reader_test check DIR EPOCH | cuts DIR N | random DIR N | loop PATH N | show PATH\n");
    return 2;
}
