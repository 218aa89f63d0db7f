/* A program built the way an application is, against the installed package:
 *   cc installed_reader.c $(pkg-config --cflags --libs dbha)
 *
 *   installed_reader STATE_FILE
 * prints "VERSION STATUS WRITE_ALIAS READ_ALIAS" ("-" for no alias), or the open
 * error on stderr with exit code 1. */
#include <dbha.h>
#include <stdio.h>

int main(int argc, char **argv) {
    char err[512];
    dbha_reader *r = NULL;
    dbha_snapshot s;
    if (argc != 2) {
        fprintf(stderr, "usage: %s STATE_FILE\n", argv[0]);
        return 2;
    }
    int rc = dbha_open_err(argv[1], &r, err, sizeof err);
    if (rc != DBHA_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    rc = dbha_read(r, &s);
    if (rc != DBHA_OK) {
        fprintf(stderr, "dbha_read: %s\n", dbha_strerror(rc));
        dbha_close(r);
        return 1;
    }
    printf("%s %d %s %s\n", dbha_version(), s.status, s.write_alias ? s.write_alias : "-",
           s.read_alias ? s.read_alias : "-");
    dbha_close(r);
    return 0;
}
