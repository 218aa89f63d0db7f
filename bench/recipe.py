"""The original recipe (shared/origin): its probe, its status file and its router,
with its logic unchanged, for the benchmarks that compare dbha with it.

The recipe as published opens its status file for writing and never writes to it
(it only builds the text), which empties the file so that the next call fails;
this copy writes the text, as the recipe evidently meant. It starts from a status
file that `write_status` makes.
"""

import socket
from datetime import datetime


def write_status(status_dir, db="default"):
    """The status file the recipe reads, as of now, naming `db`."""
    with open(status_dir + "/dbha_last_check.txt", "w") as f:
        f.write(datetime.now().strftime("%Y-%m-%d %H:%M:%S") + "\n" + db)


def make_recipe(settings, status_dir):
    def test_connection_to_db(database_name):
        try:
            db_definition = getattr(settings, "DATABASES")[database_name]
            socket.create_connection((db_definition["HOST"], db_definition["PORT"]), 5)
            return True
        except Exception:
            return False

    def available_db():
        with open(status_dir + "/dbha_last_check.txt", "r") as f:
            f = f.read().splitlines()
            dbha_last_check = datetime.strptime(f[0], "%Y-%m-%d %H:%M:%S")
            last_db = f[1]
        if (datetime.now() - dbha_last_check).seconds > 10:
            if test_connection_to_db("default"):
                db = "default"
            elif test_connection_to_db("failover1"):
                db = "failover1"
            elif test_connection_to_db("failover2"):
                db = "failover2"
            with open(status_dir + "/dbha_last_check.txt", "w") as status_file:
                lines_of_text = datetime.now().strftime("%Y-%m-%d %H:%M:%S") + "\n" + db
                status_file.write(lines_of_text)  # missing in the published recipe
            return db
        return last_db

    class ModelDatabaseRouter(object):
        def db_for_read(self, model, **hints):
            return available_db()

        def db_for_write(self, model, **hints):
            return available_db()

    return available_db, ModelDatabaseRouter()
