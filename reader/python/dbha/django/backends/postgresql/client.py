"""``manage.py dbshell`` for the dbha backend: psql to the endpoint the agent
chose for the alias's role (a write alias also asks libpq for a read-write
session; in read-only mode, a read-only session on the read endpoint)."""

from django.db.backends.postgresql.client import DatabaseClient as PostgresClient

from .._shell import client_env, run_client


class DatabaseClient(PostgresClient):
    def runshell(self, parameters):
        choice = self.connection.dbha_choose()
        endpoint = choice.endpoint
        settings_dict = {**self.connection.settings_dict, "HOST": endpoint.host, "PORT": endpoint.port}
        args, env = self.settings_to_cmd_args_env(settings_dict, parameters)
        env = client_env(env)
        if choice.read_only:
            # No database takes writes now: a read-only session on the read one.
            env["PGOPTIONS"] = " ".join(filter(None, [env.get("PGOPTIONS"),
                                                      "-c default_transaction_read_only=on"]))
        elif self.connection.dbha.role == "write":
            env.setdefault("PGTARGETSESSIONATTRS", "read-write")
        run_client(args, env)
